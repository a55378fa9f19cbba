"""Analysis at scale and the one selector: streaming equals in-memory, memory stays bounded."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import embedlab.analysis.residual as residual_mod
import embedlab.analysis.sums as sums
from embedlab.analysis.bootstrap import bootstrap_stability
from embedlab.analysis.explain import explain_vectors
from embedlab.analysis.formula import compute_residual, l2n
from embedlab.analysis.residual import residual
from embedlab.analysis.sums import ACCUMULATE_THREADS, group_bootstrap_bytes, stream_sums
from embedlab.datasets.manifest import read_manifest
from embedlab.datasets.selector import Selector, split_spec
from embedlab.errors import ConfigError, ManifestError
from embedlab.runs.store import Run
from tests.conftest import REPO
from tests.helpers.synthetic_runs import make_run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("scale") / "run", 5000, dtype="float16")


# ---- Selector -------------------------------------------------------------------------------------------------


def test_selector_parses_once_and_selects_metadata_and_entries():
    meta = pd.DataFrame({"role": ["a", "b", "a", "b"], "split": ["x", "x", "y", "y"]})
    sel = Selector.parse("a,split=y")
    assert sel.clauses == (("role", "a"), ("split", "y")) and sel.columns == ["role", "split"]
    assert sel.mask(meta).tolist() == [False, False, True, False]
    assert Selector.parse(sel) is sel
    cat = meta.astype("category")
    assert sel.mask(cat).tolist() == sel.mask(meta).tolist()  # categorical columns, same answer
    entries = [{"role": "a", "split": "y"}, {"role": "b", "split": "y"}]
    assert sel.filter(entries) == entries[:1]

    class E:
        role, split = "a", "y"

    assert len(sel.filter([E(), E()])) == 2
    with pytest.raises(ConfigError, match="no metadata column 'colour'"):
        Selector.parse("colour=red").mask(meta)
    with pytest.raises(ConfigError, match=r"has role='c'.*Values present: \['a', 'b'\]"):
        Selector.parse("c").mask(meta)
    with pytest.raises(ConfigError, match="together none"):
        Selector.parse("b,split=x,role=a").mask(meta)
    with pytest.raises(ConfigError, match="Empty selector"):
        Selector.parse(" , ")
    assert split_spec("runs/r1:role=b,split=x", "backlit") == (
        split_spec("runs/r1", "role=b,split=x")[0],
        Selector.parse("role=b,split=x"),
    )
    assert split_spec("runs/r1", "backlit")[1].clauses == (("role", "backlit"),)


def test_manifest_and_run_select_use_the_selector(tmp_path, small_run):

    p = tmp_path / "m.jsonl"
    p.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"path": "pkg:skimage/astronaut", "role": "backlit", "split": "test"},
                {"path": "pkg:skimage/coffee", "role": "welllit"},
            ]
        )
        + "\n"
    )
    man = read_manifest(p)
    assert [e.role for e in man.select("backlit,split=test")] == ["backlit"]
    assert [e.role for e in man.select(role="welllit")] == ["welllit"]
    with pytest.raises(ManifestError, match=r"role='backlit' and split='train'.*Roles present"):
        man.select("backlit,split=train")
    m = small_run.select("role=welllit")
    assert m.tolist() == (small_run.metadata["role"] == "welllit").tolist()


# ---- streaming reader and residual ----------------------------------------------------------------------------


def test_no_group_sums_and_no_budget_warning_without_a_bootstrap(tmp_path, small_run, caplog):
    small = residual(small_run.path, "backlit", "welllit", tmp_path / "r0.npy", bootstrap=0, memory_budget=20_000)
    assert small.info["bootstrap"] is None and "would not fit" not in caplog.text
    with_boot = residual(small_run.path, "backlit", "welllit", tmp_path / "r1.npy", bootstrap=5, memory_budget=20_000)
    assert "would not fit" in caplog.text and with_boot.info["bootstrap"]["unit"] == "image"
    assert np.allclose(small.vector, with_boot.vector, rtol=0, atol=1e-7)


def test_group_bootstrap_budget_counts_both_threads_sums_and_the_draws(tmp_path, small_run):
    """The group bootstrap is chosen exactly while its sums (one copy per pass thread) and its draws fit half the
    memory budget; past it, images are resampled."""

    meta = small_run.read_metadata(["role", "group"])
    n_groups = [meta["group"][meta["role"] == r].nunique() for r in ("backlit", "welllit")]
    need = group_bootstrap_bytes(n_groups, small_run.dim, 20, np.float32)
    assert need == sum(n_groups) * (small_run.dim * ACCUMULATE_THREADS * 4 + 20 * 8)
    units = [
        residual(small_run.path, "backlit", "welllit", tmp_path / f"b{b}.npy", bootstrap=20, memory_budget=b).info[
            "bootstrap"
        ]["unit"]
        for b in (2 * need, 2 * need - 2)
    ]
    assert units == ["group", "image"]


def test_weighted_group_sums_chunk_by_chunk():
    from embedlab.analysis.bootstrap import _weighted_sums

    rng = np.random.default_rng(0)
    W, S = rng.integers(0, 3, (5, 30)).astype(float), rng.standard_normal((30, 4)).astype(np.float32)
    assert np.allclose(_weighted_sums(W, S, chunk=7), W @ S.astype(np.float64), rtol=0, atol=1e-12)


def test_one_group_sum_type_for_both_runs(tmp_path, monkeypatch):
    """Two runs whose largest groups fall on either side of the float32 limit store their group sums alike, and the
    sidecar names that type."""

    a = make_run(tmp_path / "a", 1500, d=16, groups=20)
    b = make_run(tmp_path / "b", 1500, d=16, groups=200)
    largest = [
        r.metadata["group"][r.metadata["role"] == role].value_counts().max()
        for r, role in ((a, "backlit"), (b, "welllit"))
    ]
    assert largest[0] > largest[1]  # alone, run a's sums would be float64 and run b's float32
    monkeypatch.setattr(sums, "F32_GROUP_LIMIT", int(largest[1]))
    seen = []
    orig = stream_sums
    monkeypatch.setattr(residual_mod, "stream_sums", lambda *a, **k: seen.append(orig(*a, **k)) or seen[-1])
    res = residual(a.path, "backlit", "welllit", tmp_path / "r.npy", to_run=str(b.path), bootstrap=10)
    assert [part[0]["group_sums"].dtype for part in seen] == [np.float64, np.float64]
    assert res.info["bootstrap"]["unit"] == "group" and res.info["bootstrap"]["group_sums_dtype"] == "float64"


def test_metadata_rows_in_the_order_asked(small_run):
    """Unsorted and repeated positions across shards come back in the order asked, as the full metadata has them;
    each set's non-semantic sample holds that set's sampled rows."""
    from embedlab.analysis.residual import _read_sets
    from embedlab.analysis.sums import nonsemantic_samples

    full = small_run.metadata
    rows = np.array([4999, 3, 1500, 3, 702, 0, 4999, 2100])
    cols = ["row_id", "path", "mean_luma", "format"]
    got = small_run.metadata_rows(rows, cols)
    assert got.astype(object).values.tolist() == full.iloc[rows][cols].astype(object).values.tolist()
    with pytest.raises(ConfigError, match="out of range"):
        small_run.metadata_rows(np.array([5000]), cols)
    _, _, a, b = _read_sets(small_run, small_run, "backlit", "welllit")
    for s, sample in zip((a, b), nonsemantic_samples(a, b, 300, 0)):
        want = full.iloc[s.sample_rows(300, 0)]
        assert len(sample) == 300 and sample["mean_luma"].tolist() == want["mean_luma"].tolist()
        assert sample["width"].tolist() == want["width"].tolist()


@pytest.mark.parametrize("f32_limit", [65_536, 3])
def test_stream_sums_equal_numpy_sums(small_run, monkeypatch, f32_limit):
    """Set totals (float64) and group sums equal numpy's on the normalised vectors, whatever the block size: group
    sums stored in float32 while no group is larger than the limit (to float32 rounding), float64 past it."""

    monkeypatch.setattr(sums, "F32_GROUP_LIMIT", f32_limit)
    meta = small_run.read_metadata(["role", "group"])
    X = l2n(small_run.take())
    masks = [(meta["role"] == "backlit").to_numpy(), (meta["role"] == "welllit").to_numpy()]
    codes = [pd.factorize(meta["group"].to_numpy()[m])[0] for m in masks]
    assert max(np.bincount(c).max() for c in codes) > 3
    for block in (257, 4096):
        for got, m, c in zip(stream_sums(small_run, masks, codes, block=block), masks, codes):
            want = np.zeros((c.max() + 1, X.shape[1]))
            np.add.at(want, c, X[m])
            assert got["group_sums"].dtype == (np.float32 if f32_limit > 3 else np.float64)
            tol = 1e-6 if f32_limit > 3 else 1e-14  # relative to the largest sum
            assert np.abs(got["group_sums"] - want).max() <= tol * np.abs(want).max()
            assert np.allclose(got["sum"], X[m].sum(0), rtol=0, atol=1e-12)
            assert got["group_sizes"].tolist() == np.bincount(c).tolist()


def test_read_metadata_columns_equal_the_full_metadata(tmp_path, monkeypatch):
    """Text columns come back as categoricals read from parquet's dictionaries, equal value for value to the full
    metadata, also when one shard's group column is empty (stored with the null type) and another's is partly empty."""
    import analyses.bench.scale as bench

    orig = bench.synthetic_shard

    def shard(first, n, *a, **k):
        X, meta = orig(first, n, *a, **k)
        if first == 0:
            meta = meta.assign(group=None)
        elif first == 700:
            meta.loc[meta.index[::3], "group"] = None
        return X, meta

    monkeypatch.setattr(bench, "synthetic_shard", shard)
    bench.write_synthetic_run(tmp_path / "run", 2000, 8, 30, shard_size=700, V=20)
    run = Run(tmp_path / "run")
    cols = ["role", "group", "format", "mean_luma"]
    got, full = run.read_metadata(cols), run.metadata[cols]
    assert all(isinstance(got[c].dtype, pd.CategoricalDtype) for c in ("role", "group", "format"))
    assert got["group"].isna().sum() == full["group"].isna().sum() > 700
    for c in cols:
        assert (
            got[c].astype(object).where(got[c].notna(), None).tolist()
            == full[c].astype(object).where(full[c].notna(), None).tolist()
        )


def test_iter_vectors_streams_what_vectors_holds(small_run):
    X = small_run.vectors
    mask = small_run.select("welllit")
    for rows in (None, mask, np.flatnonzero(mask)):
        got = list(small_run.iter_vectors(rows, block=333))
        pos = np.concatenate([p for p, _ in got])
        assert np.array_equal(pos, np.arange(len(X)) if rows is None else np.flatnonzero(mask))
        assert np.array_equal(np.concatenate([b for _, b in got]), X[pos])
        assert max(len(p) for p, _ in got) <= 333
    assert np.array_equal(small_run.take(mask), X[mask])


@pytest.mark.parametrize("method", ["rave", "mean-diff"])
def test_streaming_residual_and_group_bootstrap_equal_in_memory(tmp_path, small_run, method):
    res = residual(
        small_run.path, "backlit", "welllit", tmp_path / "r.npy", method=method, bootstrap=40, seed=3, block=257
    )
    X, meta = small_run.vectors, small_run.metadata
    a, b = (meta["role"] == "backlit").to_numpy(), (meta["role"] == "welllit").to_numpy()
    r, thr, _, _ = compute_residual(X[a], X[b], method)
    assert np.abs(res.vector - r).max() < 1e-6 and abs(res.thr - thr) < 1e-9
    ref = bootstrap_stability(X[a], X[b], meta["group"][a].to_numpy(), meta["group"][b].to_numpy(), 40, 3, method)
    got = res.info["bootstrap"]
    assert got["unit"] == ref["unit"] == "group" and "multinomial" in got["scheme"]
    # the same draws; group sums stored in float32 (this run's groups are small): equal to about 1e-8
    assert got["group_sums_dtype"] == "float32"
    assert abs(got["mean_cosine"] - ref["mean_cosine"]) < 1e-7 and np.allclose(got["ci95"], ref["ci95"], atol=1e-7)


def test_image_bootstrap_exact_and_poisson_schemes(tmp_path):
    run = make_run(tmp_path / "ng", 3000, d=16, no_groups=True)
    X, meta = run.vectors, run.metadata
    a, b = (meta["role"] == "backlit").to_numpy(), (meta["role"] == "welllit").to_numpy()
    ref = bootstrap_stability(X[a], X[b], None, None, 60, 1)
    exact = residual(run.path, "backlit", "welllit", tmp_path / "e.npy", bootstrap=60, seed=1).info["bootstrap"]
    assert exact["unit"] == "image" and "multinomial" in exact["scheme"]
    # the same draws, summed in another order (streamed blocks vs one matrix product): equal to float64 rounding
    assert abs(exact["mean_cosine"] - ref["mean_cosine"]) < 1e-8
    # a budget too small for the resample counts: Poisson weights while streaming, the same for any block size
    p1 = residual(
        run.path, "backlit", "welllit", tmp_path / "p1.npy", bootstrap=60, seed=1, memory_budget=10_000, block=101
    ).info["bootstrap"]
    p2 = residual(
        run.path, "backlit", "welllit", tmp_path / "p2.npy", bootstrap=60, seed=1, memory_budget=10_000, block=4096
    ).info["bootstrap"]
    assert "Poisson" in p1["scheme"] and p1["mean_cosine"] == pytest.approx(p2["mean_cosine"], abs=1e-9)
    # equal in distribution: the stability figure agrees with the resampling bootstrap's to its own noise
    assert abs(p1["mean_cosine"] - ref["mean_cosine"]) < 0.02


@pytest.mark.slow
def test_streaming_residual_memory_stays_bounded(tmp_path):
    """200,000 x 512 vectors (float16 on disk, 410 MB as float32): the streaming residual and explain (K = 100,
    2,000 concepts), each in a subprocess, peak under 300 MB above their imports; reading the vectors into memory
    (the control) exceeds 400 MB."""
    run = make_run(tmp_path / "big", 200_000, d=512, groups=2000, shard_size=32768, dtype="float16", V=10)
    pre = (
        "import re, embedlab.analysis.residual, embedlab.runs.store\n"
        "import numpy, pandas, numba, pyarrow.parquet, sklearn.metrics\n"
        "def st(k): return int(re.search(k + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024\n"
        "base = st('VmRSS')\n"
    )
    post = "\nprint('MB', st('VmHWM') - base)"
    explain = (
        f"from embedlab.analysis.image_sets import ImageSets, set_group_ids\n"
        f"from embedlab.analysis.explain import explain_vectors\nimport numpy as np\n"
        f"run = embedlab.runs.store.Run({str(run.path)!r})\nm = run.read_metadata(['role', 'group'])\n"
        f"a, b = (m.role == 'backlit').to_numpy(), (m.role == 'welllit').to_numpy()\n"
        f"E = np.random.default_rng(0).standard_normal((2000, 512)).astype(np.float32)\n"
        f"explain_vectors(E[0], E, [str(i) for i in range(2000)], ImageSets.from_runs(run, a, run, b), None, "
        f"set_group_ids(m.group[a], m.group[b]), permutations=100, exemplars=3)"
    )
    codes = {
        "streaming": f"embedlab.analysis.residual.residual({str(run.path)!r}, 'backlit', 'welllit', "
        f"{str(tmp_path / 'r.npy')!r})",
        "explain": explain,
        "materialised": f"embedlab.runs.store.Run({str(run.path)!r}).vectors",
    }
    peak = {}
    for name, code in codes.items():
        p = subprocess.run([sys.executable, "-c", pre + code + post], capture_output=True, text=True, cwd=REPO)
        assert p.returncode == 0, p.stderr[-2000:]
        peak[name] = float(re.findall(r"MB ([\d.]+)", p.stdout)[-1])
    assert peak["materialised"] > 400, peak  # the bound below would catch a reader that loads the run
    assert peak["streaming"] < 300, peak
    assert peak["explain"] < 300, peak


def _explain_both_ways(run, monkeypatch=None, **kw):
    """explain_vectors on the run's two sets read block by block from the shards, and on the same vectors in memory."""

    from analyses.bench.scale import vocabulary
    from embedlab.analysis.image_sets import ImageSets, set_group_ids

    E, concepts = vocabulary(50, run.dim)
    meta = run.metadata
    a, b = (meta["role"] == "backlit").to_numpy(), (meta["role"] == "welllit").to_numpy()
    groups = set_group_ids(meta["group"][a], meta["group"][b])
    r = compute_residual(run.vectors[a], run.vectors[b])[0]
    args = dict(top=5, permutations=99, seed=4, candidates=20, exemplars=2, **kw)
    streamed = explain_vectors(r, E, concepts, ImageSets.from_runs(run, a, run, b, block=333), None, groups, **args)
    held = explain_vectors(r, E, concepts, run.vectors[a], run.vectors[b], groups, **args)
    return streamed, held


