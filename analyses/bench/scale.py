"""Analysis at scale: a synthetic run far larger than the vectors one would hold in memory, written through the real
run writer (`runs.write_shard` + `extract.finalize`), then, side by side, each in its own process (peak RSS from
/proc/self/status VmHWM):

  plain      a memory-mapped read-and-sum of the same shard files (the floor any reader pays)
  residual   `embedlab.residual` (streaming sums, group bootstrap, non-semantic checks); plain and residual run
             --repeats times interleaved, and the ratio compares the fastest of each (medians reported too)
  explain    the public explain function with K shuffles over a V-concept synthetic vocabulary
  index      `embedlab index --kind auto` (index_run): build time, size, recall@1/10/100 vs exact, single-query latency

Synthetic data: G scenes (groups), each a random unit centre; an image is centre + noise, and images of the 'to'
set (welllit) are shifted along two planted vocabulary directions, lighting ("planted lighting", larger) and
bias ("planted bias", smaller). Both sets share the groups (every scene under both lightings).

    python -m analyses.bench.scale --n 4000000          # the issue's size (4 GB of float16 on disk)
    python -m analyses.bench.scale --n 200000 --keep    # small; keep the run folder
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analyses._common import parse_args, write_json  # noqa: E402

LIGHT, BIAS = "planted lighting", "planted bias"
PARTS = 20  # shards are labelled split=part0..part19 in turn: a ~1/20 subset for comparisons


def vocabulary(V: int, d: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """V random unit concept embeddings (float32); concepts 0 and 1 are the planted ones."""
    E = np.random.default_rng([seed, 99]).standard_normal((V, d)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    return E, [LIGHT, BIAS] + [f"concept {i}" for i in range(2, V)]


def planted_directions(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lighting and bias directions: concepts 0 and 1 after centring the vocabulary (as explain reads it)."""
    C = E - E.mean(0, dtype=np.float64).astype(np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    return C[0], C[1]


def synthetic_shard(
    first: int,
    n: int,
    d: int,
    n_groups: int,
    E: np.ndarray,
    seed: int,
    light: float = 0.25,
    bias: float = 0.12,
    noise: float = 0.6,
) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng([seed, first])
    rows = np.arange(first, first + n)
    groups = rng.integers(0, n_groups, n)
    is_to = rng.random(n) < 0.5
    centres = np.random.default_rng([seed, 7]).standard_normal((n_groups, d)).astype(np.float32) / np.sqrt(d)
    u_light, u_bias = planted_directions(E)
    X = centres[groups] + noise / np.sqrt(d) * rng.standard_normal((n, d), dtype=np.float32)
    X += is_to[:, None] * (light * u_light + bias * u_bias)[None, :]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    luma = np.where(is_to, 0.45, 0.25) + 0.05 * rng.standard_normal(n)
    meta = pd.DataFrame(
        {
            "row_id": rows.astype(np.int64),
            "path": [f"s/{i}.jpg" for i in rows],
            "file": [f"s/{i}.jpg" for i in rows],
            "content_sha1": "",
            "width": np.int64(640),
            "height": np.int64(480),
            "format": "JPEG",
            "mode": "RGB",
            "jpeg_quality": 90.0,
            "mean_luma": luma,
            "frames": np.int64(1),
            "notes": "",
            "role": np.where(is_to, "welllit", "backlit"),
            "split": f"part{(first // n) % PARTS if n else 0}",
            "group": [f"g{g}" for g in groups],
            "pair_id": None,
            "gt": None,
            "source": "synthetic",
            "manifest_line": rows.astype(np.int64),
        }
    )
    return X, meta


def write_synthetic_run(
    out: Path,
    n: int,
    d: int = 512,
    n_groups: int = 20_000,
    shard_size: int = 65536,
    dtype: str = "float16",
    V: int = 10_000,
    seed: int = 0,
    index_budget: str = "4G",
) -> dict:
    """Write the run through the real writer: one `write_shard` per shard, then `extract.finalize`."""
    from embedlab._io import atomic_write_json
    from embedlab.runs.finalize import finalize
    from embedlab.runs.store import write_shard

    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    E, _ = vocabulary(V, d, seed)
    shards = (n + shard_size - 1) // shard_size
    header = {
        "embedlab_run": 1,
        "kind": "image-embeddings",
        "model": "synthetic",
        "pretrained": "none",
        "weights_sha256": f"synthetic-seed-{seed}",
        "preprocess": "none (synthetic vectors)",
        "decode": "none",
        "vector_dtype": dtype,
        "compute_dtype": "float32",
        "input_hash": f"synthetic-{n}-{seed}",
        "shard_size": shard_size,
        "embed_dim": d,
        "image_size": None,
        "status": "running",
        "inputs": n,
        "shards": shards,
        "source_manifest": None,
        "normalisation": "L2 per vector",
    }
    atomic_write_json(out / "manifest.json", header)
    empty_err = pd.DataFrame(columns=["row_id", "path", "reason", "detail"])
    for s in range(shards):
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        X, meta = synthetic_shard(lo, hi - lo, d, n_groups, E, seed)
        write_shard(out, s, X.astype(dtype), meta, empty_err, hi - lo, lo)
    return finalize(out, header, index_budget=index_budget)


def _child(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON line; peak RSS from its VmHWM (getrusage's maxrss would
    carry the parent's high-water mark across fork and exec)."""
    prog = (
        "import json, resource, time, sys; sys.path.insert(0, %r)\nt0 = time.perf_counter()\n"
        % str(Path(__file__).resolve().parents[2])
        + code
        + "\nout['seconds'] = round(time.perf_counter() - t0, 3)\n"
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]\n"
        "out['peak_rss_mb'] = round(int(hwm) / 1024, 1)\n"
        "print('RESULT ' + json.dumps(out, default=float))"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        return {"error": (p.stderr or p.stdout)[-2000:], "returncode": p.returncode}
    return json.loads(lines[-1][7:])


PLAIN = """
import numpy as np
from pathlib import Path
total = 0.0
for f in sorted(Path(%r, 'shards').glob('emb_*.npy')):
    mm = np.load(f, mmap_mode='r', allow_pickle=False)
    for a in range(0, len(mm), 65536):
        total = total + mm[a:a + 65536].sum(0, dtype=np.float64)
out = {'checksum': float(np.sum(total))}
"""

RESIDUAL = """
from embedlab.analysis.residual import residual
res = residual(%r, 'backlit', 'welllit', %r, bootstrap=200, seed=0)
out = {'thr': res.thr, 'bootstrap': res.info['bootstrap'], 'count_from': res.info['from']['count'],
       'count_to': res.info['to']['count'], 'groups_from': res.info['from']['groups']}
"""

EXPLAIN = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (%d, %d))    # a guard: fail with MemoryError, not the machine
import numpy as np
from embedlab.analysis.explain import explain_vectors
from embedlab.analysis.image_sets import ImageSets, set_group_ids
from embedlab.analysis.residual_file import load_residual
from embedlab.runs.store import Run
from analyses.bench.scale import vocabulary
res = load_residual(%r)
run = Run(%r)
E, concepts = vocabulary(%d, run.dim)
meta = run.read_metadata(['role', 'group'])
m_from, m_to = (meta['role'] == 'backlit').to_numpy(), (meta['role'] == 'welllit').to_numpy()
sets = ImageSets.from_runs(run, m_from, run, m_to)       # read block by block from the shards, twice
result = explain_vectors(res.vector, E, concepts, sets, None, set_group_ids(meta['group'][m_from], meta['group'][m_to]),
                         permutations=%d, seed=0, exemplars=3)
out = {'adds_top5': list(result['adds']['concept'][:5]),
       'p_fwer_top2': [float(x) for x in result['adds'].get('p_fwer', [np.nan, np.nan])[:2]],
       'permutation': {k: v for k, v in result['info'].get('permutation', {}).items()
                       if isinstance(v, (int, float, str))},
       'test_unit': result['info'].get('test_unit'),
       'images': result['info'].get('images'), 'groups': result['info'].get('groups'),
       'n_from': result['info'].get('n_from'), 'n_to': result['info'].get('n_to')}
"""

INDEX = """
from embedlab.runs.index import index_run
info = index_run(%r, 'auto', memory_budget=%r, progress=False)
keys = ('kind', 'factory', 'why', 'ntotal', 'build_seconds', 'size_bytes', 'search_params', 'tuning', 'recall',
        'recall_queries', 'latency', 'rerank', 'train_size', 'gpu')
out = {k: info[k] for k in keys if k in info}
"""


def time_residual(run_dir: Path, res_path: Path, repeats: int) -> dict:
    """`repeats` plain reads and `repeats` residual calls, interleaved (plain, residual, plain, ...), each in its own
    process; the ratio compares the fastest of each (the least disturbed by other work on the machine, as timeit
    reports), and the medians are given too."""
    plain, res = [], []
    for _ in range(repeats):
        plain.append(_child(PLAIN % str(run_dir)))
        res.append(_child(RESIDUAL % (str(run_dir), str(res_path))))
    plain.append(_child(PLAIN % str(run_dir)))
    ps = [p.get("seconds", np.nan) for p in plain]
    rs = [r.get("seconds", np.nan) for r in res]
    best = int(np.nanargmin(rs)) if not np.isnan(rs).all() else 0
    return {
        "plain_read_sum": {
            "seconds": ps,
            "peak_rss_mb": float(np.nanmax([p.get("peak_rss_mb", np.nan) for p in plain])),
            "checksum": plain[0].get("checksum"),
            "min_seconds": float(np.nanmin(ps)),
        },
        "residual": dict(
            res[best], seconds_all=rs, peak_rss_mb=float(np.nanmax([r.get("peak_rss_mb", np.nan) for r in res]))
        ),
        "residual_time_ratio_to_plain": round(float(np.nanmin(rs) / np.nanmin(ps)), 3),
        "residual_time_ratio_of_medians": round(float(np.nanmedian(rs) / np.nanmedian(ps)), 3),
    }


def _arguments() -> argparse.Namespace:
    """The command line, parsed (and --repeats checked)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4_000_000, help="Vectors in the synthetic run.")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--groups", type=int, default=20_000)
    ap.add_argument("--vocab", type=int, default=10_000, help="Concepts in the synthetic vocabulary.")
    ap.add_argument("--permutations", type=int, default=1000, help="K for explain.")
    ap.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="Residual calls (and plain reads, one more) timed, "
        "interleaved; the ratio compares the fastest of each (the least disturbed by other work).",
    )
    ap.add_argument("--budget", default="4G", help="Index memory budget.")
    ap.add_argument(
        "--explain-guard-gb",
        type=float,
        default=6.0,
        help="Address-space limit of the explain process (GiB): past it, a MemoryError is recorded.",
    )
    ap.add_argument("--work", default="/tmp/embedlab_bench_scale", help="Where the run is written (deleted after).")
    ap.add_argument("--out", default=None, help="JSON name (default bench_scale.json, or bench_scale_N.json off-size).")
    ap.add_argument("--skip", nargs="*", default=[], choices=["explain", "index"], help="Parts to skip.")
    ap.add_argument("--keep", action="store_true", help="Keep the synthetic run.")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="Reuse the run already in --work (its write time is then only the finalisation's).",
    )
    a = parse_args(ap)
    if a.repeats < 1:
        ap.error(f"--repeats must be at least 1. Got {a.repeats}.")
    return a


