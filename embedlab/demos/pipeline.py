"""`embedlab demo`: the whole chain on the bundled demo manifest, with one index.html to read it.

manifest (package photos + Recipe-A backlit versions, split by source photo, a planted content bias)
-> extract -> residual (backlit -> well-lit, training photos only) -> explain-residual -> correct (remove the
top-ranked concept that is not a lighting word) -> a short RAVE training with the corrected residual (the `demo`
train preset; held-out photos scored every few iterations, and a second training on the raw residual for the curve
figure) -> enhance the held-out backlit images -> evaluate against their originals and the input, CLAHE and gamma
baselines (embedlab.demo_loop), with the issue-15 quality bars in demo.json["loop"]["bars"].
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from embedlab._io import atomic_write_json, cache_ref
from embedlab.demos.page import _label, write_index
from embedlab.errors import ConfigError

log = logging.getLogger(__name__)
LOOP_MAX_PIXELS = 64 * 96  # held-out illumination maps are estimated at the training scale (64 px images)

# Words that name lighting or exposure. The demo model's caption grammar is the authority for its own words;
# this list extends the rule to real CLIP vocabularies.
GENERAL_LIGHTING_WORDS = {
    "light",
    "lit",
    "lighting",
    "bright",
    "brightness",
    "dark",
    "darkness",
    "shadow",
    "shadows",
    "sun",
    "sunny",
    "sunlight",
    "sunlit",
    "backlit",
    "backlight",
    "silhouette",
    "silhouetted",
    "exposure",
    "exposed",
    "overexposed",
    "underexposed",
    "dim",
    "glare",
    "glow",
    "night",
    "daylight",
    "contrast",
    "haze",
    "hazy",
    "flare",
}


def lighting_words() -> set[str]:
    from embedlab.demos.clip import lighting_words as grammar_words

    words = set(GENERAL_LIGHTING_WORDS) | grammar_words()
    return words | {w for phrase in words for w in phrase.replace("-", " ").split()}


def pick_bias_concept(concepts: list[dict]) -> str | None:
    """The rule: the top-ranked concept the residual adds that is not a lighting word of the caption grammar."""
    light = lighting_words()
    for c in concepts:
        if c["direction"] != "adds":
            continue
        words = set(str(c["concept"]).lower().replace("-", " ").split())
        if str(c["concept"]).lower() not in light and not words & light:
            return str(c["concept"])
    return None


IDLE_SECONDS_PER_ITER = 0.22  # measured: the demo trained 2 x 200 iterations in 87.1 s on 2 idle cores (bench_demo)


def training_notice(train_iters: int | None = None, raw_curve: bool = True, compare: bool = False) -> str:
    """One line for the demo's first output: the enhancer trainings it runs, and about how long they take."""
    from embedlab.enhancement.presets import PRESETS

    iters = train_iters or PRESETS["demo"]["iters"]
    runs = 1 + raw_curve + compare
    minutes = IDLE_SECONDS_PER_ITER * iters * runs / 60
    return (
        f"enhancer: the demo trains {runs} small enhancer(s) of {iters} iterations each (corrected residual"
        + (", raw residual for the curve" if raw_curve else "")
        + (", CLIP-LIT-Latent" if compare else "")
        + f"): about {minutes:.1f} min on 2 idle CPU cores"
        + (" (CLIP-LIT-Latent steps cost more)" if compare else "")
        + "."
    )


