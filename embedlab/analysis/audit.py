"""The slice audit as a computation on arrays: every slice of a collection against its rest, described in words,
tested with one audit-wide permutation null (`audit_stats`). `audit_vectors` takes the image vectors, their metadata
and a vocabulary's text embeddings and returns an `AuditResult`; reading runs and writing files is
`embedlab.reports.audit`'s.

Slices come from metadata (`slices.define_slices`) and, with `discover`, from k-means in embedding space: the units
are split in two halves (seeded, by group), the clusters are found on one and described and tested on the other, so
no slice is described or tested with the data that found it. A cluster differs from its rest in embedding space by
construction, so a discovered slice gets an effect and concepts but no embedding test; with a score it gets the
score test (is the score different in the cluster?): the test half's units join a cluster by their vectors alone, so
under the null (a score unrelated to the vectors) their scores are exchangeable whatever the clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from embedlab.analysis import audit_stats as st
from embedlab.analysis.audit_result import AuditResult
from embedlab.analysis.discovery import discover_slices
from embedlab.analysis.explain import centre, unit_rows32
from embedlab.analysis.formula import group_codes, l2n
from embedlab.analysis.permutation import SIDES
from embedlab.analysis.slices import Slice, SliceFamily, check_columns, define_slices, unit_support
from embedlab.errors import ConfigError


@dataclass
class AuditConfig:
    """The audit's choices (each is recorded in audit.json)."""

    bins: int = 4  # quantile bins of a numeric column
    depth: int = 1  # conjunctions of up to this many predicates
    min_groups: int = 2  # units (groups, else images) required inside a slice and outside it
    discover: int = 0  # k-means clusters found on the discovery half (0: none)
    permutations: int = 999
    seed: int = 0
    top: int = 10  # concepts listed per slice and side
    alpha: float = 0.05  # family-wise level of the headline claims
    q: float = 0.1  # false discovery rate of the exploratory list
    bootstrap: int = 200  # group-bootstrap draws of each slice's effect
    max_slices: int = 2000
    exemplars: int = 6
    engine: str = "local"  # the pass over the runs' vectors: local, or ray (one task per shard)
    memory_budget: str = "4G"  # unit vectors, slice weights and permutation table must fit in this
    screen: bool = False  # only the streamed pass: images as units, slices ranked, nothing tested


@dataclass
class Units:
    codes: np.ndarray  # (n,) each image's unit
    U: np.ndarray  # (G, d) mean unit vector per unit
    sizes: np.ndarray  # (G,)
    kind: str  # "groups" or "images"

    @property
    def G(self) -> int:
        return len(self.U)


def make_units(X: np.ndarray, groups) -> Units:
    codes = group_codes(None if groups is None else np.asarray(groups), len(X))
    G = int(codes.max()) + 1 if len(codes) else 0
    U, sizes = st.unit_means(X, codes, G)
    return Units(codes, U, sizes, "groups" if groups is not None and G < len(X) else "images")


def make_paired_units(X: np.ndarray, groups, is_to: np.ndarray) -> Units:
    """Units for auditing a residual: per group, the difference of its 'to' and 'from' images' mean unit vectors
    (the group's own residual). Every group must hold images of both sets."""
    codes = group_codes(None if groups is None else np.asarray(groups), len(X))
    G = int(codes.max()) + 1 if len(codes) else 0
    is_to = np.asarray(is_to, bool)
    n_to = np.bincount(codes, weights=is_to, minlength=G)
    n_all = np.bincount(codes, minlength=G)
    lacking = int(((n_to == 0) | (n_to == n_all)).sum())
    if groups is None or lacking:
        raise ConfigError(
            f"Auditing a residual compares each group's own 'to' minus 'from' difference, so every group must hold "
            f"images of both sets; {lacking if groups is not None else 'no'} group(s) do not. Fix: pass groups that "
            "span both sets (pairs, scenes taken both ways), or audit each set on its own."
        )
    U_to, _ = st.unit_means(X[is_to], codes[is_to], G)
    U_from, _ = st.unit_means(X[~is_to], codes[~is_to], G)
    return Units(codes, U_to - U_from, n_all.astype(np.float64), "paired groups")


