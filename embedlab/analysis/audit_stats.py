"""The statistics of the slice audit, on the test units' mean unit vectors (pure functions of arrays).

Each slice s is compared with the rest through contrast weights w_s over the units (w = f / sum f - (1 - f) / sum
(1 - f), f the share of a unit's images in the slice), so its difference vector is D_s = W_s' U (U: the units' mean
unit vectors, centred within their stratum). Under the null the units' vectors are exchangeable (within strata):
permuting the rows of W against U gives every slice's, concept's and score's null at once, from one shared set of
permutations, so a single maximum over all of them controls the audit-wide family-wise error (Westfall-Young).

Per stratum h with G_h units and scatter S_h = U_h' U_h, a permutation within strata gives D_s mean 0 and covariance
sum_h a_sh S_h with a_sh = sum_{g in h} (w_gs - mean_h w_s)^2 / (G_h - 1); so
- the omnibus statistic of a slice is T_s = |D_s|^2 / E|D_s|^2 (its null mean is 1 whatever the slice's size);
- a concept c's statistic is t_sc = c . D_s / sqrt(sum_h a_sh c' S_h c), a z-score under the permutations;
- a per-unit score y (a loss, an error) gives t_s = w_s' y / sqrt(sum_h a_sh var_h(y)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedlab.analysis.permutation import tail_counts
from embedlab.analysis.unit_stats import benjamini_hochberg


def unit_means(X: np.ndarray, codes: np.ndarray, n_units: int) -> tuple[np.ndarray, np.ndarray]:
    """(U (G, d) float64 mean unit vector per unit, sizes (G,)). Rows of X are normalised first."""
    from embedlab.analysis.permutation import add_group_sums

    X = np.asarray(X, np.float64)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    U = np.zeros((n_units, X.shape[1]))
    add_group_sums(U, codes, X)
    sizes = np.bincount(codes, minlength=n_units).astype(np.float64)
    return U / np.maximum(sizes, 1)[:, None], sizes


def centre_within(U: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """Rows of U minus their stratum's mean (the residual of each unit within its stratum)."""
    H = int(strata.max()) + 1
    means = np.zeros((H, U.shape[1]))
    np.add.at(means, strata, U)
    means /= np.bincount(strata, minlength=H)[:, None]
    return U - means[strata]


