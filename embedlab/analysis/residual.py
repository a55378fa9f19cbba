"""Residual vectors between two image sets (RAVE, docs/method.md section 1) with provenance and stability.

Math lives in small pure functions (`rave_residual`, `mean_difference`, `bootstrap_stability`,
`compare_nonsemantic`); `residual()` does the I/O: it reads run folders and writes `residual.npy` (float32,
shape (d,)) plus a JSON sidecar `residual.json`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedlab._io import parse_bytes
from embedlab._validate import Interval, check_param
from embedlab.analysis.bootstrap import (
    bootstrap_summary,
    group_bootstrap_from_sums,
    group_resample_counts,
    image_bootstrap_weights,
)
from embedlab.analysis.checks import check_separation, compare_nonsemantic
from embedlab.analysis.formula import residual_from_sums, separation
from embedlab.analysis.residual_file import Residual, check_residual_target, save_residual
from embedlab.analysis.sums import (
    NONSEMANTIC_SAMPLE,
    SetRows,
    group_bootstrap_bytes,
    group_sums_dtype,
    nonsemantic_samples,
    preload_accumulate_kernel,
    stream_sums,
)
from embedlab.choices import METHODS
from embedlab.errors import ConfigError, IncompatibleRunError
from embedlab.runs.store import Run

log = logging.getLogger(__name__)


GROUP_COLUMNS = ("group",)


def _bootstrap(
    stats: list[dict],
    full: np.ndarray,
    n_boot: int,
    seed: int,
    method: str,
    unit: str,
    scheme: str,
    progress: bool = False,
    counts: list[np.ndarray] | None = None,
) -> dict:
    if unit == "group":
        sums = [p["group_sums"] for p in stats]
        cos = group_bootstrap_from_sums(
            full, sums, [p["group_sizes"] for p in stats], n_boot, seed, method, progress, counts
        )
        return dict(
            bootstrap_summary(cos, unit, seed, scheme), group_sums_dtype=str(np.result_type(*[S.dtype for S in sums]))
        )
    a, b = stats
    r = residual_from_sums(a["boot_sums"], a["boot_counts"], b["boot_sums"], b["boot_counts"], method)[0]
    return bootstrap_summary(r @ full, unit, seed, scheme)


BOOT_SCHEMES = {
    "group": "groups resampled with replacement (multinomial counts over per-group sums; the same draws as the "
    "in-memory bootstrap)",
    "multinomial": "images resampled with replacement (multinomial counts per image; the same draws as the "
    "in-memory bootstrap)",
    "poisson": "Poisson(1) weight per image, drawn while streaming (the Poisson bootstrap: equal in distribution "
    "to resampling images given the resample size, which varies by about sqrt(n))",
}


def _read_sets(r_from: Run, r_to: Run, from_: str, to: str):
    from embedlab.datasets.selector import Selector

    s_from, s_to = Selector.parse(from_), Selector.parse(to)
    wanted = [*s_from.columns, *s_to.columns, *GROUP_COLUMNS]  # for every row; the rest for a sample
    meta_a = r_from.read_metadata(r_from.available_columns(wanted))
    meta_b = meta_a if r_to is r_from else r_to.read_metadata(r_to.available_columns(wanted))
    m_from, m_to = s_from.mask(meta_a, f"run {r_from.path}"), s_to.mask(meta_b, f"run {r_to.path}")
    if r_to is r_from and np.any(m_from & m_to):
        raise ConfigError(
            f"Sets {from_!r} and {to!r} share {int((m_from & m_to).sum())} images; they must be disjoint."
        )
    return m_from, m_to, SetRows(meta_a, m_from, r_from), SetRows(meta_b, m_to, r_to)


def _stream_sets(
    r_from: Run,
    r_to: Run,
    m_from,
    m_to,
    meta_from,
    meta_to,
    method,
    bootstrap,
    seed,
    budget,
    block,
    progress=False,
    side=None,
):
    """The two sets' sufficient statistics in one streaming pass per run, and the bootstrap unit and scheme:
    groups (their sums) when every image has one and the sums fit half the budget, else images. With `side` (an
    executor), the group bootstrap's draws are made there during the pass; returned as a future (else None)."""
    c_from, c_to = meta_from.group_codes(), meta_to.group_codes()
    d = r_from.dim
    unit = "group" if c_from is not None and c_to is not None else "image"
    gdtype = None
    if unit == "group" and bootstrap:
        n_groups = [int(c.max()) + 1 if len(c) else 0 for c in (c_from, c_to)]
        largest = max([int(np.bincount(c).max()) for c in (c_from, c_to) if len(c)], default=0)
        gdtype = group_sums_dtype(largest)  # one storage type for both sets, also when they come from two runs
        if group_bootstrap_bytes(n_groups, d, bootstrap, gdtype) > budget // 2:
            log.warning(
                "residual: %d groups' sums would not fit half the memory budget; bootstrapping images instead",
                sum(n_groups),
            )
            unit = "image"
    codes = [c_from, c_to] if unit == "group" and bootstrap else [None, None]  # group sums: for the bootstrap
    draws = (
        side.submit(group_resample_counts, n_groups, bootstrap, seed)
        if side is not None and codes[0] is not None
        else None
    )
    boot = None
    scheme = "group"
    if bootstrap and unit == "image":
        weights, scheme = image_bootstrap_weights(
            (len(meta_from), len(meta_to)), bootstrap, seed, budget // 16, progress
        )
        boot = {"weights": weights, "n_boot": bootstrap, "seed": seed}
    if r_to is r_from:
        st_from, st_to = stream_sums(r_from, [m_from, m_to], codes, method, boot, block, progress, gdtype)
    else:
        b_from = dict(boot, weights=[boot["weights"][0]]) if boot else None
        b_to = dict(boot, weights=[boot["weights"][1]], first_set=1) if boot else None
        st_from = stream_sums(r_from, [m_from], codes[:1], method, b_from, block, progress, gdtype)[0]
        st_to = stream_sums(r_to, [m_to], codes[1:], method, b_to, block, progress, gdtype)[0]
    if st_from["count"] == 0 or st_to["count"] == 0:
        raise ConfigError("A residual needs at least one image in each set.")
    return st_from, st_to, unit, scheme, c_from, c_to, draws