def slice_residual_cosines(X: np.ndarray, is_to: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """Per slice, the cosine between the residual (RAVE) within the slice and the residual over all images: how far
    a slice's own residual departs from the global one."""
    unit = l2n(np.asarray(X, np.float64))
    is_to = np.asarray(is_to, bool)

    def sums(m):
        f, t = m & ~is_to, m & is_to
        return unit[f].sum(0), int(f.sum()), unit[t].sum(0), int(t.sum())

    return st.residual_cosines([sums(m) for m in masks], sums(np.ones(len(unit), bool)))


def unit_values(values: pd.Series | np.ndarray, codes: np.ndarray, G: int, what: str) -> np.ndarray:
    """Per unit the most common value of a per-image column (strata), or refuse one that varies within a unit."""
    s = pd.Series(np.asarray(values)).astype(str)
    frame = pd.DataFrame({"u": codes, "v": s})
    n_per = frame.groupby("u")["v"].nunique()
    if (n_per > 1).any():
        raise ConfigError(
            f"The {what} column varies within {int((n_per > 1).sum())} group(s); it must be constant within a group "
            "(the group is the unit that is permuted). Fix: pass a column that is constant per group."
        )
    first = frame.drop_duplicates("u").set_index("u")["v"].reindex(range(G))
    return pd.factorize(first)[0]


def _concept_rows(s: int, sl: Slice, r: np.ndarray, C: np.ndarray, concepts, ctx: dict) -> list[dict]:
    """The slice's top concepts per side, ranked by their t on the test units (the statistic the audit tests: a
    concept that separates every group of the slice from the rest ranks above one that a few groups carry far),
    with the centred cosine of the slice's difference vector as the descriptive score."""
    score = (C @ r.astype(np.float32)).astype(np.float64)
    t = ctx["t"][s]
    inside, outside = ctx["inside"][:, s], ctx["outside"][:, s]
    rows = []
    for side, sign in SIDES.items():
        order = [j for j in np.argsort(-sign * t, kind="stable")[: ctx["top"]] if sign * t[j] > 0]
        for rank, j in enumerate(order, 1):
            sims = ctx["sims"](j)
            rows.append(
                {
                    "slice_id": s,
                    "slice": sl.name,
                    "side": side,
                    "rank": rank,
                    "concept": concepts[j],
                    "vocab_index": int(j),
                    "score": float(score[j]),
                    "t": float(t[j]),
                    "auroc": _auroc(sims[inside], sims[outside]),
                    "mean_sim_slice": float(sims[inside].mean()) if inside.any() else float("nan"),
                    "mean_sim_rest": float(sims[outside].mean()) if outside.any() else float("nan"),
                    "p": float(ctx["p_concept"][s, j]),
                    "p_fwer": float(ctx["p_fwer_concept"][s, j]),
                    "q": float(ctx["q_concept"][s, j]),
                }
            )
    return rows


def _auroc(a: np.ndarray, b: np.ndarray) -> float:
    """P(a unit of the slice scores above one of the rest), ties half (the Mann-Whitney U over its maximum)."""
    from scipy.stats import rankdata

    if not len(a) or not len(b):
        return float("nan")
    ranks = rankdata(np.r_[a, b])[: len(a)]
    return float((ranks.sum() - len(a) * (len(a) + 1) / 2) / (len(a) * len(b)))


def _slice_table(fam: SliceFamily, units: Units, des: st.Design, hard, cfg: AuditConfig) -> pd.DataFrame:
    rows = []
    for s, sl in enumerate(fam.slices):
        inside, outside = hard[:, s], hard[:, s + len(fam.slices)]
        n_in, n_out = unit_support(sl.mask, units.codes, units.G)
        boot = st.bootstrap_effect(des.U, inside, outside, cfg.bootstrap, cfg.seed + s) if cfg.bootstrap else []
        effect = st.debiased_effect(des.U, inside, outside)
        # the draws are centred on the undebiased |d|^2 (resampling adds back the noise the estimate removes):
        # shift them onto the estimate before taking the percentiles
        lo, hi = np.quantile(boot, [0.025, 0.975]) - (np.mean(boot) - effect) if len(boot) else (np.nan, np.nan)
        rows.append(
            {
                "slice_id": s,
                "name": sl.name,
                "kind": sl.kind,
                "columns": ",".join(sl.columns),
                "n_images": sl.n_images,
                "n_groups": int(inside.sum()),
                "n_images_rest": int(units.sizes[outside].sum()),
                "n_groups_rest": int(outside.sum()),
                "effect": effect,
                "effect_lo": float(lo),
                "effect_hi": float(hi),
                "support_groups": min(n_in, n_out),
            }
        )
    return pd.DataFrame(rows)


def _tests(fam, des, C, perms, cfg, columns: pd.DataFrame) -> dict:
    """Run the shared permutations and turn them into every p-value of the audit."""
    kinds = np.array([s.kind for s in fam.slices])
    tested = kinds != "discovered"
    null = st.run_permutations(des, C, perms, tested)
    S = len(fam.slices)
    p_slice = np.where(tested, st.slice_p(null.T), np.nan)
    sides = {}
    if tested.any():
        sides["slices"] = (null.T[:, tested].max(1), null.T[0])
        sides["concepts"] = (null.t_max, np.abs(null.t_obs).ravel())
    if null.score_t is not None:
        sides["scores"] = (np.abs(null.score_t).max(1), np.abs(null.score_t[0]))
    adj = st.audit_wide_p(sides) if sides else {}
    p_fwer_c = adj.get("concepts", np.full(S * len(C), np.nan)).reshape(S, len(C))
    p_fwer_c[~tested] = np.nan
    # a slice differs when its omnibus statistic or any of its concepts does: claims of one family, one control
    omnibus = adj.get("slices", np.full(S, np.nan))
    p_fwer = np.where(tested, np.fmin(omnibus, p_fwer_c.min(1, initial=np.inf)), np.nan)
    p_concept = null.t_count / len(perms)
    q_s = np.full(S, np.nan)
    q_c = np.full((S, len(C)), np.nan)
    if tested.any():
        q_s[tested], q_c[tested] = st.hierarchical_q(p_slice[tested], p_concept[tested], cfg.q)
    col_p, col_stat = {}, {}
    for col in columns["column"]:  # the column's omnibus statistic: the sum of its slices' T (mean: its slice count)
        member = [i for i, sl in enumerate(fam.slices) if sl.columns == (col,)]
        if member:
            col_p[col] = st.slice_p(null.T[:, member].sum(1, keepdims=True))[0]
            col_stat[col] = float(null.T[0, member].sum())
    out = {"null": null, "tested": tested, "p": p_slice, "p_fwer": p_fwer, "q": q_s, "column_p": col_p}
    out.update(column_stat=col_stat, p_fwer_omnibus=np.where(tested, omnibus, np.nan))
    out.update(p_fwer_concept=p_fwer_c, p_concept=p_concept, q_concept=q_c)
    if null.score_t is not None:
        out["score_p"] = st.slice_p(np.abs(null.score_t))
        out["score_p_fwer"] = adj["scores"]
    return out


def audit_vectors(
    X: np.ndarray,
    meta: pd.DataFrame,
    by: list[str],
    E: np.ndarray,
    concepts: list[str],
    *,
    groups=None,
    within=None,
    scores=None,
    sets=None,
    config: AuditConfig | None = None,
) -> AuditResult:
    """Audit every slice of the images X (n, d) over the metadata columns `by` of `meta` (n rows), describing each
    with the vocabulary `concepts` (text embeddings E (V, d)). `groups`, `within` and `scores` are per-image arrays
    (the group of correlated images, a confounder to stratify by, a per-image score such as a loss).

    `sets` (per image, True for the 'to' set, False for 'from') audits the residual instead: each group's unit is its
    own to-minus-from difference, so a slice differs when the residual within it differs from the residual in the
    rest (does the backlit -> well-lit residual carry something extra in some slice?)."""
    if len(meta) != len(X):
        raise ConfigError(f"{len(meta)} metadata rows but {len(X)} vectors.")
    if E.shape[1] != X.shape[1]:
        raise ConfigError(f"The vocabulary's embeddings have dimension {E.shape[1]}, the images {X.shape[1]}.")
    check_columns(meta, by, "The audited images' metadata")
    units = make_units(X, groups) if sets is None else make_paired_units(X, groups, sets)
    result = audit_units(units, meta, by, E, concepts, within=within, scores=scores, config=config)
    if sets is not None:
        result.slices["residual_cos_global"] = slice_residual_cosines(X, sets, [result.masks[s] for s in result.masks])
        result.info["audits"] = PAIRED
    return result


PAIRED = "the residual: each group's to-minus-from difference, slice against rest"


def audit_units(
    units: Units,
    meta: pd.DataFrame,
    by: list[str],
    E: np.ndarray,
    concepts: list[str],
    *,
    family: SliceFamily | None = None,
    config: AuditConfig | None = None,
    within=None,
    scores=None,
) -> AuditResult:
    """`audit_vectors` from the test units' mean vectors (`Units`: what one streamed pass over a run gives, so that
    no image vector is held). `family`: the metadata slices when already defined (`define_slices`)."""
    cfg = config or AuditConfig()
    if family is None:
        check_columns(meta, by, "The audited images' metadata")
        family = define_slices(meta, by, units.codes, bins=cfg.bins, depth=cfg.depth, min_groups=cfg.min_groups,
                               max_slices=cfg.max_slices)  # fmt: skip
    fam = SliceFamily(list(family.slices), family.columns, list(family.skipped))
    y = None
    if scores is not None:
        scores = np.asarray(scores, np.float64)
        if not np.isfinite(scores).all():
            raise ConfigError(
                f"The 'score' column has {int((~np.isfinite(scores)).sum())} missing or infinite value(s). Fix: give "
                "every audited image a score, or audit a subset that has one."
            ).naming("score")
        y = np.bincount(units.codes, weights=scores, minlength=units.G) / units.sizes
    split = disc = None
    if cfg.discover:
        found, split, disc = discover_slices(units, cfg.discover, cfg.seed, y, cfg.min_groups)
        fam.slices += found
    check_family(fam, cfg)
    return _assemble(meta, units, fam, E, concepts, within, y, disc, split, cfg)


def check_family(fam: SliceFamily, cfg: AuditConfig) -> None:
    """Refuse an audit with no slice to test (every predicate lacked the support)."""
    if not fam.slices:
        raise ConfigError(
            f"No slice has {cfg.min_groups} units inside and outside it ({'; '.join(fam.skipped[:5])}). Fix: lower "
            "'min_groups', audit other columns, or add images."
        ).naming("min_groups")


def _assemble(meta, units, fam, E, concepts, within, y, disc, split, cfg) -> AuditResult:
    from embedlab.analysis.slices import unit_fractions

    S = len(fam.slices)
    F = unit_fractions(fam.slices, units.codes, units.G)
    active = np.ones_like(F, bool)
    found = np.array([s.kind == "discovered" for s in fam.slices])
    if disc is not None:
        active[:, found] = disc.test[:, None]
    strata = None if within is None else unit_values(within, units.codes, units.G, "'within'")
    des = st.design(units.U, st.contrast_weights(F, active), strata, y)
    C, _ = centre(unit_rows32(E))
    perms = st.within_strata_permutations(des.strata, cfg.permutations, cfg.seed)
    tests = _tests(fam, des, C, perms, cfg, fam.columns)
    inside = _hard(F, active)
    hard = np.c_[inside, active & ~inside & (F < 1)]  # disjoint: a unit counts inside or in the rest, never both
    table = _slice_table(fam, units, des, hard, cfg)
    table["statistic"] = tests["null"].T[0]
    for key in ("p", "p_fwer", "p_fwer_omnibus", "q"):
        table[key] = tests[key]
    table["column_p"] = [tests["column_p"].get(sl.columns[0], np.nan) if len(sl.columns) == 1 else np.nan
                         for sl in fam.slices]  # fmt: skip
    if y is not None:
        _score_columns(table, y, hard, S, tests)
    D = des.W.T @ des.U
    # each unit's similarity to concept j, computed for the listed concepts only (never units x vocabulary)
    ctx = {"top": cfg.top, "sims": lambda j: des.U @ C[j].astype(np.float64), "t": tests["null"].t_obs,
           "inside": hard[:, :S], "outside": hard[:, S:], **{k: tests[k] for k in ("p_concept", "p_fwer_concept",
           "q_concept")}}  # fmt: skip
    rows = [r for s, sl in enumerate(fam.slices) for r in _concept_rows(s, sl, l2n(D[s]), C, concepts, ctx)]
    concept_table = pd.DataFrame(rows)
    _listing(table, fam, D, concept_table, cfg.alpha)
    columns = fam.columns.assign(
        statistic=[tests["column_stat"].get(c, np.nan) for c in fam.columns["column"]],
        p=[tests["column_p"].get(c, np.nan) for c in fam.columns["column"]],
    )
    info = _info(units, fam, cfg, within, split, len(concepts), y is not None)
    result = AuditResult(table, concept_table, columns, info)
    result.jaccard = _jaccard_table(table, fam)
    result.masks = {s: sl.mask for s, sl in enumerate(fam.slices)}
    result.figures, result.exemplars = _figures(concept_table, ctx, des.U, units, fam, D, cfg.exemplars, y)
    return result


def _hard(F: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Units counted in a slice (or its rest) for its effect, bootstrap and AUROC: those with at least half their
    images in it, or, when a slice's images are a minority of every unit (a column that varies within groups), the
    units with the largest share."""
    top = np.where(active, F, -1.0).max(0)
    return (F >= np.minimum(0.5, top)) & (F > 0) & active


def _score_columns(table, y, hard, S, tests) -> None:
    diffs, los, his = [], [], []
    for s in range(S):
        a, b = y[hard[:, s]], y[hard[:, S + s]]
        diffs.append(a.mean() - b.mean())
        se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 else np.nan
        los.append(diffs[-1] - 1.96 * se)
        his.append(diffs[-1] + 1.96 * se)
    table["score_diff"], table["score_lo"], table["score_hi"] = diffs, los, his
    table["score_p"], table["score_p_fwer"] = tests["score_p"], tests["score_p_fwer"]


def _listing(table: pd.DataFrame, fam: SliceFamily, D: np.ndarray, concepts: pd.DataFrame, alpha: float) -> None:
    """`listed`, `duplicates`, `overlaps` and `top_concepts`: a slice is listed unless its difference vector is
    mostly the one of a stronger (larger omnibus statistic) overlapping significant slice listed before it."""
    order = table.sort_values(["statistic", "effect"], ascending=False)["slice_id"].tolist()
    masks = [sl.mask for sl in fam.slices]
    J = st.jaccard(masks)
    repeats = st.survives_deflation(D, order, J, (table["p_fwer"] < alpha).to_numpy())
    names = table["name"].tolist()
    table["listed"] = [s not in repeats for s in table["slice_id"]]
    table["duplicates"] = [names[repeats[s]] if s in repeats else "" for s in table["slice_id"]]
    table["overlaps"] = [
        "; ".join([f"{names[j]}: {J[s, j]:.2f}" for j in np.argsort(-J[s]) if j != s and J[s, j] > 0.1][:3])
        for s in range(len(names))
    ]
    top = {}
    if not concepts.empty:
        for s, g in concepts.sort_values(["slice_id", "side", "rank"]).groupby("slice_id"):
            adds = g[g.side == "adds"]["concept"].head(3).tolist()
            removes = g[g.side == "removes"]["concept"].head(2).tolist()
            top[s] = "more " + ", ".join(adds) + ("; less " + ", ".join(removes) if removes else "") if adds else (
                "less " + ", ".join(removes) if removes else "")  # fmt: skip
    table["top_concepts"] = [top.get(s, "") for s in table["slice_id"]]


def _jaccard_table(table: pd.DataFrame, fam: SliceFamily, most: int = 12) -> pd.DataFrame:
    listed = table[table["listed"]].sort_values("effect", ascending=False).head(most)
    ids = listed["slice_id"].tolist()
    if len(ids) < 2:
        return pd.DataFrame()
    J = st.jaccard([fam.slices[s].mask for s in ids])
    return pd.DataFrame(J, index=listed["name"], columns=listed["name"])


def _figures(concepts, ctx, U: np.ndarray, units: Units, fam, D, n_exemplars: int, y=None):
    """Per slice: its units' similarity to its first concept, inside and outside (the page's histograms), and the
    first image of each of its exemplar units: without a score its most typical units (largest projection of the
    unit's vector on the slice's difference vector), so that an exemplar shows what the slice has more of; with a
    score its worst units (highest unit score first, ties by typicality), the examples a user looks at to see what
    fails. Only the order inside a slice changes: no slice's membership or test depends on it."""
    figures, exemplars = {}, {}
    first_row = np.zeros(units.G, np.int64)
    present, first = np.unique(units.codes, return_index=True)
    first_row[present] = first
    for s, sl in enumerate(fam.slices):
        mine = concepts[concepts["slice_id"] == s] if not concepts.empty else concepts
        if len(mine):
            top = mine.sort_values(["rank", "side"]).iloc[0]
            sims = ctx["sims"](int(top["vocab_index"]))
            figures[s] = {"concept": str(top["concept"]), "slice": sims[ctx["inside"][:, s]],
                          "rest": sims[ctx["outside"][:, s]]}  # fmt: skip
        inside = np.flatnonzero(ctx["inside"][:, s])
        if n_exemplars and len(inside):
            proj = U[inside] @ l2n(D[s])
            order = np.argsort(-proj) if y is None else np.lexsort((-proj, -y[inside]))
            exemplars[s] = first_row[inside[order[:n_exemplars]]].tolist()
    return figures, exemplars


def _info(units, fam, cfg, within, split, n_concepts: int, has_score: bool) -> dict:
    tested = sum(s.kind != "discovered" for s in fam.slices)
    return {
        "unit": units.kind,
        "n_units": units.G,
        "n_images": int(len(units.codes)),
        "permutations": cfg.permutations,
        "seed": cfg.seed,
        "family_slices": tested,
        "family_concepts": n_concepts,  # per slice: the family is family_slices x family_concepts x both signs
        "family_sides": ["slices", "concepts"] + (["scores"] if has_score else []),
        "within": within is not None,
        "split": split,
        "alpha": cfg.alpha,
        "q": cfg.q,
        "vocabulary": n_concepts,
        "skipped": fam.skipped,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    }
