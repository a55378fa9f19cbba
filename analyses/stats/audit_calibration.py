"""Null calibration of the slice audit (`embedlab.analysis.audit.audit_vectors`): many small worlds in which no
audited column is related to the image vectors, and how often the audit claims a slice or a concept anyway.

Worlds (d=32 unit image vectors, anisotropic around a common offset as in `analyses.stats.calibration`; a
vocabulary of 40 concepts with a shared text offset; each world draws fresh vectors, metadata and vocabulary):
  no_groups      72 images, columns camera (3 values), weather (4), light (2), no groups
  groups4        60 groups of 4 correlated images (a shared component), the same columns constant per group
  sizes_1to20    84 images: site (4 vs 80 images: 1:20) and lens (4 / 40 / 40)
  overlapping    72 images: zone (3 values), area = zone with 15% of the images relabelled, shift (2), --depth 2
  confounded     72 images: camera (3 values) shifts the vectors (a true effect); night is drawn with P(night)
                 0.15 / 0.5 / 0.85 by camera and has no effect of its own; lens (2) is null. Audited without
                 `within`: camera and night are real differences (night's is camera's), claims on lens are false
  confounded_within  the same worlds with within="camera": every claim is false (camera cannot differ within its
                 own strata; night, given camera, does not differ)
  discover_score 60 groups of 4, camera (3) plus --discover 4 with a per-image score unrelated to anything:
                 a discovered slice's score_p_fwer < 0.05 is a false claim

Per scenario: P(any false slice or concept claim at p_fwer < alpha) with its Clopper-Pearson 95% interval (a rate
passes when that interval reaches down to alpha), and the exploratory list's FDR (slices with q < 0.1: false
discoveries / discoveries, 0/0 = 0, averaged over worlds). Power (--power): groups of 4, a column light whose dark
value (30% of the groups) moves the images along one concept's centred direction by 0 ... 2 standard deviations
of the per-image similarity; the share of worlds with light=dark at p_fwer < alpha and with the planted concept
first among its "adds".

    python -m analyses.stats.audit_calibration --scenarios no_groups groups4 [--worlds 1000] [--merge]
    python -m analyses.stats.audit_calibration --power --scenarios [--worlds 200] --merge

Writes analyses/results/audit_calibration.json (--merge keeps the scenarios of an earlier run that this one did not
redo, so the scenarios can be run in pieces).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from analyses.stats.calibration import _unit, population, vocabulary

SCENARIOS = ("no_groups", "groups4", "sizes_1to20", "overlapping", "confounded", "confounded_within", "discover_score")
ALPHA, Q = 0.05, 0.1
D, V = 32, 40
POWER_EFFECTS = (0.0, 0.25, 0.5, 1.0, 2.0)


def _group_world(rng, n_units: int, per: int):
    """(X, groups or None, unit index per image): n_units units of `per` images each."""
    X, groups = population(rng, n_units * per, D, group_size=per, group_weight=0.6 if per > 1 else 0.0)
    unit = np.repeat(np.arange(n_units), per)
    return X, groups, unit


def null_world(scenario: str, rng: np.random.Generator) -> dict:
    """One world of a scenario: vectors, metadata, the audit's arguments and which columns' claims are false."""
    per = 4 if scenario in ("groups4", "discover_score") else 1
    n_units = {"no_groups": 72, "groups4": 60, "sizes_1to20": 84, "overlapping": 72, "discover_score": 60}.get(
        scenario, 72
    )
    X, groups, unit = _group_world(rng, n_units, per)
    cols: dict[str, np.ndarray] = {}
    kw: dict = {"groups": groups}
    false_cols = None  # None: every column's claims are false
    depth = 1
    if scenario in ("no_groups", "groups4"):
        cols = {"camera": rng.choice(list("ABC"), n_units), "weather": rng.choice(list("wxyz"), n_units),
                "light": rng.choice(["dark", "bright"], n_units)}  # fmt: skip
    elif scenario == "sizes_1to20":
        cols = {"site": rng.permutation(np.r_[["rare"] * 4, ["common"] * 80]),
                "lens": rng.permutation(np.r_[["a"] * 4, ["b"] * 40, ["c"] * 40])}  # fmt: skip
    elif scenario == "overlapping":
        zone = rng.choice(list("PQR"), n_units)
        area = zone.copy()
        flip = rng.random(n_units) < 0.15
        area[flip] = rng.choice(list("PQR"), int(flip.sum()))
        cols = {"zone": zone, "area": np.char.add("a", area), "shift": rng.choice(["day", "late"], n_units)}
        depth = 2
    elif scenario.startswith("confounded"):
        cols, X = _confounded(rng, n_units, X)
        if scenario == "confounded_within":
            kw["within"] = cols["camera"]
        else:
            false_cols = {"lens"}
    elif scenario == "discover_score":
        cols = {"camera": rng.choice(list("ABC"), n_units)}
        kw["scores"] = rng.normal(size=len(X))
    meta = pd.DataFrame({k: np.asarray(v)[unit] for k, v in cols.items()})
    if kw.get("within") is not None:
        kw["within"] = np.asarray(kw["within"])[unit]
    E = vocabulary(rng, V, D)
    return {"X": X, "meta": meta, "E": E, "kw": kw, "false_cols": false_cols, "depth": depth,
            "discover": 4 if scenario == "discover_score" else 0}  # fmt: skip


def _confounded(rng, n_units: int, X: np.ndarray):
    camera = rng.choice(list("ABC"), n_units)
    shift = {c: _unit(rng.normal(size=D)) for c in "ABC"}
    sd = float(np.median(X.std(0)))
    X = _unit(X + np.array([4.0 * sd * shift[c] for c in camera]))
    p_night = np.select([camera == "A", camera == "B"], [0.15, 0.5], 0.85)
    night = np.where(rng.random(n_units) < p_night, "night", "day")
    if len(set(night)) < 2:
        night[0] = "night" if night[0] == "day" else "day"
    return {"camera": camera, "night": night, "lens": rng.choice(["wide", "tele"], n_units)}, X


def world_outcome(res, world: dict) -> dict:
    """Which false claims one audit made: slices (p_fwer), concepts (p_fwer), the exploratory list's FDP (q), and
    for discovered slices their score claims."""
    sl = res.slices
    false_cols = world["false_cols"]
    tested = sl["kind"] != "discovered"
    if false_cols is None:
        false = tested.copy()
    else:
        false = tested & sl["columns"].map(lambda c: set(c.split(",")) <= false_cols)
    false_ids = set(sl.loc[false, "slice_id"])
    con = res.concepts
    concept_false = bool(((con["p_fwer"] < ALPHA) & con["slice_id"].isin(false_ids)).any()) if len(con) else False
    slice_false = bool((sl.loc[false, "p_fwer"] < ALPHA).any())
    found = tested & (sl["q"] < Q)
    fdp = float((found & false).sum() / found.sum()) if found.any() else 0.0
    out = {"slice": slice_false, "concept": concept_false, "any": slice_false or concept_false, "fdp": fdp,
           "discoveries": int(found.sum())}  # fmt: skip
    if "night=night" in set(sl["name"]) or "night=day" in set(sl["name"]):
        out["night_flagged"] = bool((sl.loc[sl["columns"] == "night", "p_fwer"] < ALPHA).any())
    if "score_p_fwer" in sl and (~tested).any():
        out["score_discovered"] = bool((sl.loc[~tested, "score_p_fwer"] < ALPHA).any())
        out["score_discovered_raw"] = bool((sl.loc[~tested, "score_p"] < ALPHA).any())
    return out


def rate(k: int, n: int) -> dict:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95)
    return {"count": int(k), "worlds": n, "rate": k / n, "ci95": [ci.low, ci.high], "ok": ci.low <= ALPHA}


def run_scenario(scenario: str, worlds: int, permutations: int, seed: int) -> dict:
    from embedlab.analysis.audit import AuditConfig, audit_vectors

    rng = np.random.default_rng([seed, SCENARIOS.index(scenario)])
    code = code_version()
    rows = []
    t0 = time.perf_counter()
    for w in range(worlds):
        world = null_world(scenario, rng)
        cfg = AuditConfig(permutations=permutations, bootstrap=0, exemplars=0, seed=w, depth=world["depth"],
                          discover=world["discover"])  # fmt: skip
        by = list(world["meta"].columns)
        res = audit_vectors(world["X"], world["meta"], by, world["E"], [f"c{j}" for j in range(V)],
                            config=cfg, **world["kw"])  # fmt: skip
        rows.append(world_outcome(res, world))
    frame = pd.DataFrame(rows)
    out = {key: rate(int(frame[key].sum()), worlds) for key in ("any", "slice", "concept")}
    out["fdr"] = {"value": float(frame["fdp"].mean()), "se": float(frame["fdp"].std(ddof=1) / np.sqrt(worlds)),
                  "q": Q, "mean_discoveries": float(frame["discoveries"].mean())}  # fmt: skip
    for key in ("night_flagged", "score_discovered", "score_discovered_raw"):
        if key in frame:
            out[key] = rate(int(frame[key].sum()), worlds)
    out["seconds"] = time.perf_counter() - t0
    out["code"] = code
    return out


def code_version() -> dict:
    """sha1 (first 12 hex digits) of the audit's modules as this run imported them (others edit them meanwhile)."""
    import hashlib
    from pathlib import Path

    import embedlab.analysis.audit as audit

    folder = Path(audit.__file__).parent
    return {name: hashlib.sha1((folder / name).read_bytes()).hexdigest()[:12]
            for name in ("audit.py", "audit_stats.py", "slices.py")}  # fmt: skip


