"""Significance that holds under the null (issue 16), the one-side-per-concept rule (issue 12.4) and a permutation
null that streams over blocks of images or group sums with the in-memory result (issue 11.3).

The calibration tests run many random null splits of one synthetic population (the generator of
analyses/stats/calibration.py, which runs the same scenarios at 1,000 splits each) and count the splits where the
page shows a "significant" concept."""

import numpy as np
import pytest
from scipy.stats import binom

import analyses.stats.calibration as cal
from embedlab.analysis import permutation, unit_stats
from embedlab.analysis.explain import MIN_EXPLAINED, centre, deflation_rankings, explain_vectors
from embedlab.analysis.formula import compute_residual, l2n


def _null_rate(scenario: str, splits: int, **kw) -> dict:
    E = cal.vocabulary(np.random.default_rng(12345), 200, 24)
    counts = cal.run_scenario(scenario, splits, E, n=kw.pop("n", 80), d=24, seed=kw.pop("seed", 3), **kw)
    return {k: v / splits for k, v in counts.items()}


def _upper(splits: int, alpha: float = 0.05) -> float:
    """The 99% quantile of Bin(splits, alpha) / splits: a valid test exceeds it in 1% of seeds (these are fixed)."""
    return binom.ppf(0.99, splits, alpha) / splits


@pytest.mark.slow
def test_page_wide_p_fwer_holds_alpha_under_the_null():
    """Both lists are one family: p_fwer < 0.05 anywhere on the page (raw or deflated) in at most ~5% of null
    splits. Testing each list as its own family let the page reach ~10%."""
    splits = 500
    rates = _null_rate("no_groups", splits, permutations=199, top=3, deflated_steps=2)
    assert rates["p_fwer:page"] <= _upper(splits), rates
    assert rates["p_fwer_deflated:page"] <= _upper(splits), rates


@pytest.mark.slow
def test_q_bh_holds_with_correlated_groups():
    """Groups of 4 correlated images, whole groups to each set: the per-concept tests count groups, so BH over
    the vocabulary stays at its level (counting images as independent gave a discovery in nearly every split)."""
    splits = 300
    rates = _null_rate("groups4", splits, n=96, permutations=0, top=3, deflated_steps=0)
    assert rates["q_bh:page"] <= _upper(splits), rates


def _two_sets(seed, n=120, d=24, groups_of=1, shift=0.0, direction=None):
    rng = np.random.default_rng(seed)
    X, groups = cal.population(rng, 2 * n, d, groups_of, 0.6 if groups_of > 1 else 0.0)
    to = np.arange(2 * n) >= n if groups is None else groups >= groups.max() // 2 + 1
    if shift:
        X = l2n(X + shift * to[:, None] * direction)
    return X[~to], X[to], (None if groups is None else np.r_[groups[~to], groups[to]])


@pytest.mark.parametrize("groups_of", [1, 4])
def test_planted_concept_is_significant_with_and_without_groups(groups_of):
    """Positive control: a concept planted in the 'to' set is found first and significant on every count."""
    E = cal.vocabulary(np.random.default_rng(1), 200, 24)
    C, _ = centre(E)
    a, b, g = _two_sets(0, groups_of=groups_of, shift=0.25, direction=C[17])
    out = explain_vectors(
        compute_residual(a, b)[0], E, [f"c{i}" for i in range(200)], a, b, g, top=5, permutations=199, deflated_steps=3
    )
    top = out["adds"].iloc[0]
    assert top["vocab_index"] == 17
    assert top["p_fwer"] < 0.05 and top["p_fwer_deflated"] < 0.05 and top["q_bh"] < 0.05 and top["auroc"] > 0.7
    unit = out["info"]["test_unit"]
    assert unit["unit"] == ("groups" if groups_of > 1 else "images") and unit["family"] == "page"
    assert (unit["n_from"], unit["n_to"]) == ((len(a), len(b)) if groups_of == 1 else (30, 30))


