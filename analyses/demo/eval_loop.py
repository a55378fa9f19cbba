"""The demo's closed loop on its held-out photos. Prints a summary and writes JSON.

    python -m analyses.demo.eval_loop [--out analyses/results] [--work DIR] [--iters N] [--compare] [--clip-seed N]

Runs `embedlab demo` (the demo CLIP from the cache or the copy shipped with embedlab; the enhancer trained with the
`demo` preset on the corrected residual, and one on the raw residual for the curves) and reports, on the held-out
Recipe-A photos (coffee and china, never in the enhancer's training or the residual's sets; the demo CLIP's own
training sees them under its lighting variants), the mean PSNR / SSIM / luma / darkest-40%
luma / projection on the corrected residual of the input, the enhancer's output, CLAHE and gamma 0.5, the three
quality bars (PSNR >= input + 1 dB, darkest-40% luma above the input's, projection at least halfway to thr), and
the held-out curves over training iterations.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def run_eval(
    device: str = "cpu",
    work: str | None = None,
    from_demo: str | None = None,
    clip_seed: int | None = None,
    **demo_options,
) -> dict:
    """Run the demo into WORK/demo (or read the demo.json of an earlier default run in `from_demo`); `clip_seed`
    runs it with the demo CLIP of the default recipe trained with that seed instead of the shipped one (seed 0)."""
    import json

    from embedlab.demos.pipeline import demo

    if clip_seed is not None:
        from embedlab._io import cache_ref
        from embedlab.demos.clip import MODEL_NAME, pretrain_demo

        if from_demo:
            raise SystemExit("--clip-seed runs a new demo; it cannot be combined with --from-demo")
        ckpt = pretrain_demo(device=device, progress=False, seed=clip_seed)["files"]["checkpoint"]
        demo_options.update(model=MODEL_NAME, pretrained=cache_ref(ckpt))

    if from_demo:
        work, r = Path(from_demo), json.loads((Path(from_demo) / "demo.json").read_text())
    else:
        work = Path(work) if work else Path(tempfile.mkdtemp(prefix="eval_demo_loop_"))
        r = demo(work / "demo", device=device, progress=False, **demo_options)
        work = work / "demo"
    loop = r["loop"]
    return {
        "metrics": {k: v for k, v in r["metrics"].items() if k != "residual_projection"},
        "thr": loop["thr"],
        "bars": loop["bars"],
        "curves": loop.get("curves"),
        "train_seconds": loop.get("train_seconds"),
        "held_out_images": loop["held_out_images"],
        "model": r["model"],
        "bias_concept": r["bias_concept"],
        "finding": r.get("finding"),
        "planted": loop.get("planted"),
        "enhanced_by": loop["enhanced_by"],
        "timings_s": r["timings_s"],
        "total_s": r["total_s"],
        "demo_folder": str(work),
    }


def main() -> None:
    from analyses._common import parse_args, write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="Folder for eval_demo_loop.json (default analyses/results).")
    ap.add_argument("--work", default=None, help="Folder for the demo run (default: a temporary folder).")
    ap.add_argument("--compare", action="store_true", help="Also train CLIP-LIT-Latent on the same budget.")
    ap.add_argument(
        "--from-demo",
        default=None,
        help="Read this default demo run's demo.json instead of running one "
        "(e.g. the folder analyses/bench/demo.py ran).",
    )
    ap.add_argument("--iters", type=int, default=None, help="Training iterations (default: the `demo` preset's).")
    ap.add_argument(
        "--clip-seed",
        type=int,
        default=None,
        help="Use the demo CLIP trained with this seed (default "
        "recipe; trained and cached on first use, about 2.5 min) instead of the shipped seed-0 model; "
        "writes eval_demo_loop_clip_seedN.json.",
    )
    ap.add_argument("--device", default="cpu")
    args = parse_args(ap)
    res = run_eval(
        args.device,
        args.work,
        args.from_demo,
        args.clip_seed,
        train_iters=args.iters,
        **({"compare": True} if args.compare else {}),
    )
    for name, m in res["metrics"].items():
        print(
            f"{name:10s} PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}  luma {m['mean_luma']:.3f}  "
            f"dark40 {m['dark40_luma']:.3f}  projection {m['projection']:+.3f}"
        )
    f, pl = res.get("finding") or {}, (res.get("planted") or {}).get("stops") or {}
    print(f"removed {res['bias_concept']!r} (p_fwer {f.get('p_fwer')}); corner falloff vs originals (stops): {pl}")
    b = res["bars"]
    print(
        f"thr {res['thr']:+.3f}; PSNR gain {b['psnr_gain_db']:+.2f} dB ({b['psnr_ok']}), "
        f"dark40 gain {b['dark40_gain']:+.3f} "
        f"({b['dark40_ok']}), projection share of the gap {b['projection_share_of_gap']:.3f} ({b['projection_ok']})"
    )
    write_json(
        "eval_demo_loop.json" if args.clip_seed is None else f"eval_demo_loop_clip_seed{args.clip_seed}.json",
        {**res, "clip_seed": args.clip_seed},
        args.out,
    )


if __name__ == "__main__":
    main()
