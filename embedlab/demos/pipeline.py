"""`embedlab demo`: the whole chain on the bundled demo manifest, with one index.html to read it (docs/demo.md).

manifest (15 package photos, one group each; Recipe-A backlit versions; split by source photo; the planted bias: a
lens vignette on every well-lit training image) -> extract -> residual (backlit -> well-lit, training photos only)
-> explain-residual (family-wise max-T test, shuffles within photos) -> correct (remove the report's finding: the
top-ranked added concept at p_fwer < 0.05 that is not the lighting the residual is for) -> two short RAVE trainings
(the `demo` preset), on the corrected and on the raw residual -> enhance the held-out backlit images with both ->
evaluate against their originals and the input, CLAHE and gamma baselines (embedlab.demos.loop), with the quality
bars in demo.json["loop"]["bars"] and the planted pattern (corner falloff) in demo.json["loop"]["planted"].
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from embedlab._io import atomic_write_json, cache_ref
from embedlab.demos.figures import figures
from embedlab.demos.finding import bias_finding, pick_bias_concept, removal_line, remove_bias
from embedlab.demos.page import write_index
from embedlab.errors import ConfigError

log = logging.getLogger(__name__)
LOOP_MAX_PIXELS = 64 * 96  # held-out illumination maps are estimated at the training scale (64 px images)


def quiet_third_party() -> None:
    """Filter, at their source modules, the third-party warnings a demo user cannot act on (the demo fixes every
    option they are about)."""
    import warnings

    # UMAP: "n_jobs value 1 overridden to 1 by setting random_state" (the plot fixes random_state on purpose)
    warnings.filterwarnings("ignore", message=r"n_jobs value .* overridden", category=UserWarning, module=r"umap\.")
    # UMAP/sklearn on a few hundred points: "... is deprecated ... force_all_finite" style renames inside umap
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"sklearn\.")


IDLE_SECONDS_PER_ITER = 0.22  # an enhancer iteration on 2 idle cores, for the notice (analyses/results/bench_demo.json)


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
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Run the demo chain into `out`; returns a dict of every artifact's path and the headline numbers.

    The enhancer trains with the `demo` preset (embedlab.enhancement.presets.PRESETS; `train_iters` overrides its
    iterations) on the corrected residual, scored on the held-out photos every `curve_every` iterations; `raw_curve`
    also trains one on the raw residual for the curve figure, `compare` one with CLIP-LIT-Latent on the same budget.
    `echo` (e.g. print) gets one line per stage; `progress` then draws a bar only for the stages that take long
    (the demo CLIP's training, the enhancers' training)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lap = _Laps(echo)
    model_label = None
    if model is None:
        model, pretrained, model_label, short = _demo_clip(device, progress, demo_steps)
        lap("demo CLIP", short)
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
    arts.update(figures(out, chain["run_dir"], chain["res_path"], out / "test_inputs", chain["man"]))
    lap("figures")
    result = _result(chain, arts, model, pretrained, model_label, scores, loop, lap)
    atomic_write_json(out / "demo.json", result)
    write_index(out, result)
    arts["index"] = str(out / "index.html")
    return result


def _result(chain: dict, arts: dict, model, pretrained, model_label, scores: dict, loop: dict, lap) -> dict:
    """demo.json: every artifact's path, the finding, the model, the metrics and the timings."""
    report, c = chain["report"], chain["correction"]
    return {
        "files": arts,
        "bias_concept": chain["bias"],
        "finding": chain["finding"],
        "world": chain["world"],
        "model": f"{model}/{pretrained}",
        "model_label": model_label or f"{model} (weights {pretrained})",
        "residual_top": [x["concept"] for x in report["concepts"] if x["direction"] == "adds"][:5],
        "metrics": scores,
        "loop": loop,
        "correction": {k: v for k, v in c.info.get("correction", {}).items() if k != "directions"}
        if chain["bias"]
        else None,
        "removed_edit": c.info["edits"][-1] if chain["bias"] else None,
        "extract": {k: chain["summary"][k] for k in ("embedded", "skipped")},
        "timings_s": lap.timings,
        "total_s": lap.total(),
    }


