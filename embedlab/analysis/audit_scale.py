"""The audit's one streamed pass at scale: every one-vs-rest slice sum of every categorical column from blocks of
image vectors, then each slice's debiased effect and omnibus ratio from the sums alone (images as units).

Per block, a sparse one-hot matrix (block rows x all values of all columns, one 1 per row and column) transposed
times the block gives every value's vector sum at once (float32 products, accumulated in float64 across blocks);
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


def _block_product(block: np.ndarray, c: np.ndarray, offs: np.ndarray, V: int) -> tuple[np.ndarray, np.ndarray]:
    """(one-hot' block (V, d) in the block's dtype, the value index of every (row, column) that has one)."""
    import scipy.sparse as sp

    ok = c >= 0
    if ok.all():  # one value per row and column: the CSR structure directly (no COO sort)
        cols, indptr = (c + offs).ravel(), np.arange(0, c.size + 1, c.shape[1])
    else:
        cols, indptr = (c + offs)[ok], np.r_[0, np.cumsum(ok.sum(1))]
    onehot = sp.csr_matrix((np.ones(len(cols), block.dtype), cols, indptr), shape=(len(block), V))
    return onehot.T @ block, cols


def slice_sums(
    blocks: Iterable[np.ndarray], codes_per_column: Sequence[np.ndarray], n_values: Sequence[int], threads: int = 1
) -> dict:
    """One pass over `blocks` (consecutive (b, d) arrays of the image vectors): per value of every column its
    vector sum and image count, with the total, the sum of squared norms and n.

    `codes_per_column[k]`: (n,) int codes of column k (0 .. n_values[k] - 1; negative = missing, in no slice).
    `threads`: each block's rows are split into this many parts whose products run in threads.
    Returns {"sums": (V, d) float64, "counts": (V,), "total": (d,), "sumsq": float, "n": int}, V = sum(n_values),
    value j of column k at row offset_k + j."""
    from concurrent.futures import ThreadPoolExecutor

    codes = np.stack([np.asarray(c) for c in codes_per_column], axis=1)  # (n, K), as stored (cast per block)
    offs = _offsets(n_values)
    V = int(np.sum(n_values))
    sums = counts = total = None
    sumsq, start = 0.0, 0
    with ThreadPoolExecutor(max(1, threads)) as pool:  # scipy's sparse product releases the GIL
        for block in blocks:
            b = len(block)
            c = codes[start : start + b].astype(np.int64)
            if len(c) != b:
                raise ValueError(f"the blocks hold more rows than the {len(codes)} codes")
            if sums is None:
                sums, counts, total = np.zeros((V, block.shape[1])), np.zeros(V), np.zeros(block.shape[1])
            cuts = np.linspace(0, b, max(1, threads) + 1).astype(int)
            jobs = [(block[lo:hi], c[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]
            for part, cols in pool.map(lambda job: _block_product(*job, offs, V), jobs):
                sums += part  # float32 products of up to a block's rows, accumulated in float64
                counts += np.bincount(cols, minlength=V)
            total += block.sum(0, dtype=np.float64)
            sumsq += float(np.einsum("ij,ij->i", block, block).sum(dtype=np.float64))  # row norms, then float64
            start += b
    if start != len(codes):
        raise ValueError(f"the blocks hold {start} rows but there are {len(codes)} codes")
    return {"sums": sums, "counts": counts, "total": total, "sumsq": sumsq, "n": start}


def omnibus_screen(sums: np.ndarray, counts: np.ndarray, total: np.ndarray, sumsq: float, n: int) -> dict:
    """Per slice (row of `sums`) from the streamed sums: {"d2": ||d||^2, "e0": its expectation under random
    relabelling, "effect": d2 - e0, "T": d2 / e0, "tr": tr(S)}; a slice with no image inside or outside gets NaN."""
    sums = np.asarray(sums, np.float64)
    counts = np.asarray(counts, np.float64)
    total = np.asarray(total, np.float64)
    n_out = n - counts
    tr = float(sumsq - total @ total / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = sums / counts[:, None] - (total[None, :] - sums) / n_out[:, None]
        d2 = np.einsum("ij,ij->i", d, d)
        e0 = (1.0 / counts + 1.0 / n_out) * tr / (n - 1)
        bad = (counts < 1) | (n_out < 1)
        d2[bad] = e0[bad] = np.nan
        return {"d2": d2, "e0": e0, "effect": d2 - e0, "T": d2 / e0, "tr": tr}


def column_screen(T: np.ndarray, n_values: Sequence[int]) -> np.ndarray:
    """(K,) each column's mean T over its values (about 1 when the column does not relate to the vectors)."""
    offs = _offsets(n_values)
    return np.array([np.nanmean(T[o : o + k]) for o, k in zip(offs, n_values)])
