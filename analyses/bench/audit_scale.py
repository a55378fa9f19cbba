"""The audit's streamed pass at scale: 1,000,000 x 512 float32 unit vectors in an .npy file on disk and 20
categorical columns with 1,000 values in total (50 each), each measurement in its own process (peak RSS from
/proc/self/status VmHWM):

  plain   one streamed pass over the vectors, blocks of 65,536 rows read into one reused buffer, summing them
          (the floor any reader pays)
  audit   the same reader, one block ahead in a thread (`embedlab._io.prefetched`, three buffers in turn); per
          block every row added to the sums of its 20 values (the sparse one-hot product, a numba loop in threads:
          `embedlab.analysis.audit_scale.slice_sums`), then every slice's debiased effect and ratio
          T = ||d||^2 / E0 and each column's mean T (`omnibus_screen`, `column_screen`) from the sums

The audit's timer starts after the imports and after its numba kernel is loaded from numba's cache (about 0.4 s
once per process, reported as kernel_load_seconds; ratio_with_kernel_load counts it in). Both read the file with
`readinto` into reused buffers, not through a memory map, so that the page cache's
pages do not count in the process's RSS. The two run --repeats times interleaved (the file stays in the page cache
after it is written: both are warm reads); the ratio compares the fastest of each (medians reported too).
Column 0's value 0 (1/50 of the images) is shifted by 0.1 along one direction so the screen has something to find.

    python -m analyses.bench.audit_scale [--n 1000000] [--dim 512] [--repeats 3] [--dir /tmp]

Writes analyses/results/bench_audit_scale.json (with --cold: bench_audit_scale_cold.json, the page cache dropped
before each measurement so that both read from disk; --out: another folder); the vector and code files are deleted
afterwards (--keep keeps them).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

BLOCK = 65536
COLUMNS, VALUES_PER_COLUMN = 20, 50


def write_world(folder: Path, n: int, d: int, seed: int = 0) -> tuple[Path, Path]:
    """(vectors .npy (n, d) float32 unit rows, codes .npy (n, COLUMNS) int16)."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(VALUES_PER_COLUMN, size=(n, COLUMNS)).astype(np.int16)
    shift = rng.normal(size=d)
    shift = (0.1 * shift / np.linalg.norm(shift)).astype(np.float32)
    vec_path, code_path = folder / "vectors.npy", folder / "codes.npy"
    np.save(code_path, codes)
    mm = np.lib.format.open_memmap(vec_path, mode="w+", dtype=np.float32, shape=(n, d))
    for a in range(0, n, BLOCK):
        x = rng.standard_normal((min(BLOCK, n - a), d), dtype=np.float32)
        x += (codes[a : a + len(x), 0] == 0)[:, None] * shift * np.sqrt(d)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        mm[a : a + len(x)] = x
    mm.flush()
    del mm
    return vec_path, code_path


def read_blocks(path, rows: int = BLOCK, buffers: int = 1):
    """Yield consecutive (<= rows, d) float32 blocks of an .npy file, read into `buffers` reused buffers in turn
    (each block is only valid until `buffers` more are read)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise ValueError(f"{path}: expected a C-ordered 2-d float32 array")
        n, d = shape
        bufs = [np.empty((rows, d), np.float32) for _ in range(buffers)]
        for i, a in enumerate(range(0, n, rows)):
            b = min(rows, n - a)
            view = bufs[i % buffers][:b]
            if f.readinto(memoryview(view).cast("B")) != view.nbytes:
                raise ValueError(f"{path}: file ends early")
            yield view


PLAIN = """
import numpy as np
from analyses.bench.audit_scale import read_blocks
w0, c0 = time.perf_counter(), time.process_time()
total = 0.0
for x in read_blocks(%r):
    total = total + x.sum(0, dtype=np.float64)
out = {'checksum': float(np.sum(total)), 'pass_wall': time.perf_counter() - w0, 'pass_cpu': time.process_time() - c0}
"""

AUDIT = """
import numba
import numpy as np
from analyses.bench.audit_scale import read_blocks, COLUMNS, VALUES_PER_COLUMN
from embedlab._io import prefetched
from embedlab.analysis.audit_scale import column_screen, omnibus_screen, slice_sums
from embedlab.analysis.null_kernels import membership_sums
k0 = time.perf_counter()
membership_sums(np.zeros((1, 4), np.float32), np.array([0, 1]), np.array([0]), 1)  # loads the compiled kernel
kernel_load = time.perf_counter() - k0
w0, c0 = time.perf_counter(), time.process_time()
codes = np.load(%r)
n_values = [VALUES_PER_COLUMN] * COLUMNS
blocks = prefetched(read_blocks(%r, buffers=3))  # the next block read while this one is summed
acc = slice_sums(blocks, [codes[:, k] for k in range(COLUMNS)], n_values, threads=%d)
scr = omnibus_screen(acc['sums'], acc['counts'], acc['total'], acc['sumsq'], acc['n'])
cols = column_screen(scr['T'], n_values)
pass_wall, pass_cpu = time.perf_counter() - w0, time.process_time() - c0
order = np.argsort(-scr['T'])
out = {'checksum': float(acc['total'].sum()), 'slices': int(len(scr['T'])), 'top_slice': int(order[0]),
       'top_T': float(scr['T'][order[0]]), 'top_effect': float(scr['effect'][order[0]]),
       'median_T_others': float(np.median(scr['T'][order[1:]])), 'top_column': int(np.argmax(cols)),
       'column_mean_T': [round(float(c), 3) for c in cols], 'pass_wall': pass_wall, 'pass_cpu': pass_cpu,
       'kernel_load': kernel_load}
