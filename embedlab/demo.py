"""`embedlab demo`: the whole chain on the bundled demo manifest, with one index.html to read it.

manifest (package photos + Recipe-A backlit versions, split by source photo, a planted content bias)
-> extract -> residual (backlit -> well-lit, training photos only) -> explain-residual -> correct (remove the
top-ranked concept that is not a lighting word) -> a short RAVE training with the corrected residual
(--init identity, small crops) -> enhance the held-out backlit images -> evaluate against their originals.
"""
from __future__ import annotations

import html
import json
import logging
import os
import shutil
import time
from pathlib import Path

from ._io import atomic_write_bytes, atomic_write_json
from .errors import ConfigError

log = logging.getLogger(__name__)

# Words that name lighting or exposure. The demo model's caption grammar is the authority for its own words;
# this list extends the rule to real CLIP vocabularies.
GENERAL_LIGHTING_WORDS = {"light", "lit", "lighting", "bright", "brightness", "dark", "darkness", "shadow", "shadows",
                          "sun", "sunny", "sunlight", "sunlit", "backlit", "backlight", "silhouette", "silhouetted",
                          "exposure", "exposed", "overexposed", "underexposed", "dim", "glare", "glow", "night",
                          "daylight", "contrast", "haze", "hazy", "flare"}


def lighting_words(model: str) -> set[str]:
    from .demo_clip import lighting_words as grammar_words

    words = set(GENERAL_LIGHTING_WORDS) | grammar_words()
    return words | {w for phrase in words for w in phrase.replace("-", " ").split()}


def pick_bias_concept(concepts: list[dict], model: str) -> str | None:
    """The rule: the top-ranked concept the residual adds that is not a lighting word of the caption grammar."""
    light = lighting_words(model)
    for c in concepts:
        if c["direction"] != "adds":
            continue
        words = set(str(c["concept"]).lower().replace("-", " ").split())
        if str(c["concept"]).lower() not in light and not words & light:
            return str(c["concept"])
    return None


def demo(out: str | os.PathLike = "demo_out", *, model: str | None = None, pretrained: str | None = None,
         device: str = "auto", enhancer: str | None = None, train_iters: int = 150, permutations: int = 1000,
         identity: str = "guidance-tower", progress: bool = True, demo_steps: int | None = None) -> dict:
    """Run the demo chain into `out`; returns a dict of every artifact's path and the headline numbers."""
    from . import correct as corr
    from .enhance.evaluate import evaluate
    from .enhance.infer import enhance
    from .enhance.train import train
    from .explain import explain_residual
    from .extract import extract
    from .manifests import manifest, materialize, read_manifest
    from .plot import plot
    from .residual import residual

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    arts: dict[str, str] = {}

    def lap(name):
        timings[name] = round(time.perf_counter() - t0 - sum(timings.values()), 2)
        log.info("demo: %s done (%.1f s)", name, timings[name])

    if model is None:
        from .demo_clip import MODEL_NAME, pretrain_demo

        model = MODEL_NAME
        pretrained = str(pretrain_demo(device=device, progress=progress, **({"steps": demo_steps} if demo_steps else {})))
        lap("demo CLIP (trained or cached)")
    elif pretrained is None:
        raise ConfigError("--model needs --pretrained (a tag such as openai, hf-hub:ID, a checkpoint file, or none).")
    man_path, _ = manifest("demo", ".", out / "manifest.jsonl")
    arts["manifest"] = str(man_path)
    run_dir = out / "run"
    summary = extract(man_path, model, pretrained, run_dir, device=device, workers=0, progress=progress, overwrite=True)
    arts["run"] = str(run_dir)
    lap("extract")
    res_path = out / "residual.npy"
    res = residual(run_dir, "role=backlit,split=train", "role=welllit,split=train", res_path, bootstrap=200)
    arts["residual"] = str(res_path)
    lap("residual")
    report = explain_residual(res_path, out / "report", top=15, permutations=permutations, device=device,
                              progress=progress)
    arts["report"] = report["files"]["html"]
    lap("explain-residual")
    bias = pick_bias_concept(report["concepts"], model)
    corrected = out / "corrected.npy"
    if bias is not None:
        c = corr.correct(res_path, corrected, remove=[bias], device=device)
    else:
        log.warning("demo: every added concept is a lighting word; nothing to remove")
        c = res
        shutil.copy(res_path, corrected)
        shutil.copy(res_path.with_suffix(".json"), corrected.with_suffix(".json"))
    arts["corrected"] = str(corrected)
    lap("correct")
    if enhancer:
        ckpt = enhancer
        arts["enhancer"] = str(enhancer)
    else:
        ident = {"identity_model": model, "identity_pretrained": pretrained} if identity == "guidance-tower" else {"identity": "pixel"}
        tr = train(out / "train", preset="cpu-small", overwrite=True, progress=progress, residual=str(corrected),
                   backlit=f"{run_dir}:role=backlit,split=train", iters=train_iters, device=device, **ident)
        ckpt = tr["enhancer"]
        arts["enhancer"] = ckpt
        arts["training_log"] = str(out / "train" / "log.csv")
    lap("train")
    man = read_manifest(man_path)
    test_inputs = out / "test_inputs"
    test_inputs.mkdir(exist_ok=True)
    for e in man.entries:
        if e.split == "test" and e.role == "backlit":
            src = Path(materialize(man, e.path, e))
            shutil.copy(src, test_inputs / src.name)
    enhance(ckpt, [str(test_inputs)], out / "enhanced", device=device, progress=progress)
    arts["enhanced"] = str(out / "enhanced")
    lap("enhance")
    metrics = evaluate(out / "enhanced", str(man_path), out / "metrics", residual=str(corrected), inputs=str(test_inputs),
                       device=device)
    baseline = evaluate(test_inputs, str(man_path), out / "metrics_input")
    arts["metrics"] = metrics["files"]["summary"]
    lap("evaluate")
    plots = plot(run_dir, out / "plots", residual=str(res_path))
    arts.update({f"plot_{k}": v for k, v in plots.items()})
    grid = before_after_grid(test_inputs, out / "enhanced", man, out / "before_after.png")
    arts["before_after"] = str(grid)
    lap("plots")
    result = {"artifacts": arts, "bias_concept": bias, "model": f"{model}/{pretrained}",
              "residual_top": [c["concept"] for c in report["concepts"] if c["direction"] == "adds"][:5],
              "metrics": {"enhanced": {k: metrics.get(k) for k in ("psnr", "ssim", "mean_luma")},
                          "input": {k: baseline.get(k) for k in ("psnr", "ssim", "mean_luma")},
                          "residual_projection": metrics.get("residual_projection")},
              "correction": {k: v for k, v in c.info.get("correction", {}).items() if k != "directions"} if bias else None,
              "extract": {k: summary[k] for k in ("embedded", "skipped")}, "timings_s": timings,
              "total_s": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "demo.json", result)
    write_index(out, result)
    arts["index"] = str(out / "index.html")
    return result


