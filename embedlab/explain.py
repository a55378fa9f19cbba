"""Read a residual in words: centred-vocabulary scores, greedy deflation, and significance.

Pure functions on arrays (`centre`, `deflation_ranking`, `permutation_null`, `concept_statistics`,
`explain_vectors`) carry the method; `explain_residual()` does the I/O (residual sidecar, run folders, model,
cached text embeddings) and writes report.{json,csv,md,html}.
"""
from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import pandas as pd

from .errors import ConfigError, IncompatibleRunError
from .residual import l2n

log = logging.getLogger(__name__)


def centre(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the vocabulary mean (the text side of the modality gap) and renormalise: (C, mean)."""
    mu = E.mean(0, dtype=np.float64)
    return l2n(E - mu).astype(np.float32), mu


def deflation_ranking(r: np.ndarray, C: np.ndarray, n_top: int, sign: float = 1.0) -> list[dict]:
    """Greedy, non-redundant ranking (TextSpan-style): pick the concept with the largest sign*cos with the
    current residual, project it out of the residual and of every candidate, renormalise candidates, repeat.

    Deflated candidates are never materialised: with orthonormal picks t_i and the deflated residual rr,
    (P c) . rr = c . rr and |P c|^2 = 1 - sum_i (c . t_i)^2, so each step costs two matrix-vector products.
    Returns per pick: index, the score at pick time and the fraction of |r|^2 it explains (cumulative too)."""
    rr = np.asarray(r, np.float64) * sign
    total = float(rr @ rr)
    Cf = np.ascontiguousarray(C, dtype=np.float32)
    C64 = np.asarray(C, np.float64)
    cn2 = np.ones(len(C), np.float64)
    alive = np.ones(len(C), bool)
    basis: list[np.ndarray] = []
    picks, cum = [], 0.0
    c_dot_rr = (Cf @ rr.astype(np.float32)).astype(np.float64)      # kept up to date by rank-one corrections
    for _ in range(min(n_top, len(C))):
        scores = c_dot_rr / np.sqrt(np.maximum(cn2, 1e-12))
        scores[~alive] = -np.inf
        j = int(np.argmax(scores))
        if not np.isfinite(scores[j]):
            break
        t = C64[j] - sum((C64[j] @ b) * b for b in basis) if basis else C64[j].copy()
        t /= np.linalg.norm(t) or 1.0
        proj = float(rr @ t)
        explained = proj * proj / total if total else 0.0
        cum += explained
        picks.append({"index": j, "score_at_pick": float(scores[j]), "explained": explained, "cum_explained": cum,
                      "cosine_at_pick": float(scores[j]) / math.sqrt(max(1.0 - (cum - explained), 1e-12)),
                      "direction": t.astype(np.float32)})
        basis.append(t)
        rr = rr - proj * t
        c_dot_t = (Cf @ t.astype(np.float32)).astype(np.float64)
        c_dot_rr -= proj * c_dot_t
        cn2 -= c_dot_t ** 2
        alive &= cn2 > 1e-8
        alive[j] = False
    return picks


def _log_binom(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def permutation_labels(is_to: np.ndarray, groups: np.ndarray | None, n_perm: int, seed: int) -> tuple[np.ndarray, dict]:
    """(n_perm, n) boolean 'to' labels under the null, and how they were drawn.

    Groups nested in one set are permuted as units; groups that span both sets (pairs, scenes photographed
    both ways) have labels shuffled within each group; without groups, images are permuted."""
    rng = np.random.default_rng(seed)
    n = len(is_to)
    if groups is None:
        codes = np.arange(n)
    else:
        codes = pd.factorize(pd.Series(groups).astype(str))[0]
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


def permutation_null(X: np.ndarray, labels: np.ndarray, C: np.ndarray, method: str = "rave",
                     deflations: dict | None = None, chunk: int = 64) -> dict:
    """For each shuffle: recompute the residual and score the whole vocabulary (never more than chunk x
    vocabulary scores at once). Returns the max and min score per shuffle, and, for each ranking side in
    `deflations` ({side: (sign, picked indices, orthonormal pick directions (m, d))}), the best cosine at
    each deflation step when the shuffled residual is deflated by the same picks (a sequential null)."""
    Xn = l2n(X) if method == "rave" else np.asarray(X, np.float64)
    total = Xn.sum(0)
    n_to = labels.sum(1, keepdims=True).astype(np.float64)
    n_from = labels.shape[1] - n_to
    K = len(labels)
    out = {"max": np.empty(K), "min": np.empty(K)}
    Cf = np.ascontiguousarray(C, dtype=np.float32)
    deflations = deflations or {}
    for side, (_, idx, T) in deflations.items():
        out["seq_" + side] = np.empty((K, len(idx)))
    for s in range(0, K, chunk):
        L = labels[s:s + chunk].astype(np.float64)
        sum_to = L @ Xn
        sum_from = total - sum_to
        if method == "rave":
            R = l2n(l2n(sum_to) - l2n(sum_from)).astype(np.float32)
        else:
            R = l2n(sum_to / n_to[s:s + chunk] - sum_from / n_from[s:s + chunk]).astype(np.float32)
        S0 = R @ Cf.T
        out["max"][s:s + chunk] = S0.max(1)
        out["min"][s:s + chunk] = S0.min(1)
        for side, (sign, idx, T) in deflations.items():
            if len(idx):
                A = np.ascontiguousarray((Cf @ T.T).T, dtype=np.float32)          # (m, V): concept . pick
                B = np.ascontiguousarray(sign * (R @ T.T), dtype=np.float32)       # (K, m): shuffled r . pick
                out["seq_" + side][s:s + chunk] = sequential_max(S0, sign, A, B, np.asarray(idx, np.int64))
    return out


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
    deflation step when the shuffled residual and the concepts are deflated by the observed picks. One fused
    pass per row (numba), so a row of the vocabulary stays in cache across the steps."""
    inv, pen = _step_tables(A, picked)
    out = np.empty((S0.shape[0], A.shape[0]))
    _sequential_max_kernel()(np.ascontiguousarray(S0, np.float32), np.float32(sign), A, B, inv, pen, out)
    return out


_KERNEL = None


def _sequential_max_kernel():
    global _KERNEL
    if _KERNEL is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def kernel(S0, sign, A, B, inv, pen, out):
            K, V = S0.shape
            m = A.shape[0]
            for k in numba.prange(K):
                row = S0[k] * sign
                rn2 = 1.0
                for i in range(m):
                    best = -np.inf
                    for v in range(V):
                        val = row[v] * inv[i, v] + pen[i, v]
                        if val > best:
                            best = val
                    out[k, i] = best / np.sqrt(max(rn2, 1e-12))
                    b = B[k, i]
                    for v in range(V):
                        row[v] -= b * A[i, v]
                    rn2 -= float(b) * float(b)

        _KERNEL = kernel
    return _KERNEL


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
    E = l2n(E).astype(np.float32)
    C, text_mean = centre(E)
    s_centred = C @ r.astype(np.float32)
    s_raw = E @ r.astype(np.float32)
    z = (s_centred - s_centred.mean()) / (s_centred.std() or 1.0)
    out: dict = {"info": {"vocabulary_size": len(concepts), "text_mean_norm": float(np.linalg.norm(text_mean)),
                          "score": "cosine of r with the centred, renormalised concept embedding"}}
    tables, picks_by_side = {}, {}
    for side, sign in (("adds", 1.0), ("removes", -1.0)):
        picks = picks_by_side[side] = deflation_ranking(r, C, top, sign)
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
        for side in tables:
            extra = [j for j in tables[side]["vocab_index"] if j not in set(cand_idx)]
            cand_idx = np.r_[cand_idx, np.asarray(extra, int)]
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
                          for side, sign in (("adds", 1.0), ("removes", -1.0))}
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
                sign = 1.0 if side == "adds" else -1.0
                stat = sign * tab["score_centred"].to_numpy()
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
        g = pd.concat([run_a.metadata.loc[mask_a, "group"], run_b.metadata.loc[mask_b, "group"]]).astype(str).to_numpy()
        groups = g
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
    html_exemplars = [{**ex, **{s: [dict(it, thumb=rep.thumb_data_uri(it["file"])) for it in ex[s]] for s in ("from", "to")}}
                      for ex in report["exemplars"]]
    report["files"] = rep.write_report(out, report, figures, html_exemplars)
    return report
