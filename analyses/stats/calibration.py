"""Calibration of explain's significance tests under the null: many random splits of one population, where no
concept differs between the two sets, and how often the page shows a "significant" concept anyway.

Scenarios (synthetic unit image vectors: anisotropic, with a common offset; a vocabulary with a shared text offset):
  no_groups     images split in halves
  groups4       groups of 4 correlated images (a shared component: crops of one photo), whole groups to each set
  unequal_1to4  no groups, set sizes 1:4
  groups_span   groups of 4 that hold 2 images of each set (scenes photographed both ways), labels drawn within
                groups and shuffled within groups

For each: the share of splits with p_fwer < 0.05 anywhere on the page (raw and deflated), with q_bh < 0.05 for
any concept of the vocabulary, and each list's rate, with Clopper-Pearson 95% intervals; a rate passes when it is
not above the binomial 95% interval of Bin(splits, 0.05) / splits (conservative is allowed).

    python -m analyses.stats.calibration [--splits 1000] [--permutations 199] [--vocab 300] [--dim 32]

Writes analyses/results/calibration.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

SCENARIOS = ("no_groups", "groups4", "unequal_1to4", "groups_span")
ALPHA = 0.05


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def vocabulary(rng: np.random.Generator, n_concepts: int, d: int) -> np.ndarray:
    """Unit text embeddings with a shared offset (the text side of the modality gap)."""
    offset = _unit(rng.normal(size=d))
    return _unit(2.0 * offset + rng.normal(size=(n_concepts, d)) / np.sqrt(d) * 3)


def population(rng: np.random.Generator, n: int, d: int, group_size: int = 1, group_weight: float = 0.0) -> tuple:
    """(X (n, d) unit image vectors, group labels or None): anisotropic spread around a common offset; images of
    one group share a component of relative weight `group_weight`."""
    scales = 1.0 / np.sqrt(np.arange(1, d + 1))  # anisotropic: a decaying spectrum
    offset = _unit(rng.normal(size=d))
    noise = rng.normal(size=(n, d)) * scales
    groups = None
    if group_size > 1:
        groups = np.repeat(np.arange(n // group_size), group_size)
        shared = rng.normal(size=(n // group_size, d)) * scales
        noise = np.sqrt(1 - group_weight) * noise + np.sqrt(group_weight) * shared[groups]
    return _unit(3.0 * offset + noise), groups


def null_split(rng: np.random.Generator, n: int, scenario: str, groups: np.ndarray | None) -> np.ndarray:
    """A random 'to' mask drawn the way the scenario's sets are formed (no concept differs between them)."""
    if scenario == "unequal_1to4":
        return np.isin(np.arange(n), rng.choice(n, n // 5, replace=False))
    if scenario == "groups4":
        G = groups.max() + 1
        return np.isin(groups, rng.choice(G, G // 2, replace=False))
    if scenario == "groups_span":
        keys = rng.random(n) + groups  # within each group, a random half goes to 'to'
        order = np.argsort(keys)
        mask = np.zeros(n, bool)
        mask[order] = (np.arange(n) % 4) >= 2
        return mask
    return np.isin(np.arange(n), rng.choice(n, n // 2, replace=False))


def scenario_data(scenario: str, n: int, d: int, seed: int):
    rng = np.random.default_rng(seed)
    if scenario in ("groups4", "groups_span"):
        return population(rng, n, d, group_size=4, group_weight=0.6)
    return population(rng, n, d)


def split_outcome(out: dict) -> dict:
    """Which families show a 'significant' concept in one null split (explain_vectors' result)."""
    row = {}
    for side in ("adds", "removes"):
        tab = out[side]
        for col in ("p_fwer", "p_fwer_deflated", "q_bh"):
            row[f"{col}:{side}"] = bool((tab[col] < ALPHA).any()) if col in tab else False
    for col in ("p_fwer", "p_fwer_deflated"):
        row[f"{col}:page"] = row[f"{col}:adds"] or row[f"{col}:removes"]
    row["q_bh:page"] = out["info"]["candidates_q_below_05"] > 0  # candidates = the whole vocabulary
    return row


def run_scenario(
    scenario: str,
    splits: int,
    E: np.ndarray,
    *,
    n: int,
    d: int,
    permutations: int,
    top: int,
    deflated_steps: int,
    seed: int = 0,
    fixed_seed: bool = False,
    method: str = "rave",
) -> dict:
    from embedlab.analysis.explain import explain_vectors
    from embedlab.analysis.formula import compute_residual

    X, groups = scenario_data(scenario, n, d, seed)
    concepts = [f"c{i}" for i in range(len(E))]
    rng = np.random.default_rng(seed + 1)
    rows = []
    for t in range(splits):
        to = null_split(rng, n, scenario, groups)
        g = None if groups is None else np.r_[groups[~to], groups[to]]
        r = compute_residual(X[~to], X[to], method)[0]
        out = explain_vectors(
            r,
            E,
            concepts,
            X[~to],
            X[to],
            g,
            top=top,
            candidates=len(E),
            permutations=permutations,
            seed=0 if fixed_seed else t,
            method=method,
            deflated_steps=deflated_steps,
        )
        rows.append(split_outcome(out))
    return {k: int(sum(r[k] for r in rows)) for k in rows[0]}


def side_rates(
    splits: int,
    *,
    n: int = 240,
    d: int = 64,
    vocab: int = 2000,
    permutations: int = 500,
    fixed_seed: bool = False,
    seed: int = 0,
) -> dict:
    """Why "removes" ran above nominal when each list was its own family: per-list rejection rates of the max
    statistic (adds: max score, removes: max of -score) over many null splits in halves, in the setting of
    issue 16 (2,000 concepts, K = 500), with one permutation seed for all splits or a fresh one per split.
    Also the mean of the null's max and of -min (a symmetric null has them equal)."""
    from embedlab.analysis.explain import centre
    from embedlab.analysis.formula import compute_residual
    from embedlab.analysis.permutation import draw_shuffles, null_scores, shuffled_residuals

    rng = np.random.default_rng(seed)
    C, _ = centre(vocabulary(rng, vocab, d).astype(np.float32))
    X, _ = population(rng, n, d)
    hits = {"adds": 0, "removes": 0, "either": 0}
    tops = {"adds": [], "removes": []}
    for t in range(splits):
        to = null_split(rng, n, "no_groups", None)
        s = C @ compute_residual(X[~to], X[to])[0].astype(np.float32)
        sh = draw_shuffles(
            np.r_[np.zeros((~to).sum(), bool), np.ones(to.sum(), bool)], None, permutations, 0 if fixed_seed else t + 1
        )
        null = null_scores(shuffled_residuals(np.concatenate([X[~to], X[to]]), sh), C)
        p_adds = (1 + (null["max"] >= s.max()).sum()) / (permutations + 1)
        p_rem = (1 + (-null["min"] >= -s.min()).sum()) / (permutations + 1)
        hits["adds"] += p_adds < ALPHA
        hits["removes"] += p_rem < ALPHA
        hits["either"] += min(p_adds, p_rem) < ALPHA
        tops["adds"].append(null["max"].mean())
        tops["removes"].append(-null["min"].mean())
    out = rates_with_intervals({k: int(v) for k, v in hits.items()}, splits)
    out["null_mean_max"] = {k: float(np.mean(v)) for k, v in tops.items()}
    return out


def rates_with_intervals(counts: dict, splits: int) -> dict:
    from scipy.stats import binom, binomtest

    hi = binom.ppf(0.975, splits, ALPHA) / splits
    lo = binom.ppf(0.025, splits, ALPHA) / splits
    out = {}
    for key, k in counts.items():
        ci = binomtest(k, splits).proportion_ci(0.95)
        out[key] = {
            "count": k,
            "rate": k / splits,
            "ci95": [ci.low, ci.high],
            "nominal_interval": [lo, hi],
            "ok": k / splits <= hi,
        }
    return out


def main() -> None:
    from analyses._common import parse_args, write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", type=int, default=1000)
    ap.add_argument("--permutations", type=int, default=199)
    ap.add_argument("--vocab", type=int, default=300)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--deflated-steps", type=int, default=3)
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    ap.add_argument(
        "--fixed-seed",
        action="store_true",
        help="One permutation seed for every split (as a user who "
        "keeps the default seed would run it); default: a different seed per split.",
    )
    ap.add_argument(
        "--sides",
        type=int,
        default=0,
        help="Also run `side_rates` with this many splits, with a fixed and with a varying permutation seed.",
    )
    ap.add_argument("--out", default=None)
    args = parse_args(ap)
    sides, t_all = {}, time.perf_counter()
    for fixed in [False, True] if args.sides else []:
        t0 = time.perf_counter()
        sides["fixed_seed" if fixed else "seed_per_split"] = r = side_rates(args.sides, fixed_seed=fixed)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        print(
            f"per-list max statistic, {'fixed' if fixed else 'varying'} seed ({time.perf_counter() - t0:.0f} s): "
            + ", ".join(
                f"{k} {v['rate']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
                for k, v in r.items()
                if isinstance(v, dict) and "rate" in v
            )
        )
    E = vocabulary(np.random.default_rng(12345), args.vocab, args.dim)
    results = {}
    for sc in args.scenarios:
        t0 = time.perf_counter()
        counts = run_scenario(
            sc,
            args.splits,
            E,
            n=args.images,
            d=args.dim,
            permutations=args.permutations,
            top=args.top,
            deflated_steps=args.deflated_steps,
            fixed_seed=args.fixed_seed,
        )
        results[sc] = {
            "rates": rates_with_intervals(counts, args.splits),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{sc:13s} ({results[sc]['seconds']} s)")
        for key, v in results[sc]["rates"].items():
            print(
                f"   {key:24s} {v['rate']:.3f}  [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]  {'ok' if v['ok'] else 'ABOVE'}"
            )
    write_json(
        "calibration.json" if args.out is None else Path(args.out).name,
        {
            "command": "python -m analyses.stats.calibration " + " ".join(sys.argv[1:]),
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "alpha": ALPHA,
            "all_ok": all(v["ok"] for r in results.values() for v in r["rates"].values()),
            "scenarios": results,
            "per_list_investigation": sides,
            "total_seconds": round(time.perf_counter() - t_all, 1),
        },
        str(Path(args.out).parent) if args.out else None,
    )


if __name__ == "__main__":
    main()
