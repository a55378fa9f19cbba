"""`python tests/kill_after_shards.py N ARGS...` runs `embedlab ARGS...` and kills its own process with SIGKILL
right after the N-th shard of an extraction is written: a hard crash between shards, for the resume test. The
hook lives here, not in the package: it wraps the shard writer that the extraction's collector calls."""

import os
import signal
import sys

import embedlab.runs.extract.collector as collector


def kill_after(n: int) -> None:
    real = collector.write_shard
    written = 0

    def write_shard_then_maybe_die(*args, **kwargs):
        nonlocal written
        out = real(*args, **kwargs)
        written += 1
        if written >= n:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    collector.write_shard = write_shard_then_maybe_die


if __name__ == "__main__":
    kill_after(int(sys.argv[1]))
    sys.argv = ["embedlab", *sys.argv[2:]]
    from embedlab.cli import main

    main()