def demo(
    out: str | os.PathLike = "demo_out",
    *,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    enhancer: str | None = None,
    train_iters: int | None = None,
    permutations: int = 1000,
    identity: str = "guidance-tower",
    progress: bool = True,
    demo_steps: int | None = None,
    compare: bool = False,
    raw_curve: bool = True,
    curve_every: int = 25,
) -> dict:
    """Run the demo chain into `out`; returns a dict of every artifact's path and the headline numbers.

    The enhancer trains with the `demo` preset (embedlab.enhancement.presets.PRESETS; `train_iters` overrides its
    iterations) on the corrected residual, scored on the held-out photos every `curve_every` iterations; `raw_curve`
    also trains one on the raw residual for the curve figure, `compare` one with CLIP-LIT-Latent on the same budget."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lap = _Laps()
    if model is None:
        model, pretrained = _demo_clip(device, progress, demo_steps)
        lap("demo CLIP (trained or cached)")
    elif pretrained is None:
        raise ConfigError(
            "'model' needs 'pretrained' (a tag such as openai, hf-hub:ID, a checkpoint file, or none)."
        ).naming("model", "pretrained")
    chain = _embed_and_explain(out, model, pretrained, device, progress, permutations, lap)
    train_opts = dict(
        iters=train_iters, identity=identity, compare=compare, raw_curve=raw_curve, curve_every=curve_every
    )
    loop, scores, arts = _closed_loop(out, chain, model, pretrained, device, progress, enhancer, train_opts, lap)
    arts = {**chain["files"], **arts}
    arts.update(_figures(out, chain["run_dir"], chain["res_path"], out / "test_inputs", chain["man"]))
    lap("plots")
    report, c = chain["report"], chain["correction"]
    result = {
        "files": arts,
        "bias_concept": chain["bias"],
        "model": f"{model}/{pretrained}",
        "residual_top": [x["concept"] for x in report["concepts"] if x["direction"] == "adds"][:5],
        "metrics": scores,
        "loop": loop,
        "correction": {k: v for k, v in c.info.get("correction", {}).items() if k != "directions"}
        if chain["bias"]
        else None,
        "extract": {k: chain["summary"][k] for k in ("embedded", "skipped")},
        "timings_s": lap.timings,
        "total_s": lap.total(),
    }
    atomic_write_json(out / "demo.json", result)
    write_index(out, result)
    arts["index"] = str(out / "index.html")
    return result


class _Laps:
    """Named wall-time laps of the demo's steps (each call records the time since the previous one)."""

    def __init__(self):
        self.t0, self.timings = time.perf_counter(), {}

    def __call__(self, name: str) -> None:
        self.timings[name] = round(time.perf_counter() - self.t0 - sum(self.timings.values()), 2)
        log.info("demo: %s done (%.1f s)", name, self.timings[name])

    def total(self) -> float:
        return round(time.perf_counter() - self.t0, 1)


def _embed_and_explain(
    out: Path, model: str, pretrained: str, device: str, progress: bool, permutations: int, lap: _Laps
) -> dict:
    """manifest -> extract -> residual -> explain-residual -> correct (remove the bias concept): the chain's parts."""
    from embedlab.analysis.residual import residual
    from embedlab.datasets.layouts import manifest
    from embedlab.datasets.manifest import read_manifest
    from embedlab.reports.explain import explain_residual
    from embedlab.runs.extract.pipeline import extract

    man_path = manifest("demo", ".", out / "manifest.jsonl")["files"]["manifest"]
    run_dir = out / "run"
    summary = extract(man_path, model, pretrained, run_dir, device=device, workers=0, progress=progress, overwrite=True)
    lap("extract")
    res_path = out / "residual.npy"
    res = residual(
        run_dir, "role=backlit,split=train", "role=welllit,split=train", res_path, bootstrap=200, progress=progress
    )
    lap("residual")
    report = explain_residual(
        res_path, out / "report", top=15, permutations=permutations, device=device, progress=progress
    )
    lap("explain-residual")
    bias = pick_bias_concept(report["concepts"])
    corrected = out / "corrected.npy"
    c = _remove_bias(bias, res, res_path, corrected, device)
    lap("correct")
    files = {
        "manifest": str(man_path),
        "run": str(run_dir),
        "residual": str(res_path),
        "report": report["files"]["html"],
        "corrected": str(corrected),
    }
    return {
        "files": files,
        "man": read_manifest(man_path),
        "man_path": man_path,
        "run_dir": run_dir,
        "res_path": res_path,
        "corrected": corrected,
        "report": report,
        "bias": bias,
        "correction": c,
        "summary": summary,
    }


