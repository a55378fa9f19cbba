"""Commands of the demo stage: pretrain-demo, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from embedlab.cli.app import DEVICE_HELP, JSON_HELP, PRETRAINED_HELP, PROGRESS_HELP, _print_json, app, handle_errors
from embedlab.cli.defaults import FROM_API


@app.command("pretrain-demo")
@handle_errors
def pretrain_demo_cmd(
    out: Optional[Path] = typer.Option(
        FROM_API, "--out", "-o", help="Folder for the checkpoint (default: the user cache, keyed by the recipe)."
    ),
    device: str = typer.Option(FROM_API, help=DEVICE_HELP),
    iters: Optional[int] = typer.Option(None, help="Training iterations (default: the full schedule)."),
    seed: int = typer.Option(FROM_API, help="Seed (the model is deterministic on the CPU for a seed)."),
    overwrite: bool = typer.Option(FROM_API, help="Retrain even when a cached (or shipped) model exists."),
    progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
    pack: Optional[Path] = typer.Option(
        None,
        "--pack",
        help="Also write the shippable pack (token rows "
        "the grammar uses + all other tensors) into this folder, "
        "e.g. embedlab/data/demo_clip.",
    ),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Train (or find cached) the small offline demo CLIP (a DEMO model: lighting words and package-photo objects only)."""
    from embedlab.demos.clip import pack_model, pretrain_demo

    extra = {"steps": iters} if iters else {}
    result = pretrain_demo(out, device=device, overwrite=overwrite, seed=seed, progress=progress, **extra)
    ckpt = result["files"]["checkpoint"]
    if pack:
        result["files"]["pack"] = pack_model(ckpt, pack)
    if as_json:
        return _print_json(result)
    typer.echo(f"demo CLIP: {ckpt}\nuse it with: --model embedlab-demo --pretrained {ckpt}")
    if pack:
        typer.echo(f"pack: {result['files']['pack']}")


@app.command("demo")
@handle_errors
def demo_cmd(
    out: Path = typer.Option(FROM_API, "--out", "-o", help="Output folder (index.html is the entry point)."),
    model: Optional[str] = typer.Option(
        FROM_API,
        help="Default: the offline demo CLIP (trained and cached on first use). "
        "Or any open_clip model, e.g. ViT-B-32 with --pretrained openai.",
    ),
    pretrained: Optional[str] = typer.Option(FROM_API, help=PRETRAINED_HELP),
    device: str = typer.Option(FROM_API, help=DEVICE_HELP),
    enhancer: Optional[Path] = typer.Option(
        FROM_API, help="Use this enhancer (e.g. a published RAVE .pth) instead of training one."
    ),
    iters: Optional[int] = typer.Option(
        FROM_API, help="Iterations of the short RAVE training (default: the 'demo' train preset's)."
    ),
    permutations: int = typer.Option(FROM_API, help="Shuffles for the concept report's permutation test."),
    compare: bool = typer.Option(FROM_API, help="Also train CLIP-LIT-Latent on the same budget for the curve figure."),
    raw_curve: bool = typer.Option(FROM_API, help="Also train on the raw (uncorrected) residual for the curve figure."),
    progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
):
    """Run the whole chain on the bundled demo data and write one index.html."""
    from embedlab.demos.clip import first_run_notice
    from embedlab.demos.pipeline import demo, training_notice

    if model is None:
        typer.echo(first_run_notice() + " " + training_notice(iters, raw_curve, compare), err=as_json)
    result = demo(
        out,
        model=model,
        pretrained=pretrained,
        device=device,
        enhancer=enhancer,
        train_iters=iters,
        permutations=permutations,
        compare=compare,
        raw_curve=raw_curve,
        progress=progress,
    )
    if as_json:
        return _print_json(result)
    for name, path in result["files"].items():
        typer.echo(f"{name:14s} {path}")
    typer.echo(
        f"bias concept removed: {result['bias_concept']}; PSNR input {result['metrics']['input'].get('psnr'):.2f} dB -> "
        f"enhanced {result['metrics']['enhanced'].get('psnr'):.2f} dB; total {result['total_s']} s"
    )
    typer.echo(f"open {out / 'index.html'}")
