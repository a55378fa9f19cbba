"""projection: split from plot.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def pca_2d(X: np.ndarray) -> tuple[np.ndarray, object]:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0)
    return pca.fit_transform(X), pca


def umap_2d(X: np.ndarray, seed: int = 0) -> np.ndarray:
    import umap

    n_neighbors = max(2, min(15, len(X) - 1))
    return umap.UMAP(n_neighbors=n_neighbors, min_dist=0.1, metric="cosine", random_state=seed).fit_transform(X)


def stratified_sample(
    labels: np.ndarray, groups: np.ndarray | None, n_max: int, seed: int = 0, min_per_set: int = 50
) -> np.ndarray:
    """Sorted positions of a seeded sample of at most about `n_max` rows, stratified by set label and by group.

    Each set gets a quota proportional to its size (at least `min_per_set`, or all its rows); within a set the
    rows are taken group by group in turns (a random row of every group before a second of any), so the sample
    covers as many groups as it can. Every row when there are at most `n_max`."""
    n = len(labels)
    if n <= n_max:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    key = rng.random(n)
    codes = np.zeros(n, np.int64) if groups is None else pd.factorize(pd.Series(groups))[0]
    order = np.argsort(key, kind="stable")  # a random order...
    turn = np.empty(n, np.int64)
    turn[order] = pd.Series(codes[order]).groupby(codes[order]).cumcount().to_numpy()  # ...its turn within its group
    lab_codes, lab_names = pd.factorize(pd.Series(labels))
    picked = []
    for li in range(len(lab_names)):
        rows = np.flatnonzero(lab_codes == li)
        quota = min(len(rows), max(min_per_set, int(round(n_max * len(rows) / n))))
        take = np.lexsort((key[rows], turn[rows]))[:quota]  # by turn, then at random
        picked.append(rows[take])
    return np.sort(np.concatenate(picked))


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `max_points` of `n` items, drawn without replacement with a fixed seed."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def pca_arrow(X: np.ndarray, Y: np.ndarray, pca, r: np.ndarray, m_from: np.ndarray, m_to: np.ndarray):
    """The residual in PCA coordinates: from the from-set centroid, along r's projection, as long as the gap
    between the two centroids (a linear map, so the direction is exact)."""
    start = Y[m_from].mean(0)
    mu = X.mean(0)
    direction = pca.transform((mu + r)[None])[0] - pca.transform(mu[None])[0]
    length = np.linalg.norm(Y[m_to].mean(0) - start) or 1.0
    return start, start + direction / (np.linalg.norm(direction) or 1.0) * length


def write_sprite(files: list[str], folder: str | os.PathLike, size: int = 32) -> tuple[Path, int]:
    """TensorBoard projector sprite: thumbnails of `files` in row-major order on a square grid (unreadable
    files stay grey). Returns the PNG's path and the single-image size in pixels."""
    import math

    from PIL import Image, ImageOps

    n = max(1, len(files))
    side = math.ceil(math.sqrt(n))
    sprite = Image.new("RGB", (side * size, side * size), (200, 200, 200))
    for i, f in enumerate(files):
        try:
            with Image.open(f) as src:
                src.draft("RGB", (2 * size, 2 * size))
                img = ImageOps.fit(ImageOps.exif_transpose(src).convert("RGB"), (size, size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
        sprite.paste(img, ((i % side) * size, (i // side) * size))
    path = Path(folder) / "sprite.png"
    sprite.save(path)
    return path, size
