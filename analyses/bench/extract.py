"""Extraction throughput, measured side by side in one run.

    python -m analyses.bench.extract [--suite all|naive|scale] [--models embedlab-tiny ViT-B-32] [--n 1024]
        [--scale-n 4096] [--size 512x384] [--naive-n 256] [--batch-size 64] [--workers N] [--device auto]
        [--decode auto] [--repeats 2] [--no-ray] [--out DIR]

Inputs: the seven package photos (scikit-image, scikit-learn), each resized to SIZE and re-encoded as JPEG q90,
with seeded crops and flips to make N distinct files. Weights: random init (`--pretrained none`), same FLOPs as
the real towers. Model loading is excluded everywhere.

naive: a one-image-at-a-time loop (as the public reference code) vs `extract` for each model.
scale (embedlab-tiny, SCALE_N images; every pair alternates A/B for `--repeats` rounds, median rates):
  (a) shard-size overhead: --shard-size 128 vs --shard-size SCALE_N;
  (b) pipeline efficiency: extract with a tower whose forward costs nothing (a stand-in defined here) vs the raw
      decode rate of the same loader and workers doing nothing else;
  (c) --engine ray on a local Ray instance (2 CPUs here, 1 GB object store) vs the local engine; Ray's start-up
      (instance, actors, model loads) is reported separately and excluded; max |difference| of the vectors;
  (d) a webdataset source (the same JPEGs in 1,024-member tars, read in place) vs the files.
Writes analyses/results/bench_extract.json (naive/all; bench_extract_scale.json for --suite scale, and a _<decode> or
_<size> suffix where asked) with hardware and versions.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

from embedlab.datasets.manifest import read_manifest


def make_inputs(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    from PIL import Image

    from embedlab.datasets.manifest import seeded_crop
    from embedlab.datasets.photos import load_photo, package_photos

    folder.mkdir(parents=True, exist_ok=True)
    bases = [load_photo(p.uri) for p in package_photos()]
    files = []
    for i in range(n):
        img = seeded_crop(bases[i % len(bases)], i, min_frac=0.8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(img).resize(size, Image.BICUBIC).save(path, quality=90)
        files.append(path)
    return files


def make_tars(files: list[Path], folder: Path, per_tar: int = 1024) -> None:
    """The same JPEGs as webdataset shards (KEY.jpg + KEY.json), as img2dataset writes them."""
    import io
    import json

    folder.mkdir(parents=True, exist_ok=True)
    for t in range(0, len(files), per_tar):
        with tarfile.open(folder / f"{t // per_tar:05d}.tar", "w") as tf:
            for f in files[t : t + per_tar]:
                tf.add(f, arcname=f.name)
                meta = json.dumps({"key": f.stem, "status": "success", "caption": "", "url": ""}).encode()
                info = tarfile.TarInfo(f"{f.stem}.json")
                info.size = len(meta)
                tf.addfile(info, io.BytesIO(meta))


def manifest_of(files: list[Path], path: Path) -> Path:
    from embedlab.datasets.manifest import write_manifest

    return write_manifest(
        path, [{"path": str(f), "role": "bench", "group": f.stem} for f in files], {"name": path.stem}
    )


def naive_loop(lm, files) -> float:
    import torch
    from PIL import Image

    t0 = time.perf_counter()
    with torch.no_grad():
        for f in files:
            x = lm.preprocess(Image.open(f).convert("RGB")).unsqueeze(0).to(lm.device)
            e = lm.model.encode_image(x)
            e = e / e.norm(dim=-1, keepdim=True)
            e.cpu()
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return len(files) / (time.perf_counter() - t0)


class ZeroTower:
    """A stand-in image tower whose forward pass costs nothing: the pipeline's own overhead shows."""

    def __init__(self, dim: int):
        self.dim = dim

    def encode_image(self, x):
        import torch

        return torch.zeros((x.shape[0], self.dim), device=x.device)


