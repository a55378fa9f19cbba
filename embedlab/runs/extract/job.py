"""`embedlab extract`: manifest -> open_clip image embeddings in a resumable, FAISS-indexed run folder.

One pipeline per run: a single loader (its worker processes started once) streams every remaining shard in
order; batches never straddle shards, so a shard's vectors do not depend on which shards were done before
(kill -9 and resume stay bitwise exact). Shards are written, done-marker last, by a writer thread while the
next batches are decoded and encoded. `engine="ray"` runs the same shards on Ray actors (`extract_ray`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedlab._io import atomic_write_json, display_path, read_json, usable_cores
from embedlab._validate import Interval, check_param
from embedlab.choices import ENGINES, VECTOR_DTYPES
from embedlab.datasets.manifest import WDS_COLUMNS, Manifest, read_manifest, scan_manifest
from embedlab.errors import ConfigError
from embedlab.runs.extract.device import recorded_decode, resolve_decode
from embedlab.runs.store import IDENTITY_KEYS, check_identity, clear_run

log = logging.getLogger(__name__)


def default_workers(lm) -> int:
    """Decode workers: on a GPU, up to 8; on the CPU, every core for small (decode-bound) towers, and one for
    large (compute-bound) towers, whose forward pass needs the cores (busy decoders there slow it down)."""
    cores = usable_cores()
    if lm.device.type == "cuda":
        return min(8, cores)
    params = sum(p.numel() for p in lm.model.visual.parameters())
    return min(4, cores) if params < 10_000_000 else 1


@dataclass
class Job:
    """Everything one extraction needs; the engines run its remaining shards."""

    run_dir: Path
    man: Manifest
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
    inputs: int = -1  # the run's input count where `entries` holds only some rows (a Ray task)
    lock_token: str | None = None  # the run lock this job writes under: checked before each shard is published

    @property
    def n_inputs(self) -> int:
        return self.inputs if self.inputs >= 0 else len(self.entries)

    def shard_bounds(self, s: int) -> tuple[int, int]:
        return s * self.shard_size, min(self.n_inputs, (s + 1) * self.shard_size)


def _check_options(vector_dtype, batch_size, shard_size, engine, max_aspect) -> None:
    check_param("vector_dtype", vector_dtype, VECTOR_DTYPES, "extract")
    check_param("batch_size", batch_size, Interval(int, 1), "extract")
    check_param("shard_size", shard_size, Interval(int, 1), "extract")
    check_param("engine", engine, ENGINES, "extract")
    check_param("max_aspect", max_aspect, Interval(float, 1), "extract", allow_none=True)  # long side / short side


def _prepare(
    manifest,
    model,
    pretrained,
    out,
    *,
    device,
    decode,
    batch_size,
    workers,
    shard_size,
    vector_dtype,
    roles,
    max_pixels,
    max_aspect,
    progress,
    loaded_model,
    plan,
    overwrite=False,
) -> Job:
    """Read the manifest, load the model and build the run's identity and header (nothing written yet).

    With a Ray plan the device is the actors' (the driver loads the model on its CPU for the identity only)."""
    from embedlab import models

    dev = device if plan is not None else models.resolve_device(device)
    run_dir = Path(out)
    decode = resolve_decode(decode, dev.type, None if overwrite else recorded_decode(run_dir))
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"'out' {display_path(str(run_dir))} is an existing file, not a run folder. "
            "Fix: pass a folder path (it is created)."
        ).naming("out")
    scan = scan_manifest(manifest, roles=roles)  # one streaming pass; entries stay offsets into the file
    man, entries = scan.manifest, scan.manifest.entries
    if not len(entries):
        read_manifest(manifest, check_files=False).select(role=roles[0])  # raises with the roles present
    if not overwrite:  # a run of other inputs or another model: refused now, before the model loads
        _precheck_identity(run_dir, model, pretrained, scan.input_hash, vector_dtype, shard_size)
    lm = loaded_model or models.load_model(model, pretrained, "cpu" if plan is not None else dev)
    header = _header(manifest, model, pretrained, lm, dev, decode, vector_dtype, shard_size, plan, scan)
    # metadata columns: those the manifest's header names (any input form, datasets/inputs.py), else webdataset's
    extra = tuple(man.header.get("meta_columns") or ()) or (WDS_COLUMNS if scan.with_meta else ())
    return Job(
        run_dir,
        man,
        entries,
        header,
        lm,
        decode,
        int(batch_size),
        int(shard_size),
        vector_dtype,
        max_pixels,
        max_aspect,
        workers,
        progress,
        extra,
        {"started": time.time()},
    )


def _header(manifest, model, pretrained, lm, dev, decode, vector_dtype, shard_size, plan, scan) -> dict:
    """The run's manifest as it starts (status running): its identity (`IDENTITY_KEYS`), the model's record and the
    inputs' counts and provenance."""
    from embedlab import models

    man, entries = scan.manifest, scan.manifest.entries
    identity = {
        "model": model,
        "pretrained": pretrained or "none",
        "weights_sha256": lm.info["weights_sha256"],
        "preprocess": lm.info["preprocess"]
        if decode == "pil"
        else f"torchvision.io.decode_jpeg on {dev.type}; resize shortest side to {lm.image_size} (bicubic, antialias), "
        f"centre-crop {lm.image_size}, normalize mean={lm.info['mean']} std={lm.info['std']}; non-JPEG via PIL",
        "decode": decode,
        "vector_dtype": vector_dtype,
        "compute_dtype": plan.compute_dtype if plan is not None else models.compute_dtype(dev),
        "input_hash": scan.input_hash,
        "shard_size": int(shard_size),
    }
    return dict(
        identity,
        **{
            "embedlab_run": 1,
            "kind": "image-embeddings",
            "embed_dim": lm.dim,
            "image_size": lm.image_size,
            "model_info": lm.info,
            "device": str(dev),
            "source_manifest": str(Path(manifest).resolve()),
            "source_manifest_name": man.name,
            "source_manifest_fingerprint": scan.fingerprint,
            "normalisation": "L2 per vector",
            "status": "running",
            "inputs": len(entries),
            "shards": (len(entries) + shard_size - 1) // shard_size,
        },
    )


def _precheck_identity(run_dir: Path, model, pretrained, input_hash, vector_dtype, shard_size) -> None:
    """The identity keys known before the model loads (model, weights tag, inputs, dtype, shard size) checked
    against an existing run's; the rest (weights hash, preprocessing) is checked under the lock by `_open_run`."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        return
    existing = read_json(path)
    known = {
        "model": model,
        "pretrained": pretrained or "none",
        "input_hash": input_hash,
        "vector_dtype": vector_dtype,
        "shard_size": int(shard_size),
    }
    check_identity(existing, dict({k: existing.get(k) for k in IDENTITY_KEYS}, **known), run_dir)


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