@pytest.mark.parametrize("grouped", [True, False])
def test_streaming_explain_equals_in_memory(tmp_path, small_run, grouped):
    """Ranking, per-concept statistics, permutation p-values, the figure's similarities and the exemplars are the
    same to the bit whether the sets come from the shards in blocks of 333 or as two arrays."""
    run = small_run if grouped else make_run(tmp_path / "ng", 3000, no_groups=True)
    streamed, held = _explain_both_ways(run)
    for side in ("adds", "removes"):
        pd.testing.assert_frame_equal(streamed[side], held[side])
    assert streamed["info"]["test_unit"]["unit"] == ("groups" if grouped else "images")
    assert streamed["info"]["images"] == len(run) and streamed["info"]["read_from"] == "runs"
    assert held["info"]["read_from"] == "arrays"
    for s in ("from", "to"):
        assert np.array_equal(streamed["figure"][s], held["figure"][s])
        for (sv, sp), (hv, hp) in zip(streamed["nearest"][s], held["nearest"][s]):
            assert np.array_equal(sp, hp) and np.array_equal(sv, hv)
    # the exemplars are each set's true nearest images to the concept's text embedding
    X = run.vectors[(run.metadata["role"] == "backlit").to_numpy()]
    from analyses.bench.scale import vocabulary

    E, _ = vocabulary(50, run.dim)
    j = streamed["figure"]["index"][0]
    assert set(streamed["nearest"]["from"][0][1]) == set(np.argsort(-(X @ E[j]))[:2])


