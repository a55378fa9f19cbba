"""Residual vectors between two image sets (RAVE, method.md 2.2) with provenance and stability.

Math lives in small pure functions (`rave_residual`, `mean_difference`, `bootstrap_stability`,
`compare_nonsemantic`); `residual()` does the I/O: it reads run folders and writes `residual.npy` (float32,
shape (d,)) plus a JSON sidecar `residual.json`.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import atomic_save_npy, atomic_write_json, load_npy, read_json
from .errors import ConfigError, IncompatibleRunError
from ._validate import Interval, check_param
from .index import parse_bytes
from .runs import Run

log = logging.getLogger(__name__)
METHODS = ("rave", "mean-diff")


def l2n(x: np.ndarray, axis: int = -1) -> np.ndarray:
    if getattr(x, "dtype", None) == np.float16:         # via float32 (exact both ways; numpy converts f16 -> f32
        x = np.asarray(x, dtype=np.float32)              # with SIMD, f16 -> f64 element by element)
    x = np.asarray(x, dtype=np.float64)
    n = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None] if x.ndim == 2 and axis in (-1, 1) \
        else np.linalg.norm(x, axis=axis, keepdims=True)
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
    if isinstance(groups, np.ndarray) and groups.dtype.kind in "iu":    # ids (set_group_ids): as they are
        codes = pd.factorize(groups)[0]
    else:
        codes = pd.factorize(pd.Series(groups).astype(str))[0]
    missing = codes < 0                       # a missing label (NA kept by astype(str)): a group of its own
    if missing.any():
        codes[missing] = codes.max() + 1 + np.arange(int(missing.sum()))
    return codes


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


def residual_from_sums(sum_from: np.ndarray, n_from, sum_to: np.ndarray, n_to, method: str = "rave"):
    """`compute_residual` from sufficient statistics: each set's sum of (for rave: unit-normalised) vectors and
    its count. Rows of 2-D sums are independent replicates (bootstrap). Returns (r, thr, v_from, v_to)."""
    sum_from, sum_to = np.asarray(sum_from, np.float64), np.asarray(sum_to, np.float64)
    if method == "rave":                       # norm(mean) = norm(sum): the counts cancel
        v_from, v_to = l2n(sum_from), l2n(sum_to)
        r = l2n(v_to - v_from)
    else:
        m_from = sum_from / np.asarray(n_from, np.float64)[..., None] if sum_from.ndim == 2 else sum_from / n_from
        m_to = sum_to / np.asarray(n_to, np.float64)[..., None] if sum_to.ndim == 2 else sum_to / n_to
        r, v_from, v_to = l2n(m_to - m_from), l2n(m_from), l2n(m_to)
    thr = np.einsum("...i,...i->...", v_to, r)
    return r, (float(thr) if np.ndim(thr) == 0 else thr), v_from, v_to


def bootstrap_summary(cos: np.ndarray, unit: str, seed: int, scheme: str) -> dict:
    """The stability figure: mean cosine of the bootstrap residuals to the full one and a 95% percentile interval."""
    cos = np.asarray(cos, np.float64)
    return {"n_boot": int(len(cos)), "unit": unit, "mean_cosine": float(cos.mean()),
            "ci95": [float(np.percentile(cos, 2.5)), float(np.percentile(cos, 97.5))], "seed": seed, "scheme": scheme}


def group_resample_counts(n_groups: list[int], n_boot: int, seed: int, progress: bool = False) -> list[np.ndarray]:
    """Per set, an (n_boot, G) array: how often each group is drawn in each resample of its G groups with
    replacement. Draws exactly as `bootstrap_stability` does (same seed, same resamples)."""
    rng = np.random.default_rng(seed)
    W = [np.empty((n_boot, g)) for g in n_groups]
    from ._io import progress_bar

    for b in progress_bar(progress, range(n_boot), desc="residual: bootstrap draws", unit="resample"):
        for w, g in zip(W, n_groups):
            w[b] = np.bincount(rng.integers(0, g, g), minlength=g)
    return W


def _weighted_sums(W: np.ndarray, S: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """W @ S in float64 for float32 or float64 group sums S, a chunk of groups at a time (no float64 copy of S)."""
    out = np.zeros((len(W), S.shape[1]))
    for a in range(0, len(S), chunk):
        out += W[:, a:a + chunk] @ np.asarray(S[a:a + chunk], np.float64)
    return out


def group_bootstrap_from_sums(full: np.ndarray, sums: list[np.ndarray], sizes: list[np.ndarray], n_boot: int,
                              seed: int, method: str = "rave", progress: bool = False,
                              counts: list[np.ndarray] | None = None) -> np.ndarray:
    """Cosines to `full` of residuals from groups resampled with replacement, computed from per-group sums
    (G, d) and sizes of each set; `counts` from `group_resample_counts` (drawn here when None)."""
    W = counts if counts is not None else group_resample_counts([len(S) for S in sums], n_boot, seed, progress)
    (s_from, s_to), (n_from, n_to) = [_weighted_sums(w, S) for w, S in zip(W, sums)], [w @ n for w, n in zip(W, sizes)]
    return residual_from_sums(s_from, n_from, s_to, n_to, method)[0] @ np.asarray(full, np.float64)


def image_bootstrap_weights(n_sets: tuple[int, int], n_boot: int, seed: int, exact_limit: int,
                            progress: bool = False) -> tuple[list, str]:
    """Per-image bootstrap weights for the two sets. Up to `exact_limit` weights in all: the counts of
    `bootstrap_stability`'s resamples (same seed, same draws), as (n_boot, n) arrays. Beyond: None, meaning
    Poisson(1) weights drawn while streaming (`poisson_weights`)."""
    if n_boot * sum(n_sets) > exact_limit:
        return [None, None], "poisson"
    rng = np.random.default_rng(seed)
    W = [np.empty((n_boot, n), np.float32) for n in n_sets]
    from ._io import progress_bar

    for b in progress_bar(progress, range(n_boot), desc="residual: bootstrap draws", unit="resample"):
        for w, n in zip(W, n_sets):
            w[b] = np.bincount(rng.integers(0, n, n), minlength=n)
    return W, "multinomial"


_F16_TABLE = None
_KERNEL_LOCK = threading.Lock()


def _accumulate_kernel():
    """numba kernel: one pass over a block of stored vectors (float16 read through a 65,536-entry table, or
    float32), each row optionally scaled to unit length, added in float64 to its set's total and, when its group
    code is >= 0, to its group's sum (float32 or float64 storage); optionally written out (float32) for the
    per-image bootstrap's product."""
    global _F16_TABLE
    with _KERNEL_LOCK:          # the kernel may be loaded on a side thread while the metadata is read
        if _F16_TABLE is None:
            _F16_TABLE = _make_accumulate_kernel()
    return _F16_TABLE