def test_a_concept_is_listed_on_one_side_only_with_its_sign():
    """--top above half a small vocabulary: each list stops where its picks stop pointing its way."""
    E = cal.vocabulary(np.random.default_rng(4), 12, 24)
    a, b, _ = _two_sets(5, n=40)
    out = explain_vectors(compute_residual(a, b)[0], E, [f"c{i}" for i in range(12)], a, b, top=10, permutations=50)
    adds, removes = out["adds"], out["removes"]
    assert not set(adds["concept"]) & set(removes["concept"])
    assert (adds["score_centred"] > 0).all() and (removes["score_centred"] < 0).all()
    assert (adds["cosine_at_pick"] > 0).all() and (removes["cosine_at_pick"] < 0).all()
    assert (adds["explained"] >= MIN_EXPLAINED).all() and (removes["explained"] >= MIN_EXPLAINED).all()
    assert len(adds) + len(removes) <= 12
    # the uncut rankings do list some concept on both sides: the rule is what removed it
    both = deflation_rankings(l2n(compute_residual(a, b)[0]), centre(E)[0], 10)
    assert {p["index"] for p in both[0]} & {p["index"] for p in both[1]}


def test_one_sided_family_tests_only_its_list():
    E = cal.vocabulary(np.random.default_rng(1), 100, 24)
    a, b, _ = _two_sets(2, n=40)
    out = explain_vectors(
        compute_residual(a, b)[0], E, [f"c{i}" for i in range(100)], a, b, top=3, permutations=99, family="adds"
    )
    assert out["adds"]["p_fwer"].notna().all() and out["removes"]["p_fwer"].isna().all()
    assert "one-sided" in out["info"]["permutation"]["family_note"]


