"""The slices an audit compares with the rest: one per value of each named metadata column (numeric columns cut into
quantile bins), and conjunctions of such predicates from different columns, kept while every part has the minimum
support (SliceLine's pruning: a conjunction can only be as large as its smallest parent, so one below the support is
never extended). Pure functions of a metadata DataFrame and the images' test units (groups, or images)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from embedlab.errors import ConfigError

# bookkeeping columns of a run's metadata, never audited by `--by all`
NOT_AUDITED = ("row_id", "path", "file", "content_sha1", "manifest_line", "group", "pair_id", "gt", "notes", "params")
# columns about how an image was stored and decoded: audited with `--by all`, so pipeline artefacts show as slices
PIPELINE_COLUMNS = ("width", "height", "format", "mode", "jpeg_quality", "decoder", "source")
MAX_VALUES = 50  # a text column with more distinct values than this is an identifier, not a category


@dataclass
class Slice:
    name: str
    kind: str  # "value", "bin", "conjunction", "discovered"
    columns: tuple[str, ...]
    mask: np.ndarray  # (n,) bool over the audited images

    @property
    def n_images(self) -> int:
        return int(self.mask.sum())


@dataclass
class SliceFamily:
    slices: list[Slice]
    columns: pd.DataFrame  # column, kind, n_values, n_slices
    skipped: list[str]  # one line per predicate left out (support, same contrast as another slice)


def is_numeric(s: pd.Series, bins: int) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) and s.nunique() > bins


def categorical_columns(meta: pd.DataFrame, bins: int) -> list[str]:
    """The columns `--by all` audits: text, boolean and few-valued numeric columns with 2 to MAX_VALUES values,
    pipeline columns (size, format, decoder, source) included, bookkeeping columns excluded."""
    out = []
    for c in meta.columns:
        if c in NOT_AUDITED:
            continue
        s = meta[c]
        k = s.nunique(dropna=True)
        if 2 <= k <= MAX_VALUES and not is_numeric(s, bins):
            out.append(c)
        elif c in PIPELINE_COLUMNS and is_numeric(s, bins):
            out.append(c)
    return out


def column_predicates(s: pd.Series, column: str, bins: int) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """(kind, [(name, mask)]) of one column: a predicate per value, or per quantile bin of a numeric column with
    more than `bins` distinct values. Missing values belong to no predicate."""
    if is_numeric(s, bins):
        cut = pd.qcut(s, bins, duplicates="drop")
        cats = cut.cat.categories
        return "numeric", [(f"{column} in {iv}", _bool(cut == iv)) for iv in cats]
    codes, values = pd.factorize(s)  # one pass over the column (a comparison per value is one pass per value)
    order = list(range(len(values)))
    try:
        order.sort(key=lambda i: values[i])
    except TypeError:
        order.sort(key=lambda i: str(values[i]))
    return "categorical", [(f"{column}={values[i]}", codes == i) for i in order]  # missing: code -1, no value


def _bool(mask: pd.Series) -> np.ndarray:
    """A plain bool mask; a nullable column's missing values (pd.NA) are in no slice."""
    return mask.fillna(False).to_numpy(bool)


def unit_support(mask: np.ndarray, codes: np.ndarray, n_units: int, one_image_each: bool = False) -> tuple[int, int]:
    """(units with an image in the slice, units with an image outside it). `one_image_each`: the caller knows every
    unit holds exactly one image (images as units), so the counts are the mask's."""
    if one_image_each:
        k = int(np.count_nonzero(mask))
        return k, len(mask) - k
    inside = np.bincount(codes[mask], minlength=n_units) > 0
    outside = np.bincount(codes[~mask], minlength=n_units) > 0
    return int(inside.sum()), int(outside.sum())


def check_columns(meta: pd.DataFrame, by: list[str], where: str) -> None:
    missing = [c for c in by if c not in meta.columns]
    if missing:
        raise ConfigError(
            f"{where} has no column {', '.join(map(repr, missing))}. Its columns: {', '.join(meta.columns)}. Fix: "
            "name one of these in 'by' (or add a side table as 'metadata')."
        ).naming("by", "metadata")
    for c in by:
        if meta[c].nunique(dropna=True) < 2:
            raise ConfigError(
                f"Column {c!r} of {where} has {meta[c].nunique(dropna=True)} value(s): there is no slice to compare "
                "with the rest. Fix: leave it out of 'by'."
            ).naming("by")