def _make_accumulate_kernel():
    import numba

    @numba.njit(nogil=True, cache=True)
    def accumulate(X, table, which, codes, normalise, totals, gsums, out):
        m, d = X.shape
        row = np.empty(d, np.float64)
        for i in range(m):
            s = which[i]
            if s < 0:
                continue
            n2 = 0.0
            for j in range(d):
                if table is None:
                    v = np.float64(X[i, j])
                else:
                    v = np.float64(table[X[i, j]])
                row[j] = v
                n2 += v * v
            scale = 1.0 / np.sqrt(n2) if normalise and n2 > 0 else 1.0
            for j in range(d):
                totals[s, j] += row[j] * scale
            if gsums is not None:
                g = codes[i]
                if g >= 0:
                    for j in range(d):
                        gsums[g, j] += row[j] * scale
            if out is not None:
                for j in range(d):
                    out[i, j] = row[j] * scale

    return accumulate, np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


def preload_accumulate_kernel() -> None:
    """Load the kernel (numba's start-up, about 0.45 s even from its cache: mostly its type registries, shared by
    every signature) with the argument types of a group-bootstrap pass over a float16 run; run on a side thread
    while the metadata is read. Other calls (float32 runs, no bootstrap, small selections) then load only their own
    signature. A failure here is only logged: the pass loads the kernel itself and reports its errors."""
    try:
        X = np.zeros((1, 8), np.float16)
        X.flags.writeable = False       # as a block of a memory-mapped shard: numba types read-only arrays apart
        accumulate_block(X, np.zeros(1, np.int8), np.zeros(1, np.int32), True, np.zeros((1, 8)),
                         np.zeros((1, 8), np.float32))
    except Exception:       # noqa: BLE001 - a speed-up only
        log.debug("residual: preloading the accumulation kernel failed", exc_info=True)


