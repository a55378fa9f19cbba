"""An interactive embedding map: one self-contained HTML page per run (or residual) that works offline.

PCA and UMAP views of a run's image embeddings, points coloured by any metadata column, a thumbnail on hover,
the residual drawn, and a search box for file names. Coordinates, metadata and JPEG thumbnails travel inside the
page as JSON; the page's JavaScript and CSS are inlined (embedlab/templates/map.js, page.css): no CDN, no fetch.
Big runs are subsampled (seeded) and the page states the sample size. `write_sprite` makes the TensorBoard
projector's sprite of thumbnails."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedlab._io import atomic_write_bytes
from embedlab._validate import Interval, check_param
from embedlab.analysis.formula import l2n
from embedlab.errors import ConfigError, InvalidParameterError
from embedlab.reports.projection import pca_arrow, subsample

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)
HIDDEN_COLUMNS = {"content_sha1", "manifest_line", "file", "notes", "frames", "mode"}


def _masks(meta, info: dict):
    from embedlab.datasets.selector import Selector

    try:
        m_from = Selector.parse(info["from"]["selector"]).mask(meta)
        m_to = Selector.parse(info["to"]["selector"]).mask(meta)
    except (ConfigError, KeyError):
        return None
    return (m_from, m_to) if m_from.any() and m_to.any() else None


def _columns(meta) -> dict:
    """Metadata columns a point can be coloured by: strings stay strings, numbers stay numbers (NaN -> None)."""
    cols = {}
    for c in meta.columns:
        if c in HIDDEN_COLUMNS or meta[c].isna().all():
            continue
        s = meta[c]
        if s.dtype.kind in "iuf":
            cols[c] = [None if not np.isfinite(v) else round(float(v), 4) for v in s.astype(float)]
        else:
            cols[c] = ["" if v is None or v != v else str(v) for v in s]
    return cols


def map_views(X: np.ndarray, methods, seed: int, res_vec, masks) -> list[dict]:
    """2-D coordinates per method with axis labels that say what they mean, and the residual arrow."""
    from embedlab.reports.projection import pca_2d, umap_2d

    views = []
    for method in methods:
        if method == "pca":
            Y, pca = pca_2d(X)
            share = pca.explained_variance_ratio_
            axes = [f"PC1 ({100 * share[0]:.1f}% of variance)", f"PC2 ({100 * share[1]:.1f}% of variance)"]
        elif method == "umap":
            if len(X) < 5:
                log.warning("map: UMAP skipped (fewer than 5 images)")
                continue
            Y, pca = umap_2d(X, seed), None
            axes = ["UMAP 1 (cosine neighbourhoods; no units)", "UMAP 2"]
        else:
            raise ConfigError(f"Unknown map method {method!r}; choose pca or umap.")
        arrow = None
        if res_vec is not None and masks is not None:
            m_from, m_to = masks
            start, end = (
                pca_arrow(X, Y, pca, res_vec, m_from, m_to) if pca is not None else (Y[m_from].mean(0), Y[m_to].mean(0))
            )  # UMAP is not linear: centroid to centroid
            arrow = [[float(v) for v in start], [float(v) for v in end]]
        views.append({"name": method.upper(), "xy": np.round(Y, 5).tolist(), "axes": axes, "arrow": arrow})
    return views


def _residual_overlay(residual, meta, dim: int) -> tuple:
    """The residual drawn over the map: its unit vector, its sets' masks over the sample, and its info."""
    from embedlab.analysis.residual_file import load_residual

    res = load_residual(residual)
    if len(res.vector) != dim:
        raise ConfigError(f"Residual {residual} has dimension {len(res.vector)}, the run {dim}.")
    return l2n(res.vector), _masks(meta, res.info), res.info


def map_data(
    run,
    *,
    residual: str | None = None,
    color_by: str = "role",
    max_points: int = 2000,
    thumb_px: int = 96,
    seed: int = 0,
    methods=("pca", "umap"),
) -> dict:
    """Everything the map page shows, as plain data (JSON-ready)."""
    from embedlab.reports.html import thumb_data_uri
    from embedlab.runs.store import Run

    check_param("max_points", max_points, Interval(int, 3), "embedding_map")
    r = Run(run)
    n_total = len(r)
    if n_total < 3:
        raise ConfigError(f"Run {run} has {n_total} embedded images; a map needs at least 3.")
    idx = subsample(n_total, max_points, seed)
    X = np.asarray(r.take(idx), np.float64)  # only the sample is read into memory
    meta = r.metadata.iloc[idx].reset_index(drop=True)
    res_vec, masks, res_info = _residual_overlay(residual, meta, X.shape[1]) if residual else (None, None, None)
    columns = _columns(meta)
    if color_by not in columns:
        raise ConfigError(f"No metadata column {color_by!r} to colour by. Columns: {', '.join(columns)}.")
    files = meta["file"].astype(str).tolist() if "file" in meta.columns else [None] * len(meta)
    thumbs = [thumb_data_uri(f, thumb_px) if f and thumb_px else None for f in files]  # thumb_px 0: none
    label_col = "path" if "path" in meta.columns else next(iter(columns))
    sample = (
        f"all {n_total} images"
        if len(idx) == n_total
        else f"a random sample of {len(idx)} of {n_total} images (seed {seed})"
    )
    return {
        "run": str(r.path),
        "n_total": int(n_total),
        "n_shown": int(len(idx)),
        "sample": sample,
        "columns": columns,
        "color_by": color_by,
        "label": label_col,
        "thumbs": thumbs,
        "names": [os.path.basename(f) if f else "" for f in files],
        "views": map_views(X, methods, seed, res_vec, masks),
        "residual": None
        if res_info is None
        else {
            "path": str(residual),
            "from": res_info["from"]["selector"],
            "to": res_info["to"]["selector"],
            "drawn": masks is not None,
        },
    }