def power_world(rng, effect: float) -> tuple:
    """Groups of 4; light=dark on 30% of the groups moves their images along concept 0's centred direction."""
    from embedlab.analysis.explain import centre

    n_units = 60
    X, groups, unit = _group_world(rng, n_units, 4)
    E = vocabulary(rng, V, D)
    C, _ = centre(E.astype(np.float32))
    c = _unit(C[0].astype(np.float64))
    light = np.where(rng.random(n_units) < 0.3, "dark", "bright")
    light[:2] = "dark"
    dark = (light == "dark")[unit]
    X = X.copy()
    X[dark] = _unit(X[dark] + effect * float((X @ c).std()) * c)
    meta = pd.DataFrame({"light": light[unit], "camera": rng.choice(list("ABC"), n_units)[unit]})
    return X, groups, meta, E


def run_power(worlds: int, permutations: int, seed: int) -> dict:
    from embedlab.analysis.audit import AuditConfig, audit_vectors

    out = {}
    for effect in POWER_EFFECTS:
        rng = np.random.default_rng([seed, 99])  # the same worlds at every effect
        hit = first = false = 0
        for w in range(worlds):
            X, groups, meta, E = power_world(rng, effect)
            cfg = AuditConfig(permutations=permutations, bootstrap=0, exemplars=0, seed=w)
            res = audit_vectors(X, meta, ["light", "camera"], E, [f"c{j}" for j in range(V)], groups=groups,
                                config=cfg)  # fmt: skip
            sl = res.slices.set_index("name")
            # a two-valued column is one contrast, named by its smaller value: light=bright when dark is the larger
            name = sl.index[sl["columns"] == "light"][0]
            hit += bool(sl.loc[name, "p_fwer"] < ALPHA)
            con = res.concepts
            side = "adds" if name == "light=dark" else "removes"
            top = con[(con["slice"] == name) & (con["side"] == side)].sort_values("rank")
            first += bool(len(top) and top.iloc[0]["concept"] == "c0")
            false += bool((sl.loc[sl["columns"] == "camera", "p_fwer"] < ALPHA).any())
        out[str(effect)] = {"detected": rate(hit, worlds), "planted_first": first / worlds,
                            "false_camera_claim": rate(false, worlds)}  # fmt: skip
    return out


