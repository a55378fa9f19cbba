"""`embedlab probe-residual`: which image edits move an image's projection on a residual towards its target?

A fixed family of parametric edits (global exposure, gamma, contrast, saturation, shadow/highlight exposure through
a luminance mask, veiling glare, blur, JPEG quality, downscaling, a lens vignette) is applied at several strengths
to sample images.
For each edit and strength the probe reports the mean change of the projection <embedding, r> over the images with
a 95% confidence interval (Student t over images), and ranks the edits by how far their best strength moves the
projection along the residual (towards its 'to' set and, for images below it, towards thr, the target of RAVE's
guidance loss). It tells whether a residual rewards lighting, or
sharpness, compression or size. The edits and statistics are pure functions; `probe_residual` does the I/O.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from embedlab._io import atomic_write_bytes, atomic_write_json, list_images, progress_bar
from embedlab.colour import LUMA, linear_to_srgb, scale_chroma, srgb_to_linear
from embedlab.datasets.manifest import materialize, read_manifest
from embedlab.datasets.synth import smoothstep, vignette_gain
from embedlab.errors import ConfigError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- edits (pure)
def edit_exposure(x: np.ndarray, ev: float) -> np.ndarray:
    """Global exposure: ev stops in linear light."""
    return linear_to_srgb(srgb_to_linear(x) * 2.0**ev)


def edit_gamma(x: np.ndarray, g: float) -> np.ndarray:
    """x ** g on sRGB values (g < 1 lifts shadows and midtones)."""
    return np.clip(x, 0, 1) ** g


def edit_contrast(x: np.ndarray, c: float) -> np.ndarray:
    """Scale around the mean luma by c."""
    m = float((x @ LUMA).mean())
    return np.clip(m + (x - m) * c, 0, 1)


def edit_saturation(x: np.ndarray, s: float) -> np.ndarray:
    """Scale the chroma around the per-pixel luma by s (0 = grey)."""
    return np.clip(scale_chroma(x, s), 0, 1)


def bright_mask(x: np.ndarray) -> np.ndarray:
    """Soft mask of the bright regions: smoothstep between the 30% and 80% quantiles of the blurred luma."""
    y = ndi.gaussian_filter(x @ LUMA, 0.03 * max(x.shape[:2]))
    lo, hi = np.quantile(y, [0.3, 0.8])
    return smoothstep(lo, hi, y)


def edit_shadows(x: np.ndarray, ev: float) -> np.ndarray:
    """Foreground (dark-region) exposure: ev stops in linear light weighted by 1 - bright_mask."""
    gain = 2.0 ** (ev * (1 - bright_mask(x)))
    return linear_to_srgb(srgb_to_linear(x) * gain[..., None])


def edit_highlights(x: np.ndarray, ev: float) -> np.ndarray:
    """Background (bright-region) exposure: ev stops weighted by bright_mask (negative ev recovers highlights)."""
    gain = 2.0 ** (ev * bright_mask(x))
    return linear_to_srgb(srgb_to_linear(x) * gain[..., None])


def edit_veil(x: np.ndarray, k: float) -> np.ndarray:
    """Veiling glare in linear light: k > 0 adds a uniform veil (lin*(1-k) + k); k < 0 removes one ((lin+k)/(1+k))."""
    lin = srgb_to_linear(x)
    lin = lin * (1 - k) + k if k >= 0 else (lin + k) / (1 + k)
    return linear_to_srgb(lin)


def edit_blur(x: np.ndarray, frac: float) -> np.ndarray:
    """Gaussian blur with sigma = frac x the long side."""
    s = frac * max(x.shape[:2])
    return ndi.gaussian_filter(x, (s, s, 0), mode="reflect")


def edit_vignette(x: np.ndarray, ev: float) -> np.ndarray:
    """A lens vignette in linear light: the corners lose `ev` stops, the centre none (datasets.synth.vignette)."""
    return linear_to_srgb(srgb_to_linear(x) * vignette_gain(*x.shape[:2], ev)[..., None])


def _pil(x: np.ndarray):
    from PIL import Image

    return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))


def edit_jpeg(x: np.ndarray, quality: float) -> np.ndarray:
    """Re-encode as JPEG at the given quality."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    _pil(x).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64) / 255.0


