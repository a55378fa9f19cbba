"""`embedlab evaluate`: full-reference metrics against ground truth (RGB PSNR/SSIM; the RAVE repo's grayscale
protocol as an option; LPIPS when its weights are available locally), no-reference exposure statistics, and the
paper's own yardstick: the mean projection of input and enhanced embeddings on a residual."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from embedlab._io import atomic_write_bytes, atomic_write_json, cache_ref, progress_bar
from embedlab.colour import LUMA, LUMA_601
from embedlab.datasets.manifest import materialize, read_manifest
from embedlab.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)


def psnr_ssim_rgb(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Standard RGB PSNR/SSIM on [0,1] floats (scikit-image, data_range 1, channel_axis 2)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    return (
        float(peak_signal_noise_ratio(gt, pred, data_range=1.0)),
        float(structural_similarity(gt, pred, data_range=1.0, channel_axis=2)),
    )


def psnr_ssim_gray(pred_u8: np.ndarray, gt_u8: np.ndarray) -> tuple[float, float]:
    """The RAVE repo's protocol: grayscale uint8 PSNR; SSIM with data_range = max - min of the enhanced image."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def gray(a):
        return (a.astype(np.float64) @ LUMA_601).round().clip(0, 255).astype(np.uint8)

    gp, gg = gray(pred_u8), gray(gt_u8)
    rng = float(gp.max() - gp.min()) or 1.0
    return (
        float(peak_signal_noise_ratio(gg, gp, data_range=255)),
        float(structural_similarity(gg, gp, data_range=rng)),
    )


def exposure_stats(u8: np.ndarray) -> dict:
    """Mean sRGB luma, share of clipped pixels (any channel >= 250) and of near-black pixels (luma < 0.1)."""
    x = u8.astype(np.float32) / 255.0
    luma = x @ LUMA.astype(np.float32)
    return {
        "mean_luma": float(luma.mean()),
        "share_clipped": float((u8 >= 250).any(-1).mean()),
        "share_near_black": float((luma < 0.1).mean()),
    }


def _stem(name: str) -> str:
    from embedlab.datasets.layouts import baid_stem

    return baid_stem(Path(name).stem)[0]


def _gt_by_record(man) -> dict:
    """{stem of a record's image: its gt} of the records of `man` that have a `gt`."""
    by_stem = {}
    for e in man.entries:
        if e.gt:
            by_stem[Path(materialize(man, e.path, e)).stem] = materialize(man, e.gt)
            by_stem.setdefault(Path(e.path).stem, materialize(man, e.gt))
    return by_stem


def pair_files(pred: Path, gt: str) -> list[tuple[Path, Path | None]]:
    """Pairs (pred, gt) by manifest (the stem of each record's image -> its gt), or, for any other input form (a
    folder, a table of paths, ...), by the stem of each ground-truth image; a table with a `gt` column pairs as a
    manifest does."""
    from embedlab.datasets.inputs import as_manifest
    from embedlab.enhancement.infer import list_inputs

    preds = list_inputs([str(pred)])
    g = Path(gt)
    if g.suffix == ".jsonl":
        by_stem = _gt_by_record(read_manifest(g))
        return [(p, Path(by_stem[p.stem]) if p.stem in by_stem else None) for p in preds]
    man = read_manifest(as_manifest(g).manifest)  # a wrong form (one image, vectors, ...): one line naming the forms
    if any(e.gt for e in man.entries):
        by_stem = _gt_by_record(man)
        return [(p, Path(by_stem[p.stem]) if p.stem in by_stem else None) for p in preds]
    gts = {_stem(f): Path(f) for f in (materialize(man, e.path, e) for e in man.entries)}
    return [(p, gts.get(_stem(p.name))) for p in preds]


def _lpips_model():
    try:
        import lpips
    except ImportError:
        raise MissingDependencyError(
            "LPIPS needs the 'lpips' package (pip install lpips) and its AlexNet weights."
        ) from None
    try:
        return lpips.LPIPS(net="alex", verbose=False)
    except Exception as exc:  # noqa: BLE001 - offline weight fetches fail in many ways
        raise MissingDependencyError(
            f"LPIPS weights are not available locally ({type(exc).__name__}); "
            "skipping LPIPS. Download them once on a connected machine."
        ) from None


