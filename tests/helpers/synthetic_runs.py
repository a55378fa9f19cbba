"""Synthetic run folders for tests: the writer of analyses/bench/scale.py (groups, roles, float16 or float32)."""

from embedlab.runs.store import Run


def make_run(path, n, d=32, groups=60, shard_size=700, dtype="float32", V=50, seed=0, no_groups=False):
    import analyses.bench.scale as bench

    orig = bench.synthetic_shard
    if no_groups:  # the same writer, with the group column emptied

        def shard(*a, **k):
            X, meta = orig(*a, **k)
            return X, meta.assign(group=None)

        bench.synthetic_shard = shard
    try:
        bench.write_synthetic_run(path, n, d, groups, shard_size=shard_size, dtype=dtype, V=V, seed=seed)
    finally:
        bench.synthetic_shard = orig
    return Run(path)