def before_after_grid(inputs: Path, enhanced: Path, man, path: Path) -> Path:
    """Rows of (backlit input | enhanced | original) for the held-out images, at 256 px high."""
    from PIL import Image

    from .manifests import materialize

    gt_by_stem = {Path(materialize(man, e.path, e)).stem: materialize(man, e.gt) for e in man.entries if e.gt}
    rows = []
    for f in sorted(Path(inputs).iterdir()):
        enh = Path(enhanced) / f"{f.stem}.png"
        if not enh.exists():
            continue
        ims = [Image.open(f).convert("RGB"), Image.open(enh).convert("RGB")]
        if f.stem in gt_by_stem:
            ims.append(Image.open(gt_by_stem[f.stem]).convert("RGB"))
        ims = [im.resize((round(im.width * 256 / im.height), 256)) for im in ims]
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


def write_index(out: Path, result: dict) -> Path:
    e = html.escape
    arts = result["artifacts"]

    def rel(p):
        return e(os.path.relpath(p, out))

    m = result["metrics"]
    rows = "".join(f"<tr><td>{e(name)}</td><td>{_f(v.get('psnr'))}</td><td>{_f(v.get('ssim'))}</td><td>{_f(v.get('mean_luma'))}</td></tr>"
                   for name, v in (("backlit input", m["input"]), ("enhanced", m["enhanced"])))
    proj = m.get("residual_projection") or {}
    corr = result.get("correction") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>embedlab demo</title><style>body{font-family:system-ui,"
        "sans-serif;margin:2em;max-width:1100px}td,th{border:1px solid #ccc;padding:3px 8px}table{border-collapse:collapse}"
        "img{max-width:100%}</style></head><body><h1>embedlab demo</h1>",
        f"<p>Model: <code>{e(result['model'])}</code>. The demo manifest plants a content bias: its well-lit training set "
        f"over-represents one photo. The residual (backlit &rarr; well-lit) carries it; the concept report names it; "
        f"<code>correct</code> removes it before training.</p>",
        f"<h2>1. Concept report</h2><p>Top concepts the residual adds: {e(', '.join(result['residual_top']))}. "
        f"<a href='{rel(arts['report'])}'>Open the full report</a> (<a href='report/report.json'>json</a>, "
        f"<a href='report/report.csv'>csv</a>, <a href='report/report.md'>md</a>).</p>",
        f"<h2>2. Correction</h2><p>Removed concept (rule: the top-ranked added concept that is not a lighting word): "
        f"<b>{e(str(result['bias_concept']))}</b>. "
        + (f"cos(r, r') = {corr.get('cos_before_after', float('nan')):.4f}, {100 * corr.get('fraction_of_norm_removed', 0):.1f}% of |r| removed. "
           if corr else "") + "<a href='corrected.json'>sidecar</a>.</p>",
        f"<h2>3. Embedding maps</h2><p><img src='{rel(arts['plot_pca'])}' width='48%'>"
        + (f"<img src='{rel(arts['plot_umap'])}' width='48%'>" if "plot_umap" in arts else "") + "</p>",
        f"<h2>4. Enhancement of held-out backlit photos</h2><p>Columns: backlit input, enhanced, original. "
        f"<img src='{rel(arts['before_after'])}'></p>",
        f"<h2>5. Metrics</h2><table><tr><th></th><th>PSNR (RGB)</th><th>SSIM</th><th>mean luma</th></tr>{rows}</table>"
        f"<p>Mean projection on the corrected residual: input {_f(proj.get('input'))}, enhanced {_f(proj.get('enhanced'))} "
        f"(target thr {_f(proj.get('thr'))}). <a href='{rel(arts['metrics'])}'>summary.json</a>, "
        f"<a href='metrics/per_image.csv'>per-image CSV</a>.</p>",
        "<h2>Artifacts</h2><ul>" + "".join(f"<li>{e(k)}: <a href='{rel(v)}'>{rel(v)}</a></li>" for k, v in arts.items()
                                           if k != "index") + "</ul>",
        f"<p>Timings (s): {e(json.dumps(result['timings_s']))}; total {result['total_s']} s.</p></body></html>"]
    path = out / "index.html"
    atomic_write_bytes(path, "".join(parts).encode())
    return path


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