def define_slices(
    meta: pd.DataFrame,
    by: list[str],
    codes: np.ndarray,
    *,
    bins: int = 4,
    depth: int = 1,
    min_groups: int = 2,
    max_slices: int = 2000,
) -> SliceFamily:
    """The family of slices of `meta` (one row per image) over the columns `by`.

    `codes`: each image's test unit (group id, or its own index). A predicate is kept when at least `min_groups`
    units lie in it and at least as many outside it. A column of two values is one contrast: its second value's
    slice is the first one's rest, so only the smaller is kept (the other is listed in `skipped`). Conjunctions of
    up to `depth` predicates of different columns follow, dropped when they equal one of their parts or an earlier
    slice, or lack the support."""
    codes = np.asarray(codes, np.int64)
    n_units = int(codes.max()) + 1 if len(codes) else 0
    single = n_units == len(codes) and bool((np.bincount(codes, minlength=n_units) == 1).all())

    def support(mask):
        return unit_support(mask, codes, n_units, single)

    slices: list[Slice] = []
    preds: list[tuple[str, str, np.ndarray]] = []  # (column, name, mask) with the support, for conjunctions
    rows, skipped, seen = [], [], set()
    for col in by:
        kind, ps = column_predicates(meta[col], col, bins)
        kept_here = 0
        # two values and nothing missing: the second value's slice is the first one's rest
        binary_done = kind == "categorical" and len(ps) == 2 and bool(meta[col].notna().all())
        ordered = sorted(ps, key=lambda p: int(p[1].sum())) if binary_done else ps
        for i, (name, mask) in enumerate(ordered):
            inside, outside = support(mask)
            if min(inside, outside) < min_groups:
                skipped.append(f"{name}: {inside} unit(s) inside, {outside} outside (minimum {min_groups} each)")
                continue
            preds.append((col, name, mask))
            if binary_done and i == 1 and kept_here:
                skipped.append(f"{name}: the rest of {ordered[0][0]} (a two-valued column is one contrast)")
                continue
            key = np.packbits(mask).tobytes()
            if key in seen:
                skipped.append(f"{name}: the same images as an earlier slice")
                continue
            seen.add(key)
            slices.append(Slice(name, "bin" if kind == "numeric" else "value", (col,), mask))
            kept_here += 1
        rows.append({"column": col, "kind": kind, "n_values": len(ps), "n_slices": kept_here})
    slices += _conjunctions(preds, support, depth, min_groups, seen, max_slices - len(slices))
    return SliceFamily(slices, pd.DataFrame(rows, columns=["column", "kind", "n_values", "n_slices"]), skipped)


def _conjunctions(preds, support, depth, min_groups, seen, room) -> list[Slice]:
    """Conjunctions of 2..depth predicates of distinct columns, level by level, each extended only while it has the
    support (a conjunction is never larger than its parts)."""
    out: list[Slice] = []
    level = [((c,), (name,), m) for c, name, m in preds]
    for _ in range(2, depth + 1):
        nxt = []
        for (cols, names, m), (c, name, m2) in ((a, b) for a in level for b in preds):
            if c in cols or name <= names[-1] or len(out) >= room:
                continue  # distinct columns; each set of predicates once (names in sorted order)
            mask = m & m2
            if mask.sum() in (m.sum(), m2.sum()):
                continue  # equals one of its parts: nothing new
            inside, outside = support(mask)
            if min(inside, outside) < min_groups:
                continue
            key = np.packbits(mask).tobytes()
            if key in seen:
                continue
            seen.add(key)
            nxt.append(((*cols, c), (*names, name), mask))
            out.append(Slice(" & ".join((*names, name)), "conjunction", (*cols, c), mask))
        level = nxt
    return out


def membership(masks: list[np.ndarray], n_rows: int | None = None, rows: np.ndarray | None = None):
    """(rows, slices) sparse 0/1 matrix of the masks' images; `rows` places mask position i at row rows[i] of
    `n_rows` (the audited images among a run's rows), else the masks index the rows directly."""
    import scipy.sparse as sp

    cols = [np.flatnonzero(m) for m in masks]
    at = np.concatenate(cols).astype(np.int64) if cols else np.zeros(0, np.int64)
    if rows is not None:
        at = np.asarray(rows, np.int64)[at]
    n = n_rows if n_rows is not None else (len(masks[0]) if masks else 0)
    which = np.repeat(np.arange(len(masks)), [len(c) for c in cols])
    return sp.csr_matrix((np.ones(len(at)), (at, which)), shape=(n, len(masks)))


def unit_fractions(slices: list[Slice], codes: np.ndarray, n_units: int) -> np.ndarray:
    """(units, slices) float64: the share of each unit's images that lie in each slice (0 or 1 when the slice's
    columns are constant within groups)."""
    import scipy.sparse as sp

    codes = np.asarray(codes, np.int64)
    n = len(codes)
    if not slices:
        return np.zeros((n_units, 0))
    onehot = sp.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_units, n))
    counts = np.asarray((onehot @ membership([s.mask for s in slices], n)).todense())
    sizes = np.bincount(codes, minlength=n_units).astype(np.float64)
    return counts / np.maximum(sizes, 1)[:, None]
