"""collector: split from extract.py."""

from __future__ import annotations

import logging

import numpy as np

from embedlab.runs.extract.job import Job
from embedlab.runs.extract.rows import Rows, error_frame, meta_frame
from embedlab.runs.lock import check_lock
from embedlab.runs.store import write_shard

log = logging.getLogger(__name__)
MAX_PENDING_WRITES = 2  # shards handed to the writer thread and not yet written


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


def write_results(job: Job, shard: int, results: dict) -> dict:
    """Write one shard (vectors, metadata, errors, done-marker last), only while the run lock is still the job's."""
    lo, hi = job.shard_bounds(shard)
    rows = Rows(job.man, job.entries)
    meta_df = meta_frame(results["metas"], rows, job.extra_columns)
    err_df = error_frame(results["errs"], rows)
    vecs = np.asarray(results["vecs"], dtype=np.float32).reshape(-1, job.lm.dim).astype(job.vector_dtype)
    write_shard(
        job.run_dir, shard, vecs, meta_df, err_df, hi - lo, lo, guard=lambda: check_lock(job.run_dir, job.lock_token)
    )
    return {"embedded": len(meta_df), "skipped": len(err_df)}
