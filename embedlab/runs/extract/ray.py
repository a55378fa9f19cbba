"""`extract --engine ray`: the run's remaining shards as tasks on a pool of Ray actors.

Each actor holds one model (on one GPU, or on a CPU share) and a few decode threads; a task embeds one shard
and writes its files and done-marker into the run folder itself, exactly as the local engine would, so the run
folder must be on storage that every node mounts at the same path (checked when the actors start). The driver
only schedules, then finalises like the local engine.

Failures: an actor that dies (process killed, node lost) is restarted by Ray and its queued shards retried
(`max_restarts` / `max_task_retries`, bounded); past that the driver re-queues the shard on another actor, at
most `MAX_RESUBMITS` times (likewise after a node death, out-of-memory kill, lost object or an actor that is only
unreachable for a while, which stays in the pool). Every actor checks at start that it sees the run folder and
the dataset (manifest root, first input). A shard whose task raises (a data or code error) is recorded in the
run's summary as failed and not retried. A killed driver leaves done-markers: rerunning the command resumes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from embedlab._io import atomic_write_json, usable_cores
from embedlab.datasets.manifest import Manifest, ManifestEntry, is_virtual
from embedlab.errors import ConfigError, DeviceError, DiskFullError, MissingDependencyError
from embedlab.runs.lock import LockLostError, check_lock

log = logging.getLogger(__name__)
ACTOR_RESTARTS = 2
MAX_RESUBMITS = 2
TASKS_PER_ACTOR = 2  # one running, one queued: the actor never waits for the driver between shards
ENGINE_DIR = ".engine"


@dataclass
class Plan:
    device: str  # "cuda" or "cpu", for every actor
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    compute_dtype: str
    started_here: bool
    startup_seconds: float


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "'engine' 'ray' needs Ray: pip install 'embedlab[ray]' (or pip install 'ray>=2.9')."
        ).naming("engine") from None
    return ray


def ray_messages_to_stderr() -> None:
    """Ray's driver prints raylet messages (a worker died, a task is retried) and, with log_to_driver, its workers'
    output on sys.stdout; this sends them all to stderr, so stdout carries only embedlab's own output (`--json`
    stays parseable when an actor dies). Called before ray.init (the worker-log handler binds the function then);
    a Ray without that hook is left as it is."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - another Ray layout
        return
    real = getattr(ray_worker, "print_to_stdstream", None)
    if real is None or getattr(real, "embedlab_to_stderr", False):
        return

    def to_stderr(data, *args, **kwargs):
        return real(dict(data, is_err=True), *args, **kwargs)

    to_stderr.embedlab_to_stderr = True
    ray_worker.print_to_stdstream = to_stderr


def start_local_ray() -> bool:
    """Start a Ray instance on this machine (its cores; an object store of at most 1 GB, 30% of the memory where
    that is less: Ray's own default can be 0 bytes in containers). Returns True: the caller started it."""
    ray = _ray()
    mem = min(1_000_000_000, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.3))
    ray.init(num_cpus=usable_cores(), object_store_memory=mem, include_dashboard=False, log_to_driver=False)
    return True


