"""How much of the planted vignette `correct` takes out of the demo's residual, against the world without the plant.

    python -m analyses.demo.correction_unplanted --demo DEMO_FOLDER [--demo ...] [--out analyses/results]

The demo plants a 2-stop lens vignette on every well-lit training image. The residual the demo would have without
the plant is computable: the same backlit images against the same well-lit photos and crops rendered without the
vignette, embedded with the same demo CLIP. This script reports the cosine with that unplanted residual of
- the raw residual (backlit -> vignetted well-lit),
- the residual with the finding's word projected out (`correct --remove WORD`, the demo's correction before),
- the demo's corrected residual (`correct --remove-edit-like WORD`: the image edit closest to the word),
and which edit the demo's correction used. The held-out photos play no part in that.

With --train WORK it also trains the demo's enhancer (the `demo` preset, enhancer seed 0) on the unplanted residual
and scores it on the held-out photos per image, with the mean luma of each output's top quarter (china's sky): what
the enhancer does when the residual carries no vignette at all, beside the demo's own corrected enhancer.

--demo is a finished default `embedlab demo --out DIR` folder (its manifest, run, residuals, report).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def unplanted_residual(demo: Path, encode) -> tuple[np.ndarray, np.ndarray]:
    """The RAVE residual from the demo's backlit training images to its well-lit training photos and crops
    rendered without the vignette (the manifest's synth spec with recipe NONE: same crops, no plant), and that
    set's normalised mean (v_to)."""
    from embedlab.datasets.images import load_rgb
    from embedlab.datasets.manifest import materialize, read_manifest, render_synth

    man = read_manifest(demo / "manifest.jsonl")
    train = [e for e in man.entries if e.split == "train"]
    back = [load_rgb(materialize(man, e.path, e)) / 255.0 for e in train if e.role == "backlit"]
    well = [
        (render_synth(man, dict(e.synth, recipe="NONE")) if e.synth else load_rgb(materialize(man, e.path, e))) / 255.0
        for e in train
        if e.role == "welllit"
    ]
    v_from, v_to = _unit(_unit(encode(back)).mean(0)), _unit(_unit(encode(well)).mean(0))
    return _unit(v_to - v_from), v_to


def train_on(demo: Path, vector: np.ndarray, v_to: np.ndarray, work: Path) -> dict:
    """The demo enhancer trained on `vector` (a residual with the demo's model identity, its 'to' mean `v_to` and
    the paper's target thr = <v_to, vector>), scored
    per held-out image: PSNR gain over the input and the top quarter's mean luma (output and original)."""
    from analyses.demo._train import train_demo_enhancer
    from embedlab.analysis.residual_file import load_residual, save_residual
    from embedlab.datasets.manifest import materialize, read_manifest
    from embedlab.demos.loop import HeldOut, image_scores, run_net
    from embedlab.demos.pipeline import LOOP_MAX_PIXELS
    from embedlab.enhancement.network import load_enhancer_state

    info = {k: v for k, v in load_residual(demo / "residual.npy").info.items() if k not in ("dim", "file")}
    info.update(thr=float(v_to @ vector), v_to=v_to.tolist(), note="the world without the planted vignette")
    path = save_residual(work / "unplanted.npy", vector, info)
    man = read_manifest(demo / "manifest.jsonl")
    pairs = [(materialize(man, e.path, e), materialize(man, e.gt)) for e in man.entries
             if e.split == "test" and e.role == "backlit"]  # fmt: skip
    held = HeldOut([a for a, _ in pairs], [g for _, g in pairs], str(path), "cpu")
    r = train_demo_enhancer(work / "train", held, 50, demo, str(path), seed=0)
    outs = run_net(load_enhancer_state(r["enhancer"]), held.inputs, LOOP_MAX_PIXELS)
    top = lambda im: float(im[: im.shape[0] // 4].mean() / 255)  # noqa: E731
    return {
        n: {"psnr_gain_db": image_scores(o, g)["psnr"] - image_scores(i, g)["psnr"], "top_luma": top(o),
            "top_luma_original": top(g)}
        for n, o, i, g in zip(held.names, outs, held.inputs, held.gts)
    }  # fmt: skip


def check_demo(demo: Path, work: Path | None = None) -> dict:
    from embedlab.analysis.correct import correct
    from embedlab.analysis.probe import make_encoder
    from embedlab.analysis.residual_file import load_residual

    raw, corrected = load_residual(demo / "residual.npy"), load_residual(demo / "corrected.npy")
    result = json.loads((demo / "demo.json").read_text())
    word = result.get("bias_concept")
    encode = make_encoder(raw.load_model("cpu"))
    oracle, v_to = unplanted_residual(demo, encode)
    cos = lambda r: float(_unit(np.asarray(r.vector, np.float64)) @ oracle)  # noqa: E731
    row = {"demo": str(demo), "finding": word, "cos_unplanted": {"raw": cos(raw), "demo corrected": cos(corrected)}}
    if word:
        row["cos_unplanted"]["word removed"] = cos(correct(raw, None, remove=[word], device="cpu"))
        edit = corrected.info["edits"][-1]
        row["edit"] = {k: edit.get(k) for k in ("kind", "edit", "strength", "like", "cosine_to_concept")}
    if work is not None:
        row["enhancer_on_unplanted"] = train_on(demo, oracle, v_to, work / demo.parent.name)
    return row


def main() -> dict:
    from analyses._common import parse_args, write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", action="append", required=True, help="A finished demo folder; repeatable.")
    ap.add_argument("--out", default=None, help="Folder for demo_correction_unplanted.json (default analyses/results).")
    ap.add_argument("--train", default=None, help="Work folder: also train an enhancer on the unplanted residual.")
    args = parse_args(ap)
    rows = [check_demo(Path(d), Path(args.train) if args.train else None) for d in args.demo]
    for r in rows:
        c = r["cos_unplanted"]
        print(f"{r['demo']}: finding {r['finding']!r}, edit {r.get('edit', {}).get('edit')}; cosine with the unplanted "
              "residual: " + ", ".join(f"{k} {v:.3f}" for k, v in c.items()))  # fmt: skip
        for name, v in (r.get("enhancer_on_unplanted") or {}).items():
            print(f"  enhancer on the unplanted residual, {name}: {v['psnr_gain_db']:+.2f} dB, top-quarter luma "
                  f"{v['top_luma']:.2f} (original {v['top_luma_original']:.2f})")  # fmt: skip
    result = {"rows": rows, "measure": "cosine with the residual of the same world without the planted vignette"}
    write_json("demo_correction_unplanted.json", result, args.out)
    return result


if __name__ == "__main__":
    main()
