"""`embedlab search`: nearest images of a run to a text prompt or an image."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from embedlab._validate import Interval, check_param
from embedlab.errors import InvalidParameterError
from embedlab.runs.index import load_index
from embedlab.runs.store import Run


def embed_query_image(lm, path: str) -> np.ndarray:
    from embedlab.datasets.images import decode_image

    pixels = lm.preprocess(decode_image(path).image).unsqueeze(0)
    from embedlab import models

    return models.encode_image_batch(lm, pixels)


def search(
    run: str | os.PathLike,
    text: str | None = None,
    image: str | os.PathLike | None = None,
    k: int = 10,
    index: str = "run",
    device: str = "auto",
) -> dict:
    """Top-k images of `run` for a text or an image query. Returns a dict: `table` (a DataFrame: rank, score,
    row_id, path, role, split), `files` (none: search writes nothing), and which index answered (`index`,
    `exact`, `k`, `ntotal`) with, for an approximate one, its recall against exact search.

    `index`: "run" (the run's own index, built by extract or `embedlab index`, with the recall recorded then) or
    a kind of `embedlab.index.KINDS`, built in memory for this query and measured on held-out queries."""
    from embedlab import models
    from embedlab.runs.index import index_run as build
    from embedlab.runs.index_kinds import KINDS, maybe_to_gpu
    from embedlab.runs.index_kinds import search as faiss_search

    if (text is None) == (image is None):
        raise InvalidParameterError(
            f"The 'text' parameter of search must be a str when 'image' is None, and None "
            f"when it is not: exactly one of the two queries. Got {text!r} and {image!r} "
            "instead.",
            param="text",
            owner="search",
            also=("image",),
        )
    check_param("k", k, Interval(int, 1), "search")
    check_param("index", index, ("run", *KINDS), "search")
    r = Run(run)
    lm = models.load_verified(r.manifest, device, source=f"run {r.path}")
    query = models.encode_texts(lm, [text]) if text is not None else embed_query_image(lm, os.fspath(image))
    if index == "run":
        idx, rec = load_index(r), dict(r.manifest.get("index") or {"kind": "flat", "factory": "Flat", "exact": True})
    else:
        rec = build(r.path, index, write=False, queries=min(200, max(1, len(r) // 4)), progress=False)
        idx = rec.pop("index_object")
    if lm.device.type == "cuda":
        idx = maybe_to_gpu(idx)  # only with a GPU build of FAISS; else unchanged
    scores, ids = faiss_search(idx, query, k)
    info = {
        "index": f"{rec.get('kind')} ({rec.get('factory')})" + (" exact" if rec.get("exact") else " approximate"),
        "exact": bool(rec.get("exact")),
        "k": k,
        "ntotal": int(idx.ntotal),
    }
    if not rec.get("exact"):
        _add_recall(info, rec, idx, r, k)
    return {"table": _results_table(r, scores[0], ids[0]), "files": {}, **info}


def _add_recall(info: dict, rec: dict, idx, r: Run, k: int) -> None:
    """An approximate index's recall against exact search into `info`: as recorded, and at this `k`, measured now
    on a seeded sample of the run's own vectors when not recorded (runs up to 1M vectors)."""
    from embedlab.runs.index import held_out_recall

    recall = dict(rec.get("recall") or {})
    if str(k) not in recall and len(r) <= 1_000_000:  # measure this k (a streamed exact pass per query set)
        sample = np.sort(np.random.default_rng(1).choice(len(r), min(200, len(r)), replace=False))
        ids_all = r.read_metadata(["row_id"])["row_id"].to_numpy()
        recall.update(held_out_recall(idx, r, r.take(sample), ids_all[sample], (k,), ids_all))
    info.update(recall=recall, recall_queries=rec.get("recall_queries"), search_params=rec.get("search_params"))
    if str(k) in recall:
        info["recall_at_k"] = recall[str(k)]


def _results_table(r: Run, scores: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    """The ranked results (rank, score, row_id, path, role, split); FAISS's -1 (no result) left out."""
    meta = r.read_metadata(r.available_columns(["row_id", "path", "role", "split"]))
    meta = meta[meta["row_id"].isin(ids)].set_index("row_id")
    rows = []
    for rank, (s, i) in enumerate(zip(scores, ids), 1):
        if i < 0:
            continue
        m = meta.loc[int(i)]
        rows.append(
            {
                "rank": rank,
                "score": float(s),
                "row_id": int(i),
                "path": str(m["path"]),
                "role": str(m["role"]),
                "split": str(m["split"]),
            }
        )
    return pd.DataFrame(rows)