def contrast_weights(F: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
    """(G, S) weights of each slice against its rest: w = f / sum f - (1 - f) / sum (1 - f) over the `active` units
    (all units, or for a discovered slice only those of the test half); 0 elsewhere. Each column sums to 0."""
    F = np.asarray(F, np.float64)
    act = np.ones_like(F) if active is None else np.asarray(active, np.float64)
    inside, outside = F * act, (1 - F) * act
    return inside / np.maximum(inside.sum(0), 1e-300) - outside / np.maximum(outside.sum(0), 1e-300)


@dataclass
class Design:
    U: np.ndarray  # (G, d) centred within strata
    W: np.ndarray  # (G, S)
    strata: np.ndarray  # (G,) int
    A: np.ndarray  # (S, H) a_sh
    tr: np.ndarray  # (H,) trace of S_h
    y: np.ndarray | None = None  # (G,) unit mean scores, centred within strata

    @property
    def null_mean(self) -> np.ndarray:
        """(S,) E|D_s|^2 under the permutations."""
        return self.A @ self.tr

    def concept_sd(self, C: np.ndarray) -> np.ndarray:
        """(S, V) the permutation standard deviation of c . D_s."""
        H = len(self.tr)
        B = np.zeros((H, len(C)))
        Ct = np.asarray(C, np.float64).T
        for h in range(H):
            Uh = self.U[self.strata == h]
            for a in range(0, len(Uh), 8192):  # units x concepts a chunk at a time
                P = Uh[a : a + 8192] @ Ct
                B[h] += (P * P).sum(0)
        return np.sqrt(np.maximum(self.A @ B, 0.0))

    def score_sd(self) -> np.ndarray:
        H = len(self.tr)
        v = np.bincount(self.strata, weights=self.y * self.y, minlength=H)
        return np.sqrt(np.maximum(self.A @ v, 0.0))


def design(U: np.ndarray, W: np.ndarray, strata: np.ndarray | None = None, scores: np.ndarray | None = None) -> Design:
    """The audit's `Design` from unit means U, contrast weights W and optional strata and unit scores."""
    G = len(U)
    strata = np.zeros(G, np.int64) if strata is None else np.asarray(strata, np.int64)
    H = int(strata.max()) + 1 if G else 0
    Uc = centre_within(np.asarray(U, np.float64), strata)
    A = np.zeros((W.shape[1], H))
    tr = np.zeros(H)
    for h in range(H):
        rows = strata == h
        Gh = int(rows.sum())
        if Gh < 2:
            continue
        Wh = W[rows]
        A[:, h] = ((Wh - Wh.mean(0)) ** 2).sum(0) / (Gh - 1)
        tr[h] = float((Uc[rows] ** 2).sum())
    y = None
    if scores is not None:
        y = np.asarray(scores, np.float64)
        y = y - (np.bincount(strata, weights=y, minlength=H) / np.bincount(strata, minlength=H))[strata]
    return Design(Uc, np.asarray(W, np.float64), strata, A, tr, y)


def within_strata_permutations(strata: np.ndarray, K: int, seed: int) -> np.ndarray:
    """(K + 1, G) index arrays: row 0 the identity (the observed labelling), then K uniform permutations of the
    positions within each stratum."""
    rng = np.random.default_rng(seed)
    G = len(strata)
    out = np.empty((K + 1, G), np.int32 if G < 2**31 else np.int64)  # int32 halves the table
    out[0] = np.arange(G)
    members = [np.flatnonzero(strata == h) for h in range(int(strata.max()) + 1 if G else 0)]
    for k in range(1, K + 1):
        perm = np.arange(G)
        for m in members:
            perm[m] = m[rng.permutation(len(m))]
        out[k] = perm
    return out


@dataclass
class NullRun:
    T: np.ndarray  # (K + 1, S) omnibus statistic per labelling (row 0 observed)
    t_obs: np.ndarray  # (S, V) observed concept statistics
    t_max: np.ndarray  # (K + 1,) largest |t| over tested slices and all concepts per labelling
    t_count: np.ndarray  # (S, V) labellings (observed included) with |t| at least the observed
    score_t: np.ndarray | None  # (K + 1, S) score statistic per labelling


def run_permutations(
    des: Design, C: np.ndarray, perms: np.ndarray, tested: np.ndarray, batch_floats: int = 1 << 24
) -> NullRun:
    """Every slice's omnibus statistic, every (slice, concept) t and every slice's score t under each labelling of
    `perms` (row 0 the observed): D = W[perm]' U per labelling, a batch of labellings at a time (memory: batch x
    slices x concepts floats). `tested`: the slices that enter the concept maximum (a slice found in embedding space
    differs from its rest by construction and is described, not tested)."""
    C = np.asarray(C, np.float64)
    S, V = des.W.shape[1], len(C)
    sd = des.concept_sd(C)
    inv_sd = np.divide(1.0, sd, out=np.zeros_like(sd), where=sd > 1e-12)
    e0 = des.null_mean
    inv_e0 = np.divide(1.0, e0, out=np.zeros_like(e0), where=e0 > 1e-300)
    ssd = des.score_sd() if des.y is not None else None
    K1 = len(perms)
    T = np.empty((K1, S))
    score_t = np.empty((K1, S)) if ssd is not None else None
    t_max = np.zeros(K1)
    t_count = np.zeros((S, V))
    t_obs = None
    G = len(des.U)
    # a batch holds its permuted weights (b, G, S) and its statistics (b, S, V): both within `batch_floats`
    B = max(1, min(256, batch_floats // max(S * max(V, des.U.shape[1]) + G * S, 1)))
    for k0 in range(0, K1, B):
        idx = perms[k0 : k0 + B]
        Wp = des.W[idx]  # (b, G, S)
        D = np.einsum("bgs,gd->bsd", Wp, des.U, optimize=True)
        T[k0 : k0 + len(idx)] = (D * D).sum(2) * inv_e0
        t = (D @ C.T) * inv_sd  # (b, S, V)
        if t_obs is None:
            t_obs = t[0].copy()
        a = np.abs(t)
        t_max[k0 : k0 + len(idx)] = a[:, tested].reshape(len(idx), -1).max(1, initial=0.0)
        t_count += (a >= np.abs(t_obs) - 1e-9 * np.maximum(1.0, np.abs(t_obs))).sum(0)
        if ssd is not None:
            score_t[k0 : k0 + len(idx)] = np.einsum("bgs,g->bs", Wp, des.y) / np.where(ssd > 0, ssd, np.inf)
    return NullRun(T, t_obs, t_max, t_count, score_t)


def slice_p(stat: np.ndarray) -> np.ndarray:
    """(S,) each column's permutation p: the share of the K + 1 labellings at or above the observed (row 0)."""
    return np.array([tail_counts(stat[:, s], stat[0, s : s + 1])[0] for s in range(stat.shape[1])]) / len(stat)


def audit_wide_p(sides: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Family-wise p-values over several sides of one family, from the same labellings: `sides[name]` = (null (K + 1,)
    of the side's maximum statistic, row 0 observed; values to adjust). Each side is standardised by its own null (a
    value's rank among its side's K + 1 maxima) and the family's statistic is the best rank over the sides (min-p),
    so a side whose statistic runs larger does not crowd out the others."""
    ranks = np.min([tail_counts(null, null) for null, _ in sides.values()], axis=0)
    ranks.sort()
    return {
        name: np.searchsorted(ranks, tail_counts(null, np.asarray(v, np.float64)), side="right") / len(ranks)
        for name, (null, v) in sides.items()
    }


def hierarchical_q(p_slices: np.ndarray, p_concepts: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Bogomolov selective FDR: BH over the slices' p, then within each of the R selected slices (of m)
    BH over its concepts at level q R / m. Returns (slice q-values, concept q-values rescaled so that "< q" is the
    within-slice decision; NaN in slices not selected)."""
    q_s = benjamini_hochberg(p_slices)
    m, R = len(p_slices), int((q_s < q).sum())
    q_c = np.full(p_concepts.shape, np.nan)
    for s in np.flatnonzero(q_s < q):
        q_c[s] = np.minimum(benjamini_hochberg(p_concepts[s]) * m / R, 1.0)
    return q_s, q_c


def debiased_effect(U: np.ndarray, inside: np.ndarray, outside: np.ndarray) -> float:
    """|mean U_in - mean U_out|^2 minus its sampling bias (tr cov_in / n_in + tr cov_out / n_out): unbiased for the
    squared distance of the two populations' means, so a small slice is not ranked first for its noise."""
    out = 0.0
    d = U[inside].mean(0) - U[outside].mean(0)
    out = float(d @ d)
    for rows in (inside, outside):
        n = int(rows.sum())
        if n > 1:
            out -= float(((U[rows] - U[rows].mean(0)) ** 2).sum()) / (n - 1) / n
    return out


def bootstrap_effect(U: np.ndarray, inside: np.ndarray, outside: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) `debiased_effect` with the units of each side resampled with replacement (the unit is the group, so
    this is a group bootstrap)."""
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    parts = []
    for rows in (inside, outside):
        X = U[rows]
        parts.append((X, (X * X).sum(1)))
    for b in range(n_boot):
        total = 0.0
        means = []
        for X, sq in parts:
            n = len(X)
            w = np.bincount(rng.integers(n, size=n), minlength=n).astype(np.float64)
            mean = w @ X / n
            means.append(mean)
            if n > 1:
                total -= (float(w @ sq) - n * float(mean @ mean)) / (n - 1) / n
        d = means[0] - means[1]
        out[b] = float(d @ d) + total
    return out


def jaccard(masks: list[np.ndarray]) -> np.ndarray:
    """(m, m) Jaccard index of the image sets (a sparse product: never slices x images dense)."""
    from embedlab.analysis.slices import membership

    M = membership(masks)
    inter = np.asarray((M.T @ M).todense(), np.float64)
    sizes = np.diag(inter).copy()
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def residual_cosines(set_sums: list[tuple], global_sums: tuple) -> np.ndarray:
    """Cosine of each slice's residual (RAVE, from its (from_sum, n_from, to_sum, n_to)) with the residual of
    `global_sums`, all the audited images."""
    from embedlab.analysis.formula import residual_from_sums

    r_all = residual_from_sums(*global_sums)[0]
    return np.array([float(residual_from_sums(*s)[0] @ r_all) for s in set_sums])


def survives_deflation(
    D: np.ndarray, order: list[int], overlap: np.ndarray, claimed: np.ndarray, keep: float = 0.5
) -> dict[int, int]:
    """Walk the slices in `order` (strongest first); a slice that overlaps (Jaccard > 0) earlier listed `claimed`
    ones (those significant) repeats them when less than `keep` of |D_s|^2 survives projecting out their difference
    vectors. Returns {repeating slice: the listed slice it repeats most}."""
    listed: list[int] = []
    repeats: dict[int, int] = {}
    for s in order:
        near = [j for j in listed if overlap[s, j] > 0 and claimed[j]]
        if near:
            Q, _ = np.linalg.qr(D[near].T)
            rest = D[s] - Q @ (Q.T @ D[s])
            if float(rest @ rest) < keep * float(D[s] @ D[s]):
                repeats[s] = max(near, key=lambda j: abs(float(D[j] @ D[s])))
                continue
        listed.append(s)
    return repeats
