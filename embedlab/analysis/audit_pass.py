"""The audit's one pass over the image vectors of its runs: every unit's sum of unit vectors (per set, when a residual
is audited) and every metadata slice's image sum, read shard by shard and never held as a whole.

Two engines over the same per-block function (`block_sums`): "local" reads the shards in order; "ray" sends one task
per shard to a Ray instance (a local one started here, or the one already connected) and adds the shards' partial
sums on the driver in shard order, so the two agree to float64 rounding.
"""

from __future__ import annotations

import logging

import numpy as np

from embedlab.analysis.formula import l2n
from embedlab.analysis.null_kernels import membership_sums
from embedlab.analysis.permutation import add_group_sums
from embedlab.analysis.slices import membership
from embedlab.errors import ConfigError

log = logging.getLogger(__name__)
BLOCK = 65536


def block_sums(X: np.ndarray, codes: np.ndarray, M, is_to: np.ndarray | None) -> dict:
    """Partial sums of one block of rows: "units" (present units, (k,) ids), "unit_sums" ((k, d), per set: (2, k, d)
    from/to), "slice_sums" ((S, d), per set (2, S, d)) of the unit-normalised rows. `M`: the block's (b, S) sparse
    slice membership."""
    x = l2n(X)
    present, inverse = np.unique(codes, return_inverse=True)
    sets = [np.ones(len(x), bool)] if is_to is None else [~is_to, is_to]
    unit_sums, slice_sums = [], []
    for keep in sets:
        u = np.zeros((len(present), x.shape[1]))
        add_group_sums(u, inverse[keep], x[keep])
        unit_sums.append(u)
        part = M[keep]
        slice_sums.append(membership_sums(x[keep], part.indptr, part.indices, M.shape[1])[0])
    squeeze = is_to is None
    return {
        "units": present,
        "unit_sums": unit_sums[0] if squeeze else np.stack(unit_sums),
        "slice_sums": slice_sums[0] if squeeze else np.stack(slice_sums),
    }


def screen_block_sums(X: np.ndarray, codes: np.ndarray, M, is_to=None) -> dict:
    """`block_sums` for the screen: the rows as stored (a run's vectors are unit length), in float32, and no sums
    per unit: the last column of `M` marks the audited rows, whose total is returned as the sum of unit 0."""
    part, _ = membership_sums(np.asarray(X, np.float32), M.indptr, M.indices, M.shape[1])
    return {"units": np.array([0]), "unit_sums": part[-1:], "slice_sums": part[:-1]}


def _add(acc: dict, part: dict) -> None:
    if acc["unit_sums"] is None:
        d = part["unit_sums"].shape[-1]
        lead = part["unit_sums"].shape[:-2]
        acc["unit_sums"] = np.zeros((*lead, acc["G"], d))
        acc["slice_sums"] = np.zeros_like(part["slice_sums"], dtype=np.float64)
    acc["unit_sums"][..., part["units"], :] += part["unit_sums"]
    acc["slice_sums"] += part["slice_sums"]


def _shard_rows(runs: list) -> list[tuple]:
    """(run path, shard vectors file, first row in the audit's order, rows) of every done shard of every run."""
    out, offset = [], 0
    for r in runs:
        for _, emb_p, _, first, n in r.shards():
            out.append((str(emb_p), offset + first, n))
        offset += len(r)
    return out


def _shard_task(emb_path: str, start: int, n: int, codes, M, is_to, block_fn=block_sums) -> dict:
    X = np.asarray(np.load(emb_path, mmap_mode="r", allow_pickle=False)[:n], np.float32)
    return block_fn(X, codes, M, is_to)


def stream_sums(runs: list, codes: np.ndarray, G: int, M, is_to=None, engine: str = "local", progress=False,
                block_fn=block_sums) -> dict:  # fmt: skip
    """Unit sums ((G, d), or (2, G, d) from/to) and slice image sums ((S, d) or (2, S, d)) of the runs' vectors in
    the order of their concatenated metadata; `codes` each row's unit, `M` the (n, S) sparse slice membership.
    `block_fn`: the per-block sums (`block_sums`, or `screen_block_sums` for the screen)."""
    import scipy.sparse as sp

    M = sp.csr_matrix(M)
    acc = {"G": G, "unit_sums": None, "slice_sums": None}
    shards = _shard_rows(runs)
    if engine == "ray":
        parts = _ray_parts(shards, codes, M, is_to, block_fn)
    elif engine == "local":
        parts = _local_parts(shards, codes, M, is_to, progress, block_fn)
    else:
        raise ConfigError(f"The 'engine' parameter must be one of ('local', 'ray'). Got {engine!r} instead.")
    for part in parts:
        _add(acc, part)
    return acc


def _local_parts(shards, codes, M, is_to, progress, block_fn):
    from embedlab._io import prefetched, progress_bar

    def blocks():  # read (page faults of the memory map, float32 copy) one block ahead of the sums, in a thread
        for emb, start, n in shards:
            mm = np.load(emb, mmap_mode="r", allow_pickle=False)
            for a in range(0, n, BLOCK):
                b = min(n, a + BLOCK)
                yield slice(start + a, start + b), np.asarray(mm[a:b], np.float32)

    total = sum(n for _, _, n in shards)
    with progress_bar(progress, total=total, desc="audit: reading the vectors", unit="img") as bar:
        for rows, X in prefetched(blocks()):
            yield block_fn(X, codes[rows], M[rows], None if is_to is None else is_to[rows])
            bar.update(len(X))