def edit_downscale(x: np.ndarray, factor: float) -> np.ndarray:
    """Downscale by `factor` (box filter), then back up to the original size (bicubic)."""
    from PIL import Image

    im = _pil(x)
    small = im.resize((max(1, round(im.width * factor)), max(1, round(im.height * factor))), Image.BOX)
    return np.asarray(small.resize(im.size, Image.BICUBIC), dtype=np.float64) / 255.0


@dataclass(frozen=True)
class Edit:
    name: str
    family: str  # "lighting" or "other"
    fn: Callable[[np.ndarray, float], np.ndarray]
    strengths: tuple
    meaning: str


EDITS = (
    Edit("exposure", "lighting", edit_exposure, (-4.0, -1.0, -0.5, 0.5, 1.0, 2.0), "global exposure, stops"),
    Edit("gamma", "lighting", edit_gamma, (0.5, 0.75, 1.5), "x**g (g < 1 brightens)"),
    Edit("contrast", "lighting", edit_contrast, (0.6, 0.8, 1.25, 1.5), "contrast factor"),
    Edit("saturation", "other", edit_saturation, (0.0, 0.5, 1.5), "saturation factor"),
    Edit("shadows", "lighting", edit_shadows, (1.0, 2.0, 3.0), "foreground (dark-region) exposure, stops"),
    Edit("highlights", "lighting", edit_highlights, (-2.0, -1.0, 1.0), "background (bright-region) exposure, stops"),
    Edit("veil", "lighting", edit_veil, (-0.05, -0.02, 0.05, 0.1), "veiling glare added (+) or removed (-)"),
    Edit("blur", "other", edit_blur, (0.01, 0.02, 0.04), "Gaussian sigma / long side"),
    Edit("jpeg", "other", edit_jpeg, (50.0, 20.0, 8.0), "JPEG quality"),
    Edit("downscale", "other", edit_downscale, (0.5, 0.25), "scale factor (down, then back up)"),
    Edit("vignette", "other", edit_vignette, (1.0, 2.0), "lens vignette, stops lost at the corners"),
)


def select_edits(names: Sequence[str] | None) -> tuple[Edit, ...]:
    if not names:
        return EDITS
    known = {e.name: e for e in EDITS}
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"Unknown edit(s) {bad}. Available: {', '.join(known)}.")
    return tuple(known[n] for n in names)


