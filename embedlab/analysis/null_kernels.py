"""The numba kernels of the permutation null (compiled on first use, cached on disk) and the BLAS thread limit the
null runs under."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


_KERNELS = None
_BLAS = None


def _blas_controller():
    """One threadpoolctl controller per process (finding the BLAS libraries takes ~10 ms per call otherwise)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS


def _kernels():
    """The numba kernel of the sequential null, compiled (or loaded from numba's cache) on first use."""
    global _KERNELS
    if _KERNELS is None:
        from types import SimpleNamespace

        import numba

        # No NaN reaches the kernels, and neither a maximum nor (to float32 rounding) a dot product depends on
        # the order of its terms; -inf stays meaningful (it marks concepts out of the race): no 'ninf' flag.
        flags = {"nnan", "nsz", "reassoc", "contract"}

        @numba.njit(nogil=True, cache=True, fastmath=flags)
        def step(row, inv, pen, a, b, vals, keys):
            """max_v (row * inv + pen), then row -= b * a. `keys` is `vals` viewed as int32: LLVM does not
            vectorise a float max reduction here but does an integer one, so the maximum is taken over an
            order-preserving integer image of the floats (flip the low 31 bits of negatives), its own inverse."""
            for v in range(row.shape[0]):
                vals[v] = row[v] * inv[v] + pen[v]
            for v in range(row.shape[0]):
                row[v] -= b * a[v]
            best = np.int32(-2147483648)
            for v in range(row.shape[0]):
                x = keys[v]
                best = max(best, x ^ ((x >> 31) & np.int32(0x7FFFFFFF)))
            return best ^ ((best >> 31) & np.int32(0x7FFFFFFF))

        @numba.njit(nogil=True, cache=True, fastmath=flags)
        def sequential_max(S, sign, A, B, inv, pen, v0, best):
            """Rows of S score the concepts v0 .. v0 + w; best[k, i] = max over them at step i (before the
            division by |P r|). Per step: the maximum, then the deflation by pick i."""
            K, w = S.shape
            row = np.empty(w, np.float32)
            vals = np.empty(w, np.float32)
            keys = vals.view(np.int32)
            out = np.empty(1, np.int32)
            as_float = out.view(np.float32)
            for k in range(K):
                for v in range(w):
                    row[v] = S[k, v] * sign
                for i in range(A.shape[0]):
                    out[0] = step(row, inv[i, v0 : v0 + w], pen[i, v0 : v0 + w], A[i, v0 : v0 + w], B[k, i], vals, keys)
                    best[k, i] = as_float[0]

        _KERNELS = SimpleNamespace(**vars(_label_kernels()), sequential_max=sequential_max)
    return _KERNELS


def _label_kernels():
    """numba kernels of the labels and group sums: rows added into their group's sum; one shuffle within groups."""
    from types import SimpleNamespace

    import numba

    @numba.njit(nogil=True, cache=True)
    def add_by_code(U, codes, rows):
        for i in range(rows.shape[0]):
            g = codes[i]
            for j in range(rows.shape[1]):
                U[g, j] += rows[i, j]

    @numba.njit(cache=True)
    def shuffle_within(order, starts, sorted_labels, u, bits):
        lab = sorted_labels.copy()
        for g in range(len(starts) - 1):
            a, b = starts[g], starts[g + 1]
            for i in range(b - 1, a, -1):
                j = a + int(u[i] * (i - a + 1))
                t = lab[i]
                lab[i] = lab[j]
                lab[j] = t
        for i in range(len(lab)):
            if lab[i]:
                idx = order[i]
                bits[idx >> 3] |= np.uint8(128 >> (idx & 7))

    # reassociation lets LLVM vectorise the squared norm's reduction; the slice sums are element-wise (no reduction)
    @numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz"})
    def add_by_membership(acc, sq, X, indptr, indices, lo, hi):
        """acc[s] += X[i] for every slice s that row i (lo <= i < hi) belongs to (CSR membership); sq[0] += the
        rows' squared norms (each row's in X's dtype, their sum in sq's)."""
        for i in range(lo, hi):
            r = X[i, 0] * X[i, 0]
            for j in range(1, X.shape[1]):
                r += X[i, j] * X[i, j]
            sq[0] += r
            for p in range(indptr[i], indptr[i + 1]):
                s = indices[p]
                for j in range(X.shape[1]):
                    acc[s, j] += X[i, j]

    return SimpleNamespace(add_by_code=add_by_code, shuffle_within=shuffle_within, add_by_membership=add_by_membership)


def membership_sums(X: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n_slices: int, threads: int = 2):
    """((n_slices, d) float64, float): each slice's sum of the rows of `X` in it, from a CSR membership (row i in the
    slices indices[indptr[i]:indptr[i + 1]]), and the sum of the rows' squared norms. Each thread adds its share of
    the rows into its own accumulator in X's dtype (no locks; the kernel releases the GIL), and the accumulators are
    summed in float64. A row costs d additions per slice it is in, however many slices there are: the sparse
    product, without scipy's single-threaded CSR loop."""
    from concurrent.futures import ThreadPoolExecutor

    X = np.ascontiguousarray(X)
    indptr = np.ascontiguousarray(indptr, np.int64)
    indices = np.ascontiguousarray(indices, np.int64)
    n = len(X)
    bad = len(indptr) != n + 1 or indptr[-1] != len(indices)
    if bad or (len(indices) and not 0 <= indices.min() <= indices.max() < n_slices):  # the kernel checks no bounds
        raise ValueError(f"membership_sums: a CSR membership of {n} rows into {n_slices} slices was expected")
    threads = max(1, min(threads, n // 1024 or 1))
    acc = np.zeros((threads, n_slices, X.shape[1]), X.dtype)
    sq = np.zeros((threads, 1))
    cuts = np.linspace(0, n, threads + 1).astype(np.int64)
    kernel = _kernels().add_by_membership
    if threads == 1:
        kernel(acc[0], sq[0], X, indptr, indices, 0, n)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda t: kernel(acc[t], sq[t], X, indptr, indices, cuts[t], cuts[t + 1]), range(threads)))
    return acc.sum(0, dtype=np.float64), float(sq.sum())
