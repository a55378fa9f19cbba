"""Per-image concept scores of a run: each image's cosine with every concept of a vocabulary (the concept bank by
default for a real CLIP) and its projection on a residual, as one table any tool reads (parquet, wide or tidy).

Pure functions on arrays (`image_concept_scores`, `residual_projection`, `residual_sets`, `top_concepts`,
`wide_table`, `tidy_table`) carry the computation; `image_scores` reads the run (block by block) and the model's
cached text embeddings; `export_concept_scores` is the command. A score is the cosine of the image embedding with
the concept's centred text embedding (the vocabulary mean removed, as explain-residual ranks and draws them), or the
raw cosine with `centred=False`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from embedlab._validate import Interval, check_param
from embedlab.choices import SCORE_LAYOUTS
from embedlab.errors import ConfigError, IncompatibleRunError

log = logging.getLogger(__name__)
ID_COLUMNS = ("row_id", "path", "role", "split", "group")  # the columns every table row carries (those present)
RESIDUAL_COLUMNS = ("residual_projection", "residual_set")


def image_concept_scores(X: np.ndarray, C: np.ndarray) -> np.ndarray:
    """(n, V) float32 cosines of unit image rows X (n, d) with unit concept rows C (V, d)."""
    return np.asarray(X, np.float32) @ np.asarray(C, np.float32).T


def residual_projection(X: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(n,) each unit image row's projection on the residual's direction: cos(x, r)."""
    r = np.asarray(r, np.float64)
    return (np.asarray(X, np.float64) @ (r / (np.linalg.norm(r) or 1.0))).astype(np.float32)


def residual_sets(n: int, from_mask: np.ndarray | None, to_mask: np.ndarray | None) -> np.ndarray:
    """(n,) 'from', 'to' or None per row: which of the residual's sets a row belongs to."""
    out = np.full(n, None, object)
    for label, m in (("from", from_mask), ("to", to_mask)):
        if m is not None:
            out[np.asarray(m, bool)] = label
    return out


