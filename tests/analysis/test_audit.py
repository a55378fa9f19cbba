"""The slice audit on planted worlds: a real slice is found and named, nothing is claimed in worlds without one,
a confounder is handled by stratifying, and bad input gets one line."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from embedlab.analysis import audit_stats as st
from embedlab.analysis.audit import AuditConfig, audit_vectors
from embedlab.analysis.slices import define_slices
from embedlab.errors import ConfigError
from tests.helpers.audit_worlds import vocabulary, world

FAST = dict(bootstrap=0, exemplars=0)


def _audit(X, meta, by, E, words, **kw):
    within = kw.pop("within", None)
    scores = kw.pop("scores", None)
    groups = kw.pop("groups", meta["group"].to_numpy())
    return audit_vectors(X, meta, by, E, words, groups=groups, within=within, scores=scores, config=AuditConfig(**kw))


def test_a_planted_slice_is_found_named_and_the_others_are_not_claimed():
    X, meta, E, words = world(seed=0)
    r = _audit(X, meta, ["light", "camera", "iso"], E, words, bootstrap=100)
    s = r.slices.set_index("name")
    assert s.loc["light=dark", "p_fwer"] < 0.01 and s.loc["light=dark", "listed"]
    top = r.concepts[(r.concepts.slice == "light=dark") & (r.concepts.side == "adds")].sort_values("rank")
    assert top.iloc[0]["concept"] == "dim" and top.iloc[0]["p_fwer"] < 0.01 and top.iloc[0]["auroc"] > 0.9
    # the slice is more "dim" than its rest: list side, t, AUROC side and mean similarities agree
    assert top.iloc[0]["t"] > 0 and top.iloc[0]["mean_sim_slice"] > top.iloc[0]["mean_sim_rest"]
    others = r.slices[~r.slices["name"].str.contains("light")]
    assert (others["p_fwer"] >= 0.05).all()
    lo, hi = s.loc["light=dark", ["effect_lo", "effect_hi"]]
    assert 0 < lo <= s.loc["light=dark", "effect"] <= hi
    assert list(r.significant()["name"]) == ["light=dark"]
    assert "1 significant" in repr(r) and set(r.to_pandas("concepts").columns) >= {"concept", "t", "p_fwer", "q"}


def test_a_two_valued_column_is_one_contrast_and_conjunctions_need_support():
    X, meta, E, words = world(seed=0)
    r = _audit(X, meta, ["light", "camera"], E, words, depth=2, permutations=99, **FAST)
    names = set(r.slices["name"])
    assert ("light=dark" in names) != ("light=bright" in names)
    assert any("two-valued" in line for line in r.info["skipped"])
    conj = r.slices[r.slices.kind == "conjunction"]
    assert len(conj) and (conj[["n_groups", "n_groups_rest"]].min(axis=1) >= 2).all()
    # a conjunction inside the planted slice repeats it: not listed, and says which one it repeats
    inside = conj[conj["name"].str.contains("light=dark")]
    assert (~inside["listed"]).any() and (inside.loc[~inside["listed"], "duplicates"] == "light=dark").all()


def test_null_worlds_rarely_claim_anything():
    """40 worlds without any planted slice: the audit-wide rate of any claim (slice or concept) stays near 5%
    (a binomial bound that fails with probability < 0.2% when the rate is 5%)."""
    claims = 0
    for w in range(40):
        X, meta, E, words = world(seed=100 + w, effect=0.0, G=24)
        r = _audit(X, meta, ["light", "camera", "iso"], E, words, permutations=99, seed=w, **FAST)
        claims += bool((r.slices["p_fwer"] < 0.05).any() or (r.concepts["p_fwer"] < 0.05).any())
    assert claims <= binom.ppf(0.998, 40, 0.05)


def test_a_confounder_is_flagged_until_the_audit_stratifies_by_it():
    """'night' images all come from camera B, whose images differ; night itself changes nothing. Unstratified, the
    night slice differs (it does, in this data); within camera it must not."""
    rng = np.random.default_rng(3)
    d, G, per = 48, 48, 3
    E, words, direction = vocabulary(rng, d, 30)
    cam = np.repeat(["A", "B"], G // 2)
    night = np.where((cam == "B") & (rng.random(G) < 0.7), "yes", "no")
    X = rng.normal(size=(G * per, d)) / np.sqrt(d) + np.repeat(rng.normal(size=(G, d)), per, 0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X[np.repeat(cam == "B", per)] += 0.6 * direction
    meta = pd.DataFrame({"group": np.repeat(np.arange(G), per), "night": np.repeat(night, per)})
    plain = _audit(X, meta, ["night"], E, words, permutations=199, **FAST)
    strat = _audit(X, meta, ["night"], E, words, permutations=199, within=np.repeat(cam, per), **FAST)
    assert plain.slices["p_fwer"].iloc[0] < 0.05
    assert strat.slices["p_fwer"].iloc[0] >= 0.05 and strat.info["within"]


def test_a_score_difference_is_tested_per_slice():
    X, meta, E, words = world(seed=1, effect=0.0)
    loss = np.random.default_rng(0).normal(size=len(X)) + 1.5 * (meta["camera"] == "C").to_numpy()
    r = _audit(X, meta, ["camera"], E, words, permutations=199, scores=loss, **FAST)
    s = r.slices.set_index("name")
    assert s.loc["camera=C", "score_p_fwer"] < 0.05 and s.loc["camera=C", "score_diff"] > 1
    assert (s.drop("camera=C")["score_diff"] < 0).all()


def test_discovery_finds_a_hidden_subset_on_the_half_it_did_not_fit():
    X, meta, E, words = world(seed=2, G=60, effect=1.2, share=0.3)
    hidden = (meta["light"] == "dark").to_numpy()
    r = _audit(X, meta.drop(columns="light"), ["camera"], E, words, discover=3, permutations=99, **FAST)
    found = r.slices[r.slices.kind == "discovered"]
    assert r.info["split"]["test_units"] + r.info["split"]["discovery_units"] == 60
    best = max(found["slice_id"], key=lambda s: (r.masks[s] & hidden).sum() / max(r.masks[s].sum(), 1))
    mask = r.masks[best]
    assert (mask & hidden).sum() / mask.sum() > 0.8
    units_in = set(meta.loc[mask, "group"])
    assert len(units_in) <= 30  # described on the test half only
    first = r.concepts[(r.concepts.slice_id == best) & (r.concepts.side == "adds")].sort_values("rank").iloc[0]
    assert first["concept"] == "dim"
    assert np.isnan(found["p_fwer"]).all()  # a cluster differs by construction: described, not tested


def test_a_column_that_varies_within_groups_is_audited_with_shares():
    X, meta, E, words = world(seed=0)
    r = _audit(X, meta, ["iso"], E, words, bins=2, permutations=99, **FAST)
    assert len(r.slices) == 2 and (r.slices["n_groups"] > 0).all()


def test_the_permutation_null_has_the_moments_the_statistics_assume():
    """T_s has mean 1 and each concept's t unit variance over the permutations (that is what makes slices of
    different sizes and concepts of different spread comparable in one maximum)."""
    rng = np.random.default_rng(0)
    G, d = 30, 8
    U = rng.normal(size=(G, d))
    F = (rng.random((G, 3)) < np.array([0.2, 0.5, 0.8])).astype(float)
    des = st.design(U, st.contrast_weights(F))
    perms = st.within_strata_permutations(des.strata, 4000, 1)
    C = rng.normal(size=(5, d))
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    null = st.run_permutations(des, C, perms, np.ones(3, bool))
    assert np.allclose(null.T[1:].mean(0), 1.0, atol=0.08)
    D = np.einsum("kgs,gd->ksd", des.W[perms[1:]], des.U)
    t = D @ C.T / des.concept_sd(C)
    assert np.allclose(t.std(0), 1.0, atol=0.06)


def test_bad_input_gets_one_line():
    X, meta, E, words = world(seed=0)
    with pytest.raises(ConfigError, match="no column 'colour'.*Its columns: group, light, camera, iso"):
        _audit(X, meta, ["colour"], E, words)
    with pytest.raises(ConfigError, match="has 1 value"):
        _audit(X, meta.assign(site="x"), ["site"], E, words)
    with pytest.raises(ConfigError, match="No slice has 30 units"):
        _audit(X, meta, ["camera"], E, words, min_groups=30)
    with pytest.raises(ConfigError, match="varies within"):
        _audit(X, meta, ["camera"], E, words, within=meta["iso"].to_numpy())


def test_define_slices_bins_numeric_columns_and_drops_repeats():
    meta = pd.DataFrame({"v": np.arange(40.0), "a": ["x", "y"] * 20, "b": ["x", "y"] * 20})
    fam = define_slices(meta, ["v", "a", "b"], np.arange(40), bins=4)
    names = [s.name for s in fam.slices]
    assert sum(n.startswith("v in") for n in names) == 4
    assert any("same images" in line for line in fam.skipped)  # b repeats a


def _paired_world(seed: int, extra: float):
    """Groups of 2 'from' and 2 'to' images; every group's to-minus-from shift is the same direction, and in the
    camera=B groups it carries `extra` more along the planted concept."""
    rng = np.random.default_rng(seed)
    d, G = 48, 36
    E, words, direction = vocabulary(rng, d, 30)
    common = rng.normal(size=d)
    common /= np.linalg.norm(common)
    cam = np.array(["A", "B", "C"] * (G // 3))
    X, rows, is_to = [], [], []
    for g in range(G):
        centre = rng.normal(size=d)
        centre /= np.linalg.norm(centre)
        for k in range(4):
            x = centre + 0.3 * rng.normal(size=d) / np.sqrt(d)
            if k >= 2:
                x = x + 0.5 * common + (extra * direction if cam[g] == "B" else 0)
            X.append(x / np.linalg.norm(x))
            rows.append({"group": g, "camera": cam[g]})
            is_to.append(k >= 2)
    return np.asarray(X), pd.DataFrame(rows), E, words, np.asarray(is_to)


@pytest.mark.parametrize("extra", [0.0, 0.4])
def test_auditing_a_residual_finds_the_slice_whose_residual_carries_more(extra):
    X, meta, E, words, is_to = _paired_world(5, extra)
    r = audit_vectors(X, meta, ["camera"], E, words, groups=meta["group"].to_numpy(), sets=is_to,
                      config=AuditConfig(permutations=199, **FAST))  # fmt: skip
    s = r.slices.set_index("name")
    assert r.info["unit"] == "paired groups"
    if extra:
        assert s.loc["camera=B", "p_fwer"] < 0.05
        top = r.concepts[(r.concepts.slice == "camera=B") & (r.concepts.side == "adds")].sort_values("rank")
        assert top.iloc[0]["concept"] == "dim"
        assert s.loc["camera=B", "residual_cos_global"] < s.drop("camera=B")["residual_cos_global"].min()
    else:
        assert (s["p_fwer"] >= 0.05).all()
    with pytest.raises(ConfigError, match="every group must hold images of both sets"):
        audit_vectors(X, meta, ["camera"], E, words, groups=meta["group"].to_numpy(), sets=np.zeros(len(X), bool))


def test_clusters_chosen_with_the_score_are_tested_on_it_validly():
    """The score helps place the centres on the discovery half, never the test half's units: with a score unrelated
    to the images a cluster's score test rarely claims anything (a test half assigned by its own scores claimed in
    almost every world); with a score planted in a hidden subset that the images also show, a cluster finds it."""
    claims = 0
    for w in range(30):
        X, meta, E, words = world(seed=300 + w, effect=0.0, G=40)
        loss = np.random.default_rng(w).normal(size=len(X))
        r = _audit(X, meta, ["camera"], E, words, discover=3, permutations=99, scores=loss, seed=w, **FAST)
        claims += bool((r.slices.loc[r.slices.kind == "discovered", "score_p_fwer"] < 0.05).any())
    assert claims <= binom.ppf(0.998, 30, 0.05)
    X, meta, E, words = world(seed=7, effect=0.6, G=60)
    dark = (meta["light"] == "dark").to_numpy()
    loss = np.random.default_rng(1).normal(size=len(X)) + 1.0 * dark
    r = _audit(X, meta.drop(columns="light"), ["camera"], E, words, discover=3, permutations=199, scores=loss, **FAST)
    found = r.slices[r.slices.kind == "discovered"].sort_values("score_diff", ascending=False).iloc[0]
    assert found["score_p_fwer"] < 0.05 and dark[r.masks[found["slice_id"]]].mean() > 0.8


def test_a_planted_error_slice_is_found_with_the_score_and_shown_by_its_worst_units():
    """With an error score planted in a hidden subset (15% of the groups), some discovered slice's first exemplars
    (its worst units with a score) all come from that subset, as a precision@k would count them."""
    X, meta, E, words = world(seed=11, effect=0.6, G=80, share=0.15)
    dark = (meta["light"] == "dark").to_numpy()
    loss = 0.3 * np.random.default_rng(2).normal(size=len(X)) + 1.5 * dark
    r = _audit(X, meta.drop(columns="light"), ["camera"], E, words, discover=4, permutations=99, scores=loss,
               bootstrap=0, exemplars=5)  # fmt: skip
    found = r.slices.loc[r.slices.kind == "discovered", "slice_id"]
    assert "predicted worst score" in set(r.slices["name"])
    assert max(dark[r.exemplars[s][:3]].mean() for s in found) == 1.0
    for s in found:  # worst first: the exemplar units' scores do not increase
        unit_loss = [loss[(meta["group"] == meta["group"][row]).to_numpy()].mean() for row in r.exemplars[s]]
        assert np.all(np.diff(unit_loss) <= 1e-12)


def test_the_test_half_joins_discovered_slices_whatever_its_own_scores():
    """Permuting the test half's scores (which the score test compares) changes no discovered slice's membership."""
    from embedlab.analysis.audit import make_units
    from embedlab.analysis.discovery import discover_slices

    X, meta, E, words = world(seed=12, effect=0.6, G=80, share=0.2)
    units = make_units(X, meta["group"].to_numpy())
    y = np.random.default_rng(3).normal(size=units.G) + 1.5 * (meta.groupby("group", sort=False)["light"].first()
                                                                 .to_numpy() == "dark")  # fmt: skip
    slices, _, disc = discover_slices(units, 4, 0, y, 2)
    y2 = y.copy()
    y2[disc.test] = np.random.default_rng(4).permutation(y[disc.test])
    again, _, _ = discover_slices(units, 4, 0, y2, 2)
    assert [s.name for s in slices] == [s.name for s in again] and "predicted worst score" in [s.name for s in slices]
    for a, b in zip(slices, again):
        assert np.array_equal(a.mask, b.mask)


def test_missing_values_are_in_no_slice_and_a_missing_score_is_refused():
    """Nullable columns from parquet side tables carry pd.NA; a two-valued column with gaps is two contrasts (the
    second value is not the first one's rest); units are either in a slice or in its rest, never both."""
    X, meta, E, words = world(seed=0)
    flag = pd.array(np.where(meta["camera"] == "A", 1, 0), dtype="Int64")
    flag[meta["group"].isin(["g0", "g1", "g2"]).to_numpy()] = pd.NA
    b = meta["light"].where(~meta["group"].isin(["g5", "g6", "g7"]), None)
    r = _audit(X, meta.assign(flag=flag, b=b), ["flag", "b", "iso"], E, words, permutations=99, bootstrap=20,
               exemplars=0)  # fmt: skip
    names = set(r.slices["name"])
    assert {"flag=0", "flag=1", "b=bright", "b=dark"} <= names
    iso = r.slices[r.slices["columns"] == "iso"]
    assert (iso["n_groups"] + iso["n_groups_rest"] <= 40).all()  # disjoint: no unit counted on both sides
    loss = np.ones(len(X))
    loss[0] = np.nan
    with pytest.raises(ConfigError, match="'score' column has 1 missing"):
        _audit(X, meta, ["camera"], E, words, scores=loss)