def plan(address: str | None, device: str, gpus_per_worker: float | None, workers: int | None) -> Plan:
    """Connect to Ray (ADDRESS, or a local instance started here) and size the actor pool from its resources."""
    ray = _ray()
    ray_messages_to_stderr()
    t0 = time.perf_counter()
    started = False
    if not ray.is_initialized():
        if address:
            try:
                ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(
                    f"'engine' 'ray': could not connect to the Ray cluster at 'address' {address!r} "
                    f"({str(exc).strip().splitlines()[0][:200]}). Fix: start it (`ray start --head`) "
                    "or leave 'address' out to start a local instance."
                ).naming("engine", "address") from None
        else:
            started = start_local_ray()
    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
    spec = (device or "auto").lower()
    use_gpu = gpus > 0 if spec == "auto" else spec.startswith("cuda")
    if use_gpu and gpus == 0:
        raise DeviceError(
            f"'device' {device!r} with 'engine' 'ray', but the Ray cluster has no GPU. Use 'device' 'cpu'."
        ).naming("device", "engine")
    if gpus_per_worker is not None and float(gpus_per_worker) <= 0 and use_gpu:
        raise ConfigError(f"'gpus_per_worker' must be > 0 on GPUs. Got {gpus_per_worker} instead.").naming(
            "gpus_per_worker"
        )
    if use_gpu:
        gpw = float(gpus_per_worker or 1)
        n = max(1, int(gpus // gpw))
        cpw = float(workers) if workers else max(1.0, min(8.0, (cpus - 1) // n))
    else:
        gpw, cpw = 0.0, float(workers or 1)
        n = max(1, int(cpus // cpw))
    dtype = "bfloat16-autocast" if use_gpu else "float32"
    return Plan("cuda" if use_gpu else "cpu", n, cpw, gpw, dtype, started, time.perf_counter() - t0)


class ShardActor:
    """A Ray actor: one model, a few decode threads, and the run folder (shared storage)."""

    def __init__(self, spec: dict):
        from concurrent.futures import ThreadPoolExecutor

        from PIL import Image

        from embedlab import models

        self.spec = spec
        Image.MAX_IMAGE_PIXELS = spec["max_pixels"]  # set once: decode threads then never race on it
        self.lm = models.load_model(spec["model"], spec["pretrained"], spec["device"])
        self.man = Manifest(path=None, header={"root": spec["root"]})
        self.threads = max(1, int(spec["threads"]))
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")

    def check(self) -> dict:
        """Who and where this actor is, and whether it sees the driver's run folder and model."""
        from embedlab import models

        run_dir = Path(self.spec["run_dir"])
        me = {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self.lm.device), "error": None}
        probe = run_dir / ENGINE_DIR / "probe.json"
        try:
            token = json.loads(probe.read_text())["token"]
        except (OSError, ValueError, KeyError):
            token = None
        unseen = [p for p in self.spec.get("probe_paths", []) if not os.path.exists(p)]
        if token != self.spec["token"]:
            me["error"] = (
                f"the run folder {run_dir} is not visible from Ray node {me['host']} (or is another folder "
                "there). Fix: put --out on storage every node mounts at the same path (NFS, Lustre, ...)."
            )
        elif unseen:
            me["error"] = (
                f"Ray node {me['host']} cannot see the dataset: {unseen[0]} does not exist there (every image "
                "would be recorded as missing). Fix: mount the images at the same path on every node."
            )
        elif self.lm.info["weights_sha256"] != self.spec["weights_sha256"]:
            me["error"] = f"node {me['host']} loaded different weights for {self.spec['model']} than the driver."
        elif models.compute_dtype(self.lm.device) != self.spec["compute_dtype"]:
            me["error"] = (
                f"node {me['host']} computes in {models.compute_dtype(self.lm.device)}, the run records "
                f"{self.spec['compute_dtype']}: use one GPU type per run."
            )
        else:
            atomic_write_json(
                run_dir / ENGINE_DIR / f"worker-{me['host']}-{me['pid']}.json", dict(me, started=time.time())
            )
        return me

    def embed_shard(self, shard: int, records: list) -> dict:

        from embedlab.runs.extract.collector import ShardCollector, write_results
        from embedlab.runs.extract.dataset import ShardBatches, _ImageDataset
        from embedlab.runs.extract.encoder import BatchEncoder
        from embedlab.runs.extract.job import Job
        from embedlab.runs.extract.rows import Rows

        s = self.spec
        entries = {row_id: ManifestEntry(**rec) for row_id, rec in records}
        job = Job(
            run_dir=Path(s["run_dir"]),
            man=self.man,
            entries=entries,
            header={},
            lm=self.lm,
            decode=s["decode"],
            batch_size=s["batch_size"],
            shard_size=s["shard_size"],
            vector_dtype=s["vector_dtype"],
            max_pixels=s["max_pixels"],
            max_aspect=s["max_aspect"],
            workers=None,
            progress=False,
            extra_columns=tuple(s["extra_columns"]),
            inputs=s["inputs"],
            lock_token=s.get("lock_token"),
        )
        dataset = _ImageDataset(
            Rows(self.man, entries), self.lm.preprocess, s["decode"], s["max_pixels"], s["max_aspect"]
        )
        done = {}
        collector = ShardCollector(job, [shard], lambda sh, results: done.update(write_results(job, sh, results)))
        encoder = BatchEncoder(self.lm, s["decode"])
        for batch in self._decoded(dataset, ShardBatches([shard], job.shard_size, job.n_inputs, job.batch_size)):
            collector.add(encoder.push(batch))
        collector.add(encoder.flush())
        return dict(done, shard=shard, host=socket.gethostname(), pid=os.getpid())

    def _decoded(self, dataset, batches):
        """Collated batches, decoded by the thread pool a few batches ahead of the encoder (bounded)."""
        from embedlab.runs.extract.dataset import _collate

        def work(ids):
            batch = _collate([dataset[i] for i in ids])
            if batch["pixels"] is not None and self.lm.device.type == "cuda":
                batch["pixels"] = batch["pixels"].pin_memory()
            return batch

        queue = deque()
        for ids in batches:
            queue.append(self.pool.submit(work, ids))
            if len(queue) > self.threads:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def _spec(job, plan_: Plan, model: str, pretrained: str | None, token: str) -> dict:
    return {
        "model": model,
        "pretrained": pretrained,
        "device": plan_.device,
        "run_dir": str(job.run_dir.resolve()),
        "root": str(job.man.root),
        "decode": job.decode,
        "batch_size": job.batch_size,
        "shard_size": job.shard_size,
        "vector_dtype": job.vector_dtype,
        "max_pixels": job.max_pixels,
        "max_aspect": job.max_aspect,
        "extra_columns": list(job.extra_columns),
        "weights_sha256": job.lm.info["weights_sha256"],
        "compute_dtype": job.header["compute_dtype"],
        "threads": plan_.cpus_per_actor,
        "token": token,
        "inputs": job.n_inputs,
        "probe_paths": probe_paths(job),
        "lock_token": job.lock_token,
    }


def probe_paths(job) -> list[str]:
    """The manifest root and the first input's file (or tar), where the driver sees them: every actor must too."""

    paths = [str(job.man.root)]
    if len(job.entries):
        e = job.entries[0]
        if e.tar:
            paths.append(job.man.resolve(e.tar["file"]))
        elif not is_virtual(e.path):
            paths.append(job.man.resolve(e.path))
    return [p for p in paths if os.path.exists(p)]


def start_actors(job, plan_: Plan, model: str, pretrained: str | None) -> list:
    """Start the pool and check that every actor sees the run folder and the same model."""
    ray = _ray()
    token = uuid.uuid4().hex
    atomic_write_json(job.run_dir / ENGINE_DIR / "probe.json", {"token": token})
    cls = ray.remote(ShardActor).options(
        num_cpus=plan_.cpus_per_actor,
        num_gpus=plan_.gpus_per_actor,
        max_restarts=ACTOR_RESTARTS,
        max_task_retries=ACTOR_RESTARTS,
    )
    actors = [cls.remote(_spec(job, plan_, model, pretrained, token)) for _ in range(plan_.actors)]
    for info in ray.get([a.check.remote() for a in actors]):
        if info["error"]:
            for a in actors:
                ray.kill(a)
            raise ConfigError(f"Ray engine: {info['error']}")
    return actors


def run(job, todo: list[int], plan_: Plan, model: str, pretrained: str | None) -> dict:
    """Embed the shards `todo` on Ray actors; returns counts like the local engine (and the start-up time)."""
    import shutil

    ray = _ray()
    t0 = time.perf_counter()
    actors = start_actors(job, plan_, model, pretrained) if todo else []
    actor_start = time.perf_counter() - t0  # inside the caller's timing window: excluded from img/s
    counts = {
        "embedded": 0,
        "skipped": 0,
        "engine": "ray",
        "workers": len(actors),
        "startup_seconds": actor_start,
        "engine_startup_seconds": round(plan_.startup_seconds + actor_start, 3),
        "failed_shards": {},
    }
    bar = None
    if job.progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(todo), unit="shard", desc=f"extract {job.run_dir.name} (ray x{len(actors)})", dynamic_ncols=True
        )
    try:
        _schedule(ray, job, actors, todo, counts, bar)
    finally:
        for a in actors:
            ray.kill(a)
        if bar is not None:
            bar.close()
        shutil.rmtree(job.run_dir / ENGINE_DIR, ignore_errors=True)  # on the way out, whatever stopped the run
    if counts["failed_shards"]:
        log.error(
            "%d shard(s) failed and were not retried: %s",
            len(counts["failed_shards"]),
            "; ".join(f"{k}: {v}" for k, v in list(counts["failed_shards"].items())[:3]),
        )
    return counts


def shutdown() -> None:
    """Stop the local Ray instance `plan` started (never a cluster joined by address)."""
    _ray().shutdown()


def _payload(job, shard: int) -> list:
    lo, hi = job.shard_bounds(shard)
    return [(i, dict(job.entries[i].to_record(), line=job.entries[i].line)) for i in range(lo, hi)]


def _schedule(ray, job, actors: list, todo: list[int], counts: dict, bar) -> None:
    queue, inflight = deque(todo), {}
    load = {id(a): 0 for a in actors}
    alive, resubmits = list(actors), {}
    while queue or inflight:
        for a in alive:
            while queue and load[id(a)] < TASKS_PER_ACTOR:
                shard = queue.popleft()
                inflight[a.embed_shard.remote(shard, _payload(job, shard))] = (a, shard)
                load[id(a)] += 1
        if not inflight:
            raise ConfigError(f"Ray engine: every actor died; {len(queue)} shard(s) left. Rerun to resume.")
        ready, _ = ray.wait(list(inflight), num_returns=1)
        actor, shard = inflight.pop(ready[0])
        load[id(actor)] -= 1
        check_lock(job.run_dir, job.lock_token)  # taken over: stop scheduling (the actors are killed by `run`)
        try:
            res = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            on_failure(ray, exc, actor, shard, alive, queue, resubmits, counts)
            continue
        counts["embedded"] += res["embedded"]
        counts["skipped"] += res["skipped"]
        if bar is not None:
            bar.update(1)
        shard_finished(job, shard, res)


def on_failure(ray, exc, actor, shard: int, alive: list, queue: deque, resubmits: dict, counts: dict) -> str:
    """What a failed shard task means. A full disk or a lost run lock: raised here (the run stops, in one line).
    The task raised (a data or code error): recorded, not retried. The actor is
    gone beyond Ray's restarts: dropped from the pool. It is only unreachable for now (ActorUnavailableError),
    or the node/worker/object died or ran out of memory: kept. In every case but the first the shard is queued
    again, at most MAX_RESUBMITS times. Returns the verdict ("failed", "dropped", "retried")."""
    exc_mod = ray.exceptions
    cause = getattr(exc, "cause", None)
    if isinstance(cause, (DiskFullError, LockLostError)):
        raise cause from None  # the disk is full or the lock was taken over: no other shard can be written either
    if isinstance(exc, exc_mod.RayTaskError):
        counts["failed_shards"][str(shard)] = str(exc).strip().splitlines()[-1][:300]
        return "failed"
    unavailable = getattr(exc_mod, "ActorUnavailableError", ())
    verdict = "retried"
    if isinstance(exc, exc_mod.RayActorError) and not isinstance(exc, unavailable):
        if actor in alive:
            alive.remove(actor)
        verdict = "dropped"
    resubmits[shard] = resubmits.get(shard, 0) + 1
    if resubmits[shard] > MAX_RESUBMITS:
        counts["failed_shards"][str(shard)] = f"failed {resubmits[shard]} times on Ray: {type(exc).__name__}"
        return "failed"
    queue.appendleft(shard)
    return verdict


def shard_finished(job, shard: int, result: dict) -> None:
    """Called by the driver after each shard an actor has written (a seam for tests and progress hooks)."""
