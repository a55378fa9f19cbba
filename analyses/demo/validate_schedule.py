"""The demo enhancer's stopping point (its iteration count, the end of its cosine schedule) chosen on a validation set.

    python -m analyses.demo.validate_schedule --demo demo_out [--iters 75,100,125,150,200] [--seeds 0,1,2] [--out DIR]
    python -m analyses.demo.validate_schedule --demo demo_out --folds 4 [--iters ...] [--seeds 0]
    python -m analyses.demo.validate_schedule --demo demo_out --colour-photos [--iters ...] [--seeds 0]

The held-out photos (coffee, china) carry the demo's quality bars; a stopping point read off their curve would be
fitted to them. This script trains the demo's enhancer (the `demo` preset on the demo's corrected residual, the
demo's fixed training-thread count) once per iteration count and enhancer seed, and scores each final network on
- validation: the training photos under Recipe-A seeds never rendered for training (300 and 301; training uses
  0-3), against their originals (analyses.demo.validate_preset.validation_pairs): the only set the choice reads;
- held-out: the demo's test photos, as `embedlab demo` reports them: recorded beside it, never read by the choice.

With --folds K the validation set is photo folds instead: the training photos are dealt into K seeded folds, and per
fold the enhancer trains without that fold's photos and is scored on their Recipe-A renders under the validation
seeds. These are photos the enhancer never saw, as the held-out ones are, whereas the first validation set re-uses
the photos it trained on (under new seeds), which rewards fitting them: there the gain grows to 150 iterations and
beyond while the held-out photos' peaks near 75 (analyses/results/eval_demo_loop_seeds.json's curves).

With --colour-photos the validation set is colour photos the demo never uses: the Debian wallpaper photos
(`apt-get install lomiri-wallpapers-16.04 mate-backgrounds`; embedlab.datasets.photos.debian_photos), each
resized to COLOUR_LONG_SIDE px on its long side (the package photos' scale) and rendered under the validation seeds.
Both held-out scenes are colour photos, and china's sky is nearly white, brighter than any training photo's; the
other two validation sets hold 5 colour photos at most.

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


def train_and_score(
    demo: Path, scorers: dict, iters: int, seed: int, work: Path, fold: dict | None = None, weight: float | None = None
) -> dict:
    """One demo-preset training of `iters` iterations with enhancer seed `seed` (without the photos of `fold`, when
    given: {"index", "groups"}; with identity weight `weight`, when given, instead of the preset's); its validation
    curve and the final network's scores and bars on every set in `scorers`."""
    from analyses.demo._train import train_demo_enhancer
    from embedlab.demos.loop import quality_bars, run_net
    from embedlab.demos.pipeline import LOOP_MAX_PIXELS
    from embedlab.enhancement.network import load_enhancer_state
    from embedlab.enhancement.presets import PRESETS

    residual = str(demo / "corrected.npy")
    w = PRESETS["demo"]["identity_weight"] if weight is None else float(weight)
    name = f"train_i{iters}_s{seed}" + (f"_f{fold['index']}" if fold else "") + (f"_w{w:g}" if weight else "")
    r = train_demo_enhancer(work / name, scorers["validation"], 25, demo, residual, iters=iters, seed=seed,
                            exclude_groups=fold["groups"] if fold else (), identity_weight=w)  # fmt: skip
    state = load_enhancer_state(r["enhancer"])
    row = {"iters": iters, "identity_weight": w, "seed": seed, "train_seconds": r["train_seconds"],
           "validation_curve": r["curve"]}  # fmt: skip
    if fold:
        row["fold"] = fold
    for name, s in scorers.items():
        outs = run_net(state, s.inputs, LOOP_MAX_PIXELS)
        scores = s.scores(outs)
        row[name] = {"scores": scores, "bars": quality_bars(s.scores(s.inputs), scores, s.thr),
                     "psnr_gain_db_per_image": per_image_gain(s, outs)}  # fmt: skip
    return row


def per_image_gain(s, outs: list) -> dict:
    """{image name: output PSNR - input PSNR} (which scenes gain, which lose)."""
    from skimage.metrics import peak_signal_noise_ratio

    def psnr(x, gt):  # as embedlab.enhancement.evaluate.psnr_ssim_rgb, without its SSIM
        return float(peak_signal_noise_ratio(gt / 255.0, x / 255.0, data_range=1.0))

    return {n: round(psnr(o, g) - psnr(i, g), 3) for n, o, i, g in zip(s.names, outs, s.inputs, s.gts)}


def _candidate(row: dict, weights: set) -> str:
    """A row's candidate: its iteration count, with its identity weight when the sweep has several."""
    w = row.get("identity_weight")
    return str(row["iters"]) if len(weights) < 2 else f"{row['iters']}@w{w:g}"


def choose(rows: list[dict]) -> dict:
    """The candidate (iteration count, and identity weight when several were swept) chosen on validation (the
    module's rule) and the per-candidate summary it was chosen from (held-out means beside it, never read)."""
    weights = {r.get("identity_weight") for r in rows}
    cand = {_candidate(r, weights): (r["iters"], -(r.get("identity_weight") or 0)) for r in rows}
    summary = {}
    for it in sorted(cand, key=cand.get):
        sel = [r for r in rows if _candidate(r, weights) == it]
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
    best = min((it for it in ok if summary[it]["validation_psnr_gain_db"]["mean"] >= top - TIE_DB), key=cand.get)
    rule = (
        f"among the candidates meeting all three bars on validation for every seed, the fewest iterations within "
        f"{TIE_DB} dB of the best mean validation PSNR gain (between identity weights at the same count, the larger)"
    )
    iters, neg_w = cand[best]
    return {"iters": iters, "identity_weight": -neg_w or None, "candidate": best, "rule": rule, "by_iters": summary}


def photo_folds(man, k: int, seed: int = 0) -> list[list[str]]:
    """The training photos (groups of the training backlit images) dealt into `k` seeded folds."""
    groups = sorted({e.group for e in man.entries if e.split == "train" and e.role == "backlit" and e.group})
    order = np.random.default_rng(seed).permutation(len(groups))
    return [sorted(groups[i] for i in order[f::k]) for f in range(k)]


def fold_pairs(man, folder: Path, groups: list[str]) -> list[tuple[str, str]]:
    """Validation renders (VALIDATION_SEEDS) of the training photos in `groups` only."""
    from analyses.demo.validate_preset import validation_pairs
    from embedlab.datasets.manifest import materialize

    keep = {str(materialize(man, e.gt)) for e in man.entries if e.group in groups and e.gt}
    return [(i, g) for i, g in validation_pairs(man, folder) if str(g) in keep]


COLOUR_LONG_SIDE = 640


def colour_pairs(folder: Path) -> list[tuple[str, str]]:
    """Validation renders (VALIDATION_SEEDS) of the installed Debian wallpaper photos, resized to COLOUR_LONG_SIDE;
    returns (input, original) path pairs."""
    from PIL import Image

    from analyses.demo.validate_preset import VALIDATION_SEEDS
    from embedlab.datasets import synth
    from embedlab.datasets.photos import debian_photos

    photos = debian_photos()
    if not photos:
        raise SystemExit(
            "no Debian wallpaper photos installed: apt-get install lomiri-wallpapers-16.04 mate-backgrounds"
        )
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for src in photos:
        gt = folder / f"{Path(src).stem}.png"
        if not gt.exists():
            im = Image.open(src).convert("RGB")
            scale = COLOUR_LONG_SIDE / max(im.size)
            im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS).save(gt)
        base = np.asarray(Image.open(gt).convert("RGB"))
        for seed in VALIDATION_SEEDS:
            path = folder / f"{gt.stem}_A_s{seed}.png"
            if not path.exists():
                Image.fromarray(synth.recipe_a(base, seed).image).save(path)
            pairs.append((str(path), str(gt)))
    return pairs


