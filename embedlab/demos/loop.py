"""The demo's closed loop, measured: held-out metrics against the input and the CLAHE / gamma baselines, the
issue's quality bars, and short residual-guided trainings that record held-out PSNR and projection as they go.

Pure functions first (statistics, baselines, bars), then the I/O (training in chunks with evaluation between them,
the curve figure). The held-out photos are the demo manifest's test split: never in the enhancer's training or the
residual's sets (the demo CLIP's own training renders every package photo under its lighting variants).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from embedlab.colour import LUMA

log = logging.getLogger(__name__)
# The closed loop's bars: PSNR gain over the input, darkest-40% luma up, projection halfway to thr.
BAR_PSNR_GAIN_DB = 1.0
BAR_PROJECTION_SHARE = 0.5
DARK_FRACTION = 0.4
# A fixed intra-op thread count (2, or 1 on a one-core machine), not the machine's, keeps the summation order of
# the measured run (analyses/results/eval_demo_loop.json) on every machine: the short training is sensitive to it.
TRAIN_THREADS = min(2, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------- pure
def dark_luma(u8: np.ndarray, fraction: float = DARK_FRACTION) -> float:
    """Mean sRGB luma of the darkest `fraction` of an image's pixels."""
    y = np.sort((np.asarray(u8, dtype=np.float64) / 255.0 @ LUMA).ravel())
    return float(y[: max(1, int(len(y) * fraction))].mean())


def clahe(u8: np.ndarray) -> np.ndarray:
    """CLAHE baseline: scikit-image equalize_adapthist with its defaults (the shared checkpoints' README protocol)."""
    from skimage.exposure import equalize_adapthist

    return (equalize_adapthist(u8) * 255 + 0.5).astype(np.uint8)


def gamma(u8: np.ndarray, g: float = 0.5) -> np.ndarray:
    """Global gamma baseline: x ** g on sRGB values."""
    return ((np.asarray(u8, dtype=np.float64) / 255.0) ** g * 255 + 0.5).astype(np.uint8)


def image_scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    """PSNR / SSIM (RGB, as `embedlab evaluate`), mean luma and darkest-40% luma of one output."""
    from embedlab.enhancement.evaluate import psnr_ssim_rgb

    p, s = psnr_ssim_rgb(pred / 255.0, gt / 255.0)
    return {"psnr": p, "ssim": s, "mean_luma": float((pred / 255.0 @ LUMA).mean()), "dark40_luma": dark_luma(pred)}


def mean_scores(preds: list[np.ndarray], gts: list[np.ndarray], projections: np.ndarray | None = None) -> dict:
    rows = [image_scores(p, g) for p, g in zip(preds, gts)]
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    if projections is not None:
        out["projection"] = float(np.mean(projections))
    return out


def vignetting_stops(images: list[np.ndarray], originals: list[np.ndarray]) -> float:
    """The planted pattern in outputs: mean over images of log2(corner-to-centre luma ratio of the image / that of its
    original) (datasets.synth.corner_centre_ratio); 0 = the original's falloff, -1 = corners a stop darker."""
    from embedlab.datasets.synth import corner_centre_ratio

    return float(
        np.mean([np.log2(corner_centre_ratio(im) / corner_centre_ratio(gt)) for im, gt in zip(images, originals)])
    )


def quality_bars(inp: dict, enhanced: dict, thr: float) -> dict:
    """The issue's three bars on held-out means: PSNR >= input + 1 dB; darkest-40% luma above the input's;
    projection on the corrected residual at least halfway from the input's to thr."""
    share = (enhanced["projection"] - inp["projection"]) / (thr - inp["projection"])
    bars = {
        "psnr_gain_db": enhanced["psnr"] - inp["psnr"],
        "dark40_gain": enhanced["dark40_luma"] - inp["dark40_luma"],
        "projection_share_of_gap": float(share),
    }
    bars["psnr_ok"] = bool(bars["psnr_gain_db"] >= BAR_PSNR_GAIN_DB)
    bars["dark40_ok"] = bool(bars["dark40_gain"] > 0)
    bars["projection_ok"] = bool(share >= BAR_PROJECTION_SHARE)
    bars["all_ok"] = bars["psnr_ok"] and bars["dark40_ok"] and bars["projection_ok"]
    return bars


# ----------------------------------------------------------------------------------------------- I/O
class HeldOut:
    """The held-out backlit inputs and their originals (uint8), with an encoder for projections on `residual`."""

    def __init__(self, inputs: list[str], gts: list[str], residual: str, device: str = "auto"):
        from embedlab import models
        from embedlab.analysis.probe import make_encoder
        from embedlab.analysis.residual_file import load_residual
        from embedlab.datasets.images import load_rgb

        self.names = [Path(p).stem for p in inputs]
        self.inputs = [load_rgb(p) for p in inputs]
        self.gts = [load_rgb(g) for g in gts]
        res = load_residual(residual)
        self.vector, self.thr = res.vector.astype(np.float64), res.thr
        mi = res.info["model"]
        self.encode = make_encoder(models.load_model(mi["model"], mi["pretrained"], device))

    def project(self, images: list[np.ndarray]) -> np.ndarray:
        return self.encode([im / 255.0 for im in images]) @ self.vector

    def scores(self, images: list[np.ndarray]) -> dict:
        return mean_scores(images, self.gts, self.project(images))

    def baselines(self) -> dict:
        """Input, CLAHE and gamma 0.5 scored like the enhancer."""
        return {
            "input": self.scores(self.inputs),
            "CLAHE": self.scores([clahe(x) for x in self.inputs]),
            "gamma 0.5": self.scores([gamma(x) for x in self.inputs]),
        }


