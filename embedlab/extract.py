"""`embedlab extract`: manifest -> open_clip image embeddings in a resumable, FAISS-indexed run folder.

One pipeline per run: a single loader (its worker processes started once) streams every remaining shard in
order; batches never straddle shards, so a shard's vectors do not depend on which shards were done before
(kill -9 and resume stay bitwise exact). Shards are written, done-marker last, by a writer thread while the
next batches are decoded and encoded. `engine="ray"` runs the same shards on Ray actors (`extract_ray`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import manifests as mf
from ._io import atomic_write_bytes, atomic_write_json, display_path, read_json, usable_cores
from .colour import LUMA
from .errors import ConfigError
from ._validate import Interval, check_param
from .images import (DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, ImageError, check_aspect, decode_image,
                     estimate_jpeg_quality, mean_luma, read_bytes)
from .lock import RunLock
from .runs import Run, check_identity, clear_run, write_shard

log = logging.getLogger(__name__)
DECODERS = ("auto", "pil", "torchvision")
ENGINES = ("local", "ray")
VECTOR_DTYPES = ("float32", "float16")
META_COLUMNS = ("row_id", "path", "file", "content_sha1", "width", "height", "format", "mode", "jpeg_quality",
                "mean_luma", "frames", "notes", "decoder", "role", "split", "group", "pair_id", "gt", "source",
                "manifest_line")
WDS_COLUMNS = ("url", "caption", "key", "status", "source_width", "source_height")
MAX_PENDING_WRITES = 2            # shards handed to the writer thread and not yet written
DEVICE_BATCH_BYTES = 1 << 30      # bound on the decoded + float intermediates of one batch on the device


def safe_text(value):
    """Any str as valid UTF-8 text (bytes a file system allows but UTF-8 does not become \\xNN escapes)."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("ascii")