def _closed_loop(
    out: Path,
    chain: dict,
    model: str,
    pretrained: str,
    device: str,
    progress: bool,
    enhancer: str | None,
    train_opts: dict,
    lap: _Laps,
) -> tuple[dict, dict, dict]:
    """Train (or take) the enhancer, enhance the held-out photos and score them against the input, CLAHE and gamma:
    returns (demo.json's "loop", its "metrics", the artifacts' paths)."""
    from embedlab.datasets.images import load_rgb
    from embedlab.demos.loop import HeldOut, quality_bars
    from embedlab.enhancement.evaluate import evaluate
    from embedlab.enhancement.infer import enhance

    test_inputs = out / "test_inputs"
    pairs = _copy_held_out_inputs(chain["man"], test_inputs)
    held = HeldOut([p for p, _ in pairs], [g for _, g in pairs], str(chain["corrected"]), device)
    base = held.baselines()
    loop = {"held_out_images": held.names, "thr": held.thr, "max_pixels": LOOP_MAX_PIXELS}
    arts = {}
    if enhancer:
        ckpt = arts["enhancer"] = str(enhancer)
    else:
        ckpt, trained = _train_demo_enhancers(out, chain, held, base, model, pretrained, device, progress, train_opts)
        arts.update(trained.pop("files"))
        loop.update(trained)
    lap("train")
    enhance(ckpt, [str(test_inputs)], out / "enhanced", device=device, progress=progress, max_pixels=LOOP_MAX_PIXELS)
    arts["enhanced"] = str(out / "enhanced")
    lap("enhance")
    metrics = evaluate(
        out / "enhanced",
        str(chain["man_path"]),
        out / "metrics",
        residual=str(chain["corrected"]),
        inputs=str(test_inputs),
        device=device,
        progress=progress,
    )
    arts["metrics"] = metrics["files"]["summary"]
    loop["enhanced_by"] = (
        f"published enhancer {enhancer}" if enhancer else "RAVE guidance, corrected residual, demo preset"
    )
    scores = {
        "input": base["input"],
        "enhanced": held.scores([load_rgb(str(out / "enhanced" / f"{n}.png")) for n in held.names]),
        "CLAHE": base["CLAHE"],
        "gamma 0.5": base["gamma 0.5"],
    }
    loop["bars"] = quality_bars(scores["input"], scores["enhanced"], held.thr)
    lap("evaluate")
    return loop, {**scores, "residual_projection": metrics.get("residual_projection")}, arts


def _train_demo_enhancers(
    out: Path, chain: dict, held, base: dict, model: str, pretrained: str, device: str, progress: bool, opts: dict
) -> tuple[str, dict]:
    """The demo's trainings (corrected residual; raw residual and CLIP-LIT-Latent for the curves), the curve figure;
    returns (the corrected-residual enhancer, demo.json "loop" entries with "files")."""
    from embedlab.demos.loop import plot_curves
    from embedlab.enhancement.presets import PRESETS

    run_dir = chain["run_dir"]
    runs = {"RAVE, corrected residual": dict(residual=str(chain["corrected"]))}
    if opts["raw_curve"]:
        runs["RAVE, raw residual"] = dict(residual=str(chain["res_path"]))
    if opts["compare"]:
        runs["CLIP-LIT-Latent"] = dict(
            guidance="latent", model=model, pretrained=pretrained, welllit=f"{run_dir}:role=welllit,split=train"
        )
    ident = (
        {"identity_model": model, "identity_pretrained": pretrained}
        if opts["identity"] == "guidance-tower"
        else {"identity": "pixel"}
    )
    iters = opts["iters"] or PRESETS["demo"]["iters"]
    common = dict(
        preset="demo",
        backlit=f"{run_dir}:role=backlit,split=train",
        iters=iters,
        device=device,
        progress=progress,
        **ident,
    )
    ckpt, curves, train_s = _train_with_curves(out, held, runs, common, opts["curve_every"])
    plot = plot_curves(curves, base["input"], held.thr, base, out / "training_curves.png")
    files = {"enhancer": ckpt, "training_log": str(out / "train" / "log.csv"), "plot_training_curves": str(plot)}
    return ckpt, {"files": files, "curves": curves, "train_seconds": train_s, "preset": "demo", "iters": iters}


def _demo_clip(device: str, progress: bool, steps: int | None) -> tuple[str, str]:
    """The demo CLIP (trained, cached or unpacked from the shipped copy): (model name, checkpoint named relative to
    the cache root, "cache:...", so that pages and sidecars do not show the user's home)."""
    from embedlab.demos.clip import MODEL_NAME, pretrain_demo

    ckpt = pretrain_demo(device=device, progress=progress, **({"steps": steps} if steps else {}))["files"]["checkpoint"]
    return MODEL_NAME, cache_ref(ckpt)


