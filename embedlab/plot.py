"""2-D maps of a run's image embeddings (PCA and UMAP, cosine), coloured by set, with the residual drawn;
and an export to the TensorBoard embedding-projector format. Image points only: text and image embeddings
are never put in one map (the modality gap would split them into two islands)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .residual import l2n
from .runs import Run

log = logging.getLogger(__name__)


def pca_2d(X: np.ndarray) -> tuple[np.ndarray, object]:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0)
    return pca.fit_transform(X), pca


def umap_2d(X: np.ndarray, seed: int = 0) -> np.ndarray:
    import umap

    n_neighbors = max(2, min(15, len(X) - 1))
    return umap.UMAP(n_neighbors=n_neighbors, min_dist=0.1, metric="cosine", random_state=seed).fit_transform(X)


def plot(run: str | os.PathLike, out: str | os.PathLike | None = None, *, color_by: str = "role",
         residual: str | None = None, methods: tuple[str, ...] = ("pca", "umap"), projector: bool = True,
         seed: int = 0) -> dict:
    """Write embedding maps (PNG) and, optionally, a TensorBoard projector export into `out` (default RUN/plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = Run(run)
    out = Path(out) if out else r.path / "plots"
    out.mkdir(parents=True, exist_ok=True)
    X, meta = r.vectors, r.metadata
    if len(X) < 3:
        raise ConfigError(f"Run {run} has {len(X)} embedded images; a map needs at least 3.")
    if color_by not in meta.columns:
        raise ConfigError(f"No metadata column {color_by!r}. Columns: {', '.join(meta.columns)}.")
    labels = meta[color_by].astype(str).to_numpy()
    res_vec = None
    if residual:
        from .residual import load_residual

        res = load_residual(residual)
        if len(res.vector) != X.shape[1]:
            raise ConfigError(f"Residual {residual} has dimension {len(res.vector)}, the run {X.shape[1]}.")
        res_vec = l2n(res.vector)
    files = {}
    for method in methods:
        if method == "pca":
            Y, pca = pca_2d(X)
        elif method == "umap":
            if len(X) < 5:
                log.warning("UMAP skipped: fewer than 5 images")
                continue
            Y, pca = umap_2d(X, seed), None
        else:
            raise ConfigError(f"Unknown map method {method!r}; choose pca or umap.")
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        for lab in sorted(set(labels)):
            m = labels == lab
            ax.scatter(Y[m, 0], Y[m, 1], s=14, alpha=0.75, label=f"{lab} ({m.sum()})")
        if residual is not None:
            side_from = _selector_mask(r, res.info["from"]["selector"])
            side_to = _selector_mask(r, res.info["to"]["selector"])
            if side_from is not None and side_to is not None:
                start = Y[side_from].mean(0)
                if pca is not None:
                    direction = pca.transform((X.mean(0) + res_vec)[None])[0] - pca.transform(X.mean(0)[None])[0]
                    length = np.linalg.norm(Y[side_to].mean(0) - start) or 1.0
                    end = start + direction / (np.linalg.norm(direction) or 1.0) * length
                else:  # UMAP has no linear map: draw the arrow between the two sets' centroids
                    end = Y[side_to].mean(0)
                ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", lw=2.2, color="k"))
                ax.text(*end, " residual", fontsize=9)
        ax.set_title(f"{method.upper()} of image embeddings ({'cosine' if method == 'umap' else 'linear'}), by {color_by}")
        ax.legend(fontsize=8, loc="best")
        path = out / f"map_{method}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        files[method] = str(path)
    if projector:
        files["projector"] = str(export_projector(X, meta, out / "projector"))
    return files


def _selector_mask(run: Run, selector: str):
    from .residual import _select

    try:
        return _select(run, selector)
    except ConfigError:
        return None


def export_projector(X: np.ndarray, meta, folder: Path) -> Path:
    """tensors.tsv + metadata.tsv (header row, since there are several columns) + projector_config.pbtxt."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "tensors.tsv", X, delimiter="\t", fmt="%.6f")
    cols = [c for c in ("row_id", "path", "role", "split", "group") if c in meta.columns]
    clean = meta[cols].astype(str).apply(lambda s: s.str.replace("\t", " ").str.replace("\n", " "))
    clean.to_csv(folder / "metadata.tsv", sep="\t", index=False)
    (folder / "projector_config.pbtxt").write_text(
        'embeddings {\n  tensor_path: "tensors.tsv"\n  metadata_path: "metadata.tsv"\n}\n')
    return folder
