"""dataset: split from extract.py."""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from embedlab.datasets.images import (
    ImageError,
    check_aspect,
    decode_image,
    estimate_jpeg_quality,
    mean_luma,
    read_bytes,
)
from embedlab.errors import ManifestError
from embedlab.runs.extract.rows import Rows

log = logging.getLogger(__name__)


class _ImageDataset:
    """Decodes one input per item (indexed by row id) in a worker; never raises for a bad file."""

    def __init__(self, rows: Rows, preprocess, decode: str, max_pixels: int | None, max_aspect: float | None):
        self.rows, self.preprocess, self.decode = rows, preprocess, decode
        self.max_pixels, self.max_aspect = max_pixels, max_aspect

    def __getitem__(self, row_id: int) -> dict:
        try:
            source = self.rows.source(row_id)
            data = read_bytes(source)
            if self.decode == "torchvision":
                return self._raw(row_id, data)
            dec = decode_image(self.rows.shown(source), self.max_pixels, data=data, max_aspect=self.max_aspect)
            meta = dict(dec.meta, mean_luma=mean_luma(dec.image), decoder="pil")
            return {"row_id": row_id, "pixels": self.preprocess(dec.image), "meta": meta, "error": None}
        except ImageError as exc:
            return {"row_id": row_id, "meta": None, "error": (exc.reason, exc.detail)}
        except ManifestError:
            raise  # the manifest itself changed: stop, not one error per image
        except Exception as exc:  # noqa: BLE001 - a per-file failure must not stop the run
            return {"row_id": row_id, "meta": None, "error": ("preprocess-error", f"{type(exc).__name__}: {exc}")}

    def _raw(self, row_id: int, data: bytes) -> dict:
        """torchvision path: JPEG bytes travel undecoded (decoded in batches on the device); others via PIL."""
        import io

        import torch
        from PIL import Image

        head = None
        if data[:3] == b"\xff\xd8\xff":
            try:
                head = Image.open(io.BytesIO(data))
            except Exception:  # noqa: BLE001
                head = None
        if (
            head is not None
            and head.format == "JPEG"
            and head.mode in ("RGB", "L")
            and head.getexif().get(0x0112, 1) == 1
            and (self.max_pixels is None or head.width * head.height <= self.max_pixels)
        ):
            check_aspect(head.width, head.height, self.max_aspect)
            meta = {
                "content_sha1": hashlib.sha1(data).hexdigest(),
                "width": head.width,
                "height": head.height,
                "format": "JPEG",
                "mode": head.mode,
                "jpeg_quality": estimate_jpeg_quality(head),
                "frames": 1,
                "bytes": len(data),
                "notes": "decoded by torchvision.io.decode_jpeg",
            }
            return {
                "row_id": row_id,
                "jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8),
                "meta": meta,
                "error": None,
            }
        dec = decode_image("", self.max_pixels, data=data, max_aspect=self.max_aspect)
        arr = torch.from_numpy(np.asarray(dec.image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return {
            "row_id": row_id,
            "rgb": arr,
            "meta": dict(dec.meta, notes=(dec.meta["notes"] + "; PIL fallback").strip("; "), decoder="pil"),
            "error": None,
        }


def _collate(batch: list[dict]) -> dict:
    """Runs in the worker: one stacked tensor per batch crosses the process boundary, not one per image."""
    import torch

    good = [b for b in batch if b["error"] is None]
    stacked = None
    if good and "pixels" in good[0]:
        stacked = torch.stack([b.pop("pixels") for b in good])
    return {
        "good": good,
        "pixels": stacked,
        "errors": [(b["row_id"], b["error"]) for b in batch if b["error"] is not None],
        "n": len(batch),
    }


class ShardBatches:
    """Batches of row ids for the given shards, in order; a batch never straddles two shards."""

    def __init__(self, shards: list[int], shard_size: int, n_inputs: int, batch_size: int):
        self.shards, self.shard_size, self.n, self.batch_size = list(shards), shard_size, n_inputs, batch_size

    def __iter__(self):
        for s in self.shards:
            lo, hi = s * self.shard_size, min(self.n, (s + 1) * self.shard_size)
            for a in range(lo, hi, self.batch_size):
                yield list(range(a, min(hi, a + self.batch_size)))

    def __len__(self) -> int:
        return sum(-(-self.shard_rows(s) // self.batch_size) for s in self.shards)

    def shard_rows(self, s: int) -> int:
        return max(0, min(self.n, (s + 1) * self.shard_size) - s * self.shard_size)
