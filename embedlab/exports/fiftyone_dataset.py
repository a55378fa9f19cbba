"""A run as a FiftyOne dataset (the optional extra `pip install 'embedlab[fiftyone]'`): one sample per image with its
embedding, its metadata, its 2-D map position (PCA, optionally UMAP, registered as FiftyOne Brain visualizations so
the App's Embeddings panel draws them and lassoes sets), its projection on a residual and its top concepts, so the
sets can be browsed, filtered and lassoed in the FiftyOne App (`fiftyone app launch NAME`).

`sample_fields` (pure: arrays in, plain dicts out) decides what each sample carries; `export_fiftyone` reads the run
(`concept_scores.image_scores`), projects it (`reports.projection`) and writes the dataset."""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import pandas as pd

from embedlab._validate import Interval, check_param
from embedlab.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)
INSTALL = "pip install 'embedlab[fiftyone]'"
SKIP_COLUMNS = {"file", "content_sha1", "manifest_line", "notes", "frames"}  # run bookkeeping, not for browsing
RESERVED = {"id", "filepath", "tags", "metadata", "created_at", "last_modified_at"}  # FiftyOne's own sample fields


def require_fiftyone():
    """The fiftyone module, or MissingDependencyError in one line with the command that installs it."""
    try:
        import fiftyone
    except ImportError:
        raise MissingDependencyError(
            f"export fiftyone needs FiftyOne, an optional extra of embedlab: {INSTALL} (or pip install fiftyone)."
        ) from None
    return fiftyone


def field_name(column: str) -> str:
    """A metadata column as a FiftyOne field name: letters, digits and _ only, not starting with _ or a digit,
    never one of FiftyOne's own fields (those get a 'meta_' prefix)."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", str(column)).lstrip("_") or "column"
    return f"meta_{name}" if name in RESERVED or name[0].isdigit() else name


def _plain(value):
    """A metadata value FiftyOne stores: None for missing, Python scalars for numpy ones."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
        return None if isinstance(value, float) and value != value else value
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def sample_fields(meta: pd.DataFrame, S: np.ndarray, concepts: list[str], top: int) -> list[dict]:
    """Per image: its metadata fields (sanitised names), residual_projection / residual_set when present, and its
    `top` concepts as (label, score) pairs, best first, under "concepts"."""
    from embedlab.exports.concept_scores import top_concepts

    idx, vals = top_concepts(S, top)
    cols = [c for c in meta.columns if c not in SKIP_COLUMNS]
    names = [field_name(c) for c in cols]
    records = meta[cols].astype(object).to_numpy() if cols else np.empty((len(meta), 0), object)
    out = []
    for i in range(len(meta)):
        rec = {n: _plain(v) for n, v in zip(names, records[i])}
        rec["concepts"] = [(concepts[j], float(s)) for j, s in zip(idx[i], vals[i])]
        out.append(rec)
    return out


def _projections(X: np.ndarray, methods, seed: int) -> dict[str, np.ndarray]:
    from embedlab.reports.projection import pca_2d, umap_2d

    out = {}
    for method in methods:
        if method == "pca":
            out["pca"] = pca_2d(X)[0]
        elif method == "umap":
            if len(X) < 5:
                log.warning("export fiftyone: UMAP skipped (fewer than 5 images)")
                continue
            out["umap"] = umap_2d(X, seed)
        else:
            raise ConfigError(f"Unknown map method {method!r}; choose pca or umap.").naming("methods")
    return out


def _sample_rows(run_path, max_points: int, seed: int) -> np.ndarray | None:
    """Sorted positions of a seeded sample stratified by role and group, or None (every row) for a small run."""
    from embedlab.reports.projection import stratified_sample
    from embedlab.runs.store import Run

    run = Run(run_path)
    if len(run) <= max_points:
        return None
    meta = run.read_metadata(run.available_columns(["role", "group"]))
    labels = meta["role"].astype(str).to_numpy() if "role" in meta else np.zeros(len(meta), str)
    groups = meta["group"].to_numpy() if "group" in meta and meta["group"].notna().all() else None
    return stratified_sample(labels, groups, max_points, seed)