def run_net(state: dict, images: list[np.ndarray], max_pixels: int | None, padding: str = "test") -> list[np.ndarray]:
    """The test-time network (or, with padding "train", the zero-padded training class) with `state` on uint8
    images (illumination estimated at <= max_pixels)."""
    import torch

    from embedlab.enhancement.infer import enhance_array
    from embedlab.enhancement.network import EnhancementNet

    net = EnhancementNet(padding)
    net.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    net.eval()
    outs = []
    for im in images:
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255.0
        y = enhance_array(net, x, max_pixels)[0]
        outs.append((y.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    return outs


def train_with_curve(
    out: Path,
    held: HeldOut,
    every: int,
    max_pixels: int | None,
    progress: bool = False,
    on_point: Callable[[dict], None] | None = None,
    **train_options,
) -> dict:
    """Train (embedlab.enhancement.train's Trainer) in chunks of `every` network iterations and score the held-out
    photos after each chunk. Returns {"enhancer": path, "curve": [{iter, psnr, projection, ...}], "seconds": ...}."""
    import shutil
    import time

    import torch

    from embedlab.enhancement.train import Trainer, make_config

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    cfg = make_config(out=str(out), **train_options)
    trainer = Trainer(cfg)
    t_train, curve = 0.0, []
    # A fixed number of intra-op threads, whatever the machine has: the CPU kernels' summation order (hence the short
    # training's outcome, which is sensitive to it) is then the measured one in analyses/results/eval_demo_loop.json.
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        while True:
            t0 = time.perf_counter()
            r = trainer.run(progress=progress, stop_after=every)
            t_train += time.perf_counter() - t0
            point = {"iter": trainer.step, **held.scores(run_net(trainer.weights(), held.inputs, max_pixels))}
            curve.append(point)
            if on_point:
                on_point(point)
            if r["finished"]:
                return {"enhancer": r["enhancer"], "curve": curve, "train_seconds": round(t_train, 2)}
    finally:
        torch.set_num_threads(threads)


def planted_pattern(out: Path, held, raw: str | None) -> dict:
    """The planted vignette in the held-out outputs, in stops of corner-to-centre luma against the originals, for the
    inputs, the corrected residual's enhancer and (when trained) the raw residual's."""
    from embedlab.datasets.images import load_rgb

    outs = {"input": held.inputs}
    if raw:
        outs["raw"] = [load_rgb(str(out / "enhanced_raw" / f"{n}.png")) for n in held.names]
    outs["corrected"] = [load_rgb(str(out / "enhanced" / f"{n}.png")) for n in held.names]
    stops = {k: vignetting_stops(v, held.gts) for k, v in outs.items()}
    res = {
        "measure": "log2 of the corner-to-centre luma ratio (four corner patches of 20% x 20% vs the central one, "
        "linear light) over the original's, mean over the held-out photos; 0 = the original's falloff",
        "stops": stops,
    }
    if raw:
        res["raw_minus_corrected"] = stops["raw"] - stops["corrected"]
    return res


def plot_curves(curves: dict, start: dict, thr: float, baselines: dict, path: str | os.PathLike) -> Path:
    """Held-out PSNR and mean projection over training iterations, one line per training (iteration 0 = input)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(2, 1, figsize=(4.4, 5.6), sharex=True)  # tall: it stands beside the before/after grid
    for i, (label, curve) in enumerate(curves.items()):
        it = [0] + [p["iter"] for p in curve]
        a.plot(it, [start["psnr"]] + [p["psnr"] for p in curve], "o-", ms=3, color=f"C{i}", label=label)
        b.plot(it, [start["projection"]] + [p["projection"] for p in curve], "o-", ms=3, color=f"C{i}", label=label)
    for j, (name, v) in enumerate((k, v) for k, v in baselines.items() if k != "input"):
        a.axhline(v["psnr"], color="0.5", ls=":" if j else "--", lw=0.8, label=name)
    a.axhline(start["psnr"] + BAR_PSNR_GAIN_DB, color="C3", lw=0.6, label="input + 1 dB")
    b.axhline(thr, color="k", lw=0.8, ls="--", label="thr")
    b.axhline(
        start["projection"] + BAR_PROJECTION_SHARE * (thr - start["projection"]),
        color="C3",
        lw=0.6,
        label="halfway to thr",
    )
    a.set(ylabel="held-out PSNR (dB)", title="PSNR vs the originals")
    b.set(
        xlabel="training iteration", ylabel="mean projection", title="projection toward well-lit (corrected residual)"
    )
    a.legend(fontsize=6, loc="lower right")  # the curves start low left and end high right
    b.legend(fontsize=6, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
