"""FAISS indices over a run's vectors. Exact inner product (IndexFlatIP) by default; approximate on request,
always reported with its recall@k against exact search. Uses the GPU build of FAISS when installed."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)


def build_index(vectors: np.ndarray, ids: np.ndarray, kind: str = "flat"):
    """An IndexIDMap2 over `vectors` (n, d) float32 with int64 `ids`. kind: flat | hnsw | ivf."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1]
    if kind == "flat":
        base = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        base = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf":
        nlist = max(1, int(4 * np.sqrt(max(1, len(vectors)))))
        base = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        base.train(vectors)
        base.nprobe = max(1, nlist // 8)
    else:
        raise ConfigError(f"Unknown index kind {kind!r}. Choose flat (exact), hnsw or ivf (approximate).")
    index = faiss.IndexIDMap2(base)
    if len(vectors):
        index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
    return index


def write_index(index, path: str | Path) -> None:
    import os

    import faiss

    tmp = str(path) + ".tmp"
    faiss.write_index(index, tmp)
    os.replace(tmp, path)


def read_index(path: str | Path):
    import faiss

    if not Path(path).exists():
        raise ConfigError(f"No FAISS index at {path}; the run is unfinished. Rerun the same `embedlab extract` command to finish it.")
    return faiss.read_index(str(path))


def maybe_to_gpu(index):
    """Move an index to GPU 0 when a GPU build of FAISS and a GPU are present; else return it unchanged."""
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(res, 0, index)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (nq, k); ids are -1 past the end of a small index."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    return index.search(queries, k)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits)) if hits else 1.0
