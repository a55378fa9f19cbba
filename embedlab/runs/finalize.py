"""finalize: split from extract.py."""

from __future__ import annotations

import logging
from pathlib import Path

from embedlab._io import atomic_write_bytes, atomic_write_json, read_json
from embedlab.runs.store import Run

log = logging.getLogger(__name__)


def finalize(run_dir: Path, header: dict, this_call: dict | None = None, index_budget: str = "4G") -> dict:
    """Consolidate metadata, errors and the FAISS index from the done shards; mark the run complete. The index is
    the exact one, built shard by shard, while its float32 vectors fit `index_budget`; beyond, none (the summary
    says so and points to `embedlab index`)."""
    from embedlab.runs.index import finalize_index

    run = Run(run_dir)
    done = run.done_shards()
    complete = len(done) == header["shards"]
    meta = run.metadata
    errors = run.errors()
    summary = {
        "inputs": header["inputs"],
        "embedded": int(len(meta)),
        "skipped": int(len(errors)),
        "shards_done": len(done),
        "shards": header["shards"],
        "skipped_by_reason": errors["reason"].value_counts().to_dict() if len(errors) else {},
    }
    if complete:
        import io

        buf = io.BytesIO()
        meta.to_parquet(buf, index=False)
        atomic_write_bytes(run_dir / "metadata.parquet", buf.getvalue())
        atomic_write_bytes(run_dir / "errors.csv", errors.to_csv(index=False).encode("utf-8", "backslashreplace"))
        built = finalize_index(run_dir, index_budget)
        summary["index"] = {
            k: built.get(k) for k in ("kind", "factory", "ntotal", "exact", "note") if built.get(k) is not None
        }
    if this_call:
        secs = this_call["seconds"]
        summary["this_call"] = {
            "embedded": this_call["embedded"],
            "skipped": this_call["skipped"],
            "seconds": round(secs, 3),
            "images_per_second": round((this_call["embedded"] + this_call["skipped"]) / secs, 2) if secs else None,
        }
        for key in ("engine", "workers", "engine_startup_seconds", "failed_shards"):
            if key in this_call:
                summary["this_call"][key] = this_call[key]
    manifest = read_json(run_dir / "manifest.json")
    manifest.update(
        status="complete" if complete else "partial",
        counts=summary,
        vector_files="shards/emb_*.npy (" + header["vector_dtype"] + ", L2-normalised)",
    )
    atomic_write_json(run_dir / "manifest.json", manifest)
    files = {
        "run": run_dir,
        "manifest": run_dir / "manifest.json",
        "metadata": run_dir / "metadata.parquet",
        "errors": run_dir / "errors.csv",
        "index": run_dir / "index.faiss",
    }
    return dict(summary, files={k: str(p) for k, p in files.items() if p.exists()})
