"""The permutation null of explain's significance: label shuffles, and under each shuffle every concept's
studentised difference between the sets (`shuffled_contrasts`, `max_t_null`) with its Westfall-Young max-T
p-values, single-step (`max_t_p`) and step-down (`step_down_p`). The older direction-only null (shuffled residuals
rescaled to unit length, the vocabulary scored against them, `permutation_null`, and its combiner `family_p`)
stays for comparison (analyses/stats/calibration.py) and its tests.

Shuffles are drawn per exchangeable unit (images; groups nested in one set, permuted as units; or images within
groups that span both sets). The shuffled residuals are built in one pass over the image vectors, read in blocks
(an array or any iterable of row blocks, for instance a run read shard by shard): per-group sums when groups are
the units, else the block's labels times its rows. Blocks are re-cut into fixed chunks of rows, so the result is
bitwise the same however the caller cuts its blocks (an in-memory array is one block). Memory holds K shuffled
sums (K x d), the labels (K x units, bit-packed when units are images) and one chunk, never images x dimension.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from embedlab._io import usable_cores
from embedlab.analysis.formula import group_codes, l2n
from embedlab.analysis.image_sets import aligned_chunks
from embedlab.analysis.null_kernels import _blas_controller, _kernels

log = logging.getLogger(__name__)
SIDES = {"adds": 1.0, "removes": -1.0}  # ranking side -> sign of the score it ranks by


def _log_binom(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


@dataclass
class Shuffles:
    """K label shuffles of n images. `labels` holds the 'to' label of each unit under each shuffle: (K, G) over
    groups when `codes` maps images to groups permuted as units, else (K, ceil(n/8)) bit-packed per image."""

    labels: np.ndarray
    n: int
    n_to: int
    codes: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def K(self) -> int:
        return len(self.labels)

    def image_labels(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(K, stop - start) bool labels of images start..stop."""
        stop = self.n if stop is None else stop
        if self.codes is not None:
            return self.labels[:, self.codes[start:stop]]
        a, b = start // 8, -(-stop // 8)
        bits = np.unpackbits(self.labels[:, a:b], axis=1)
        return bits[:, start - 8 * a : stop - 8 * a].astype(bool)


