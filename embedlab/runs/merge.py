"""merge: split from runs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedlab._io import atomic_write_json, read_json
from embedlab.errors import ConfigError, IncompatibleRunError
from embedlab.runs.store import Run, shard_name, write_shard

MERGE_KEYS = ("model", "pretrained", "weights_sha256", "preprocess", "decode", "vector_dtype", "embed_dim")


def merge_runs(runs: list, out, *, overwrite: bool = False, index_budget: str = "4G", progress: bool = True) -> dict:
    """Merge finished runs extracted separately (several machines, several days) into one run folder `out`.

    Refuses runs whose model, weights, preprocessing, decode path, vector dtype or dimension differ (their vectors
    are not comparable). Row ids are renumbered (run i's ids are offset by the inputs of the runs before it); each
    image keeps `merged_from` (the index of its source run). Shards are copied one at a time, then the run is
    finalised like `extract` (metadata, errors, exact index within `index_budget`). Returns extract's summary
    (with the written files under `files`: run, manifest, metadata, errors, index), `out` and `merged`."""
    import shutil

    from embedlab._io import progress_bar

    srcs = _mergeable(runs)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} exists and is not empty; set 'overwrite' to replace it.").naming("overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    shard, offset, sources = 0, 0, []
    for k, r in enumerate(srcs):
        sources.append(
            {
                "run": str(r.path.resolve()),
                "input_hash": r.manifest.get("input_hash"),
                "row_offset": offset,
                "inputs": int(r.manifest.get("inputs", 0)),
                "compute_dtype": r.manifest.get("compute_dtype"),
            }
        )
        for s, emb_p, meta_p, _, _ in progress_bar(
            progress, r.shards(), desc=f"merge run {k + 1}/{len(srcs)}", unit="shard"
        ):
            _copy_shard(r, k, s, emb_p, meta_p, out, shard, offset)
            shard += 1
        offset += int(r.manifest.get("inputs", 0))
    header = _merged_header(srcs[0].manifest, sources, offset, shard)
    atomic_write_json(out / "manifest.json", header)
    from embedlab.runs.finalize import finalize

    return dict(finalize(out, header, index_budget=index_budget), out=str(out), merged=len(srcs))


def _mergeable(runs: list) -> list[Run]:
    """The runs, refused unless there are two or more, each complete, all of one model and preprocessing."""
    from embedlab.errors import InvalidParameterError

    if len(runs) < 2:
        raise InvalidParameterError(
            f"The 'runs' parameter of merge_runs must hold at least two runs. Got {len(runs)} instead.",
            param="runs",
            owner="merge_runs",
        )
    srcs = [Run(p) for p in runs]
    for r in srcs:
        if r.manifest.get("status") != "complete":
            raise IncompatibleRunError(
                f"Run {r.path} is not complete (status {r.manifest.get('status')!r}); finish it "
                "(rerun its `embedlab extract` command) before merging."
            )
    first = srcs[0]
    for r in srcs[1:]:
        diff = [k for k in MERGE_KEYS if r.manifest.get(k) != first.manifest.get(k)]
        if diff:
            detail = "; ".join(
                f"{k}: {str(first.manifest.get(k))[:60]!r} vs {str(r.manifest.get(k))[:60]!r}" for k in diff
            )
            raise IncompatibleRunError(
                f"Runs {first.path} and {r.path} differ in {', '.join(diff)} ({detail}); their "
                "vectors are not comparable, so they cannot be merged. Re-extract one with the "
                "other's model and preprocessing."
            )
    return srcs


def _copy_shard(r: Run, k: int, s: int, emb_p, meta_p, out: Path, shard: int, offset: int) -> None:
    """Shard `s` of run `r` (the `k`-th) as shard `shard` of `out`: its row ids offset by `offset`, its rows marked
    merged_from=k."""
    meta = pd.read_parquet(meta_p).assign(merged_from=k)
    meta["row_id"] += offset
    err_p = r.path / "shards" / f"err_{shard_name(s)}.parquet"
    errs = pd.read_parquet(err_p) if err_p.exists() else pd.DataFrame(columns=["row_id", "path", "reason", "detail"])
    errs["row_id"] = errs["row_id"].astype("int64") + offset
    done = read_json(r.path / "shards" / f"{shard_name(s)}.done.json")
    vectors = np.load(emb_p, allow_pickle=False)
    write_shard(out, shard, vectors, meta, errs, int(done["inputs"]), int(done["first_row"]) + offset)


def _merged_header(first: dict, sources: list, inputs: int, shards: int) -> dict:
    """The merged run's manifest as it starts (status running): the first run's, with the merge's counts, sources,
    input hash and compute dtype(s)."""
    import hashlib

    header = {k: v for k, v in first.items() if k not in ("counts", "index", "status")}
    header.update(
        inputs=inputs,
        shards=shards,
        merged_from=sources,
        status="running",
        input_hash=hashlib.sha256("".join(str(s["input_hash"]) for s in sources).encode()).hexdigest(),
        compute_dtype=sorted({str(s["compute_dtype"]) for s in sources})
        if len({s["compute_dtype"] for s in sources}) > 1
        else first.get("compute_dtype"),
    )
    return header