def export_fiftyone(
    run: str | os.PathLike,
    name: str | None = None,
    *,
    residual=None,
    vocab: str | None = None,
    templates: str | None = None,
    top: int = 5,
    methods: tuple[str, ...] = ("pca",),
    max_points: int = 100_000,
    seed: int = 0,
    overwrite: bool = False,
    persistent: bool = True,
    device: str = "auto",
    progress: bool = True,
):
    """Write the run as a FiftyOne dataset named `name` (default: embedlab-<run folder name>) and return it (a
    `fiftyone.Dataset`). Each sample: the image (filepath), its metadata, `embedding`, `residual_projection` and
    `residual_set` with a `residual` (a Residual or its .npy), `concepts` (its `top` concepts, fo.Classifications
    with the score as confidence) and `top_concept`; every map of `methods` is a Brain visualization
    (brain key embedlab_<method>, points in the field of the same name). Runs larger than `max_points` images are
    exported as a seeded sample stratified by role and group. Needs the extra: pip install 'embedlab[fiftyone]'."""
    fo = require_fiftyone()  # before any work: one line with the pip command
    from pathlib import Path

    from embedlab.exports.concept_scores import image_scores

    check_param("top", top, Interval(int, 1, 100), "export_fiftyone")
    check_param("max_points", max_points, Interval(int, 3), "export_fiftyone")
    name = name or f"embedlab-{Path(run).resolve().name}"
    if fo.dataset_exists(name) and not overwrite:
        raise ConfigError(
            f"A FiftyOne dataset named {name!r} exists and is left untouched. Fix: pass 'overwrite' or another 'name'."
        ).naming("overwrite", "name")
    rows = _sample_rows(run, max_points, seed)
    sc = image_scores(
        run,
        residual,
        vocab=vocab,
        templates=templates,
        rows=rows,
        keep_vectors=True,
        extra_columns=True,
        device=device,
        progress=progress,
    )
    if len(sc.rows) < 3:
        raise ConfigError(f"Run {run} has {len(sc.rows)} embedded images; a map needs at least 3.")
    points = _projections(sc.vectors, methods, seed)
    samples = _samples(fo, sc, top)
    ds = fo.Dataset(name, overwrite=overwrite, persistent=persistent)
    ds.add_samples(samples, progress=progress)
    ds.info = {"embedlab": dict(sc.info, top=top, maps=sorted(points), sample=None if rows is None else len(rows))}
    ds.save()
    _add_maps(ds, sc.vectors, points)
    return ds


def _samples(fo, sc, top: int) -> list:
    """One `fo.Sample` per scored image (`sc`, an `ImageScores` with vectors and extra columns): its file, metadata,
    embedding, its `top` concepts and the first of them."""
    meta = pd.concat([sc.rows, sc.extra], axis=1)
    files = sc.extra["file"].astype(str).tolist() if "file" in sc.extra else sc.rows["path"].astype(str).tolist()
    samples = []
    for i, rec in enumerate(sample_fields(meta, sc.scores, sc.concepts, top)):
        picks = [fo.Classification(label=c, confidence=s) for c, s in rec.pop("concepts")]
        samples.append(
            fo.Sample(
                filepath=os.path.abspath(files[i]),
                embedding=sc.vectors[i],
                concepts=fo.Classifications(classifications=picks),
                top_concept=picks[0].copy(),
                **rec,
            )
        )
    return samples


def _add_maps(ds, X: np.ndarray, points: dict[str, np.ndarray]) -> None:
    """Each 2-D map as a FiftyOne Brain visualization (the App's Embeddings panel), its points stored on the samples."""
    import fiftyone.brain as fob

    for method, Y in points.items():
        key = f"embedlab_{method}"
        fob.compute_visualization(
            ds, embeddings=X, points=np.asarray(Y, np.float32), method="manual", brain_key=key, points_field=key
        )