def accumulate_block(X: np.ndarray, which: np.ndarray, codes: np.ndarray | None, normalise: bool, totals: np.ndarray,
                     gsums: np.ndarray | None, want_rows: bool = False) -> np.ndarray | None:
    """Add each row of X (float16 or float32) to `totals[which[i]]` and, when `gsums` is given and codes[i] >= 0, to
    `gsums[codes[i]]`; rows with which < 0 skipped; unit-normalised first when `normalise`. Returns the
    (normalised) rows when `want_rows`."""
    kernel, table = _accumulate_kernel()
    X = np.ascontiguousarray(X)
    if X.dtype == np.float16:
        X, tab = X.view(np.uint16), table
    else:
        X, tab = X.astype(np.float32, copy=False), None
    out = np.zeros((len(X), X.shape[1]), np.float32) if want_rows else None
    kernel(X, tab, np.ascontiguousarray(which, np.int8), None if codes is None else np.ascontiguousarray(codes, np.int32),
           bool(normalise), totals, gsums, out)
    return out


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(pos > neg) + P(pos = neg) / 2 over all pairs (the ROC AUC, ties counted half) from sorted values: the
    number `sklearn.metrics.roc_auc_score` gives, without importing scikit-learn (a second of a short command)."""
    neg = np.sort(np.asarray(neg, np.float64))
    pos = np.asarray(pos, np.float64)
    below = np.searchsorted(neg, pos, "left")
    equal = np.searchsorted(neg, pos, "right") - below
    return float((below.sum() + 0.5 * equal.sum()) / (len(neg) * len(pos)))


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
        auc = auroc(va, vb) \
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

    @property
    def files(self) -> dict[str, Path]:
        """The files it was written to (`residual` and `correct` return it): {"npy": ..., "json": sidecar}."""
        return {} if self.path is None else {"npy": Path(self.path), "json": sidecar_path(self.path)}

    def summary(self) -> dict:
        """JSON-ready: files, dim, thr and the sidecar's provenance (the vectors v_from/v_to left out)."""
        info = {k: v for k, v in self.info.items() if k not in ("v_from", "v_to")}
        return {"files": {k: str(v) for k, v in self.files.items()}, "dim": int(len(self.vector)), "thr": self.thr,
                **info}


def sidecar_path(npy: str | os.PathLike) -> Path:
    p = Path(npy)
    return p.with_suffix(".json")


def load_residual(path: str | os.PathLike) -> Residual:
    """Read residual.npy (allow_pickle=False) and its JSON sidecar; validate shape and finiteness."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"Residual file {p} not found. Make one with `embedlab residual RUN --from A --to B --out {p}`.")
    vec = check_residual_vector(load_npy(p, expect=RESIDUAL_CONTENT + f" (fix: {_RECREATE.format(p=p)})"), p)
    side = sidecar_path(p)
    if not side.exists():
        raise ConfigError(f"{p} has no sidecar {side}; it holds thr and the model identity. Recreate it with `embedlab residual`.")
    info = read_json(side)
    if int(info.get("dim", len(vec))) != len(vec):
        raise IncompatibleRunError(f"{p}: vector has dimension {len(vec)} but its sidecar says {info.get('dim')}.")
    model = info.get("model") or {}
    if model.get("embed_dim") is not None and int(model["embed_dim"]) != len(vec):
        raise IncompatibleRunError(f"{p} holds a {len(vec)}-dimensional vector, but its model {model.get('model')}/"
                                   f"{model.get('pretrained')} makes {int(model['embed_dim'])}-dimensional embeddings. "
                                   f"Fix: {_RECREATE.format(p=p)} from a run of that model.")
    return Residual(vec, info, p)


RESIDUAL_CONTENT = "a float32 vector of shape (d,), as `embedlab residual` writes"
_RECREATE = "recreate it with `embedlab residual RUN --from A --to B --out {p}`"
MIN_RESIDUAL_NORM = 1e-6


def check_residual_vector(vec: np.ndarray, source) -> np.ndarray:
    """A residual as float32, or ConfigError in one line saying what is wrong with it: not a real 1-D vector,
    NaN or infinite entries, or a (near-)zero norm (no direction: the two sets' means were equal)."""
    vec = np.asarray(vec)
    fix = _RECREATE.format(p=source)
    if vec.dtype.kind not in "fiu":
        raise ConfigError(f"{source} holds dtype {vec.dtype}, not numbers; a residual is {RESIDUAL_CONTENT}. Fix: {fix}.")
    if vec.ndim != 1:
        raise ConfigError(f"{source}: expected a 1-D vector, got shape {vec.shape}. Fix: {fix}.")
    n_nan, n_inf = int(np.isnan(vec).sum()), int(np.isinf(vec).sum())
    if n_nan or n_inf:
        bad = " and ".join(t for t in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "") if t)
        raise ConfigError(f"{source} holds {bad} value(s) among its {len(vec)}; a residual must be finite. Fix: {fix}.")
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    if norm < MIN_RESIDUAL_NORM:
        raise ConfigError(f"{source} has norm {norm:.3g} (below {MIN_RESIDUAL_NORM:g}), so it has no direction: the "
                          f"two sets' means were equal. Fix: {fix} using two different sets.")
    return vec.astype(np.float32)


