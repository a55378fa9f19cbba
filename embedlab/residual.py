"""Residual vectors between two image sets (RAVE, method.md 2.2) with provenance and stability.

Math lives in small pure functions (`rave_residual`, `mean_difference`, `bootstrap_stability`,
`compare_nonsemantic`); `residual()` does the I/O: it reads run folders and writes `residual.npy` (float32,
shape (d,)) plus a JSON sidecar `residual.json`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import atomic_save_npy, atomic_write_json, load_npy, read_json
from .errors import ConfigError, IncompatibleRunError
from .runs import Run

log = logging.getLogger(__name__)
METHODS = ("rave", "mean-diff")


def l2n(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
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
    if method not in METHODS:
        raise ConfigError(f"The 'method' option of residual must be one of {METHODS}. Got {method!r} instead.")
    if len(x_from) == 0 or len(x_to) == 0:
        raise ConfigError("A residual needs at least one image in each set.")
    return (rave_residual if method == "rave" else mean_difference)(x_from, x_to)


def group_codes(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Integer codes 0..G-1 of each item's group; each item its own group when `groups` is None."""
    if groups is None:
        return np.arange(n)
    return pd.factorize(pd.Series(groups).astype(str))[0]


def bootstrap_stability(x_from, x_to, groups_from=None, groups_to=None, n_boot: int = 200, seed: int = 0,
                        method: str = "rave") -> dict:
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
    return {"n_boot": n_boot, "unit": "group" if groups_from is not None else "image",
            "mean_cosine": float(cos.mean()), "ci95": [float(np.percentile(cos, 2.5)), float(np.percentile(cos, 97.5))],
            "seed": seed}


NONSEMANTIC_NUMERIC = ("width", "height", "megapixels", "aspect", "jpeg_quality", "mean_luma")


def compare_nonsemantic(meta_from: pd.DataFrame, meta_to: pd.DataFrame, threshold: float = 0.8) -> dict:
    """Compare two sets on properties that are not content: size, aspect, format, JPEG quality, luma.

    A property whose AUROC between the sets is above `threshold` (or below 1 - threshold), or a format mix
    whose total-variation distance exceeds 0.5, can put its own direction into the residual: warn."""
    from sklearn.metrics import roc_auc_score

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
        auc = float(roc_auc_score(np.r_[np.zeros(len(va)), np.ones(len(vb))], np.r_[va, vb])) \
            if np.ptp(np.r_[va, vb]) > 0 else 0.5
        props[col] = {"from_mean": float(va.mean()), "to_mean": float(vb.mean()), "auroc": auc}
        if max(auc, 1 - auc) > threshold:
            expected = col == "mean_luma"
            warnings.append(f"{col} separates the sets (AUROC {auc:.2f}; means {va.mean():.3g} vs {vb.mean():.3g})"
                            + (" - expected for a lighting residual, but it is a direction the residual will carry"
                               if expected else " - this non-semantic difference can put its own direction into the residual"))
    fa = a["format"].value_counts(normalize=True)
    fb = b["format"].value_counts(normalize=True)
    tv = float(0.5 * fa.sub(fb, fill_value=0).abs().sum())
    props["format"] = {"from": fa.round(3).to_dict(), "to": fb.round(3).to_dict(), "total_variation": tv}
    if tv > 0.5:
        warnings.append(f"file formats differ between the sets (total variation {tv:.2f}: {fa.to_dict()} vs {fb.to_dict()})")
    return {"properties": props, "warnings": warnings, "auroc_threshold": threshold}


@dataclass
class Residual:
    """A residual direction (unit, float32 (d,)) and its sidecar (provenance, thr, edits)."""

    vector: np.ndarray
    info: dict
    path: Path | None = None

    @property
    def thr(self) -> float:
        return float(self.info["thr"])

    @property
    def v_to(self) -> np.ndarray:
        return np.asarray(self.info["v_to"], dtype=np.float64)


def sidecar_path(npy: str | os.PathLike) -> Path:
    p = Path(npy)
    return p.with_suffix(".json")


