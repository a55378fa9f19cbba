"""The residual as an object and as a file: `Residual` (vector + sidecar), reading, checking and writing it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedlab._io import atomic_save_npy, atomic_write_json, load_npy, read_json
from embedlab.errors import ConfigError, EmbedlabError, IncompatibleRunError

log = logging.getLogger(__name__)


@dataclass(repr=False)
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

    def dimension_mismatch(self, model_dim: int, model: str | None = None, has_model_option: bool = False):
        """IncompatibleRunError for a model of width `model_dim` (`model`: its name, None = the sidecar's own)."""
        return _dimension_mismatch(self, model_dim, model, has_model_option)

    def load_model(self, device="auto"):
        """The model its sidecar names, verified (weights sha256, and width: `dimension_mismatch`)."""
        from embedlab import models

        mi = self.info.get("model") or {}
        return models.load_verified(
            dict(mi, embed_dim=len(self.vector)),
            device,
            source=f"residual {self.path}",
            dim_error=lambda lm: self.dimension_mismatch(lm.dim),
        )

    def to_pandas(self):
        """One row: the two sets, their sizes, the method, thr, cos(v_from, v_to), the bootstrap's mean cosine, the
        dimension and the file (None when computed in memory)."""
        import pandas as pd

        info = self.info
        boot = info.get("bootstrap") or {}
        return pd.DataFrame(
            [
                {
                    "from": info.get("from", {}).get("selector"),
                    "to": info.get("to", {}).get("selector"),
                    "n_from": info.get("from", {}).get("count"),
                    "n_to": info.get("to", {}).get("count"),
                    "method": info.get("method"),
                    "thr": self.thr,
                    "cos_v_from_v_to": info.get("cos_v_from_v_to"),
                    "bootstrap_mean_cosine": boot.get("mean_cosine"),
                    "dim": int(len(self.vector)),
                    "path": None if self.path is None else str(self.path),
                }
            ]
        )

    def __repr__(self) -> str:
        info = self.info
        where = "in memory" if self.path is None else str(self.path)
        return (
            f"Residual({info.get('from', {}).get('selector')!s} -> {info.get('to', {}).get('selector')!s}, "
            f"dim={len(self.vector)}, thr={self.thr:+.3f}, {where})"
        )

    def _repr_html_(self) -> str:
        return self.to_pandas().drop(columns=["path"]).to_html(index=False)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> "Residual":
        """Write the vector and its sidecar (as `embedlab residual` does); an existing file embedlab did not write
        is refused unless `overwrite`. Returns the saved Residual (with its `path`)."""
        check_residual_target(path, overwrite)
        save_residual(path, self.vector, self.info)
        return Residual(self.vector, self.info, Path(path))

    def summary(self) -> dict:
        """JSON-ready: files, dim, thr and the sidecar's provenance (the vectors v_from/v_to left out)."""
        info = {k: v for k, v in self.info.items() if k not in ("v_from", "v_to")}
        return {
            "files": {k: str(v) for k, v in self.files.items()},
            "dim": int(len(self.vector)),
            "thr": self.thr,
            **info,
        }


def as_residual(residual: "Residual | str | os.PathLike") -> Residual:
    """A Residual as given (a notebook's, computed in memory), or read from its .npy and sidecar."""
    return residual if isinstance(residual, Residual) else load_residual(residual)


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
    if p.is_dir():  # a folder where the residual file goes: name the file to pass, or the command that makes one
        inside = sorted(q.name for q in p.glob("*.npy") if sidecar_path(q).is_file())
        make = f"make one with `embedlab residual RUN --from A --to B --out {p}/r.npy`"
        hint = f"pass {p / inside[0]}" if inside else make
        raise ConfigError(f"{p} is a folder; a residual is a .npy file with its .json sidecar. Fix: {hint}.")
    vec = check_residual_vector(load_npy(p, expect=RESIDUAL_CONTENT + f" (fix: {_RECREATE.format(p=p)})"), p)
    side = sidecar_path(p)
    if not side.exists():
        raise ConfigError(
            f"{p} has no sidecar {side}; it holds thr and the model identity. Recreate it with `embedlab residual`."
        )
    info = read_json(side, "a residual's sidecar (JSON, UTF-8 text)")
    res = Residual(vec, info, p)
    model = info.get("model") or {}
    for recorded in (model.get("embed_dim"), info.get("dim")):
        if recorded is not None and int(recorded) != len(vec):
            raise res.dimension_mismatch(int(recorded))
    return res


def _dimension_mismatch(res: "Residual", model_dim: int, model: str | None = None, has_model_option: bool = False):
    """The one message for a residual whose width is not a model's: the residual file, both widths, the model its
    sidecar says it was made with, and the fix (that model, or a residual recreated with `model`)."""
    p, dim = res.path, len(res.vector)
    made = res.info.get("model") or {}
    made_with = f"{made.get('model', '?')}/{made.get('pretrained', '?')}"
    side = sidecar_path(p) if p is not None else "its sidecar"
    if model is None or model == made_with:  # the sidecar's own model: the .npy and .json do not belong together
        return IncompatibleRunError(
            f"Residual {p} is {dim}-dimensional, but {side} says it was made with {made_with}, which makes "
            f"{model_dim}-dimensional embeddings: the .npy and its sidecar do not belong together. Fix: put back "
            f"the .npy/.json pair as `embedlab residual` wrote them, or {_RECREATE.format(p=p)} from a run of "
            f"{made_with}."
        )
    use = (
        f"pass 'model' {made.get('model')} 'pretrained' {made.get('pretrained')} (or leave them out)"
        if has_model_option
        else f"use {made_with}"
    )
    err = IncompatibleRunError(
        f"Residual {p} is {dim}-dimensional (made with {made_with}, per {side}), but {model} makes "
        f"{model_dim}-dimensional embeddings. Fix: {use}, or recreate the residual with {model}: extract a run "
        f"with it, then `embedlab residual RUN --from A --to B --out NEW.npy`."
    )
    return err.naming("model", "pretrained") if has_model_option else err


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


def check_residual_target(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse, before any work, an output path that is a folder, does not end in .npy, or is an existing file that
    embedlab did not write as a residual (no sidecar saying so), unless `overwrite`."""
    p = Path(path)
    if p.suffix != ".npy":
        raise ConfigError(f"The residual output must end in .npy. Got {p}.").naming("out")
    if p.is_dir():
        raise ConfigError(f"'out' {p} is a folder; a residual is written to a .npy file. Fix: pass DIR/residual.npy.")
    if not p.exists() or overwrite:
        return
    side = sidecar_path(p)
    try:
        ours = side.is_file() and "embedlab_residual" in read_json(side)
    except (ValueError, OSError, EmbedlabError):
        ours = False
    if not ours:
        raise ConfigError(
            f"'out' {p} exists and is not a residual embedlab wrote (no sidecar {side.name} saying so). Fix: pass "
            "another 'out', or 'overwrite' to replace it."
        ).naming("out", "overwrite")


def save_residual(path: str | os.PathLike, vector: np.ndarray, info: dict) -> Path:
    p = Path(path)
    if p.suffix != ".npy":
        raise ConfigError(f"The residual output must end in .npy. Got {p}.")
    atomic_save_npy(p, np.asarray(vector, dtype=np.float32))
    atomic_write_json(sidecar_path(p), dict(info, dim=int(len(vector)), file=p.name))
    return p
