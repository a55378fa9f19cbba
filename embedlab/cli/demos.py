"""Commands of the demo stage: pretrain-demo, demo, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from embedlab.cli import app as cli
from embedlab.cli.app import app, handle_errors
from embedlab.cli.defaults import FROM_API


@app.command("pretrain-demo")
@handle_errors
def pretrain_demo_cmd(
    out: Optional[Path] = typer.Option(
        FROM_API, "--out", "-o", help="Folder for the checkpoint (default: the user cache, keyed by the recipe)."
    ),
    device: str = cli.device_option(),
    iters: Optional[int] = typer.Option(None, help="Training iterations (default: the full schedule)."),
    seed: int = cli.api_option("Seed (the model is deterministic on the CPU for a seed)."),
    overwrite: bool = cli.api_option("Retrain even when a cached (or shipped) model exists."),
    progress: bool = cli.progress_option(),
    pack: Optional[Path] = typer.Option(
        None,
        "--pack",
        help="Also write the shippable pack (token rows "
        "the grammar uses + all other tensors) into this folder, "
        "e.g. embedlab/data/demo_clip.",
    ),
    debian_photos: bool = cli.api_option(
        "Also train on the Debian wallpaper photos installed on this machine (apt-get install "
        "lomiri-wallpapers-16.04 mate-backgrounds): another recipe, so it trains its own model (no shipped copy).",
        "--debian-photos",
    ),
    as_json: bool = cli.json_option(),
):
    """Train (or find cached) the small offline demo CLIP (a DEMO model: lighting words and package-photo objects
    only)."""
    from embedlab.demos.clip import pack_model, pretrain_demo

    extra = {"steps": iters} if iters else {}
    result = pretrain_demo(out, device=device, overwrite=overwrite, seed=seed, progress=progress,
                           debian_photos=debian_photos, **extra)  # fmt: skip
    ckpt = result["files"]["checkpoint"]
    if pack:
        result["files"]["pack"] = pack_model(ckpt, pack)
    if as_json:
        return cli.print_json(result)
    typer.echo(f"demo CLIP: {ckpt}\nuse it with: --model embedlab-demo --pretrained {ckpt}")
    if pack:
        typer.echo(f"pack: {result['files']['pack']}")


@app.command("demo")
@handle_errors
def demo_cmd(
    out: Path = typer.Option(FROM_API, "--out", "-o", help="Output folder (index.html is the entry point)."),
    model: Optional[str] = cli.api_option(
        "Default: the offline demo CLIP (trained and cached on first use). "
        "Or any open_clip model, e.g. ViT-B-32 with --pretrained openai."
    ),
    pretrained: Optional[str] = cli.api_option(cli.PRETRAINED_HELP),
    device: str = cli.device_option(),
    enhancer: Optional[Path] = cli.api_option(
        "Use this enhancer (e.g. a published RAVE .pth) instead of training one."
    ),
    iters: Optional[int] = cli.api_option(
        "Iterations of the short RAVE training (default: the 'demo' train preset's)."
    ),
    permutations: int = cli.api_option("Shuffles for the concept report's permutation test."),
    compare: bool = cli.api_option("Also train CLIP-LIT-Latent on the same budget for the curve figure."),
    raw_curve: bool = cli.api_option("Also train on the raw (uncorrected) residual for the curve figure."),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """Run the whole chain on the bundled demo data and write one index.html."""
    import logging

    from embedlab.demos.clip import first_run_notice
    from embedlab.demos.pipeline import demo, quiet_third_party, training_notice

    if logging.getLogger("embedlab").getEffectiveLevel() == logging.INFO:  # the default: INFO lines only with -v
        logging.getLogger("embedlab").setLevel(logging.WARNING)
    quiet_third_party()
    echo = (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
    if model is None:
        echo(first_run_notice() + " " + training_notice(iters, raw_curve, compare))
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
        echo=echo,
    )
    if as_json:
        return cli.print_json(result)
    typer.echo(f"done in {result['total_s']:.0f} s; open {out / 'index.html'}")


@app.command("compare")
@handle_errors
def compare_cmd(
    a: str = typer.Argument(
        ...,
        help="Set A: a run folder, or images (a folder, a manifest, a CSV/parquet table of paths, a Hugging Face "
        "dataset on disk, webdataset tars); PATH:SELECTOR picks a subset (e.g. runs/x:role=backlit).",
    ),
    b: str = typer.Argument(..., help="Set B, the same forms."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the runs, residual, report, map and index.html."),
    model: Optional[str] = cli.api_option(cli.MODEL_HELP + " Default: the model of A or B when a run."),
    pretrained: Optional[str] = cli.api_option(cli.PRETRAINED_HELP),
    device: str = cli.device_option(),
    batch_size: int = cli.api_option("Images per forward pass."),
    workers: Optional[int] = cli.api_option("Decode worker processes (as for extract)."),
    path_column: Optional[str] = cli.api_option("Table inputs: the column of image paths."),
    image_column: Optional[str] = cli.api_option("Hugging Face inputs: the image column."),
    bootstrap: int = cli.api_option("Bootstrap resamples for the residual's stability (0 = skip)."),
    vocab: Optional[str] = cli.api_option(
        "Concepts: concepts (the concept bank, default for a real CLIP), tokens, words, model, or a file (as "
        "explain-residual)."
    ),
    permutations: int = cli.api_option("Label shuffles for the significance test (0 = skip)."),
    overwrite: bool = cli.api_option("Replace runs in OUT/runs made from other inputs or models."),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """How do A and B differ? Embeds what is not embedded yet (resumable), computes the residual from A to B,
    explains it, draws the map, and writes OUT/index.html whose first paragraph answers the question."""
    cli.finish(cli.call_api("demos.compare:compare", locals()), as_json, _show_comparison)


def _show_comparison(result: dict) -> None:
    """compare's text: the answer, and the page it wrote."""
    typer.echo(result["answer"])
    typer.echo(f"wrote {result['files']['index']}")
