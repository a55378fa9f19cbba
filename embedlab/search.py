"""`embedlab search`: nearest images of a run to a text prompt or an image."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .errors import ConfigError, IncompatibleRunError
from .runs import Run


def load_run_model(run: Run, device: str = "auto"):
    """The open_clip model a run was made with (refused if the weights changed since)."""
    from . import models

    lm = models.load_model(run.manifest["model"], run.manifest["pretrained"], device)
    if lm.info["weights_sha256"] != run.manifest["weights_sha256"]:
        raise IncompatibleRunError(f"The weights of {run.manifest['model']}/{run.manifest['pretrained']} differ from those "
                                   f"that made run {run.path} (sha256 {run.manifest['weights_sha256'][:12]}...).")
    return lm


def embed_query_image(lm, path: str) -> np.ndarray:
    from .images import decode_image

    pixels = lm.preprocess(decode_image(path).image).unsqueeze(0)
    from . import models

    return models.encode_image_batch(lm, pixels)


def search(run: str | os.PathLike, text: str | None = None, image: str | None = None, k: int = 10,
           index: str = "flat", device: str = "auto") -> tuple[pd.DataFrame, dict]:
    """Top-k images of `run` for a text or an image query: a table (rank, score, row_id, path, role, split)
    and an info dict. With an approximate index (hnsw/ivf) the info holds its recall@k against exact search."""
    from . import models
    from .index import build_index, recall_at_k, search as faiss_search

    if (text is None) == (image is None):
        raise ConfigError("search needs exactly one of --text or --image.")
    if k < 1:
        raise ConfigError(f"The 'k' option of search must be an int >= 1. Got {k} instead.")
    r = Run(run)
    lm = load_run_model(r, device)
    query = models.encode_texts(lm, [text]) if text is not None else embed_query_image(lm, image)
    from .index import maybe_to_gpu

    exact = r.load_index()
    if lm.device.type == "cuda":
        exact = maybe_to_gpu(exact)   # only with a GPU build of FAISS; else unchanged
    scores, ids = faiss_search(exact, query, k)
    info = {"index": "exact (IndexFlatIP)", "k": k, "ntotal": int(exact.ntotal)}
    if index != "flat":
        approx = build_index(r.vectors, r.metadata["row_id"].to_numpy(), index)
        a_scores, a_ids = faiss_search(approx, query, k)
        # recall over many queries (every stored vector as a query, capped) is more telling than over one
        sample = r.vectors[: min(500, len(r.vectors))]
        _, e_ids = faiss_search(exact, sample, k)
        _, s_ids = faiss_search(approx, sample, k)
        info.update(index=f"approximate ({index})", recall_at_k=recall_at_k(s_ids, e_ids),
                    recall_queries=len(sample), query_recall=recall_at_k(a_ids, ids))
        scores, ids = a_scores, a_ids
    meta = r.metadata.set_index("row_id")
    rows = []
    for rank, (s, i) in enumerate(zip(scores[0], ids[0]), 1):
        if i < 0:
            continue
        m = meta.loc[int(i)]
        rows.append({"rank": rank, "score": float(s), "row_id": int(i), "path": m["path"], "role": m["role"],
                     "split": m["split"]})
    return pd.DataFrame(rows), info
