"""Robust image decoding: every file is either converted to RGB correctly or rejected with a reason.

Handles CMYK, 16-bit, palette (with transparency), RGBA, greyscale, EXIF orientation, animated and
multi-page files (first frame), decompression bombs, truncated, zero-byte, non-image and unsupported files,
broken symlinks and non-UTF-8 file names.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedlab.colour import LUMA

SUPPORTED_FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "MPO", "PPM", "JPEG2000"}
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own default limit
# Longest side / shortest side beyond which an image is refused as `extreme-aspect`: CLIP preprocessing resizes the
# short side to the model's input (224-336 px), so a 200000x1 strip would become a 224 x 44.8M image (30 GB).
# At 100:1 the resized copy stays under 336 * 33600 * 3 bytes = 34 MB (uint8), 135 MB as float32.
DEFAULT_MAX_ASPECT = 100.0

# The IJG standard luminance quantisation table (quality 50), in zig-zag-free natural order.
_IJG_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    dtype=float,
)


class ImageError(Exception):
    """A file that cannot be embedded; `reason` is a short machine-friendly label."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, orientation applied
    meta: dict  # content_sha1, width, height, format, mode, jpeg_quality, frames, notes


def estimate_jpeg_quality(img: Image.Image) -> float | None:
    """IJG quality (1-100) estimated from the luminance quantisation table; None for non-JPEGs."""
    tables = getattr(img, "quantization", None)
    if not tables or 0 not in tables:
        return None
    q = np.asarray(tables[0], dtype=float)
    if q.size != 64:
        return None
    scale = float(np.mean(q / _IJG_LUMA) * 100)
    quality = (200 - scale) / 2 if scale <= 100 else 5000 / scale
    return float(np.clip(round(quality), 1, 100))


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        notes.append(f"{mode} scaled to 8 bit")
        return Image.fromarray(np.clip(arr / top * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.max() > 1 else 1.0
        notes.append("float image scaled to 8 bit")
        return Image.fromarray(np.clip(arr / hi * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append("alpha composited on white")
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK converted")
    return img.convert("RGB") if mode != "RGB" else img


_FDS: dict = {}  # (pid, tar path) -> [descriptor, readers using it now]
_FDS_LOCK = threading.Lock()
_MAX_FDS = 64


@contextmanager
def _tar_fd(path: str):
    """A read-only descriptor per (process, tar file), kept open: members are read with pread (thread-safe). Beyond
    _MAX_FDS open tars, descriptors that no thread is reading are closed (never one in use)."""
    key = (os.getpid(), path)
    with _FDS_LOCK:
        entry = _FDS.get(key)
        if entry is None:
            if len(_FDS) >= _MAX_FDS:
                idle = [k for k, e in _FDS.items() if k[0] == key[0] and e[1] == 0]
                for old in idle[: _MAX_FDS // 2]:
                    os.close(_FDS.pop(old)[0])
            entry = _FDS[key] = [os.open(path, os.O_RDONLY), 0]
        entry[1] += 1
    try:
        yield entry[0]
    finally:
        with _FDS_LOCK:
            entry[1] -= 1


def read_bytes(source) -> bytes:
    """The bytes of a file path, or of a tar member given as (tar path, data offset, size). Raises ImageError."""
    if isinstance(source, tuple):
        tar, offset, size = source[:3]
        try:
            with _tar_fd(tar) as fd:
                data = os.pread(fd, size, offset)
        except FileNotFoundError:
            raise ImageError(
                "missing-file", f"webdataset shard {os.fsencode(tar).decode('utf-8', 'backslashreplace')}"
            ) from None
        except OSError as exc:
            raise ImageError("unreadable", str(exc)) from None
        if len(data) != size:
            raise ImageError(
                "truncated-or-corrupt", f"tar member has {len(data)} of {size} bytes (shard truncated or changed)"
            )
        return data
    path = source
    if os.path.islink(path) and not os.path.exists(path):
        raise ImageError("broken-symlink", os.readlink(path))
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ImageError("missing-file") from None
    except IsADirectoryError:
        raise ImageError("is-a-directory") from None
    except OSError as exc:
        raise ImageError("unreadable", str(exc)) from None


def check_aspect(width: int, height: int, max_aspect: float | None) -> None:
    """Refuse an image whose long side exceeds `max_aspect` times its short side, from its header (before any
    pixel is decoded or resized): the short-side resize of CLIP preprocessing would blow up memory."""
    if max_aspect is None or min(width, height) <= 0:
        return
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect:
        raise ImageError(
            "extreme-aspect",
            f"{width}x{height} px, aspect {ratio:.0f}:1 is above the limit {max_aspect:g}:1 "
            "(max_aspect; `--max-aspect` on the command line): resizing its short side to the model input "
            f"would need {resized_bytes(width, height, 224) / 2**30:.1f} GiB at 224 px; crop it or raise "
            "the limit",
        )


def resized_bytes(width: int, height: int, size: int, channels: int = 3, itemsize: int = 4) -> int:
    """Bytes of the intermediate image a shortest-side resize to `size` makes (before the centre crop)."""
    short, long = min(width, height), max(width, height)
    return int(size) * max(int(size), round(long * size / max(1, short))) * channels * itemsize


_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
)


def signature_format(data: bytes) -> str | None:
    """The image format a file's magic bytes announce (PNG, JPEG, GIF, TIFF, BMP, WEBP, JPEG2000), else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and data[6:10] == b"\x00\x00\x00\x00":  # BMP: magic, file size, zero reserved bytes
        return "BMP"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def _open(data: bytes):
    """PIL's lazy open of an image's bytes, its failures as ImageError reasons (a bomb, damaged, not an image)."""
    try:
        return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("decompression-bomb", str(exc)) from None
    except UnidentifiedImageError:
        fmt = signature_format(data)
        if fmt:  # the file says it is an image (magic bytes) but no decoder can read it: damaged
            raise ImageError(
                "truncated-or-corrupt",
                f"starts with the {fmt} signature but cannot be decoded (damaged header or bad checksum)",
            ) from None
        raise ImageError("not-an-image", "no decoder recognises the content") from None


def decode_image(
    path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS, data: bytes | None = None, max_aspect: float | None = None
) -> DecodedImage:
    """Read, validate and convert one file. Raises ImageError with a reason when it cannot be embedded.

    `max_aspect` (None: no limit) refuses extreme strips from the header, before decoding (`check_aspect`)."""
    if data is None:
        data = read_bytes(path)
    if not data:
        raise ImageError("zero-byte-file")
    sha1 = hashlib.sha1(data).hexdigest()
    notes: list[str] = []
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _open(data)
            fmt = img.format or "unknown"
            if fmt not in SUPPORTED_FORMATS:
                raise ImageError("unsupported-format", fmt)
            check_aspect(img.width, img.height, max_aspect)
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1:
                img.seek(0)
                notes.append(f"first of {frames} frames")
            quality = estimate_jpeg_quality(img) if fmt in ("JPEG", "MPO") else None
            try:
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageError("decompression-bomb", str(exc)) from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise ImageError("truncated-or-corrupt", str(exc)) from None
            orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
            if orientation not in (1, None):
                img = ImageOps.exif_transpose(img)
                notes.append(f"EXIF orientation {orientation} applied")
            src_mode = img.mode
            rgb = _to_rgb(img, notes)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any other decoder failure is a per-file error, not a crash
        raise ImageError("decode-error", f"{type(exc).__name__}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    meta = {
        "content_sha1": sha1,
        "width": rgb.width,
        "height": rgb.height,
        "format": fmt,
        "mode": src_mode,
        "jpeg_quality": quality,
        "frames": frames,
        "bytes": len(data),
        "notes": "; ".join(notes),
    }
    return DecodedImage(rgb, meta)


def mean_luma(img: Image.Image) -> float:
    """Mean sRGB luma (Rec. 709 weights) in [0, 1], on a box-reduced copy (about 64 px on the short side)."""
    factor = max(1, min(img.size) // 64)
    arr = np.asarray(img.reduce(factor) if factor > 1 else img, dtype=np.float32) / 255.0
    return float((arr @ LUMA.astype(np.float32)).mean())


def load_rgb(path: str) -> np.ndarray:
    """An HxWx3 uint8 array for a file (orientation applied); raises ImageError."""
    return np.asarray(decode_image(path).image, dtype=np.uint8)
