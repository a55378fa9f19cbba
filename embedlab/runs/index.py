"""FAISS indices over a run's vectors, built out of core: trained on a sample, filled shard by shard from the
memory-mapped vectors, written atomically. Exact inner product (flat) by default; approximate kinds (HNSW,
IVF, IVF-SQ8, IVF-PQ) are chosen by size (`auto`, see `auto_kind`) and always recorded with their recall@1/10/100
against exact search on held-out queries and their single-query latency, in the run manifest.

Kinds live in one table, `KINDS` (name -> builder and help); the CLI builds its choices from it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from embedlab._io import atomic_write_json, parse_bytes, read_json
from embedlab._validate import Interval, check_param
from embedlab.errors import ConfigError
from embedlab.runs.index_kinds import (
    GPU_KINDS,
    KIND_CHOICES,
    KINDS,
    RERANK_FACTORS,
    RERANKED,
    RerankedIndex,
    _search_grid,
    auto_kind,
    faiss_index,
    ivf_lists,
    merge_topk,
    new_index,
    read_index,
    recall_at_k,
    search,
    set_search_params,
    use_gpu,
    write_index,
)

log = logging.getLogger(__name__)
INDEX_FILE = "index.faiss"
RECALL_KS = (1, 10, 100)
DEFAULT_BUDGET = "4G"


def load_index(run):
    """The run's FAISS index, with the search setting (nprobe / efSearch) recorded when it was built."""
    index = read_index(run.path / INDEX_FILE)
    rec = run.manifest.get("index") or {}
    set_search_params(index, rec.get("search_params"))
    if rec.get("rerank"):  # quantised codes: candidates re-scored from the stored vectors
        index = RerankedIndex(index, run, run.read_metadata(["row_id"])["row_id"].to_numpy(), rec["rerank"]["factor"])
    return index


def exact_search(run, queries: np.ndarray, k: int, ids: np.ndarray | None = None, block: int = 65536):
    """Exact top-k by inner product over every vector of `run`, streamed block by block from the memory-mapped
    shards (never the whole run in memory). Returns (scores, ids); ids are `ids[position]` (default row_id)."""
    Q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    ids = run.read_metadata(["row_id"])["row_id"].to_numpy() if ids is None else ids
    best_s = np.full((len(Q), k), -np.inf, np.float32)
    best_i = np.full((len(Q), k), -1, np.int64)
    for pos, X in run.iter_vectors(block=block):
        S = Q @ X.T
        kk = min(k, S.shape[1])
        part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
        best_s, best_i = merge_topk(best_s, best_i, np.take_along_axis(S, part, 1), ids[pos][part], k)
    return best_s, best_i


def _without_self(ids: np.ndarray, scores: np.ndarray, own: np.ndarray, k: int):
    """Drop each query's own id from its (k + 1) results, keeping k: a query taken from the run must not count
    finding itself."""
    keep = ids != own[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)


def held_out_recall(
    index, run, queries: np.ndarray, own: np.ndarray, ks=RECALL_KS, ids: np.ndarray | None = None, exact=None
) -> dict:
    """recall@k for each k of `ks`: the mean fraction of the exact top-k (streamed exact search, the query's own
    vector excluded) that the index returns when asked for k. One search per k: a re-ranked index looks at
    k x factor candidates, so its top 10 of a search for 100 can be better than a search for 10 returns."""
    kmax = max(ks)
    e_s, e_i = exact if exact is not None else exact_search(run, queries, kmax + 1, ids)
    e_i, _ = _without_self(e_i, e_s, own, kmax)
    out = {}
    for k in ks:
        a_s, a_i = search(index, queries, k + 1)
        out[str(k)] = round(recall_at_k(_without_self(a_i, a_s, own, k)[0], e_i[:, :k]), 4)
    return out