@pytest.mark.parametrize("scheme", ["images", "groups", "within"])
def test_streamed_null_equals_the_in_memory_null(scheme):
    """The null read in blocks of images (cut anywhere), or from group sums, equals the in-memory computation:
    same seed, same K, the same numbers to the bit."""
    rng = np.random.default_rng(3)
    n, d, V = 203, 16, 150
    X = rng.normal(size=(n, d)).astype(np.float32)
    is_to = np.arange(n) >= 81
    groups = {
        "images": None,
        "groups": np.where(is_to, 1000 + np.arange(n) // 3, np.arange(n) // 3),
        "within": rng.integers(0, 20, n),
    }[scheme]
    sh = permutation.draw_shuffles(is_to, groups, 64, seed=7)
    C = l2n(rng.normal(size=(V, d))).astype(np.float32)
    whole = permutation.permutation_null(X, sh, C, chunk=32)
    cuts = [0, 5, 6, 40, 41, 150, n]
    streamed = permutation.permutation_null((X[a:b] for a, b in zip(cuts, cuts[1:])), sh, C, chunk=32)
    for key in whole:
        assert np.array_equal(whole[key], streamed[key]), key
    # and it is the null of the labels drawn per image
    labels, _ = permutation.permutation_labels(is_to, groups, 64, seed=7)
    R = l2n(l2n(labels @ l2n(X)) - l2n((~labels) @ l2n(X)))
    assert np.allclose(whole["max"], (R @ C.T).max(1), atol=1e-5)
    if scheme == "groups":
        assert sh.labels.shape == (64, len(set(groups))) and sh.codes is not None  # group labels, no per-image ones


def test_test_units_count_groups_and_their_effective_size():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(10, 8)), rng.normal(size=(9, 8))
    g_nested = np.r_[[0] * 7 + [1, 2, 3], [4, 4, 5, 5, 6, 6, 7, 7, 7]]
    u = unit_stats.test_units(a, b, g_nested)
    assert (u["unit"], u["n_from"], u["n_to"], u["shuffle"]) == ("groups", 4, 4, "between")
    assert u["effective_n"] == pytest.approx(100 / 52 + 81 / 21)  # Kish: (sum n)^2 / sum n^2 per set
    assert np.allclose(u["from"][0], l2n(a)[:7].mean(0))
    g_span = np.r_[[0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [0, 1, 2, 3, 9, 9, 9, 9, 9]]
    u = unit_stats.test_units(a, b, g_span)
    assert u["shuffle"] == "within" and u["n_from"] == 4 and u["paired"].shape == (4, 8)
    assert np.allclose(u["paired"][0], l2n(b)[0] - l2n(a)[:2].mean(0))


def _traced_peak_of_null(n: int, d: int, grouped: bool) -> int:
    import tracemalloc

    is_to = np.arange(n) >= n // 3
    groups = np.where(is_to, 10_000_000 + np.arange(n) // 50, np.arange(n) // 50) if grouped else None
    sh = permutation.draw_shuffles(is_to, groups, 64, seed=0)
    C = l2n(np.random.default_rng(1).normal(size=(500, d))).astype(np.float32)

    def blocks():  # generated on the fly: the vectors are never held
        for i, start in enumerate(range(0, n, 10_000)):
            yield np.random.default_rng(i).standard_normal((min(10_000, n - start), d), dtype=np.float32)

    tracemalloc.start()
    permutation.permutation_null(blocks(), sh, C)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("grouped", [False, True])
def test_streamed_null_memory_does_not_scale_with_images_times_dimension(grouped):
    """The null read block by block: four times the images (30,000 -> 120,000 x 64) leave the traced peak
    nearly unchanged (chunks of a few MB), under half of one float32 copy of the vectors (31 MB)."""
    small, large = _traced_peak_of_null(30_000, 64, grouped), _traced_peak_of_null(120_000, 64, grouped)
    assert large < 1.3 * small, (small, large)
    assert large < 120_000 * 64 * 4 / 2, (small, large)


def _spanning_pairs(seed: int, n_pairs: int, n_side: int = 6, d: int = 16):
    """One group per set plus `n_pairs` pairs with one image in each set: only the pairs can be shuffled, so
    there are 2 ** n_pairs distinct labellings (the observed one among them)."""
    rng = np.random.default_rng(seed)
    X = l2n(rng.normal(size=(2 * (n_side + n_pairs), d)) + 2.0 * l2n(np.ones(d)))
    a, b = X[: n_side + n_pairs], X[n_side + n_pairs :]
    pairs = [f"pair {i}" for i in range(n_pairs)]
    return a, b, np.array(["from"] * n_side + pairs + ["to"] * n_side + pairs)


@pytest.mark.parametrize("n_pairs", [1, 2])
def test_p_fwer_counts_the_shuffles_that_reproduce_the_observed_labelling(n_pairs):
    """With 2 or 4 distinct labellings many shuffles reproduce the observed labelling; each must tie with it
    (the observed statistic is computed as the null's), so p >= (1 + their number) / (K + 1), and with 4
    labellings no split rejects at 0.05. Float rounding between two computations of one statistic dropped the
    ties (p = 1/(K + 1) = 0.02)."""
    E = cal.vocabulary(np.random.default_rng(2), 100, 16)
    K, low, rejected = 49, [], 0
    for seed in range(25):
        a, b, g = _spanning_pairs(seed, n_pairs)
        is_to = np.r_[np.zeros(len(a), bool), np.ones(len(b), bool)]
        copies = int((permutation.draw_shuffles(is_to, g, K, seed).image_labels() == is_to).all(1).sum())
        out = explain_vectors(
            compute_residual(a, b)[0],
            E,
            [f"c{i}" for i in range(100)],
            a,
            b,
            g,
            top=3,
            permutations=K,
            seed=seed,
            deflated_steps=2,
            min_explained=0.0,
        )
        assert out["info"]["permutation"]["distinct_shuffles"] == pytest.approx(2**n_pairs)
        ps = [p for side in ("adds", "removes") for col in ("p_fwer", "p_fwer_deflated") for p in out[side][col]]
        low += [(seed, copies, p) for p in ps if p < (1 + copies) / (K + 1) - 1e-12]
        rejected += min(ps) < 0.05
    assert not low, low
    if n_pairs == 2:
        assert rejected == 0


def test_deflated_step_one_keeps_both_sides_when_a_list_is_empty():
    """A large min_explained empties one list: the deflated test's first step must still be the page's
    two-sided family (its p at least the raw p_fwer of the top pick), not a one-sided test of the other list."""
    E = cal.vocabulary(np.random.default_rng(1), 200, 24)
    checked = 0
    for seed in range(6):
        a, b, _ = _two_sets(seed, n=60)
        out = explain_vectors(
            compute_residual(a, b)[0],
            E,
            [f"c{i}" for i in range(200)],
            a,
            b,
            top=3,
            permutations=99,
            seed=seed,
            deflated_steps=2,
            min_explained=0.3,
        )
        for side, other in (("adds", "removes"), ("removes", "adds")):
            if len(out[side]) and not len(out[other]):
                checked += 1
                top = out[side].iloc[0]
                assert top["p_fwer_deflated"] >= top["p_fwer"] - 1e-12, (seed, side, top)
    assert checked >= 2


@pytest.mark.parametrize("where", ["r", "E", "x_from", "x_to"])
def test_non_finite_inputs_raise_one_config_error(where):
    from embedlab.errors import ConfigError

    E = cal.vocabulary(np.random.default_rng(1), 20, 8)
    a, b, _ = _two_sets(0, n=10, d=8)
    args = {"r": compute_residual(a, b)[0], "E": E.copy(), "x_from": a.copy(), "x_to": b.copy()}
    args[where].flat[3] = np.nan
    with pytest.raises(ConfigError, match=where) as err:
        explain_vectors(
            args["r"], args["E"], [f"c{i}" for i in range(20)], args["x_from"], args["x_to"], permutations=9
        )
    assert "\n" not in str(err.value)


def _westfall_young(refs: dict, values: dict) -> dict:
    """Brute force: each labelling's p on each side (share of labellings at least as large there, ties
    counted), its best over the sides; a value's p is the share of labellings whose best p is at most its own."""
    L = len(next(iter(refs.values())))
    best = [min(sum(refs[s][k] >= refs[s][j] for k in range(L)) / L for s in refs) for j in range(L)]
    return {
        s: np.array([sum(b <= sum(refs[s][k] >= x for k in range(L)) / L for b in best) / L for x in xs])
        for s, xs in values.items()
    }


def test_family_p_equals_brute_force_westfall_young_with_ties():
    """Replaces a symmetric two-side check that a Bonferroni combiner also passed: the exact min-p, ties
    included, on nulls of different scales, and the usual (1 + #{null >= x}) / (K + 1) for one side."""
    rng = np.random.default_rng(0)
    null = {"a": rng.integers(0, 6, 40).astype(float), "b": 7.0 * rng.integers(0, 3, 40) + 1.0}  # many ties
    observed = {"a": 4.0, "b": 15.0}
    values = {"a": np.array([4.0, 3.0, 0.0]), "b": np.array([15.0, 8.0, 1.0])}
    got = permutation.family_p(observed, null, values)
    want = _westfall_young({s: np.r_[observed[s], null[s]] for s in null}, values)
    for s in values:
        assert np.allclose(got[s], want[s]), (s, got[s], want[s])
    one = permutation.family_p({"a": 4.0}, {"a": null["a"]}, {"a": values["a"]})["a"]
    assert np.allclose(one, (1 + (null["a"][None, :] >= values["a"][:, None]).sum(1)) / 41)


def test_smallest_attainable_p_counts_the_swap_of_equal_sets():
    """Equal sets, page family: a labelling and its swap give the same page statistic, so the floor is 2/distinct."""
    E = cal.vocabulary(np.random.default_rng(1), 50, 16)
    rng = np.random.default_rng(0)
    a, b = l2n(rng.normal(size=(3, 16))), l2n(rng.normal(size=(3, 16)))
    out = explain_vectors(compute_residual(a, b)[0], E, [f"c{i}" for i in range(50)], a, b, top=3, permutations=200)
    perm = out["info"]["permutation"]
    assert perm["distinct_shuffles"] == pytest.approx(20)
    assert perm["smallest_attainable_p"] == pytest.approx(2 / 20)
    one_sided = explain_vectors(
        compute_residual(a, b)[0], E, [f"c{i}" for i in range(50)], a, b, top=3, permutations=200, family="adds"
    )["info"]["permutation"]
    assert one_sided["smallest_attainable_p"] == pytest.approx(1 / 20)


def test_one_spanning_group_is_named_in_a_warning_and_the_scheme(caplog):
    is_to = np.r_[np.zeros(40, bool), np.ones(40, bool)]
    groups = np.r_[np.arange(40) // 4, 100 + np.arange(40) // 4]
    groups[[0, 79]] = 555  # one group holds an image of each set
    with caplog.at_level("WARNING", logger="embedlab.analysis.permutation"):
        sh = permutation.draw_shuffles(is_to, groups, 8, seed=0)
    assert "1 of 21 groups" in sh.info["scheme"] and "1 of 21 groups" in caplog.text


def _singleton_groups_peak(n: int) -> int:
    is_to = np.arange(n) >= n // 3
    groups = np.arange(n)
    groups[1::50] -= 1  # a few pairs, the rest singletons
    groups = np.where(is_to, n + groups, groups)
    sh = permutation.draw_shuffles(is_to, groups, 64, seed=0)
    assert sh.codes is not None  # drawn by groups
    return _peak_of(lambda blocks: permutation.permutation_null(blocks, sh, _C64), n, 64)


def test_streamed_null_memory_with_mostly_singleton_groups():
    """Groups of mostly one image (G close to n): the null accumulates per chunk, not a (G, d) float64 table of
    group sums (4 times the float32 vectors): four times the images leave the peak nearly unchanged."""
    small, large = _singleton_groups_peak(30_000), _singleton_groups_peak(120_000)
    assert large < 1.3 * small, (small, large)
    assert large < 120_000 * 64 * 4 / 2, (small, large)


_C64 = l2n(np.random.default_rng(1).normal(size=(500, 64))).astype(np.float32)


def _peak_of(fn, n: int, d: int) -> int:
    import tracemalloc

    def blocks():
        for i, start in enumerate(range(0, n, 10_000)):
            yield np.random.default_rng(i).standard_normal((min(10_000, n - start), d), dtype=np.float32)

    tracemalloc.start()
    fn(blocks())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("layout", ["images", "nested", "spanning"])
def test_observed_labelling_is_shuffle_zero_and_leaves_the_draws_alone(layout):
    """draw_shuffles(observed=True): row 0 is the observed labelling, rows 1.. the same draws as without it."""
    rng = np.random.default_rng(0)
    is_to = rng.random(203) < 0.4
    groups = {
        "images": None,
        "nested": np.where(is_to, 100, 0) + rng.integers(0, 20, 203),
        "spanning": rng.integers(0, 15, 203),
    }[layout]
    plain = permutation.draw_shuffles(is_to, groups, 30, seed=7)
    both = permutation.draw_shuffles(is_to, groups, 30, seed=7, observed=True)
    assert both.K == plain.K + 1 and np.array_equal(both.labels[1:], plain.labels)
    assert np.array_equal(both.image_labels()[0], is_to)
    if layout != "nested":  # groups permuted as units carry their sizes: the 'to' count varies
        assert (both.image_labels().sum(1) == is_to.sum()).all()
