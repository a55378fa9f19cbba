"""local: split from extract.py."""

from __future__ import annotations

import logging

from embedlab.runs.extract.collector import MAX_PENDING_WRITES, ShardCollector, write_results
from embedlab.runs.extract.dataset import ShardBatches, _collate, _ImageDataset
from embedlab.runs.extract.encoder import BatchEncoder
from embedlab.runs.extract.job import Job, default_workers
from embedlab.runs.extract.rows import Rows

log = logging.getLogger(__name__)


def _run_local(job: Job, todo: list[int]) -> dict:
    """One DataLoader for every remaining shard; shards go to a writer thread as soon as they are complete."""
    from concurrent.futures import ThreadPoolExecutor

    from torch.utils.data import DataLoader

    lm = job.lm
    n_workers = default_workers(lm) if job.workers is None else int(job.workers)
    batches = ShardBatches(todo, job.shard_size, job.n_inputs, job.batch_size)
    dataset = _ImageDataset(Rows(job.man, job.entries), lm.preprocess, job.decode, job.max_pixels, job.max_aspect)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=n_workers,
        collate_fn=_collate,
        pin_memory=lm.device.type == "cuda",
        prefetch_factor=4 if n_workers > 0 else None,
        persistent_workers=False,
    )
    bar = _progress_bar(job, sum(batches.shard_rows(s) for s in todo))
    counts = {"embedded": 0, "skipped": 0}
    with ThreadPoolExecutor(1, thread_name_prefix="shard-writer") as writer:
        pending = []

        def complete(shard: int, results: dict) -> None:
            for f in [f for f in pending if f.done()]:
                pending.remove(f)
                f.result()  # a failed write stops the run now (its shard stays not done)
            while len(pending) >= MAX_PENDING_WRITES:
                pending.pop(0).result()  # bounded: at most MAX_PENDING_WRITES shards wait in memory
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
            f.result()  # re-raises a writer failure
    if bar is not None:
        bar.close()
    return dict(counts, engine="local", workers=n_workers)


def _progress_bar(job: Job, total: int):
    if not job.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=f"extract {job.run_dir.name}", dynamic_ncols=True)