def separation(sum_from: np.ndarray, n_from, sum_to: np.ndarray, n_to, method: str = "rave") -> float:
    """The residual's norm before its final normalisation: |v_to - v_from| (rave: unit set means) or
    |mean_to - mean_from| (mean-diff)."""
    if method == "rave":
        return float(np.linalg.norm(l2n(np.asarray(sum_to, np.float64)) - l2n(np.asarray(sum_from, np.float64))))
    return float(np.linalg.norm(np.asarray(sum_to, np.float64) / n_to - np.asarray(sum_from, np.float64) / n_from))


def check_separation(gap: float, vector_dtype: str, from_: str, to: str) -> None:
    """Refuse two sets whose means are equal within the rounding of the stored vectors (their residual would be
    a direction of rounding noise); warn loudly when the gap is within 10x of that floor."""
    floor = max(MIN_RESIDUAL_NORM, 2 * float(np.finfo(np.dtype(vector_dtype)).eps))
    if gap <= floor:
        raise ConfigError(f"Sets {from_} and {to} have the same mean within numerical noise (|v_to - v_from| = "
                          f"{gap:.3g}, noise floor {floor:.3g} for {vector_dtype} vectors): they are the same images "
                          f"or indistinguishable. Fix: choose two different sets.")
    if gap <= 10 * floor:
        log.warning("residual: the sets' means differ barely above numerical noise (|v_to - v_from| = %.3g, noise "
                    "floor %.3g): the residual's direction is mostly rounding", gap, floor)


def save_residual(path: str | os.PathLike, vector: np.ndarray, info: dict) -> Path:
    p = Path(path)
    if p.suffix != ".npy":
        raise ConfigError(f"The residual output must end in .npy. Got {p}.")
    atomic_save_npy(p, np.asarray(vector, dtype=np.float32))
    atomic_write_json(sidecar_path(p), dict(info, dim=int(len(vector)), file=p.name))
    return p


GROUP_COLUMNS = ("group",)
NONSEMANTIC_COLUMNS = ("width", "height", "format", *NONSEMANTIC_NUMERIC)
NONSEMANTIC_SAMPLE = 200_000      # rows per set the metadata checks read (AUROC to about +-0.002 past it)


@dataclass
class SetRows:
    """One set's metadata: its run's rows and the set's mask, never copied whole (a set of millions of rows is
    only read for its group codes and a sample). `meta` holds the columns every row is needed for (selectors,
    group); other columns are read from `run` for a sample of rows only (`nonsemantic_samples`)."""

    meta: pd.DataFrame
    mask: np.ndarray
    run: Run

    def __len__(self) -> int:
        return int(np.count_nonzero(self.mask))

    def group_codes(self) -> np.ndarray | None:
        """Codes 0..G-1 in order of first appearance (as `group_codes`), or None when some image has no group."""
        if "group" not in self.meta.columns:
            return None
        col = self.meta["group"]
        if isinstance(col.dtype, pd.CategoricalDtype):
            raw = col.cat.codes.to_numpy()[self.mask]
            return None if (raw < 0).any() else pd.factorize(raw)[0]
        values = col.to_numpy()[self.mask]
        return None if pd.isna(values).any() else pd.factorize(values)[0]

    def sample_rows(self, n: int, seed: int) -> np.ndarray:
        """Positions (in the run) of every row of the set, or of a seeded sample of `n` of them, in their order."""
        rows = np.flatnonzero(self.mask)
        if len(rows) > n:
            rows = rows[np.sort(np.random.default_rng([seed, 17]).choice(len(rows), n, replace=False))]
        return rows