def print_table(results: dict) -> None:
    print(f"{'scenario':20s} {'P(any false claim)':>20s} {'95% CI':>18s} {'slice':>7s} {'concept':>8s} {'FDR':>7s}")
    for sc, r in results.items():
        a = r["any"]
        print(f"{sc:20s} {a['rate']:20.3f} [{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}] {r['slice']['rate']:7.3f} "
              f"{r['concept']['rate']:8.3f} {r['fdr']['value']:7.3f}")  # fmt: skip
        for key in ("night_flagged", "score_discovered", "score_discovered_raw"):
            if key in r:
                x = r[key]
                print(f"    {key}: {x['rate']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}]")


def main() -> None:
    from analyses._common import RESULTS, parse_args, write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=SCENARIOS)
    ap.add_argument("--worlds", type=int, default=1000, help="null worlds per scenario (power: per effect)")
    ap.add_argument("--permutations", type=int, default=199)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--power", action="store_true", help="also the power line (groups of 4, planted light=dark)")
    ap.add_argument("--merge", action="store_true", help="keep the earlier JSON's scenarios not redone here")
    ap.add_argument("--out", default=None)
    args = parse_args(ap)
    path = (RESULTS if args.out is None else __import__("pathlib").Path(args.out)) / "audit_calibration.json"
    old = json.loads(path.read_text()) if args.merge and path.exists() else {}
    results = dict(old.get("scenarios", {}))
    power = old.get("power")

    def save() -> None:  # after every scenario: an interrupted or failed run keeps what it measured
        payload = {"alpha": ALPHA, "q": Q, "dim": D, "vocabulary": V, "permutations": args.permutations,
                   "scenarios": results, "power": power,
                   "note": "rates are P(any false claim at p_fwer < alpha) per world; ok: the Clopper-Pearson 95% "
                           "interval reaches down to alpha. confounded: camera and night claims are true "
                           "differences (not counted); confounded_within: every claim counts as false."}  # fmt: skip
        write_json("audit_calibration.json", payload, args.out)

    for sc in args.scenarios:
        results[sc] = run_scenario(sc, args.worlds, args.permutations, args.seed)
        print_table({sc: results[sc]})
        save()
    if args.power:
        power = {"worlds_per_effect": args.worlds, "effects": run_power(args.worlds, args.permutations, args.seed),
                 "code": code_version()}  # fmt: skip
        for eff, r in power["effects"].items():
            print(f"power effect {eff}: detected {r['detected']['rate']:.3f}, planted concept first "
                  f"{r['planted_first']:.3f}, false camera claim {r['false_camera_claim']['rate']:.3f}")  # fmt: skip
        save()
    print_table(results)


if __name__ == "__main__":
    main()