def _image_row(p: Path, g: Path | None, with_gt: bool, gray: bool, lp) -> dict:
    """One prediction's metrics: exposure statistics; against its ground truth `g` (the prediction resized to it
    where sizes differ), PSNR/SSIM, in grayscale too with `gray`, and LPIPS with a model `lp`."""
    from embedlab.datasets.images import decode_image

    pu8 = np.asarray(decode_image(str(p)).image, dtype=np.uint8)
    row = {"pred": str(p), "gt": cache_ref(g) if g else None, **exposure_stats(pu8)}  # no cache root shown
    if with_gt and g is None:
        row["note"] = "no ground truth paired"
    if g is not None:
        gu8 = np.asarray(decode_image(str(g)).image, dtype=np.uint8)
        if gu8.shape != pu8.shape:
            from PIL import Image

            pu8 = np.asarray(Image.fromarray(pu8).resize((gu8.shape[1], gu8.shape[0]), Image.BICUBIC))
            row["note"] = "prediction resized to the ground truth's size"
        row["psnr"], row["ssim"] = psnr_ssim_rgb(pu8 / 255.0, gu8 / 255.0)
        if gray:
            row["psnr_gray"], row["ssim_gray"] = psnr_ssim_gray(pu8, gu8)
        if lp is not None:
            import torch

            to_t = lambda a: torch.from_numpy(a / 127.5 - 1).permute(2, 0, 1)[None].float()  # noqa: E731
            with torch.no_grad():
                row["lpips"] = float(lp(to_t(pu8), to_t(gu8)))
    return row


def evaluate(
    pred: str | os.PathLike,
    gt: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    gray: bool = False,
    lpips: bool = False,
    inputs: str | os.PathLike | None = None,
    residual: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Per-image metrics (CSV) and a summary (JSON) of `pred` (a folder, recursively, or any other input form; see
    `pair_files` for `gt`). With `gt`: PSNR/SSIM (RGB; grayscale too with `gray`), LPIPS
    if asked and available. Always: exposure statistics. With `residual`: mean projection on the residual of the
    enhanced images (and of `inputs`, if given) through the residual's model."""
    from embedlab.enhancement.infer import list_inputs

    pred_dir = Path(pred)  # a folder (recursively) or any other input form (a manifest, a table of paths, ...)
    out = Path(out) if out else pred_dir / "metrics" if pred_dir.is_dir() else pred_dir.parent / "metrics"
    pairs = pair_files(pred_dir, gt) if gt else [(p, None) for p in list_inputs([str(pred_dir)])]
    notes = []
    lp = None
    if lpips and gt:
        try:
            lp = _lpips_model()
        except MissingDependencyError as exc:
            notes.append(str(exc))
            log.warning("%s", exc)
    rows = [_image_row(p, g, bool(gt), gray, lp) for p, g in progress_bar(progress, pairs, desc="evaluate", unit="img")]
    table = pd.DataFrame(rows)
    if gt and table.get("psnr") is not None and table["psnr"].notna().sum() == 0:
        raise ConfigError(
            f"No prediction in {pred_dir} pairs with a ground truth in {gt}. Fix: name outputs by the "
            "input's stem, or pass the manifest that lists the pairs."
        )
    summary = {"images": len(table), "paired": int(table["gt"].notna().sum()) if "gt" in table else 0, "notes": notes}
    for col in ("psnr", "ssim", "psnr_gray", "ssim_gray", "lpips", "mean_luma", "share_clipped", "share_near_black"):
        if col in table and table[col].notna().any():
            summary[col] = float(table[col].mean())
    if residual:
        summary["residual_projection"] = residual_projection(
            residual, [r["pred"] for r in rows], inputs=inputs, device=device
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "per_image.csv", table.to_csv(index=False).encode())
    atomic_write_json(out / "summary.json", summary)
    summary["files"] = {"per_image": str(out / "per_image.csv"), "summary": str(out / "summary.json")}
    return summary


def residual_projection(residual: str, enhanced: list[str], inputs: str | None = None, device: str = "auto") -> dict:
    """The paper's yardstick: mean <embedding, r> of enhanced images (and inputs) with the residual's model."""
    from embedlab import models
    from embedlab.analysis.residual_file import load_residual
    from embedlab.datasets.images import decode_image
    from embedlab.enhancement.infer import list_inputs

    res = load_residual(residual)
    mi = res.info["model"]
    lm = res.load_model(device)

    def mean_proj(files):
        feats = [
            models.encode_image_batch(lm, lm.preprocess(decode_image(str(f)).image).unsqueeze(0))[0] for f in files
        ]
        return float(np.mean(np.stack(feats) @ res.vector)) if feats else None

    out = {"model": f"{mi['model']}/{mi['pretrained']}", "thr": res.thr, "enhanced": mean_proj(enhanced)}
    if inputs:
        out["input"] = mean_proj(list_inputs([inputs]))
    return out
