"""2-D maps of a run's image embeddings (PCA and UMAP, cosine), coloured by set, with the residual drawn;
and an export to the TensorBoard embedding-projector format. Image points only: text and image embeddings
are never put in one map (the modality gap would split them into two islands)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedlab._io import progress_bar
from embedlab._validate import Interval, check_param
from embedlab.analysis.formula import l2n
from embedlab.errors import ConfigError
from embedlab.reports.projection import pca_2d, stratified_sample, umap_2d
from embedlab.runs.store import Run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def _sampled(r: Run, color_by: str, residual: str | None, max_points: int, seed: int, progress: bool = False):
    """(vectors, metadata, sample record, title note) of the rows a map draws: every row, or a stratified sample
    (`stratified_sample`) read block by block from the memory-mapped shards."""
    check_param("max_points", max_points, Interval(int, 3), "plot")
    wanted = ["row_id", "path", "file", "role", "split", "group", color_by]  # file: the projector's sprite
    if residual:  # the columns its sets are selected by, to draw the arrow between them
        from embedlab.analysis.residual_file import load_residual
        from embedlab.datasets.selector import Selector

        sides = load_residual(residual).info
        wanted += [c for side in ("from", "to") for c in Selector.parse(sides[side]["selector"]).columns]
    full = r.read_metadata(r.available_columns(wanted))
    if len(full) < 3:
        raise ConfigError(f"Run {r.path} has {len(full)} embedded images; a map needs at least 3.")
    if color_by not in full.columns:
        raise ConfigError(f"No metadata column {color_by!r}. Columns: {', '.join(r.metadata.columns)}.")
    groups = full["group"].to_numpy() if "group" in full.columns and full["group"].notna().all() else None
    rows = stratified_sample(full[color_by].astype(str).to_numpy(), groups, max_points, seed)
    meta = full.iloc[rows].reset_index(drop=True)
    X = np.empty((len(rows), r.dim), np.float32)  # Run.take, block by block under a progress bar
    at = 0
    with progress_bar(progress, total=len(rows), desc=f"plot {r.path.name}: read", unit="img") as bar:
        for pos, block in r.iter_vectors(rows):
            X[at : at + len(pos)] = block
            at += len(pos)
            bar.update(len(pos))
    sample = {
        "points": int(len(rows)),
        "of": int(len(full)),
        "seed": seed,
        "stratified_by": [color_by, "group"],
        "max_points": max_points,
    }
    size_note = (
        f"all {len(rows):,} images"
        if len(rows) == len(full)
        else f"{len(rows):,} of {len(full):,} images, stratified sample by {color_by} and group, seed {seed}"
    )
    return X, meta, sample, size_note


def plot(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    color_by: str = "role",
    residual: str | os.PathLike | None = None,
    methods: tuple[str, ...] = ("pca", "umap"),
    projector: bool = True,
    seed: int = 0,
    max_points: int = 10_000,
    progress: bool = True,
) -> "dict | Figure":
    """Write embedding maps (PNG) and, optionally, a TensorBoard projector export into `out` (the CLI: RUN/plots).
    Returns {"files": {"pca", "umap", "projector", "sample": path}, "points": drawn, "of": images in the run}.

    A run of more than `max_points` images is drawn from a seeded sample stratified by `color_by` and group
    (`stratified_sample`), read block by block from the memory-mapped shards; every title and sample.json state
    its size.

    Without `out` (a notebook) nothing is written: returns one matplotlib Figure with a panel per map (the CLI
    passes RUN/plots)."""
    import matplotlib

    r = Run(run)
    figure = None if out is not None else _panels(len(methods))
    if out is not None:
        matplotlib.use("Agg")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    X, meta, sample, size_note = _sampled(r, color_by, residual, max_points, seed, progress)
    labels = meta[color_by].astype(str).to_numpy()
    res, res_vec = _load_arrow(residual, X.shape[1])
    files = {}
    for method in methods:
        mapped = _map_points(X, method, seed)
        if mapped is None:
            continue
        Y, pca = mapped
        path = out / f"map_{method}.png" if out is not None else None
        arrow = (res, res_vec) if residual is not None else None
        ax = figure.axes[len(files)] if figure is not None else None
        _draw_map(X, Y, pca, labels, meta, method, color_by, size_note, path, arrow=arrow, ax=ax)
        files[method] = str(path)
    if figure is not None:  # a notebook: the Figure, nothing written (panels of skipped maps removed)
        for ax in figure.axes[len(files) :]:
            figure.delaxes(ax)
        return figure
    if projector:
        files["projector"] = str(export_projector(X, meta, out / "projector"))
    from embedlab._io import atomic_write_json

    atomic_write_json(out / "sample.json", sample)
    files["sample"] = str(out / "sample.json")
    return {"files": files, "points": sample["points"], "of": sample["of"]}


def _load_arrow(residual, dim: int) -> tuple:
    """(the residual, its unit vector) for the maps' arrow, (None, None) without one; a residual of another
    dimension than the run's (`dim`) is refused."""
    if not residual:
        return None, None
    from embedlab.analysis.residual_file import load_residual

    res = load_residual(residual)
    if len(res.vector) != dim:
        raise ConfigError(f"Residual {residual} has dimension {len(res.vector)}, the run {dim}.")
    return res, l2n(res.vector)


