"""The `demo` preset's choices on a validation set, next to the held-out photos.

    python -m analyses.demo.validate_preset --demo demo_out [--variants reflect:60,reflect:75,...] [--out DIR]

The held-out photos (coffee, china) carry the demo's quality bars, so a setting chosen by looking at them would be
fitted to them. This script trains the demo's enhancer (the `demo` preset on the demo's corrected residual, the
demo's fixed training-thread count) once per variant and scores each on
- validation: the training photos under Recipe-A seeds never rendered for training (300 and 301; training uses
  0-3), against their originals: the place to choose a setting;
- held-out: the demo's test photos, as `embedlab demo` reports them,
with the demo's bars (PSNR >= input + 1 dB, darkest-40% luma up, projection at least halfway to thr). Every network
is scored as `embedlab enhance` runs it (the reflect-padded test-time class) and also with the zero-padded training
class ("zero-padded scoring"), which shows what a zero-padded training puts along the borders.

A variant is PADDING:IDENTITY_WEIGHT[:flat]: the trained network's padding (zeros = the paper's training class,
reflect = the demo preset's), the identity weight, and with ":flat" the identity loss's layer weights as before
losses.layer_weights (on the 4-block demo tower every map 1.0, the paper's 0.5 for the last layer dropped): an
ablation of that change.

--demo is a finished `embedlab demo --out DIR` folder (its manifest, run, corrected residual and demo CLIP).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

VALIDATION_SEEDS = (300, 301)


def validation_pairs(man, folder: Path) -> list[tuple[str, str]]:
    """Recipe-A renders of the manifest's training photos with VALIDATION_SEEDS, written as PNGs into `folder`;
    returns (input, original) path pairs."""
    from PIL import Image

    from embedlab.datasets import synth
    from embedlab.datasets.manifest import materialize

    folder.mkdir(parents=True, exist_ok=True)
    originals = sorted({e.gt for e in man.entries if e.split == "train" and e.role == "backlit" and e.gt})
    seeds_used = {int(e.synth["seed"]) for e in man.entries if e.role == "backlit" and e.synth and "seed" in e.synth}
    if seeds_used & set(VALIDATION_SEEDS):
        raise SystemExit(
            f"the manifest trains on Recipe-A seeds {sorted(seeds_used)}; validation seeds "
            f"{VALIDATION_SEEDS} must be others"
        )
    pairs = []
    for uri in originals:
        gt = materialize(man, uri)
        base = np.asarray(Image.open(gt).convert("RGB"))
        for seed in VALIDATION_SEEDS:
            path = folder / f"{Path(gt).stem}_A_s{seed}.png"
            Image.fromarray(synth.recipe_a(base, seed).image).save(path)
            pairs.append((str(path), gt))
    return pairs


def parse_variant(spec: str) -> dict:
    import math

    parts = spec.split(":")
    try:
        weight = float(parts[1]) if len(parts) > 1 else math.nan
    except ValueError:
        weight = math.nan
    if (
        len(parts) not in (2, 3)
        or parts[0] not in ("zeros", "reflect")
        or parts[2:] not in ([], ["flat"])
        or not (math.isfinite(weight) and weight > 0)
    ):
        raise SystemExit(
            f"variant {spec!r}: expected PADDING:IDENTITY_WEIGHT[:flat] with PADDING zeros or reflect and "
            "a positive weight, e.g. reflect:75 or zeros:75:flat"
        )
    return {"padding": parts[0], "identity_weight": weight, "flat_layer_weights": parts[2:] == ["flat"]}


def old_layer_weights(weights, n_maps: int) -> tuple[float, ...]:
    """The identity loss's layer weights before losses.layer_weights: the paper's five, truncated or padded with 1.0
    (on the demo CLIP's 4-map tower the paper's 0.5 for the last layer fell off the end)."""
    return (tuple(weights) + (1.0,) * n_maps)[:n_maps]


def main() -> None:
    import contextlib
    from unittest import mock

    from analyses._common import parse_args, write_json
    from analyses.demo._train import train_demo_enhancer
    from embedlab.datasets.manifest import read_manifest
    from embedlab.demos.loop import HeldOut, quality_bars, run_net
    from embedlab.demos.pipeline import LOOP_MAX_PIXELS, _copy_held_out_inputs
    from embedlab.enhancement import losses
    from embedlab.enhancement.network import load_enhancer_state

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="A finished `embedlab demo --out DIR` folder.")
    ap.add_argument(
        "--variants",
        default="reflect:60,reflect:75,reflect:90,zeros:75,reflect:75:flat",
        help="Comma-separated PADDING:IDENTITY_WEIGHT[:flat] variants to train.",
    )
    ap.add_argument("--out", default=None, help="Folder for validate_demo_preset.json (default analyses/results).")
    args = parse_args(ap)
    variants = [parse_variant(v) for v in args.variants.split(",")]
    demo = Path(args.demo)
    if not (demo / "manifest.jsonl").exists() or not (demo / "corrected.npy").exists():
        raise SystemExit(
            f"{demo} is not a finished demo folder (no manifest.jsonl / corrected.npy); run "
            f"`embedlab demo --out {demo}` first"
        )
    import json

    from embedlab.enhancement.presets import PRESETS

    loop = json.loads((demo / "demo.json").read_text()).get("loop", {}) if (demo / "demo.json").exists() else {}
    if loop.get("iters") != PRESETS["demo"]["iters"] or loop.get("preset") != "demo":
        raise SystemExit(
            f"{demo} is not a default `embedlab demo` folder (demo.json's loop: preset "
            f"{loop.get('preset')!r}, iters {loop.get('iters')!r}); this script retrains the default"
        )
    man = read_manifest(demo / "manifest.jsonl")
    residual = str(demo / "corrected.npy")
    work = demo / "validate_preset"
    sets = {
        "validation": validation_pairs(man, work / "validation"),
        "held-out": _copy_held_out_inputs(man, work / "held_out"),
    }
    scorers = {
        name: HeldOut([p for p, _ in pairs], [g for _, g in pairs], residual, "cpu") for name, pairs in sets.items()
    }
    inputs = {name: s.scores(s.inputs) for name, s in scorers.items()}
    rows = []
    for v in variants:
        name = f"{v['padding']}_id{v['identity_weight']:g}" + ("_flat" if v["flat_layer_weights"] else "")
        flat = (
            mock.patch.object(losses, "layer_weights", old_layer_weights)
            if v["flat_layer_weights"]
            else contextlib.nullcontext()
        )
        with flat:
            r = train_demo_enhancer(
                work / f"train_{name}", scorers["held-out"], 200, demo, residual,
                identity_weight=v["identity_weight"], padding=v["padding"],
            )  # fmt: skip
        state = load_enhancer_state(r["enhancer"])
        row = {**v, "train_seconds": r["train_seconds"]}
        for set_name, s in scorers.items():
            scores = s.scores(run_net(state, s.inputs, LOOP_MAX_PIXELS))
            row[set_name] = {"scores": scores, "bars": quality_bars(inputs[set_name], scores, s.thr)}
        zero = scorers["held-out"].scores(run_net(state, scorers["held-out"].inputs, LOOP_MAX_PIXELS, padding="train"))
        row["held-out, zero-padded scoring"] = {
            "scores": zero,
            "bars": quality_bars(inputs["held-out"], zero, scorers["held-out"].thr),
        }
        rows.append(row)
        print(
            f"{name}: "
            + "; ".join(
                f"{k} PSNR {row[k]['bars']['psnr_gain_db']:+.2f} dB, "
                f"share {row[k]['bars']['projection_share_of_gap']:.3f}"
                f"{' (all bars met)' if row[k]['bars']['all_ok'] else ''}"
                for k in ("validation", "held-out", "held-out, zero-padded scoring")
            ),
            flush=True,
        )
    write_json(
        "validate_demo_preset.json",
        {
            "demo": str(demo),
            "validation_seeds": list(VALIDATION_SEEDS),
            "sets": {k: [p for p, _ in v] for k, v in sets.items()},
            "inputs": inputs,
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    from embedlab.errors import EmbedlabError

    try:
        main()
    except EmbedlabError as exc:
        raise SystemExit(f"error: {exc}") from None
