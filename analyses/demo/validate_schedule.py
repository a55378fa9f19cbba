"""The demo enhancer's stopping point (its iteration count, the end of its cosine schedule) chosen on a validation set.

    python -m analyses.demo.validate_schedule --demo demo_out [--iters 75,100,125,150,200] [--seeds 0,1,2] [--out DIR]

The held-out photos (coffee, china) carry the demo's quality bars; a stopping point read off their curve would be
fitted to them. This script trains the demo's enhancer (the `demo` preset on the demo's corrected residual, the
demo's fixed training-thread count) once per iteration count and enhancer seed, and scores each final network on
- validation: the training photos under Recipe-A seeds never rendered for training (300 and 301; training uses
  0-3), against their originals (analyses.demo.validate_preset.validation_pairs): the only set the choice reads;
- held-out: the demo's test photos, as `embedlab demo` reports them: recorded beside it, never read by the choice.

The choice: among the iteration counts whose validation scores meet all three of the demo's bars (PSNR >= input +
1 dB, darkest-40% luma up, projection at least halfway to thr) for every enhancer seed (all counts if none does),
the fewest iterations within TIE_DB of the best mean validation PSNR gain (fewer iterations: a faster first run).
The validation curve inside each training (every 25 iterations) is recorded too; with a cosine schedule a point
inside a longer run is not the end of a shorter one, so only end points are candidates.

--demo is a finished default `embedlab demo --out DIR` folder (its manifest, run, corrected residual, demo CLIP).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TIE_DB = 0.25  # validation PSNR gains this close count as a tie, and the tie goes to fewer iterations


def train_and_score(demo: Path, scorers: dict, iters: int, seed: int, work: Path) -> dict:
    """One demo-preset training of `iters` iterations with enhancer seed `seed`; its validation curve and the final
    network's scores and bars on every set in `scorers`."""
    from analyses.demo._train import train_demo_enhancer
    from embedlab.demos.loop import quality_bars, run_net
    from embedlab.demos.pipeline import LOOP_MAX_PIXELS
    from embedlab.enhancement.network import load_enhancer_state

    residual = str(demo / "corrected.npy")
    r = train_demo_enhancer(work / f"train_i{iters}_s{seed}", scorers["validation"], 25, demo, residual,
                            iters=iters, seed=seed)  # fmt: skip
    state = load_enhancer_state(r["enhancer"])
    row = {"iters": iters, "seed": seed, "train_seconds": r["train_seconds"], "validation_curve": r["curve"]}
    for name, s in scorers.items():
        scores = s.scores(run_net(state, s.inputs, LOOP_MAX_PIXELS))
        row[name] = {"scores": scores, "bars": quality_bars(s.scores(s.inputs), scores, s.thr)}
    return row


def choose(rows: list[dict]) -> dict:
    """The iteration count chosen on validation (the module's rule) and the per-count summary it was chosen from
    (held-out means beside it, never read)."""
    summary = {}
    for it in sorted({r["iters"] for r in rows}):
        sel = [r for r in rows if r["iters"] == it]
        summary[it] = {
            f"{k}_psnr_gain_db": {
                "mean": float(np.mean([r[k]["bars"]["psnr_gain_db"] for r in sel])),
                "min": float(np.min([r[k]["bars"]["psnr_gain_db"] for r in sel])),
            }
            for k in ("validation", "held-out")
        }
        summary[it]["validation_all_bars"] = sum(r["validation"]["bars"]["all_ok"] for r in sel)
        summary[it]["seeds"] = [r["seed"] for r in sel]
    ok = [it for it, v in summary.items() if v["validation_all_bars"] == len(v["seeds"])] or list(summary)
    top = max(summary[it]["validation_psnr_gain_db"]["mean"] for it in ok)
    best = min(it for it in ok if summary[it]["validation_psnr_gain_db"]["mean"] >= top - TIE_DB)
    rule = (
        f"among the counts meeting all three bars on validation for every seed, the fewest iterations within "
        f"{TIE_DB} dB of the best mean validation PSNR gain"
    )
    return {"iters": best, "rule": rule, "by_iters": summary}


def main() -> None:
    from analyses._common import parse_args, write_json
    from analyses.demo.validate_preset import VALIDATION_SEEDS, validation_pairs
    from embedlab.datasets.manifest import read_manifest
    from embedlab.demos.loop import HeldOut
    from embedlab.demos.pipeline import _copy_held_out_inputs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="A finished `embedlab demo --out DIR` folder.")
    ap.add_argument("--iters", default="75,100,125,150,200", help="Comma-separated iteration counts to train.")
    ap.add_argument("--seeds", default="0,1,2", help="Comma-separated enhancer seeds.")
    ap.add_argument("--out", default=None, help="Folder for validate_demo_schedule.json (default analyses/results).")
    args = parse_args(ap)
    demo = Path(args.demo)
    if not (demo / "manifest.jsonl").exists() or not (demo / "corrected.npy").exists():
        raise SystemExit(f"{demo} is not a finished demo folder (no manifest.jsonl / corrected.npy)")
    man = read_manifest(demo / "manifest.jsonl")
    work = demo / "validate_schedule"
    sets = {
        "validation": validation_pairs(man, work / "validation"),
        "held-out": _copy_held_out_inputs(man, work / "held_out"),
    }
    residual = str(demo / "corrected.npy")
    scorers = {n: HeldOut([p for p, _ in v], [g for _, g in v], residual, "cpu") for n, v in sets.items()}
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for iters in (int(i) for i in args.iters.split(",")):
            row = train_and_score(demo, scorers, iters, seed, work)
            rows.append(row)
            print(
                f"iters {iters} seed {seed}: validation {row['validation']['bars']['psnr_gain_db']:+.2f} dB, "
                f"held-out {row['held-out']['bars']['psnr_gain_db']:+.2f} dB ({row['train_seconds']:.0f} s)",
                flush=True,
            )
            chosen = choose(rows)  # written after every training, so an interrupted sweep keeps what it measured
            result = {
                "demo": str(demo),
                "validation_seeds": list(VALIDATION_SEEDS),
                "sets": {k: len(v) for k, v in sets.items()},
                "chosen": chosen,
                "rows": rows,
            }
            write_json("validate_demo_schedule.json", result, args.out)
    print(f"chosen on validation: {chosen['iters']} iterations")


if __name__ == "__main__":
    main()
