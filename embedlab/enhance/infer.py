"""`embedlab enhance`: full-resolution inference with the enhancement network (embedlab's own checkpoints or
the published CLIP-LIT / RAVE ones), test-time reflect padding, orientation preserved, PNG out."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .network import EnhancementNet, apply_illumination

log = logging.getLogger(__name__)
DEFAULT_MAX_PIXELS = 16_000_000


def load_enhancer(checkpoint: str | os.PathLike, device="cpu") -> EnhancementNet:
    """The test-time network (reflect padding, no epsilon) with weights from any supported checkpoint."""
    from .train import load_enhancer_state

    net = EnhancementNet("test")
    net.load_state_dict(load_enhancer_state(checkpoint))
    return net.to(device).eval()


@torch.inference_mode()
def enhance_array(net: EnhancementNet, x: torch.Tensor, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Enhance a (B, 3, H, W) [0,1] batch. Above `max_pixels` per image, the illumination map is computed on a
    downscaled copy and upsampled (bilinear): the map is smooth, so this costs little accuracy and bounds memory."""
    from .. import models

    dev = next(net.parameters()).device
    x = x.to(dev)
    h, w = x.shape[-2:]
    with models.autocast_context(dev):
        if max_pixels is None or h * w <= max_pixels:
            light = net.illumination(x)
        else:
            scale = (max_pixels / (h * w)) ** 0.5
            small = F.interpolate(x, size=(max(8, int(h * scale)), max(8, int(w * scale))), mode="bilinear",
                                  antialias=True, align_corners=False)
            light = F.interpolate(net.illumination(small).float(), size=(h, w), mode="bilinear", align_corners=False)
    return apply_illumination(x.float(), light.float(), 0.0)


def list_inputs(inputs: list[str]) -> list[Path]:
    from ..manifests import IMAGE_EXTENSIONS

    files: list[Path] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.exists():
            files.append(p)
        else:
            raise ConfigError(f"Input {p} not found.")
    if not files:
        raise ConfigError(f"No images found in {', '.join(inputs)}.")
    return files


def enhance(checkpoint: str | os.PathLike, inputs: list[str] | str, out: str | os.PathLike, *, device: str = "auto",
            batch_size: int = 4, max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: bool = True) -> list[dict]:
    """Enhance files or folders into `out` as PNGs (name = input stem). Same-size images are batched."""
    from PIL import Image

    from .. import models
    from ..images import ImageError, decode_image

    dev = models.resolve_device(device)
    net = load_enhancer(checkpoint, dev)
    files = list_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, pending = [], {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="enhance", unit="img", dynamic_ncols=True)

    def flush(key):
        items = pending.pop(key)
        x = torch.stack([t for _, t in items])
        y = enhance_array(net, x, max_pixels)
        for (src, _), img in zip(items, y):
            arr = (img.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            dst = out / f"{src.stem}.png"
            Image.fromarray(arr).save(dst)
            results.append({"input": str(src), "output": str(dst), "width": arr.shape[1], "height": arr.shape[0]})
            if bar is not None:
                bar.update(1)

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
    return results