def nonsemantic_samples(a: SetRows, b: SetRows, n: int, seed: int) -> list[pd.DataFrame]:
    """Each set's seeded sample of `n` rows with its non-semantic columns (size, format, JPEG quality, luma), read
    for the sampled rows only, in one visit of the shards when both sets come from one run."""
    rows = [a.sample_rows(n, seed), b.sample_rows(n, seed)]
    if a.run is b.run:
        both = a.run.metadata_rows(np.r_[rows[0], rows[1]], a.run.available_columns(NONSEMANTIC_COLUMNS))
        return [both.iloc[:len(rows[0])].reset_index(drop=True), both.iloc[len(rows[0]):].reset_index(drop=True)]
    return [s.run.metadata_rows(r, s.run.available_columns(NONSEMANTIC_COLUMNS)) for s, r in zip((a, b), rows)]


ACCUMULATE_THREADS = 2     # fixed, not the core count: for a given block size the sums are the same on every machine
# group sums stored in float32 up to this group size: relative rounding error about sqrt(size) x 6e-8 for varied
# rows, size x 6e-8 at worst (identical rows): 2.4e-4 at the limit
F32_GROUP_LIMIT = 4096


def group_sums_dtype(largest_group: int) -> type:
    """float32 storage for group sums of up to F32_GROUP_LIMIT images (half the memory traffic of the pass's random
    row updates: 0.15-0.2 s of 2.3 on 4M images in 40,000 groups), float64 past it."""
    return np.float32 if largest_group <= F32_GROUP_LIMIT else np.float64


def group_bootstrap_bytes(n_groups: list[int], d: int, n_boot: int, dtype) -> int:
    """Memory of the group bootstrap beyond one block: each pass thread's copy of the group sums, and the draws
    (float64 counts per resample and group) made during the pass."""
    return sum(n_groups) * (d * ACCUMULATE_THREADS * np.dtype(dtype).itemsize + n_boot * 8)


def _parallel_accumulate(make_blocks, which, gcode, normalise: bool, totals, gsums, bar) -> None:
    """`accumulate_block` over the run on ACCUMULATE_THREADS threads (the numba kernel releases the GIL): thread t
    takes blocks t, t + T, ... into its own totals and group sums, added up in thread order at the end, so the
    result does not depend on timing. Each block is read by one thread only (splitting a block's rows between
    threads by group made both threads pull every page: 0.65 s more on 4M images)."""
    from concurrent.futures import ThreadPoolExecutor

    T = ACCUMULATE_THREADS
    # np.zeros, not zeros_like: calloc'ed pages cost nothing until a group's row is first touched
    parts = [(totals, gsums)] + [(np.zeros(totals.shape), None if gsums is None else np.zeros(gsums.shape, gsums.dtype))
                                 for _ in range(T - 1)]

    def work_block(t, pos, X):
        accumulate_block(X, which[pos], None if gcode is None else gcode[pos], normalise, *parts[t])

    pending = [None] * T
    with ThreadPoolExecutor(T) as pool:
        for i, (pos, X) in enumerate(make_blocks()):
            t = i % T
            if pending[t] is not None:
                pending[t].result()
            pending[t] = pool.submit(work_block, t, pos, X)
            bar.update(len(pos))
        for f in pending:
            if f is not None:
                f.result()
    for tot, gs in parts[1:]:
        totals += tot
        if gsums is not None:
            gsums += gs


def _row_layout(n: int, masks: list[np.ndarray], codes: list):
    """Per row of a run: its set (-1: in none) and its group's row in the stacked group sums (-1: none); each set's
    first row there (`offsets`) and its group sizes."""
    which = np.full(n, -1, np.int8)
    gcode = np.full(n, -1, np.int32)
    offsets = np.cumsum([0] + [0 if c is None or not len(c) else int(c.max()) + 1 for c in codes])
    sizes = [None if c is None else np.bincount(c) for c in codes]
    for s, (m, c) in enumerate(zip(masks, codes)):
        idx = np.flatnonzero(m)         # a scatter by position: half the time of one by boolean mask (4M rows)
        which[idx] = s
        if c is not None:
            gcode[idx] = c + offsets[s]
    return which, gcode, offsets, sizes


