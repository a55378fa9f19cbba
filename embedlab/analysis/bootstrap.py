"""bootstrap: split from residual.py."""

from __future__ import annotations

import logging

import numpy as np

from embedlab.analysis.formula import compute_residual, group_codes, residual_from_sums

log = logging.getLogger(__name__)


def bootstrap_stability(
    x_from, x_to, groups_from=None, groups_to=None, n_boot: int = 200, seed: int = 0, method: str = "rave"
) -> dict:
    """Mean cosine of bootstrap residuals to the full one, with a 95% percentile interval.

    Resamples groups (scenes) with replacement when groups are given, else images."""
    full = compute_residual(x_from, x_to, method)[0]
    rng = np.random.default_rng(seed)
    codes = [group_codes(groups_from, len(x_from)), group_codes(groups_to, len(x_to))]
    members = [[np.flatnonzero(c == g) for g in range(c.max() + 1)] for c in codes]
    cos = []
    for _ in range(n_boot):
        picks = []
        for mem in members:
            chosen = rng.integers(0, len(mem), len(mem))
            picks.append(np.concatenate([mem[i] for i in chosen]))
        r = compute_residual(x_from[picks[0]], x_to[picks[1]], method)[0]
        cos.append(float(r @ full))
    cos = np.asarray(cos)
    return {
        "n_boot": n_boot,
        "unit": "group" if groups_from is not None else "image",
        "mean_cosine": float(cos.mean()),
        "ci95": [float(np.percentile(cos, 2.5)), float(np.percentile(cos, 97.5))],
        "seed": seed,
    }


def bootstrap_summary(cos: np.ndarray, unit: str, seed: int, scheme: str) -> dict:
    """The stability figure: mean cosine of the bootstrap residuals to the full one and a 95% percentile interval."""
    cos = np.asarray(cos, np.float64)
    return {
        "n_boot": int(len(cos)),
        "unit": unit,
        "mean_cosine": float(cos.mean()),
        "ci95": [float(np.percentile(cos, 2.5)), float(np.percentile(cos, 97.5))],
        "seed": seed,
        "scheme": scheme,
    }


def group_resample_counts(n_groups: list[int], n_boot: int, seed: int, progress: bool = False) -> list[np.ndarray]:
    """Per set, an (n_boot, G) array: how often each group is drawn in each resample of its G groups with
    replacement. Draws exactly as `bootstrap_stability` does (same seed, same resamples)."""
    rng = np.random.default_rng(seed)
    W = [np.empty((n_boot, g)) for g in n_groups]
    from embedlab._io import progress_bar

    for b in progress_bar(progress, range(n_boot), desc="residual: bootstrap draws", unit="resample"):
        for w, g in zip(W, n_groups):
            w[b] = np.bincount(rng.integers(0, g, g), minlength=g)
    return W


def _weighted_sums(W: np.ndarray, S: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """W @ S in float64 for float32 or float64 group sums S, a chunk of groups at a time (no float64 copy of S)."""
    out = np.zeros((len(W), S.shape[1]))
    for a in range(0, len(S), chunk):
        out += W[:, a : a + chunk] @ np.asarray(S[a : a + chunk], np.float64)
    return out


def group_bootstrap_from_sums(
    full: np.ndarray,
    sums: list[np.ndarray],
    sizes: list[np.ndarray],
    n_boot: int,
    seed: int,
    method: str = "rave",
    progress: bool = False,
    counts: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Cosines to `full` of residuals from groups resampled with replacement, computed from per-group sums
    (G, d) and sizes of each set; `counts` from `group_resample_counts` (drawn here when None)."""
    W = counts if counts is not None else group_resample_counts([len(S) for S in sums], n_boot, seed, progress)
    (s_from, s_to), (n_from, n_to) = [_weighted_sums(w, S) for w, S in zip(W, sums)], [w @ n for w, n in zip(W, sizes)]
    return residual_from_sums(s_from, n_from, s_to, n_to, method)[0] @ np.asarray(full, np.float64)


def image_bootstrap_weights(
    n_sets: tuple[int, int], n_boot: int, seed: int, exact_limit: int, progress: bool = False
) -> tuple[list, str]:
    """Per-image bootstrap weights for the two sets. Up to `exact_limit` weights in all: the counts of
    `bootstrap_stability`'s resamples (same seed, same draws), as (n_boot, n) arrays. Beyond: None, meaning
    Poisson(1) weights drawn while streaming (`poisson_weights`)."""
    if n_boot * sum(n_sets) > exact_limit:
        return [None, None], "poisson"
    rng = np.random.default_rng(seed)
    W = [np.empty((n_boot, n), np.float32) for n in n_sets]
    from embedlab._io import progress_bar

    for b in progress_bar(progress, range(n_boot), desc="residual: bootstrap draws", unit="resample"):
        for w, n in zip(W, n_sets):
            w[b] = np.bincount(rng.integers(0, n, n), minlength=n)
    return W, "multinomial"
