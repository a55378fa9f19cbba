"""rows: split from extract.py."""

from __future__ import annotations

import logging

import pandas as pd

from embedlab._io import display_path
from embedlab.datasets.manifest import META_COLUMNS, WDS_COLUMNS, Manifest, materialize
from embedlab.datasets.webdataset import WDS_SEP

log = logging.getLogger(__name__)


def safe_text(value):
    """Any str as valid UTF-8 text (bytes a file system allows but UTF-8 does not become \\xNN escapes)."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("ascii")


class Rows:
    """Row id -> manifest entry and readable source (a file path or a tar member), resolved lazily."""

    def __init__(self, man: Manifest, entries):
        self.man, self.entries = man, entries  # entries: a list indexed by row id, or a dict

    def source(self, row_id: int):
        e = self.entries[row_id]
        if e.tar:
            return (self.man.resolve(e.tar["file"]), int(e.tar["offset"]), int(e.tar["size"]), e.tar["member"])
        return materialize(self.man, e.path, e)

    @staticmethod
    def shown(source) -> str:
        return display_path(f"{source[0]}{WDS_SEP}{source[3]}" if isinstance(source, tuple) else source)


def _safe_record(rec: dict) -> dict:
    """Every str value as valid UTF-8, before pandas/pyarrow see it (they refuse lone surrogates)."""
    return {k: safe_text(v) for k, v in rec.items()}


def error_frame(errs: list, rows: Rows) -> pd.DataFrame:
    # "path" as in metadata.parquet: the manifest's (relative) path, not the resolved absolute file
    recs = [
        _safe_record({"row_id": r, "path": rows.entries[r].path, "reason": reason, "detail": detail})
        for r, (reason, detail) in errs
    ]
    return pd.DataFrame(recs, columns=["row_id", "path", "reason", "detail"])


def meta_frame(metas: list, rows: Rows, extra_columns: tuple = ()) -> pd.DataFrame:
    """One row per embedded image; every text column is valid UTF-8 whatever bytes the file names hold."""
    out = []
    for row_id, meta in metas:
        e = rows.entries[row_id]
        rec = {
            "row_id": row_id,
            "path": e.path,
            "file": rows.shown(rows.source(row_id)),
            **meta,
            "role": e.role,
            "split": e.split,
            "group": e.group or e.path,
            "pair_id": e.pair_id,
            "gt": e.gt,
            "source": e.source,
            "manifest_line": e.line,
        }
        if extra_columns == WDS_COLUMNS:
            src = e.meta or {}
            rec.update(
                {k: src.get(k) for k in ("url", "caption", "key", "status")},
                source_width=src.get("width"),
                source_height=src.get("height"),
            )
        elif extra_columns:  # the manifest's own metadata columns (header "meta_columns": datasets/inputs.py)
            src = e.meta or {}
            rec.update({k: src.get(k) for k in extra_columns})
        out.append(_safe_record(rec))
    df = pd.DataFrame(out, columns=list(META_COLUMNS) + ["bytes"] + list(extra_columns))
    df = df.astype(
        {
            "row_id": "int64",
            "width": "int64",
            "height": "int64",
            "frames": "int64",
            "manifest_line": "int64",
            "jpeg_quality": "float64",
            "mean_luma": "float64",
        }
    )
    if extra_columns == WDS_COLUMNS:
        df = df.astype({"source_width": "float64", "source_height": "float64"})
    return df