def _accumulate_image_bootstrap(make_blocks, which, gcode, normalise: bool, totals, gsums, boot: dict, bar):
    """`accumulate_block` in one thread, each block's normalised rows also weighted into per-image bootstrap sums;
    returns (per set (n_boot, d) sums, per set (n_boot,) total weights)."""
    n_sets, d = totals.shape
    bsums = [np.zeros((boot["n_boot"], d), np.float64) for _ in range(n_sets)]
    bn = [np.zeros(boot["n_boot"], np.float64) for _ in range(n_sets)]
    rngs = [np.random.default_rng([boot["seed"], s + boot.get("first_set", 0)]) for s in range(n_sets)]
    seen = [0] * n_sets
    for pos, X in make_blocks():
        bar.update(len(pos))
        w = which[pos]
        Xn = accumulate_block(X, w, None if gcode is None else gcode[pos], normalise, totals, gsums, want_rows=True)
        for s in range(n_sets):
            hit = np.flatnonzero(w == s)
            if boot["weights"][s] is not None:
                W = boot["weights"][s][:, seen[s]:seen[s] + len(hit)]
            else:
                W = rngs[s].poisson(1.0, (len(hit), boot["n_boot"])).T.astype(np.float32)
            bsums[s] += (W @ Xn[hit]).astype(np.float64)
            bn[s] += W.sum(1)
            seen[s] += len(hit)
    return bsums, bn


def stream_sums(run: Run, masks: list[np.ndarray], codes: list, method: str = "rave", boot: dict | None = None,
                block: int = 65536, progress: bool = False, group_dtype=None) -> list[dict]:
    """One pass over the memory-mapped vectors of `run`: per set (disjoint boolean masks over its rows) the float64
    sum of its (for rave: unit-normalised) vectors and, with `codes`, of each group's (stored as `group_dtype`, by
    default `group_sums_dtype` of the largest group); with `boot`
    ({"weights": per set (n_boot, n) array or None, "n_boot", "seed"}), per-image bootstrap sums (None weights:
    Poisson(1) per image, from one generator per set, so the draws do not depend on `block`)."""
    from ._io import progress_bar

    n, d = len(run), run.dim
    which, gcode, offsets, sizes = _row_layout(n, masks, codes)
    totals = np.zeros((len(masks), d), np.float64)
    gsums = None
    if any(c is not None for c in codes):
        largest = max((int(z.max()) for z in sizes if z is not None and len(z)), default=0)
        gsums = np.zeros((int(offsets[-1]), d), group_dtype or group_sums_dtype(largest))
    union = which >= 0
    rows = None if union.mean() > 0.5 else union
    bar = progress_bar(progress, total=n if rows is None else int(union.sum()), desc=f"residual: {run.path.name}",
                       unit="img")

    def blocks():
        return run.iter_vectors(rows, block, dtype=None)

    gcode = gcode if gsums is not None else None
    if boot:
        bsums, bn = _accumulate_image_bootstrap(blocks, which, gcode, method == "rave", totals, gsums, boot, bar)
    else:
        _parallel_accumulate(blocks, which, gcode, method == "rave", totals, gsums, bar)
    bar.close()
    out = []
    for s, (m, c) in enumerate(zip(masks, codes)):
        part = {"sum": totals[s], "count": int(m.sum())}
        if c is not None:
            part["group_sums"] = gsums[offsets[s]:offsets[s + 1]]
            part["group_sizes"] = sizes[s].astype(np.float64)
        if boot:
            part["boot_sums"], part["boot_counts"] = bsums[s], bn[s]
        out.append(part)
    return out


def _bootstrap(stats: list[dict], full: np.ndarray, n_boot: int, seed: int, method: str, unit: str, scheme: str,
               progress: bool = False, counts: list[np.ndarray] | None = None) -> dict:
    if unit == "group":
        sums = [p["group_sums"] for p in stats]
        cos = group_bootstrap_from_sums(full, sums, [p["group_sizes"] for p in stats], n_boot, seed, method, progress,
                                        counts)
        return dict(bootstrap_summary(cos, unit, seed, scheme),
                    group_sums_dtype=str(np.result_type(*[S.dtype for S in sums])))
    a, b = stats
    r = residual_from_sums(a["boot_sums"], a["boot_counts"], b["boot_sums"], b["boot_counts"], method)[0]
    return bootstrap_summary(r @ full, unit, seed, scheme)