# ----------------------------------------------------------------------------------------------- statistics (pure)
def mean_ci(d: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a Student-t confidence interval of the mean (a zero-width interval for one value)."""
    from scipy import stats

    d = np.asarray(d, dtype=np.float64)
    m = float(d.mean())
    if len(d) < 2:
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return m, m - half, m + half


def summarise(base: np.ndarray, edited: dict, thr: float, edits: Sequence[Edit]) -> tuple[list[dict], list[dict]]:
    """(rows per edit x strength, ranking per edit). `base` (n,) projections of the unedited images; `edited`
    maps (edit name, strength) -> (n,) projections. An edit's score is the mean change of the projection at its
    best strength (the largest increase: the residual rewards it); 'gap_closed' is that change over
    thr - mean base (1 = reaches thr on average, for images below thr as a residual's 'from' set is)."""
    gap = float(thr - base.mean())
    gap = gap if abs(gap) > 1e-12 else 1e-12
    rows, ranking = [], []
    for e in edits:
        best = None
        for s in e.strengths:
            d = np.asarray(edited[(e.name, s)]) - base
            m, lo, hi = mean_ci(d)
            row = {
                "edit": e.name,
                "family": e.family,
                "strength": float(s),
                "mean_delta": m,
                "ci_low": lo,
                "ci_high": hi,
                "gap_closed": m / gap,
                "n": int(len(d)),
                "significant": bool(lo > 0 or hi < 0),
            }
            rows.append(row)
            if best is None or m > best["mean_delta"]:
                best = row
        ranking.append(
            {
                "edit": e.name,
                "family": e.family,
                "best_strength": best["strength"],
                "mean_delta": best["mean_delta"],
                "gap_closed": best["gap_closed"],
                "ci_low": best["ci_low"],
                "ci_high": best["ci_high"],
                "significant": best["significant"],
            }
        )
    ranking.sort(key=lambda r: -r["mean_delta"])
    for i, r in enumerate(ranking):
        r["rank"] = i + 1
    return rows, ranking


def probe_projections(
    encode: Callable[[list[np.ndarray]], np.ndarray],
    images: list[np.ndarray],
    vector: np.ndarray,
    edits: Sequence[Edit],
    progress: bool = False,
) -> tuple[np.ndarray, dict]:
    """Projections on `vector` of the images and of every edited version. `encode` maps a list of float [0,1]
    HxWx3 arrays to L2-normalised embeddings (n, d). `progress`: a bar over the (edit, strength) pairs."""
    v = np.asarray(vector, dtype=np.float64)
    base = encode(images) @ v
    edited = {}
    pairs = [(e, s) for e in edits for s in e.strengths]
    for e, s in progress_bar(progress, pairs, desc="probe-residual", unit="edit"):
        edited[(e.name, s)] = encode([e.fn(x, s) for x in images]) @ v
    return base, edited


def format_table(ranking: list[dict], base_mean: float, thr: float) -> str:
    """A Markdown table of the ranking."""
    lines = [
        f"mean projection of the unedited images {base_mean:+.4f}; target thr {thr:+.4f}",
        "",
        "| rank | edit | family | best strength | mean change of projection [95% CI] | share of gap to thr |",
        "|---|---|---|---|---|---|",
    ]
    for r in ranking:
        lines.append(
            f"| {r['rank']} | {r['edit']} | {r['family']} | {r['best_strength']:g} | {r['mean_delta']:+.4f} "
            f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]{'' if r['significant'] else ' (n.s.)'} | "
            f"{100 * r['gap_closed']:.0f}% |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- I/O
def _image_files(images: Sequence[str], selector: str) -> list[str]:

    from embedlab.datasets.inputs import TABLE_SUFFIXES, as_manifest, input_form
    from embedlab.datasets.selector import split_spec

    files: list[str] = []
    for spec in images:
        p, chosen = split_spec(spec, selector)
        if p.suffix == ".jsonl":
            man = read_manifest(p)
            files += [materialize(man, e.path, e) for e in chosen.filter(man.entries)]
        elif p.suffix.lower() in TABLE_SUFFIXES or (p.is_dir() and input_form(p) == "hf-dataset"):
            man = read_manifest(as_manifest(p).manifest)  # a table of paths, a Hugging Face dataset (inputs.py)
            entries = man.entries if str(p) == str(spec) else chosen.filter(man.entries)  # a selector only if given
            files += [materialize(man, e.path, e) for e in entries]
        elif p.is_dir():
            files += [str(f) for f in list_images(p)]
        elif p.exists():
            files.append(str(p))
        else:
            raise ConfigError(
                f"{spec} is neither an image, a folder of images, a manifest (.jsonl), a table of image paths "
                "(CSV/TSV/parquet) nor a Hugging Face dataset saved to disk."
            )
    if not files:
        raise ConfigError(f"No images found in {list(images)} (selector {selector!r}).")
    return files


def _load_images(files: list[str], max_side: int) -> list[np.ndarray]:
    from PIL import Image

    from embedlab.datasets.images import decode_image

    out = []
    for f in files:
        im = decode_image(f).image
        scale = min(1.0, max_side / max(im.size))
        if scale < 1:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
        out.append(np.asarray(im, dtype=np.float64) / 255.0)
    return out


def make_encoder(lm, batch_size: int = 32) -> Callable[[list[np.ndarray]], np.ndarray]:
    """An `encode` for probe_projections with the model's standard preprocess (as the residual's embeddings)."""
    import torch

    from embedlab import models

    def encode(images: list[np.ndarray]) -> np.ndarray:
        feats = []
        for s in range(0, len(images), batch_size):
            px = torch.stack([lm.preprocess(_pil(x)) for x in images[s : s + batch_size]])
            feats.append(models.encode_image_batch(lm, px))
        return np.concatenate(feats).astype(np.float64)

    return encode


def probe_residual(
    residual: str | os.PathLike,
    images: Sequence[str],
    out: str | os.PathLike | None = None,
    *,
    selector: str = "role=backlit",
    edits: Sequence[str] | None = None,
    max_images: int | None = 32,
    max_side: int = 512,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Apply the edit family to the images, measure the change of their projection on `residual`, and write
    probe.json, probe.csv, probe.md and probe.png into `out` (default: beside the residual)."""
    from embedlab.analysis.residual_file import as_residual
    from embedlab.analysis.results import Result

    res = as_residual(residual)  # a Residual (a notebook's) or its file
    mi = res.info["model"]
    lm = res.load_model(device)  # its weights and width checked against the sidecar
    files = _image_files(images, selector)
    if max_images and len(files) > max_images:
        files = sorted(np.random.default_rng(seed).choice(files, max_images, replace=False).tolist())
    chosen = select_edits(edits)
    base, edited = probe_projections(make_encoder(lm), _load_images(files, max_side), res.vector, chosen, progress)
    rows, ranking = summarise(base, edited, res.thr, chosen)
    if not out and res.path is None:
        raise ConfigError(
            "The residual was computed in memory, so there is no folder beside it for the probe. Fix: pass 'out'."
        ).naming("out")
    out = Path(out) if out else res.path.with_suffix("").parent / f"{res.path.stem}_probe"
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(ranking, float(base.mean()), res.thr)
    result = {
        "residual": str(res.path) if res.path is not None else None,
        "model": f"{mi['model']}/{mi['pretrained']}",
        "thr": res.thr,
        "images": files,
        "base_mean": float(base.mean()),
        "base": base.tolist(),
        "ranking": ranking,
        "rows": rows,
        "edits": {e.name: {"family": e.family, "strengths": list(e.strengths), "meaning": e.meaning} for e in chosen},
    }
    import pandas as pd

    atomic_write_bytes(out / "probe.csv", pd.DataFrame(rows).to_csv(index=False).encode())
    atomic_write_bytes(out / "probe.md", (table + "\n").encode())
    plot_probe(rows, chosen, float(base.mean()), res.thr, out / "probe.png")
    result["files"] = {k: str(out / f"probe.{k}") for k in ("json", "csv", "md", "png")}
    result["table"] = table
    atomic_write_json(out / "probe.json", result)
    return Result(result, "rows")  # a dict; .to_pandas(): one row per edit and strength


def plot_probe(rows: list[dict], edits: Sequence[Edit], base_mean: float, thr: float, path: Path) -> Path:
    """One small panel per edit: mean change of the projection vs strength with 95% CI; dashed = change to thr."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = 5
    nrow = -(-len(edits) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.2 * nrow), squeeze=False, sharey=True)
    for ax, e in zip(axes.flat, edits):
        r = [x for x in rows if x["edit"] == e.name]
        xs = np.arange(len(r))
        m = np.array([x["mean_delta"] for x in r])
        err = np.array([[x["mean_delta"] - x["ci_low"] for x in r], [x["ci_high"] - x["mean_delta"] for x in r]])
        ax.errorbar(xs, m, yerr=err, fmt="o", color="C0" if e.family == "lighting" else "C1", capsize=3)
        ax.axhline(0, color="k", lw=0.6)
        ax.axhline(thr - base_mean, color="C2", lw=0.8, ls="--")
        ax.set_xticks(xs, [f"{x['strength']:g}" for x in r], fontsize=7)
        ax.set_title(e.name, fontsize=9)
    for ax in list(axes.flat)[len(edits) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("mean change of projection", fontsize=8)
    fig.suptitle("change of projection on the residual per edit (95% CI); dashed: change that reaches thr", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
