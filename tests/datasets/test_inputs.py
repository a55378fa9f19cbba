"""Every input form of `embedlab.datasets.inputs` gives the same vectors as a manifest of the same images, and its
metadata columns arrive in the run."""

import io
import json
import os
import tarfile

import numpy as np
import pandas as pd
import pytest

from embedlab.datasets.inputs import RESERVED_COLUMNS, as_manifest, input_form
from embedlab.datasets.manifest import write_manifest
from embedlab.errors import ConfigError, ManifestError
from embedlab.runs.extract.pipeline import extract
from embedlab.runs.extract.rows import META_COLUMNS, WDS_COLUMNS
from embedlab.runs.store import Run
from tests.conftest import write_photo

NAMES = ["a.png", "b.jpg", "sub/c.png", "d.png"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs") / "imgs"
    for i, name in enumerate(NAMES):
        write_photo(root / name, size=(30 + 3 * i, 28), seed=i, fmt="JPEG" if name.endswith("jpg") else "PNG")
    return root


def _embed(source, out, model, **kw):
    extract(source, "embedlab-tiny", "none", out, device="cpu", workers=0, progress=False, loaded_model=model, **kw)
    return Run(out)


def _by_content(run: Run) -> dict:
    meta = run.metadata
    return dict(zip(meta["content_sha1"], run.vectors))


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory, tiny_model):
    """The vectors of a plain manifest of the images (absolute paths), by content sha1."""
    tmp = tmp_path_factory.mktemp("ref")
    man = write_manifest(tmp / "m.jsonl", [{"path": str(images / n), "role": "x"} for n in NAMES])
    return _by_content(_embed(man, tmp / "run", tiny_model))


def _same_vectors(run: Run, reference: dict):
    got = _by_content(run)
    assert sorted(got) == sorted(reference)
    for k, v in got.items():
        np.testing.assert_array_equal(v, reference[k])


def test_folder(images, reference, tmp_path, tiny_model):
    assert input_form(images) == "folder"
    run = _embed(images, tmp_path / "run", tiny_model)
    _same_vectors(run, reference)
    meta = run.metadata.set_index("path")
    assert set(meta["role"]) == {"imgs"}  # the folder's name
    assert meta.loc["sub/c.png", "folder"] == "sub" and meta.loc["a.png", "folder"] == "."
    assert run.manifest["input"]["form"] == "folder" and run.manifest["input"]["source"] == str(images.resolve())


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_with_metadata_columns(images, reference, tmp_path, tiny_model, suffix):
    df = pd.DataFrame(
        {
            "file_name": [f"imgs/{n}" for n in NAMES],
            "label": ["cat", "dog", "cat", "bird"],
            "score": [0.5, 1.5, 2.5, 3.5],
            "width": [1, 2, 3, 4],  # a name the run's metadata already has: arrives as meta_width
            "role": ["p", "q", "p", "q"],
        }
    )
    table = images.parent / f"table{suffix}"
    df.to_csv(table, index=False) if suffix == ".csv" else df.to_parquet(table, index=False)
    with pytest.raises(ManifestError, match=r"no column 'path'.*'path_column'"):
        as_manifest(table)
    run = _embed(table, tmp_path / "run", tiny_model, path_column="file_name")
    _same_vectors(run, reference)
    meta = run.metadata.set_index("path")
    assert list(meta.loc[[f"imgs/{n}" for n in NAMES], "label"]) == ["cat", "dog", "cat", "bird"]
    assert list(meta.loc[[f"imgs/{n}" for n in NAMES], "score"]) == [0.5, 1.5, 2.5, 3.5]
    assert list(meta.loc[[f"imgs/{n}" for n in NAMES], "meta_width"]) == [1, 2, 3, 4]
    assert list(meta.loc[[f"imgs/{n}" for n in NAMES], "role"]) == ["p", "q", "p", "q"]
    assert set(run.read_metadata(["label"])["label"].astype(str)) == {"cat", "dog", "bird"}
    assert run.select("label=cat").sum() == 2  # a selector (the slice audit's) reads the new column


def test_table_errors(images, tmp_path):
    table = images.parent / "bad.csv"
    pd.DataFrame({"path": ["imgs/a.png", "imgs/nope.png"]}).to_csv(table, index=False)
    with pytest.raises(ManifestError, match=r"1 of 2 paths in column 'path'.*row 2, 'imgs/nope.png'"):
        as_manifest(table)
    pd.DataFrame({"path": ["imgs/a.png", "imgs/a.png"]}).to_csv(table, index=False)
    with pytest.raises(ManifestError, match="listed twice"):
        as_manifest(table)


def test_hf_dataset_on_disk_and_parquet(images, reference, tmp_path, tiny_model, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr("embedlab.datasets.inputs.HF_BATCH", 3)  # several batches: rows numbered across them
    ds = datasets.Dataset.from_dict(
        {"image": [str(images / n) for n in NAMES], "label": [0, 1, 0, 2], "note": ["x", "y", "z", "w"]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "label": datasets.ClassLabel(names=["cat", "dog", "bird"]),
                "note": datasets.Value("string"),
            }
        ),
    )
    ds = ds.map(lambda r: r)  # embeds the image bytes in the dataset's own files
    saved = tmp_path / "hf"
    ds.save_to_disk(str(saved))
    assert input_form(saved) == "hf-dataset"
    run = _embed(saved, tmp_path / "run", tiny_model)
    _same_vectors(run, reference)
    meta = run.metadata.sort_values("source_row")
    assert list(meta["source_row"]) == [0, 1, 2, 3]
    assert list(meta["label"]) == ["cat", "dog", "cat", "bird"]  # class labels by name
    assert list(meta["note"]) == ["x", "y", "z", "w"]
    assert run.manifest["input"]["form"] == "hf-dataset"
    with pytest.raises(ManifestError, match=r"has no column 'nope' \(columns: image, label, note\).*'image_column'"):
        as_manifest(saved, image_column="nope")

    pq = tmp_path / "train-00000-of-00001.parquet"
    ds.to_parquet(str(pq))
    assert input_form(pq) == "hf-dataset"
    run2 = _embed(pq, tmp_path / "run2", tiny_model)
    _same_vectors(run2, reference)
    assert set(run2.metadata["split"]) == {"train"}


