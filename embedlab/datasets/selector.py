"""One way to select images: a `Selector` parsed once, applied to run metadata (`.mask`) or to manifest
entries (`.filter`).

Syntax: a set label (``backlit``, meaning ``role=backlit``), ``COLUMN=VALUE`` (``split=test``), ``COLUMN!=VALUE``
(every image but those; the rest of an audit's slice), or several joined by commas, all of which must hold
(``role=backlit,split=train``). `split_spec` reads the
``PATH[:SELECTOR]`` form the training commands take.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from embedlab.errors import ConfigError

DEFAULT_COLUMN = "role"


@dataclass(frozen=True)
class Selector:
    """A conjunction of COLUMN=VALUE clauses (and COLUMN!=VALUE ones, in `excluded`). Build it with `Selector.parse`."""

    clauses: tuple[tuple[str, str], ...]
    text: str = ""
    excluded: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: "str | Selector") -> "Selector":
        if isinstance(text, Selector):
            return text
        clauses, excluded = [], []
        for part in (p.strip() for p in str(text).split(",")):
            if not part:
                continue
            negate = "!=" in part
            column, value = part.split("!=" if negate else "=", 1) if "=" in part else (DEFAULT_COLUMN, part)
            if not column.strip():
                raise ConfigError(f"Selector {text!r}: {part!r} names no column (write COLUMN=VALUE).")
            (excluded if negate else clauses).append((column.strip(), value))
        if not clauses and not excluded:
            raise ConfigError(f"Empty selector {text!r}: pass a set label (backlit) or COLUMN=VALUE, joined by commas.")
        return cls(tuple(clauses), str(text), tuple(excluded))

    @property
    def columns(self) -> list[str]:
        """The metadata columns the selector reads (each once, in order)."""
        return list(dict.fromkeys(c for c, _ in self.clauses + self.excluded))

    def __str__(self) -> str:
        return self.text or ",".join(f"{c}={v}" for c, v in self.clauses)

    def mask(self, metadata: pd.DataFrame, where: str = "the run") -> np.ndarray:
        """Boolean mask over `metadata` rows. Raises ConfigError naming the missing column, or the values present
        when a clause (or the clauses together) matches nothing."""
        mask = np.ones(len(metadata), bool)
        for column, value in self.clauses:
            if column not in metadata.columns:
                raise ConfigError(
                    f"{where} has no metadata column {column!r}. Columns: {', '.join(map(str, metadata.columns))}."
                )
            part = column_equals(metadata[column], value)
            if not part.any():
                present = sorted(map(str, pd.Series(metadata[column]).dropna().unique()))[:20]
                raise ConfigError(f"No image in {where} has {column}={value!r}. Values present: {present}.")
            mask &= part
        for column, value in self.excluded:
            if column not in metadata.columns:
                raise ConfigError(
                    f"{where} has no metadata column {column!r}. Columns: {', '.join(map(str, metadata.columns))}."
                )
            mask &= ~column_equals(metadata[column], value)
        if not mask.any():
            raise ConfigError(f"No image in {where} matches {str(self)!r} (each part matches some, together none).")
        return mask

    def filter(self, entries: Iterable, where: str = "the manifest") -> list:
        """The entries (objects with attributes, or dicts) matching every clause; [] when none match."""

        def get(e, column):
            return e.get(column) if isinstance(e, dict) else getattr(e, column, None)

        return [
            e
            for e in entries
            if all(str(get(e, c)) == v for c, v in self.clauses) and all(str(get(e, c)) != v for c, v in self.excluded)
        ]


def column_equals(col: pd.Series, value: str) -> np.ndarray:
    """`col.astype(str) == value`, without turning a categorical column of millions of rows into strings."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        hit = np.asarray(col.cat.categories.astype(str) == str(value))
        codes = col.cat.codes.to_numpy()
        return np.where(codes >= 0, hit[np.maximum(codes, 0)] if len(hit) else False, str(value) == "nan")
    return col.astype(str).to_numpy() == str(value)


def split_spec(spec: str | os.PathLike, default: str) -> tuple[Path, Selector]:
    """'PATH[:SELECTOR]' -> (path, selector); a path that exists as written wins over the split."""
    spec = str(spec)
    if ":" in spec and not os.path.exists(spec):
        path, selector = spec.rsplit(":", 1)
        return Path(path), Selector.parse(selector)
    return Path(spec), Selector.parse(default)
