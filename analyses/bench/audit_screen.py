"""`embedlab audit --screen` at scale: the command's own pass (`reports.audit_screen.screen_runs`: the runs' shards,
every slice's membership, the one-vs-rest sums and the screen from them) against a plain read of the same run.

    python -m analyses.bench.audit_screen [--n 1000000] [--columns 10] [--values 20] [--repeats 3] [--dir /tmp]

A run of n x 512 float32 unit vectors is imported (`embedlab runs import`, shards of 65,536 rows, no FAISS index),
with `columns` metadata columns of `values` values each (uniform; value 0 of column 0 moves its images along one
direction); then, alternating, `repeats` times each in a fresh process:
- plain: every shard memory-mapped and summed block by block (as the pass reads it: each byte once, no copy);
  plain_copied: each block copied into memory, then summed;
- screen: define the slices (`define_slices`, one boolean mask per value) and `screen_runs` (the vocabulary's 64
  random concept vectors stand in for an embedded vocabulary, whose text encoding is not part of the pass).
Reported: wall time of each (after imports; numba's start-up, once per process, timed apart), the ratio of the
fastest, peak RSS, and the planted value's rank. Writes analyses/results/bench_audit_screen.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DIM = 512

# prepended to each timed script
PEAK = """
def peak_mb():  # this process image's own peak (ru_maxrss would carry the parent's across exec)
    line = [x for x in open("/proc/self/status") if x.startswith("VmHWM")][0]
    return int(line.split()[1]) / 1024
"""

PLAIN = """
import json, sys, time
import numpy as np
from embedlab.runs.store import Run
run = Run(sys.argv[1])
copy = sys.argv[2] == "copy"
w0 = time.perf_counter()
total = np.zeros(run.dim)
for _, emb, _, _, n in run.shards():
    mm = np.load(emb, mmap_mode="r", allow_pickle=False)
    for a in range(0, n, 65536):
        block = np.array(mm[a:a + 65536], np.float32) if copy else np.asarray(mm[a:a + 65536], np.float32)
        total += block.sum(0)
wall = time.perf_counter() - w0
print(json.dumps({"wall": wall, "rss_mb": peak_mb(),
                  "checksum": float(total.sum())}))
"""

SCREEN = """
import json, sys, time
import numpy as np
from embedlab.analysis.audit import AuditConfig
from embedlab.analysis.null_kernels import membership_sums
from embedlab.analysis.slices import define_slices
from embedlab.reports.audit_screen import screen_runs
from embedlab.runs.store import Run
k0 = time.perf_counter()
membership_sums(np.zeros((1, 4)), np.array([0, 1]), np.array([0]), 1)  # numba's start-up, once per process
kernel = time.perf_counter() - k0
run = Run(sys.argv[1])
cols = [c for c in run.metadata.columns if c.startswith("c")]
E = np.random.default_rng(0).normal(size=(64, run.dim)).astype(np.float32)
w0 = time.perf_counter()
meta = run.metadata
n = len(meta)
fam = define_slices(meta, cols, np.arange(n), bins=4, depth=1, min_groups=2, max_slices=100000)
t_slices = time.perf_counter() - w0
res = screen_runs([run], np.ones(n, bool), fam, E, [f"w{j}" for j in range(64)], AuditConfig(screen=True), False)
wall = time.perf_counter() - w0
top = res.slices["name"].tolist()
print(json.dumps({"wall": wall, "define_slices": t_slices, "kernel_load": kernel, "slices": len(fam.slices),
                  "rss_mb": peak_mb(),
                  "planted_rank": top.index("c0=0") + 1, "top_T": float(res.slices["statistic"].iloc[0]),
                  "median_T": float(res.slices["statistic"].median())}))
"""


def make_run(folder: Path, n: int, columns: int, values: int, seed: int = 0) -> Path:
    import pandas as pd

    from embedlab.runs.importer import import_run

    rng = np.random.default_rng(seed)
    codes = rng.integers(values, size=(n, columns))
    X = np.empty((n, DIM), np.float32)
    shift = rng.normal(size=DIM)
    shift /= np.linalg.norm(shift)
    for a in range(0, n, 65536):
        b = min(n, a + 65536)
        x = rng.normal(size=(b - a, DIM)) / np.sqrt(DIM)
        x[codes[a:b, 0] == 0] += 0.05 * shift
        X[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.save(folder / "vectors.npy", X)
    table = pd.DataFrame({"path": [f"img/{i:07d}.jpg" for i in range(n)]})
    for k in range(columns):
        table[f"c{k}"] = codes[:, k].astype(str)
    table.to_parquet(folder / "paths.parquet", index=False)
    del X
    import_run(folder / "vectors.npy", folder / "run", model="ViT-B-32:openai", paths=folder / "paths.parquet",
               allow_missing_images=True, index_budget="1K")  # fmt: skip
    (folder / "vectors.npy").unlink()
    return folder / "run"


def timed(script: str, run: Path, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PEAK + script, str(run), *extra], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from analyses._common import hardware, parse_args, write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--columns", type=int, default=10)
    ap.add_argument("--values", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--out", default=None)
    args = parse_args(ap)
    folder = Path(tempfile.mkdtemp(prefix="audit_screen_", dir=args.dir))
    try:
        run = make_run(folder, args.n, args.columns, args.values)
        plain, copied, screen = [], [], []
        for _ in range(args.repeats):
            plain.append(timed(PLAIN, run, "mapped"))
            copied.append(timed(PLAIN, run, "copy"))
            screen.append(timed(SCREEN, run))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    runs = {"plain": plain, "copied": copied, "screen": screen}
    fastest = {k: min(r["wall"] for r in rows) for k, rows in runs.items()}
    payload = {
        "n": args.n, "dim": DIM, "columns": args.columns, "values": args.values, "slices": screen[0]["slices"],
        "cache": "warm (the run was just written; the page cache holds it)",
        "plain": plain, "plain_copied": copied, "screen": screen,
        "ratio": fastest["screen"] / fastest["plain"],
        "ratio_vs_copied_read": fastest["screen"] / fastest["copied"],
        "ratio_with_kernel_load": (fastest["screen"] + min(r["kernel_load"] for r in screen)) / fastest["plain"],
        "peak_rss_mb": {"plain": max(r["rss_mb"] for r in plain), "plain_copied": max(r["rss_mb"] for r in copied),
                        "screen": max(r["rss_mb"] for r in screen)},
        "note": "screen: define_slices + screen_runs (the pass of `embedlab audit --screen` and its screen), after "
        "imports and numba's start-up (kernel_load); plain: the same shards memory-mapped and summed block by block "
        "(every byte read once, no copy: as the pass reads them); plain_copied: each block copied into memory first",
        "hardware": hardware(),
    }  # fmt: skip
    print(f"plain {fastest['plain']:.2f} s (copied {fastest['copied']:.2f} s), screen {fastest['screen']:.2f} s "
          f"(define_slices {min(r['define_slices'] for r in screen):.2f} s): ratio {payload['ratio']:.2f}, "
          f"{payload['ratio_vs_copied_read']:.2f} vs the copied read "
          f"({payload['ratio_with_kernel_load']:.2f} with numba's start-up); peak RSS {payload['peak_rss_mb']}; "
          f"planted value rank {screen[0]['planted_rank']} of {screen[0]['slices']}")  # fmt: skip
    write_json("bench_audit_screen.json", payload, args.out)


if __name__ == "__main__":
    main()