"""


def _drop_cache(cold: bool) -> None:
    """Write back and drop the page cache, so that the next pass reads the file from disk."""
    import os

    if cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")


def main() -> None:
    from analyses._common import parse_args, write_json
    from analyses.bench.scale import _child

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--threads", type=int, default=2, help="threads of the sparse products (the machine's cores)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(
        "--cold", action="store_true",
        help="drop the page cache before each measurement (needs root: /proc/sys/vm/drop_caches), so both read the "
        "file from disk as a first pass over a run does; without it both read a warm cache",
    )  # fmt: skip
    ap.add_argument("--out", default=None)
    args = parse_args(ap)
    folder = Path(tempfile.mkdtemp(prefix="audit_scale_", dir=args.dir))
    try:
        t0 = time.perf_counter()
        vec, codes = write_world(folder, args.n, args.dim)
        write_s = time.perf_counter() - t0
        print(f"wrote {args.n} x {args.dim} float32 ({vec.stat().st_size / 2**30:.2f} GiB) in {write_s:.1f} s")
        plain, audit = [], []
        for r in range(args.repeats):
            _drop_cache(args.cold)
            plain.append(_child(PLAIN % str(vec)))
            _drop_cache(args.cold)
            audit.append(_child(AUDIT % (str(codes), str(vec), args.threads)))
            print(f"repeat {r}: plain {plain[-1]}\n          audit {audit[-1]}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    errors = [x for x in plain + audit if "error" in x]
    if errors:
        raise SystemExit(f"a measurement failed: {errors[0]['error']}")
    payload = {
        "n": args.n, "dim": args.dim, "columns": COLUMNS, "values": COLUMNS * VALUES_PER_COLUMN, "block_rows": BLOCK,
        "threads": args.threads, "file_gib": args.n * args.dim * 4 / 2**30, "write_seconds": write_s,
        "repeats": args.repeats, "targets": {"ratio": 3.0, "peak_rss_mb": 2048},
        "peak_rss_mb": {"plain": max(x["peak_rss_mb"] for x in plain), "audit": max(x["peak_rss_mb"] for x in audit)},
        "screen": {k: v for k, v in audit[-1].items()
                   if k not in ("seconds", "peak_rss_mb", "pass_wall", "pass_cpu", "kernel_load")},
        "cache": "cold (page cache dropped before each measurement)" if args.cold else "warm",
        "note": "pass_wall of the audit starts after its compiled numba kernel is loaded from numba's disk cache "
                "(kernel_load_seconds, once per process, like an import; ratio_with_kernel_load counts it in). "
                "Both read with readinto (the audit into three buffers in turn, one block read ahead in a thread). "
                "pass_wall: wall time of the pass (after the imports; the audit's includes loading the codes and the "
                "screen); pass_cpu: its CPU time (user + system, all threads): on a shared machine the wall time "
                "carries other jobs' load, the CPU time does not",
    }  # fmt: skip
    for key in ("pass_wall", "pass_cpu", "seconds"):
        ps, as_ = [x[key] for x in plain], [x[key] for x in audit]
        payload[key] = {"plain": ps, "audit": as_, "ratio_fastest": min(as_) / min(ps),
                        "ratio_median": float(np.median(as_) / np.median(ps))}  # fmt: skip
        print(f"{key:9s}: plain {min(ps):.2f} s, audit {min(as_):.2f} s: ratio {min(as_) / min(ps):.2f} "
              f"(median {payload[key]['ratio_median']:.2f})")  # fmt: skip
    payload["ratio"] = payload["pass_wall"]["ratio_fastest"]
    loads = [x["kernel_load"] for x in audit]
    payload["kernel_load_seconds"] = loads
    with_load = [x["pass_wall"] + x["kernel_load"] for x in audit]
    payload["ratio_with_kernel_load"] = min(with_load) / min(x["pass_wall"] for x in plain)
    print(
        f"numba kernel load (once per process, before the pass): {min(loads):.2f} s; ratio with it "
        f"{payload['ratio_with_kernel_load']:.2f}"
    )
    print(f"peak RSS plain {payload['peak_rss_mb']['plain']} MB, audit {payload['peak_rss_mb']['audit']} MB")
    write_json("bench_audit_scale_cold.json" if args.cold else "bench_audit_scale.json", payload, args.out)


if __name__ == "__main__":
    main()
