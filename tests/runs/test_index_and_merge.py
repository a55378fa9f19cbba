"""Run folders at scale: FAISS index kinds follow the size rule and record honest recall, a stale re-ranked index is
refused, merges renumber and refuse mixed runs, search says which index answered."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedlab.errors import ConfigError, IncompatibleRunError
from embedlab.runs.index import load_index
from embedlab.runs.merge import merge_runs
from embedlab.runs.store import Run
from tests.conftest import REPO
from tests.helpers.synthetic_runs import make_run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("scale") / "run", 5000, dtype="float16")


def test_a_stale_reranked_index_is_refused(tmp_path):
    from embedlab.errors import IncompatibleRunError
    from embedlab.runs.index import index_run
    from embedlab.runs.index_kinds import RerankedIndex

    run = make_run(tmp_path / "st", 3000, d=16, groups=50, shard_size=1000)
    index_run(run.path, "ivfsq8", queries=50)
    idx = load_index(Run(run.path))
    ids = run.metadata["row_id"].to_numpy()
    stale = RerankedIndex(idx.index, run, ids[:100] + 10**6)  # metadata that no longer holds these ids
    with pytest.raises(IncompatibleRunError, match="stale"):
        stale.search(run.vectors[:1], 5)
    assert np.array_equal(idx.search(run.vectors[:1], 5)[1][0][:1], ids[:1])


# ---- indices --------------------------------------------------------------------------------------------------


def test_auto_follows_the_size_rule():
    from embedlab.runs.index_kinds import auto_kind

    G = 1 << 30
    assert auto_kind(500_000, 512, 4 * G)[0] == "flat"
    assert auto_kind(2_000_000, 64, 4 * G)[0] == "hnsw"
    assert auto_kind(4_000_000, 512, 4 * G)[0] == "ivfpqfs"  # re-ranked from the stored vectors
    assert auto_kind(4_000_000, 512, 16 * G)[0] == "hnsw"
    assert auto_kind(100_000_000, 768, 16 * G)[0] == "ivfpqfs"
    assert auto_kind(100_000_000, 768, 4 * G)[0] == "ivfpq"  # only 8-bit codes of 32 bytes fit
    with pytest.raises(ConfigError, match="No index"):
        auto_kind(10**9, 768, 1 << 20)


@pytest.mark.parametrize("kind", ["ivf", "ivfsq8", "ivfpqfs"])
def test_approximate_index_recall_is_recorded_and_honest(tmp_path, kind):
    """Quantised codes (ivfsq8) answer through exact re-ranking from the stored vectors: the recorded recall is
    that of what `load_index` returns, recomputed here with numpy."""
    import faiss

    from embedlab.runs.index import index_run
    from embedlab.runs.index_kinds import RerankedIndex, faiss_index

    run = make_run(tmp_path / "ivf", 20_000, d=32, groups=400, shard_size=4096, dtype="float16")
    info = index_run(run.path, kind, queries=150, recall_target=0.9)
    rec = Run(run.path).manifest["index"]
    assert isinstance(load_index(Run(run.path)), RerankedIndex) == (kind != "ivf") == ("rerank" in rec)
    assert rec["kind"] == kind and set(rec["recall"]) == {"1", "10", "100"} and rec["latency"]["median_ms"] > 0
    assert rec["recall"] == info["recall"] and (run.path / "index.faiss").exists()
    # recompute recall@10 independently: numpy exact search against the written index with its recorded setting
    X, ids = run.vectors, run.metadata["row_id"].to_numpy()
    q = np.random.default_rng(5).choice(len(X), 200, replace=False)
    exact = np.argsort(-(X[q] @ X.T), axis=1)[:, :11]
    index = load_index(Run(run.path))
    assert faiss.extract_index_ivf(faiss_index(index)).nprobe == int(rec["search_params"].split("=")[1].split(",")[0])
    _, found = index.search(X[q], 11)
    hits = [len(set(f[f != ids[i]][:10]) & set(ids[e[e != i][:10]])) / 10 for i, f, e in zip(q, found, exact)]
    assert abs(np.mean(hits) - rec["recall"]["10"]) < 0.06, (np.mean(hits), rec["recall"])


def test_finalize_keeps_exact_index_within_budget_else_points_to_index(tmp_path, small_run):
    from embedlab.runs.index import finalize_index

    assert small_run.manifest["index"]["kind"] == "flat" and load_index(small_run).ntotal == len(small_run)
    run = make_run(tmp_path / "nb", 1500, d=16)
    note = finalize_index(run.path, memory_budget=1000)
    assert note["kind"] is None and "embedlab index" in note["note"]
    with pytest.raises(ConfigError, match="embedlab index"):
        load_index(Run(run.path))


# ---- merge ----------------------------------------------------------------------------------------------------


def test_merge_renumbers_and_refuses_mixed_runs(tmp_path):
    a = make_run(tmp_path / "a", 1200, d=16, shard_size=500)
    b = make_run(tmp_path / "b", 900, d=16, shard_size=500)
    summary = merge_runs([a.path, b.path], tmp_path / "m")
    m = Run(tmp_path / "m")
    assert summary["embedded"] == 2100 and m.manifest["status"] == "complete"
    assert {"manifest", "metadata", "errors"} <= set(summary["files"]) and all(
        Path(p).exists() for p in summary["files"].values()
    )
    assert np.array_equal(m.vectors, np.r_[a.vectors, b.vectors]) and m.metadata["row_id"].is_unique
    assert m.metadata["merged_from"].tolist() == [0] * 1200 + [1] * 900
    other = make_run(tmp_path / "c", 300, d=16, seed=1)  # other weights
    with pytest.raises(IncompatibleRunError, match="weights_sha256"):
        merge_runs([a.path, other.path], tmp_path / "m2")
    man = json.loads((b.path / "manifest.json").read_text())
    man["preprocess"] = "resize 256"
    (b.path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(IncompatibleRunError, match="preprocess"):
        merge_runs([a.path, b.path], tmp_path / "m3")
    with pytest.raises(ConfigError, match="overwrite"):
        merge_runs([a.path, a.path], tmp_path / "m")


def test_index_and_merge_cli_help_lists_every_kind():
    p = subprocess.run(
        [sys.executable, "-m", "embedlab", "index", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    from embedlab.runs.index_kinds import KINDS

    assert p.returncode == 0 and all(k in p.stdout for k in KINDS) and "--memory-budget" in p.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "embedlab", "index", "x", "--kind", "annoy"], capture_output=True, text=True, cwd=REPO
    )
    assert bad.returncode == 2


def test_search_says_which_index_answered(tiny_run):
    from embedlab.runs.search import search

    info = search(tiny_run, text="a photo", k=3, device="cpu")
    assert info["index"].startswith("flat") and info["exact"] and "recall" not in info
    info = search(tiny_run, text="a photo", k=3, index="ivf", device="cpu")
    assert not info["exact"] and 0 <= info["recall_at_k"] <= 1 and set(info["recall"]) >= {"1", "10", "3"}