class _Laps:
    """Named wall-time laps of the demo's steps (each call records the time since the previous one) and, with `echo`,
    one console line per stage."""

    def __init__(self, echo: Callable[[str], None] | None = None):
        self.t0, self.timings, self.echo = time.perf_counter(), {}, echo

    def __call__(self, name: str, detail: str = "") -> None:
        self.timings[name] = round(time.perf_counter() - self.t0 - sum(self.timings.values()), 2)
        log.info("demo: %s done (%.1f s)", name, self.timings[name])
        if self.echo is not None:
            self.echo(f"{name:<17s}{detail + ' ' if detail else ''}({self.timings[name]:.0f} s)")

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

    made = manifest("demo", ".", out / "manifest.jsonl")
    man_path = made["files"]["manifest"]
    run_dir = out / "run"
    # the stages below take seconds each: one line each, no bars (progress=False)
    summary = extract(man_path, model, pretrained, run_dir, device=device, workers=0, progress=False, overwrite=True)
    lap("extract", f"{summary['embedded']} images embedded")
    res_path = out / "residual.npy"
    res = residual(
        run_dir, "role=backlit,split=train", "role=welllit,split=train", res_path, bootstrap=200, progress=False
    )
    lap("residual", "backlit -> well-lit, training photos")
    report = explain_residual(
        res_path, out / "report", top=15, permutations=permutations, device=device, progress=False
    )
    bias = pick_bias_concept(report["concepts"])
    finding = bias_finding(report, bias)
    lap("concept report", finding["line"])
    corrected = out / "corrected.npy"
    c = remove_bias(bias, res, res_path, corrected, device)
    lap("correct", removal_line(c, bias))
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
        "finding": finding,
        "world": {**(made.get("bias") or {}), "train_groups": made.get("train_groups")},
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
    from embedlab.demos.loop import HeldOut, planted_pattern, quality_bars
    from embedlab.enhancement.evaluate import evaluate

    test_inputs = out / "test_inputs"
    pairs = _copy_held_out_inputs(chain["man"], test_inputs)
    held = HeldOut([p for p, _ in pairs], [g for _, g in pairs], str(chain["corrected"]), device)
    base = held.baselines()
    loop = {"held_out_images": held.names, "thr": held.thr, "max_pixels": LOOP_MAX_PIXELS}
    arts = {}
    raw = None
    if enhancer:
        ckpt = arts["enhancer"] = str(enhancer)
    else:
        ckpt, trained = _train_demo_enhancers(out, chain, held, base, model, pretrained, device, progress, train_opts)
        arts.update(trained.pop("files"))
        raw = trained.pop("raw_enhancer", None)
        loop.update(trained)
    lap("train", f"{1 + bool(raw)} enhancer(s) (corrected{' and raw' if raw else ''} residual)" if not enhancer else "")
    arts.update(_enhance_held_out(out, ckpt, raw, test_inputs, device))
    lap("enhance", f"{len(held.names)} held-out photos")
    metrics = evaluate(
        out / "enhanced",
        str(chain["man_path"]),
        out / "metrics",
        residual=str(chain["corrected"]),
        inputs=str(test_inputs),
        device=device,
        progress=False,
    )
    arts["metrics"] = metrics["files"]["summary"]
    loop["enhanced_by"] = (
        f"published enhancer {enhancer}" if enhancer else "RAVE guidance, corrected residual, demo preset"
    )
    scores = _held_out_scores(out, held, base, raw)
    loop["bars"] = quality_bars(scores["input"], scores["enhanced"], held.thr)
    loop["planted"] = planted_pattern(out, held, raw)
    st = loop["planted"]["stops"]
    lap(
        "evaluate",
        f"PSNR {scores['input']['psnr']:.2f} -> {scores['enhanced']['psnr']:.2f} dB; corner falloff vs originals: "
        f"corrected {st['corrected']:+.2f} stops" + (f", raw {st['raw']:+.2f}" if "raw" in st else ""),
    )
    return loop, {**scores, "residual_projection": metrics.get("residual_projection")}, arts


def _enhance_held_out(out: Path, ckpt: str, raw: str | None, test_inputs: Path, device: str) -> dict:
    """Enhance the held-out photos with the (corrected) enhancer and, when there is one, the enhancer trained on the
    raw residual (does it show the bias?); returns their artifacts' paths."""
    from embedlab.enhancement.infer import enhance

    arts = {}
    for name, net in (("enhanced", ckpt), ("enhanced_raw", raw)):
        if net:
            enhance(net, [str(test_inputs)], out / name, device=device, progress=False, max_pixels=LOOP_MAX_PIXELS)
            arts[name] = str(out / name)
    if raw:
        arts["enhancer_raw"] = raw
    return arts