def _open_runs(run, to_run) -> tuple[Run, Run]:
    """The run of each set (one object when both sets come from one run), refusing runs of different models."""
    r_from = run if isinstance(run, Run) else Run(run)
    r_to = (to_run if isinstance(to_run, Run) else Run(to_run)) if to_run is not None else r_from
    if r_to is not r_from and r_from.model_identity != r_to.model_identity:
        diff = {
            k: (r_from.model_identity[k], r_to.model_identity[k])
            for k in r_from.model_identity
            if r_from.model_identity[k] != r_to.model_identity[k]
        }
        raise IncompatibleRunError(
            f"Runs {r_from.path} and {r_to.path} used different models or preprocessing "
            f"({', '.join(diff)}); a residual needs one. Re-extract one of them with the other's "
            f"model: `embedlab extract ... --model {r_from.manifest['model']} --pretrained "
            f"{r_from.manifest['pretrained']}`."
        )
    return r_from, r_to


def _resolve_sets(run, from_, to, to_run) -> tuple[Run, Run, str, str]:
    """The run of each set and each set's selector (a run's only set where it is not named); `residual(run_a,
    run_b)`: the second argument is the second run, not a selector."""
    if to_run is None and _is_run(from_):
        from_, to_run = None, from_
    r_from, r_to = _open_runs(run, to_run)
    from_ = _only_set(r_from, "from_") if from_ is None else from_
    to = _only_set(r_to, "to") if to is None else to
    return r_from, r_to, from_, to


@dataclass
class _Pass:
    """What the pass over the runs gives: each set's mask, metadata rows and sums, the bootstrap's unit and scheme,
    the group codes, the group bootstrap's draws (a future, or None) and the non-semantic samples."""

    m_from: np.ndarray
    m_to: np.ndarray
    meta_from: SetRows
    meta_to: SetRows
    st_from: dict
    st_to: dict
    unit: str
    scheme: str
    c_from: np.ndarray | None
    c_to: np.ndarray | None
    draws: object
    samples: tuple


def _one_pass(r_from: Run, r_to: Run, from_: str, to: str, method, bootstrap, seed, budget, block, progress) -> _Pass:
    """Read the sets and stream their sums, then check that the sets' means are told apart at the stored precision.
    One side thread: numba's start-up overlaps the metadata read; the sample's parquet reads and the bootstrap
    draws overlap the vector pass."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as side:
        kernel = side.submit(preload_accumulate_kernel)
        m_from, m_to, meta_from, meta_to = _read_sets(r_from, r_to, from_, to)
        samples = side.submit(nonsemantic_samples, meta_from, meta_to, NONSEMANTIC_SAMPLE, seed)
        st_from, st_to, unit, scheme, c_from, c_to, draws = _stream_sets(
            r_from, r_to, m_from, m_to, meta_from, meta_to, method, bootstrap, seed, budget, block, progress, side
        )
        kernel.result()
    check_separation(
        separation(st_from["sum"], st_from["count"], st_to["sum"], st_to["count"], method),
        r_from.manifest.get("vector_dtype", "float32"),
        f"{r_from.path}:{from_}",
        f"{r_to.path}:{to}",
    )
    return _Pass(m_from, m_to, meta_from, meta_to, st_from, st_to, unit, scheme, c_from, c_to, draws, samples.result())


def _stability(p: _Pass, r: np.ndarray, bootstrap: int, seed: int, method: str, progress: bool) -> dict:
    """The bootstrap's summary of the residual's stability, from the pass's sums (and draws)."""
    draws = p.draws.result() if p.draws is not None else None
    return _bootstrap([p.st_from, p.st_to], r, bootstrap, seed, method, p.unit, BOOT_SCHEMES[p.scheme], progress, draws)


