"""The audit's one streamed pass at scale: every one-vs-rest slice sum of every categorical column from blocks of
image vectors, then each slice's debiased effect and omnibus ratio from the sums alone (images as units).

Per block, every row is added to the sum of each value it has (one per column: the sparse one-hot product,
transposed, done as a numba loop over the rows in threads; float32 within a block, float64 across blocks);
the same pass accumulates the total, the sum of squared norms and the counts. From these, per slice s with n_in
images (n_out = n - n_in):

    d = sum_s / n_in - (total - sum_s) / n_out,   tr(S) = sum ||x||^2 - n ||mean||^2,
    E0 = (1 / n_in + 1 / n_out) tr(S) / (n - 1)   (E||d||^2 under a random relabelling of the images),
    effect = ||d||^2 - E0,   T = ||d||^2 / E0.

These are the audit's effect and omnibus statistic with every image its own unit and no strata; the screen ranks
slices (and columns, by the mean T of their values) before the vocabulary-wide permutations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def _offsets(n_values: Sequence[int]) -> np.ndarray:
    return np.r_[0, np.cumsum(np.asarray(n_values, np.int64))[:-1]]


def _block_membership(c: np.ndarray, offs: np.ndarray, V: int) -> tuple[np.ndarray, np.ndarray]:
    """(CSR indptr, indices) of a block's (b, K) codes: the value index of every (row, column) that has one (a
    negative code, missing, has none), and last in each row index V, the slice of every row, so that the total is
    one more sum of the same pass."""
    ok = c >= 0
    idx = np.c_[c + offs, np.full(len(c), V)]
    if ok.all():  # one value per row and column: the CSR structure directly
        return np.arange(0, idx.size + 1, idx.shape[1]), idx.ravel()
    ok = np.c_[ok, np.ones(len(c), bool)]
    return np.r_[0, np.cumsum(ok.sum(1))], idx[ok]


def slice_sums(
    blocks: Iterable[np.ndarray], codes_per_column: Sequence[np.ndarray], n_values: Sequence[int], threads: int = 1
) -> dict:
    """One pass over `blocks` (consecutive (b, d) arrays of the image vectors): per value of every column its
    vector sum and image count, with the total, the sum of squared norms and n.

    `codes_per_column[k]`: (n,) int codes of column k (0 .. n_values[k] - 1; negative = missing, in no slice).
    `threads`: each block's rows are split into this many parts, added in threads (`membership_sums`).
    Returns {"sums": (V, d) float64, "counts": (V,), "total": (d,), "sumsq": float, "n": int}, V = sum(n_values),
    value j of column k at row offset_k + j."""
    from embedlab.analysis.null_kernels import membership_sums

    codes = np.stack([np.asarray(c) for c in codes_per_column], axis=1)  # (n, K), as stored (cast per block)
    offs = _offsets(n_values)
    V = int(np.sum(n_values))
    sums = counts = total = None
    sumsq, start = 0.0, 0
    for block in blocks:
        b = len(block)
        c = codes[start : start + b].astype(np.int64)
        if len(c) != b:
            raise ValueError(f"the blocks hold more rows than the {len(codes)} codes")
        if sums is None:
            sums, counts, total = np.zeros((V, block.shape[1])), np.zeros(V), np.zeros(block.shape[1])
        indptr, cols = _block_membership(c, offs, V)
        part, sq = membership_sums(block, indptr, cols, V + 1, threads)  # in the block's dtype, then float64
        sums += part[:V]
        total += part[V]
        sumsq += sq
        counts += np.bincount(cols, minlength=V + 1)[:V]
        start += b
    if start != len(codes):
        raise ValueError(f"the blocks hold {start} rows but there are {len(codes)} codes")
    return {"sums": sums, "counts": counts, "total": total, "sumsq": sumsq, "n": start}


def slice_differences(sums: np.ndarray, counts: np.ndarray, total: np.ndarray, n: int) -> np.ndarray:
    """(S, d) each slice's mean minus its rest's mean, from the streamed sums (NaN rows for an empty side)."""
    sums = np.asarray(sums, np.float64)
    counts = np.asarray(counts, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return sums / counts[:, None] - (np.asarray(total, np.float64)[None, :] - sums) / (n - counts)[:, None]


def screen_concept_scores(D: np.ndarray, C: np.ndarray) -> np.ndarray:
    """(S, V) centred cosine of each slice's difference direction (rows of D) with each centred concept (rows of C,
    unit length): the descriptive score of the concept reports, without their test."""
    D = np.nan_to_num(np.asarray(D, np.float64))
    return (D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)) @ np.asarray(C, np.float64).T


def omnibus_screen(sums: np.ndarray, counts: np.ndarray, total: np.ndarray, sumsq: float, n: int) -> dict:
    """Per slice (row of `sums`) from the streamed sums: {"d": its (S, d) difference vectors, "d2": ||d||^2, "e0":
    its expectation under random relabelling, "effect": d2 - e0, "T": d2 / e0, "tr": tr(S)}; a slice with no image
    inside or outside gets NaN."""
    counts = np.asarray(counts, np.float64)
    total = np.asarray(total, np.float64)
    n_out = n - counts
    tr = float(sumsq - total @ total / n)
    d = slice_differences(sums, counts, total, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        d2 = np.einsum("ij,ij->i", d, d)
        e0 = (1.0 / counts + 1.0 / n_out) * tr / (n - 1)
        bad = (counts < 1) | (n_out < 1)
        d2[bad] = e0[bad] = np.nan
        return {"d": d, "d2": d2, "e0": e0, "effect": d2 - e0, "T": d2 / e0, "tr": tr}


def column_screen(T: np.ndarray, n_values: Sequence[int]) -> np.ndarray:
    """(K,) each column's mean T over its values (about 1 when the column does not relate to the vectors)."""
    offs = _offsets(n_values)
    return np.array([np.nanmean(T[o : o + k]) for o, k in zip(offs, n_values)])