def group_layout(is_to: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(codes, group sizes, 'to' images per group, nested): nested when every group lies in one set."""
    is_to = np.asarray(is_to, bool)
    codes = group_codes(groups, len(is_to))
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    sizes = np.bincount(codes, minlength=n_groups)
    counts_to = np.bincount(codes, weights=is_to.astype(float), minlength=n_groups)
    return codes, sizes, counts_to, bool(np.all((counts_to == 0) | (counts_to == sizes)))


def draw_shuffles(
    is_to: np.ndarray, groups: np.ndarray | None, n_perm: int, seed: int, observed: bool = False
) -> Shuffles:
    """K shuffles of the 'to' labels under the null, and how they were drawn.

    Groups nested in one set are permuted as units; groups that span both sets (pairs, scenes photographed
    both ways) have labels shuffled within each group; without groups, images are permuted. `observed`: the
    observed labelling as shuffle 0 (K + 1 rows), so that the observed statistic is computed by the very operations
    that compute the null (two computations of one number can differ in the last bit)."""
    rng = np.random.default_rng(seed)
    is_to = np.asarray(is_to, bool)
    n = len(is_to)
    codes, sizes, counts_to, nested = group_layout(is_to, groups)
    n_groups = len(sizes)
    to_frac = counts_to / sizes
    if nested:
        group_to = to_frac == 1
        grouped = groups is not None and n_groups < n
        labels = np.empty((observed + n_perm, n_groups if grouped else -(-n // 8)), bool if grouped else np.uint8)
        for k in range(observed, observed + n_perm):
            draw = rng.permutation(group_to)
            labels[k] = draw if grouped else np.packbits(draw[codes])
        log_distinct = _log_binom(n_groups, int(group_to.sum()))
        scheme = "groups permuted as units" if grouped else "images permuted"
        swap = 2 * int(group_to.sum()) == n_groups
        sh = Shuffles(labels, n, int(is_to.sum()), codes if grouped else None)
    else:
        packed = within_group_shuffles(is_to, codes, n_perm, rng, first_row=int(observed))
        log_distinct = float(sum(_log_binom(int(s), int(t)) for s, t in zip(sizes, counts_to.astype(int))))
        spanning = int(((counts_to > 0) & (counts_to < sizes)).sum())
        scheme = (
            f"labels shuffled within groups ({spanning} of {n_groups} groups span both sets; the labels of the "
            f"other {n_groups - spanning} groups stay fixed)"
            if spanning < n_groups
            else f"labels shuffled within groups (all {n_groups} groups span both sets)"
        )
        if spanning < n_groups:
            log.warning(
                "%d of %d groups span both sets: labels are shuffled within groups, so the other %d groups "
                "keep their set in every shuffle.",
                spanning,
                n_groups,
                n_groups - spanning,
            )
        swap = bool(np.all(2 * counts_to == sizes))
        sh = Shuffles(packed, n, int(is_to.sum()))
    if observed:
        sh.labels[0] = observed_labels(sh, is_to)
    distinct = math.exp(log_distinct) if log_distinct < 700 else float("inf")
    sh.info = {
        "scheme": scheme,
        "n_units": n_groups,
        "distinct_shuffles": distinct,
        "log10_distinct_shuffles": log_distinct / math.log(10),
        "swap_is_a_shuffle": swap,
    }
    return sh


def within_group_shuffles(is_to: np.ndarray, codes: np.ndarray, n_perm: int, rng, first_row: int = 0) -> np.ndarray:
    """(n_perm, ceil(n/8)) bit-packed 'to' labels, each a uniform random permutation of the labels within every
    group (a Fisher-Yates pass per group driven by n uniforms from `rng` per shuffle): about 20 ns per image and
    shuffle, so K = 1,000 shuffles of 4 million images take about a minute."""
    order = np.argsort(codes, kind="stable")
    c = codes[order]
    starts = np.r_[np.flatnonzero(np.r_[True, c[1:] != c[:-1]]), len(c)].astype(np.int64)
    sorted_labels = np.asarray(is_to, bool)[order].astype(np.uint8)
    packed = np.zeros((first_row + n_perm, -(-len(codes) // 8)), np.uint8)
    kernel = _kernels().shuffle_within
    for k in range(first_row, first_row + n_perm):
        kernel(order, starts, sorted_labels, rng.random(len(codes)), packed[k])
    return packed


def observed_labels(sh: Shuffles, is_to: np.ndarray) -> np.ndarray:
    """The observed labelling in the layout of `sh.labels` (per group, or bit-packed per image)."""
    is_to = np.asarray(is_to, bool)
    if sh.codes is not None:
        first = np.zeros(sh.labels.shape[1], bool)
        first[sh.codes[is_to]] = True
        return first
    return np.packbits(is_to)


def permutation_labels(is_to: np.ndarray, groups: np.ndarray | None, n_perm: int, seed: int) -> tuple[np.ndarray, dict]:
    """(n_perm, n) boolean 'to' labels under the null (`draw_shuffles`, expanded per image), and how they were drawn."""
    sh = draw_shuffles(is_to, groups, n_perm, seed)
    return sh.image_labels(), sh.info


def add_group_sums(U: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> None:
    """U[g] += sum of the rows of group g, added in row order (a numba loop: about a row's d additions per row,
    however many groups there are)."""
    _kernels().add_by_code(U, np.ascontiguousarray(codes, np.int64), np.ascontiguousarray(rows, np.float64))


def shuffled_sums(data, shuffles: Shuffles, method: str = "rave", chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(K, d) sums of the 'to' set under each shuffle and the (d,) total, accumulated in float64 (per-chunk
    products in float32), in one pass over `data` (rows in the order of the labels; unit-normalised first for
    rave). Memory: K x d sums, one chunk, and G x d group sums only when there are at most n/8 groups."""
    total = sum_to = U = None
    seen = 0
    # group sums (G, d) pay when groups are few; with many small groups (G > n/8) the labels are expanded per chunk
    per_group = shuffles.codes is not None and 8 * shuffles.labels.shape[1] <= shuffles.n
    for start, rows in aligned_chunks(data, chunk):
        x = l2n(rows) if method == "rave" else np.asarray(rows, np.float64)
        if total is None:
            total = np.zeros(x.shape[1])
            U = np.zeros((shuffles.labels.shape[1], x.shape[1])) if per_group else None
            sum_to = np.zeros((shuffles.K, x.shape[1])) if U is None else None
        total += x.sum(0)
        if U is not None:
            add_group_sums(U, shuffles.codes[start : start + len(x)], x)
        else:
            # float32 product per chunk of 4,096 rows (exact 0/1 labels; half the time of float64), summed in float64
            sum_to += shuffles.image_labels(start, start + len(x)).astype(np.float32) @ x.astype(np.float32)
        seen = start + len(x)
    if seen != shuffles.n:
        raise ValueError(f"The image blocks hold {seen} rows but the shuffles label {shuffles.n} images.")
    if U is not None:  # (K, G) labels times (G, d) group sums, 256 shuffles at a time
        sum_to = np.concatenate(
            [shuffles.labels[k : k + 256].astype(np.float64) @ U for k in range(0, shuffles.K, 256)]
            + [np.zeros((0, U.shape[1]))]
        )
    return sum_to, total


def shuffled_residuals(data, shuffles, method: str = "rave", chunk: int = 4096) -> np.ndarray:
    """(K, d) float32: the residual recomputed under each shuffle (a `Shuffles`, or (K, n) bool labels with
    True = the 'to' set), from the image vectors `data` (an array or an iterable of row blocks)."""
    if not isinstance(shuffles, Shuffles):
        labels = np.asarray(shuffles, bool)
        n_to = labels.sum(1)
        if np.ptp(n_to):
            raise ValueError("Every shuffle must keep the size of the 'to' set.")
        shuffles = Shuffles(np.packbits(labels, axis=1), labels.shape[1], int(n_to[0]))
    sum_to, total = shuffled_sums(data, shuffles, method, chunk)
    sum_from = total - sum_to
    if method == "rave":
        return l2n(l2n(sum_to) - l2n(sum_from)).astype(np.float32)
    return l2n(sum_to / shuffles.n_to - sum_from / (shuffles.n - shuffles.n_to)).astype(np.float32)


def null_scores(
    R: np.ndarray,
    C: np.ndarray,
    deflations: dict | None = None,
    block: int = 1024,
    rows: int = 512,
    threads: int | None = None,
    keep_first: bool = False,
) -> dict:
    """Score the whole vocabulary under each shuffled residual (rows of R). Returns the max and min score per
    shuffle, and, for each ranking side in `deflations` ({side: (sign, picked indices, orthonormal pick
    directions (m, d))}), the best cosine at each deflation step when the shuffled residual is deflated by
    the same picks (a sequential null).

    The vocabulary is cut into blocks of `block` concepts, handed to `threads` workers; a worker scores a
    block against `rows` shuffles at a time (single-threaded BLAS) and reduces it while it is in cache,
    so memory holds `threads` x rows x block scores, never shuffles x vocabulary. `keep_first` also returns
    "first": the (V,) scores of the first shuffle (the observed labelling when `draw_shuffles(observed=True)` put
    it there)."""
    R = np.ascontiguousarray(R, np.float32)
    K = len(R)
    Cf = np.ascontiguousarray(C, dtype=np.float32)
    sides = _deflation_sides(R, Cf, deflations)
    starts = list(range(0, len(Cf), block))
    kernel = _kernels().sequential_max
    first = np.empty(len(Cf), np.float32)

    def work(v0: int):
        Cb = Cf[v0 : v0 + block]
        mx, mn = np.empty(K, np.float32), np.empty(K, np.float32)
        seq = [np.empty((K, s[2].shape[0]), np.float32) for s in sides]
        for k0 in range(0, K, rows):
            S = R[k0 : k0 + rows] @ Cb.T
            mx[k0 : k0 + rows], mn[k0 : k0 + rows] = S.max(1), S.min(1)
            if k0 == 0 and K:
                first[v0 : v0 + len(Cb)] = S[0]
            for out, (_, sign, A, B, (inv, pen)) in zip(seq, sides):
                if A.shape[0]:
                    kernel(S, sign, A, B[k0 : k0 + rows], inv, pen, v0, out[k0 : k0 + rows])
        return mx, mn, seq

    parts = _map_blocks(work, starts, threads)
    out = {
        "max": np.max([p[0] for p in parts], 0).astype(np.float64),
        "min": np.min([p[1] for p in parts], 0).astype(np.float64),
    }
    for j, (side, _, A, B, _) in enumerate(sides):
        best = np.max([p[2][j] for p in parts], 0).astype(np.float64)
        out["seq_" + side] = best / np.sqrt(np.maximum(residual_norms2(B), 1e-12))
    if keep_first:
        out["first"] = first.astype(np.float64)
    return out


def _deflation_sides(R: np.ndarray, Cf: np.ndarray, deflations: dict | None) -> list[tuple]:
    """Per ranking side of `deflations` ({side: (sign, picked indices, pick directions)}), what `null_scores`'
    kernel needs: (side, sign, picks . concepts (m, V), shuffled residuals . picks (K, m), step tables)."""
    sides = []
    for side, (sign, idx, T) in (deflations or {}).items():
        T = np.asarray(T, np.float32).reshape(len(idx), Cf.shape[1])
        A = np.ascontiguousarray(T @ Cf.T)  # (m, V): pick . concept
        B = np.ascontiguousarray(sign * (R @ T.T), dtype=np.float32)  # (K, m): shuffled r . pick
        sides.append((side, np.float32(sign), A, B, step_tables(A, np.asarray(idx, np.int64))))
    return sides


def _map_blocks(work, starts: list[int], threads: int | None) -> list:
    """`work` on each vocabulary block start, on up to `threads` workers (default: the usable cores), with BLAS
    held to one thread per worker."""
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(threads or usable_cores(), len(starts)))
    with _blas_controller().limit(limits=1, user_api="blas"):
        if workers == 1:
            return [work(v0) for v0 in starts]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(work, starts))