def raw_decode_rate(lm, manifest: Path, batch_size: int, workers: int, decode: str) -> float:
    """Images/s of the extract loader (same dataset, workers, batches, collate) with nothing after it."""
    from torch.utils.data import DataLoader

    from embedlab.datasets.images import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS
    from embedlab.runs.extract.dataset import ShardBatches, _collate, _ImageDataset
    from embedlab.runs.extract.device import resolve_decode
    from embedlab.runs.extract.rows import Rows

    man = read_manifest(manifest)
    ds = _ImageDataset(
        Rows(man, man.entries),
        lm.preprocess,
        resolve_decode(decode, lm.device.type),
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_ASPECT,
    )
    batches = ShardBatches([0], len(man.entries), len(man.entries), batch_size)
    n = 0
    t0 = time.perf_counter()  # like extract's own window: after the manifest is read, with the workers' start
    for batch in DataLoader(
        ds, batch_sampler=batches, num_workers=workers, collate_fn=_collate, prefetch_factor=4 if workers else None
    ):
        n += batch["n"]
    return n / (time.perf_counter() - t0)


def _pair(name_a, run_a, name_b, run_b, repeats: int) -> dict:
    """Alternate A and B `repeats` times; medians and their ratio A/B."""
    rates = {name_a: [], name_b: []}
    for r in range(repeats):
        order = [(name_a, run_a), (name_b, run_b)] if r % 2 == 0 else [(name_b, run_b), (name_a, run_a)]
        for name, fn in order:
            rates[name].append(fn())
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {f"{k}_img_per_s": round(v, 2) for k, v in med.items()}
    out.update(
        {f"{k}_runs": [round(x, 2) for x in v] for k, v in rates.items()}, ratio=round(med[name_a] / med[name_b], 3)
    )
    print(f"  {name_a} {med[name_a]:8.1f} img/s  vs  {name_b} {med[name_b]:8.1f} img/s   ratio {out['ratio']:.3f}")
    return out


def scale_suite(args, tmp: Path, files: list[Path]) -> dict:
    from embedlab import models
    from embedlab.datasets.layouts import manifest
    from embedlab.runs.extract.pipeline import extract

    man = manifest_of(files, tmp / "files.jsonl")
    lm = models.load_model("embedlab-tiny", "none", args.device)
    workers = args.workers if args.workers is not None else 2
    common = dict(
        device=args.device,
        batch_size=args.batch_size,
        workers=workers,
        progress=False,
        overwrite=True,
        decode=args.decode,
    )

    def ips(manifest_path, out, model=lm, **kw):
        return lambda: extract(
            manifest_path, "embedlab-tiny", "none", tmp / out, loaded_model=model, **{**common, **kw}
        )["this_call"]["images_per_second"]

    res = {"model": "embedlab-tiny", "images": len(files), "workers": workers, "batch_size": args.batch_size}
    print(f"(a) shard size 128 vs {len(files)}")
    res["a_shard_size"] = _pair(
        "shard128",
        ips(man, "a128", shard_size=128),
        f"shard{len(files)}",
        ips(man, "afull", shard_size=len(files)),
        args.repeats,
    )
    print("(b) pipeline with a zero-cost tower vs the raw decode rate of the same workers")
    import dataclasses

    lm0 = dataclasses.replace(lm, model=ZeroTower(lm.dim))
    res["b_pipeline_efficiency"] = _pair(
        "pipeline_zero_tower",
        ips(man, "b", model=lm0, shard_size=1024),
        "raw_decode",
        lambda: raw_decode_rate(lm, man, args.batch_size, workers, args.decode),
        args.repeats,
    )
    print("(d) webdataset tars vs the same files")
    make_tars(files, tmp / "shards")
    wds = manifest("webdataset", tmp / "shards", tmp / "wds.jsonl", role="bench")["files"]["manifest"]
    res["webdataset_tars"] = len(list((tmp / "shards").glob("*.tar")))
    res["d_webdataset"] = _pair(
        "webdataset", ips(wds, "dw", shard_size=1024), "files", ips(man, "df", shard_size=1024), args.repeats
    )
    if not args.no_ray:
        print("(c) --engine ray (local instance, 2 CPUs) vs the local engine; Ray start-up excluded")
        res["c_ray"] = ray_pair(
            args, man, tmp, "embedlab-tiny", lm, ips(man, "c_local", shard_size=256), {"num_cpus": 2}, device="cpu"
        )
    return res


