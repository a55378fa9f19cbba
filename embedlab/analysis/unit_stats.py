"""Per-concept statistics of two image sets on the units the permutation test exchanges, from one streamed pass.

The units are images (no groups), group means (groups nested in the sets) or, per group that spans both sets,
its 'from' and 'to' means compared within the group. One pass over the sets' row blocks (`ImageSets`) collects
what the statistics need and nothing more: per-group sums when groups are the units (G x d); per set the count,
mean and scatter matrix (d x d) when images are, plus each candidate concept's score per image (or, past
`EXACT_SCORE_LIMIT` scores, a fine histogram per candidate and set); and what the report shows (similarity of
every image to a few concepts, each set's nearest images to a few queries). Memory never holds images x
dimension, so a run of millions of images is explained in the memory of a few thousand.

The same pass keeps what the family-wise test's statistic needs (`contrast`): each concept's difference of mean
similarity between the sets over its standard error under the shuffles, c' S c, with S a d x d matrix of the
pooled units (the sets' scatter matrices; the group means; or, for groups spanning the sets, a scatter weighted
per group), so the test scores the whole vocabulary without holding any image score.

The pass re-cuts the blocks into fixed chunks (`aligned_chunks`): every sum is the same however the caller cut
its blocks, so a run read shard by shard gives the same statistics as the same vectors handed over in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from embedlab.analysis.formula import l2n
from embedlab.analysis.image_sets import ImageSets, aligned_chunks
from embedlab.analysis.permutation import add_group_sums, group_layout

CHUNK = 4096
EXACT_SCORE_LIMIT = 1 << 25  # images x candidates kept as float32 scores (128 MB); beyond: histograms
HIST_BINS = 4096  # bins over [-1, 1] of a histogram AUROC (ties inside a bin count half)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    from scipy.stats import false_discovery_control

    p = np.asarray(p, float)
    return false_discovery_control(np.clip(p, 0, 1)) if len(p) else p


def kish(w: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of units weighted by w."""
    w = np.asarray(w, np.float64)
    return float(w.sum() ** 2 / (w**2).sum()) if len(w) else 0.0


class Moments:
    """Per set: count, mean and scatter matrix sum (x - mean)(x - mean)^T, merged chunk by chunk (Chan et al.)."""

    def __init__(self, d: int):
        self.n = np.zeros(2)
        self.mean = np.zeros((2, d))
        self.m2 = np.zeros((2, d, d))

    def add(self, s: int, x: np.ndarray) -> None:
        if not len(x):
            return
        nb, mb = len(x), x.mean(0)
        xc = x - mb
        n = self.n[s] + nb
        delta = mb - self.mean[s]
        self.m2[s] += xc.T @ xc + np.outer(delta, delta) * (self.n[s] * nb / n)
        self.mean[s] += delta * (nb / n)
        self.n[s] = n

    def spread(self, s: int) -> np.ndarray:
        """S with c^T S c = the variance of the set's mean along c (sample variance / n)."""
        n = self.n[s]
        return self.m2[s] / max((n - 1) * n, 1.0)


class Scores:
    """Per set, every image's score against a few rows W (float32), or (`histogram`) per row a histogram of them."""

    def __init__(self, W: np.ndarray, histogram: bool):
        self.W = np.ascontiguousarray(W, np.float32)
        self.histogram = histogram
        self.parts = ([], [])
        self.counts = np.zeros((2, len(self.W), HIST_BINS), np.int64) if histogram else None

    def add(self, s: int, x: np.ndarray) -> None:
        if not len(x) or not len(self.W):
            return
        sc = x.astype(np.float32) @ self.W.T
        if not self.histogram:
            self.parts[s].append(sc)
            return
        b = np.clip(((sc + 1) * (HIST_BINS / 2)).astype(np.int64), 0, HIST_BINS - 1)
        flat = (np.arange(len(self.W)) * HIST_BINS)[None, :] + b
        self.counts[s] += np.bincount(flat.ravel(), minlength=len(self.W) * HIST_BINS).reshape(len(self.W), HIST_BINS)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return tuple(np.concatenate(p) if p else np.zeros((0, len(self.W)), np.float32) for p in self.parts)


class TopK:
    """Per set and query row, the k images of largest score (positions within the set)."""

    def __init__(self, Q: np.ndarray, k: int):
        self.Q, self.k = np.ascontiguousarray(Q, np.float32), k
        self.best = [[(np.zeros(0), np.zeros(0, np.int64)) for _ in range(len(self.Q))] for _ in range(2)]

    def add(self, s: int, x: np.ndarray, first: int) -> None:
        if not len(x) or not len(self.Q) or self.k < 1:
            return
        sc = x.astype(np.float32) @ self.Q.T
        for j in range(len(self.Q)):
            vals, pos = self.best[s][j]
            vals, pos = np.r_[vals, sc[:, j]], np.r_[pos, first + np.arange(len(x))]
            keep = np.lexsort((pos, -vals))[: self.k]
            self.best[s][j] = (vals[keep], pos[keep])


