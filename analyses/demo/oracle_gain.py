"""What a one-gain-per-pixel enhancer could do for the demo's held-out projection (the projection bar).

    python -m analyses.demo.oracle_gain --demo demo_out [--out analyses/results]

The enhancer of CLIP-LIT / RAVE divides each pixel by one illumination value: it changes a pixel's brightness, not
its chromaticity, and cannot subtract a veil. This script scores outputs of that form built from the originals
(oracles, not something a trained network is known to reach) on the demo's held-out photos, next to the originals
and the demo's enhancer, with the quality bars of `embedlab demo`:
- the luma-matching gain: input / L with L = luma(input) / luma(original), every pixel given its original's luma
  (at full resolution, and at the demo's inference scale where the map is estimated on a 64 x 96 copy and upsampled);
- the same aimed c times brighter (L = luma(input) / (c luma(original))), c = 1.1, 1.2 and the c that gives the demo
  enhancer's mean luma: what one gain per pixel reaches at a given brightness;
- the luma-matching gain with colour saturation x1.2: how much the residual rewards colour at restored brightness;
- the luma-matching gain on Recipe A re-rendered with one of its later steps left out (shadow desaturation, veiling
  glare, noise; same seed, same draws): which part of the degradation one gain per pixel cannot undo.

--demo is a finished `embedlab demo --out DIR` folder (its manifest, corrected residual and enhanced photos).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

EPS = 1e-3


def oracle_gain(
    x: np.ndarray, original: np.ndarray, max_pixels: int | None = None, brighter: float = 1.0
) -> np.ndarray:
    """One gain per pixel ([0,1] float HxWx3 images): x / L with L = luma(x) / (brighter * luma(original)), the map
    estimated at <= max_pixels and upsampled bilinearly as `embedlab enhance` does (None: full resolution)."""
    import torch
    import torch.nn.functional as F

    from embedlab.colour import LUMA
    from embedlab.enhancement.infer import illumination_size

    luma_in, luma_aim = x @ LUMA, brighter * (original @ LUMA)
    light = (luma_in + EPS) / (luma_aim + EPS)
    small = illumination_size(*x.shape[:2], max_pixels)
    if small is not None:
        lumas = torch.from_numpy(np.stack([luma_in, luma_aim])[:, None]).float()
        lo = F.interpolate(lumas, size=small, mode="bilinear", antialias=True, align_corners=False)
        light_lo = (lo[0:1] + EPS) / (lo[1:2] + EPS)
        light = F.interpolate(light_lo, size=x.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.clip(x / light[..., None], 0.0, 1.0)


def to_u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def held_out(demo: Path):
    """(HeldOut scorer, Recipe-A seed of each input) of a demo folder's held-out pairs."""
    from embedlab.datasets.manifest import materialize, read_manifest
    from embedlab.demos.loop import HeldOut

    if not (demo / "manifest.jsonl").exists() or not (demo / "corrected.npy").exists():
        raise SystemExit(
            f"{demo} is not a finished `embedlab demo` folder (manifest.jsonl and corrected.npy); run "
            "`embedlab demo --out DIR` first."
        )
    man = read_manifest(demo / "manifest.jsonl")
    entries = [e for e in man.entries if e.split == "test" and e.role == "backlit"]
    if not entries or any((e.synth or {}).get("recipe") != "A" for e in entries):
        raise SystemExit(
            f"{demo / 'manifest.jsonl'}: the held-out (split=test) backlit entries must be Recipe-A "
            "syntheses, as `embedlab demo` writes them."
        )
    held = HeldOut(
        [materialize(man, e.path, e) for e in entries],
        [materialize(man, e.gt) for e in entries],
        str(demo / "corrected.npy"),
        "cpu",
    )
    return held, [int(e.synth["seed"]) for e in entries]


def run(demo: str | Path) -> dict:
    from embedlab.datasets import synth
    from embedlab.datasets.images import load_rgb
    from embedlab.demos.clip import saturate
    from embedlab.demos.loop import quality_bars
    from embedlab.demos.pipeline import LOOP_MAX_PIXELS

    demo = Path(demo)
    held, seeds = held_out(demo)
    inputs = [im / 255.0 for im in held.inputs]
    originals = [im / 255.0 for im in held.gts]
    base = held.scores(held.inputs)
    rows = {}

    def score(name: str, images: list[np.ndarray]) -> None:
        s = held.scores([to_u8(im) for im in images])
        row = {**s, **{k: v for k, v in quality_bars(base, s, held.thr).items() if not k.endswith("_ok")}}
        rows[name] = {k: (v if np.isfinite(v) else None) for k, v in row.items()}  # the originals' PSNR: inf

    score("input", inputs)
    score("original", originals)
    enhanced = {p.stem: p for p in (demo / "enhanced").glob("*.png")}
    if set(held.names) <= set(enhanced):
        score("demo enhancer", [load_rgb(str(enhanced[n])) / 255.0 for n in held.names])
    else:
        print(f"no enhanced copy of every held-out photo in {demo / 'enhanced'}: the demo enhancer's row is left out")
    score("luma-matching gain (full resolution)", [oracle_gain(x, o) for x, o in zip(inputs, originals)])
    score(
        "luma-matching gain (inference scale)", [oracle_gain(x, o, LOOP_MAX_PIXELS) for x, o in zip(inputs, originals)]
    )
    aims = {"x1.1": 1.1, "x1.2": 1.2}
    if "demo enhancer" in rows:
        aims["at the demo enhancer's mean luma"] = rows["demo enhancer"]["mean_luma"] / rows["original"]["mean_luma"]
    for label, c in aims.items():
        score(
            f"gain aimed brighter, {label} (c = {c:.3f}, inference scale)",
            [oracle_gain(x, o, LOOP_MAX_PIXELS, brighter=c) for x, o in zip(inputs, originals)],
        )
    score(
        "luma-matching gain, then saturation x1.2",
        [saturate(to_u8(oracle_gain(x, o)), 1.2) / 255.0 for x, o in zip(inputs, originals)],
    )
    for omit in [(s,) for s in synth.RECIPE_A_STEPS] + [synth.RECIPE_A_STEPS]:
        redone = [synth.recipe_a(g, s, omit=omit).image / 255.0 for g, s in zip(held.gts, seeds)]
        score(
            f"luma-matching gain, Recipe A without {' + '.join(omit)}",
            [oracle_gain(x, o) for x, o in zip(redone, originals)],
        )
    return {
        "demo": str(demo),
        "residual": str(demo / "corrected.npy"),
        "thr": held.thr,
        "held_out_images": held.names,
        "rows": rows,
    }


def main() -> None:
    from analyses._common import parse_args, write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="A finished `embedlab demo --out DIR` folder.")
    ap.add_argument("--out", default=None, help="Folder for oracle_demo_gain.json (default analyses/results).")
    args = parse_args(ap)
    res = run(args.demo)
    print(f"thr {res['thr']:+.3f}; bars: PSNR >= input + 1 dB, projection share of the gap >= 0.5")
    for name, r in res["rows"].items():
        psnr = "   inf          " if r["psnr"] is None else f"{r['psnr']:6.2f} ({r['psnr_gain_db']:+6.2f})"
        print(
            f"{name:70s} PSNR {psnr}  luma {r['mean_luma']:.3f}  projection {r['projection']:+.3f}  "
            f"share {r['projection_share_of_gap']:.2f}"
        )
    write_json("oracle_demo_gain.json", res, args.out)


if __name__ == "__main__":
    main()