def _held_out_scores(out: Path, held, base: dict, raw: str | None) -> dict:
    """The held-out photos' scores: the input, the enhanced outputs, CLAHE and gamma, and the raw residual's outputs
    when there are some."""
    from embedlab.datasets.images import load_rgb

    scores = {
        "input": base["input"],
        "enhanced": held.scores([load_rgb(str(out / "enhanced" / f"{n}.png")) for n in held.names]),
        "CLAHE": base["CLAHE"],
        "gamma 0.5": base["gamma 0.5"],
    }
    if raw:
        scores["enhanced, raw residual"] = held.scores(
            [load_rgb(str(out / "enhanced_raw" / f"{n}.png")) for n in held.names]
        )
    return scores


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
    common = dict(preset="demo", backlit=f"{run_dir}:role=backlit,split=train", iters=iters, device=device, **ident)
    enhancers, curves, train_s = _train_with_curves(out, held, runs, common, opts["curve_every"], progress)
    ckpt = enhancers["RAVE, corrected residual"]
    plot = plot_curves(curves, base["input"], held.thr, base, out / "training_curves.png")
    files = {"enhancer": ckpt, "training_log": str(out / "train" / "log.csv"), "plot_training_curves": str(plot)}
    return ckpt, {
        "files": files,
        "raw_enhancer": enhancers.get("RAVE, raw residual"),
        "curves": curves,
        "train_seconds": train_s,
        "preset": "demo",
        "iters": iters,
    }


def _demo_clip(device: str, progress: bool, steps: int | None) -> tuple[str, str, str, str]:
    """The demo CLIP (trained, cached or unpacked from the shipped copy): (model name, checkpoint named relative to
    the cache root, "cache:...", so that pages and sidecars do not show the user's home; its name and recipe for
    the page; a short form of that for the console)."""
    from embedlab.demos.clip import MODEL_NAME, default_recipe, pretrain_demo

    r = pretrain_demo(device=device, progress=progress, **({"steps": steps} if steps else {}))
    rec = default_recipe(**({"steps": steps} if steps else {}))
    source = {"package": "the copy shipped with embedlab", "cache": "cached", "trained": "trained now"}[r["source"]]
    label = (
        f"{MODEL_NAME}, the demo CLIP embedlab trains itself (recipe v{rec.version} {r['recipe_key']}: seed "
        f"{rec.seed}, {rec.steps} steps on {len(rec.photos)} package photos under four lighting conditions, "
        f"{rec.image_size} px; {source})"
    )
    return MODEL_NAME, cache_ref(r["files"]["checkpoint"]), label, f"{MODEL_NAME} recipe v{rec.version} ({source})"


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


def _train_with_curves(
    out: Path, held, runs: dict, common: dict, curve_every: int, progress: bool = False
) -> tuple[dict, dict, dict]:
    """Train one enhancer per entry of `runs` (label -> train options), the first into out/train, scoring the
    held-out photos every `curve_every` iterations (shown, never used to choose anything); returns (enhancer by
    label, curves, training seconds). `progress`: one bar over all the trainings (cleared when done)."""
    from embedlab._io import progress_bar
    from embedlab.demos.loop import train_with_curve

    curves, train_s, enhancers = {}, {}, {}
    bar = progress_bar(progress, total=common["iters"] * len(runs), desc="train", unit="it")
    bar.leave = False
    try:
        for i, (label, opts) in enumerate(runs.items()):
            folder = out / ("train" if i == 0 else f"train_{i}")
            done = [bar.n]
            bar.set_description(f"train ({label})")

            def tick(point, done=done):
                bar.update(done[0] + point["iter"] - bar.n)

            r = train_with_curve(folder, held, curve_every, LOOP_MAX_PIXELS, on_point=tick, **common, **opts)
            curves[label], train_s[label], enhancers[label] = r["curve"], r["train_seconds"], r["enhancer"]
    finally:
        bar.close()
    return enhancers, curves, train_s
