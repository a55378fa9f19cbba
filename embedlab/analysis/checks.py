"""checks: split from residual.py."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from embedlab.analysis.formula import auroc
from embedlab.analysis.residual_file import MIN_RESIDUAL_NORM
from embedlab.errors import ConfigError

log = logging.getLogger(__name__)


NONSEMANTIC_NUMERIC = ("width", "height", "megapixels", "aspect", "jpeg_quality", "mean_luma")


def compare_nonsemantic(meta_from: pd.DataFrame, meta_to: pd.DataFrame, threshold: float = 0.8) -> dict:
    """Compare two sets on properties that are not content: size, aspect, format, JPEG quality, luma.

    A property whose AUROC between the sets is above `threshold` (or below 1 - threshold), or a format mix
    whose total-variation distance exceeds 0.5, can put its own direction into the residual: warn."""

    def derived(m: pd.DataFrame) -> pd.DataFrame:
        m = m.copy()
        m["megapixels"] = m["width"] * m["height"] / 1e6
        m["aspect"] = m["width"] / m["height"].replace(0, np.nan)
        return m

    a, b = derived(meta_from), derived(meta_to)
    props, warnings = {}, []
    for col in NONSEMANTIC_NUMERIC:
        va, vb = a[col].dropna().astype(float).to_numpy(), b[col].dropna().astype(float).to_numpy()
        if len(va) == 0 or len(vb) == 0:
            props[col] = {"available": False}
            continue
        auc = auroc(va, vb) if np.ptp(np.r_[va, vb]) > 0 else 0.5
        props[col] = {"from_mean": float(va.mean()), "to_mean": float(vb.mean()), "auroc": auc}
        if max(auc, 1 - auc) > threshold:
            expected = col == "mean_luma"
            warnings.append(
                f"{col} separates the sets (AUROC {auc:.2f}; means {va.mean():.3g} vs {vb.mean():.3g})"
                + (
                    " - expected for a lighting residual, but it is a direction the residual will carry"
                    if expected
                    else " - this non-semantic difference can put its own direction into the residual"
                )
            )
    fa = a["format"].value_counts(normalize=True)
    fb = b["format"].value_counts(normalize=True)
    tv = float(0.5 * fa.sub(fb, fill_value=0).abs().sum())
    props["format"] = {"from": fa.round(3).to_dict(), "to": fb.round(3).to_dict(), "total_variation": tv}
    if tv > 0.5:
        warnings.append(
            f"file formats differ between the sets (total variation {tv:.2f}: {fa.to_dict()} vs {fb.to_dict()})"
        )
    return {"properties": props, "warnings": warnings, "auroc_threshold": threshold}


def check_separation(gap: float, vector_dtype: str, from_: str, to: str) -> None:
    """Refuse two sets whose means are equal within the rounding of the stored vectors (their residual would be
    a direction of rounding noise); warn loudly when the gap is within 10x of that floor."""
    floor = max(MIN_RESIDUAL_NORM, 2 * float(np.finfo(np.dtype(vector_dtype)).eps))
    if gap <= floor:
        raise ConfigError(
            f"Sets {from_} and {to} have the same mean within numerical noise (|v_to - v_from| = "
            f"{gap:.3g}, noise floor {floor:.3g} for {vector_dtype} vectors): they are the same images "
            f"or indistinguishable. Fix: choose two different sets."
        )
    if gap <= 10 * floor:
        log.warning(
            "residual: the sets' means differ barely above numerical noise (|v_to - v_from| = %.3g, noise "
            "floor %.3g): the residual's direction is mostly rounding",
            gap,
            floor,
        )


NONSEMANTIC_COLUMNS = ("width", "height", "format", *NONSEMANTIC_NUMERIC)
