"""`embedlab enhance`: full-resolution inference with the enhancement network (embedlab's own checkpoints or
the published CLIP-LIT / RAVE ones), test-time reflect padding, orientation preserved, PNG out."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embedlab._io import IMAGE_EXTENSIONS, check_output_dir, display_path
from embedlab._validate import check_param
from embedlab.choices import PRECISIONS
from embedlab.enhancement.network import EnhancementNet, apply_illumination, load_enhancer_state
from embedlab.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_MAX_PIXELS = 16_000_000


def load_enhancer(checkpoint: str | os.PathLike, device="cpu") -> EnhancementNet:
    """The test-time network (reflect padding, no epsilon) with weights from any supported checkpoint."""
    net = EnhancementNet("test")
    net.load_state_dict(load_enhancer_state(checkpoint))
    return net.to(device).eval()


def illumination_size(h: int, w: int, max_pixels: int | None) -> tuple[int, int] | None:
    """(h, w) of the downscaled copy the illumination map is estimated on, or None when the image (h x w) is
    within `max_pixels` and the map is computed at full resolution."""
    if max_pixels is None or h * w <= max_pixels:
        return None
    scale = (max_pixels / (h * w)) ** 0.5
    return max(8, int(h * scale)), max(8, int(w * scale))


def precision_context(dev: torch.device, precision: str):
    """fp32: no autocast and, on CUDA, no TF32 in convolutions or matmuls (the published code's arithmetic); bf16:
    autocast on the device (fp16 on GPUs without bf16)."""
    from embedlab import models

    check_param("precision", precision, PRECISIONS, "enhance")
    if precision == "bf16":
        return models.autocast_context(dev) if dev.type == "cuda" else torch.autocast(dev.type, dtype=torch.bfloat16)
    return _no_tf32() if dev.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def _no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.inference_mode()
def enhance_array(
    net: EnhancementNet, x: torch.Tensor, max_pixels: int | None = DEFAULT_MAX_PIXELS, precision: str = "fp32"
) -> torch.Tensor:
    """Enhance a (B, 3, H, W) [0,1] batch. Above `max_pixels` per image, the illumination map is computed on a
    downscaled copy and upsampled (bilinear): the map is smooth, so this costs little accuracy and bounds memory.
    `precision` fp32 (default) reproduces the published code; bf16 runs the network under autocast."""
    dev = next(net.parameters()).device
    x = x.to(dev)
    h, w = x.shape[-2:]
    small_size = illumination_size(h, w, max_pixels)
    with precision_context(dev, precision):
        if small_size is None:
            light = net.illumination(x)
        else:
            small = F.interpolate(x, size=small_size, mode="bilinear", antialias=True, align_corners=False)
            light = F.interpolate(net.illumination(small).float(), size=(h, w), mode="bilinear", align_corners=False)
    return apply_illumination(x.float(), light.float(), 0.0)


def list_inputs(inputs: list[str]) -> list[Path]:
    """The image files of `inputs`: image files as they are, and any input form of embedlab.datasets.inputs (a
    folder, recursively; a manifest; a table of paths; ...); a wrong form gets one line naming those accepted."""
    from embedlab.datasets.inputs import input_images

    files: list[Path] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
        else:
            files += [Path(f) for f in input_images(p)]
    if not files:
        raise ConfigError(f"No images found in {', '.join(map(str, inputs))}.")
    return files


def _check_output_names(files: list[Path]) -> None:
    """Refuse, before any work, two inputs that would be written to the same OUT/<stem>.png."""
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen and seen[f.stem] != f:
            raise ConfigError(
                f"{display_path(str(seen[f.stem]))} and {display_path(str(f))} would both be written as "
                f"{f.stem}.png. Fix: enhance them into separate 'out' folders, or rename one."
            )
        seen[f.stem] = f


def _enhance_batch(net, items: list, out: Path, max_pixels, precision: str, results: list, bar) -> None:
    """Enhance a batch of same-size images [(file, tensor)] and write each as OUT/<stem>.png; append a record each
    to `results`."""
    from PIL import Image

    x = torch.stack([t for _, t in items])
    y = enhance_array(net, x, max_pixels, precision)
    small = illumination_size(x.shape[-2], x.shape[-1], max_pixels)
    for (src, _), img in zip(items, y):
        if small is not None:
            log.info(
                "%s: %dx%d px is above max_pixels %d: its illumination map is estimated on a downscaled "
                "%dx%d copy and upsampled",
                display_path(str(src)),
                x.shape[-1],
                x.shape[-2],
                max_pixels,
                small[1],
                small[0],
            )
        arr = (img.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        dst = out / f"{src.stem}.png"
        Image.fromarray(arr).save(dst)
        results.append({"input": str(src), "output": str(dst), "width": arr.shape[1], "height": arr.shape[0]})
        if bar is not None:
            bar.update(1)


def enhance(
    checkpoint: str | os.PathLike,
    inputs: list[str] | str,
    out: str | os.PathLike,
    *,
    device: str = "auto",
    batch_size: int = 4,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    precision: str = "fp32",
) -> dict:
    """Enhance image files or any input form (a folder, recursively; a manifest; a table of paths; ...) into `out`
    as PNGs (name = input stem; two inputs of one stem are refused), batching same-size images. Returns {"files":
    {input: output PNG}, "images": a record per input (output or None, size or error), "enhanced", "skipped"}."""
    from embedlab import models
    from embedlab.datasets.images import ImageError, decode_image

    precision_context(torch.device("cpu"), precision)  # validates the option before any work
    check_output_dir(out)
    files = list_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))  # before the model
    _check_output_names(files)
    dev = models.resolve_device(device)
    net = load_enhancer(checkpoint, dev)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, pending = [], {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="enhance", unit="img", dynamic_ncols=True)

    def flush(key):
        _enhance_batch(net, pending.pop(key), out, max_pixels, precision, results, bar)

    for f in files:
        try:
            img = decode_image(str(f)).image
        except ImageError as exc:
            log.warning("skipped %s: %s", f, exc)
            results.append({"input": str(f), "output": None, "error": str(exc)})
            continue
        t = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        key = tuple(t.shape)
        pending.setdefault(key, []).append((f, t))
        if len(pending[key]) >= batch_size:
            flush(key)
    for key in list(pending):
        flush(key)
    if bar is not None:
        bar.close()
    done = {r["input"]: r["output"] for r in results if r["output"] is not None}
    return {"files": done, "images": results, "enhanced": len(done), "skipped": len(results) - len(done)}
