"""Enhancement quality and speed on Recipe-A pairs of the package photos (shared/README.md protocol).

    python -m analyses.bench.enhance [--checkpoints ../shared/checkpoints] [--trained PATH] [--device auto]

Pairs: scikit-image astronaut, chelsea, coffee, rocket, stereo_motorcycle()[0] and scikit-learn's two sample images,
at full size, Recipe A seeds 0 and 1 (14 pairs). Rows: the backlit input, gamma 0.5, CLAHE (equalize_adapthist
defaults), every published checkpoint (test-time forward on the full image), and optionally a model trained by
embedlab (--trained). RGB PSNR / SSIM (scikit-image, data_range 1, channel_axis 2) averaged; plus enhancement
throughput in megapixels/s. Writes analyses/results/bench_enhance.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

PHOTOS = (
    "pkg:skimage/astronaut",
    "pkg:skimage/chelsea",
    "pkg:skimage/coffee",
    "pkg:skimage/rocket",
    "pkg:skimage/motorcycle",
    "pkg:sklearn/china.jpg",
    "pkg:sklearn/flower.jpg",
)


def main() -> None:
    import torch
    from skimage import exposure

    from analyses._common import parse_args, write_json
    from embedlab import models
    from embedlab.datasets.photos import load_photo
    from embedlab.datasets.synth import recipe_a
    from embedlab.enhancement.evaluate import psnr_ssim_rgb
    from embedlab.enhancement.infer import enhance_array, load_enhancer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", default=str(Path(__file__).resolve().parents[2] / "shared" / "checkpoints"))
    ap.add_argument("--trained", nargs="*", default=[], help="embedlab enhancer checkpoints to add as rows.")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    args = parse_args(ap)
    dev = models.resolve_device(args.device)
    pairs = []
    for uri in PHOTOS:
        gt = load_photo(uri)
        for seed in (0, 1):
            pairs.append((recipe_a(gt, seed).image / 255.0, gt / 255.0))
    rows = {}

    def score(name, fn):
        ps, ss = zip(*(psnr_ssim_rgb(np.clip(fn(x), 0, 1), g) for x, g in pairs))
        rows[name] = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}
        print(f"{name:36s} PSNR {rows[name]['psnr']:6.2f}  SSIM {rows[name]['ssim']:.3f}")

    score("input", lambda x: x)
    score("gamma 0.5", lambda x: x**0.5)
    score("CLAHE", lambda x: exposure.equalize_adapthist(x))
    ckpts = sorted(Path(args.checkpoints).glob("*/*.pth")) if Path(args.checkpoints).exists() else []
    ckpts += [Path(p) for p in args.trained]
    mp_s = {}
    for ck in ckpts:
        net = load_enhancer(ck, dev)
        name = f"{ck.parent.name}/{ck.stem}" if ck.suffix == ".pth" else f"embedlab/{ck.parent.name}"

        spent = [0.0]

        def run(x, net=net, spent=spent):
            t = torch.from_numpy(x).float().permute(2, 0, 1)[None]
            t0 = time.perf_counter()
            y = enhance_array(net, t)[0]
            if dev.type == "cuda":
                torch.cuda.synchronize()
            spent[0] += time.perf_counter() - t0
            return y.permute(1, 2, 0).cpu().numpy()

        score(name, run)
        mp_s[name] = sum(x.shape[0] * x.shape[1] for x, _ in pairs) / 1e6 / spent[0]
    if mp_s:
        print(
            f"enhancement throughput on {dev}: {np.mean(list(mp_s.values())):.3f} megapixels/s "
            "(network forward only, one image at a time, full resolution)"
        )
    write_json(
        "bench_enhance.json",
        {
            "pairs": "7 package photos x Recipe A seeds 0, 1 (full size)",
            "rows": rows,
            "megapixels_per_s": mp_s,
            "device": str(dev),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
