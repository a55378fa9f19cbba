"""`embedlab compare A B`: from two folders of images to a page that answers how they differ."""

import re

import numpy as np
import pytest
from markupsafe import escape
from PIL import Image

from embedlab.demos.compare import compare
from embedlab.errors import ConfigError, IncompatibleRunError, ManifestError


def _folder(path, base, n=5):
    path.mkdir(parents=True)
    for i in range(n):
        arr = (np.random.default_rng(i).random((30, 34, 3)) * 80 + base - 40).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(path / f"{i}.png")
    return path


QUICK = dict(device="cpu", workers=0, bootstrap=0, map_methods=("pca",), progress=False)  # small work on a CPU


def _run(a, b, out, vocab, **kw):
    return compare(
        a, b, out, model="embedlab-tiny", pretrained="none", vocab=str(vocab), permutations=20, **QUICK, **kw
    )


def test_compare_two_folders_writes_its_page(tmp_path):
    a, b = _folder(tmp_path / "day", 200), _folder(tmp_path / "night", 40)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("dark\nbright\nnight\nday\n")
    out = tmp_path / "cmp"
    result = _run(a, b, out, vocab)
    page = (out / "index.html").read_text(encoding="utf-8")
    first = re.search(r"<p[^>]*>(.*?)</p>", page, re.S).group(1)
    assert first.startswith("Compared with A (day), B (night) shows more ") and "Based on 5 images of A" in first
    assert first == str(escape(result["answer"]))  # the page opens with the answer
    for f in ("residual.npy", "residual.json", "report/report.html", "map.html", "runs/a/manifest.json"):
        assert (out / f).exists(), f
    assert [s["count"] for s in result["sets"]] == [5, 5]
    assert set(result.to_pandas()["concept"]) <= {"dark", "bright", "night", "day"}
    # rerunning resumes: nothing is embedded again (the shards' done-markers stay as they were)
    done = sorted((out / "runs" / "a" / "shards").glob("*.done.json"))
    stamps = [p.stat().st_mtime_ns for p in done]
    _run(a, b, out, vocab)
    assert [p.stat().st_mtime_ns for p in done] == stamps
    # a run folder is accepted as A (its model is used)
    again = compare(out / "runs" / "a", b, tmp_path / "cmp2", vocab=str(vocab), permutations=0, **QUICK)
    assert again["sets"][0]["form"] == "run" and (tmp_path / "cmp2" / "index.html").exists()


def test_compare_checks_before_any_work(tmp_path, monkeypatch):
    from embedlab import models

    def no_model(*a, **k):  # every refusal below must come before a model loads
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", no_model)
    a = _folder(tmp_path / "day", 200, n=2)
    out = tmp_path / "cmp"
    with pytest.raises(ManifestError, match="does not exist"):
        compare(a, tmp_path / "nope", out, model="embedlab-tiny", pretrained="none")
    table = tmp_path / "t.csv"
    table.write_text("file\nday/0.png\n")
    with pytest.raises(ManifestError, match="no column 'path'"):
        compare(a, table, out, model="embedlab-tiny", pretrained="none")
    with pytest.raises(ConfigError, match="No image of B .* matches 'role=zzz'"):
        compare(a, f"{a}:role=zzz", out, model="embedlab-tiny", pretrained="none")
    with pytest.raises(ConfigError, match="a model must embed them"):
        compare(a, a, out)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="existing file"):
        compare(a, a, tmp_path / "file", model="embedlab-tiny", pretrained="none")
    out.mkdir()
    (out / "residual.npy").write_bytes(b"not ours")
    with pytest.raises(ConfigError, match="not a residual embedlab wrote"):
        compare(a, a, out, model="embedlab-tiny", pretrained="none")
    assert not (out / "runs").exists()
    (out / "residual.npy").unlink()
    # DIR/runs/a made from other inputs: refused before the model loads, unless overwrite
    from embedlab.runs.importer import import_run

    np.save(tmp_path / "v.npy", np.eye(2, 64, dtype=np.float32))
    (tmp_path / "p.csv").write_text(f"path\n{a / '0.png'}\n{a / '1.png'}\n")
    import_run(tmp_path / "v.npy", out / "runs" / "a", model="embedlab-tiny:none", paths=tmp_path / "p.csv")
    with pytest.raises(IncompatibleRunError, match="different configuration"):
        compare(a, a, out, model="embedlab-tiny", pretrained="none")
