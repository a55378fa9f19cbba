"""`embedlab runs import`: embeddings made elsewhere become an ordinary run."""

import numpy as np
import pandas as pd
import pytest

from embedlab.errors import ConfigError, IncompatibleRunError
from embedlab.runs.importer import import_run
from embedlab.runs.store import Run
from tests.conftest import write_photo
from tests.helpers.extraction import run_cli

DIM = 64  # embedlab-tiny


def _unit(n, seed, dtype=np.float32):
    v = np.random.default_rng(seed).standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(dtype)


def _clip_retrieval(root, sizes=(3, 2), seed=0, dtype=np.float32):
    """A clip-retrieval output folder: img_emb/img_emb_N.npy with metadata/metadata_N.parquet (image_path)."""
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    arrays, k0 = [], 0
    for k, n in enumerate(sizes):
        v = _unit(n, seed + k, dtype)
        np.save(root / "img_emb" / f"img_emb_{k}.npy", v)
        paths = [str(write_photo(root / "images" / f"{k0 + i}.png", seed=k0 + i)) for i in range(n)]
        pd.DataFrame({"image_path": paths, "caption": [f"c{k0 + i}" for i in range(n)]}).to_parquet(
            root / "metadata" / f"metadata_{k}.parquet"
        )
        arrays.append(v)
        k0 += n
    return np.concatenate(arrays)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_clip_retrieval_folder_bitwise(tmp_path, dtype):
    want = _clip_retrieval(tmp_path / "cr", dtype=dtype)
    summary = import_run(tmp_path / "cr", tmp_path / "run", model="embedlab-tiny:none", shard_size=2)
    run = Run(tmp_path / "run")
    got = np.concatenate([X for _, X in run.iter_vectors(dtype=None)])
    assert got.dtype == dtype and got.tobytes() == want.tobytes()  # bitwise
    assert summary["embedded"] == 5 and summary["skipped"] == 0 and not summary["imported"]["renormalised"]
    assert list(run.metadata["caption"]) == [f"c{i}" for i in range(5)]
    m = run.manifest
    assert m["status"] == "complete" and m["model"] == "embedlab-tiny" and m["pretrained"] == "none"
    assert m["imported"]["source"] == str((tmp_path / "cr").resolve())
    assert len(m["imported"]["files"]) == 2


def test_npy_with_table_rows_without_vector_and_renormalised(tmp_path):
    v = _unit(4, 1).astype(np.float64) * 3.0  # not unit length
    v[2] = np.nan  # a row without a vector
    np.save(tmp_path / "vecs.npy", v)
    paths = [str(write_photo(tmp_path / "im" / f"{i}.png", seed=i)) for i in range(4)]
    table = pd.DataFrame({"file": paths, "label": list("abcd"), "role": list("xxyy"), "width": [1, 2, 3, 4]})
    table.to_csv(tmp_path / "paths.csv", index=False)
    summary = import_run(tmp_path / "vecs.npy", tmp_path / "run", model="embedlab-tiny", paths=tmp_path / "paths.csv")
    run = Run(tmp_path / "run")
    assert summary["embedded"] == 3 and summary["skipped"] == 1
    assert summary["imported"]["renormalised"] and summary["imported"]["rows_without_vector"] == 1
    errors = pd.read_csv(tmp_path / "run" / "errors.csv")
    assert list(errors["reason"]) == ["no-vector"] and errors["path"][0] == paths[2]
    np.testing.assert_allclose(np.linalg.norm(run.vectors, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(run.vectors[1], v[1] / 3.0, atol=1e-6)
    assert list(run.metadata["label"]) == ["a", "b", "d"]
    assert list(run.metadata["role"]) == ["x", "x", "y"]  # the table's own role column
    assert list(run.metadata["meta_width"]) == [1, 2, 4]  # a name the run's metadata has: kept beside it


def test_bad_inputs_one_line_each(tmp_path):
    _clip_retrieval(tmp_path / "cr")
    with pytest.raises(IncompatibleRunError, match="holds 64-dimensional vectors, but ViT-B-32 makes 512"):
        import_run(tmp_path / "cr", tmp_path / "r1", model="ViT-B-32:openai")
    with pytest.raises(ConfigError, match="has no column 'nope'"):
        import_run(tmp_path / "cr", tmp_path / "r2", model="embedlab-tiny", path_column="nope")
    np.save(tmp_path / "v.npy", _unit(3, 0))
    pd.DataFrame({"path": ["a.png", "b.png"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ConfigError, match="holds 3 vectors but .*t.csv has 2 rows"):
        import_run(tmp_path / "v.npy", tmp_path / "r3", model="embedlab-tiny", paths=tmp_path / "t.csv")
    pd.DataFrame({"path": ["a.png", "b.png", "c.png"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ConfigError, match=r"3 of 3 image paths in .*t.csv are not files \(first: row 1, 'a.png'\)"):
        import_run(tmp_path / "v.npy", tmp_path / "r4", model="embedlab-tiny", paths=tmp_path / "t.csv")
    with pytest.raises(ConfigError, match="add a 'paths' table"):
        import_run(tmp_path / "v.npy", tmp_path / "r5", model="embedlab-tiny")
    for r in ("r1", "r2", "r3", "r4", "r5"):
        assert not (tmp_path / r).exists()  # checked before anything was written
    summary = import_run(
        tmp_path / "v.npy", tmp_path / "r6", model="embedlab-tiny", paths=tmp_path / "t.csv", allow_missing_images=True
    )
    assert summary["embedded"] == 3 and summary["imported"]["missing_images"] == 3
    # the CLI: one line, exit 1
    r = run_cli("runs", "import", tmp_path / "cr", "--out", tmp_path / "r7", "--model", "ViT-B-32:openai")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "512-dimensional" in r.stderr
    r = run_cli("runs", "import", tmp_path / "v.npy", "--out", tmp_path / "r8", "--model", "embedlab-tiny")
    assert r.returncode == 1 and "Fix: add a '--paths' table" in r.stderr  # the parameter shown as its flag


def test_imported_runs_give_a_residual(tmp_path):
    from embedlab.analysis.residual import residual

    _clip_retrieval(tmp_path / "a", seed=0)
    _clip_retrieval(tmp_path / "b", seed=10)
    import_run(tmp_path / "a", tmp_path / "ra", model="embedlab-tiny:none")
    import_run(tmp_path / "b", tmp_path / "rb", model="embedlab-tiny:none")
    res = residual(tmp_path / "ra", "a", "b", tmp_path / "res.npy", to_run=tmp_path / "rb", bootstrap=0, progress=False)
    assert res.vector.shape == (DIM,) and res.info["from"]["count"] == 5