def _report(demo, sets, rows, args) -> dict:
    from analyses._common import write_json
    from analyses.demo.validate_preset import VALIDATION_SEEDS

    chosen = choose(rows)  # written after every training, so an interrupted sweep keeps what it measured
    result = {"demo": str(demo), "validation_seeds": list(VALIDATION_SEEDS), "sets": sets, "chosen": chosen,
              "rows": rows, "validation": VALIDATION_KINDS[_kind(args)]}  # fmt: skip
    write_json(f"validate_demo_schedule{'' if _kind(args) == 'seeds' else '_' + _kind(args)}.json", result, args.out)
    return chosen


def _kind(args) -> str:
    return "colour" if args.colour_photos else "folds" if args.folds else "seeds"


VALIDATION_KINDS = {
    "seeds": "the enhancer's own training photos under Recipe-A seeds never rendered for training",
    "folds": "photo folds: each fold's training photos left out of the enhancer's training and scored under "
    "Recipe-A seeds never rendered for training (photos the enhancer never saw, as the held-out ones)",
    "colour": "colour photos the demo never uses (Debian wallpapers, long side 640 px) under Recipe-A seeds never "
    "rendered for training",
}


def main() -> None:
    from analyses._common import parse_args
    from analyses.demo.validate_preset import validation_pairs
    from embedlab.datasets.manifest import read_manifest
    from embedlab.demos.loop import HeldOut
    from embedlab.demos.pipeline import _copy_held_out_inputs

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="A finished `embedlab demo --out DIR` folder.")
    ap.add_argument("--iters", default="75,100,125,150,200", help="Comma-separated iteration counts to train.")
    ap.add_argument("--seeds", default="0,1,2", help="Comma-separated enhancer seeds.")
    ap.add_argument(
        "--identity-weights", default="",
        help="Comma-separated identity weights to sweep with the counts (default: the demo preset's only).",
    )  # fmt: skip
    ap.add_argument(
        "--out",
        default=None,
        help="Folder for validate_demo_schedule.json (with --folds: validate_demo_schedule_folds.json; default "
        "analyses/results).",
    )
    ap.add_argument(
        "--folds", type=int, default=0,
        help="Validate on photo folds: deal the training photos into this many folds, train without each fold's "
        "photos and score them (default 0: the training photos under unseen Recipe-A seeds).",
    )  # fmt: skip
    ap.add_argument(
        "--colour-photos", action="store_true",
        help="Validate on colour photos the demo never uses: the installed Debian wallpaper photos (apt-get install "
        "lomiri-wallpapers-16.04 mate-backgrounds) under Recipe-A seeds never rendered for training.",
    )  # fmt: skip
    args = parse_args(ap)
    if args.colour_photos and args.folds:
        raise SystemExit("--colour-photos and --folds are two different validation sets: pick one")
    demo = Path(args.demo)
    if not (demo / "manifest.jsonl").exists() or not (demo / "corrected.npy").exists():
        raise SystemExit(f"{demo} is not a finished demo folder (no manifest.jsonl / corrected.npy)")
    man = read_manifest(demo / "manifest.jsonl")
    work = demo / "validate_schedule"
    residual = str(demo / "corrected.npy")

    def scorer(pairs):
        return HeldOut([p for p, _ in pairs], [g for _, g in pairs], residual, "cpu")

    work.mkdir(parents=True, exist_ok=True)
    held = _copy_held_out_inputs(man, work / "held_out")
    folds = photo_folds(man, args.folds) if args.folds else [None]
    sets = {"held-out": len(held)}
    rows = []
    weights = [float(w) for w in args.identity_weights.split(",") if w.strip()] or [None]
    grid = [(seed, iters, w) for seed in (int(s) for s in args.seeds.split(",")) for iters in
            (int(i) for i in args.iters.split(",")) for w in weights]  # fmt: skip
    for seed, iters, weight in grid:
        for f, groups in enumerate(folds):
            if args.colour_photos:
                val = colour_pairs(work / "colour_validation")
            elif groups:
                val = fold_pairs(man, work / "validation", groups)
            else:
                val = validation_pairs(man, work / "validation")
            sets[f"validation{'' if groups is None else f' fold {f}'}"] = len(val)
            fold = None if groups is None else {"index": f, "groups": groups}
            row = train_and_score(demo, {"validation": scorer(val), "held-out": scorer(held)}, iters, seed, work,
                                  fold, weight)  # fmt: skip
            rows.append(row)
            print(
                f"iters {iters} identity weight {row['identity_weight']:g} seed {seed}"
                f"{'' if fold is None else f' fold {f}'}: validation "
                f"{row['validation']['bars']['psnr_gain_db']:+.2f} dB, held-out "
                f"{row['held-out']['bars']['psnr_gain_db']:+.2f} dB ({row['train_seconds']:.0f} s)",
                flush=True,
            )
            chosen = _report(demo, sets, rows, args)
    print(f"chosen on validation: {chosen['candidate']} ({chosen['iters']} iterations)")


if __name__ == "__main__":
    main()
