"""FAISS index kinds for a run: the factory strings and sizing rules of each kind, GPU placement, re-ranking of
quantised codes from the stored vectors, and index reading, writing and search."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from embedlab._io import atomic_path
from embedlab.errors import ConfigError, IncompatibleRunError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexKind:
    name: str
    factory: Callable[[int, int, int, int | None], str]  # (n, d, budget bytes, nlist) -> FAISS factory string
    memory: Callable[[int, int, int], int]  # (n, d, nlist) -> bytes the filled index holds
    help: str
    exact: bool = False


CPU_MAX_LISTS = 4096  # k-means of more lists takes hours on a few CPU cores


def ivf_lists(n: int, gpu: bool = False) -> int:
    """Inverted lists for n vectors: 2^round(log2(4 sqrt(n))) (autofaiss's rule below 1M vectors; it uses 2^14 to
    2^18 beyond, which only a GPU trains in minutes), at most `CPU_MAX_LISTS` without a GPU (pass nlist for more),
    and at most n/39 so that every list gets the 39 training points k-means asks for."""
    k = 2 ** int(round(math.log2(max(1.0, 4 * math.sqrt(max(1, n))))))
    return int(max(1, min(k, n // 39, k if gpu else CPU_MAX_LISTS)))


def ivf_key(k: int, codes: str) -> str:
    """IVF factory string. Up to `CPU_MAX_LISTS` lists the coarse quantiser is exact (scanning 4,096 centroids
    takes a fraction of a millisecond, and an approximate one, which autofaiss uses, misfiles vectors: on the
    synthetic benchmark, recall@10 at nprobe 16 fell from 0.86 to 0.70); beyond (lists trained on a GPU), an HNSW
    graph over the centroids, so that assigning millions of vectors does not scan every centroid."""
    return f"IVF{k}_HNSW32,{codes}" if k > CPU_MAX_LISTS else f"IVF{k},{codes}"


def pq_fastscan_m(d: int) -> int:
    """Sub-quantisers of a 4-bit fast-scan PQ code: d/4 (half a byte per 4 dimensions: 64 bytes for d = 512),
    else a smaller divisor of d."""
    return next(m for m in (d // 4, d // 8, d // 16, d // 2, 1) if m >= 1 and d % m == 0)


def hnsw_links(n: int, d: int, budget: int) -> int:
    """autofaiss's HNSW size rule: m = floor((budget / (4 n) - d) / 2), capped at 32 (0: it does not fit)."""
    m = int((budget / (4 * max(1, n)) - d) // 2)
    return min(m, 32) if m >= 8 else 0


def pq_bytes(n: int, d: int, budget: int) -> int:
    """Largest PQ code size (bytes per vector) dividing d whose codes fit the budget (0: none)."""
    for m in (256, 128, 64, 48, 32, 24, 16, 8, 4):
        if d % m == 0 and m <= d and n * (m + 8) <= budget:
            return m
    return 0


KINDS: dict[str, IndexKind] = {
    k.name: k
    for k in (
        IndexKind(
            "flat",
            lambda n, d, b, k: "Flat",
            lambda n, d, k: n * (4 * d + 8),
            "exact inner product (IndexFlatIP): every vector in memory as float32",
            exact=True,
        ),
        IndexKind(
            "hnsw",
            lambda n, d, b, k: f"HNSW{max(8, hnsw_links(n, d, b) or 32)}",
            lambda n, d, k: n * (4 * d + 8 + 8 * 8),
            "graph (HNSW, M links per vector, M as large as the budget "
            "allows up to 32): fast, approximate, float32 vectors in memory",
        ),
        IndexKind(
            "ivf",
            lambda n, d, b, k: ivf_key(k or ivf_lists(n), "Flat"),
            lambda n, d, k: n * (4 * d + 8) + 4 * d * (k or 1),
            "inverted lists (IVF, k-means cells, float32 vectors): approximate, searched cell by cell",
        ),
        IndexKind(
            "ivfsq8",
            lambda n, d, b, k: ivf_key(k or ivf_lists(n), "SQ8"),
            lambda n, d, k: n * (d + 8) + 4 * d * (k or 1),
            "inverted lists with 8-bit scalar-quantised vectors: 4x smaller than ivf, near its recall",
        ),
        IndexKind(
            "ivfpq",
            lambda n, d, b, k: ivf_key(k or ivf_lists(n), f"PQ{pq_bytes(n, d, b) or 8}x8"),
            lambda n, d, k: n * 40 + 4 * d * (k or 1),
            "inverted lists with product-quantised codes (the largest code that fits the budget): smallest",
        ),
        IndexKind(
            "ivfpqfs",
            lambda n, d, b, k: ivf_key(k or ivf_lists(n), f"PQ{pq_fastscan_m(d)}x4fs"),
            lambda n, d, k: n * (pq_fastscan_m(d) // 2 + 8) + 4 * d * (k or 1),
            "inverted lists with 4-bit PQ codes scanned with SIMD (fast scan): the fastest per query; like every "
            "quantised kind, its candidates are re-scored exactly from the stored vectors",
        ),
    )
}
KIND_CHOICES = ("auto", *KINDS)


def auto_kind(n: int, d: int, budget: int) -> tuple[str, str]:
    """(kind, why) by the field's size rule (autofaiss's rule): exact below about a million vectors
    when they fit; HNSW when its graph fits the budget; beyond, IVF. There, because quantised candidates are
    re-scored from the stored vectors (`RerankedIndex`), the codes only have to find the neighbourhood, so the
    fastest ones (4-bit fast-scan PQ) serve as well as float32 lists (recall and latency per kind:
    analyses/results/bench_scale.json)."""
    if n < 1_000_000 and KINDS["flat"].memory(n, d, 0) <= budget:
        return "flat", f"{n:,} vectors (< 1M) fit the budget as float32: exact search"
    if hnsw_links(n, d, budget):
        return "hnsw", f"an HNSW{hnsw_links(n, d, budget)} graph over {n:,} vectors fits the budget"
    k = ivf_lists(n)
    if KINDS["ivfpqfs"].memory(n, d, k) <= budget:
        return "ivfpqfs", (
            f"{n:,} x {d} vectors: HNSW does not fit; IVF{k} with 4-bit fast-scan PQ codes does, "
            "re-ranked exactly from the stored vectors"
        )
    if pq_bytes(n, d, budget):
        return "ivfpq", f"{n:,} x {d} vectors: only product-quantised codes ({pq_bytes(n, d, budget)} B each) fit"
    raise ConfigError(
        f"No index of {n:,} x {d} vectors fits a memory budget of {budget / 2**30:.2f} GiB; raise memory_budget."
    )


def use_gpu() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


GPU_KINDS = ("ivf", "ivfsq8", "ivfpq")  # FAISS has no GPU version of fast-scan PQ (ivfpqfs)
GPU_MAX_K = 2048  # the most neighbours a FAISS GPU search returns
# quantised kinds: the top k x factor candidates of the codes are re-scored from the stored vectors; 4-bit codes
# order candidates coarsely, so they need a deeper pool (4M x 512 synthetic vectors: recall@10 stalled at 0.947 with
# 10 x k candidates at any nprobe)
RERANK_FACTORS = {"ivfsq8": 10, "ivfpq": 10, "ivfpqfs": 50}
RERANKED = tuple(RERANK_FACTORS)


class RerankedIndex:
    """A FAISS index of quantised codes (SQ8, PQ) whose top k x `factor` candidates per query are re-scored
    exactly from the run's stored vectors (memory-mapped shards, so no second copy in memory): the codes find the
    neighbourhood, the stored vectors order it. Searches like a FAISS index (`search(Q, k)`, `ntotal`)."""

    def __init__(self, index, run, ids: np.ndarray, factor: int = 10):
        self.index, self.factor = index, int(factor)
        ids = np.asarray(ids, np.int64)
        self._n, self._path = len(ids), run.path
        self._by_position = bool(np.array_equal(ids, np.arange(len(ids))))
        if not self._by_position:
            self._order = np.argsort(ids, kind="stable")
            self._sorted_ids = ids[self._order]
        shards = run.shards()
        self._firsts = np.array([first for _, _, _, first, _ in shards], np.int64)
        self._maps = [np.load(emb_p, mmap_mode="r", allow_pickle=False) for _, emb_p, _, _, _ in shards]

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def _rows(self, pos: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(self._firsts, pos, side="right") - 1
        out = np.empty((len(pos), self._maps[0].shape[1]), np.float32) if self._maps else np.zeros((0, 0), np.float32)
        for s in np.unique(shard):
            hit = shard == s
            out[hit] = self._maps[s][pos[hit] - self._firsts[s]]
        return out

    def _positions(self, found: np.ndarray) -> np.ndarray:
        """Run positions of the ids the index returned; an id the run does not hold means the index is stale."""
        if self._by_position:
            ok = found < self._n
            pos = found
        else:
            at = np.minimum(np.searchsorted(self._sorted_ids, found), len(self._sorted_ids) - 1)
            ok = self._sorted_ids[at] == found if len(self._sorted_ids) else np.zeros(len(found), bool)
            pos = self._order[at] if len(self._sorted_ids) else found
        if not ok.all():
            raise IncompatibleRunError(
                f"The index of run {self._path} returned ids the run does not hold "
                f"(e.g. {int(found[~ok][0])}): it is stale. Rebuild it with "
                f"`embedlab index {self._path}`."
            )
        return pos

    def search(self, queries: np.ndarray, k: int):
        Q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        want = k * self.factor
        if "Gpu" in type(self.index).__name__:
            want = min(want, max(k, GPU_MAX_K))
        cand_s, cand_i = self.index.search(Q, want)
        scores, ids = np.full((len(Q), k), -np.inf, np.float32), np.full((len(Q), k), -1, np.int64)
        for q in range(len(Q)):
            found = cand_i[q][cand_i[q] >= 0]
            pos = self._positions(found)
            exact = self._rows(pos) @ Q[q]
            top = np.argsort(-exact, kind="stable")[:k]
            scores[q, : len(top)], ids[q, : len(top)] = exact[top], found[top]
        return scores, ids


def faiss_index(index):
    """The FAISS index itself (under a `RerankedIndex`)."""
    return index.index if isinstance(index, RerankedIndex) else index


def maybe_to_gpu(index):
    """Move an index to GPU 0 when a GPU build of FAISS and a GPU are present; else return it unchanged."""
    import faiss

    if isinstance(index, RerankedIndex):
        index.index = maybe_to_gpu(index.index)
        return index
    if use_gpu():
        try:
            return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        except RuntimeError as exc:  # a type FAISS has no GPU version of (fast-scan PQ, an HNSW quantiser)
            log.info("index stays on the CPU: %s", str(exc).splitlines()[0][:200])
    return index


def build_index(vectors: np.ndarray, ids: np.ndarray, kind: str = "flat"):
    """An in-memory index over `vectors` (n, d) float32 with int64 `ids` (for small arrays; runs use
    `index_run`). kind: a name of `KINDS`."""
    if kind not in KINDS:
        raise ConfigError(f"Unknown index kind {kind!r}. Choose one of {', '.join(KINDS)}.")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    index, _ = new_index(kind, n, d, 1 << 62, None)
    if not index.is_trained:
        index.train(vectors)
    if n:
        index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
    return index


def write_index(index, path: str | os.PathLike) -> None:
    """Write atomically: a temporary file in the same folder, then a rename. The bytes go through a Python file
    (faiss.PyCallbackIOWriter), flushed and fsynced, so a full disk raises (DiskFullError, one line) instead of
    FAISS's traceback, or its printed 'close error' that leaves a truncated index behind."""
    import faiss

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
        fh.flush()
        os.fsync(fh.fileno())


def read_index(path: str | os.PathLike):
    import faiss

    if not Path(path).exists():
        raise ConfigError(
            f"No FAISS index at {path}. Build one with `embedlab index {Path(path).parent}` "
            "(or rerun the same `embedlab extract` command if the run is unfinished)."
        )
    return faiss.read_index(str(path))


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (nq, k); ids are -1 past the end of a small index."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    return index.search(queries, k)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits)) if hits else 1.0


def merge_topk(scores: np.ndarray, ids: np.ndarray, new_scores: np.ndarray, new_ids: np.ndarray, k: int):
    """Keep the k best of two (nq, *) candidate lists (scores descending)."""
    s, i = np.concatenate([scores, new_scores], 1), np.concatenate([ids, new_ids], 1)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)


def _search_grid(index, kind: str) -> list[str]:
    if kind == "hnsw":
        return [f"efSearch={e}" for e in (16, 32, 64, 128, 256, 512, 1024)]
    if kind.startswith("ivf"):
        ivf = _ivf(index)
        hnsw_q = "HNSW" in type(ivf.quantizer).__name__ or hasattr(faiss_downcast(ivf.quantizer), "hnsw")
        return [
            f"nprobe={p}" + (f",quantizer_efSearch={max(64, 2 * p)}" if hnsw_q else "")
            for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
            if p <= ivf.nlist
        ]
    return []


def _ivf(index):
    import faiss

    return faiss.extract_index_ivf(faiss_index(index))


def faiss_downcast(index):
    import faiss

    return faiss.downcast_index(index)


def set_search_params(index, params: str | None) -> None:
    import faiss

    index = faiss_index(index)
    if params:
        base = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        faiss.ParameterSpace().set_index_parameters(base, params)


def new_index(kind: str, n: int, d: int, budget: int, nlist: int | None):
    """An empty FAISS index of `kind` for n vectors of dimension d, and its factory key."""
    import faiss

    key = KINDS[kind].factory(n, d, budget, nlist)
    base = faiss.index_factory(d, key, faiss.METRIC_INNER_PRODUCT)
    # IVF indices keep the ids themselves (and move to the GPU as they are); others get an id map
    return (base if kind.startswith("ivf") else faiss.IndexIDMap2(base)), key
