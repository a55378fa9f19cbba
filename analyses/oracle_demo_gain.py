"""How far could the paper's enhancer move the demo's held-out projection at best? (issue 15, the projection bar)

    python analyses/oracle_demo_gain.py --demo demo_out [--out analyses/results]

The enhancer of CLIP-LIT / RAVE divides each pixel by one illumination value: it can change a pixel's brightness,
not its chromaticity, and cannot subtract a veil. Its best possible output on a held-out photo is therefore the
"oracle gain": the input divided by L = luma(input) / luma(original), which gives every pixel the original's luma
and keeps the input's colour. This script scores that oracle (at full resolution and at the demo's inference scale,
where the illumination map is estimated on a 64 x 96 copy and upsampled) on the demo's held-out photos, next to
the originals and the demo's enhancer, with the quality bars of `embedlab demo`. It then re-renders Recipe A with
one of its later steps left out (shadow desaturation, veiling glare, noise; same seed, same draws) to show which
part of the degradation keeps even the oracle below the originals on the residual.

--demo is a finished `embedlab demo --out DIR` folder (its manifest, corrected residual and enhanced photos).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
EPS = 1e-3


def oracle_gain(x: np.ndarray, original: np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """The best output of a one-gain-per-pixel enhancer ([0,1] float HxWx3 images): x / L with L the ratio of the
    lumas, estimated at <= max_pixels and upsampled bilinearly as `embedlab enhance` does (None: full resolution)."""
    import torch
    import torch.nn.functional as F

    from embedlab.colour import LUMA
    from embedlab.enhance.infer import illumination_size

    light = (x @ LUMA + EPS) / (original @ LUMA + EPS)
    small = illumination_size(*x.shape[:2], max_pixels)
    if small is not None:
        lumas = torch.from_numpy(np.stack([x @ LUMA, original @ LUMA])[:, None]).float()
        lo = F.interpolate(lumas, size=small, mode="bilinear", antialias=True, align_corners=False)
        light_lo = (lo[0:1] + EPS) / (lo[1:2] + EPS)
        light = F.interpolate(light_lo, size=x.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.clip(x / light[..., None], 0.0, 1.0)


def brighten(x: np.ndarray, ev: float) -> np.ndarray:
    from embedlab.colour import linear_to_srgb, srgb_to_linear

    return np.clip(linear_to_srgb(srgb_to_linear(x) * 2.0 ** ev), 0.0, 1.0)


def to_u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def held_out(demo: Path):
    """(HeldOut scorer, Recipe-A seeds, original photos) of a demo folder's held-out pairs."""
    from embedlab.demo_loop import HeldOut
    from embedlab.manifests import materialize, read_manifest

    man = read_manifest(demo / "manifest.jsonl")
    entries = [e for e in man.entries if e.split == "test" and e.role == "backlit"]
    if not entries or not (demo / "corrected.npy").exists():
        raise SystemExit(f"{demo} is not a finished `embedlab demo` folder (manifest.jsonl with a test split and "
                         "corrected.npy); run `embedlab demo --out DIR` first.")
    held = HeldOut([materialize(man, e.path, e) for e in entries], [materialize(man, e.gt) for e in entries],
                   str(demo / "corrected.npy"), "cpu")
    return held, [int(e.synth["seed"]) for e in entries]


def run(demo: str | Path) -> dict:
    from embedlab import synth
    from embedlab.demo import LOOP_MAX_PIXELS
    from embedlab.demo_loop import quality_bars
    from embedlab.images import load_rgb

    demo = Path(demo)
    held, seeds = held_out(demo)
    inputs = [im / 255.0 for im in held.inputs]
    originals = [im / 255.0 for im in held.gts]
    base = held.scores(held.inputs)
    rows = {}

    def score(name: str, images: list[np.ndarray]) -> None:
        s = held.scores([to_u8(im) for im in images])
        row = {**s, **{k: v for k, v in quality_bars(base, s, held.thr).items() if not k.endswith("_ok")}}
        rows[name] = {k: (v if np.isfinite(v) else None) for k, v in row.items()}   # the originals' PSNR: inf

    score("input", inputs)
    score("original", originals)
    enhanced = sorted((demo / "enhanced").glob("*.png"))
    if len(enhanced) == len(held.names):
        by_name = {p.stem: p for p in enhanced}
        score("demo enhancer", [load_rgb(str(by_name[n])) / 255.0 for n in held.names])
    score("oracle gain (full resolution)", [oracle_gain(x, o) for x, o in zip(inputs, originals)])
    at_scale = [oracle_gain(x, o, LOOP_MAX_PIXELS) for x, o in zip(inputs, originals)]
    score("oracle gain (inference scale)", at_scale)
    for ev in (0.5, 1.0):
        score(f"oracle gain (inference scale) +{ev} EV", [brighten(x, ev) for x in at_scale])
    for omit in [(s,) for s in synth.RECIPE_A_STEPS] + [synth.RECIPE_A_STEPS]:
        redone = [synth.recipe_a(g, s, omit=omit).image / 255.0 for g, s in zip(held.gts, seeds)]
        score(f"oracle gain, Recipe A without {' + '.join(omit)}", [oracle_gain(x, o) for x, o in zip(redone, originals)])
    return {"demo": str(demo), "residual": str(demo / "corrected.npy"), "thr": held.thr,
            "held_out_images": held.names, "rows": rows}


def main() -> None:
    from _common import write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="A finished `embedlab demo --out DIR` folder.")
    ap.add_argument("--out", default=None, help="Folder for oracle_demo_gain.json (default analyses/results).")
    args = ap.parse_args()
    res = run(args.demo)
    print(f"thr {res['thr']:+.3f}; bars: PSNR >= input + 1 dB, projection share of the gap >= 0.5")
    for name, r in res["rows"].items():
        psnr = "   inf          " if r["psnr"] is None else f"{r['psnr']:6.2f} ({r['psnr_gain_db']:+6.2f})"
        print(f"{name:52s} PSNR {psnr}  luma {r['mean_luma']:.3f}  projection {r['projection']:+.3f}  "
              f"share {r['projection_share_of_gap']:.2f}")
    write_json("oracle_demo_gain.json", res, args.out)


if __name__ == "__main__":
    main()