def _write_run(a: argparse.Namespace, run_dir: Path) -> dict:
    """The synthetic run written into `run_dir` (with --reuse, the one already there, finalised if it is not):
    its counts."""
    if a.reuse and (run_dir / "manifest.json").exists():  # shards already written by an interrupted call
        from embedlab._io import read_json
        from embedlab.runs.finalize import finalize

        header = read_json(run_dir / "manifest.json")
        return header.get("counts") if header.get("status") == "complete" else finalize(run_dir, header)
    return write_synthetic_run(run_dir, a.n, a.dim, a.groups, V=a.vocab)


def main() -> None:
    a = _arguments()
    work = Path(a.work)
    run_dir, res_path = work / "run", work / "residual.npy"
    t0 = time.perf_counter()
    written = _write_run(a, run_dir)
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    os.sync()  # the kernel's writeback of the run just written must not run during the timed parts
    t_sync = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in (run_dir / "shards").glob("emb_*.npy"))
    results = {
        "n": a.n,
        "dim": a.dim,
        "groups": a.groups,
        "dtype": "float16",
        "vector_bytes_on_disk": disk,
        "write_seconds": round(t_write, 1),
        "sync_seconds": round(t_sync, 1),
        "finalize_index": written.get("index"),
    }
    try:
        results.update(time_residual(run_dir, res_path, a.repeats))
        if "explain" not in a.skip:
            guard = int(a.explain_guard_gb * 2**30)
            results["explain"] = _child(EXPLAIN % (guard, guard, str(res_path), str(run_dir), a.vocab, a.permutations))
            results["explain"]["planted_first_and_second"] = results["explain"].get("adds_top5", [])[:2] == [
                LIGHT,
                BIAS,
            ]
        if "index" not in a.skip:
            results["index"] = _child(INDEX % (str(run_dir), a.budget))
        results["targets"] = {
            "residual_peak_rss_mb_lt": 1536,
            "residual_time_ratio_lt": 1.5,
            "explain_seconds_lt": 600,
            "explain_peak_rss_mb_lt": 2048,
            "index_recall_at_10_ge": 0.90,
            "index_latency_ms_le": 5,
        }
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    write_json(a.out or ("bench_scale.json" if a.n == 4_000_000 else f"bench_scale_{a.n}.json"), results)
    print(json.dumps({k: v for k, v in results.items() if k != "hardware"}, indent=1, default=float))


if __name__ == "__main__":
    main()