def collect(
    sets: ImageSets,
    groups: np.ndarray | None,
    candidates: np.ndarray,
    figure_rows: np.ndarray | None = None,
    queries: np.ndarray | None = None,
    k: int = 0,
) -> dict:
    """The one pass: test units (`test_units`' dict) plus "figure" (per set, each image's score on
    `figure_rows`) and "nearest" (per set and query, the top-k (scores, positions within the set))."""
    is_to = sets.is_to
    codes, sizes, counts_to, nested = group_layout(is_to, groups)
    by_image = groups is None or len(sizes) == len(is_to)
    spanning = not by_image and not nested
    root_kappa = np.sqrt(spanning_weights(sizes, counts_to)[1]) if spanning else None
    d = None
    moments = gsums = cand = ref = kscatter = None
    figure = Scores(np.zeros((0, 1)) if figure_rows is None else figure_rows, histogram=False)
    nearest = TopK(np.zeros((0, 1)) if queries is None else queries, k)
    for start, rows in aligned_chunks(sets, CHUNK):
        x = l2n(rows)
        if d is None:
            d = x.shape[1]
            moments = Moments(d) if by_image else None
            gsums = None if by_image else np.zeros((2, len(sizes), d))
            ref = x.mean(0)  # a reference point for the within-group scatter (the first chunk's mean)
            kscatter = np.zeros((d, d)) if spanning else None
            cand = Scores(candidates, histogram=sets.n * len(candidates) > EXACT_SCORE_LIMIT) if by_image else None
        cut = min(max(sets.n_from - start, 0), len(x))  # rows before `cut` are 'from' rows
        if spanning:
            _add_kappa_scatter(kscatter, x, ref, root_kappa[codes[start : start + len(x)]])
        for s, part, first in ((0, x[:cut], start), (1, x[cut:], start + cut - sets.n_from)):
            if not len(part):
                continue
            figure.add(s, part)
            nearest.add(s, part, first)
            if by_image:
                moments.add(s, part)
                cand.add(s, part)
            else:
                lo = start + (0 if s == 0 else cut)
                add_group_sums(gsums[s], codes[lo : lo + len(part)], part)
    if d is None:
        raise ValueError("Both sets are empty.")
    if start + len(x) != sets.n:
        raise ValueError(f"The image blocks hold {start + len(x)} rows but the sets have {sets.n} images.")
    units = (
        image_units(sets, moments, cand)
        if by_image
        else group_units(gsums[0], gsums[1], sizes - counts_to, counts_to, sizes, nested)
    )
    units.update(ref=ref, sizes=sizes, counts_to=counts_to)
    # the group sums and the kappa scatter: what the contrast needs, not held beyond the pass
    units["contrast"] = contrast(dict(units, group_sums=gsums, kappa_scatter=kscatter))
    return {
        "units": units,
        "figure": figure.arrays(),
        "nearest": nearest.best,
        "groups": None if groups is None else int(len(sizes)),
    }


def _add_kappa_scatter(kscatter: np.ndarray, x: np.ndarray, ref: np.ndarray, root_kappa: np.ndarray) -> None:
    """Add the block's scatter about `ref`, each row weighted by its group's kappa (`root_kappa`: per row, its
    square root), to `kscatter`, 512 rows at a time (small temporaries: centred, scaled in place)."""
    for lo in range(0, len(x), 512):
        xc = np.subtract(x[lo : lo + 512], ref)
        xc *= root_kappa[lo : lo + len(xc), None]
        kscatter += xc.T @ xc


def image_units(sets: ImageSets, moments: Moments, cand: Scores) -> dict:
    out = {
        "from": None,
        "to": None,
        "paired": None,
        "unit": "images",
        "n_from": sets.n_from,
        "n_to": sets.n_to,
        "effective_n": float(sets.n),
        "shuffle": "between",
        "moments": moments,
    }
    if cand.histogram:
        out["candidate_histograms"] = cand.counts
    else:
        out["candidate_scores"] = cand.arrays()
    return out


