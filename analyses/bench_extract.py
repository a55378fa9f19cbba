"""Extraction throughput: a naive one-image-at-a-time loop (as the public reference code) vs `embedlab extract`.

    python analyses/bench_extract.py [--models embedlab-tiny ViT-B-32] [--n 192] [--size 512x384]
                                     [--naive-n 256] [--batch-size 64] [--workers 2] [--device auto] [--decode pil]

Inputs: the seven package photos (scikit-image, scikit-learn), each resized to SIZE and re-encoded as JPEG q90,
with seeded crops and flips to make N distinct files. Weights: random init (`--pretrained none`), same FLOPs as
the real towers. (a) opens, preprocesses and encodes one image per forward pass in fp32; (b) runs extract() with
a DataLoader, batching and inference_mode (bf16 autocast on GPU). Both exclude model loading. Writes
analyses/results/bench_extract.json.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_inputs(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    from PIL import Image

    from embedlab.manifests import seeded_crop
    from embedlab.photos import load_photo, package_photos

    folder.mkdir(parents=True, exist_ok=True)
    bases = [load_photo(p.uri) for p in package_photos()]
    files = []
    for i in range(n):
        img = seeded_crop(bases[i % len(bases)], i, min_frac=0.8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(img).resize(size, Image.BICUBIC).save(path, quality=90)
        files.append(path)
    return files


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


def main() -> None:
    from _common import write_json
    from embedlab import models
    from embedlab.extract import default_workers, extract
    from embedlab.manifests import manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["embedlab-tiny", "ViT-B-32"])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--naive-n", type=int, default=256, help="Images for the naive loop (its rate is steady after a few).")
    ap.add_argument("--size", default="512x384")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="Default: extract's own choice (recorded).")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--decode", default="pil", help="pil or torchvision (GPU JPEG decode when the device is CUDA).")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    w, h = map(int, args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    results = []
    try:
        files = make_inputs(tmp / "images", args.n, (w, h))
        man, _ = manifest("flat", tmp / "images", tmp / "m.jsonl", role="bench")
        for name in args.models:
            lm = models.load_model(name, "none", args.device)
            naive_files = files[: args.naive_n] if args.naive_n else files
            naive_loop(lm, naive_files[:4])                             # warm-up
            naive = naive_loop(lm, naive_files)
            if not (tmp / "warm.jsonl").exists():
                make_inputs(tmp / "warm_images", args.batch_size, (w, h))
                manifest("flat", tmp / "warm_images", tmp / "warm.jsonl", role="bench")
            extract(tmp / "warm.jsonl", name, "none", tmp / "warm", device=args.device, batch_size=args.batch_size,
                    workers=0, progress=False, overwrite=True, decode=args.decode)             # warm-up
            summary = extract(man, name, "none", tmp / f"run_{name}", device=args.device, batch_size=args.batch_size,
                              workers=args.workers, progress=False, overwrite=True, decode=args.decode)
            ours = summary["this_call"]["images_per_second"]
            row = {"model": name, "naive_img_per_s": round(naive, 2), "embedlab_img_per_s": ours,
                   "ratio": round(ours / naive, 2), "device": str(lm.device), "images": len(files),
                   "naive_images": len(naive_files), "image_size": args.size, "batch_size": args.batch_size,
                   "workers": args.workers if args.workers is not None else f"auto ({default_workers(lm)})",
                   "decode": args.decode}
            print(f"{name:16s} naive {naive:8.1f} img/s   embedlab {ours:8.1f} img/s   ratio {ours / naive:5.2f}x")
            results.append(row)
            del lm
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json("bench_extract.json" if args.decode == "pil" else f"bench_extract_{args.decode}.json",
               {"inputs": f"{args.n} JPEGs (q90) at {args.size} from the 7 package photos (seeded crops/flips)",
                "weights": "random init (pretrained none)", "results": results}, args.out)


if __name__ == "__main__":
    main()
