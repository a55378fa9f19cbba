"""Planted slices in the style of Domino's SliceBench, rebuilt offline: metadata-free slice discovery by the audit
(`audit_vectors(..., config=AuditConfig(discover=K), scores=error)`) against a re-implementation of Domino's
error-aware mixture model (Eyuboglu et al. 2022) on identical synthetic worlds.

A world (d=512 unit image vectors): 500 groups of 4 correlated images (a shared group component plus per-image
noise), a binary class (two class centres), 6 background attributes (each on 30% of the groups, shift 3 noise SDs)
and one planted attribute a* whose shift is `effect` noise SDs (an SD: the images' spread along one direction).
The planted slice, and a per-image model error that is higher in it (SliceBench's synthetic predictions: the
model's logit for the true class is N(2, 1) outside the slice, N(0.5, 1) inside: the error alone does not find
the slice, about a third of its images are misclassified against 2% of the rest):
  rare         class 1 groups with a* (a* nowhere else): a rare subclass the model fails on
  correlated   a* on 80% of class 0 groups and, in class 1, only on the slice: a spurious cue the model follows
  noisy_label  groups with a* of either class, whose labels are flipped with probability 0.3 (the model predicts
               the true class well; its error against the recorded label is high on the flipped images)
Slice size: the share of the images in the slice. Vocabulary: per attribute (and class) a word whose text
embedding is a shared offset + its direction + text noise, two near-synonym distractors per word (cosine 0.7 with
its direction), and 40 unrelated words; the planted word is "attr0".

Ours: no metadata, discover=K clusters on a group-wise discovery half (with the error score), plus the "predicted
worst score" slice (the 2/K of the test half where a ridge regression fitted on the discovery half predicts the
worst error), their test-half members chosen by their vectors alone, described and ranked on the other half; a
slice's 10 images most strongly assigned to it are the images of the audit's exemplars: with the error score the
slice's worst test-half groups (highest mean error first, as the audit shows a user a slice's failures; the groups'
own errors only order them inside the slice, they decide no membership), without it the groups with the largest
projection on the slice's difference vector (most typical first); a slice of fewer than 10 images counts the
missing ones as misses. Domino (`DominoSlicer` here): PCA to
128 components, then a mixture of diagonal Gaussians over the embeddings jointly with the label Y (Bernoulli) and
the prediction Y-hat (soft Bernoulli), their log-likelihoods weighted by gamma=10, initialised from the confusion
matrix, fit by EM on ALL images (more data than ours sees); an image's strength of assignment to component s is its
log-odds of s against the best other component; a slice is described Domino's way (the slice-weighted mean
embedding minus the overall mean, dotted with the raw text embeddings). For both, the best-matching slice is the one
with the highest precision@10 (the share of its 10 most strongly assigned images in the planted slice; ties: the
slice whose test-half members, for Domino the images assigned to the component, hold more of the planted), ranked among
the test-half images (the same pool for both; Domino's P@10 over all images is reported too, and the audit without
the error score, from the vectors alone: "ours_embedding_only"); naming top-1 / top-5:
whether "attr0" is the first / among the first five words describing that slice.

    python -m analyses.bench.audit [--seeds 3] [--k 10] [--n-groups 500]

Writes analyses/results/bench_audit.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

D, PER, N_BACKGROUND, BACKGROUND_SD = 512, 4, 6, 3.0
KINDS = ("rare", "correlated", "noisy_label")
SIZES = (0.02, 0.05, 0.10)
EFFECTS = (1.0, 2.0, 4.0)
PLANTED_WORD = "attr0"
SLICE_LOGIT, FLIP = 0.5, 0.3  # the model's logit for the true class in the slice (2 elsewhere); label flips


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _orthonormal(rng, k: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(D, k)))
    return q.T  # (k, D) orthonormal directions


def vocabulary(rng, directions: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Text embeddings: offset + direction + noise per word, two near-synonyms per word, 40 unrelated words."""
    offset = _unit(rng.normal(size=D))
    rows, words = [], []
    for name, a in zip(names, directions):
        rows.append(a)
        words.append(name)
        for j in range(2):
            r = _unit(rng.normal(size=D) - (rng.normal(size=D) @ a) * a)
            rows.append(0.7 * a + np.sqrt(1 - 0.49) * _unit(r - (r @ a) * a))
            words.append(f"{name}_syn{j}")
    for j in range(40):
        rows.append(_unit(rng.normal(size=D)))
        words.append(f"other{j}")
    dirs = np.asarray(rows)
    E = _unit(2.0 * offset + dirs + 0.3 * rng.normal(size=dirs.shape) / np.sqrt(D))
    return E.astype(np.float32), words