BOOT_SCHEMES = {
    "group": "groups resampled with replacement (multinomial counts over per-group sums; the same draws as the "
             "in-memory bootstrap)",
    "multinomial": "images resampled with replacement (multinomial counts per image; the same draws as the "
                   "in-memory bootstrap)",
    "poisson": "Poisson(1) weight per image, drawn while streaming (the Poisson bootstrap: equal in distribution "
               "to resampling images given the resample size, which varies by about sqrt(n))",
}


def _read_sets(r_from: Run, r_to: Run, from_: str, to: str):
    from .selector import Selector

    s_from, s_to = Selector.parse(from_), Selector.parse(to)
    wanted = [*s_from.columns, *s_to.columns, *GROUP_COLUMNS]      # for every row; the rest for a sample
    meta_a = r_from.read_metadata(r_from.available_columns(wanted))
    meta_b = meta_a if r_to is r_from else r_to.read_metadata(r_to.available_columns(wanted))
    m_from, m_to = s_from.mask(meta_a, f"run {r_from.path}"), s_to.mask(meta_b, f"run {r_to.path}")
    if r_to is r_from and np.any(m_from & m_to):
        raise ConfigError(f"Sets {from_!r} and {to!r} share {int((m_from & m_to).sum())} images; they must be disjoint.")
    return m_from, m_to, SetRows(meta_a, m_from, r_from), SetRows(meta_b, m_to, r_to)