def ray_gpu_suite(args, tmp: Path, files: list[Path]) -> dict:
    """--engine ray with one actor per GPU vs the local engine, for the first of --models (GPU check)."""
    import torch

    from embedlab import models
    from embedlab.runs.extract.pipeline import extract

    man = manifest_of(files, tmp / "files.jsonl")
    name = args.models[0]
    lm = models.load_model(name, "none", args.device)
    local = lambda: extract(
        man,
        name,
        "none",
        tmp / "g_local",
        device=args.device,
        batch_size=args.batch_size,  # noqa: E731
        workers=args.workers,
        shard_size=1024,
        progress=False,
        overwrite=True,
        decode=args.decode,
        loaded_model=lm,
    )["this_call"]["images_per_second"]
    print(f"ray on {torch.cuda.device_count()} GPU(s) vs local, {name}, {len(files)} images at {args.size}")
    return dict(
        ray_pair(
            args,
            man,
            tmp,
            name,
            lm,
            local,
            {"num_gpus": torch.cuda.device_count()},
            device="auto",
            shard_size=1024,
            warm=True,
        ),
        model=name,
        images=len(files),
        image_size=args.size,
    )


TIMING_NOTE = (
    "local engine img/s include starting its decode worker processes (inside the timed window); ray img/s "
    "exclude the Ray instance start and the actors' start (model load, checks), reported separately as "
    "ray_instance_start_s and actor_startup_s"
)


def ray_pair(
    args,
    man: Path,
    tmp: Path,
    name: str,
    lm,
    local_ips,
    init: dict,
    device: str,
    shard_size: int = 256,
    warm: bool = False,
) -> dict:
    import numpy as np
    import ray

    from embedlab.runs.extract.pipeline import extract
    from embedlab.runs.store import Run

    t0 = time.perf_counter()
    ray.init(object_store_memory=1_000_000_000, include_dashboard=False, log_to_driver=False, **init)
    init_s = time.perf_counter() - t0
    startups = []

    def ray_ips():
        s = extract(
            man,
            name,
            "none",
            tmp / "c_ray",
            device=device,
            batch_size=args.batch_size,
            shard_size=shard_size,
            progress=False,
            overwrite=True,
            decode=args.decode,
            engine="ray",
            loaded_model=lm,
        )
        startups.append(s["this_call"]["engine_startup_seconds"])
        return s["this_call"]["images_per_second"]

    try:
        if warm:  # one untimed run of each first (CUDA context, cuDNN/nvJPEG handles, page cache)
            ray_ips(), local_ips()
            startups.clear()
        out = _pair("ray", ray_ips, "local", local_ips, args.repeats)
    finally:
        ray.shutdown()
    other = tmp / ("c_local" if (tmp / "c_local").exists() else "g_local")
    diff = float(np.abs(Run(tmp / "c_ray").vectors - Run(other).vectors).max())
    same_rows = list(Run(tmp / "c_ray").metadata["row_id"]) == list(Run(other).metadata["row_id"])
    print(
        f"  ray start-up: instance {init_s:.1f} s, actors + models {statistics.median(startups):.1f} s (excluded); "
        f"max |vector difference| {diff:.2e}; same rows: {same_rows}"
    )
    return dict(
        out,
        timing_note=TIMING_NOTE,
        warmed_up_first=warm,
        ray_instance_start_s=round(init_s, 2),
        actor_startup_s=[round(x, 2) for x in startups],
        max_abs_vector_difference=diff,
        same_row_ids=same_rows,
        shard_size=shard_size,
        ray_version=ray.__version__,
    )