def load_residual(path: str | os.PathLike) -> Residual:
    """Read residual.npy (allow_pickle=False) and its JSON sidecar; validate shape and finiteness."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"Residual file {p} not found. Make one with `embedlab residual RUN --from A --to B --out {p}`.")
    vec = load_npy(p)
    if vec.ndim != 1 or not np.all(np.isfinite(vec)):
        raise ConfigError(f"{p}: expected a finite 1-D vector, got shape {vec.shape}.")
    side = sidecar_path(p)
    if not side.exists():
        raise ConfigError(f"{p} has no sidecar {side}; it holds thr and the model identity. Recreate it with `embedlab residual`.")
    info = read_json(side)
    if int(info.get("dim", len(vec))) != len(vec):
        raise IncompatibleRunError(f"{p}: vector has dimension {len(vec)} but its sidecar says {info.get('dim')}.")
    return Residual(vec.astype(np.float32), info, p)


def save_residual(path: str | os.PathLike, vector: np.ndarray, info: dict) -> Path:
    p = Path(path)
    if p.suffix != ".npy":
        raise ConfigError(f"The residual output must end in .npy. Got {p}.")
    atomic_save_npy(p, np.asarray(vector, dtype=np.float32))
    atomic_write_json(sidecar_path(p), dict(info, dim=int(len(vector)), file=p.name))
    return p


def _select(run: Run, selector: str) -> np.ndarray:
    """Selector: a set label ('backlit'), COLUMN=VALUE, or several joined by commas ('role=backlit,split=train')."""
    mask = np.ones(len(run.metadata), bool)
    for part in [s for s in selector.split(",") if s]:
        mask &= run.select(part)
    if not mask.any():
        raise ConfigError(f"No image in run {run.path} matches {selector!r} (each part matches some, together none).")
    return mask


def residual(run: str | os.PathLike, from_: str, to: str, out: str | os.PathLike, *, to_run: str | None = None,
             method: str = "rave", bootstrap: int = 200, seed: int = 0) -> Residual:
    """Compute the residual from set `from_` to set `to` of a run (or of `to_run`) and write it with its sidecar."""
    r_from = Run(run)
    r_to = Run(to_run) if to_run else r_from
    if r_to is not r_from and r_from.model_identity != r_to.model_identity:
        diff = {k: (r_from.model_identity[k], r_to.model_identity[k]) for k in r_from.model_identity
                if r_from.model_identity[k] != r_to.model_identity[k]}
        raise IncompatibleRunError(f"Runs {r_from.path} and {r_to.path} used different models or preprocessing "
                                   f"({', '.join(diff)}); a residual needs one. Re-extract one of them with the other's "
                                   f"--model {r_from.manifest['model']} --pretrained {r_from.manifest['pretrained']}.")
    m_from, m_to = _select(r_from, from_), _select(r_to, to)
    x_from, x_to = r_from.vectors[m_from], r_to.vectors[m_to]
    meta_from, meta_to = r_from.metadata[m_from], r_to.metadata[m_to]
    if r_to is r_from and np.any(m_from & m_to):
        raise ConfigError(f"Sets {from_!r} and {to!r} share {int((m_from & m_to).sum())} images; they must be disjoint.")
    r, thr, v_from, v_to = compute_residual(x_from, x_to, method)
    g_from = meta_from["group"].to_numpy() if meta_from["group"].notna().all() else None
    g_to = meta_to["group"].to_numpy() if meta_to["group"].notna().all() else None
    stab = bootstrap_stability(x_from, x_to, g_from, g_to, bootstrap, seed, method) if bootstrap > 0 else None
    nonsem = compare_nonsemantic(meta_from, meta_to)
    for w in nonsem["warnings"]:
        log.warning("residual: %s", w)
    mi = r_from.manifest
    info = {
        "embedlab_residual": 1, "method": method, "thr": thr,
        "thr_definition": "<v_to, r> (the paper's target projection)",
        "model": {"model": mi["model"], "pretrained": mi["pretrained"], "weights_sha256": mi["weights_sha256"],
                  "preprocess": mi["preprocess"], "decode": mi["decode"], "embed_dim": mi["embed_dim"],
                  "image_size": mi.get("image_size")},
        "from": {"run": str(r_from.path.resolve()), "selector": from_, "count": int(m_from.sum()),
                 "groups": int(pd.Series(g_from).nunique()) if g_from is not None else None,
                 "manifest_fingerprint": mi.get("source_manifest_fingerprint"), "input_hash": mi.get("input_hash")},
        "to": {"run": str(r_to.path.resolve()), "selector": to, "count": int(m_to.sum()),
               "groups": int(pd.Series(g_to).nunique()) if g_to is not None else None,
               "manifest_fingerprint": r_to.manifest.get("source_manifest_fingerprint"),
               "input_hash": r_to.manifest.get("input_hash")},
        "cos_v_from_v_to": float(v_from @ v_to), "v_from": v_from.astype(np.float32).tolist(),
        "v_to": v_to.astype(np.float32).tolist(), "bootstrap": stab, "nonsemantic": nonsem, "edits": [],
    }
    save_residual(out, r, info)
    return Residual(r.astype(np.float32), info, Path(out))