def residual(
    run: "str | os.PathLike | Run",
    from_: "str | os.PathLike | Run | None" = None,
    to: str | None = None,
    out: str | os.PathLike | None = None,
    *,
    to_run: "str | os.PathLike | Run | None" = None,
    method: str = "rave",
    bootstrap: int = 200,
    seed: int = 0,
    memory_budget: "str | int" = "1G",
    block: int = 65536,
    progress: bool = True,
    overwrite: bool = False,
) -> Residual:
    """Compute the residual from set `from_` to set `to` of a run (or of `to_run`) and write it with its sidecar.

    Streams the memory-mapped shards once, `block` vectors at a time, keeping float64 sums per set (and per group
    for the group bootstrap, float32 while groups are small: `group_sums_dtype`); `memory_budget` bounds what it
    holds beyond one block (per-thread group sums and the group draws, `group_bootstrap_bytes`; bootstrap weights).
    An existing `out` that is not a residual embedlab wrote is refused unless `overwrite`.

    In a notebook: `residual(run_a, run_b)` (runs or their folders) is the residual from every image of run_a to
    every image of run_b (a run of one set; else name them with `from_` and `to`), computed in memory when `out`
    is None (the Residual's `path` is then None; `explain_residual`, `correct` and `probe_residual` take it as
    it is)."""
    check_param("method", method, METHODS, "residual")
    check_param("bootstrap", bootstrap, Interval(int, 0), "residual")
    budget = parse_bytes(memory_budget)
    if out is not None:
        check_residual_target(out, overwrite)  # before any run is read: an existing file not ours needs 'overwrite'
    r_from, r_to, from_, to = _resolve_sets(run, from_, to, to_run)
    p = _one_pass(r_from, r_to, from_, to, method, bootstrap, seed, budget, block, progress)
    a, b = p.st_from, p.st_to
    r, thr, v_from, v_to = residual_from_sums(a["sum"], a["count"], b["sum"], b["count"], method)
    stab = _stability(p, r, bootstrap, seed, method, progress) if bootstrap > 0 else None
    info = {
        "embedlab_residual": 1,
        "method": method,
        "thr": thr,
        "thr_definition": "<v_to, r> (the paper's target projection)",
        "model": _model_record(r_from.manifest),
        "from": _set_record(r_from, from_, p.m_from, p.c_from),
        "to": _set_record(r_to, to, p.m_to, p.c_to),
        "cos_v_from_v_to": float(v_from @ v_to),
        "v_from": v_from.astype(np.float32).tolist(),
        "v_to": v_to.astype(np.float32).tolist(),
        "bootstrap": stab,
        "nonsemantic": _nonsemantic(p.samples, len(p.meta_from), len(p.meta_to), seed),
        "edits": [],
    }
    if out is None:
        return Residual(r.astype(np.float32), dict(info, dim=int(len(r))), None)
    save_residual(out, r, info)
    return Residual(r.astype(np.float32), info, Path(out))


def _nonsemantic(samples, n_from: int, n_to: int, seed: int) -> dict:
    """The non-semantic comparison of the two sets' samples, with how they were sampled; its warnings logged."""
    nonsem = compare_nonsemantic(*samples)
    nonsem["sample"] = {
        "max_per_set": NONSEMANTIC_SAMPLE,
        "seed": seed,
        "from": min(n_from, NONSEMANTIC_SAMPLE),
        "to": min(n_to, NONSEMANTIC_SAMPLE),
    }
    for w in nonsem["warnings"]:
        log.warning("residual: %s", w)
    return nonsem


def _model_record(mi: dict) -> dict:
    """The sidecar's record of the model (from the run manifest of the `from_` set)."""
    keys = ("model", "pretrained", "weights_sha256", "preprocess", "decode", "embed_dim")
    return {**{k: mi[k] for k in keys}, "image_size": mi.get("image_size")}


def _set_record(run: Run, selector: str, mask: np.ndarray, codes) -> dict:
    """The sidecar's record of one set: its run, selector, size, groups and the run's input provenance."""
    return {
        "run": str(run.path.resolve()),
        "selector": selector,
        "count": int(mask.sum()),
        "groups": int(codes.max()) + 1 if codes is not None and len(codes) else None,
        "manifest_fingerprint": run.manifest.get("source_manifest_fingerprint"),
        "input_hash": run.manifest.get("input_hash"),
    }


def _is_run(value) -> bool:
    return isinstance(value, Run) or (
        isinstance(value, (str, os.PathLike)) and (Path(value) / "manifest.json").is_file()
    )


def _only_set(run: Run, param: str) -> str:
    """The selector of a run's only set (role); a run of several sets needs `param` to name one."""
    roles = sorted(map(str, run.read_metadata(["role"])["role"].dropna().unique()))
    if len(roles) != 1:
        raise ConfigError(
            f"Run {run.path} holds several sets (roles {', '.join(roles[:10])}); the residual needs one each side. "
            f"Fix: name it with {param!r}, e.g. {param}='role={roles[0] if roles else 'backlit'}'."
        ).naming(param)
    return f"role={roles[0]}"