def embedding_map(
    run: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    residual: str | os.PathLike | None = None,
    color_by: str = "role",
    max_points: int = 2000,
    thumb_px: int = 96,
    seed: int = 0,
    methods=("pca", "umap"),
    nav: list | None = None,
) -> "dict | Figure":
    """Write the interactive map of a run to `out` (the CLI: RUN/map.html); returns {"files": {"html": path},
    "points": shown, "of": images in the run}. Without `out` (a notebook) nothing is written: returns a static
    matplotlib Figure of the same views (`map_figure`)."""
    from embedlab.reports.html import asset, json_for_script, render_page

    if out is None:
        kw = dict(residual=residual, color_by=color_by, max_points=max_points, seed=seed, methods=methods)
        return map_figure(map_data(run, thumb_px=0, **kw))
    out = Path(out)
    if out.exists() and out.is_dir():
        raise InvalidParameterError(
            f"The 'out' parameter of embedding_map is a folder ({out}); give the .html file to write.",
            param="out",
            owner="embedding_map",
        )
    data = map_data(
        run, residual=residual, color_by=color_by, max_points=max_points, thumb_px=thumb_px, seed=seed, methods=methods
    )
    run_path = Path(data["run"])
    title = f"Embedding map of {run_path.parent.name}/{run_path.name}"
    data["run"] = _shown(data["run"], out.parent)
    if data["residual"]:  # paths as the reader's folder sees them, not the user's home
        data["residual"]["path"] = _shown(data["residual"]["path"], out.parent)
    page = render_page(
        "map.html.j2",
        nav_links=nav or [],
        title=title,
        data=json_for_script(data),
        script=asset("map.js"),
        sample=data["sample"],
        residual=data["residual"],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, page.encode())
    return {"files": {"html": out}, "points": data["n_shown"], "of": data["n_total"]}


def map_figure(data: dict):
    """The map's views (`map_data`) as one matplotlib Figure, a panel per view: points coloured by the
    `color_by` column (categories, or a colour scale for numbers), the residual's arrow, the sample in the title. A
    Figure not registered with pyplot: no backend is switched and a notebook shows it once."""
    import matplotlib.text
    from matplotlib.figure import Figure

    views = data["views"]
    fig = Figure(figsize=(6.5 * max(1, len(views)), 5.5), layout="constrained")
    axes = fig.subplots(1, max(1, len(views)), squeeze=False)[0]
    values = data["columns"][data["color_by"]]
    numeric = all(v is None or isinstance(v, (int, float)) for v in values)
    for ax, view in zip(axes, views):
        xy = np.asarray(view["xy"], float).reshape(-1, 2)
        if numeric:
            c = np.array([np.nan if v is None else v for v in values], float)
            fig.colorbar(ax.scatter(xy[:, 0], xy[:, 1], c=c, s=14, alpha=0.8), ax=ax, label=data["color_by"])
        else:
            labels = np.asarray(values, object)
            for lab in sorted(set(values)):
                m = labels == lab
                ax.scatter(xy[m, 0], xy[m, 1], s=14, alpha=0.75, label=f"{lab} ({int(m.sum())})")
            ax.legend(fontsize=8, loc="best")
        if view["arrow"] is not None:
            (x0, y0), (x1, y1) = view["arrow"]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", lw=2.2, color="k"))
        ax.set_xlabel(view["axes"][0])
        ax.set_ylabel(view["axes"][1])
        title = f"{view['name']} of {Path(data['run']).name}, by {data['color_by']}\n{data['sample']}"
        ax.set_title(title, fontsize=10)
    for t in fig.findobj(matplotlib.text.Text):  # metadata values as plain text, never mathtext
        t.set_parse_math(False)
    return fig


def _shown(path: str, base: Path) -> str:
    """`path` relative to `base` when it lies under it, else its file name."""
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return Path(path).name
