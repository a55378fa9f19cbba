"""The run folder: the contract between `extract` and everything downstream.

    RUN/manifest.json            identity (model, weights sha256, preprocessing, decode path, dtype, device,
                                 input-list hash), counts, versions, status
    RUN/shards/emb_00000.npy     L2-normalised vectors of the shard's embedded images (float32 or float16)
    RUN/shards/meta_00000.parquet  one row per embedded image (row_id, path, sha1, size, format, ...)
    RUN/shards/err_00000.parquet   one row per rejected file (row_id, path, reason)
    RUN/shards/00000.done.json   written last and atomically: the shard is complete
    RUN/metadata.parquet, RUN/errors.csv, RUN/index.faiss   consolidated when every shard is done

Row ids are positions in the manifest's input list, so they are stable across resumes; the FAISS index's
ids are those row ids.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import atomic_write_bytes, atomic_write_json, load_npy, read_json
from .errors import ConfigError, IncompatibleRunError

IDENTITY_KEYS = ("model", "pretrained", "weights_sha256", "preprocess", "decode", "vector_dtype", "compute_dtype",
                 "input_hash", "shard_size")


def shard_name(i: int) -> str:
    return f"{i:05d}"


@dataclass
class Run:
    """Read access to a finished (or partly finished) run folder."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        if not (self.path / "manifest.json").exists():
            raise ConfigError(f"{self.path} is not an embedlab run folder (no manifest.json). "
                              "Create one with `embedlab extract --manifest M --model X --pretrained Y --out RUN`.")
        self.manifest = read_json(self.path / "manifest.json")
        self._meta: pd.DataFrame | None = None
        self._vectors: np.ndarray | None = None

    @property
    def identity(self) -> dict:
        return {k: self.manifest.get(k) for k in IDENTITY_KEYS}

    @property
    def model_identity(self) -> dict:
        """What must match for vectors to be comparable: model, weights and preprocessing."""
        return {k: self.manifest.get(k) for k in ("model", "pretrained", "weights_sha256", "preprocess", "decode")}

    def done_shards(self) -> list[int]:
        return sorted(int(p.name.split(".")[0]) for p in (self.path / "shards").glob("*.done.json"))

    def _load(self) -> None:
        shards = self.done_shards()
        metas, vecs = [], []
        for s in shards:
            meta_p = self.path / "shards" / f"meta_{shard_name(s)}.parquet"
            if meta_p.exists():
                metas.append(pd.read_parquet(meta_p))
                vecs.append(load_npy(self.path / "shards" / f"emb_{shard_name(s)}.npy").astype(np.float32))
        dim = int(self.manifest.get("embed_dim", 0))
        self._meta = pd.concat(metas, ignore_index=True) if metas else pd.DataFrame({"row_id": []})
        self._vectors = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
        if len(self._meta) != len(self._vectors):
            raise IncompatibleRunError(f"{self.path}: metadata has {len(self._meta)} rows but vectors {len(self._vectors)}.")

    @property
    def metadata(self) -> pd.DataFrame:
        if self._meta is None:
            self._load()
        return self._meta

    @property
    def vectors(self) -> np.ndarray:
        """(n_images, dim) float32, L2-normalised, aligned with `metadata` rows."""
        if self._vectors is None:
            self._load()
        return self._vectors

    def errors(self) -> pd.DataFrame:
        parts = [pd.read_parquet(p) for p in sorted((self.path / "shards").glob("err_*.parquet"))]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["row_id", "path", "reason", "detail"])

    def select(self, value: str, column: str | None = None) -> np.ndarray:
        """Boolean mask of rows whose `column` equals `value` (column defaults to the set label, `role`).

        `value` may also be written COLUMN=VALUE (e.g. split=test)."""
        meta = self.metadata
        if column is None and "=" in value:
            column, value = value.split("=", 1)
        column = column or "role"
        if column not in meta.columns:
            raise ConfigError(f"Run {self.path} has no metadata column {column!r}. Columns: {', '.join(meta.columns)}.")
        mask = meta[column].astype(str).to_numpy() == str(value)
        if not mask.any():
            present = sorted(map(str, meta[column].dropna().unique()))[:20]
            raise ConfigError(f"No image in run {self.path} has {column}={value!r}. Values present: {present}.")
        return mask

    def load_index(self):
        from .index import read_index

        return read_index(self.path / "index.faiss")


def write_shard(run_dir: Path, shard: int, vectors: np.ndarray, meta: pd.DataFrame, errors: pd.DataFrame,
                n_inputs: int, first_row: int) -> None:
    """Write one shard's files, then its done-marker last (atomically): a crash leaves no half-done shard."""
    from ._io import atomic_save_npy, sha256_file

    sdir = run_dir / "shards"
    name = shard_name(shard)
    atomic_save_npy(sdir / f"emb_{name}.npy", vectors)
    for frame, prefix in ((meta, "meta"), (errors, "err")):
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic_write_bytes(sdir / f"{prefix}_{name}.parquet", buf.getvalue())
    atomic_write_json(sdir / f"{name}.done.json", {
        "shard": shard, "first_row": first_row, "inputs": n_inputs, "rows": int(len(meta)), "errors": int(len(errors)),
        "emb_sha256": sha256_file(sdir / f"emb_{name}.npy")})


def check_identity(existing: dict, wanted: dict, run_dir: Path) -> None:
    diff = {k: (existing.get(k), wanted.get(k)) for k in IDENTITY_KEYS if existing.get(k) != wanted.get(k)}
    if diff:
        lines = "; ".join(f"{k}: run has {str(a)[:80]!r}, this command {str(b)[:80]!r}" for k, (a, b) in diff.items())
        raise IncompatibleRunError(f"Run folder {run_dir} was made with a different configuration ({lines}). "
                                   "Resuming would mix incomparable vectors. Use another --out, or --overwrite to replace it.")


def clear_run(run_dir: Path) -> None:
    import shutil

    shutil.rmtree(run_dir / "shards", ignore_errors=True)
    for f in ("manifest.json", "metadata.parquet", "errors.csv", "index.faiss"):
        (run_dir / f).unlink(missing_ok=True)