def group_units(sums_f, sums_t, n_f, n_t, sizes, nested: bool) -> dict:
    if nested:
        f, t = n_f > 0, n_t > 0
        return {
            "from": sums_f[f] / n_f[f, None],
            "to": sums_t[t] / n_t[t, None],
            "paired": None,
            "unit": "groups",
            "n_from": int(f.sum()),
            "n_to": int(t.sum()),
            "effective_n": kish(n_f[f]) + kish(n_t[t]),
            "shuffle": "between",
        }
    both = (n_f > 0) & (n_t > 0)
    uf, ut = sums_f[both] / n_f[both, None], sums_t[both] / n_t[both, None]
    return {
        "from": uf,
        "to": ut,
        "paired": ut - uf,
        "unit": "groups",
        "n_from": int(both.sum()),
        "n_to": int(both.sum()),
        "effective_n": kish(n_f[both] * n_t[both] / sizes[both]),
        "shuffle": "within",
    }


def test_units(x_from, x_to=None, groups: np.ndarray | None = None, candidates: np.ndarray | None = None) -> dict:
    """The units the per-concept statistics count: the same units the shuffles exchange.

    No groups (or one image per group): images (their count, mean and scatter per set, and their scores on the
    `candidates` rows). Groups nested in the sets: one row per group, the mean of its unit image vectors
    (correlated images of one scene are not counted as independent). Groups that span both sets: per spanning
    group its 'from' mean and its 'to' mean, compared within the group (`paired`: to minus from); groups held
    by one set carry no within-group contrast. `effective_n` is Kish's (sum w)^2 / sum w^2 with w the images
    per unit, summed over the sets (paired: w = n_from n_to / n of the group), the count that the residual's
    image-weighted means really rest on. `x_from` is an `ImageSets` (then `x_to` is None) or an array."""
    sets = x_from if isinstance(x_from, ImageSets) else ImageSets.from_arrays(x_from, x_to)
    cand = np.zeros((0, 1), np.float32) if candidates is None else candidates
    return collect(sets, groups, cand)["units"]


def _along(c: np.ndarray, D: np.ndarray) -> np.ndarray:
    return ((c @ D.T) ** 2).sum(1)


def _spread(X: np.ndarray) -> np.ndarray:
    """A matrix D with |D c|^2 = the variance of the mean of X's rows along c: the centred rows scaled, or their
    (d, d) triangular factor when there are more rows than dimensions (cheaper to apply)."""
    n = len(X)
    D = (X - X.mean(0)) / np.sqrt((n - 1) * n)
    return np.linalg.qr(D, mode="r") if n > D.shape[1] else D


