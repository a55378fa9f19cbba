"""The demo's closed loop on its held-out photos. Prints a summary and writes JSON.

    python -m analyses.demo.eval_loop [--out analyses/results] [--work DIR] [--iters N] [--compare] [--clip-seed N]
    python -m analyses.demo.eval_loop --seeds --work DIR [--clip-seeds 0,1,2] [--enhancer-seeds 0,1,2]

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


def retrain_seed(folder: Path, seed: int, iters: int | None = None) -> dict:
    """Retrain a finished demo folder's two enhancers (the `demo` preset on its corrected and on its raw residual,
    as `embedlab demo` trains them) with enhancer seed `seed`, and score the held-out photos as the demo does: the
    corrected enhancer's PSNR gain over the input and the planted pattern (corner falloff) in both outputs."""
    from analyses.demo._train import train_demo_enhancer
    from embedlab.datasets.manifest import read_manifest
    from embedlab.demos.loop import HeldOut, run_net, vignetting_stops
    from embedlab.demos.pipeline import LOOP_MAX_PIXELS, _copy_held_out_inputs
    from embedlab.enhancement.network import load_enhancer_state

    pairs = _copy_held_out_inputs(read_manifest(folder / "manifest.jsonl"), folder / "test_inputs")
    held = HeldOut([p for p, _ in pairs], [g for _, g in pairs], str(folder / "corrected.npy"), "cpu")
    outs, curves = {}, {}
    for name, res in (("corrected", "corrected.npy"), ("raw", "residual.npy")):
        r = train_demo_enhancer(folder / f"train_seed{seed}_{name}", held, 25, folder, str(folder / res),
                                iters=iters, seed=seed)  # fmt: skip
        outs[name], curves[name] = run_net(load_enhancer_state(r["enhancer"]), held.inputs, LOOP_MAX_PIXELS), r["curve"]
    inp, cor = held.scores(held.inputs), held.scores(outs["corrected"])
    stops = {k: vignetting_stops(v, held.gts) for k, v in {"input": held.inputs, **outs}.items()}
    return {
        "psnr_gain_db": cor["psnr"] - inp["psnr"],
        "psnr": {"input": inp["psnr"], "corrected": cor["psnr"], "raw": held.scores(outs["raw"])["psnr"]},
        "stops": stops,
        "raw_minus_corrected": stops["raw"] - stops["corrected"],
        "curves": curves,
    }


def seed_row(clip_seed: int, enhancer_seed: int, r: dict) -> dict:
    """One row of the seed table: the report's finding, the planted pattern and the PSNR gain with the bars."""
    f, pl = r.get("finding") or {}, r.get("planted") or {}
    row = {
        "clip_seed": clip_seed,
        "enhancer_seed": enhancer_seed,
        "bias_concept": r.get("bias_concept"),
        "p_fwer": f.get("p_fwer"),
        "stops": pl.get("stops"),
        "raw_minus_corrected": pl.get("raw_minus_corrected"),
        "psnr_gain_db": r["psnr_gain_db"],
    }
    row["bars"] = {
        "p_fwer_ok": bool(row["p_fwer"] is not None and row["p_fwer"] < 0.05),
        "raw_darker_corners_ok": bool(row["raw_minus_corrected"] is not None and row["raw_minus_corrected"] < 0),
        "psnr_ok": bool(row["psnr_gain_db"] >= 1.0),
    }
    return row


def run_seeds(work: str, clip_seeds: list[int], enhancer_seeds: list[int], out: str | None, **demo_options) -> dict:
    """The seed table: per demo-CLIP seed one default demo run (enhancer seed 0; reused from WORK/clipN/demo when
    it finished earlier), then its enhancers retrained with every other enhancer seed (retrain_seed). Writes
    eval_demo_loop_seeds.json after every row, so an interrupted table keeps what it measured."""
    import json

    from analyses._common import write_json

    rows = []
    for c in clip_seeds:
        folder = Path(work) / f"clip{c}"
        done = (folder / "demo" / "demo.json").exists()
        r = run_eval(
            "cpu", None if done else str(folder), str(folder / "demo") if done else None, None if done or c == 0 else c
        )
        demo = Path(r["demo_folder"])
        for e in enhancer_seeds:
            if e == 0:
                row = seed_row(c, 0, {**r, "psnr_gain_db": r["bars"]["psnr_gain_db"]})
            else:
                cached = demo / f"seed{e}.json"
                rr = (
                    json.loads(cached.read_text())
                    if cached.exists()
                    else retrain_seed(demo, e, demo_options.get("train_iters"))
                )
                cached.write_text(json.dumps(rr, default=float))
                row = seed_row(
                    c,
                    e,
                    {
                        **r,
                        "planted": {"stops": rr["stops"], "raw_minus_corrected": rr["raw_minus_corrected"]},
                        "psnr_gain_db": rr["psnr_gain_db"],
                    },
                )
            rows.append(row)
            print(
                f"clip seed {c} enhancer seed {e}: {row['bias_concept']!r} p_fwer {row['p_fwer']}, raw - corrected "
                f"{row['raw_minus_corrected']:+.3f} stops, PSNR gain {row['psnr_gain_db']:+.2f} dB",
                flush=True,
            )
            write_json("eval_demo_loop_seeds.json", {"rows": rows, "bars_met": seed_bars(rows)}, out)
    return {"rows": rows, "bars_met": seed_bars(rows)}


def seed_bars(rows: list[dict]) -> dict:
    return {
        k: f"{sum(r['bars'][k] for r in rows)}/{len(rows)}" for k in ("p_fwer_ok", "raw_darker_corners_ok", "psnr_ok")
    }


def print_summary(res: dict) -> None:
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
    ap.add_argument(
        "--seeds",
        action="store_true",
        help="The seed table: demo-CLIP seeds x enhancer seeds (--clip-seeds, --enhancer-seeds), each with the "
        "planted bias's p_fwer, the raw-minus-corrected corner falloff and the PSNR gain; writes "
        "eval_demo_loop_seeds.json (after every row). Runs resume from --work.",
    )
    ap.add_argument("--clip-seeds", default="0,1,2", help="With --seeds: the demo-CLIP seeds.")
    ap.add_argument("--enhancer-seeds", default="0,1,2", help="With --seeds: the enhancer seeds.")
    args = parse_args(ap)
    if args.seeds:
        if not args.work:
            raise SystemExit("--seeds needs --work (a folder its runs resume from)")
        run_seeds(
            args.work,
            [int(x) for x in args.clip_seeds.split(",")],
            [int(x) for x in args.enhancer_seeds.split(",")],
            args.out,
            train_iters=args.iters,
        )
        return
    res = run_eval(
        args.device,
        args.work,
        args.from_demo,
        args.clip_seed,
        train_iters=args.iters,
        **({"compare": True} if args.compare else {}),
    )
    print_summary(res)
    write_json(
        "eval_demo_loop.json" if args.clip_seed is None else f"eval_demo_loop_clip_seed{args.clip_seed}.json",
        {**res, "clip_seed": args.clip_seed},
        args.out,
    )


if __name__ == "__main__":
    main()
