"""The residual formula: RAVE's difference of normalised means (and the plain mean difference), from vectors or from
streamed sums, with the small statistics it is judged by (separation, AUROC)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from embedlab._validate import check_param
from embedlab.choices import METHODS
from embedlab.errors import ConfigError

log = logging.getLogger(__name__)


def l2n(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if getattr(x, "dtype", None) == np.float16:  # via float32 (exact both ways; numpy converts f16 -> f32
        x = np.asarray(x, dtype=np.float32)  # with SIMD, f16 -> f64 element by element)
    x = np.asarray(x, dtype=np.float64)
    n = (
        np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
        if x.ndim == 2 and axis in (-1, 1)
        else np.linalg.norm(x, axis=axis, keepdims=True)
    )
    return x / np.where(n > 0, n, 1.0)


def rave_residual(x_from: np.ndarray, x_to: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """The paper's formula: v = norm(mean(norm(x))) per set, r = norm(v_to - v_from), thr = <v_to, r>.

    Returns (r, thr, v_from, v_to), all float64."""
    v_from = l2n(l2n(x_from).mean(0))
    v_to = l2n(l2n(x_to).mean(0))
    r = l2n(v_to - v_from)
    return r, float(v_to @ r), v_from, v_to


def mean_difference(x_from: np.ndarray, x_to: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Plain difference of (unnormalised) means, returned as a unit direction; thr = <norm(mean_to), r>."""
    m_from, m_to = np.asarray(x_from, np.float64).mean(0), np.asarray(x_to, np.float64).mean(0)
    r = l2n(m_to - m_from)
    v_to = l2n(m_to)
    return r, float(v_to @ r), l2n(m_from), v_to


def compute_residual(x_from: np.ndarray, x_to: np.ndarray, method: str = "rave"):
    check_param("method", method, METHODS, "compute_residual")
    if len(x_from) == 0 or len(x_to) == 0:
        raise ConfigError("A residual needs at least one image in each set.")
    return (rave_residual if method == "rave" else mean_difference)(x_from, x_to)


def group_codes(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Integer codes 0..G-1 of each item's group; each item its own group when `groups` is None."""
    if groups is None:
        return np.arange(n)
    if isinstance(groups, np.ndarray) and groups.dtype.kind in "iu":  # ids (set_group_ids): as they are
        codes = pd.factorize(groups)[0]
    else:
        codes = pd.factorize(pd.Series(groups).astype(str))[0]
    missing = codes < 0  # a missing label (NA kept by astype(str)): a group of its own
    if missing.any():
        codes[missing] = codes.max() + 1 + np.arange(int(missing.sum()))
    return codes


def residual_from_sums(sum_from: np.ndarray, n_from, sum_to: np.ndarray, n_to, method: str = "rave"):
    """`compute_residual` from sufficient statistics: each set's sum of (for rave: unit-normalised) vectors and
    its count. Rows of 2-D sums are independent replicates (bootstrap). Returns (r, thr, v_from, v_to)."""
    sum_from, sum_to = np.asarray(sum_from, np.float64), np.asarray(sum_to, np.float64)
    if method == "rave":  # norm(mean) = norm(sum): the counts cancel
        v_from, v_to = l2n(sum_from), l2n(sum_to)
        r = l2n(v_to - v_from)
    else:
        m_from = sum_from / np.asarray(n_from, np.float64)[..., None] if sum_from.ndim == 2 else sum_from / n_from
        m_to = sum_to / np.asarray(n_to, np.float64)[..., None] if sum_to.ndim == 2 else sum_to / n_to
        r, v_from, v_to = l2n(m_to - m_from), l2n(m_from), l2n(m_to)
    thr = np.einsum("...i,...i->...", v_to, r)
    return r, (float(thr) if np.ndim(thr) == 0 else thr), v_from, v_to


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(pos > neg) + P(pos = neg) / 2 over all pairs (the ROC AUC, ties counted half) from sorted values: the
    number `sklearn.metrics.roc_auc_score` gives, without importing scikit-learn (a second of a short command)."""
    neg = np.sort(np.asarray(neg, np.float64))
    pos = np.asarray(pos, np.float64)
    below = np.searchsorted(neg, pos, "left")
    equal = np.searchsorted(neg, pos, "right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (len(neg) * len(pos)))


def separation(sum_from: np.ndarray, n_from, sum_to: np.ndarray, n_to, method: str = "rave") -> float:
    """The residual's norm before its final normalisation: |v_to - v_from| (rave: unit set means) or
    |mean_to - mean_from| (mean-diff)."""
    if method == "rave":
        return float(np.linalg.norm(l2n(np.asarray(sum_to, np.float64)) - l2n(np.asarray(sum_from, np.float64))))
    return float(np.linalg.norm(np.asarray(sum_to, np.float64) / n_to - np.asarray(sum_from, np.float64) / n_from))