def _map_points(X: np.ndarray, method: str, seed: int):
    """(2-D points, the fitted PCA or None) of one map method, or None for a UMAP of fewer than 5 images (skipped)."""
    if method == "pca":
        return pca_2d(X)
    if method == "umap":
        if len(X) < 5:
            log.warning("UMAP skipped: fewer than 5 images")
            return None
        return umap_2d(X, seed), None
    raise ConfigError(f"Unknown map method {method!r}; choose pca or umap.")


def _panels(n: int):
    """A matplotlib Figure (not registered with pyplot: no backend is switched, nothing shown twice) with n panels."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * max(1, n), 5.5), layout="constrained")
    fig.subplots(1, max(1, n), squeeze=False)
    return fig


def _draw_map(
    X, Y, pca, labels, meta, method: str, color_by: str, size_note: str, path: Path | None, *, arrow=None, ax=None
) -> None:
    """Draw one 2-D map (points by label, optional residual arrow: `arrow` is (the Residual, its unit vector)) on
    `ax`, or on a figure of its own saved as PNG at `path`."""
    import matplotlib
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5)) if ax is None else (ax.figure, ax)
    for lab in sorted(set(labels)):
        m = labels == lab
        ax.scatter(Y[m, 0], Y[m, 1], s=14, alpha=0.75, label=f"{lab} ({m.sum()})")
    if arrow is not None:
        _draw_residual_arrow(ax, X, Y, pca, meta, *arrow)
    ax.set_title(
        f"{method.upper()} of image embeddings ({'cosine' if method == 'umap' else 'linear'}), by {color_by}\n"
        f"{size_note}",
        fontsize=10,
    )
    if pca is not None:
        share = pca.explained_variance_ratio_
        ax.set_xlabel(f"PC1 ({100 * share[0]:.1f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * share[1]:.1f}% of variance)")
    else:
        ax.set_xlabel("UMAP 1 (cosine neighbourhoods; no units)")
        ax.set_ylabel("UMAP 2")
    ax.legend(fontsize=8, loc="best")
    for t in fig.findobj(matplotlib.text.Text):  # user strings (metadata values) as plain text, never mathtext
        t.set_parse_math(False)
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)


def _draw_residual_arrow(ax, X, Y, pca, meta, res, res_vec) -> None:
    """Draw the residual as an arrow from the 'from' set's centroid (PCA: along its projected direction)."""
    side_from = _selector_mask(meta, res.info["from"]["selector"])
    side_to = _selector_mask(meta, res.info["to"]["selector"])
    if side_from is not None and side_to is not None:
        start = Y[side_from].mean(0)
        if pca is not None:
            direction = pca.transform((X.mean(0) + res_vec)[None])[0] - pca.transform(X.mean(0)[None])[0]
            length = np.linalg.norm(Y[side_to].mean(0) - start) or 1.0
            end = start + direction / (np.linalg.norm(direction) or 1.0) * length
        else:  # UMAP has no linear map: draw the arrow between the two sets' centroids
            end = Y[side_to].mean(0)
        ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", lw=2.2, color="k"))
        ax.plot([], [], color="k", lw=2.2, label="residual (from set -> to set)")  # in the legend, off the points


def _selector_mask(meta, selector: str):
    """The sampled rows a residual's selector picks (None when it picks none of them)."""
    from embedlab.datasets.selector import Selector

    try:
        return Selector.parse(selector).mask(meta)
    except ConfigError:
        return None


def export_projector(X: np.ndarray, meta, folder: Path) -> Path:
    """tensors.tsv + metadata.tsv (header row, since there are several columns) + projector_config.pbtxt."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "tensors.tsv", X, delimiter="\t", fmt="%.6f")
    cols = [c for c in ("row_id", "path", "role", "split", "group") if c in meta.columns]
    clean = meta[cols].astype(str).apply(lambda s: s.str.replace("\t", " ").str.replace("\n", " "))
    clean.to_csv(folder / "metadata.tsv", sep="\t", index=False)
    sprite = ""
    if "file" in meta.columns and len(meta) <= (8192 // 32) ** 2:  # TensorBoard's sprite limit: 8192 px a side
        from embedlab.reports.projection import write_sprite

        path, size = write_sprite(meta["file"].astype(str).tolist(), folder, 32)
        sprite = (
            f'  sprite {{\n    image_path: "{path.name}"\n'
            f"    single_image_dim: {size}\n    single_image_dim: {size}\n  }}\n"
        )
    (folder / "projector_config.pbtxt").write_text(
        'embeddings {\n  tensor_path: "tensors.tsv"\n  metadata_path: "metadata.tsv"\n' + sprite + "}\n"
    )
    return folder
