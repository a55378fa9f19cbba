"""Wall time of `embedlab demo` on this machine (a benchmark, not a test): the first run (an empty embedlab cache,
so the demo CLIP is unpacked from the copy shipped with embedlab, or trained when none matches) and a second,
cached run, with the parts (demo CLIP, extraction, explain, training, pages). Writes JSON.

    python -m analyses.bench.demo [--out analyses/results] [--retrain]

--retrain also times a first run that trains the demo CLIP (an empty cache and no shipped copy: ~5 min more).
The machine's load average is recorded before and after each run: on a shared machine the times are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = {
    "demo CLIP": ("demo CLIP",),
    "extraction": ("extract",),
    "explain": ("residual", "concept report", "explain-residual", "correct"),
    "training": ("train",),
    "enhance + evaluate": ("enhance", "evaluate"),
    "pages": ("figures", "plots"),
}


def parts(timings: dict) -> dict:
    """Group demo.json's timings_s into the benchmark's parts."""
    out = {}
    for part, prefixes in PARTS.items():
        out[part] = round(sum(v for k, v in timings.items() if k.startswith(prefixes)), 2)
    return out


def run_demo(cache: Path, out: Path, env_extra: dict | None = None) -> dict:
    env = dict(os.environ, EMBEDLAB_CACHE=str(cache), HF_HUB_OFFLINE="1", **(env_extra or {}))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "embedlab", "demo", "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    demo = json.loads((out / "demo.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "in_process_total_s": demo["total_s"],
        "parts_s": parts(demo["timings_s"]),
        "timings_s": demo["timings_s"],
        "first_line": r.stdout.splitlines()[0],
        "stdout_lines": len(r.stdout.splitlines()),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    from analyses._common import parse_args, write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="Folder for bench_demo.json (default analyses/results).")
    ap.add_argument("--retrain", action="store_true", help="Also time a first run that trains the demo CLIP.")
    ap.add_argument("--work", default=None, help="Folder for the runs (default: a temporary folder).")
    args = parse_args(ap)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_demo_"))
    res = {
        "first_run": run_demo(work / "cache", work / "first"),
        "cached_run": run_demo(work / "cache", work / "cached"),
    }
    if args.retrain:
        res["first_run_training_demo_clip"] = run_demo(
            work / "cache2", work / "retrain", {"EMBEDLAB_DEMO_NO_PACKAGED": "1"}
        )
    res["threads_env"] = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    res["work"] = str(work)
    for k, v in ((k, v) for k, v in res.items() if isinstance(v, dict) and "wall_s" in v):
        print(f"{k}: {v['wall_s']} s wall; parts {v['parts_s']}; load {v['load_avg_before']} -> {v['load_avg_after']}")
    write_json("bench_demo.json", res, args.out)


if __name__ == "__main__":
    main()
