"""`embedlab extract`: manifest -> open_clip image embeddings in a resumable, FAISS-indexed run folder."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import manifests as mf
from ._io import atomic_write_bytes, atomic_write_json, display_path, read_json, usable_cores
from .errors import ConfigError
from .images import DEFAULT_MAX_PIXELS, ImageError, decode_image, estimate_jpeg_quality, mean_luma
from .runs import Run, check_identity, clear_run, write_shard

log = logging.getLogger(__name__)
DECODERS = ("pil", "torchvision")
META_COLUMNS = ("row_id", "path", "file", "content_sha1", "width", "height", "format", "mode", "jpeg_quality",
                "mean_luma", "frames", "notes", "role", "split", "group", "pair_id", "gt", "source", "manifest_line")


class _ImageDataset:
    """Decodes one input per item in a worker process; never raises for a bad file."""

    def __init__(self, items: list[tuple[int, str]], preprocess, decode: str, max_pixels: int | None):
        self.items, self.preprocess, self.decode, self.max_pixels = items, preprocess, decode, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        row_id, path = self.items[i]
        try:
            if self.decode == "torchvision":
                return self._raw(row_id, path)
            dec = decode_image(path, self.max_pixels)
            meta = dict(dec.meta, mean_luma=mean_luma(dec.image))
            return {"row_id": row_id, "pixels": self.preprocess(dec.image), "meta": meta, "error": None}
        except ImageError as exc:
            return {"row_id": row_id, "pixels": None, "meta": None, "error": (exc.reason, exc.detail)}
        except Exception as exc:  # noqa: BLE001 - a per-file failure must not stop the run
            return {"row_id": row_id, "pixels": None, "meta": None, "error": ("preprocess-error", f"{type(exc).__name__}: {exc}")}

    def _raw(self, row_id: int, path: str) -> dict:
        """torchvision path: JPEG bytes travel undecoded (decoded in batches on the device); others via PIL."""
        import io

        import torch
        from PIL import Image

        with open(path, "rb") as fh:
            data = fh.read()
        head = None
        if data[:3] == b"\xff\xd8\xff":
            try:
                head = Image.open(io.BytesIO(data))
            except Exception:  # noqa: BLE001
                head = None
        if head is not None and head.format == "JPEG" and head.mode in ("RGB", "L") and head.getexif().get(0x0112, 1) == 1 \
                and (self.max_pixels is None or head.width * head.height <= self.max_pixels):
            meta = {"content_sha1": hashlib.sha1(data).hexdigest(), "width": head.width, "height": head.height,
                    "format": "JPEG", "mode": head.mode, "jpeg_quality": estimate_jpeg_quality(head), "frames": 1,
                    "bytes": len(data), "notes": "decoded by torchvision.io.decode_jpeg"}
            return {"row_id": row_id, "jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8), "meta": meta, "error": None}
        dec = decode_image(path, self.max_pixels, data=data)
        arr = torch.from_numpy(np.asarray(dec.image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return {"row_id": row_id, "rgb": arr, "meta": dict(dec.meta, notes=(dec.meta["notes"] + "; PIL fallback").strip("; ")),
                "error": None}


def _collate(batch: list[dict]) -> dict:
    """Runs in the worker: one stacked tensor per batch crosses the process boundary, not one per image."""
    import torch

    good = [b for b in batch if b["error"] is None]
    stacked = None
    if good and "pixels" in good[0]:
        stacked = torch.stack([b.pop("pixels") for b in good])
    return {"good": good, "pixels": stacked, "errors": [(b["row_id"], b["error"]) for b in batch if b["error"] is not None],
            "n": len(batch)}


def _device_preprocess(images: list, size: int, mean, std, device):
    """Resize (shortest side, antialiased bicubic), centre-crop and normalise uint8 CHW tensors on `device`."""
    import torch
    import torch.nn.functional as F

    out = []
    for img in images:
        img = img.to(device, non_blocking=True)
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        x = img.float().unsqueeze(0) / 255.0
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (nh - size) // 2, (nw - size) // 2
        out.append(x[..., top:top + size, left:left + size])
    x = torch.cat(out)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t, [float((o[0] * torch.tensor([0.2126, 0.7152, 0.0722], device=device).view(3, 1, 1)).sum(0).mean())
                                  for o in out]


def default_workers(lm) -> int:
    """Decode workers: on a GPU, up to 8; on the CPU, every core for small (decode-bound) towers, and one for
    large (compute-bound) towers, whose forward pass needs the cores (busy decoders there slow it down)."""
    cores = usable_cores()
    if lm.device.type == "cuda":
        return min(8, cores)
    params = sum(p.numel() for p in lm.model.visual.parameters())
    return min(4, cores) if params < 10_000_000 else 1


def input_hash(records: list[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def extract(manifest: str | os.PathLike, model: str, pretrained: str | None, out: str | os.PathLike, *,
            device: str = "auto", batch_size: int = 64, workers: int | None = None, shard_size: int = 1024,
            decode: str = "pil", vector_dtype: str = "float32", overwrite: bool = False,
            roles: list[str] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            progress: bool = True) -> dict:
    """Embed every image of a manifest into a run folder; rerunning the same call resumes where it stopped.

    Returns the run's summary (counts, skipped files, throughput). Raises IncompatibleRunError when `out`
    holds a run made with another model, preprocessing or input list (unless `overwrite`).
    """
    from . import models

    if decode not in DECODERS:
        raise ConfigError(f"The 'decode' option of extract must be one of {DECODERS}. Got {decode!r} instead.")
    if vector_dtype not in ("float32", "float16"):
        raise ConfigError(f"The 'dtype' option of extract must be float32 or float16. Got {vector_dtype!r} instead.")
    for name, value, lo in (("batch_size", batch_size, 1), ("shard_size", shard_size, 1)):
        if int(value) < lo:
            raise ConfigError(f"The '{name}' option of extract must be an int >= {lo}. Got {value} instead.")
    dev = models.resolve_device(device)
    man = mf.read_manifest(manifest)
    entries = [e for e in man.entries if not roles or e.role in roles]
    if not entries:
        man.select(role=roles[0] if roles else None)  # raises with the roles present
    run_dir = Path(out)
    lm = models.load_model(model, pretrained, dev)
    records = [e.to_record() for e in entries]
    identity = {
        "model": model, "pretrained": pretrained or "none", "weights_sha256": lm.info["weights_sha256"],
        "preprocess": lm.info["preprocess"] if decode == "pil" else
        f"torchvision.io.decode_jpeg on {dev.type}; resize shortest side to {lm.image_size} (bicubic, antialias), "
        f"centre-crop {lm.image_size}, normalize mean={lm.info['mean']} std={lm.info['std']}; non-JPEG via PIL",
        "decode": decode, "vector_dtype": vector_dtype, "compute_dtype": models.compute_dtype(dev),
        "input_hash": input_hash(records), "shard_size": int(shard_size),
    }
    if (run_dir / "manifest.json").exists():
        if overwrite:
            clear_run(run_dir)
        else:
            check_identity(read_json(run_dir / "manifest.json"), identity, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    header = dict(identity, **{
        "embedlab_run": 1, "kind": "image-embeddings", "embed_dim": lm.dim, "image_size": lm.image_size,
        "model_info": lm.info, "device": str(dev), "source_manifest": str(Path(manifest).resolve()),
        "source_manifest_name": man.name, "source_manifest_fingerprint": man.fingerprint(),
        "normalisation": "L2 per vector", "status": "running", "inputs": len(entries),
        "shards": (len(entries) + shard_size - 1) // shard_size,
    })
    if not (run_dir / "manifest.json").exists():
        atomic_write_json(run_dir / "manifest.json", header)

    done = set(Run(run_dir).done_shards())
    todo = [s for s in range(header["shards"]) if s not in done]
    n_workers = default_workers(lm) if workers is None else int(workers)
    fault_after = int(os.environ.get("EMBEDLAB_FAULT_AFTER_SHARDS", "0") or 0)
    embedded = skipped = 0
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        remaining = sum(min(shard_size, len(entries) - s * shard_size) for s in todo)
        bar = tqdm(total=remaining, unit="img", desc=f"extract {run_dir.name}", dynamic_ncols=True)
    for n_written, shard in enumerate(todo, 1):
        lo, hi = shard * shard_size, min(len(entries), (shard + 1) * shard_size)
        items = [(i, mf.materialize(man, entries[i].path, entries[i])) for i in range(lo, hi)]
        vecs, metas, errs = _embed_items(items, lm, decode, batch_size, n_workers, max_pixels, bar)
        meta_df = _meta_frame(metas, entries, items)
        err_df = pd.DataFrame([{"row_id": r, "path": display_path(dict(items)[r]), "reason": reason, "detail": detail}
                               for r, (reason, detail) in errs], columns=["row_id", "path", "reason", "detail"])
        out_vecs = np.asarray(vecs, dtype=np.float32).reshape(-1, lm.dim).astype(vector_dtype)
        write_shard(run_dir, shard, out_vecs, meta_df, err_df, hi - lo, lo)
        embedded += len(meta_df)
        skipped += len(err_df)
        if fault_after and n_written >= fault_after:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: a hard kill between shards
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    return finalize(run_dir, header, this_call={"embedded": embedded, "skipped": skipped,
                                                           "seconds": elapsed, "started": t_start})


def _embed_items(items, lm, decode, batch_size, n_workers, max_pixels, bar):
    from torch.utils.data import DataLoader

    from . import models

    dataset = _ImageDataset(items, lm.preprocess, decode, max_pixels)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=n_workers, collate_fn=_collate,
                        pin_memory=lm.device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if n_workers > 0 else None)
    vecs, metas, errs = [], [], []
    for batch in loader:
        good = batch["good"]
        errs.extend(batch["errors"])
        if good:
            if decode == "torchvision":
                pixels, lumas = _decode_batch_on_device(good, lm)
                for b, luma in zip(good, lumas):
                    b["meta"]["mean_luma"] = luma
            else:
                pixels = batch["pixels"]
            vecs.extend(models.encode_image_batch(lm, pixels))
            metas.extend((b["row_id"], b["meta"]) for b in good)
        if bar is not None:
            bar.update(batch["n"])
    return vecs, metas, errs


def _decode_batch_on_device(good: list[dict], lm):
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    jpeg_idx = [i for i, b in enumerate(good) if "jpeg" in b]
    decoded: dict[int, Any] = {}
    if jpeg_idx:
        dev = lm.device if lm.device.type == "cuda" else "cpu"
        outs = decode_jpeg([good[i]["jpeg"] for i in jpeg_idx], mode=ImageReadMode.RGB, device=dev)
        decoded.update(zip(jpeg_idx, outs))
    images = [decoded[i] if i in decoded else good[i]["rgb"] for i in range(len(good))]
    with torch.inference_mode():
        return _device_preprocess(images, lm.image_size, lm.info["mean"], lm.info["std"], lm.device)


def _meta_frame(metas, entries, items) -> pd.DataFrame:
    files = dict(items)
    rows = []
    for row_id, meta in metas:
        e = entries[row_id]
        rows.append({"row_id": row_id, "path": display_path(e.path), "file": display_path(files[row_id]), **meta,
                     "role": e.role, "split": e.split, "group": e.group or display_path(e.path),
                     "pair_id": e.pair_id, "gt": e.gt, "source": e.source, "manifest_line": e.line})
    df = pd.DataFrame(rows, columns=list(META_COLUMNS) + ["bytes"])
    return df.astype({"row_id": "int64", "width": "int64", "height": "int64", "frames": "int64", "manifest_line": "int64",
                      "jpeg_quality": "float64", "mean_luma": "float64"})


def finalize(run_dir: Path, header: dict, this_call: dict | None = None) -> dict:
    """Consolidate metadata, errors and the FAISS index from the done shards; mark the run complete."""
    from .index import build_index, write_index

    run = Run(run_dir)
    done = run.done_shards()
    complete = len(done) == header["shards"]
    meta = run.metadata
    errors = run.errors()
    summary = {"inputs": header["inputs"], "embedded": int(len(meta)), "skipped": int(len(errors)),
               "shards_done": len(done), "shards": header["shards"],
               "skipped_by_reason": errors["reason"].value_counts().to_dict() if len(errors) else {}}
    if complete:
        import io

        buf = io.BytesIO()
        meta.to_parquet(buf, index=False)
        atomic_write_bytes(run_dir / "metadata.parquet", buf.getvalue())
        atomic_write_bytes(run_dir / "errors.csv", errors.to_csv(index=False).encode("utf-8", "backslashreplace"))
        index = build_index(run.vectors, meta["row_id"].to_numpy(), "flat")
        write_index(index, run_dir / "index.faiss")
        summary["index"] = {"kind": "IndexIDMap2(IndexFlatIP)", "ntotal": int(index.ntotal), "exact": True}
    if this_call:
        secs = this_call["seconds"]
        summary["this_call"] = {"embedded": this_call["embedded"], "skipped": this_call["skipped"],
                                "seconds": round(secs, 3),
                                "images_per_second": round((this_call["embedded"] + this_call["skipped"]) / secs, 2) if secs else None}
    manifest = read_json(run_dir / "manifest.json")
    manifest.update(status="complete" if complete else "partial", counts=summary,
                    vector_files="shards/emb_*.npy (" + header["vector_dtype"] + ", L2-normalised)")
    atomic_write_json(run_dir / "manifest.json", manifest)
    return summary
