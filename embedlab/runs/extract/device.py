"""device: split from extract.py."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from embedlab._io import read_json
from embedlab._validate import check_param
from embedlab.choices import DECODERS
from embedlab.colour import LUMA
from embedlab.datasets.images import ImageError, decode_image

log = logging.getLogger(__name__)
DEVICE_BATCH_BYTES = 1 << 30  # bound on the decoded + float intermediates of one batch on the device


_CONSTANTS: dict = {}


def pixel_chunks(pixels: list[int], budget: int) -> list[list[int]]:
    """Split positions 0..n-1 into consecutive chunks whose pixel sums stay within `budget` (one item at least)."""
    chunks, cur, total = [], [], 0
    for i, p in enumerate(pixels):
        if cur and total + p > budget:
            chunks.append(cur)
            cur, total = [], 0
        cur.append(i)
        total += p
    if cur:
        chunks.append(cur)
    return chunks


def _preprocess_group(x, size: int):
    """(n, C, H, W) uint8 of one shape on the device -> ((n, 3, size, size) float in [0, 1], (n,) mean luma).

    Resize shortest side (bicubic, antialias), luma on the resized whole image, centre crop."""
    import torch
    import torch.nn.functional as F

    x = x.float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
    luma = torch.einsum("nchw,c->n", x, device_constant(LUMA, x.device)) / (nh * nw)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size], luma


def device_preprocess(images: list, size: int, mean, std, device, budget: int = DEVICE_BATCH_BYTES):
    """Batched resize + centre crop + normalise of uint8 CHW tensors: images of one shape go through one
    interpolate call, in chunks whose float32 copies stay within `budget` bytes. Returns device tensors
    (pixels (n, 3, size, size), mean luma (n,)); nothing is synchronised with the host."""
    import torch

    n = len(images)
    out = torch.empty((n, 3, size, size), device=device)
    luma = torch.empty((n,), device=device)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        groups[tuple(img.shape)].append(i)  # images of one shape may sit on the host and on the device
    for shape, idx in groups.items():
        per = max(1, budget // (4 * 3 * shape[1] * shape[2] + resized_floats(shape, size)))
        for a in range(0, len(idx), per):
            part = idx[a : a + per]
            x = torch.stack([images[i].to(out.device, non_blocking=True) for i in part])
            crop, lum = _preprocess_group(x, size)
            at = index_tensor(part, out.device)
            out[at], luma[at] = crop, lum
    mean_t = device_constant(tuple(mean), out.device).view(1, 3, 1, 1)
    std_t = device_constant(tuple(std), out.device).view(1, 3, 1, 1)
    return out.sub_(mean_t).div_(std_t), luma


def device_constant(values: tuple, device):
    """A small float32 constant (luma weights, mean, std) copied to `device` once and reused (no copy per batch)."""
    import torch

    key = (tuple(float(v) for v in values), str(device))
    t = _CONSTANTS.get(key)
    if t is None:
        t = _CONSTANTS[key] = torch.tensor(key[0], dtype=torch.float32, device=device)
    return t


def resized_floats(shape: tuple, size: int) -> int:
    """Bytes of one float32 image after the shortest-side resize of a (C, H, W) input."""
    h, w = shape[-2:]
    return 4 * 3 * size * max(size, round(max(h, w) * size / max(1, min(h, w))))


def resolve_decode(decode: str, device_type: str, recorded: str | None = None) -> str:
    """'auto': the decode path `recorded` in the run being resumed, if any (a run started with `pil` resumes
    with `pil`); otherwise nvJPEG (torchvision.io.decode_jpeg on the device) on CUDA, PIL elsewhere."""
    check_param("decode", decode, DECODERS, "extract")
    if decode == "auto":
        if recorded in ("pil", "torchvision"):
            return recorded
        return "torchvision" if device_type == "cuda" else "pil"
    return decode


def recorded_decode(run_dir: Path) -> str | None:
    """The decode path of the run already in `run_dir` (None when there is none or it cannot be read)."""
    try:
        return read_json(run_dir / "manifest.json").get("decode")
    except (OSError, ValueError, AttributeError):
        return None


def decode_on_device(good: list[dict], lm, budget: int = DEVICE_BATCH_BYTES):
    """JPEGs decoded by nvJPEG on CUDA (torchvision's CPU decoder elsewhere) in chunks of at most `budget` decoded
    bytes, each chunk preprocessed before the next is decoded; other formats arrive as PIL-decoded tensors.
    Returns (pixels, luma, failed): the rows of the images that decoded, and {position in good: (reason, detail)}."""
    import torch

    dev = lm.device
    size, mean, std = lm.image_size, lm.info["mean"], lm.info["std"]
    pixels = torch.empty((len(good), 3, size, size), device=dev)
    luma = torch.empty((len(good),), device=dev)
    sizes = [3 * b["meta"]["width"] * b["meta"]["height"] for b in good]
    decoder = "nvjpeg" if dev.type == "cuda" else "torchvision-cpu"
    failed: dict[int, tuple[str, str]] = {}
    for chunk in pixel_chunks(sizes, max(1, budget // 5)):
        decoded = decode_jpegs(good, [i for i in chunk if "jpeg" in good[i]], dev, decoder, failed)
        chunk = [i for i in chunk if i not in failed]
        if not chunk:
            continue
        images = [decoded[i] if i in decoded else good[i]["rgb"] for i in chunk]
        p, lum = device_preprocess(images, size, mean, std, dev, budget)
        at = index_tensor(chunk, dev)
        pixels[at], luma[at] = p, lum
    if failed:  # rare: drop the images no decoder could read (one host copy)
        keep = [i for i in range(len(good)) if i not in failed]
        at = index_tensor(keep, dev)
        pixels, luma = pixels[at], luma[at]
    return pixels, luma, failed


def decode_jpegs(good: list[dict], jpeg: list[int], dev, decoder: str, failed: dict) -> dict:
    """Batch-decode the JPEGs at positions `jpeg` (torchvision returns nothing when one image of the batch is
    broken); on failure each is decoded alone, and one that still fails is decoded by PIL on the host (kept as
    an uint8 CHW tensor, decoder "pil") or recorded in `failed` as {position: (reason, detail)}."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    where = dev if dev.type == "cuda" else "cpu"
    if not jpeg:
        return {}
    try:
        out = dict(zip(jpeg, decode_jpeg([good[i]["jpeg"] for i in jpeg], mode=ImageReadMode.RGB, device=where)))
        for i in jpeg:
            good[i]["meta"]["decoder"] = decoder
        return out
    except RuntimeError:
        pass
    out = {}
    for i in jpeg:
        try:
            out[i] = decode_jpeg(good[i]["jpeg"], mode=ImageReadMode.RGB, device=where)
            good[i]["meta"]["decoder"] = decoder
            continue
        except RuntimeError as exc:
            why = f"{decoder}: {str(exc).splitlines()[-1] if str(exc) else type(exc).__name__}"
        try:
            dec = decode_image("", None, data=good[i]["jpeg"].numpy().tobytes())
        except ImageError as exc:
            failed[i] = (exc.reason, f"{exc.detail} ({why})".strip())
            continue
        out[i] = torch.from_numpy(np.asarray(dec.image, dtype=np.uint8).copy()).permute(2, 0, 1)
        good[i]["meta"].update(decoder="pil", notes=f"{why}; decoded by PIL instead")
    return out


def index_tensor(positions: list[int], dev):
    """Positions as an int64 index tensor on `dev`: on CUDA one non_blocking copy from pinned host memory (no sync)."""
    import torch

    t = torch.tensor(positions, dtype=torch.int64)
    if dev.type != "cuda":
        return t
    return t.pin_memory().to(dev, non_blocking=True)