def test_group_ids_of_two_sets_whatever_their_labels():
    """Equal labels share an id across the sets; a missing label is a group of its own, also when one set has no
    labels at all; a stream shorter than the sets is refused."""
    from embedlab.analysis.image_sets import ImageSets, set_group_ids
    from embedlab.analysis.unit_stats import collect

    ids = set_group_ids(pd.Series([None, None]), pd.Series(["a", "a", "b"]))
    assert len(set(ids[:2])) == 2 and ids[2] == ids[3] != ids[4] and not set(ids[:2]) & set(ids[2:])
    ids = set_group_ids(pd.Series(["x", 3, None], dtype=object).astype("category"), pd.Series(["3", "x"]))
    assert ids[0] == ids[4] and ids[1] == ids[3] and ids[2] not in ids[[0, 1, 3, 4]]
    assert set_group_ids(pd.Series([None]), pd.Series([np.nan])) is None
    short = ImageSets(3, 3, lambda: (np.ones((4, 8)),))
    with pytest.raises(ValueError, match="hold 4 rows but the sets have 6"):
        collect(short, None, np.ones((1, 8)))


def test_histogram_auroc_is_close_and_states_its_error(tmp_path, monkeypatch):
    """Past EXACT_SCORE_LIMIT image scores, AUROC comes from fine histograms: within its stated error of exact."""
    from embedlab.analysis import unit_stats

    run = make_run(tmp_path / "ng", 3000, no_groups=True)
    _, exact = _explain_both_ways(run)
    monkeypatch.setattr(unit_stats, "EXACT_SCORE_LIMIT", 10)
    _, binned = _explain_both_ways(run)
    assert "histograms" in binned["info"]["test_unit"]["auroc"]
    err = binned["info"]["test_unit"]["auroc_max_error"]
    assert 0 < err < 0.01
    for side in ("adds", "removes"):
        assert np.abs(binned[side]["auroc"] - exact[side]["auroc"]).max() <= err + 1e-9
        assert np.allclose(binned[side]["welch_p"], exact[side]["welch_p"])