def _remove_bias(bias: str | None, res, res_path: Path, corrected: Path, device: str):
    """`correct` the residual by removing the bias concept; without one, the residual is copied as it is."""
    from embedlab.analysis import correct as corr

    if bias is not None:
        return corr.correct(res_path, corrected, remove=[bias], device=device)
    log.warning("demo: every added concept is a lighting word; nothing to remove")
    shutil.copy(res_path, corrected)
    shutil.copy(res_path.with_suffix(".json"), corrected.with_suffix(".json"))
    return res


def _figures(out: Path, run_dir: Path, res_path: Path, test_inputs: Path, man) -> dict[str, str]:
    """The embedding plots, the before/after grid and the interactive map; returns their paths by artifact name."""
    from embedlab.reports.embedding_map import embedding_map
    from embedlab.reports.plot import plot

    arts = {
        f"plot_{k}": v for k, v in plot(run_dir, out / "plots", residual=str(res_path), progress=False)["files"].items()
    }
    arts["before_after"] = str(before_after_grid(test_inputs, out / "enhanced", man, out / "before_after.png"))
    arts["map"] = str(
        embedding_map(
            run_dir,
            out / "map.html",
            residual=str(res_path),
            nav=[("demo index", "index.html"), ("concept report", "report/report.html")],
        )["files"]["html"]
    )
    return arts


def _copy_held_out_inputs(man, folder: Path) -> list[tuple[str, str]]:
    """Copy the held-out backlit photos into `folder`; returns (copied input, ground truth) pairs."""
    from embedlab.datasets.manifest import materialize

    folder.mkdir(exist_ok=True)
    pairs = []
    for e in man.entries:
        if e.split == "test" and e.role == "backlit":
            src = Path(materialize(man, e.path, e))
            shutil.copy(src, folder / src.name)
            pairs.append((str(folder / src.name), materialize(man, e.gt)))
    return pairs


def _train_with_curves(out: Path, held, runs: dict, common: dict, curve_every: int) -> tuple[str, dict, dict]:
    """Train one enhancer per entry of `runs` (label -> train options), the first into out/train, scoring the
    held-out photos every `curve_every` iterations; returns (first enhancer, curves, training seconds)."""
    from embedlab.demos.loop import train_with_curve

    curves, train_s, first = {}, {}, None
    for i, (label, opts) in enumerate(runs.items()):
        folder = out / ("train" if i == 0 else f"train_{i}")
        r = train_with_curve(folder, held, curve_every, LOOP_MAX_PIXELS, **common, **opts)
        curves[label], train_s[label] = r["curve"], r["train_seconds"]
        first = first or r["enhancer"]
    return first, curves, train_s


def before_after_grid(inputs: Path, enhanced: Path, man, path: Path) -> Path:
    """Rows of (backlit input | enhanced | original) for the held-out images, at 256 px high."""
    from PIL import Image

    from embedlab.datasets.manifest import materialize

    gt_by_stem = {Path(materialize(man, e.path, e)).stem: materialize(man, e.gt) for e in man.entries if e.gt}
    rows = []
    for f in sorted(Path(inputs).iterdir()):
        enh = Path(enhanced) / f"{f.stem}.png"
        if not enh.exists():
            continue
        ims = [Image.open(f).convert("RGB"), Image.open(enh).convert("RGB")]
        if f.stem in gt_by_stem:
            ims.append(Image.open(gt_by_stem[f.stem]).convert("RGB"))
        ims = [
            _label(im.resize((round(im.width * 256 / im.height), 256)), name)
            for im, name in zip(ims, ("backlit input", "enhanced", "original"))
        ]
        row = Image.new("RGB", (sum(i.width for i in ims) + 8 * (len(ims) - 1), 256), "white")
        x = 0
        for im in ims:
            row.paste(im, (x, 0))
            x += im.width + 8
        rows.append(row)
    if not rows:
        raise ConfigError("No enhanced image to put in the before/after grid.")
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + 8 * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height + 8
    grid.save(path)
    return path
