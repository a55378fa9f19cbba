"""Errors before work: output collisions and inputs are refused before any run is read or any model loads."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from embedlab.analysis.residual import residual
from embedlab.errors import ConfigError, IncompatibleRunError
from embedlab.runs.importer import import_run
from tests.conftest import REPO, write_photo


def _imported(tmp_path, name, seed):
    v = np.random.default_rng(seed).standard_normal((4, 64))
    np.save(tmp_path / f"{name}.npy", (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32))
    paths = [str(write_photo(tmp_path / name / f"{i}.png", seed=seed + i)) for i in range(4)]
    pd.DataFrame({"path": paths}).to_csv(tmp_path / f"{name}.csv", index=False)
    import_run(
        tmp_path / f"{name}.npy", tmp_path / f"run_{name}", model="embedlab-tiny:none", paths=tmp_path / f"{name}.csv"
    )
    return tmp_path / f"run_{name}"


def test_residual_out_over_a_file_it_did_not_write(tmp_path):
    ra, rb = _imported(tmp_path, "a", 0), _imported(tmp_path, "b", 10)
    target = tmp_path / "keep.npy"
    np.save(target, np.arange(3.0))
    with pytest.raises(ConfigError, match="exists and is not a residual embedlab wrote"):
        residual(ra, "a", "b", target, to_run=rb, bootstrap=0, progress=False)
    np.testing.assert_array_equal(np.load(target), np.arange(3.0))  # left untouched
    r = subprocess.run(
        [sys.executable, "-m", "embedlab", "residual", str(ra), "--from", "a", "--to", "b", "--to-run", str(rb)]
        + ["--out", str(target), "--bootstrap", "0", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--overwrite" in r.stderr
    res = residual(ra, "a", "b", target, to_run=rb, bootstrap=0, progress=False, overwrite=True)
    assert res.vector.shape == (64,)
    residual(ra, "a", "b", target, to_run=rb, bootstrap=0, progress=False)  # its own residual: replaced


def test_extract_refuses_another_runs_folder_before_the_model_loads(tmp_path, monkeypatch):
    from embedlab import models
    from embedlab.runs.extract.pipeline import extract

    run = _imported(tmp_path, "a", 0)  # a run of other inputs (and another "model": imported)
    folder = tmp_path / "imgs"
    write_photo(folder / "x.png")

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", no_model)
    with pytest.raises(IncompatibleRunError, match="different configuration.*input_hash"):
        extract(folder, "embedlab-tiny", "none", run, device="cpu", workers=0, progress=False)


def test_a_folder_where_the_residual_file_goes(tmp_path):
    from embedlab.analysis.residual_file import load_residual

    ra, rb = _imported(tmp_path, "a", 0), _imported(tmp_path, "b", 10)
    with pytest.raises(ConfigError, match=r"is a folder; a residual is a .npy file.*embedlab residual RUN"):
        load_residual(tmp_path / "a")
    residual(ra, "a", "b", tmp_path / "a" / "r.npy", to_run=rb, bootstrap=0, progress=False)
    with pytest.raises(ConfigError, match=r"Fix: pass .*/a/r.npy"):
        load_residual(tmp_path / "a")
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(ConfigError, match="is a folder; a residual is written to a .npy file"):
        residual(ra, "a", "b", tmp_path / "dir.npy", to_run=rb)
