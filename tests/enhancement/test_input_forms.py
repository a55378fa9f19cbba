"""train, enhance, evaluate and synth-backlit take the input forms extract does (a folder, a CSV table of paths, a
manifest; embedlab.datasets.inputs) and give the same result for each; a wrong form gets one line."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from embedlab.cli import app
from embedlab.datasets.layouts import manifest
from embedlab.enhancement.network import load_enhancer_state
from tests.helpers.extraction import photo_folder

ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
TRAIN = ["--guidance", "none", "--identity", "pixel", "--preset", "cpu-small", "--recon-iters", "0", "--iters", "2",
         "--size", "32", "--crop", "32", "--batch-size", "2", "--device", "cpu", "--no-progress"]  # fmt: skip


def _cli(*args):
    r = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    assert r.exit_code == 0, r.output
    return r


def _fails(*args) -> str:
    r = CliRunner().invoke(app, [str(a) for a in args], env=ENV)
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code in (1, 2) and len(lines) == 1, r.output  # one line, no traceback
    return " ".join(r.output.split())


def _table(folder: Path, out: Path, **columns) -> Path:
    """A CSV of the images of `folder` (paths relative to the CSV), with extra columns {name: function of a file}."""
    files = sorted(f for f in folder.iterdir() if f.suffix in (".png", ".jpg"))
    rows = [",".join(["path", *columns])]
    rows += [",".join([f"{folder.name}/{f.name}", *(fn(f) for fn in columns.values())]) for f in files]
    out.write_text("\n".join(rows) + "\n")
    return out


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """The same four small photos as a folder, a manifest (role backlit) and a CSV table (with a metadata column)."""
    d = tmp_path_factory.mktemp("forms")
    photo_folder(d / "shots", 4, size=(40, 32))
    man = manifest("flat", d / "shots", d / "shots.jsonl", role="backlit")["files"]["manifest"]
    table = _table(d / "shots", d / "shots.csv", scene=lambda f: f"s{f.stem}")
    return {"dir": d, "folder": d / "shots", "manifest": Path(man), "table": table}


def test_train_resolves_and_trains_the_same_on_each_form(forms, tmp_path):
    from embedlab.enhancement.data import resolve_images

    files = {k: resolve_images(str(forms[k]), "role=backlit") for k in ("folder", "manifest", "table")}
    assert files["folder"] == files["manifest"] == files["table"] and len(files["folder"]) == 4
    # a selector given to a folder applies (its role is the folder's name), a default one does not
    assert resolve_images(f"{forms['folder']}:role=shots", "role=backlit") == files["folder"]
    weights = {}
    for k in ("folder", "manifest", "table"):
        _cli("train", "--out", tmp_path / k, "--backlit", forms[k], *TRAIN)
        weights[k] = load_enhancer_state(tmp_path / k / "enhancer.safetensors")
    assert all(torch.equal(weights["folder"][n], w[n]) for w in weights.values() for n in w)
    sub = forms["dir"] / "two.csv"  # two of the photos: other weights (the images count)
    sub.write_text("".join(forms["table"].read_text().splitlines(keepends=True)[:3]))
    _cli("train", "--out", tmp_path / "two", "--backlit", sub, *TRAIN)
    two = load_enhancer_state(tmp_path / "two" / "enhancer.safetensors")
    assert not all(torch.equal(weights["folder"][n], two[n]) for n in two)


def test_pixel_loss_pairs_come_from_a_table_with_a_gt_column(forms):
    from embedlab.enhancement.data import resolve_pairs
    from embedlab.errors import InvalidParameterError

    folder = forms["folder"]
    table = _table(folder, forms["dir"] / "gt.csv", gt=lambda f: f"{folder.name}/{f.name}")  # each its own gt
    images, gts = resolve_pairs(str(table), "role=backlit")
    assert images == gts and len(images) == 4
    with pytest.raises(InvalidParameterError, match="4 of 4 have none"):  # a folder has no gt
        resolve_pairs(str(folder), "role=backlit")


def test_enhance_writes_the_same_images_from_each_form(forms, tmp_path):
    _cli("train", "--out", tmp_path / "t", "--backlit", forms["manifest"], *TRAIN)
    ckpt = tmp_path / "t" / "enhancer.safetensors"
    outs = {}
    for k in ("folder", "manifest", "table"):
        _cli("enhance", ckpt, forms[k], "--out", tmp_path / k, "--device", "cpu", "--no-progress")
        outs[k] = {p.name: p.read_bytes() for p in sorted((tmp_path / k).glob("*.png"))}
    assert len(outs["folder"]) == 4 and outs["folder"] == outs["manifest"] == outs["table"]
    # a folder where the checkpoint file goes: one line naming the file to pass
    assert "pass " + str(ckpt) in _fails("enhance", tmp_path / "t", forms["folder"], "--out", tmp_path / "x")


def test_evaluate_pairs_folders_tables_and_manifests_alike(forms, tmp_path):
    from PIL import Image

    d = forms["dir"]
    pred = d / "pred"  # "enhanced" images: the photos made darker, named as the ground truths
    pred.mkdir(exist_ok=True)
    for f in forms["folder"].iterdir():
        Image.open(f).point(lambda v: v // 2).save(pred / f"{f.stem}.png")
    pred_csv = _table(pred, d / "pred.csv")
    pairs = _table(pred, d / "pairs.csv", gt=lambda f: next(forms["folder"].glob(f"{f.stem}.*")).as_posix())
    results = []
    for p, g in [(pred, forms["folder"]), (pred_csv, forms["table"]), (pred, forms["manifest"]), (pred, pairs)]:
        if g == forms["manifest"]:  # a manifest pairs by its records' gt: one whose records have it
            g = manifest("flat", pred, d / "pairs.jsonl", role="backlit")["files"]["manifest"]
            lines = Path(g).read_text().splitlines()
            recs = [json.loads(x) for x in lines[1:]]
            for r in recs:
                r["gt"] = next(forms["folder"].glob(f"{Path(r['path']).stem}.*")).as_posix()
            Path(g).write_text("\n".join([lines[0], *map(json.dumps, recs)]) + "\n")
        out = tmp_path / str(len(results))
        summary = json.loads(_cli("evaluate", "--pred", p, "--gt", g, "--out", out, "--json", "--no-progress").stdout)
        results.append({k: v for k, v in summary.items() if k != "files"})
    assert results[0]["paired"] == 4 and all(r == results[0] for r in results)
    assert "is one image" in _fails("evaluate", "--pred", pred, "--gt", next(forms["folder"].iterdir()))


def test_synth_backlit_renders_the_same_sets_from_each_form(forms, tmp_path):
    sets = {}
    for k in ("folder", "manifest", "table"):
        _cli("synth-backlit", forms[k], "--out", tmp_path / k, "--no-progress")
        images = {p.relative_to(tmp_path / k).as_posix(): p.read_bytes() for p in (tmp_path / k).rglob("*.png")}
        sets[k] = (images, (tmp_path / k / "manifest.jsonl").read_text())
    assert len(sets["folder"][0]) == 8 and sets["folder"] == sets["manifest"] == sets["table"]
    (tmp_path / "afile").write_text("keep me")
    assert "existing file" in _fails("synth-backlit", forms["folder"], "--out", tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "keep me"


def test_a_wrong_form_gets_one_line(forms, tmp_path):
    image = next(forms["folder"].iterdir())
    line = _fails("train", "--out", tmp_path / "t", "--backlit", image, *TRAIN)
    assert "is one image" in line and f"pass the folder that holds it ({forms['folder']})" in line
    assert not (tmp_path / "t").exists()
    line = _fails("enhance", tmp_path / "none.safetensors", tmp_path / "missing", "--out", tmp_path / "o")
    assert "does not exist" in line and "CSV/TSV/parquet table" in line
