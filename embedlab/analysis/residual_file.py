"""residual_file: split from residual.py."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedlab._io import atomic_save_npy, atomic_write_json, load_npy, read_json
from embedlab.errors import ConfigError, IncompatibleRunError

log = logging.getLogger(__name__)


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
        return {
            "files": {k: str(v) for k, v in self.files.items()},
            "dim": int(len(self.vector)),
            "thr": self.thr,
            **info,
        }


def sidecar_path(npy: str | os.PathLike) -> Path:
    p = Path(npy)
    return p.with_suffix(".json")


def load_residual(path: str | os.PathLike) -> Residual:
    """Read residual.npy (allow_pickle=False) and its JSON sidecar; validate shape and finiteness."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"Residual file {p} not found. Make one with `embedlab residual RUN --from A --to B --out {p}`."
        )
    vec = check_residual_vector(load_npy(p, expect=RESIDUAL_CONTENT + f" (fix: {_RECREATE.format(p=p)})"), p)
    side = sidecar_path(p)
    if not side.exists():
        raise ConfigError(
            f"{p} has no sidecar {side}; it holds thr and the model identity. Recreate it with `embedlab residual`."
        )
    info = read_json(side)
    if int(info.get("dim", len(vec))) != len(vec):
        raise IncompatibleRunError(f"{p}: vector has dimension {len(vec)} but its sidecar says {info.get('dim')}.")
    model = info.get("model") or {}
    if model.get("embed_dim") is not None and int(model["embed_dim"]) != len(vec):
        raise IncompatibleRunError(
            f"{p} holds a {len(vec)}-dimensional vector, but its model {model.get('model')}/"
            f"{model.get('pretrained')} makes {int(model['embed_dim'])}-dimensional embeddings. "
            f"Fix: {_RECREATE.format(p=p)} from a run of that model."
        )
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
        raise ConfigError(
            f"{source} holds dtype {vec.dtype}, not numbers; a residual is {RESIDUAL_CONTENT}. Fix: {fix}."
        )
    if vec.ndim != 1:
        raise ConfigError(f"{source}: expected a 1-D vector, got shape {vec.shape}. Fix: {fix}.")
    n_nan, n_inf = int(np.isnan(vec).sum()), int(np.isinf(vec).sum())
    if n_nan or n_inf:
        bad = " and ".join(t for t in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "") if t)
        raise ConfigError(f"{source} holds {bad} value(s) among its {len(vec)}; a residual must be finite. Fix: {fix}.")
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    if norm < MIN_RESIDUAL_NORM:
        raise ConfigError(
            f"{source} has norm {norm:.3g} (below {MIN_RESIDUAL_NORM:g}), so it has no direction: the "
            f"two sets' means were equal. Fix: {fix} using two different sets."
        )
    return vec.astype(np.float32)


def save_residual(path: str | os.PathLike, vector: np.ndarray, info: dict) -> Path:
    p = Path(path)
    if p.suffix != ".npy":
        raise ConfigError(f"The residual output must end in .npy. Got {p}.")
    atomic_save_npy(p, np.asarray(vector, dtype=np.float32))
    atomic_write_json(sidecar_path(p), dict(info, dim=int(len(vector)), file=p.name))
    return p