# ---- plot sample ----------------------------------------------------------------------------------------------


def test_plot_sample_is_stratified_seeded_and_streamed(tmp_path, small_run):
    from embedlab.reports.plot import plot
    from embedlab.reports.projection import stratified_sample

    meta = small_run.metadata
    rows = stratified_sample(meta["role"].to_numpy(), meta["group"].to_numpy(), 600, seed=2)
    assert np.array_equal(rows, stratified_sample(meta["role"].to_numpy(), meta["group"].to_numpy(), 600, seed=2))
    assert 590 <= len(rows) <= 610 and np.all(np.diff(rows) > 0)
    share = meta["role"].iloc[rows].value_counts(normalize=True)
    assert abs(share["welllit"] - (meta["role"] == "welllit").mean()) < 0.01
    per_group = meta["group"].iloc[rows].value_counts()
    assert per_group.max() - per_group.min() <= 2 and len(per_group) == meta["group"].nunique()  # spread over groups
    assert np.array_equal(small_run.take(rows), small_run.vectors[rows])
    files = plot(small_run.path, tmp_path / "plots", methods=("pca",), projector=True, max_points=600, seed=2)["files"]
    sample = json.loads(open(files["sample"]).read())
    assert sample["points"] == len(rows) and sample["of"] == len(meta)
    tsv = pd.read_csv(tmp_path / "plots" / "projector" / "metadata.tsv", sep="\t")
    assert tsv["row_id"].tolist() == meta["row_id"].iloc[rows].tolist()