class Rows:
    """Row id -> manifest entry and readable source (a file path or a tar member), resolved lazily."""

    def __init__(self, man: mf.Manifest, entries):
        self.man, self.entries = man, entries          # entries: a list indexed by row id, or a dict

    def source(self, row_id: int):
        e = self.entries[row_id]
        if e.tar:
            return (self.man.resolve(e.tar["file"]), int(e.tar["offset"]), int(e.tar["size"]), e.tar["member"])
        return mf.materialize(self.man, e.path, e)

    @staticmethod
    def shown(source) -> str:
        return display_path(f"{source[0]}{mf.WDS_SEP}{source[3]}" if isinstance(source, tuple) else source)


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
        except mf.ManifestError:
            raise                                  # the manifest itself changed: stop, not one error per image
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
        if head is not None and head.format == "JPEG" and head.mode in ("RGB", "L") and head.getexif().get(0x0112, 1) == 1 \
                and (self.max_pixels is None or head.width * head.height <= self.max_pixels):
            check_aspect(head.width, head.height, self.max_aspect)
            meta = {"content_sha1": hashlib.sha1(data).hexdigest(), "width": head.width, "height": head.height,
                    "format": "JPEG", "mode": head.mode, "jpeg_quality": estimate_jpeg_quality(head), "frames": 1,
                    "bytes": len(data), "notes": "decoded by torchvision.io.decode_jpeg"}
            return {"row_id": row_id, "jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8), "meta": meta, "error": None}
        dec = decode_image("", self.max_pixels, data=data, max_aspect=self.max_aspect)
        arr = torch.from_numpy(np.asarray(dec.image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return {"row_id": row_id, "rgb": arr, "meta": dict(dec.meta, notes=(dec.meta["notes"] + "; PIL fallback").strip("; "),
                                                           decoder="pil"), "error": None}


def _collate(batch: list[dict]) -> dict:
    """Runs in the worker: one stacked tensor per batch crosses the process boundary, not one per image."""
    import torch

    good = [b for b in batch if b["error"] is None]
    stacked = None
    if good and "pixels" in good[0]:
        stacked = torch.stack([b.pop("pixels") for b in good])
    return {"good": good, "pixels": stacked, "errors": [(b["row_id"], b["error"]) for b in batch if b["error"] is not None],
            "n": len(batch)}


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
    return x[..., top:top + size, left:left + size], luma


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
        groups[tuple(img.shape)].append(i)     # images of one shape may sit on the host and on the device
    for shape, idx in groups.items():
        per = max(1, budget // (4 * 3 * shape[1] * shape[2] + resized_floats(shape, size)))
        for a in range(0, len(idx), per):
            part = idx[a:a + per]
            x = torch.stack([images[i].to(out.device, non_blocking=True) for i in part])
            crop, lum = _preprocess_group(x, size)
            at = index_tensor(part, out.device)
            out[at], luma[at] = crop, lum
    mean_t = device_constant(tuple(mean), out.device).view(1, 3, 1, 1)
    std_t = device_constant(tuple(std), out.device).view(1, 3, 1, 1)
    return out.sub_(mean_t).div_(std_t), luma


_CONSTANTS: dict = {}


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


def default_workers(lm) -> int:
    """Decode workers: on a GPU, up to 8; on the CPU, every core for small (decode-bound) towers, and one for
    large (compute-bound) towers, whose forward pass needs the cores (busy decoders there slow it down)."""
    cores = usable_cores()
    if lm.device.type == "cuda":
        return min(8, cores)
    params = sum(p.numel() for p in lm.model.visual.parameters())
    return min(4, cores) if params < 10_000_000 else 1


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


@dataclass
class Job:
    """Everything one extraction needs; the engines run its remaining shards."""

    run_dir: Path
    man: mf.Manifest
    entries: list
    header: dict
    lm: Any
    decode: str
    batch_size: int
    shard_size: int
    vector_dtype: str
    max_pixels: int | None
    max_aspect: float | None
    workers: int | None
    progress: bool
    extra_columns: tuple = ()
    stats: dict = field(default_factory=dict)
    inputs: int = -1                 # the run's input count where `entries` holds only some rows (a Ray task)

    @property
    def n_inputs(self) -> int:
        return self.inputs if self.inputs >= 0 else len(self.entries)

    def shard_bounds(self, s: int) -> tuple[int, int]:
        return s * self.shard_size, min(self.n_inputs, (s + 1) * self.shard_size)


def extract(manifest: str | os.PathLike, model: str, pretrained: str | None, out: str | os.PathLike, *,
            device: str = "auto", batch_size: int = 64, workers: int | None = None, shard_size: int = 1024,
            decode: str = "auto", vector_dtype: str = "float32", overwrite: bool = False,
            roles: list[str] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            max_aspect: float | None = DEFAULT_MAX_ASPECT, engine: str = "local", address: str | None = None,
            gpus_per_worker: float | None = None, break_lock: bool = False, progress: bool = True,
            loaded_model: Any = None) -> dict:
    """Embed every image of a manifest into a run folder; rerunning the same call resumes where it stopped.

    decode: auto (nvJPEG on CUDA, PIL elsewhere), pil or torchvision. engine: local (one process and its decode
    workers) or ray (the shards on Ray actors, `address` of a running cluster or a local instance; the run folder
    must be on storage every node sees). A run folder is locked while an extract writes it; `break_lock` takes
    over a lock left by a process that is gone. `loaded_model`: an already loaded model (benchmarks, Ray actors).
    Returns the run's summary. Raises IncompatibleRunError when `out` holds a run made with another model,
    preprocessing or input list (unless `overwrite`), RunLockedError when another extract holds it.
    """
    _check_options(vector_dtype, batch_size, shard_size, engine, max_aspect)
    plan = None
    try:
        if engine == "ray":
            import torch

            from . import extract_ray

            plan = extract_ray.plan(address, device, gpus_per_worker, workers)
        job = _prepare(manifest, model, pretrained, out, device=device if plan is None else torch.device(plan.device),
                       decode=decode, batch_size=batch_size, workers=workers, shard_size=shard_size,
                       vector_dtype=vector_dtype, roles=roles, max_pixels=max_pixels, max_aspect=max_aspect,
                       progress=progress, loaded_model=loaded_model, plan=plan, overwrite=overwrite)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        with RunLock(job.run_dir, break_lock=break_lock, what=f"extract --engine {engine}"):
            _open_run(job, overwrite)
            done = set(Run(job.run_dir).done_shards())
            todo = [s for s in range(job.header["shards"]) if s not in done]
            t0 = time.perf_counter()
            counts = extract_ray.run(job, todo, plan, model, pretrained) if plan is not None else _run_local(job, todo)
            elapsed = time.perf_counter() - t0 - counts.pop("startup_seconds", 0.0)
            return finalize(job.run_dir, job.header, this_call=dict(counts, seconds=elapsed, started=job.stats["started"]))
    finally:
        if plan is not None and plan.started_here:
            extract_ray.shutdown()


def _check_options(vector_dtype, batch_size, shard_size, engine, max_aspect) -> None:
    check_param("vector_dtype", vector_dtype, VECTOR_DTYPES, "extract")
    check_param("batch_size", batch_size, Interval(int, 1), "extract")
    check_param("shard_size", shard_size, Interval(int, 1), "extract")
    check_param("engine", engine, ENGINES, "extract")
    check_param("max_aspect", max_aspect, Interval(float, 1), "extract", allow_none=True)   # long side / short side


def _prepare(manifest, model, pretrained, out, *, device, decode, batch_size, workers, shard_size, vector_dtype,
             roles, max_pixels, max_aspect, progress, loaded_model, plan, overwrite=False) -> Job:
    """Read the manifest, load the model and build the run's identity and header (nothing written yet).

    With a Ray plan the device is the actors' (the driver loads the model on its CPU for the identity only)."""
    from . import models

    dev = device if plan is not None else models.resolve_device(device)
    run_dir = Path(out)
    decode = resolve_decode(decode, dev.type, None if overwrite else recorded_decode(run_dir))
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"'out' {display_path(str(run_dir))} is an existing file, not a run folder. "
                          "Fix: pass a folder path (it is created).").naming("out")
    scan = mf.scan_manifest(manifest, roles=roles)      # one streaming pass; entries stay offsets into the file
    man, entries = scan.manifest, scan.manifest.entries
    if not len(entries):
        mf.read_manifest(manifest, check_files=False).select(role=roles[0])  # raises with the roles present
    lm = loaded_model or models.load_model(model, pretrained, "cpu" if plan is not None else dev)
    identity = {
        "model": model, "pretrained": pretrained or "none", "weights_sha256": lm.info["weights_sha256"],
        "preprocess": lm.info["preprocess"] if decode == "pil" else
        f"torchvision.io.decode_jpeg on {dev.type}; resize shortest side to {lm.image_size} (bicubic, antialias), "
        f"centre-crop {lm.image_size}, normalize mean={lm.info['mean']} std={lm.info['std']}; non-JPEG via PIL",
        "decode": decode, "vector_dtype": vector_dtype, "compute_dtype": plan.compute_dtype if plan is not None else models.compute_dtype(dev),
        "input_hash": scan.input_hash, "shard_size": int(shard_size),
    }
    header = dict(identity, **{
        "embedlab_run": 1, "kind": "image-embeddings", "embed_dim": lm.dim, "image_size": lm.image_size,
        "model_info": lm.info, "device": str(dev), "source_manifest": str(Path(manifest).resolve()),
        "source_manifest_name": man.name, "source_manifest_fingerprint": scan.fingerprint,
        "normalisation": "L2 per vector", "status": "running", "inputs": len(entries),
        "shards": (len(entries) + shard_size - 1) // shard_size,
    })
    extra = WDS_COLUMNS if scan.with_meta else ()
    return Job(run_dir, man, entries, header, lm, decode, int(batch_size), int(shard_size), vector_dtype, max_pixels,
               max_aspect, workers, progress, extra,
               {"started": time.time()})


def _open_run(job: Job, overwrite: bool) -> None:
    """Check (or clear) an existing run under the lock, then write the header of a new one."""
    path = job.run_dir / "manifest.json"
    if path.exists():
        if overwrite:
            clear_run(job.run_dir)
        else:
            check_identity(read_json(path), job.header, job.run_dir)
    if not path.exists():
        atomic_write_json(path, job.header)


def _run_local(job: Job, todo: list[int]) -> dict:
    """One DataLoader for every remaining shard; shards go to a writer thread as soon as they are complete."""
    from concurrent.futures import ThreadPoolExecutor

    from torch.utils.data import DataLoader

    lm = job.lm
    n_workers = default_workers(lm) if job.workers is None else int(job.workers)
    batches = ShardBatches(todo, job.shard_size, job.n_inputs, job.batch_size)
    dataset = _ImageDataset(Rows(job.man, job.entries), lm.preprocess, job.decode, job.max_pixels, job.max_aspect)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=n_workers, collate_fn=_collate,
                        pin_memory=lm.device.type == "cuda", prefetch_factor=4 if n_workers > 0 else None,
                        persistent_workers=False)
    bar = _progress_bar(job, sum(batches.shard_rows(s) for s in todo))
    counts = {"embedded": 0, "skipped": 0}
    with ThreadPoolExecutor(1, thread_name_prefix="shard-writer") as writer:
        pending = []

        def complete(shard: int, results: dict) -> None:
            for f in [f for f in pending if f.done()]:
                pending.remove(f)
                f.result()                      # a failed write stops the run now (its shard stays not done)
            while len(pending) >= MAX_PENDING_WRITES:
                pending.pop(0).result()         # bounded: at most MAX_PENDING_WRITES shards wait in memory
            pending.append(writer.submit(write_results, job, shard, results))
            counts["embedded"] += len(results["metas"])
            counts["skipped"] += len(results["errs"])

        collector = ShardCollector(job, todo, complete)
        encoder = BatchEncoder(lm, job.decode)
        for batch in loader:
            collector.add(encoder.push(batch))
            if bar is not None:
                bar.update(batch["n"])
        collector.add(encoder.flush())
        for f in pending:
            f.result()                          # re-raises a writer failure
    if bar is not None:
        bar.close()
    return dict(counts, engine="local", workers=n_workers)


def _progress_bar(job: Job, total: int):
    if not job.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=f"extract {job.run_dir.name}", dynamic_ncols=True)


class ShardCollector:
    """Gathers per-batch results by shard and hands each shard on when all its inputs are accounted for."""

    def __init__(self, job: Job, shards: list[int], on_complete):
        self.job, self.on_complete = job, on_complete
        self.left = {s: job.shard_bounds(s)[1] - job.shard_bounds(s)[0] for s in shards}
        self.parts: dict[int, dict] = {}

    def add(self, result: dict | None) -> None:
        if not result:
            return
        vec_at = 0
        for row_id, meta in result["metas"]:
            part = self._part(row_id)
            part["vecs"].append(result["vecs"][vec_at])
            part["metas"].append((row_id, meta))
            vec_at += 1
        for row_id, err in result["errs"]:
            self._part(row_id)["errs"].append((row_id, err))
        for s in sorted(s for s, p in self.parts.items() if p["n"] == self.left[s]):
            self.on_complete(s, self.parts.pop(s))

    def _part(self, row_id: int) -> dict:
        s = row_id // self.job.shard_size
        part = self.parts.setdefault(s, {"vecs": [], "metas": [], "errs": [], "n": 0})
        part["n"] += 1
        return part


class BatchEncoder:
    """Encodes collated batches on the model's device without a host sync per image.

    Host-to-device copies are issued non_blocking (from pinned memory on CUDA); the results of batch k are
    copied back asynchronously and collected when batch k+1 has been queued, so the host keeps the loader
    busy while the device computes. On the CPU this is the same code with no-op events."""

    def __init__(self, lm, decode: str, budget: int = DEVICE_BATCH_BYTES):
        self.lm, self.decode, self.budget = lm, decode, budget
        self.pending: dict | None = None

    def push(self, batch: dict) -> dict | None:
        current = self._launch(batch)
        previous, self.pending = self.pending, current
        return self._collect(previous)

    def flush(self) -> dict | None:
        previous, self.pending = self.pending, None
        return self._collect(previous)

    def _launch(self, batch: dict) -> dict:
        import torch
        import torch.nn.functional as F

        from . import models

        lm, good = self.lm, batch["good"]
        out = {"good": good, "errs": batch["errors"], "vecs": None, "luma": None, "event": None}
        if not good:
            return out
        with torch.inference_mode():
            if self.decode == "torchvision":
                pixels, luma, failed = decode_on_device(good, lm, self.budget)
                if failed:
                    out["errs"] = list(out["errs"]) + [(good[i]["row_id"], failed[i]) for i in sorted(failed)]
                    good = out["good"] = [b for i, b in enumerate(good) if i not in failed]
                    if not good:
                        return out
            else:
                pixels, luma = batch["pixels"].to(lm.device, non_blocking=True), None
            with models.autocast_context(lm.device):
                feats = lm.model.encode_image(pixels)
            vecs = F.normalize(feats.float(), dim=-1)
        if lm.device.type == "cuda":
            out["vecs"] = vecs.to("cpu", non_blocking=True)
            out["luma"] = luma.to("cpu", non_blocking=True) if luma is not None else None
            out["event"] = torch.cuda.Event()
            out["event"].record()
        else:
            out["vecs"], out["luma"] = vecs, luma
        return out

    @staticmethod
    def _collect(p: dict | None) -> dict | None:
        if p is None:
            return None
        if p["event"] is not None:
            p["event"].synchronize()
        good = p["good"]
        if p["luma"] is not None:
            for b, v in zip(good, p["luma"].tolist()):
                b["meta"]["mean_luma"] = v
        vecs = p["vecs"].numpy() if p["vecs"] is not None else np.zeros((0, 0), np.float32)
        return {"vecs": vecs, "metas": [(b["row_id"], b["meta"]) for b in good], "errs": p["errs"]}


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
    if failed:                                  # rare: drop the images no decoder could read (one host copy)
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


def write_results(job: Job, shard: int, results: dict) -> dict:
    """Write one shard (vectors, metadata, errors, done-marker last)."""
    lo, hi = job.shard_bounds(shard)
    rows = Rows(job.man, job.entries)
    meta_df = meta_frame(results["metas"], rows, job.extra_columns)
    err_df = error_frame(results["errs"], rows)
    vecs = np.asarray(results["vecs"], dtype=np.float32).reshape(-1, job.lm.dim).astype(job.vector_dtype)
    write_shard(job.run_dir, shard, vecs, meta_df, err_df, hi - lo, lo)
    return {"embedded": len(meta_df), "skipped": len(err_df)}


def _safe_record(rec: dict) -> dict:
    """Every str value as valid UTF-8, before pandas/pyarrow see it (they refuse lone surrogates)."""
    return {k: safe_text(v) for k, v in rec.items()}


def error_frame(errs: list, rows: Rows) -> pd.DataFrame:
    # "path" as in metadata.parquet: the manifest's (relative) path, not the resolved absolute file
    recs = [_safe_record({"row_id": r, "path": rows.entries[r].path, "reason": reason, "detail": detail})
            for r, (reason, detail) in errs]
    return pd.DataFrame(recs, columns=["row_id", "path", "reason", "detail"])


def meta_frame(metas: list, rows: Rows, extra_columns: tuple = ()) -> pd.DataFrame:
    """One row per embedded image; every text column is valid UTF-8 whatever bytes the file names hold."""
    out = []
    for row_id, meta in metas:
        e = rows.entries[row_id]
        rec = {"row_id": row_id, "path": e.path, "file": rows.shown(rows.source(row_id)), **meta,
               "role": e.role, "split": e.split, "group": e.group or e.path, "pair_id": e.pair_id, "gt": e.gt,
               "source": e.source, "manifest_line": e.line}
        if extra_columns:
            src = e.meta or {}
            rec.update({k: src.get(k) for k in ("url", "caption", "key", "status")},
                       source_width=src.get("width"), source_height=src.get("height"))
        out.append(_safe_record(rec))
    df = pd.DataFrame(out, columns=list(META_COLUMNS) + ["bytes"] + list(extra_columns))
    df = df.astype({"row_id": "int64", "width": "int64", "height": "int64", "frames": "int64", "manifest_line": "int64",
                    "jpeg_quality": "float64", "mean_luma": "float64"})
    if extra_columns:
        df = df.astype({"source_width": "float64", "source_height": "float64"})
    return df


def finalize(run_dir: Path, header: dict, this_call: dict | None = None, index_budget: str = "4G") -> dict:
    """Consolidate metadata, errors and the FAISS index from the done shards; mark the run complete. The index is
    the exact one, built shard by shard, while its float32 vectors fit `index_budget`; beyond, none (the summary
    says so and points to `embedlab index`)."""
    from .index import finalize_index

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
        built = finalize_index(run_dir, index_budget)
        summary["index"] = {k: built.get(k) for k in ("kind", "factory", "ntotal", "exact", "note") if built.get(k) is not None}
    if this_call:
        secs = this_call["seconds"]
        summary["this_call"] = {"embedded": this_call["embedded"], "skipped": this_call["skipped"],
                                "seconds": round(secs, 3),
                                "images_per_second": round((this_call["embedded"] + this_call["skipped"]) / secs, 2) if secs else None}
        for key in ("engine", "workers", "engine_startup_seconds", "failed_shards"):
            if key in this_call:
                summary["this_call"][key] = this_call[key]
    manifest = read_json(run_dir / "manifest.json")
    manifest.update(status="complete" if complete else "partial", counts=summary,
                    vector_files="shards/emb_*.npy (" + header["vector_dtype"] + ", L2-normalised)")
    atomic_write_json(run_dir / "manifest.json", manifest)
    files = {"run": run_dir, "manifest": run_dir / "manifest.json", "metadata": run_dir / "metadata.parquet",
             "errors": run_dir / "errors.csv", "index": run_dir / "index.faiss"}
    return dict(summary, files={k: str(p) for k, p in files.items() if p.exists()})
