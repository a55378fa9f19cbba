"""The files every audit folder holds, written the same way by the full audit and by its screen."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from embedlab._io import atomic_write_bytes, atomic_write_json

TABLE_FILES = {"slices": "slices.parquet", "concepts": "concepts.parquet", "columns": "columns.parquet"}


def json_ready(obj):
    """`obj` with numpy scalars and arrays as plain Python values and NaN as null."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if np.isnan(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    return obj


def write_tables(result, out: Path) -> None:
    """The result's tables as parquet files (each replaced atomically)."""
    for table, name in TABLE_FILES.items():
        tmp = out / f".{name}.tmp"
        getattr(result, table).to_parquet(tmp, index=False)
        os.replace(tmp, out / name)


def write_summary(result, out: Path) -> None:
    """audit.json (last of a folder's files: a folder with audit.json is complete) and slices.csv."""
    atomic_write_json(out / "audit.json", json_ready(result.info))
    atomic_write_bytes(out / "slices.csv", result.slices.to_csv(index=False).encode("utf-8"))