def test_residual_across_two_runs_streams_each(tmp_path):
    a = make_run(tmp_path / "a", 1500, d=16, no_groups=True)
    b = make_run(tmp_path / "b", 1300, d=16, no_groups=True)
    res = residual(
        a.path,
        "backlit",
        "welllit",
        tmp_path / "r.npy",
        to_run=str(b.path),
        bootstrap=30,
        seed=4,
        memory_budget=10_000,
        block=97,
    )
    ma, mb = a.select("backlit"), b.select("welllit")
    r = compute_residual(a.vectors[ma], b.vectors[mb])[0]
    assert np.abs(res.vector - r).max() < 1e-6 and res.info["to"]["count"] == int(mb.sum())
    assert "Poisson" in res.info["bootstrap"]["scheme"] and 0.5 < res.info["bootstrap"]["mean_cosine"] <= 1


def test_nonsemantic_auroc_equals_scikit_learn():
    """The residual's non-semantic checks compute AUROC without importing scikit-learn: the same numbers, ties too."""
    from sklearn.metrics import roc_auc_score

    from embedlab.analysis.formula import auroc

    rng = np.random.default_rng(0)
    for ties in (False, True):
        a = rng.integers(0, 5, 300).astype(float) if ties else rng.standard_normal(300)
        b = rng.integers(0, 6, 200).astype(float) if ties else rng.standard_normal(200) + 0.3
        assert auroc(a, b) == pytest.approx(roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b]), abs=1e-12)
