"""Read a residual in words: centred-vocabulary scores, greedy deflation, and significance.

Pure functions on arrays (`centre`, `deflation_rankings`, `shuffled_residuals`, `permutation_null`,
`concept_statistics`, `explain_vectors`) carry the method; `explain_residual()` does the I/O (residual sidecar,
run folders, model, cached text embeddings) and writes report.{json,csv,md,html}. The two inner loops that
touch the whole vocabulary many times (the deflation's products and the sequential permutation null) are
numba kernels, checked against plain NumPy definitions in the tests.
"""
from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import pandas as pd

from .errors import ConfigError, IncompatibleRunError
from ._io import usable_cores
from .residual import group_codes, l2n

log = logging.getLogger(__name__)
SIDES = {"adds": 1.0, "removes": -1.0}     # ranking side -> sign of the score it ranks by


def unit_rows32(X: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Rows scaled to unit length in float32 (a vocabulary is too large to round-trip through float64).
    Rows already of unit length (cached embeddings) are returned as they are, without a copy."""
    X = np.asarray(X, np.float32)
    n = np.sqrt(np.einsum("ij,ij->i", X, X))[:, None]
    if np.all(np.abs(n - 1) < 1e-5):
        return X
    n[n == 0] = 1
    return np.divide(X, n, out=X) if inplace else X / n


def centre(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the vocabulary mean (the text side of the modality gap) and renormalise: (C, mean)."""
    mu = E.mean(0, dtype=np.float64)
    return unit_rows32(np.subtract(E, mu.astype(np.float32), dtype=np.float32), inplace=True), mu


def deflation_ranking(r: np.ndarray, C: np.ndarray, n_top: int, sign: float = 1.0) -> list[dict]:
    """Greedy, non-redundant ranking (TextSpan-style): pick the concept with the largest sign*cos with the
    current residual, project it out of the residual and of every candidate, renormalise candidates, repeat.

    Returns per pick: index, the score at pick time and the fraction of |r|^2 it explains (cumulative too)."""
    return deflation_rankings(r, C, n_top, (sign,))[0]


def deflation_rankings(r: np.ndarray, C: np.ndarray, n_top: int, signs=(1.0, -1.0)) -> list[list[dict]]:
    """`deflation_ranking` for several signs at once (one ranking each), reading the vocabulary once per step.

    Deflated candidates are never materialised: with orthonormal picks t_i and the deflated residual rr,
    (P c) . rr = c . rr and |P c|^2 = 1 - sum_i (c . t_i)^2, so a step costs one product of the vocabulary
    with the new pick directions (one column per ranking)."""
    Cf = np.ascontiguousarray(C, dtype=np.float32)
    kernel = _kernels().times_vocab

    def times_vocab(vectors) -> np.ndarray:
        # (V, len(vectors)): one parallel pass over the vocabulary (4 ms for 40k x 512 and two vectors on two
        # cores, where numpy's OpenBLAS takes 9 ms for the same product)
        vectors = np.ascontiguousarray(vectors, np.float32)
        out = np.empty((len(Cf), len(vectors)), np.float32)
        kernel(Cf, vectors, out)
        return out.astype(np.float64)

    n = len(signs)
    rr = [np.asarray(r, np.float64) * sg for sg in signs]
    total = float(rr[0] @ rr[0])
    c_dot_rr = times_vocab(rr)      # (V, n), kept up to date
    cn2 = np.ones((len(C), n), np.float64)
    alive = np.ones((len(C), n), bool)
    basis: list[list[np.ndarray]] = [[] for _ in signs]
    picks: list[list[dict]] = [[] for _ in signs]
    cum = [0.0] * n
    live = list(range(n))
    for _ in range(min(n_top, len(C))):
        steps = []
        for s in live:
            scores = c_dot_rr[:, s] / np.sqrt(np.maximum(cn2[:, s], 1e-12))
            scores[~alive[:, s]] = -np.inf
            j = int(np.argmax(scores))
            if not np.isfinite(scores[j]):
                continue
            t = C[j].astype(np.float64)
            for b in basis[s]:
                t -= (C[j].astype(np.float64) @ b) * b
            t /= np.linalg.norm(t) or 1.0
            proj = float(rr[s] @ t)
            explained = proj * proj / total if total else 0.0
            cum[s] += explained
            picks[s].append({"index": j, "score_at_pick": float(scores[j]), "explained": explained,
                             "cum_explained": cum[s],
                             "cosine_at_pick": float(scores[j]) / math.sqrt(max(1.0 - (cum[s] - explained), 1e-12)),
                             "direction": t.astype(np.float32)})
            basis[s].append(t)
            rr[s] = rr[s] - proj * t
            steps.append((s, j, t, proj))
        live = [s for s, *_ in steps]
        if not live:
            break
        c_dot_t = times_vocab([t for _, _, t, _ in steps])   # (V, live)
        for col, (s, j, _, proj) in enumerate(steps):
            c_dot_rr[:, s] -= proj * c_dot_t[:, col]
            cn2[:, s] -= c_dot_t[:, col] ** 2
            alive[:, s] &= cn2[:, s] > 1e-8
            alive[j, s] = False
    return picks


def _log_binom(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def permutation_labels(is_to: np.ndarray, groups: np.ndarray | None, n_perm: int, seed: int) -> tuple[np.ndarray, dict]:
    """(n_perm, n) boolean 'to' labels under the null, and how they were drawn.

    Groups nested in one set are permuted as units; groups that span both sets (pairs, scenes photographed
    both ways) have labels shuffled within each group; without groups, images are permuted."""
    rng = np.random.default_rng(seed)
    n = len(is_to)
    codes = group_codes(groups, n)
    n_groups = codes.max() + 1
    to_frac = np.bincount(codes, weights=is_to.astype(float), minlength=n_groups) / np.bincount(codes, minlength=n_groups)
    nested = bool(np.all((to_frac == 0) | (to_frac == 1)))
    labels = np.empty((n_perm, n), bool)
    if nested:
        group_to = to_frac == 1
        for k in range(n_perm):
            labels[k] = rng.permutation(group_to)[codes]
        log_distinct = _log_binom(int(n_groups), int(group_to.sum()))
        scheme = "groups permuted as units" if groups is not None else "images permuted"
    else:
        grouped_order = np.argsort(codes, kind="stable")
        sorted_labels = is_to[grouped_order]
        for k in range(n_perm):
            order = np.lexsort((rng.random(n), codes))
            labels[k, order] = sorted_labels
        counts_to = np.bincount(codes, weights=is_to.astype(float), minlength=n_groups).astype(int)
        sizes = np.bincount(codes, minlength=n_groups)
        log_distinct = float(sum(_log_binom(int(s), int(t)) for s, t in zip(sizes, counts_to)))
        scheme = "labels shuffled within groups (groups span both sets)"
    distinct = math.exp(log_distinct) if log_distinct < 700 else float("inf")
    return labels, {"scheme": scheme, "n_units": int(n_groups), "distinct_shuffles": distinct,
                    "log10_distinct_shuffles": log_distinct / math.log(10)}


def shuffled_residuals(X: np.ndarray, labels: np.ndarray, method: str = "rave", chunk: int = 256) -> np.ndarray:
    """(K, d) float32: the residual recomputed under each row of `labels` (True = the 'to' set)."""
    Xn = l2n(X) if method == "rave" else np.asarray(X, np.float64)
    total = Xn.sum(0)
    n_to = labels.sum(1, keepdims=True).astype(np.float64)
    n_from = labels.shape[1] - n_to
    R = np.empty((len(labels), Xn.shape[1]), np.float32)
    for s in range(0, len(labels), chunk):
        sum_to = labels[s:s + chunk].astype(np.float64) @ Xn
        sum_from = total - sum_to
        if method == "rave":
            R[s:s + chunk] = l2n(l2n(sum_to) - l2n(sum_from))
        else:
            R[s:s + chunk] = l2n(sum_to / n_to[s:s + chunk] - sum_from / n_from[s:s + chunk])
    return R


def permutation_null(X: np.ndarray, labels: np.ndarray, C: np.ndarray, method: str = "rave",
                     deflations: dict | None = None, block: int = 1024, rows: int = 512,
                     threads: int | None = None) -> dict:
    """For each shuffle: recompute the residual and score the whole vocabulary. Returns the max and min score
    per shuffle, and, for each ranking side in `deflations` ({side: (sign, picked indices, orthonormal pick
    directions (m, d))}), the best cosine at each deflation step when the shuffled residual is deflated by
    the same picks (a sequential null).

    The vocabulary is cut into blocks of `block` concepts, handed to `threads` workers; a worker scores a
    block against `rows` shuffles at a time (single-threaded BLAS) and reduces it while it is in cache,
    so memory holds `threads` x rows x block scores, never shuffles x vocabulary."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    R = shuffled_residuals(X, labels, method)
    K = len(R)
    Cf = np.ascontiguousarray(C, dtype=np.float32)
    sides = []
    for side, (sign, idx, T) in (deflations or {}).items():
        T = np.asarray(T, np.float32).reshape(len(idx), Cf.shape[1])
        A = np.ascontiguousarray(T @ Cf.T)                                       # (m, V): pick . concept
        B = np.ascontiguousarray(sign * (R @ T.T), dtype=np.float32)            # (K, m): shuffled r . pick
        sides.append((side, np.float32(sign), A, B, _step_tables(A, np.asarray(idx, np.int64))))
    starts = list(range(0, len(Cf), block))
    kernel = _kernels().sequential_max

    def work(v0: int):
        Cb = Cf[v0:v0 + block]
        mx, mn = np.empty(K, np.float32), np.empty(K, np.float32)
        seq = [np.empty((K, s[2].shape[0]), np.float32) for s in sides]
        for k0 in range(0, K, rows):
            S = R[k0:k0 + rows] @ Cb.T
            mx[k0:k0 + rows], mn[k0:k0 + rows] = S.max(1), S.min(1)
            for out, (_, sign, A, B, (inv, pen)) in zip(seq, sides):
                if A.shape[0]:
                    kernel(S, sign, A, B[k0:k0 + rows], inv, pen, v0, out[k0:k0 + rows])
        return mx, mn, seq

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max(1, min(threads or usable_cores(), len(starts)))) as pool:
        parts = list(pool.map(work, starts))
    out = {"max": np.max([p[0] for p in parts], 0).astype(np.float64),
           "min": np.min([p[1] for p in parts], 0).astype(np.float64)}
    for j, (side, _, A, B, _) in enumerate(sides):
        best = np.max([p[2][j] for p in parts], 0).astype(np.float64)
        out["seq_" + side] = best / np.sqrt(np.maximum(_residual_norms2(B), 1e-12))
    return out


def _residual_norms2(B: np.ndarray) -> np.ndarray:
    """|P r|^2 at each deflation step: 1 - the squared projections on the picks removed before it."""
    b2 = np.asarray(B, np.float64) ** 2
    return 1.0 - np.cumsum(np.c_[np.zeros(len(b2)), b2], axis=1)[:, :b2.shape[1]]


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    from scipy.stats import false_discovery_control

    p = np.asarray(p, float)
    return false_discovery_control(np.clip(p, 0, 1)) if len(p) else p


def _step_tables(A: np.ndarray, picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def sequential_max_reference(S0, sign, A, B, picked) -> np.ndarray:
    """NumPy reference of `sequential_max` (for tests)."""
    inv, pen = _step_tables(A, picked)
    S = (sign * S0).astype(np.float32)
    rn2 = np.ones(len(S))
    out = np.empty((len(S), len(picked)))
    for i in range(len(picked)):
        out[:, i] = (S * inv[i] + pen[i]).max(1) / np.sqrt(np.maximum(rn2, 1e-12))
        S -= B[:, i:i + 1] * A[i][None, :]
        rn2 -= B[:, i].astype(np.float64) ** 2
    return out


def sequential_max(S0: np.ndarray, sign: float, A: np.ndarray, B: np.ndarray, picked: np.ndarray) -> np.ndarray:
    """For each shuffle (a row of S0: its scores against the undeflated concepts), the best cosine at each
    deflation step when the shuffled residual and the concepts are deflated by the observed picks.
    (`permutation_null` runs the same kernel block by block.)"""
    inv, pen = _step_tables(A, picked)
    best = np.empty((S0.shape[0], A.shape[0]), np.float32)
    _kernels().sequential_max(np.ascontiguousarray(S0, np.float32), np.float32(sign), np.ascontiguousarray(A, np.float32),
                             np.ascontiguousarray(B, np.float32), inv, pen, 0, best)
    return best.astype(np.float64) / np.sqrt(np.maximum(_residual_norms2(B), 1e-12))


_KERNELS = None


def _kernels():
    """The numba kernels, compiled (or loaded from numba's cache) on first use."""
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
                    out[0] = step(row, inv[i, v0:v0 + w], pen[i, v0:v0 + w], A[i, v0:v0 + w], B[k, i], vals, keys)
                    best[k, i] = as_float[0]

        @numba.njit(parallel=True, cache=True, fastmath=flags)
        def times_vocab(C, T, out):
            """out = C @ T.T for a tall C (V, d) and a few rows T (n, d)."""
            for v in numba.prange(C.shape[0]):
                for j in range(T.shape[0]):
                    acc = np.float32(0)
                    for k in range(C.shape[1]):
                        acc += C[v, k] * T[j, k]
                    out[v, j] = acc

        _KERNELS = SimpleNamespace(sequential_max=sequential_max, times_vocab=times_vocab)
    return _KERNELS


def welch_all_concepts(x_from: np.ndarray, x_to: np.ndarray, C: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Welch t-test p-values (to vs from) of per-image similarity for EVERY concept, from the two sets' means and
    covariances: never an images x vocabulary matrix, and no selection before testing (so BH over the whole
    vocabulary controls the false discovery rate, where BH over a score-selected shortlist would not)."""
    from scipy.stats import t as student_t

    a, b = l2n(x_from), l2n(x_to)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return np.ones(len(C))
    delta = b.mean(0) - a.mean(0)
    # c^T Cov c from the centred data when a set is smaller than the dimension (cheaper), else from Cov
    Da, Db = (a - a.mean(0)) / np.sqrt((na - 1) * na), (b - b.mean(0)) / np.sqrt((nb - 1) * nb)

    def quad(c, D):
        if len(D) < D.shape[1]:
            return ((c @ D.T) ** 2).sum(1)
        return ((c @ (D.T @ D)) * c).sum(1)

    p = np.empty(len(C))
    for s in range(0, len(C), chunk):
        c = np.asarray(C[s:s + chunk], np.float64)
        va, vb = quad(c, Da), quad(c, Db)
        se2 = np.maximum(va + vb, 1e-300)
        t = (c @ delta) / np.sqrt(se2)
        df = se2 ** 2 / np.maximum(va ** 2 / (na - 1) + vb ** 2 / (nb - 1), 1e-300)
        p[s:s + chunk] = 2 * student_t.sf(np.abs(t), df)
    return p


def concept_statistics(x_from: np.ndarray, x_to: np.ndarray, concepts_unit: np.ndarray) -> pd.DataFrame:
    """Per concept: mean similarity in each set, difference, AUROC (to vs from), Welch t-test p (nominal)."""
    from scipy.stats import mannwhitneyu, ttest_ind

    sa = l2n(x_from).astype(np.float32) @ concepts_unit.T
    sb = l2n(x_to).astype(np.float32) @ concepts_unit.T
    u = mannwhitneyu(sb, sa, axis=0, alternative="two-sided").statistic
    auroc = u / (len(sa) * len(sb))
    if len(sa) > 1 and len(sb) > 1:
        p = ttest_ind(sb, sa, axis=0, equal_var=False).pvalue
    else:
        p = np.full(sa.shape[1], np.nan)
    return pd.DataFrame({"mean_sim_from": sa.mean(0), "mean_sim_to": sb.mean(0), "diff": sb.mean(0) - sa.mean(0),
                         "auroc": auroc, "welch_p": np.nan_to_num(p, nan=1.0)})


def explain_vectors(r: np.ndarray, E: np.ndarray, concepts: list[str], x_from: np.ndarray | None = None,
                    x_to: np.ndarray | None = None, groups: np.ndarray | None = None, *, top: int = 30,
                    candidates: int = 500, permutations: int = 1000, seed: int = 0, method: str = "rave",
                    deflated_steps: int = 10) -> dict:
    """Rank concepts for residual `r` (d,) against text embeddings `E` (V, d) of `concepts`.

    With the two sets' image vectors, add per-concept statistics for the top `candidates` and a
    permutation test of the whole ranking (family-wise adjusted p by the max statistic). `groups` (for the
    concatenation [x_from; x_to]) restricts the shuffles to exchangeable units. The sequential (deflated) test
    covers the first `deflated_steps` picks of each side (its cost is shuffles x vocabulary x steps)."""
    if E.shape[0] != len(concepts):
        raise ConfigError(f"{len(concepts)} concepts but {E.shape[0]} embeddings.")
    if E.shape[1] != len(r):
        raise IncompatibleRunError(f"Residual has dimension {len(r)} but the text embeddings {E.shape[1]}: different models.")
    r = l2n(np.asarray(r, np.float64))
    E = unit_rows32(E)
    C, text_mean = centre(E)
    s_centred = C @ r.astype(np.float32)
    s_raw = E @ r.astype(np.float32)
    z = (s_centred - s_centred.mean()) / (s_centred.std() or 1.0)
    out: dict = {"info": {"vocabulary_size": len(concepts), "text_mean_norm": float(np.linalg.norm(text_mean)),
                          "score": "cosine of r with the centred, renormalised concept embedding"}}
    tables, picks_by_side = {}, {}
    both = deflation_rankings(r, C, top, tuple(SIDES.values()))
    for (side, sign), picks in zip(SIDES.items(), both):
        picks_by_side[side] = picks
        rows = []
        for rank, pk in enumerate(picks, 1):
            j = pk["index"]
            rows.append({"rank": rank, "direction": side, "concept": concepts[j], "vocab_index": j,
                         "score_centred": float(s_centred[j]), "z": float(z[j]), "raw_cosine": float(s_raw[j]),
                         "score_at_pick": float(sign * pk["score_at_pick"]),
                         "cosine_at_pick": float(sign * pk["cosine_at_pick"]), "explained": pk["explained"],
                         "cum_explained": pk["cum_explained"]})
        tables[side] = pd.DataFrame(rows)
    if x_from is not None and x_to is not None and len(x_from) and len(x_to):
        n_cand = min(candidates, len(concepts))
        cand_idx = np.argsort(-np.abs(s_centred))[:n_cand]
        shortlisted = set(cand_idx.tolist())
        ranked = [j for tab in tables.values() for j in tab["vocab_index"]]
        cand_idx = np.r_[cand_idx, np.asarray(list(dict.fromkeys(j for j in ranked if j not in shortlisted)), int)]
        stats = concept_statistics(x_from, x_to, C[cand_idx])
        q_all = benjamini_hochberg(welch_all_concepts(x_from, x_to, C))   # BH over the whole vocabulary
        stats["q_bh"] = q_all[cand_idx]
        stats.index = cand_idx
        X = np.concatenate([x_from, x_to])
        is_to = np.r_[np.zeros(len(x_from), bool), np.ones(len(x_to), bool)]
        t0 = time.perf_counter()
        perm_info: dict = {"K": permutations}
        if permutations > 0:
            labels, perm_info = permutation_labels(is_to, groups, permutations, seed)
            perm_info["K"] = permutations
            perm_info["deflated_steps"] = deflated_steps
            deflations = {side: (sign, [pk["index"] for pk in picks_by_side[side][:deflated_steps]],
                                 np.array([pk["direction"] for pk in picks_by_side[side][:deflated_steps]]).reshape(-1, C.shape[1]))
                          for side, sign in SIDES.items()}
            null = permutation_null(X, labels, C, method, deflations)
            perm_info["seconds"] = round(time.perf_counter() - t0, 3)
            finite = perm_info["distinct_shuffles"] not in (0, float("inf"))
            perm_info["smallest_attainable_p"] = max(1.0 / (permutations + 1),
                                                     1.0 / perm_info["distinct_shuffles"] if finite else 0.0)
            perm_info["null_max_score_95"] = float(np.quantile(null["max"], 0.95))
            perm_info["null_min_score_05"] = float(np.quantile(null["min"], 0.05))
        for side, tab in tables.items():
            if tab.empty:
                continue
            idx = tab["vocab_index"].to_numpy()
            for col in ("mean_sim_from", "mean_sim_to", "diff", "auroc", "welch_p", "q_bh"):
                tab[col] = stats.loc[idx, col].to_numpy()
            if permutations > 0:
                stat = SIDES[side] * tab["score_centred"].to_numpy()
                extreme = null["max"] if side == "adds" else -null["min"]
                tab["p_fwer"] = (1 + (extreme[None, :] >= stat[:, None]).sum(1)) / (permutations + 1)
                seq_obs = np.array([pk["cosine_at_pick"] for pk in picks_by_side[side][:deflated_steps]])
                seq_null = null["seq_" + side]
                p_seq = np.maximum.accumulate((1 + (seq_null >= seq_obs[None, :]).sum(0)) / (permutations + 1))
                tab["p_fwer_deflated"] = np.r_[p_seq, np.full(len(tab) - len(p_seq), np.nan)]
        out["info"].update(candidates=int(len(cand_idx)), permutation=perm_info,
                           n_from=int(len(x_from)), n_to=int(len(x_to)),
                           significant_fwer_05=int(sum((t.get("p_fwer", pd.Series(dtype=float)) < 0.05).sum()
                                                       for t in tables.values())),
                           significant_fwer_deflated_05=int(sum((t.get("p_fwer_deflated", pd.Series(dtype=float)) < 0.05).sum()
                                                                for t in tables.values())),
                           candidates_q_below_05=int((stats["q_bh"] < 0.05).sum()))
        out["candidate_stats"] = stats
    out["adds"], out["removes"] = tables["adds"], tables["removes"]
    out["centred"] = C
    out["scores_centred"] = s_centred
    return out


def _set_vectors(side: dict):
    from .runs import Run
    from .residual import _select

    run = Run(side["run"])
    mask = _select(run, side["selector"])
    return run, mask


def _exemplars(run, index, mask: np.ndarray, query: np.ndarray, k: int) -> list[dict]:
    """Nearest images of one set to a concept, through the run's FAISS index (restricted to the set's ids)."""
    import faiss

    ids = run.metadata["row_id"].to_numpy()[mask].astype(np.int64)
    params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(ids))
    scores, found = index.search(np.ascontiguousarray(query[None], dtype=np.float32), min(k, len(ids)), params=params)
    meta = run.metadata.set_index("row_id")
    return [{"row_id": int(i), "path": str(meta.loc[int(i), "path"]), "file": str(meta.loc[int(i), "file"]),
             "score": float(s)} for s, i in zip(scores[0], found[0]) if i >= 0]


def explain_residual(residual: str | os.PathLike, out: str | os.PathLike = "report", *, vocab: str | None = None,
                     templates: str | None = None, top: int = 30, candidates: int = 500, permutations: int = 1000,
                     seed: int = 0, exemplars: int = 3, device: str = "auto", progress: bool = True,
                     deflated_steps: int = 10) -> dict:
    """Rank concepts for a residual file and write report.{json,csv,md,html} into `out`. Returns the report dict."""
    from . import models, report as rep, vocab as vb
    from .residual import load_residual

    if not 1 <= top <= 500:
        raise ConfigError(f"The 'top' option of explain-residual must be an int in [1, 500]. Got {top} instead.")
    if permutations < 0 or candidates < 1:
        raise ConfigError("--permutations must be >= 0 and --candidates >= 1.")
    res = load_residual(residual)
    mi = res.info["model"]
    # the network is built (and its weights checked against the residual's) only if some text is not cached
    lm = models.TextModelHandle(mi["model"], mi["pretrained"], mi["weights_sha256"], len(res.vector), device)
    V = vb.resolve_vocab(vocab, lm)
    tpls = vb.resolve_templates(templates)
    t0 = time.perf_counter()
    E, cache_info = vb.embed_concepts(lm, V.concepts, tpls, progress=progress)
    t_embed = time.perf_counter() - t0
    x_from = x_to = groups = None
    runs = None
    note = None
    try:
        (run_a, mask_a), (run_b, mask_b) = _set_vectors(res.info["from"]), _set_vectors(res.info["to"])
        x_from, x_to = run_a.vectors[mask_a], run_b.vectors[mask_b]
        groups = pd.concat([run_a.metadata.loc[mask_a, "group"], run_b.metadata.loc[mask_b, "group"]]).astype(str).to_numpy()
        runs = (run_a, mask_a, run_b, mask_b)
    except (ConfigError, FileNotFoundError, KeyError) as exc:
        note = f"Significance skipped: the source runs could not be read ({exc})."
        log.warning(note)
    result = explain_vectors(res.vector, E, V.concepts, x_from, x_to, groups, top=top, candidates=candidates,
                             permutations=permutations, seed=seed, method=res.info.get("method", "rave"),
                             deflated_steps=deflated_steps)
    info = dict(result["info"], vocabulary=V.name, vocabulary_source=V.source, templates=tpls,
                text_embedding_seconds=round(t_embed, 3), text_cache=cache_info["cache"], significance_note=note)
    if V.name == "model":
        info["vocabulary_note"] = ("Default vocabulary for this model: the words and phrases it was trained on "
                                   "(other words would score as noise).")
    table = pd.concat([result["adds"], result["removes"]], ignore_index=True)
    report = {"embedlab_report": 1, "info": info,
              "residual": {"path": str(res.path), "method": res.info.get("method"), "from": res.info["from"]["selector"],
                           "to": res.info["to"]["selector"], "model": f"{mi['model']}/{mi['pretrained']}",
                           "thr": res.thr, "edits": res.info.get("edits", [])},
              "concepts": table.replace({np.nan: None}).to_dict(orient="records"), "exemplars": []}
    figures = {"bar": rep.png_data_uri(rep.bar_chart(result["adds"], result["removes"]))}
    if runs is not None:
        run_a, mask_a, run_b, mask_b = runs
        hists = []
        C = result["centred"]
        xa, xb = l2n(x_from), l2n(x_to)
        index_a, index_b = run_a.load_index(), run_b.load_index()
        for side, n in (("adds", 5), ("removes", 3)):
            for _, row in result[side].head(n).iterrows():
                j = int(row["vocab_index"])
                hists.append((row["concept"], xa @ C[j], xb @ C[j]))
                if exemplars > 0:
                    ex = {"concept": row["concept"], "direction": side,
                          "from": _exemplars(run_a, index_a, mask_a, E[j], exemplars),
                          "to": _exemplars(run_b, index_b, mask_b, E[j], exemplars)}
                    report["exemplars"].append(ex)
        figures["histograms"] = rep.png_data_uri(rep.similarity_histograms(
            hists, res.info["from"]["selector"], res.info["to"]["selector"]))
    thumbs = {it["file"]: None for ex in report["exemplars"] for s in ("from", "to") for it in ex[s]}
    thumbs = {f: rep.thumb_data_uri(f) for f in thumbs}     # an image is often exemplar of several concepts
    html_exemplars = [{**ex, **{s: [dict(it, thumb=thumbs[it["file"]]) for it in ex[s]] for s in ("from", "to")}}
                      for ex in report["exemplars"]]
    report["files"] = rep.write_report(out, report, figures, html_exemplars)
    return report