def _slice_groups(rng, kind: str, size: float, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(groups in the planted slice, groups carrying a*)."""
    G = len(y)
    m = max(4, int(round(size * G)))
    ones, zeros = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if kind == "noisy_label":
        slice_g = np.isin(np.arange(G), rng.choice(G, m, replace=False))
        return slice_g, slice_g
    slice_g = np.isin(np.arange(G), rng.choice(ones, m, replace=False))
    attr = slice_g.copy()
    if kind == "correlated":
        attr |= np.isin(np.arange(G), rng.choice(zeros, int(0.8 * len(zeros)), replace=False))
    return slice_g, attr


def make_world(kind: str, size: float, effect: float, seed: int, n_groups: int = 500) -> dict:
    rng = np.random.default_rng([seed, KINDS.index(kind), int(size * 1000), int(effect * 100)])
    dirs = _orthonormal(rng, 3 + N_BACKGROUND)
    centres, planted, background = dirs[:2], dirs[2], dirs[3:]
    sd = np.sqrt(2.0 / D)  # per-direction SD of the group + image noise below
    y_true = rng.integers(2, size=n_groups)
    slice_g, attr_g = _slice_groups(rng, kind, size, y_true)
    has_bg = rng.random((n_groups, N_BACKGROUND)) < 0.3
    g = (0.6 * centres[y_true] + effect * sd * attr_g[:, None] * planted
         + BACKGROUND_SD * sd * has_bg @ background + rng.normal(size=(n_groups, D)) / np.sqrt(D))  # fmt: skip
    groups = np.repeat(np.arange(n_groups), PER)
    X = _unit(g[groups] + rng.normal(size=(len(groups), D)) / np.sqrt(D)).astype(np.float32)
    in_slice = slice_g[groups]
    y_true_i = y_true[groups]
    logit = rng.normal(2.0, 1.0, len(groups))
    y_obs = y_true_i.copy()
    if kind == "noisy_label":
        flip = in_slice & (rng.random(len(groups)) < FLIP)
        y_obs[flip] = 1 - y_obs[flip]
    else:
        logit[in_slice] = rng.normal(SLICE_LOGIT, 1.0, int(in_slice.sum()))
    p_true = 1 / (1 + np.exp(-logit))
    yhat = np.where(y_true_i == 1, p_true, 1 - p_true)  # the model's probability of class 1
    names = [f"attr{i}" for i in range(1 + N_BACKGROUND)] + ["class0", "class1"]
    E, words = vocabulary(rng, np.r_[planted[None], background, centres], names)
    return {"X": X, "groups": groups, "y": y_obs, "yhat": yhat, "error": np.abs(y_obs - yhat), "slice": in_slice,
            "E": E, "words": words}  # fmt: skip


# ---- the baseline: Domino's error-aware mixture model -------------------------------------------------------------


class DominoSlicer:
    """A mixture over (embedding, label, prediction): P(z, y, yhat) = sum_s pi_s N(z; mu_s, diag var_s)
    Bern(y; p_s)^gamma_y Bern_soft(yhat; q_s)^gamma_yhat, fit by EM on PCA-reduced embeddings (after the Domino
    paper's description; written here from it)."""

    def __init__(self, k: int = 25, gamma: float = 10.0, pca: int = 128, iters: int = 100, seed: int = 0):
        self.k, self.gamma, self.pca, self.iters, self.seed = k, gamma, pca, iters, seed

    def _loglik(self, Z, y, yhat) -> np.ndarray:
        eps = 1e-6
        var = self.var_
        inv = 1.0 / var  # the squared Mahalanobis distance expanded into products (no (n, k, p) array)
        maha = (Z * Z) @ inv.T - 2 * Z @ (self.mu_ * inv).T + (self.mu_**2 * inv).sum(1)
        gauss = -0.5 * (maha + np.log(2 * np.pi * var).sum(1))
        p, q = np.clip(self.p_, eps, 1 - eps), np.clip(self.q_, eps, 1 - eps)
        bern_y = y[:, None] * np.log(p) + (1 - y[:, None]) * np.log(1 - p)
        bern_h = yhat[:, None] * np.log(q) + (1 - yhat[:, None]) * np.log(1 - q)
        return np.log(self.pi_) + gauss + self.gamma * (bern_y + bern_h)

    def _m_step(self, Z, y, yhat, R) -> None:
        w = R.sum(0) + 1e-10
        self.pi_ = w / w.sum()
        self.mu_ = (R.T @ Z) / w[:, None]
        self.var_ = (R.T @ Z**2) / w[:, None] - self.mu_**2 + 1e-4 * Z.var(0).mean()
        self.p_, self.q_ = (R.T @ y) / w, (R.T @ yhat) / w

    def fit(self, X, y, yhat) -> DominoSlicer:
        from sklearn.decomposition import PCA

        rng = np.random.default_rng(self.seed)
        self.pca_ = PCA(min(self.pca, X.shape[1], len(X) - 1), random_state=self.seed).fit(X)
        Z = self.pca_.transform(X)
        cell = 2 * y.astype(int) + (yhat > 0.5)  # confusion-matrix initialisation: components split over the cells
        owner = np.array([rng.choice(np.flatnonzero(np.arange(self.k) % 4 == c)) for c in cell])
        R = np.full((len(X), self.k), 0.1 / self.k)
        R[np.arange(len(X)), owner] += 0.9
        prev = -np.inf
        for _ in range(self.iters):
            self._m_step(Z, y, yhat, R)
            L = self._loglik(Z, y, yhat)
            top = L.max(1, keepdims=True)
            ll = float((top[:, 0] + np.log(np.exp(L - top).sum(1))).mean())
            R = np.exp(L - top)
            R /= R.sum(1, keepdims=True)
            if ll - prev < 1e-6 * abs(ll):
                break
            prev = ll
        self.L_, self.R_ = L, R
        return self

    def strength(self) -> np.ndarray:
        """(n, k) each image's log-odds of each component against its best other component."""
        L = self.L_
        order = np.sort(L, axis=1)
        best_other = np.where(L == order[:, -1:], order[:, -2:-1], order[:, -1:])
        return L - best_other

    def describe(self, X, E, s: int) -> np.ndarray:
        """Domino's description: text embeddings dotted with the slice-weighted mean minus the mean embedding."""
        w = self.R_[:, s]
        return E @ (w @ X / max(w.sum(), 1e-12) - X.mean(0))


# ---- evaluation ---------------------------------------------------------------------------------------------------


def _naming(order_words: list[str]) -> tuple[bool, bool]:
    return bool(order_words[:1] == [PLANTED_WORD]), PLANTED_WORD in order_words[:5]


def audit_test_half(n_units: int, seed: int) -> np.ndarray:
    """The audit's discovery split (`audit.discover_slices`): the units of the second half of a seeded permutation."""
    order = np.random.default_rng(seed).permutation(n_units)
    test = np.zeros(n_units, bool)
    test[order[n_units // 2 :]] = True
    return test


def eval_ours(w: dict, k: int, seed: int, use_score: bool = True) -> dict:
    from embedlab.analysis.audit import AuditConfig, audit_vectors

    cfg = AuditConfig(discover=k, permutations=99, bootstrap=0, exemplars=10, seed=seed)  # 10 groups: >= 10 images
    meta = pd.DataFrame(index=range(len(w["X"])))
    res = audit_vectors(w["X"], meta, [], w["E"], w["words"], groups=w["groups"],
                        scores=w["error"] if use_score else None, config=cfg)  # fmt: skip
    test_img = audit_test_half(int(w["groups"].max()) + 1, seed)[w["groups"]]
    best = {"p10": 0.0, "top1": False, "top5": False, "slice": None, "purity": 0.0, "recall": 0.0}
    planted_test = max(int((w["slice"] & test_img).sum()), 1)
    for s, firsts in res.exemplars.items():
        mask = res.masks[s]
        assert not (mask & ~test_img).any(), "a discovered slice holds discovery-half images"
        # exemplars: the first image of each of the slice's most typical groups, most typical first; their images
        rows = np.concatenate([np.flatnonzero(w["groups"] == w["groups"][r]) for r in firsts])[:10]
        p10 = float(w["slice"][rows].sum()) / 10
        hits = int((w["slice"] & mask).sum())
        purity = hits / max(int(mask.sum()), 1)
        if best["slice"] is None or (p10, purity) > (best["p10"], best["purity"]):  # ties: the purer slice
            con = res.concepts[(res.concepts["slice_id"] == s) & (res.concepts["side"] == "adds")]
            top1, top5 = _naming(con.sort_values("rank")["concept"].tolist())
            best = {"p10": p10, "top1": top1, "top5": top5, "slice": int(s), "purity": purity,
                    "recall": hits / planted_test}  # fmt: skip
    return best | {"test_images": test_img}


def eval_domino(w: dict, k: int, test_img: np.ndarray, seed: int) -> dict:
    dom = DominoSlicer(k=k, seed=seed).fit(w["X"].astype(np.float64), w["y"].astype(float), w["yhat"])
    st = dom.strength()
    out = {}
    for pool_name, pool in (("test", test_img), ("all", np.ones(len(test_img), bool))):
        idx = np.flatnonzero(pool)
        p10 = [float(w["slice"][idx[np.argsort(-st[idx, s])[:10]]].mean()) for s in range(k)]
        owner = np.argmax(dom.R_[idx], axis=1)  # the pool's images hard-assigned to each component
        purity = [float(w["slice"][idx[owner == s]].mean()) if (owner == s).any() else 0.0 for s in range(k)]
        s = max(range(k), key=lambda c: (p10[c], purity[c]))  # ties: the purer slice
        words = [w["words"][j] for j in np.argsort(-dom.describe(w["X"], w["E"], s))]
        top1, top5 = _naming(words)
        out[pool_name] = {"p10": p10[s], "top1": top1, "top5": top5, "slice": s}
    return out


def run_cell(kind: str, size: float, effect: float, seeds: int, k: int, n_groups: int) -> list[dict]:
    rows = []
    for seed in range(seeds):
        w = make_world(kind, size, effect, seed, n_groups)
        ours = eval_ours(w, k, seed)
        dom = eval_domino(w, k, ours.pop("test_images"), seed)
        dom25 = eval_domino(w, 25, audit_test_half(n_groups, seed)[w["groups"]], seed)
        emb = eval_ours(w, k, seed, use_score=False)  # embedding only: no error score either
        rows.append({"kind": kind, "size": size, "effect": effect, "seed": seed,
                     **{f"ours_{m}": ours[m] for m in ("p10", "top1", "top5", "purity", "recall")},
                     "planted_test_images": int((w["slice"] & audit_test_half(n_groups, seed)[w["groups"]]).sum()),
                     **{f"domino_{m}": dom["test"][m] for m in ("p10", "top1", "top5")},
                     "domino_all_p10": dom["all"]["p10"], "ours_embedding_only_p10": emb["p10"],
                     "ours_embedding_only_top1": emb["top1"], "domino25_p10": dom25["test"]["p10"],
                     "domino25_top1": dom25["test"]["top1"], "domino25_top5": dom25["test"]["top5"]})  # fmt: skip
    return rows


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    cols = ["ours_p10", "domino_p10", "domino_all_p10", "domino25_p10", "ours_embedding_only_p10", "ours_top1",
            "ours_top5", "domino_top1", "domino_top5", "domino25_top1", "domino25_top5"]  # fmt: skip
    table = frame.groupby(["kind", "size", "effect"])[cols].mean().reset_index()
    table["gap_p10"] = table["ours_p10"] - table["domino_p10"]
    return table


def main() -> None:
    from analyses._common import parse_args, write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--k", type=int, default=10, help="slices discovered (ours) and mixture components (Domino)")
    ap.add_argument("--n-groups", type=int, default=500)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--sizes", type=float, nargs="+", default=list(SIZES))
    ap.add_argument("--effects", type=float, nargs="+", default=list(EFFECTS))
    ap.add_argument("--out", default=None)
    args = parse_args(ap)
    t0 = time.perf_counter()
    rows = []
    for kind in args.kinds:
        for size in args.sizes:
            for effect in args.effects:
                rows += run_cell(kind, size, effect, args.seeds, args.k, args.n_groups)
                r = pd.DataFrame(rows[-args.seeds :])
                print(f"{kind:12s} size {size:.2f} effect {effect:.1f}: P@10 ours {r.ours_p10.mean():.2f} "
                      f"domino {r.domino_p10.mean():.2f} (all {r.domino_all_p10.mean():.2f}, k=25 "
                      f"{r.domino25_p10.mean():.2f}); top-1 ours {r.ours_top1.mean():.2f} domino "
                      f"{r.domino_top1.mean():.2f}", flush=True)  # fmt: skip
    frame = pd.DataFrame(rows)
    table = summarise(frame)
    pd.set_option("display.width", 200)
    print(table.round(2).to_string(index=False))
    by_kind = frame.groupby("kind")[["ours_p10", "domino_p10", "domino_all_p10", "ours_embedding_only_p10", "ours_top1",
                                     "domino_top1", "ours_top5", "domino_top5"]].mean()  # fmt: skip
    overall = {c: float(frame[c].mean()) for c in frame.columns if c.endswith(("p10", "top1", "top5"))}
    gap = overall["ours_p10"] - overall["domino_p10"]
    print(by_kind.round(3).to_string())
    print(f"overall P@10 ours {overall['ours_p10']:.3f}, domino {overall['domino_p10']:.3f}: gap {100 * gap:.1f} "
          f"points (target >= 10: {'met' if gap >= 0.10 else 'NOT met'})")  # fmt: skip
    payload = {"grid": {"kinds": args.kinds, "sizes": args.sizes, "effects": args.effects, "seeds": args.seeds},
               "k": args.k, "n_images": args.n_groups * PER, "dim": D, "overall": overall, "gap_p10_points": 100 * gap,
               "target_met": bool(gap >= 0.10), "by_kind": by_kind.reset_index().to_dict("records"),
               "cells": table.to_dict("records"), "worlds": frame.to_dict("records"),
               "seconds": time.perf_counter() - t0,
               "protocol": "ours: discover on half the groups, P@10 on the other half (audit exemplars: with the error "
                           "score a slice's worst groups first); best slice: highest P@10, ties the purer; domino: "
                           "fit on all images, P@10 ranked among the same test-half images (domino_all_p10: among "
                           "all images; domino25: 25 components, Domino's default); ours_embedding_only: the audit "
                           "without the error score (vectors alone)"}  # fmt: skip
    write_json("bench_audit.json", payload, args.out)


if __name__ == "__main__":
    main()