def permutation_null(
    data,
    shuffles,
    C: np.ndarray,
    method: str = "rave",
    deflations: dict | None = None,
    block: int = 1024,
    rows: int = 512,
    threads: int | None = None,
    chunk: int = 4096,
    keep_first: bool = False,
) -> dict:
    """`null_scores` of the residuals recomputed under each shuffle from the image vectors `data` (an array or
    an iterable of row blocks, in the order of the labels)."""
    return null_scores(
        shuffled_residuals(data, shuffles, method, chunk), C, deflations, block, rows, threads, keep_first
    )


def residual_norms2(B: np.ndarray) -> np.ndarray:
    """|P r|^2 at each deflation step: 1 - the squared projections on the picks removed before it."""
    b2 = np.asarray(B, np.float64) ** 2
    return 1.0 - np.cumsum(np.c_[np.zeros(len(b2)), b2], axis=1)[:, : b2.shape[1]]


def step_tables(A: np.ndarray, picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per deflation step: 1/|P c| for every concept and a -inf penalty for concepts out of the race."""
    m, V = A.shape
    inv = np.empty((m, V), np.float32)
    pen = np.zeros((m, V), np.float32)
    cn2 = np.ones(V, np.float64)
    for i in range(m):
        inv[i] = 1.0 / np.sqrt(np.maximum(cn2, 1e-8))
        pen[i, cn2 <= 1e-8] = -np.inf
        pen[i, picked[:i]] = -np.inf
        cn2 -= A[i].astype(np.float64) ** 2
    return inv, pen


def sequential_max(S0: np.ndarray, sign: float, A: np.ndarray, B: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """For each shuffle (a row of S0: its scores against the undeflated concepts), the best cosine at each
    deflation step when the shuffled residual and the concepts are deflated by the observed picks.
    (`null_scores` runs the same kernel block by block.)"""
    inv, pen = step_tables(A, picked)
    best = np.empty((S0.shape[0], A.shape[0]), np.float32)
    _kernels().sequential_max(
        np.ascontiguousarray(S0, np.float32),
        np.float32(sign),
        np.ascontiguousarray(A, np.float32),
        np.ascontiguousarray(B, np.float32),
        inv,
        pen,
        0,
        best,
    )
    return best.astype(np.float64) / np.sqrt(np.maximum(residual_norms2(B), 1e-12))


TIE_TOLERANCE = 1e-6  # relative: float32 statistics of one labelling computed two ways differ by a few ulps


def tail_counts(reference: np.ndarray, x: np.ndarray) -> np.ndarray:
    """#{reference >= x - TIE_TOLERANCE max(1, |x|)} for each x: values within rounding of x count as ties, which
    can only make a p-value larger (conservative), never drop a shuffle that reproduces the observed labelling."""
    s = np.sort(np.asarray(reference, np.float64))
    x = np.asarray(x, np.float64)
    return len(s) - np.searchsorted(s, x - TIE_TOLERANCE * np.maximum(1.0, np.abs(x)), side="left")


def family_p(observed: dict, null: dict, values: dict) -> dict:
    """Family-wise adjusted p-values across the sides of one family (Westfall-Young min-p, exact).

    `observed[side]`: the side's observed top statistic; `null[side]`: (K,) the same statistic per shuffle;
    `values[side]`: statistics to adjust. Each side is standardised by its own null (the count of its K + 1
    reference values, observed included, at or above a value), so a side whose null runs higher (unequal set
    sizes, a common offset) does not crowd out the other; a value's p is the share of the K + 1 labelings whose
    best standardised statistic over the family's sides is at least as extreme. One side: the usual
    (1 + #{null >= x}) / (K + 1)."""
    refs = {s: np.r_[observed[s], null[s]] for s in observed}
    best = np.min([tail_counts(refs[s], refs[s]) for s in refs], axis=0)  # (K + 1,)
    best.sort()
    out = {}
    for s, x in values.items():
        c = tail_counts(refs[s], x)
        out[s] = np.searchsorted(best, c, side="right") / len(best)
    return out


# ---- the studentised max-T test (Westfall-Young) ----------------------------------------------------------------


def shuffled_contrasts(
    data, shuffles: Shuffles, design, codes: np.ndarray | None = None, chunk: int = 4096
) -> np.ndarray:
    """(K, d) float64: the test's difference vector (`unit_stats.Contrast.diff`) recomputed under each shuffle.

    Groups nested in the sets: from the centred group means and the (K, G) group labels, no pass over the images.
    Images, or groups that span the sets (`codes`: each image's group): one pass over the image vectors `data`
    (an array or an iterable of row blocks), their unit vectors centred on `design.ref` (so that float32 sums of
    millions of rows do not cancel) and, within groups, weighted by their group's `weights`. The sums use
    `shuffled_sums`: the same to the bit however the blocks are cut, memory K x d plus one chunk."""
    if design.group_means is not None:
        M = design.group_means
        inv = 1.0 / design.n_to + 1.0 / design.n_from
        total = M.sum(0) / design.n_from
        return np.concatenate(
            [shuffles.labels[k : k + 256].astype(np.float64) @ M * inv - total for k in range(0, shuffles.K, 256)]
            + [np.zeros((0, M.shape[1]))]
        )
    ref = np.asarray(design.ref, np.float64)
    w = None if design.weights is None else np.asarray(design.weights, np.float64)

    def blocks():  # l2n returns a new array: centred and weighted in place, no further copy of a chunk
        for start, rows in aligned_chunks(data, chunk):
            x = l2n(rows)
            x -= ref
            if w is not None:
                x *= w[codes[start : start + len(x)], None]
            yield x

    sum_to, total = shuffled_sums(blocks(), shuffles, method="mean", chunk=chunk)
    if w is None:
        return sum_to / design.n_to - (total - sum_to) / design.n_from
    return (sum_to - design.offset) / design.n_units


def max_t_null(diffs: np.ndarray, sd: np.ndarray, C: np.ndarray, keep=(), block: int = 2048) -> dict:
    """Score every concept under every shuffle: t[k, c] = C[c] . diffs[k] / sd[c] (zero where sd vanishes: such
    a concept never moves). Reduced block by block over the vocabulary (memory: shuffles x `block`), never
    shuffles x vocabulary. Returns per shuffle "max" and "min" over the concepts NOT in `keep`, "kept" (K,
    len(keep)) the statistics of the `keep` concepts (so that a step-down can drop any of them), and "first" (V,)
    every concept's statistic under the first shuffle (the observed labelling with `draw_shuffles(observed=True)`)."""
    D = np.ascontiguousarray(diffs, np.float64)
    K, V = len(D), len(C)
    sd = np.asarray(sd, np.float64)
    inv = np.divide(1.0, sd, out=np.zeros(V), where=sd > 1e-12 * max(float(sd.max(initial=0.0)), 1e-300))
    keep = np.asarray(keep, np.int64)
    held = np.zeros(V, bool)
    held[keep] = True
    mx, mn, first = np.full(K, -np.inf), np.full(K, np.inf), np.empty(V)
    for v0 in range(0, V, block):
        Z = (D @ np.asarray(C[v0 : v0 + block], np.float64).T) * inv[v0 : v0 + block]
        first[v0 : v0 + Z.shape[1]] = Z[0] if K else 0.0
        h = held[v0 : v0 + block]
        if h.any():
            Z = Z[:, ~h]
        if Z.shape[1]:
            np.maximum(mx, Z.max(1), out=mx)
            np.minimum(mn, Z.min(1), out=mn)
    kept = (D @ np.asarray(C[keep], np.float64).T) * inv[keep] if len(keep) else np.zeros((K, 0))
    return {"max": mx, "min": mn, "kept": kept, "keep": keep, "first": first}


FAMILY_SIGN = {"page": None, "adds": 1.0, "removes": -1.0}


def family_max(null: dict, family: str, drop=()) -> np.ndarray:
    """(K,) per shuffle the family's statistic: the largest |t| over the whole vocabulary ("page", both signs), or
    the largest t ("adds") or -t ("removes"), leaving out the concepts in `drop` (a step-down's earlier picks)."""
    cols = ~np.isin(null["keep"], np.asarray(list(drop), np.int64))
    mx, mn = null["max"], null["min"]
    if cols.any():
        mx = np.maximum(mx, null["kept"][:, cols].max(1))
        mn = np.minimum(mn, null["kept"][:, cols].min(1))
    sign = FAMILY_SIGN[family]
    return np.maximum(mx, -mn) if sign is None else (mx if sign > 0 else -mn)


def family_value(t: np.ndarray, family: str) -> np.ndarray:
    sign = FAMILY_SIGN[family]
    return np.abs(t) if sign is None else sign * np.asarray(t, np.float64)


def max_t_p(null: dict, family: str, index) -> np.ndarray:
    """Single-step max-T adjusted p of the concepts `index`: the share of the K + 1 labellings (observed included,
    row 0) whose family statistic is at least the concept's own (ties within rounding count, `tail_counts`)."""
    M = family_max(null, family)
    return tail_counts(M, family_value(null["first"][np.asarray(index, np.int64)], family)) / len(M)


def step_down_p(null: dict, family: str, order) -> np.ndarray:
    """Step-down max-T adjusted p along `order` (concept indices, here a side's deflation order): the i-th is
    compared with the maximum over the vocabulary without the concepts before it, and the p-values are made
    non-decreasing along the order. Valid in any order: the first true null that is claimed has only real
    effects before it, so its maximum is taken over a set that holds every true null."""
    order = [int(j) for j in order]
    raw = np.array(
        [
            tail_counts(family_max(null, family, order[:i]), family_value(null["first"][[j]], family))[0]
            for i, j in enumerate(order)
        ],
        np.float64,
    )
    return np.maximum.accumulate(raw / len(null["max"])) if len(order) else raw