def _welch_p(delta: np.ndarray, var_a, var_b, na: int, nb: int, C: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Two-sided Welch p-values of c . delta for every row c of C; var_x(c) gives the variance of a set's mean
    along the rows c."""
    from scipy.stats import t as student_t

    p = np.empty(len(C))
    for s in range(0, len(C), chunk):
        c = np.asarray(C[s : s + chunk], np.float64)
        va, vb = var_a(c), var_b(c)
        se2 = np.maximum(va + vb, 1e-300)
        df = se2**2 / np.maximum(va**2 / (na - 1) + vb**2 / (nb - 1), 1e-300)
        p[s : s + chunk] = 2 * student_t.sf(np.abs(c @ delta) / np.sqrt(se2), df)
    return p


def welch_all_concepts(u_from: np.ndarray, u_to: np.ndarray, C: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Welch t-test p-values (to vs from) of the units' similarity (rows: unit image vectors or group means) for
    EVERY concept, from the two sets' means and spreads: never a units x vocabulary matrix, and no selection
    before testing (so BH over the whole vocabulary controls the false discovery rate)."""
    na, nb = len(u_from), len(u_to)
    if na < 2 or nb < 2:
        return np.ones(len(C))
    Da, Db = _spread(np.asarray(u_from, np.float64)), _spread(np.asarray(u_to, np.float64))
    return _welch_p(u_to.mean(0) - u_from.mean(0), lambda c: _along(c, Da), lambda c: _along(c, Db), na, nb, C, chunk)


def welch_from_moments(m: Moments, C: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """`welch_all_concepts` from each set's count, mean and scatter matrix (images streamed, never held)."""
    na, nb = int(m.n[0]), int(m.n[1])
    if na < 2 or nb < 2:
        return np.ones(len(C))
    Sa, Sb = m.spread(0), m.spread(1)
    return _welch_p(
        m.mean[1] - m.mean[0], lambda c: ((c @ Sa) * c).sum(1), lambda c: ((c @ Sb) * c).sum(1), na, nb, C, chunk
    )


def paired_all_concepts(D: np.ndarray, C: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Paired t-test p-values for EVERY concept: rows of D are per-group differences (to mean - from mean)."""
    from scipy.stats import t as student_t

    G = len(D)
    if G < 2:
        return np.ones(len(C))
    m, S = D.mean(0), _spread(np.asarray(D, np.float64))
    p = np.empty(len(C))
    for s in range(0, len(C), chunk):
        c = np.asarray(C[s : s + chunk], np.float64)
        p[s : s + chunk] = 2 * student_t.sf(np.abs(c @ m) / np.sqrt(np.maximum(_along(c, S), 1e-300)), G - 1)
    return p


def histogram_auroc(counts_from: np.ndarray, counts_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROC (to vs from) per row of binned scores, ties within a bin counted half, and its largest possible
    error (half the chance that a pair falls in one bin)."""
    nf, nt = counts_from.sum(1, keepdims=True), counts_to.sum(1, keepdims=True)
    pf, pt = counts_from / np.maximum(nf, 1), counts_to / np.maximum(nt, 1)
    below = np.cumsum(pf, 1) - pf
    return (pt * (below + 0.5 * pf)).sum(1), 0.5 * (pt * pf).sum(1)


def unit_statistics(units: dict, C: np.ndarray, cand_idx: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """Per candidate concept (rows indexed by vocabulary index), on the test units of `test_units`: mean
    similarity in each set, difference, AUROC (to vs from units), welch_p (a paired t-test within groups when
    groups span the sets; nominal) and q_bh, Benjamini-Hochberg over the WHOLE vocabulary's p-values. With
    image units the scores were taken in the pass (`collect`, candidates = C[cand_idx]). Also returns how the
    AUROC was computed."""
    from scipy.stats import mannwhitneyu

    if units["paired"] is not None:
        p_all = paired_all_concepts(units["paired"], C)
    elif units["unit"] == "images":
        p_all = welch_from_moments(units["moments"], C)
    else:
        p_all = welch_all_concepts(units["from"], units["to"], C)
    q_all = benjamini_hochberg(p_all)
    Cc = np.asarray(C[cand_idx], np.float32)
    how = {"auroc": "exact (Mann-Whitney U over the units)"}
    if units["unit"] == "images" and "candidate_histograms" in units:
        h = units["candidate_histograms"]
        auroc, err = histogram_auroc(h[0], h[1])
        m = units["moments"]
        mean_f, mean_t = Cc @ m.mean[0].astype(np.float32), Cc @ m.mean[1].astype(np.float32)
        how = {
            "auroc": f"from {HIST_BINS}-bin histograms of the image scores (ties within a bin count half)",
            "auroc_max_error": float(err.max()) if len(err) else 0.0,
            "bin_width": 2 / HIST_BINS,
        }
    else:
        if units["unit"] == "images":
            sa, sb = units["candidate_scores"]
        else:
            sa, sb = units["from"].astype(np.float32) @ Cc.T, units["to"].astype(np.float32) @ Cc.T
        auroc = np.concatenate(
            [
                mannwhitneyu(sb[:, j : j + 32], sa[:, j : j + 32], axis=0).statistic  # 32 at a
                for j in range(0, sa.shape[1], 32)
            ]
            or [np.zeros(0)]
        ) / (len(sa) * len(sb))  # time: memory
        mean_f, mean_t = sa.mean(0), sb.mean(0)
    return pd.DataFrame(
        {
            "mean_sim_from": mean_f,
            "mean_sim_to": mean_t,
            "diff": mean_t - mean_f,
            "auroc": auroc,
            "welch_p": p_all[cand_idx],
            "q_bh": q_all[cand_idx],
        },
        index=cand_idx,
    ), how


# ---- the studentised difference of the family-wise test ------------------------------------------------------


def spanning_weights(sizes: np.ndarray, counts_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: w = n / (n_to n_from), the weight of its 'to' sum in its difference of means (D = w T - S / n_from
    for T the sum of its 'to' images, S of all), and kappa = n / (n_to n_from (n - 1)), the variance of that
    difference along c under shuffles within the group per unit of the group's scatter along c. Zero for groups
    held by one set (their labels never move)."""
    n, a = np.asarray(sizes, np.float64), np.asarray(counts_to, np.float64)
    b = n - a
    span = (a > 0) & (b > 0)
    w = np.where(span, n / np.maximum(a * b, 1), 0.0)
    return w, np.where(span, w / np.maximum(n - 1, 1), 0.0)


@dataclass
class Contrast:
    """Per concept c the test's statistic is t_c = c . diff / sqrt(c' cov c): `diff` (d,) the difference of the
    two sets' mean unit vectors on the test units (images; group means; or, groups spanning both sets, the mean
    over those groups of each group's 'to' mean minus its 'from' mean), `cov` (d, d) the covariance of `diff`
    over the shuffles of the labels (a function of the pooled units, the same under every shuffle).

    `kind` "two-sample": t_c is then the difference over its permutation standard error, a monotone function of
    Student's pooled-variance t on the same units (`student_t`), the same for every concept, so a maximum over
    concepts picks the same concept and shuffle either way. "stratified": the mean within-group difference over
    its standard error under shuffles within groups."""

    kind: str
    diff: np.ndarray
    cov: np.ndarray
    n_units: int
    ref: np.ndarray  # rows are centred on it before shuffled sums are taken (no cancellation in float32 sums)
    n_to: int = 0
    n_from: int = 0
    group_means: np.ndarray | None = None  # nested groups: (G, d) centred on `ref`
    weights: np.ndarray | None = None  # stratified: per group w (`spanning_weights`)
    offset: np.ndarray | None = None  # stratified: sum over groups of (S - n ref) / n_from, centred sums

    def sd(self, C: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """(V,) the permutation standard error of c . diff for every row c of C."""
        out = np.empty(len(C))
        for s in range(0, len(C), chunk):
            c = np.asarray(C[s : s + chunk], np.float64)
            out[s : s + chunk] = np.sqrt(np.maximum(((c @ self.cov) * c).sum(1), 0.0))
        return out

    def student_t(self, z: np.ndarray) -> np.ndarray:
        """The reported t: Student's pooled-variance t for two samples, t = z sqrt((N - 2) / (N - 1 - z^2)) with
        N units (z^2 <= N - 1 always), and z itself for the stratified contrast."""
        z = np.asarray(z, np.float64)
        if self.kind != "two-sample" or self.n_units <= 2:
            return z
        N = self.n_units
        return z * np.sqrt((N - 2) / np.maximum(N - 1 - z * z, 1e-12))

    def describe(self) -> str:
        if self.kind == "two-sample":
            return (
                "per concept, the difference of the sets' mean similarity to the centred concept on the test units, "
                "over its standard error (Student's t, pooled variance)"
            )
        return (
            "per concept, the mean over the groups that span both sets of each group's difference of mean "
            "similarity (to minus from) to the centred concept, over its standard error under shuffles within groups"
        )


def contrast(units: dict) -> Contrast:
    """The `Contrast` of the test units (`collect`'s dict, which holds it as "contrast"): images (their moments),
    groups nested in the sets (their mean unit vectors), or groups that span the sets (their sums and the
    kappa-weighted scatter, which `collect` drops once the contrast is made)."""
    if "contrast" in units:
        return units["contrast"]
    if units["unit"] == "images":
        m = units["moments"]
        a, b = float(m.n[1]), float(m.n[0])
        N = a + b
        delta = m.mean[1] - m.mean[0]
        scatter = m.m2[0] + m.m2[1] + np.outer(delta, delta) * (a * b / N)
        ref = (m.mean[0] * b + m.mean[1] * a) / N
        return Contrast("two-sample", delta, scatter * (N / (a * b * max(N - 1, 1))), int(N), ref, int(a), int(b))
    gs, sizes, n_to = units["group_sums"], units["sizes"], units["counts_to"]
    if units["paired"] is None:
        means = (gs[0] + gs[1]) / sizes[:, None]
        is_to = n_to > 0
        ref = means.mean(0)
        M = means - ref
        G, a = len(M), int(is_to.sum())
        b = G - a
        diff = M[is_to].mean(0) - M[~is_to].mean(0)
        cov = (M.T @ M) * (G / (a * b * max(G - 1, 1)))
        return Contrast("two-sample", diff, cov, G, ref, a, b, group_means=M)
    w, kappa = spanning_weights(sizes, n_to)
    span = np.flatnonzero(w > 0)
    ref = units["ref"]
    G = len(span)
    S = gs[0][span] + gs[1][span]  # the spanning groups' sums, centred on ref in place
    S -= sizes[span, None] * ref
    S /= (sizes[span] - n_to[span])[:, None]  # S / n_from
    T = gs[1][span]
    T -= n_to[span, None] * ref
    T *= w[span, None]
    offset = S.sum(0)
    diff = (T.sum(0) - offset) / G  # mean over the groups of w T - S / n_from
    S *= ((sizes[span] - n_to[span]) * np.sqrt(kappa[span] / sizes[span]))[:, None]  # S sqrt(kappa / n)
    cov = (units["kappa_scatter"] - S.T @ S) / G**2
    return Contrast("stratified", diff, cov, G, ref, G, G, weights=w, offset=offset)