def _stream_sets(r_from: Run, r_to: Run, m_from, m_to, meta_from, meta_to, method, bootstrap, seed, budget, block,
                 progress=False, side=None):
    """The two sets' sufficient statistics in one streaming pass per run, and the bootstrap unit and scheme:
    groups (their sums) when every image has one and the sums fit half the budget, else images. With `side` (an
    executor), the group bootstrap's draws are made there during the pass; returned as a future (else None)."""
    c_from, c_to = meta_from.group_codes(), meta_to.group_codes()
    d = r_from.dim
    unit = "group" if c_from is not None and c_to is not None else "image"
    gdtype = None
    if unit == "group" and bootstrap:
        n_groups = [int(c.max()) + 1 if len(c) else 0 for c in (c_from, c_to)]
        largest = max([int(np.bincount(c).max()) for c in (c_from, c_to) if len(c)], default=0)
        gdtype = group_sums_dtype(largest)       # one storage type for both sets, also when they come from two runs
        if group_bootstrap_bytes(n_groups, d, bootstrap, gdtype) > budget // 2:
            log.warning("residual: %d groups' sums would not fit half the memory budget; bootstrapping images instead",
                        sum(n_groups))
            unit = "image"
    codes = [c_from, c_to] if unit == "group" and bootstrap else [None, None]     # group sums: for the bootstrap
    draws = (side.submit(group_resample_counts, n_groups, bootstrap, seed)
             if side is not None and codes[0] is not None else None)
    boot = None
    scheme = "group"
    if bootstrap and unit == "image":
        weights, scheme = image_bootstrap_weights((len(meta_from), len(meta_to)), bootstrap, seed, budget // 16, progress)
        boot = {"weights": weights, "n_boot": bootstrap, "seed": seed}
    if r_to is r_from:
        st_from, st_to = stream_sums(r_from, [m_from, m_to], codes, method, boot, block, progress, gdtype)
    else:
        b_from = dict(boot, weights=[boot["weights"][0]]) if boot else None
        b_to = dict(boot, weights=[boot["weights"][1]], first_set=1) if boot else None
        st_from = stream_sums(r_from, [m_from], codes[:1], method, b_from, block, progress, gdtype)[0]
        st_to = stream_sums(r_to, [m_to], codes[1:], method, b_to, block, progress, gdtype)[0]
    if st_from["count"] == 0 or st_to["count"] == 0:
        raise ConfigError("A residual needs at least one image in each set.")
    return st_from, st_to, unit, scheme, c_from, c_to, draws


def _open_runs(run, to_run) -> tuple[Run, Run]:
    """The run of each set (one object when both sets come from one run), refusing runs of different models."""
    r_from = Run(run)
    r_to = Run(to_run) if to_run else r_from
    if r_to is not r_from and r_from.model_identity != r_to.model_identity:
        diff = {k: (r_from.model_identity[k], r_to.model_identity[k]) for k in r_from.model_identity
                if r_from.model_identity[k] != r_to.model_identity[k]}
        raise IncompatibleRunError(f"Runs {r_from.path} and {r_to.path} used different models or preprocessing "
                                   f"({', '.join(diff)}); a residual needs one. Re-extract one of them with the other's "
                                   f"model: `embedlab extract ... --model {r_from.manifest['model']} --pretrained "
                                   f"{r_from.manifest['pretrained']}`.")
    return r_from, r_to


def residual(run: str | os.PathLike, from_: str, to: str, out: str | os.PathLike, *, to_run: str | os.PathLike | None = None,
             method: str = "rave", bootstrap: int = 200, seed: int = 0, memory_budget: "str | int" = "1G",
             block: int = 65536, progress: bool = True) -> Residual:
    """Compute the residual from set `from_` to set `to` of a run (or of `to_run`) and write it with its sidecar.

    Streams the memory-mapped shards once, `block` vectors at a time, keeping float64 sums per set (and per group
    for the group bootstrap, float32 while groups are small: `group_sums_dtype`); `memory_budget` bounds what it
    holds beyond one block (per-thread group sums and the group draws, `group_bootstrap_bytes`; bootstrap weights)."""
    check_param("method", method, METHODS, "residual")
    check_param("bootstrap", bootstrap, Interval(int, 0), "residual")
    budget = parse_bytes(memory_budget)
    r_from, r_to = _open_runs(run, to_run)
    from concurrent.futures import ThreadPoolExecutor

    # one side thread: numba's start-up overlaps the metadata read; the sample's parquet reads and the bootstrap
    # draws overlap the vector pass
    with ThreadPoolExecutor(1) as side:
        kernel = side.submit(preload_accumulate_kernel)
        m_from, m_to, meta_from, meta_to = _read_sets(r_from, r_to, from_, to)
        samples = side.submit(nonsemantic_samples, meta_from, meta_to, NONSEMANTIC_SAMPLE, seed)
        st_from, st_to, unit, scheme, c_from, c_to, draws = _stream_sets(
            r_from, r_to, m_from, m_to, meta_from, meta_to, method, bootstrap, seed, budget, block, progress, side)
        kernel.result()

    r, thr, v_from, v_to = residual_from_sums(st_from["sum"], st_from["count"], st_to["sum"], st_to["count"], method)
    check_separation(separation(st_from["sum"], st_from["count"], st_to["sum"], st_to["count"], method),
                     r_from.manifest.get("vector_dtype", "float32"), f"{r_from.path}:{from_}", f"{r_to.path}:{to}")
    stab = (_bootstrap([st_from, st_to], r, bootstrap, seed, method, unit, BOOT_SCHEMES[scheme], progress,
                       draws.result() if draws is not None else None) if bootstrap > 0 else None)
    nonsem = compare_nonsemantic(*samples.result())
    nonsem["sample"] = {"max_per_set": NONSEMANTIC_SAMPLE, "seed": seed, "from": min(len(meta_from), NONSEMANTIC_SAMPLE),
                        "to": min(len(meta_to), NONSEMANTIC_SAMPLE)}
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
                 "groups": int(c_from.max()) + 1 if c_from is not None and len(c_from) else None,
                 "manifest_fingerprint": mi.get("source_manifest_fingerprint"), "input_hash": mi.get("input_hash")},
        "to": {"run": str(r_to.path.resolve()), "selector": to, "count": int(m_to.sum()),
               "groups": int(c_to.max()) + 1 if c_to is not None and len(c_to) else None,
               "manifest_fingerprint": r_to.manifest.get("source_manifest_fingerprint"),
               "input_hash": r_to.manifest.get("input_hash")},
        "cos_v_from_v_to": float(v_from @ v_to), "v_from": v_from.astype(np.float32).tolist(),
        "v_to": v_to.astype(np.float32).tolist(), "bootstrap": stab, "nonsemantic": nonsem, "edits": [],
    }
    save_residual(out, r, info)
    return Residual(r.astype(np.float32), info, Path(out))