def test_webdataset(images, reference, tmp_path, tiny_model):
    tar_path = tmp_path / "shards" / "00000.tar"
    tar_path.parent.mkdir()
    with tarfile.open(tar_path, "w") as tf:
        for i, n in enumerate(NAMES):
            key = f"{i:04d}"
            for member, data in (
                (f"{key}.{n.rsplit('.', 1)[1]}", (images / n).read_bytes()),
                (f"{key}.json", json.dumps({"caption": f"image {i}", "key": key}).encode()),
            ):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    assert input_form(tar_path.parent) == "webdataset"
    run = _embed(tar_path.parent, tmp_path / "run", tiny_model)
    _same_vectors(run, reference)
    assert sorted(run.metadata["caption"]) == [f"image {i}" for i in range(4)]
    assert set(run.metadata["role"]) == {"shards"}  # the folder's name
    glob = str(tar_path.parent / "*.tar")
    assert input_form(glob) == "webdataset" and as_manifest(glob).count == 4


def test_wrong_forms_name_the_expected_form(images, tmp_path):
    with pytest.raises(ManifestError, match=r"is one image; an input is a collection"):
        as_manifest(images / "a.png")
    with pytest.raises(ManifestError, match="does not exist"):
        as_manifest(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match="holds no image"):
        as_manifest(empty)
    # a folder of images where a run folder is expected, and a file where one is expected
    with pytest.raises(ConfigError, match=r"not an embedlab run folder.*embedlab extract -m"):
        Run(images)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"is a file, not a run folder.*embedlab extract -m"):
        Run(tmp_path / "notes.txt")


def test_reserved_columns_cover_the_run_metadata():
    assert set(META_COLUMNS) | {"bytes"} | set(WDS_COLUMNS) <= set(RESERVED_COLUMNS) | {
        "role",
        "split",
        "group",
        "pair_id",
        "gt",
        "source",
    }


def test_probe_reads_a_table_of_paths(images):
    from embedlab.analysis.probe import _image_files

    table = images.parent / "probe.csv"
    pd.DataFrame({"path": [f"imgs/{n}" for n in NAMES], "role": ["p", "q", "p", "q"]}).to_csv(table, index=False)
    assert _image_files([str(table)], "backlit") == [str(images / n) for n in NAMES]  # the default selector: unused
    assert _image_files([f"{table}:role=q"], "backlit") == [str(images / n) for n in ("b.jpg", "d.png")]


def test_wrong_kinds_of_file_where_a_run_or_vocabulary_goes(images, tmp_path):
    from embedlab.analysis.vocab import resolve_vocab

    np.save(tmp_path / "v.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(ConfigError, match=r"v.npy is a file.*`embedlab runs import .*v.npy --paths TABLE"):
        Run(tmp_path / "v.npy")
    with pytest.raises(ConfigError, match=r"a.png is an image, not a run folder.*`embedlab extract -m .*imgs"):
        Run(images / "a.png")
    with pytest.raises(ConfigError, match="is a folder; a vocabulary is a text file"):
        resolve_vocab(str(images), lm=type("LM", (), {"info": {"model": "x", "pretrained": "y"}})())


def test_hf_dataset_dict_keeps_its_splits(images, tmp_path):
    datasets = pytest.importorskip("datasets")
    from embedlab.datasets.manifest import read_manifest

    def part(names):
        ds = datasets.Dataset.from_dict({"img": [str(images / n) for n in names]})
        return ds.cast_column("img", datasets.Image()).map(lambda r: r)

    datasets.DatasetDict({"train": part(NAMES[:3]), "test": part(NAMES[3:])}).save_to_disk(str(tmp_path / "dd"))
    man = read_manifest(as_manifest(tmp_path / "dd").manifest)
    assert [(e.split, e.meta["source_row"]) for e in man.entries] == [
        ("train", 0),
        ("train", 1),
        ("train", 2),
        ("test", 0),
    ]
    assert all(os.path.isfile(e.path) for e in man.entries) and {e.role for e in man.entries} == {"dd"}


def test_cli_extract_takes_a_table_and_names_the_flag(images, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    table = images.parent / "cli.csv"
    pd.DataFrame({"file": [f"imgs/{n}" for n in NAMES]}).to_csv(table, index=False)
    args = [sys.executable, "-m", "embedlab", "-q", "extract", "-m", str(table), "--model", "embedlab-tiny"]
    args += [
        "--pretrained",
        "none",
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
    ]
    r = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "has no column 'path' (columns: file). Fix: name the column of image paths with '--path-column'" in r.stderr
    r = subprocess.run(args + ["--path-column", "file"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "4 embedded, 0 skipped" in r.stdout, r.stderr