def query_latency_ms(index, queries: np.ndarray, n: int = 200, k: int = 10) -> dict:
    """Single-query latency: queries searched one at a time on one thread (FAISS's OpenMP threads only add
    synchronisation to a single query, and spin badly on a busy machine): median and 95th percentile, ms."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times = []
    try:
        for q in queries[:n]:
            t0 = time.perf_counter()
            index.search(np.ascontiguousarray(q[None], np.float32), k)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        faiss.omp_set_num_threads(before)
    return {
        "median_ms": round(float(np.median(times)), 4),
        "p95_ms": round(float(np.percentile(times, 95)), 4),
        "queries": len(times),
        "k": k,
        "threads": 1,
    }


def tune(
    index, run, kind: str, queries: np.ndarray, own: np.ndarray, ids: np.ndarray, target: float
) -> tuple[str | None, dict]:
    """The cheapest search setting (nprobe / efSearch) whose recall@10 on these tuning queries reaches `target`
    (else the most thorough one tried), and the recall of each setting tried."""
    grid = _search_grid(index, kind)
    exact = exact_search(run, queries, 11, ids)
    tried = {}
    for params in grid:
        set_search_params(index, params)
        tried[params] = held_out_recall(index, run, queries, own, (10,), ids, exact)["10"]
        if tried[params] >= target:
            return params, tried
    return (grid[-1] if grid else None), tried


def _fill(
    run,
    kind: str,
    n: int,
    d: int,
    budget: int,
    nlist: int | None,
    ids: np.ndarray,
    train_pos: np.ndarray,
    block: int,
    progress: bool = False,
):
    """Train on the sampled rows, then add shard by shard (block by block) from the memory-mapped vectors; on the
    GPU when a GPU build of FAISS is installed (IVF kinds), copied back to the CPU for writing."""
    import faiss

    index, key = new_index(kind, n, d, budget, nlist)
    gpu = use_gpu() and kind in GPU_KINDS
    work = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index) if gpu else index
    if kind.startswith("ivf"):
        faiss.extract_index_ivf(work).cp.niter = 10  # k-means iterations (FAISS's default is 25)
    if not work.is_trained:
        work.train(run.take(train_pos))
    from embedlab._io import progress_bar

    with progress_bar(progress, total=n, desc=f"index {kind}: add", unit="vec") as bar:
        for pos, X in run.iter_vectors(block=block):
            work.add_with_ids(X, ids[pos])
            bar.update(len(pos))
    return (faiss.index_gpu_to_cpu(work) if gpu else work), key, gpu


def _tune_and_measure(idx, r, kind: str, ids, tune_pos, eval_pos, recall_target: float) -> dict:
    """Set the cheapest search setting reaching `recall_target` on the tuning queries; measure recall@1/10/100
    and latency on the held-out ones."""
    params, tried = tune(idx, r, kind, r.take(tune_pos), ids[tune_pos], ids, recall_target)
    set_search_params(idx, params)
    eq = r.take(eval_pos)
    return dict(
        search_params=params,
        recall=held_out_recall(idx, r, eq, ids[eval_pos], RECALL_KS, ids),
        tuning={"recall_at_10": tried, "queries": len(tune_pos), "target": recall_target},
        recall_queries=len(eval_pos),
        latency=query_latency_ms(idx, eq),
        recall_note="held-out queries (not in the training sample nor the tuning queries) against exact "
        "search over every vector; each query's own vector excluded",
    )


# fmt: off
def index_run(
    run, kind: str = "auto", *, memory_budget: "str | int" = DEFAULT_BUDGET, nlist: int | None = None,
    train_size: int | None = None, queries: int = 500, recall_target: float = 0.95, seed: int = 0, block: int = 65536,
    write: bool = True, progress: bool = True,
) -> dict:
    # fmt: on
    """Build the run's FAISS index out of core and write it atomically to RUN/index.faiss.

    `kind`: auto (by size, see `auto_kind`) or a name of `KINDS`. Approximate kinds are trained on a seeded sample
    (`train_size`, default 50 points per IVF list), their search setting is the cheapest reaching `recall_target`
    recall@10 on tuning queries, and their recall@1/10/100 against exact search (streamed) is measured on other
    held-out queries, with the single-query latency. The record goes into the run manifest under "index".
    Returns it (with the index object under "index_object" when `write` is False)."""
    from embedlab.runs.store import Run

    r = Run(run)
    budget = parse_bytes(memory_budget)
    check_param("kind", kind, KIND_CHOICES, "index_run")
    check_param("nlist", nlist, Interval(int, 1), "index_run", allow_none=True)
    n, d = len(r), r.dim
    if n == 0:
        raise ConfigError(f"Run {r.path} holds no vectors to index.")
    kind, why, k_lists, need = _choose_kind(kind, n, d, budget, nlist)
    ids = r.read_metadata(["row_id"])["row_id"].to_numpy().astype(np.int64)
    perm, n_q, n_train, train_pos, tune_pos, eval_pos = _sample_positions(n, kind, k_lists, queries, train_size, seed)
    t0 = time.perf_counter()
    idx, key, gpu = _fill(r, kind, n, d, budget, k_lists, ids, train_pos, block, progress)
    info = {
        "kind": kind,
        "factory": key,
        "why": why,
        "exact": KINDS[kind].exact,
        "ntotal": int(idx.ntotal),
        "dim": d,
        "memory_budget_bytes": budget,
        "estimated_bytes": int(need),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "gpu": gpu,
        "train_size": int(n_train),
        "seed": seed,
    }
    if kind in RERANKED:
        idx, info["rerank"] = _reranked(idx, r, ids, kind)
    if not KINDS[kind].exact and n_q:
        info.update(_tune_and_measure(idx, r, kind, ids, tune_pos, eval_pos, recall_target))
    else:
        info["latency"] = query_latency_ms(idx, r.take(np.sort(perm[: min(n, 20)])))  # exact: a scan, few suffice
    if not write:
        return dict(info, index_object=idx)
    return _write_and_record(r, idx, info)


def _reranked(idx, r, ids, kind: str) -> tuple:
    """The index whose codes' candidates are re-scored exactly from the run's stored vectors, and its record."""
    factor = RERANK_FACTORS[kind]
    return RerankedIndex(idx, r, ids, factor), {
        "factor": factor,
        "from": "the run's stored vectors (memory-mapped shards)",
        "note": f"the top k x {factor} candidates of the codes are re-scored exactly",
    }


def _choose_kind(kind: str, n: int, d: int, budget: int, nlist: int | None) -> tuple[str, str, int | None, int]:
    """(kind, why it was chosen, IVF lists or None, the bytes it needs), refused when it needs more than `budget`."""
    why = "requested"
    if kind == "auto":
        kind, why = auto_kind(n, d, budget)
    k_lists = (nlist or ivf_lists(n, use_gpu())) if kind.startswith("ivf") else None
    need = KINDS[kind].memory(n, d, k_lists or 0)
    if need > budget:
        raise ConfigError(
            f"A {kind} index of {n:,} x {d} vectors needs about {need / 2**30:.2f} GiB, over the memory "
            f"budget of {budget / 2**30:.2f} GiB. Use kind='auto' or raise memory_budget."
        )
    return kind, why, k_lists, need


def _sample_positions(n: int, kind: str, k_lists, queries: int, train_size, seed: int) -> tuple:
    """One seeded permutation of the vectors' positions cut into the training sample, the tuning queries and the
    held-out queries (no queries for exact kinds, no training for exact kinds and HNSW): (perm, queries per part,
    training size, training positions, tuning positions, held-out positions), positions sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    n_q = min(queries, n // 4) if not KINDS[kind].exact else 0
    n_train = (
        0 if KINDS[kind].exact or kind == "hnsw" else min(n - 2 * n_q, train_size or max(50 * (k_lists or 1), 10_000))
    )
    train_pos = np.sort(perm[:n_train])
    tune_pos, eval_pos = np.sort(perm[n_train : n_train + n_q]), np.sort(perm[n_train + n_q : n_train + 2 * n_q])
    return perm, n_q, n_train, train_pos, tune_pos, eval_pos


def _write_and_record(r, idx, info: dict) -> dict:
    """Write the index atomically to RUN/index.faiss and its record into the run manifest."""
    path = r.path / INDEX_FILE
    write_index(faiss_index(idx), path)
    info["file"], info["size_bytes"] = INDEX_FILE, path.stat().st_size
    record_index(r.path, info)
    log.info(
        "index %s: %s (%s), %d vectors, %.1f s", r.path, info["kind"], info["factory"], len(r), info["build_seconds"]
    )
    return dict(info, files={"index": str(path), "manifest": str(r.path / "manifest.json")})


def record_index(run_dir: Path, info: dict) -> None:
    manifest = read_json(Path(run_dir) / "manifest.json")
    manifest["index"] = info
    atomic_write_json(Path(run_dir) / "manifest.json", manifest)


def finalize_index(run_dir: str | os.PathLike, memory_budget: "str | int" = DEFAULT_BUDGET) -> dict:
    """`extract`'s last step: the exact flat index, built shard by shard, while its float32 vectors fit
    `memory_budget`; beyond, no index, and a message pointing to `embedlab index`."""
    from embedlab.runs.store import Run

    r = Run(run_dir)
    need, budget = KINDS["flat"].memory(len(r), r.dim, 0), parse_bytes(memory_budget)
    if len(r) == 0:
        msg = "no index built: the run holds no vectors (every input was skipped; its errors table says why)."
        log.warning(msg)
        return {"kind": None, "exact": False, "ntotal": 0, "note": msg}
    if need > budget:
        msg = (
            f"no index built: an exact index of {len(r):,} vectors needs {need / 2**30:.2f} GiB, over the "
            f"{budget / 2**30:.2f} GiB budget. Build an approximate one with `embedlab index {r.path} --kind auto`."
        )
        log.warning(msg)
        (r.path / INDEX_FILE).unlink(missing_ok=True)
        return {"kind": None, "exact": False, "ntotal": 0, "note": msg}
    return index_run(r.path, "flat", memory_budget=budget, progress=False)  # inside extract's own bar