def naive_suite(args, tmp: Path, files: list[Path], w: int, h: int) -> list[dict]:
    from embedlab import models
    from embedlab.datasets.layouts import manifest
    from embedlab.runs.extract.job import default_workers
    from embedlab.runs.extract.pipeline import extract
    from embedlab.runs.store import Run

    man = manifest_of(files, tmp / "m.jsonl")
    results = []
    for name in args.models:
        lm = models.load_model(name, "none", args.device)
        naive_files = files[: args.naive_n] if args.naive_n else files
        naive_loop(lm, naive_files[:4])  # warm-up
        naive = naive_loop(lm, naive_files)
        if not (tmp / "warm.jsonl").exists():
            make_inputs(tmp / "warm_images", args.batch_size, (w, h))
            manifest("flat", tmp / "warm_images", tmp / "warm.jsonl", role="bench")
        kw = dict(
            device=args.device,
            batch_size=args.batch_size,
            progress=False,
            overwrite=True,
            decode=args.decode,
            loaded_model=lm,
        )
        extract(tmp / "warm.jsonl", name, "none", tmp / "warm", workers=0, **kw)  # warm-up
        summary = extract(man, name, "none", tmp / f"run_{name}", workers=args.workers, **kw)
        ours = summary["this_call"]["images_per_second"]
        run_decode = Run(tmp / f"run_{name}").manifest["decode"]
        results.append(
            {
                "model": name,
                "naive_img_per_s": round(naive, 2),
                "embedlab_img_per_s": ours,
                "ratio": round(ours / naive, 2),
                "device": str(lm.device),
                "images": len(files),
                "naive_images": len(naive_files),
                "image_size": args.size,
                "batch_size": args.batch_size,
                "workers": args.workers if args.workers is not None else f"auto ({default_workers(lm)})",
                "decode": f"{args.decode} -> {run_decode}",
            }
        )
        print(
            f"{name:16s} naive {naive:8.1f} img/s   embedlab {ours:8.1f} img/s   "
            f"ratio {ours / naive:5.2f}x  ({run_decode})"
        )
        del lm
    return results


def main() -> None:
    from analyses._common import parse_args, write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="all", choices=("all", "naive", "scale", "ray-gpu"))
    ap.add_argument("--models", nargs="+", default=["embedlab-tiny", "ViT-B-32"])
    ap.add_argument("--n", type=int, default=1024, help="Images for the naive suite.")
    ap.add_argument("--scale-n", type=int, default=4096, help="Images for the scale suite.")
    ap.add_argument(
        "--naive-n", type=int, default=256, help="Images for the naive loop (its rate is steady after a few)."
    )
    ap.add_argument("--size", default="512x384")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="Default: extract's own choice (naive), 2 (scale).")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--decode", default="auto", help="auto (nvJPEG on CUDA, PIL elsewhere), pil or torchvision.")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true", help="Skip (c).")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--tag-size", action="store_true", help="Put --size in the JSON file name (several sizes, one folder)."
    )
    args = parse_args(ap)
    w, h = map(int, args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    payload = {
        "inputs": f"JPEGs (q90) at {args.size} from the 7 package photos (seeded crops/flips)",
        "weights": "random init (pretrained none)",
        "decode": args.decode,
        "repeats": args.repeats,
    }
    try:
        files = make_inputs(
            tmp / "images",
            max(args.n if args.suite in ("all", "naive") else 0, args.scale_n if args.suite != "naive" else 0),
            (w, h),
        )
        if args.suite in ("all", "naive"):
            payload["results"] = naive_suite(args, tmp, files[: args.n], w, h)
        if args.suite in ("all", "scale"):
            payload["scale"] = scale_suite(args, tmp, files[: args.scale_n])
        if args.suite == "ray-gpu":
            payload["ray_gpu"] = ray_gpu_suite(args, tmp, files[: args.scale_n])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    name = (
        "bench_extract"
        + ("" if args.suite in ("all", "naive") else f"_{args.suite}")
        + ("" if args.decode in ("auto", "pil") else f"_{args.decode}")
        + (f"_{args.size}" if args.tag_size else "")
    )
    write_json(name + ".json", payload, args.out)


if __name__ == "__main__":
    main()
