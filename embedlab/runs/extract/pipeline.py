"""pipeline: split from extract.py."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any

from embedlab.datasets.images import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS
from embedlab.datasets.inputs import as_manifest
from embedlab.runs.extract.job import _check_options, _open_run, _prepare
from embedlab.runs.extract.local import _run_local
from embedlab.runs.finalize import finalize
from embedlab.runs.lock import RunLock
from embedlab.runs.store import Run

log = logging.getLogger(__name__)


def extract(
    manifest: str | os.PathLike,
    model: str,
    pretrained: str | None,
    out: str | os.PathLike,
    *,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    shard_size: int = 1024,
    decode: str = "auto",
    vector_dtype: str = "float32",
    overwrite: bool = False,
    roles: list[str] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_aspect: float | None = DEFAULT_MAX_ASPECT,
    engine: str = "local",
    address: str | None = None,
    gpus_per_worker: float | None = None,
    break_lock: bool = False,
    progress: bool = True,
    loaded_model: Any = None,
    path_column: str | None = None,
    image_column: str | None = None,
) -> dict:
    """Embed every image of a manifest into a run folder; rerunning the same call resumes where it stopped.

    decode: auto (nvJPEG on CUDA, PIL elsewhere), pil or torchvision. engine: local (one process and its decode
    workers) or ray (the shards on Ray actors, `address` of a running cluster or a local instance; the run folder
    must be on storage every node sees). A run folder is locked while an extract writes it; `break_lock` takes
    over a lock left by a process that is gone. `loaded_model`: an already loaded model (benchmarks, Ray actors).
    `manifest` may be any input form of `embedlab.datasets.inputs` (a folder, a table of paths with `path_column`,
    a Hugging Face dataset on disk with `image_column`, webdataset tars): it is turned into a manifest first, and
    the run records it (manifest.json "input").
    Returns the run's summary. Raises IncompatibleRunError when `out` holds a run made with another model,
    preprocessing or input list (unless `overwrite`), RunLockedError when another extract holds it.
    """
    _check_options(vector_dtype, batch_size, shard_size, engine, max_aspect)
    with _engine_plan(engine, address, device, gpus_per_worker, workers) as (plan, job_device):
        src = as_manifest(manifest, path_column=path_column, image_column=image_column)  # before any model loads
        job = _prepare(
            src.manifest,
            model,
            pretrained,
            out,
            device=job_device,
            decode=decode,
            batch_size=batch_size,
            workers=workers,
            shard_size=shard_size,
            vector_dtype=vector_dtype,
            roles=roles,
            max_pixels=max_pixels,
            max_aspect=max_aspect,
            progress=progress,
            loaded_model=loaded_model,
            plan=plan,
            overwrite=overwrite,
        )
        return _run_job(job, src, plan, model, pretrained, engine, break_lock, overwrite)


@contextmanager
def _engine_plan(engine: str, address, device, gpus_per_worker, workers):
    """(the Ray plan, the device the job is prepared for): (None, `device`) for the local engine; with Ray, the
    plan's device, and the Ray instance started here shut down on the way out."""
    if engine != "ray":
        yield None, device
        return
    import torch

    from embedlab.runs.extract import ray as extract_ray

    plan = extract_ray.plan(address, device, gpus_per_worker, workers)
    try:
        yield plan, torch.device(plan.device)
    finally:
        if plan.started_here:
            extract_ray.shutdown()


def _run_job(job, src, plan, model, pretrained, engine: str, break_lock: bool, overwrite: bool) -> dict:
    """Run the job's remaining shards under the run lock (on Ray with a plan, else here), then finalise the run."""
    if src.form != "manifest":
        job.header["input"] = src.provenance
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(job.run_dir, break_lock=break_lock, what=f"extract --engine {engine}") as lock:
        job.lock_token = lock.token
        _open_run(job, overwrite)
        done = set(Run(job.run_dir).done_shards())
        todo = [s for s in range(job.header["shards"]) if s not in done]
        t0 = time.perf_counter()
        if plan is not None:
            from embedlab.runs.extract import ray as extract_ray

            counts = extract_ray.run(job, todo, plan, model, pretrained)
        else:
            counts = _run_local(job, todo)
        elapsed = time.perf_counter() - t0 - counts.pop("startup_seconds", 0.0)
        lock.verify()  # taken over meanwhile: finalising would mix another configuration's shards
        return finalize(job.run_dir, job.header, this_call=dict(counts, seconds=elapsed, started=job.stats["started"]))
