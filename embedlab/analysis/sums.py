"""sums: split from residual.py."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd

from embedlab.analysis.checks import NONSEMANTIC_COLUMNS
from embedlab.runs.store import Run

log = logging.getLogger(__name__)
_KERNEL_LOCK = threading.Lock()

_F16_TABLE = None
# group sums stored in float32 up to this group size: relative rounding error about sqrt(size) x 6e-8 for varied
# rows, size x 6e-8 at worst (identical rows)
F32_GROUP_LIMIT = 4096


def _accumulate_kernel():
    """numba kernel: one pass over a block of stored vectors (float16 read through a 65,536-entry table, or
    float32), each row optionally scaled to unit length, added in float64 to its set's total and, when its group
    code is >= 0, to its group's sum (float32 or float64 storage); optionally written out (float32) for the
    per-image bootstrap's product."""
    global _F16_TABLE
    with _KERNEL_LOCK:  # the kernel may be loaded on a side thread while the metadata is read
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
        X.flags.writeable = False  # as a block of a memory-mapped shard: numba types read-only arrays apart
        accumulate_block(
            X, np.zeros(1, np.int8), np.zeros(1, np.int32), True, np.zeros((1, 8)), np.zeros((1, 8), np.float32)
        )
    except Exception:  # noqa: BLE001 - a speed-up only
        log.debug("residual: preloading the accumulation kernel failed", exc_info=True)


def accumulate_block(
    X: np.ndarray,
    which: np.ndarray,
    codes: np.ndarray | None,
    normalise: bool,
    totals: np.ndarray,
    gsums: np.ndarray | None,
    want_rows: bool = False,
) -> np.ndarray | None:
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
    kernel(
        X,
        tab,
        np.ascontiguousarray(which, np.int8),
        None if codes is None else np.ascontiguousarray(codes, np.int32),
        bool(normalise),
        totals,
        gsums,
        out,
    )
    return out


NONSEMANTIC_SAMPLE = 200_000  # rows per set the metadata checks read (AUROC to about +-0.002 past it)


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
        return [both.iloc[: len(rows[0])].reset_index(drop=True), both.iloc[len(rows[0]) :].reset_index(drop=True)]
    return [s.run.metadata_rows(r, s.run.available_columns(NONSEMANTIC_COLUMNS)) for s, r in zip((a, b), rows)]


ACCUMULATE_THREADS = 2  # fixed, not the core count: for a given block size the sums are the same on every machine


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
    parts = [(totals, gsums)] + [
        (np.zeros(totals.shape), None if gsums is None else np.zeros(gsums.shape, gsums.dtype)) for _ in range(T - 1)
    ]

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
        idx = np.flatnonzero(m)  # a scatter by position: half the time of one by boolean mask (4M rows)
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
                W = boot["weights"][s][:, seen[s] : seen[s] + len(hit)]
            else:
                W = rngs[s].poisson(1.0, (len(hit), boot["n_boot"])).T.astype(np.float32)
            bsums[s] += (W @ Xn[hit]).astype(np.float64)
            bn[s] += W.sum(1)
            seen[s] += len(hit)
    return bsums, bn


def stream_sums(
    run: Run,
    masks: list[np.ndarray],
    codes: list,
    method: str = "rave",
    boot: dict | None = None,
    block: int = 65536,
    progress: bool = False,
    group_dtype=None,
) -> list[dict]:
    """One pass over the memory-mapped vectors of `run`: per set (disjoint boolean masks over its rows) the float64
    sum of its (for rave: unit-normalised) vectors and, with `codes`, of each group's (stored as `group_dtype`, by
    default `group_sums_dtype` of the largest group); with `boot`
    ({"weights": per set (n_boot, n) array or None, "n_boot", "seed"}), per-image bootstrap sums (None weights:
    Poisson(1) per image, from one generator per set, so the draws do not depend on `block`)."""
    from embedlab._io import progress_bar

    n, d = len(run), run.dim
    which, gcode, offsets, sizes = _row_layout(n, masks, codes)
    totals = np.zeros((len(masks), d), np.float64)
    gsums = None
    if any(c is not None for c in codes):
        largest = max((int(z.max()) for z in sizes if z is not None and len(z)), default=0)
        gsums = np.zeros((int(offsets[-1]), d), group_dtype or group_sums_dtype(largest))
    union = which >= 0
    rows = None if union.mean() > 0.5 else union
    bar = progress_bar(
        progress, total=n if rows is None else int(union.sum()), desc=f"residual: {run.path.name}", unit="img"
    )

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
            part["group_sums"] = gsums[offsets[s] : offsets[s + 1]]
            part["group_sizes"] = sizes[s].astype(np.float64)
        if boot:
            part["boot_sums"], part["boot_counts"] = bsums[s], bn[s]
        out.append(part)
    return out