def top_concepts(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores), each (n, k): every row's k highest-scoring concepts, best first."""
    k = min(int(k), S.shape[1])
    part = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < S.shape[1] else np.tile(np.arange(S.shape[1]), (len(S), 1))
    vals = np.take_along_axis(S, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def concept_columns(concepts: list[str], taken) -> list[str]:
    """Column names of the concepts in a wide table: the concept itself, or 'concept: NAME' where a row column
    (`taken`) already has that name."""
    taken = set(taken)
    return [f"concept: {c}" if c in taken else c for c in concepts]


def wide_table(rows: pd.DataFrame, S: np.ndarray, concepts: list[str]) -> pd.DataFrame:
    """One row per image: its row columns, then one float32 column per concept."""
    scores = pd.DataFrame(S, columns=concept_columns(concepts, rows.columns), copy=False)
    return pd.concat([rows.reset_index(drop=True), scores], axis=1)


def tidy_table(rows: pd.DataFrame, S: np.ndarray, concepts: list[str], top: int | None = None) -> pd.DataFrame:
    """One row per (image, concept): the image's row columns, concept, score and rank (1 = the image's best
    concept); every concept, or each image's `top` best."""
    n, V = S.shape
    k = V if top is None else min(int(top), V)
    idx, vals = top_concepts(S, k)
    rep = rows.reset_index(drop=True).iloc[np.repeat(np.arange(n), k)].reset_index(drop=True)
    names = pd.Categorical.from_codes(idx.ravel(), categories=pd.Index(concepts)) if n else pd.Categorical([])
    return rep.assign(concept=names, score=vals.ravel().astype(np.float32), rank=np.tile(np.arange(1, k + 1), n))


@dataclass
class ImageScores:
    """A run's images with their concept scores: `rows` (ID_COLUMNS present, plus the residual's columns), `scores`
    (n, V) float32, the vocabulary, and optionally the vectors (n, d) and the other metadata columns."""

    rows: pd.DataFrame
    scores: np.ndarray
    concepts: list[str]
    info: dict
    vectors: np.ndarray | None = None
    extra: pd.DataFrame | None = field(default=None, repr=False)


def text_model(run, device: str = "auto"):
    """The lazy text side of the model that made the run's vectors (built only if some text is not cached)."""
    from embedlab import models

    m = run.manifest
    return models.TextModelHandle(m["model"], m["pretrained"], m["weights_sha256"], run.dim, device)


def check_residual_for_run(res, run) -> None:
    """Refuse a residual made with another model than the run's vectors (width or weights)."""
    mi = res.info.get("model") or {}
    where = f"residual {res.path}" if res.path is not None else "the residual"
    if len(res.vector) != run.dim:
        raise IncompatibleRunError(
            f"The {where} has dimension {len(res.vector)}, run {run.path} {run.dim}. Fix: pass a residual computed "
            "from runs of the same model."
        ).naming("residual")
    ours, theirs = run.manifest.get("weights_sha256"), mi.get("weights_sha256")
    if ours and theirs and ours != theirs:
        raise IncompatibleRunError(
            f"The {where} was computed with {mi.get('model')}/{mi.get('pretrained')} (weights {str(theirs)[:12]}...), "
            f"run {run.path} with {run.manifest.get('model')}/{run.manifest.get('pretrained')} (weights "
            f"{str(ours)[:12]}...). Fix: pass a residual computed from runs of the same model."
        ).naming("residual")


def _set_masks(res, run, meta_of) -> tuple:
    """(from mask, to mask) over the run's rows for the residual's sets that were drawn from this run."""
    from embedlab.datasets.selector import Selector

    here = str(run.path.resolve())
    masks = []
    for side in ("from", "to"):
        rec = res.info.get(side) or {}
        if rec.get("run") != here:
            masks.append(None)
            continue
        try:
            sel = Selector.parse(rec["selector"])
            masks.append(sel.mask(meta_of(sel.columns), where=f"run {run.path}"))
        except (ConfigError, KeyError):
            masks.append(None)
    return tuple(masks)


def image_scores(
    run,
    residual=None,
    *,
    vocab: str | None = None,
    templates: str | None = None,
    centred: bool = True,
    rows: np.ndarray | None = None,
    keep_vectors: bool = False,
    extra_columns: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> ImageScores:
    """Score the run's images (every row, or the sorted positions `rows`) against a vocabulary, block by block."""
    from embedlab.analysis import vocab as vb
    from embedlab.analysis.explain import centre, unit_rows32
    from embedlab.analysis.residual_file import as_residual
    from embedlab.runs.store import Run

    run = Run(run)
    res = as_residual(residual) if residual is not None else None
    if res is not None:
        check_residual_for_run(res, run)
    lm = text_model(run, device)
    V = vb.resolve_vocab(vocab, lm)
    tpls = vb.resolve_templates(templates)
    E, cache_info = vb.embed_concepts(lm, V.concepts, tpls, progress=progress)
    C = centre(E)[0] if centred else unit_rows32(E)
    n = len(run) if rows is None else len(rows)
    S, X, proj = _score_blocks(run, rows, n, C, res, keep_vectors, progress)
    take = (lambda df: df) if rows is None else (lambda df: df.iloc[rows].reset_index(drop=True))
    meta = take(run.read_metadata(run.available_columns(ID_COLUMNS)))
    extra = None
    if extra_columns:
        full = run.metadata
        extra = take(full[[c for c in full.columns if c not in ID_COLUMNS]])
    info = {
        "run": str(run.path),
        "model": f"{run.manifest.get('model')}/{run.manifest.get('pretrained')}",
        "vocabulary": V.name,
        "vocabulary_source": V.source,
        "templates": tpls,
        "score": "cosine with the centred concept (vocabulary mean removed)" if centred else "raw cosine",
        "text_cache": cache_info["cache"],
        "images": int(n),
        "of": int(len(run)),
    }
    if res is not None:
        m_from, m_to = _set_masks(res, run, lambda cols: run.read_metadata(run.available_columns(cols)))
        sets = residual_sets(len(run), m_from, m_to)
        meta = meta.assign(residual_projection=proj, residual_set=sets if rows is None else sets[rows])
        info["residual"] = {
            "path": str(res.path) if res.path is not None else None,
            "from": res.info["from"]["selector"],
            "to": res.info["to"]["selector"],
            "projection": "cos(image, residual)",
        }
    return ImageScores(meta, S, list(V.concepts), info, X, extra)


def _score_blocks(run, rows, n: int, C: np.ndarray, res, keep_vectors: bool, progress: bool):
    """One pass over the run's `n` images (every row, or the sorted positions `rows`), block by block: (scores
    against the vocabulary `C` (n, V), the vectors (n, d) when `keep_vectors` else None, the projections on the
    residual `res` (n,) when there is one else None)."""
    from embedlab._io import progress_bar

    S = np.empty((n, len(C)), np.float32)
    X = np.empty((n, run.dim), np.float32) if keep_vectors else None
    proj = np.empty(n, np.float32) if res is not None else None
    at = 0
    with progress_bar(progress, total=n, desc=f"scores {run.path.name}", unit="img") as bar:
        for pos, block in run.iter_vectors(rows):
            S[at : at + len(pos)] = image_concept_scores(block, C)
            if X is not None:
                X[at : at + len(pos)] = block
            if proj is not None:
                proj[at : at + len(pos)] = residual_projection(block, res.vector)
            at += len(pos)
            bar.update(len(pos))
    return S, X, proj


def check_table_out(out, overwrite: bool) -> Path:
    """The parquet file to write: refused, before any work, when it is a folder or an existing file (unless
    `overwrite`)."""
    from embedlab._io import check_output_dir

    out = Path(out)
    if out.is_dir():
        raise ConfigError(
            f"The 'out' {out} is a folder; concept scores are one parquet file. Fix: pass a file such as "
            f"{out / 'scores.parquet'}."
        ).naming("out")
    check_output_dir(out.parent, out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists and is left untouched. Fix: pass 'overwrite' or another 'out'.").naming(
            "out", "overwrite"
        )
    return out


def export_concept_scores(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    residual=None,
    vocab: str | None = None,
    templates: str | None = None,
    layout: str = "wide",
    top: int | None = None,
    centred: bool = True,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> pd.DataFrame:
    """Per-image concept scores of a run as a DataFrame, written as parquet to `out` when given (nothing written
    without it). `layout` wide: one row per image, one float32 column per concept; tidy: one row per (image,
    concept) with score and rank, each image's `top` concepts (all when None). Each row carries the run's
    row_id, path, role, split and group (those present) and, with a `residual` (a Residual or its .npy), the
    image's projection on it (cos(image, r)) and which of its sets it is in. `df.attrs` holds the vocabulary,
    the score's definition and the file written. Memory: images x concepts x 4 bytes (the run's vectors are read
    block by block, never held)."""
    check_param("layout", layout, SCORE_LAYOUTS, "export_concept_scores")
    check_param("top", top, Interval(int, 1, None), "export_concept_scores", allow_none=True)
    target = check_table_out(out, overwrite) if out is not None else None
    sc = image_scores(
        run, residual, vocab=vocab, templates=templates, centred=centred, device=device, progress=progress
    )
    if layout == "wide":
        if top is not None:
            log.info("export concept-scores: 'top' applies to the tidy layout; the wide table has every concept")
        table = wide_table(sc.rows, sc.scores, sc.concepts)
    else:
        table = tidy_table(sc.rows, sc.scores, sc.concepts, top)
    table.attrs.update(sc.info, layout=layout, files={})
    if target is not None:
        from embedlab._io import atomic_path

        with atomic_path(target, suffix=".parquet") as tmp:
            table.to_parquet(tmp, index=False)
        table.attrs["files"] = {"parquet": str(target)}
    return table