def _ray_parts(shards, codes, M, is_to, block_fn):
    """One Ray task per shard; results are taken in shard order (the driver's sum does not depend on which task
    finished first)."""
    import ray

    from embedlab.runs.extract.ray import start_local_ray

    started = not ray.is_initialized() and start_local_ray()
    try:
        task = ray.remote(_shard_task)
        refs = []
        for emb, start, n in shards:
            rows = slice(start, start + n)
            refs.append(task.remote(emb, start, n, codes[rows], M[rows], None if is_to is None else is_to[rows],
                                    block_fn))  # fmt: skip
        for ref in refs:
            yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()


def check_units_fit(G: int, d: int, paired: bool, budget: int, n_slices: int = 0, permutations: int = 0) -> None:
    """The permutation test holds every unit's mean vector (and its centred copy; a residual audit also its two
    sets' sums), the slices' (G, S) contrast weights and the (K + 1, G) permutation table: refuse, before reading
    any vector, when they would not fit in `budget` bytes."""
    vectors = G * d * 8 * (4 if paired else 3)
    need = vectors + G * n_slices * 8 + (permutations + 1) * G * 4
    if need > budget:
        raise ConfigError(
            f"The audit would hold {need / 2**30:.1f} GiB for its {G:,} units ({vectors / 2**30:.1f} GiB of unit "
            f"vectors, {G * n_slices * 8 / 2**30:.1f} GiB of slice weights for {n_slices:,} slices, "
            f"{(permutations + 1) * G * 4 / 2**30:.1f} GiB of permutations), over 'memory_budget' "
            f"({budget / 2**30:.1f} GiB). Fix: give the images groups (one unit per group), audit a subset, fewer "
            "slices or permutations, raise 'memory_budget', or rank the slices untested with 'screen'."
        ).naming("memory_budget")


def run_pass(runs: list, keep: np.ndarray, codes: np.ndarray, slices: list, is_to=None, **opts):
    """The audit's units from one pass over `runs`: `keep` (n,) the audited rows of the runs' concatenated metadata,
    `codes` each kept row's unit, `slices` the metadata slices (masks over kept rows), `is_to` (kept rows) when a
    residual is audited. `opts`: engine, progress, memory_budget (bytes), permutations (for the budget). Returns
    (Units, sums): sums holds "unit_sums" ((G, d) or (2, G, d)) and "slice_sums" ((S, d) or (2, S, d)), image sums
    of unit vectors."""

    from embedlab.analysis.audit import Units

    G = int(codes.max()) + 1 if len(codes) else 0
    d = runs[0].dim
    check_units_fit(G, d, is_to is not None, int(opts.get("memory_budget", 4 << 30)), len(slices),
                    int(opts.get("permutations", 0)))  # fmt: skip
    full = np.full(len(keep), G, np.int64)  # rows left out go to one extra unit, dropped after the pass
    full[keep] = codes
    M = membership([sl.mask for sl in slices], len(keep), np.flatnonzero(keep))
    full_to = None
    if is_to is not None:
        full_to = np.zeros(len(keep), bool)
        full_to[keep] = is_to
    acc = stream_sums(runs, full, G + 1, M, full_to, opts.get("engine", "local"), opts.get("progress", False))
    unit_sums = acc["unit_sums"][..., :G, :]
    sizes = np.bincount(codes, minlength=G).astype(np.float64)
    if is_to is None:
        return Units(codes, unit_sums / sizes[:, None], sizes, "groups" if G < len(codes) else "images"), {
            "unit_sums": unit_sums, "slice_sums": acc["slice_sums"]}  # fmt: skip
    n_to = np.bincount(codes, weights=is_to, minlength=G)
    n_from = sizes - n_to
    if (n_to == 0).any() or (n_from == 0).any():
        raise ConfigError("Every audited group must hold images of both sets.")
    U = unit_sums[1] / n_to[:, None] - unit_sums[0] / n_from[:, None]
    return Units(codes, U, sizes, "paired groups"), {"unit_sums": unit_sums, "slice_sums": acc["slice_sums"]}


def slice_set_sums(masks: list, n_metadata: int, sums: dict, codes: np.ndarray, is_to=None) -> list[tuple]:
    """Per slice (from_sum, n_from, to_sum, n_to) of unit vectors for its residual: the rest to the slice, or within
    the slice the 'from' set to the 'to' set. The first `n_metadata` slices' sums come from the pass; later ones
    (found in embedding space: unions of units) from the unit sums."""
    us, ss = sums["unit_sums"], sums["slice_sums"]
    paired = is_to is not None
    total = us.sum(-2)
    out = []
    for s, mask in enumerate(masks):
        if s < n_metadata:
            part = ss[..., s, :]
        else:
            part = us[..., np.unique(codes[mask]), :].sum(-2)
        if paired:
            out.append((part[0], int((mask & ~is_to).sum()), part[1], int((mask & is_to).sum())))
        else:
            out.append((total - part, int((~mask).sum()), part, int(mask.sum())))
    return out
