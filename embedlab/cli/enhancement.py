"""Commands of the enhancement stage: train, enhance, evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from embedlab.choices import PRECISIONS
from embedlab.cli import app as cli
from embedlab.cli.app import app, handle_errors
from embedlab.cli.defaults import FROM_API
from embedlab.enhancement.guidance import list_guidance
from embedlab.enhancement.presets import IDENTITY_LOSSES, LR_SCHEDULES, PADDINGS, TrainConfig, list_presets

PrecisionChoice = cli.choices("PrecisionChoice", PRECISIONS)


GUIDANCE_MODES = list_guidance()  # the registry (embedlab.enhancement.guidance) is the source of cli.choices and help
GuidanceChoice = cli.choices("GuidanceChoice", GUIDANCE_MODES)
PresetChoice = cli.choices("PresetChoice", list_presets())  # embedlab.enhancement.presets.PRESETS
IdentityChoice = cli.choices("IdentityChoice", IDENTITY_LOSSES)
_TC = TrainConfig()  # train's help states the defaults of the dataclass, never retyped


# train's help of the options that override the preset (default None), each stating TrainConfig's default
_PRESET_HELP = {
    "init": "reconstruct (the paper's identity-loss warm-up), identity "
    "(output = input at step 0) or a checkpoint (embedlab's or a published .pth).",
    "iters": f"Network iterations in total, reconstruction included ({_TC.iters:,}).",
    "recon_iters": f"Reconstruction warm-up iterations, init reconstruct ({_TC.recon_iters:,}).",
    "stage_iters": f"Network iterations per stage ({_TC.stage_iters:,}).",
    "guidance_iters": f"Prompt/latent refinement iterations per cycle ({_TC.guidance_iters:,}).",
    "guidance_init_iters": f"Prompt/latent cross-entropy initialisation ({_TC.guidance_init_iters:,}).",
    "lr": f"Adam learning rate of the network ({_TC.lr:g}).",
    "batch_size": f"Batch size ({_TC.batch_size}).",
    "size": f"Images are squash-resized to SIZE x SIZE before augmentation ({_TC.size}).",
    "crop": f"Random crop after resizing ({_TC.crop or 'off'}).",
    "pixel_loss": f"EXTENSION (not in the paper): weight of a pixel loss ({_TC.pixel_loss:g} = off).",
    "lr_schedule": f"Learning-rate schedule: {cli.registry_help(LR_SCHEDULES)} ({_TC.lr_schedule}).",
    "grad_clip": f"Clip the gradient's global norm at this ({_TC.grad_clip or 'off'}; the paper: off).",
    "ema": f"Export an exponential moving average of the weights with this decay ({_TC.ema or 'off'}; the paper: off).",
    "identity_weight": f"Weight of the identity term in guided training ({_TC.identity_weight:g}, the paper's).",
    "padding": f"The trained network's padding: {cli.registry_help(PADDINGS)} ({_TC.padding}).",
    "seed": f"Random seed ({_TC.seed}).",
}


def _preset_option(name: str):
    """An option of train that overrides the preset's value (default None: the preset's)."""
    return typer.Option(None, help=_PRESET_HELP[name])


@app.command("train")
@handle_errors
def train_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Training run folder (rerun the same command to resume)."),
    residual: Optional[Path] = cli.api_option(
        "Residual .npy (e.g. corrected.npy) guiding --guidance residual; its sidecar gives thr and the guidance model."
    ),
    backlit: str = typer.Option(
        ...,
        help="Images to enhance: RUN[:SELECTOR] or INPUT[:SELECTOR], INPUT a manifest, a folder (recursive), a "
        "CSV/parquet table of paths, a saved HF dataset or webdataset tars (default selector role=backlit; on a "
        "folder or table only if given).",
    ),
    welllit: Optional[str] = cli.api_option(
        "Well-lit set (latent/prompt modes), in the forms of --backlit (default selector role=welllit). "
        "Unpaired: any well-lit set; paired: the GT of the same scenes."
    ),
    guidance: GuidanceChoice = cli.api_option(cli.registry_help(GUIDANCE_MODES) + "."),
    model: Optional[str] = cli.api_option("Guidance CLIP for latent/prompt (default ViT-B-32). " + cli.MODEL_HELP),
    pretrained: Optional[str] = cli.api_option("Its weights (default openai). " + cli.PRETRAINED_HELP),
    identity: IdentityChoice = cli.api_option(cli.registry_help(IDENTITY_LOSSES) + "."),
    identity_model: str = cli.api_option(
        "open_clip image tower for the identity loss (ResNet: stem+4 stages; ViT: 5 blocks)."
    ),
    identity_pretrained: str = cli.api_option("Its weights. " + cli.PRETRAINED_HELP),
    preset: PresetChoice = cli.api_option(
        "Overrides of the defaults below. " + cli.registry_help(list_presets()) + "."
    ),
    init: Optional[str] = _preset_option("init"),
    iters: Optional[int] = _preset_option("iters"),
    recon_iters: Optional[int] = _preset_option("recon_iters"),
    stage_iters: Optional[int] = _preset_option("stage_iters"),
    guidance_iters: Optional[int] = _preset_option("guidance_iters"),
    guidance_init_iters: Optional[int] = _preset_option("guidance_init_iters"),
    lr: Optional[float] = _preset_option("lr"),
    batch_size: Optional[int] = _preset_option("batch_size"),
    size: Optional[int] = _preset_option("size"),
    crop: Optional[int] = _preset_option("crop"),
    pixel_loss: Optional[float] = _preset_option("pixel_loss"),
    lr_schedule: Optional[str] = _preset_option("lr_schedule"),
    grad_clip: Optional[float] = _preset_option("grad_clip"),
    ema: Optional[float] = _preset_option("ema"),
    identity_weight: Optional[float] = _preset_option("identity_weight"),
    padding: Optional[str] = _preset_option("padding"),
    seed: Optional[int] = _preset_option("seed"),
    device: str = cli.device_option(),
    overwrite: bool = cli.api_option("Start afresh, deleting an existing run in --out."),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """Train the enhancement network with RAVE, CLIP-LIT-Latent or CLIP-LIT guidance (defaults: the paper's; a
    preset overrides them, a flag overrides both)."""
    result = cli.call_api("enhancement.train:train", locals())
    if as_json:
        return cli.print_json(result)
    typer.echo(
        f"trained {result['steps']} iterations in {result['seconds_this_call']} s; enhancer: {result['enhancer']}"
    )


@app.command("enhance")
@handle_errors
def enhance_cmd(
    checkpoint: Path = typer.Argument(
        ..., help="enhancer.safetensors, ckpt_last.pt, or a published CLIP-LIT/RAVE .pth."
    ),
    inputs: List[str] = typer.Argument(
        ..., help="Image files, folders (recursive), manifests, CSV/parquet tables of paths, saved HF datasets or tars."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (PNG, named by input stem)."),
    device: str = cli.device_option(),
    batch_size: int = cli.api_option("Images of one size per forward pass."),
    max_pixels: int = cli.api_option(
        "Above this many pixels per image (default 16,000,000 = 16 MP) "
        "the illumination map is estimated on a downscaled copy and upsampled; "
        "logged once per image."
    ),
    precision: PrecisionChoice = cli.api_option(
        "fp32 (default; matches the published code's outputs to 1e-5) or "
        "bf16 (autocast: faster on a GPU, outputs differ by up to ~1e-2)."
    ),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """Enhance images at full resolution with a trained or published network."""
    result = cli.call_api("enhancement.infer:enhance", locals())
    if as_json:
        return cli.print_json(result)
    typer.echo(
        f"enhanced {result['enhanced']} image(s) into {out}"
        + (f"; {result['skipped']} skipped" if result["skipped"] else "")
    )


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    pred: Path = typer.Option(..., help="Enhanced images: a folder (recursive), a manifest or a table of paths."),
    gt: Optional[str] = cli.api_option(
        "Ground truths: a manifest (.jsonl; pairs by its records' gt), or a folder or table of paths (pairs by "
        "exact stem; a table with a gt column pairs as a manifest)."
    ),
    out: Optional[Path] = typer.Option(
        FROM_API, "--out", "-o", help="Where per_image.csv and summary.json go (default PRED/metrics; beside a file)."
    ),
    gray: bool = cli.api_option("Also the RAVE repo's grayscale PSNR/SSIM protocol."),
    lpips: bool = cli.api_option("Also LPIPS (needs the lpips package and local AlexNet weights)."),
    inputs: Optional[str] = cli.api_option("The inputs (any form of --pred), for the residual projection of inputs."),
    residual: Optional[Path] = cli.api_option("Report the mean projection of embeddings on this residual."),
    device: str = cli.device_option(),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """PSNR/SSIM (and LPIPS) against ground truth, exposure statistics, and the residual projection."""
    cli.finish(cli.call_api("enhancement.evaluate:evaluate", locals()), as_json, _show_metrics)


def _show_metrics(summary: dict) -> None:
    """evaluate's text: the numeric metrics on one line, up to ten notes, and the files."""
    shown = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    typer.echo(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    for note in summary.get("notes", [])[:10]:
        typer.echo(f"note: {note}")
    typer.echo(f"per-image metrics: {summary['files']['per_image']}; summary: {summary['files']['summary']}")
