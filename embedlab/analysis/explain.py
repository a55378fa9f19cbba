"""Read a residual in words: centred-vocabulary scores, greedy deflation, and significance.

Pure functions on arrays (`centre`, `deflation_rankings`, `side_lists`, `explain_vectors`) carry the method; the
per-concept statistics on the test units live in `unit_stats`, the permutation null in `permutation`;
`explain_residual()` does the I/O (residual sidecar, run folders, model, cached text embeddings) and writes
report.{json,csv,md,html}; the image sets are read block by block (`ImageSets`), never held. The deflation's
products with the whole vocabulary are a numba kernel, checked against the definition in the tests.

The ranking describes the residual's direction; significance asks another question, whether the two sets differ
along a concept. Its statistic is each concept's t, the difference of the sets' mean similarity to the centred
concept over its standard error on the test units (`unit_stats.Contrast`), and its null the largest |t| over the
whole vocabulary under shuffled labels (Westfall-Young max-T): p_fwer single-step, p_fwer_deflated step-down along
each list's deflation order. One family per page: both lists at once (or one side, `family`). The per-concept
statistics (AUROC, Welch p, BH q) count the same units as the shuffles (images, or groups when the images come in
groups). (Before issue 28 the statistic was the centred score of the normalised residual: a shuffled residual is
noise rescaled to unit length, so that statistic could not tell a strong effect from none.)
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial

import numpy as np
import pandas as pd

from embedlab.analysis.formula import l2n
from embedlab.analysis.image_sets import ImageSets
from embedlab.analysis.permutation import (
    SIDES,
    draw_shuffles,
    family_max,
    group_layout,
    max_t_null,
    max_t_p,
    shuffled_contrasts,
    step_down_p,
)
from embedlab.analysis.unit_stats import Contrast, collect, contrast, unit_statistics
from embedlab.choices import FAMILIES
from embedlab.errors import ConfigError, IncompatibleRunError

log = logging.getLogger(__name__)
MIN_EXPLAINED = 0.001  # a side's list ends at a pick that explains less than this share of |r|^2
SMALL_VOCAB = 1 << 20  # vocabulary x dimension below which the deflation's products stay in NumPy


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


def vocab_products(Cf: np.ndarray, vectors) -> np.ndarray:
    """(V, len(vectors)) float64 products of the float32 vocabulary with a few vectors: one parallel pass over the
    vocabulary (4 ms for 40k x 512 and two vectors on two cores, where numpy's OpenBLAS takes 9 ms); a small
    vocabulary stays in NumPy (no threads to wake)."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    if Cf.size < SMALL_VOCAB:
        return (Cf @ vectors.T).astype(np.float64)
    out = np.empty((len(Cf), len(vectors)), np.float32)
    _kernels().times_vocab(Cf, vectors, out)
    return out.astype(np.float64)


def deflation_rankings(r: np.ndarray, C: np.ndarray, n_top: int, signs=(1.0, -1.0)) -> list[list[dict]]:
    """Greedy, non-redundant rankings (TextSpan-style), one per sign: pick the concept with the largest
    sign*cos with the current residual, project it out of the residual and of every candidate, renormalise the
    candidates, repeat. Per pick: index, the score at pick time and the share of |r|^2 it explains (cumulative
    too). The rankings are computed together, reading the vocabulary once per step.

    Deflated candidates are never materialised: with orthonormal picks t_i and the deflated residual rr,
    (P c) . rr = c . rr and |P c|^2 = 1 - sum_i (c . t_i)^2, so a step costs one product of the vocabulary
    with the new pick directions (one column per ranking)."""
    Cf = np.ascontiguousarray(C, dtype=np.float32)
    times_vocab = partial(vocab_products, Cf)
    n = len(signs)
    rr = [np.asarray(r, np.float64) * sg for sg in signs]
    total = float(rr[0] @ rr[0])
    c_dot_rr = times_vocab(rr)  # (V, n), kept up to date
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
            picks[s].append(
                {
                    "index": j,
                    "score_at_pick": float(scores[j]),
                    "explained": explained,
                    "cum_explained": cum[s],
                    "cosine_at_pick": float(scores[j]) / math.sqrt(max(1.0 - (cum[s] - explained), 1e-12)),
                    "direction": t.astype(np.float32),
                }
            )
            basis[s].append(t)
            rr[s] = rr[s] - proj * t
            steps.append((s, j, t, proj))
        live = [s for s, *_ in steps]
        if not live:
            break
        c_dot_t = times_vocab([t for _, _, t, _ in steps])  # (V, live)
        for col, (s, j, _, proj) in enumerate(steps):
            c_dot_rr[:, s] -= proj * c_dot_t[:, col]
            cn2[:, s] -= c_dot_t[:, col] ** 2
            alive[:, s] &= cn2[:, s] > 1e-8
            alive[j, s] = False
    return picks


def side_lists(
    rankings: list[list[dict]], scores: np.ndarray, min_explained: float = MIN_EXPLAINED
) -> dict[str, list[dict]]:
    """Cut each side's ranking (`deflation_rankings` for the signs of SIDES) so that a concept is listed once, on
    the side of its sign: a side's list ends at the first pick whose own centred score (its cosine with the whole
    residual) or whose cosine at its deflation step has the other sign or is zero, or that explains less than
    `min_explained` of |r|^2. (Past that point a greedy ranking picks what is left, whatever its direction.)"""
    out = {}
    for (side, sign), picks in zip(SIDES.items(), rankings):
        kept = []
        for pk in picks:
            if sign * scores[pk["index"]] <= 0 or pk["cosine_at_pick"] <= 0 or pk["explained"] < min_explained:
                break
            kept.append(pk)
        out[side] = kept
    return out


RANKING_COLUMNS = [
    "rank",
    "direction",
    "concept",
    "vocab_index",
    "score_centred",
    "z",
    "raw_cosine",
    "score_at_pick",
    "cosine_at_pick",
    "explained",
    "cum_explained",
]


def _ranking_table(side: str, picks: list[dict], concepts: list[str], s_centred, z, s_raw) -> pd.DataFrame:
    sign = SIDES[side]
    rows = [
        {
            "rank": rank,
            "direction": side,
            "concept": concepts[pk["index"]],
            "vocab_index": pk["index"],
            "score_centred": float(s_centred[pk["index"]]),
            "z": float(z[pk["index"]]),
            "raw_cosine": float(s_raw[pk["index"]]),
            "score_at_pick": float(sign * pk["score_at_pick"]),
            "cosine_at_pick": float(sign * pk["cosine_at_pick"]),
            "explained": pk["explained"],
            "cum_explained": pk["cum_explained"],
        }
        for rank, pk in enumerate(picks, 1)
    ]
    return pd.DataFrame(rows, columns=RANKING_COLUMNS)


def permutation_test(
    sets: ImageSets,
    groups,
    C: np.ndarray,
    design: Contrast,
    sd: np.ndarray,
    lists: dict,
    *,
    permutations: int,
    seed: int,
    deflated_steps: int,
    family: str,
) -> tuple[dict, dict]:
    """The page's family-wise permutation test: ({info}, {side: (p_fwer, p_fwer_deflated) of its listed picks}).

    Per concept the statistic is t, the difference of the two sets' mean similarity to the centred concept over
    its standard error on the test units (`unit_stats.Contrast`); under each shuffle of the labels (the scheme
    of `draw_shuffles`) t is recomputed for EVERY concept of the vocabulary, and the family's statistic is the
    largest |t| (page: both lists, both signs) or the largest t of one sign (family "adds" / "removes").
    p_fwer is the single-step Westfall-Young max-T p: under the null, p_fwer < alpha for any concept of the
    family happens in at most alpha of splits. p_fwer_deflated is the step-down max-T p along each side's
    deflation order (`step_down_p`): the i-th pick is compared with the maximum over the vocabulary without the
    side's earlier picks. The observed labelling goes through the null's own computation as shuffle 0, so a
    shuffle that reproduces it ties with it."""
    t0 = time.perf_counter()
    sides = tuple(SIDES) if family == "page" else (family,)
    sh = draw_shuffles(sets.is_to, groups, permutations, seed, observed=True)  # row 0: the observed labelling
    codes = group_layout(sets.is_to, groups)[0] if design.weights is not None else None
    diffs = shuffled_contrasts(sets, sh, design, codes)  # (K + 1, d), one pass over the images at most
    steps = {s: [pk["index"] for pk in lists[s][:deflated_steps]] for s in sides}
    keep = list(dict.fromkeys(j for s in sides for j in steps[s]))
    null = max_t_null(diffs, sd, C, keep)
    pvals = {}
    for s in sides:
        listed = [pk["index"] for pk in lists[s]]
        seq = step_down_p(null, family, steps[s])
        pvals[s] = (max_t_p(null, family, listed), np.r_[seq, np.full(len(listed) - len(seq), np.nan)])
    info = dict(
        sh.info,
        K=permutations,
        deflated_steps=deflated_steps,
        family=family,
        family_note=FAMILY_NOTES[family],
        statistic=design.describe(),
        max_statistic=MAX_NOTES[family],
        seconds=round(time.perf_counter() - t0, 3),
    )
    info["smallest_attainable_p"] = smallest_attainable_p(
        permutations, info["distinct_shuffles"], family == "page" and info["swap_is_a_shuffle"]
    )
    info["null_max_t_95"] = float(design.student_t(np.quantile(family_max(null, family)[1:], 0.95)))
    return info, pvals


MAX_NOTES = {
    "page": "the largest |t| over the whole vocabulary (both signs) under each shuffle",
    "adds": "the largest t over the whole vocabulary under each shuffle",
    "removes": "the largest -t over the whole vocabulary under each shuffle",
}


def smallest_attainable_p(K: int, distinct: float, swap_symmetric: bool) -> float:
    """The smallest p the test can give: 1/(K + 1), and at least the share of the distinct labellings that give
    the observed statistic: the observed one, and its swap too when swapping the sets is itself a shuffle and the
    statistic (the page's, both signs) takes the same value on it (equal sets: the residual only changes sign)."""
    finite = distinct not in (0, float("inf"))
    return max(1.0 / (K + 1), (2.0 if swap_symmetric else 1.0) / distinct if finite else 0.0)


FAMILY_NOTES = {
    "page": "one family for the page: both lists and every deflation step; p_fwer < alpha anywhere on the page "
    "happens in at most alpha of null splits",
    "adds": "one-sided question, what the residual adds: only the 'adds' list is tested (the 'removes' list "
    "carries no p-values)",
    "removes": "one-sided question, what the residual removes: only the 'removes' list is tested (the 'adds' "
    "list carries no p-values)",
}
STAT_COLUMNS = ("mean_sim_from", "mean_sim_to", "diff", "t", "auroc", "welch_p", "q_bh")


def _candidate_indices(s_centred: np.ndarray, tables: dict, candidates: int) -> np.ndarray:
    """The `candidates` concepts of largest |score|, and every listed concept."""
    cand = np.argsort(-np.abs(s_centred))[: min(candidates, len(s_centred))]
    listed = [j for tab in tables.values() for j in tab["vocab_index"] if j not in set(cand.tolist())]
    return np.r_[cand, np.asarray(list(dict.fromkeys(listed)), int)]


def _significance(
    tables: dict,
    lists: dict,
    sets: ImageSets,
    groups,
    C,
    s_centred,
    *,
    candidates: int,
    permutations: int,
    seed: int,
    method: str,
    deflated_steps: int,
    family: str,
    figure_rows=None,
    queries=None,
    exemplars: int = 0,
) -> tuple[dict, pd.DataFrame, dict]:
    """Per-concept statistics on the test units and the permutation test, written into the tables in place:
    one pass over the sets for the units' statistics, and one more for the shuffled sums when the units are
    images or groups that span the sets (nested groups are shuffled from their means). `method` (the residual's)
    does not enter the test: its statistic is on the units' unit-length image vectors, like the other columns."""
    cand_idx = _candidate_indices(s_centred, tables, candidates)
    seen = collect(sets, groups, C[cand_idx], figure_rows, queries, exemplars)
    units = seen["units"]
    stats, how = unit_statistics(units, C, cand_idx)
    design, sd = _observed_t(stats, units, C, cand_idx)
    perm_info, pvals = {"K": permutations, "family": family, "statistic": design.describe()}, {}
    if permutations > 0:
        perm_info, pvals = permutation_test(
            sets,
            groups,
            C,
            design,
            sd,
            lists,
            permutations=permutations,
            seed=seed,
            deflated_steps=deflated_steps,
            family=family,
        )
    _write_statistics(tables, stats, pvals if permutations > 0 else None)
    return (
        {
            "candidates": int(len(cand_idx)),
            "permutation": perm_info,
            "n_from": sets.n_from,
            "n_to": sets.n_to,
            "images": sets.n,
            "groups": seen["groups"],
            "read_from": sets.source,
            "test_unit": _test_unit(units, how, permutations, family),
            "significant_fwer_05": _significant(tables, "p_fwer"),
            "significant_fwer_deflated_05": _significant(tables, "p_fwer_deflated"),
            "candidates_q_below_05": int((stats["q_bh"] < 0.05).sum()),
        },
        stats,
        seen,
    )


def _observed_t(stats: pd.DataFrame, units: dict, C, cand_idx: np.ndarray) -> tuple[Contrast, np.ndarray]:
    """The units' contrast and each concept's sd along it, (design, sd); the candidates' t goes into `stats`."""
    design = contrast(units)
    sd = design.sd(C)
    observed = np.asarray(C[cand_idx], np.float64) @ design.diff
    t = np.divide(observed, sd[cand_idx], out=np.zeros(len(cand_idx)), where=sd[cand_idx] > 0)
    stats["t"] = design.student_t(t)
    return design, sd


def _write_statistics(tables: dict, stats: pd.DataFrame, pvals: dict | None) -> None:
    """Each listed concept's STAT_COLUMNS into its table, and its p-values from `pvals` (None: no test run)."""
    for side, tab in tables.items():
        rows = stats.loc[tab["vocab_index"].to_numpy(int)]
        for col in STAT_COLUMNS:
            tab[col] = rows[col].to_numpy()
        if pvals is not None:
            tab["p_fwer"], tab["p_fwer_deflated"] = pvals.get(side, (np.full(len(tab), np.nan),) * 2)


def _test_unit(units: dict, how: dict, permutations: int, family: str) -> dict:
    """What the test counted and shuffled, for the result's info."""
    test_unit = {k: units[k] for k in ("unit", "n_from", "n_to", "effective_n", "shuffle")}
    test_unit.update(
        shuffle=units["shuffle"] if permutations > 0 else "none",
        family=family,
        effective_n=round(test_unit["effective_n"], 1),
        **how,
    )
    return test_unit


def _significant(tables: dict, col: str) -> int:
    """How many listed concepts, both sides together, have `col` (a p-value column) below 0.05."""
    return int(sum((t[col] < 0.05).sum() for t in tables.values() if col in t))


FIGURE_CONCEPTS = {"adds": 5, "removes": 3}  # the similarity histograms and exemplars show these many per side


def explain_vectors(
    r: np.ndarray,
    E: np.ndarray,
    concepts: list[str],
    x_from: "np.ndarray | ImageSets | None" = None,
    x_to: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    *,
    top: int = 30,
    candidates: int = 500,
    permutations: int = 1000,
    seed: int = 0,
    method: str = "rave",
    deflated_steps: int = 10,
    family: str = "page",
    min_explained: float = MIN_EXPLAINED,
    exemplars: int = 0,
) -> dict:
    """Rank concepts for residual `r` (d,) against text embeddings `E` (V, d) of `concepts`.

    Each side's list is a greedy deflation, cut where its picks stop pointing its way (`side_lists`). With the
    two sets' image vectors, add per-concept statistics on the test units (`test_units`: images, or groups) for
    the top `candidates` (t among them) and a max-T permutation test of the whole page (`permutation_test`;
    `family` "adds" or "removes" asks a one-sided question instead). `groups` (for the concatenation
    [x_from; x_to]) restricts the shuffles to exchangeable units. The step-down p (p_fwer_deflated) covers the
    first `deflated_steps` picks of each side. `method` is the residual's; the test does not depend on it.

    `x_from` may be an `ImageSets` (then `x_to` is None): the sets are then read block by block, twice, and
    never held (a run of millions of images). With the sets, the result also holds "figure" (concept indices and
    each image's similarity to them, per set) and, with `exemplars` > 0, "nearest" (per set and figure concept,
    the `exemplars` images nearest to its text embedding: (scores, positions within the set))."""
    sets = _checked_sets(r, E, concepts, x_from, x_to, family, min_explained)
    E = unit_rows32(E)
    out, tables, lists, C, s_centred = _ranking(l2n(np.asarray(r, np.float64)), E, concepts, top, min_explained)
    if sets is not None and sets.n_from and sets.n_to:
        options = dict(candidates=candidates, permutations=permutations, seed=seed, method=method)
        options.update(deflated_steps=deflated_steps, family=family, exemplars=exemplars)
        _add_significance(out, tables, lists, sets, groups, C, E, s_centred, **options)
    out["adds"], out["removes"] = tables["adds"], tables["removes"]
    out["centred"] = C
    out["scores_centred"] = s_centred
    return out


def _checked_sets(r, E, concepts, x_from, x_to, family: str, min_explained: float) -> ImageSets | None:
    """`explain_vectors`' inputs checked, and its two sets as `ImageSets` (None without them)."""
    if E.shape[0] != len(concepts):
        raise ConfigError(f"{len(concepts)} concepts but {E.shape[0]} embeddings.")
    if E.shape[1] != len(r):
        raise IncompatibleRunError(
            f"Residual has dimension {len(r)} but the text embeddings {E.shape[1]}: different models."
        )
    if family not in FAMILIES:
        raise ConfigError(f"The 'family' parameter must be one of {FAMILIES}. Got {family!r} instead.")
    if not 0 <= min_explained < 1:
        raise ConfigError(f"The 'min_explained' parameter must be a float in [0, 1). Got {min_explained!r} instead.")
    sets = x_from if isinstance(x_from, ImageSets) else None
    if sets is None and x_from is not None and x_to is not None:
        sets = ImageSets.from_arrays(x_from, x_to)
    for name, arr in (("r", r), ("E", E), ("x_from", x_from), ("x_to", x_to)):
        if isinstance(arr, np.ndarray) and not np.isfinite(arr).all():
            raise ConfigError(f"The '{name}' input of explain_vectors holds NaN or infinite values.")
    return sets


def _ranking(r: np.ndarray, E: np.ndarray, concepts: list[str], top: int, min_explained: float):
    """Unit residual `r` against the unit vocabulary `E`: the result begun ({"info"}), each side's table and
    list, the centred vocabulary C and the centred scores: (out, tables, lists, C, s_centred)."""
    C, text_mean = centre(E)
    s_centred = C @ r.astype(np.float32)
    s_raw = E @ r.astype(np.float32)
    z = (s_centred - s_centred.mean()) / (s_centred.std() or 1.0)
    out: dict = {
        "info": {
            "vocabulary_size": len(concepts),
            "text_mean_norm": float(np.linalg.norm(text_mean)),
            "score": "cosine of r with the centred, renormalised concept embedding",
            "min_explained": min_explained,
        }
    }
    lists = side_lists(deflation_rankings(r, C, top, tuple(SIDES.values())), s_centred, min_explained)
    tables = {side: _ranking_table(side, lists[side], concepts, s_centred, z, s_raw) for side in SIDES}
    return out, tables, lists, C, s_centred


def _add_significance(out: dict, tables: dict, lists: dict, sets: ImageSets, groups, C, E, s_centred, **options):
    """`_significance` (`options`: its keywords) into `out`: info, candidate_stats, figure and nearest."""
    fig = [int(j) for side, n in FIGURE_CONCEPTS.items() for j in tables[side]["vocab_index"].iloc[:n]]
    info, out["candidate_stats"], seen = _significance(
        tables, lists, sets, groups, C, s_centred, figure_rows=C[fig], queries=E[fig], **options
    )
    out["info"].update(info)
    out["figure"] = {"index": fig, "from": seen["figure"][0], "to": seen["figure"][1]}
    out["nearest"] = {"from": seen["nearest"][0], "to": seen["nearest"][1]}


_KERNELS = None


def _kernels():
    """The deflation's numba kernel, compiled (or loaded from numba's cache) on first use."""
    global _KERNELS
    if _KERNELS is None:
        from types import SimpleNamespace

        import numba

        @numba.njit(parallel=True, cache=True, fastmath={"nnan", "nsz", "reassoc", "contract"})
        def times_vocab(C, T, out):
            """out = C @ T.T for a tall C (V, d) and a few rows T (n, d)."""
            for v in numba.prange(C.shape[0]):
                for j in range(T.shape[0]):
                    acc = np.float32(0)
                    for k in range(C.shape[1]):
                        acc += C[v, k] * T[j, k]
                    out[v, j] = acc

        _KERNELS = SimpleNamespace(times_vocab=times_vocab)
    return _KERNELS
