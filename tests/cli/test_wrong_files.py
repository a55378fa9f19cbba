"""Wrong files given to the CLI: each is refused in one line on stderr (exit 1 or 2, no traceback) that names the
file, where it is not UTF-8 the line and byte offset, and what was expected (`embedlab._io.read_text`)."""

import json

import numpy as np
import pytest

from tests.conftest import write_photo
from tests.helpers.extraction import quiet_cli as _cli
from tests.helpers.extraction import tiny_extract_argv


def _one_line(r) -> str:
    assert r.returncode in (1, 2), (r.returncode, r.stdout[-2000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def _extract(manifest, out):
    return _cli(*tiny_extract_argv(manifest, out, "--workers", "0", "--no-progress"))


def test_a_jpeg_as_manifest(tmp_path):
    jpg = write_photo(tmp_path / "photo.jpg", fmt="JPEG")
    line = _one_line(_extract(jpg, tmp_path / "run"))
    assert str(jpg) in line and "image" in line, line  # told by its suffix (datasets.inputs) or its bytes
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_a_npy_as_manifest(tmp_path):
    npy = tmp_path / "vectors.npy"
    np.save(npy, np.zeros((3, 4), np.float32))
    line = _one_line(_extract(npy, tmp_path / "run"))
    assert str(npy) in line and ("NumPy array" in line or "vectors" in line), line


@pytest.mark.parametrize(
    "kind, write",
    [
        ("a JPEG image", lambda p: write_photo(p, fmt="JPEG")),
        ("a PNG image", lambda p: write_photo(p, fmt="PNG")),
        ("a NumPy array (.npy)", lambda p: np.save(open(p, "wb"), np.zeros(3))),
        ("a gzip-compressed file (decompress it first)", lambda p: p.write_bytes(__import__("gzip").compress(b"{}"))),
        ("a Parquet table", lambda p: __import__("pandas").DataFrame({"a": [1]}).to_parquet(p)),
        ("a zip archive (.zip, .npz, ...)", lambda p: np.savez(open(p, "wb"), a=np.zeros(2))),
    ],
)
def test_a_binary_file_named_like_a_manifest_is_told_by_its_bytes(tmp_path, kind, write):
    man = tmp_path / "data.jsonl"  # the suffix says manifest, the content does not
    write(man)
    line = _one_line(_extract(man, tmp_path / "run"))
    assert f"'--manifest' takes a data manifest (.jsonl: one JSON record per line); {man} is {kind}." in line, line


def test_a_manifest_line_with_a_latin1_byte(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        write_photo(tmp_path / name, fmt="JPEG")
    first = json.dumps({"embedlab_manifest": 1, "root": str(tmp_path)}) + "\n"
    second = b'{"path": "a.jpg", "role": "welllit"}\n'
    third = '{"path": "b.jpg", "role": "welllit", "caption": "caf\u00e9"}\n'.encode("latin-1")
    man = tmp_path / "m.jsonl"
    man.write_bytes(first.encode() + second + third)
    offset = len(first.encode()) + len(second) + third.index(b"\xe9")
    line = _one_line(_extract(man, tmp_path / "run"))
    assert f"{man} is not UTF-8: line 3, byte offset {offset} holds 0xe9" in line, line
    assert "'--manifest' takes a data manifest" in line and "iconv" in line


def test_a_latin1_table_of_paths(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        write_photo(tmp_path / name, fmt="JPEG")
    table = tmp_path / "photos.csv"
    table.write_bytes("path,caption\na.jpg,sky\nb.jpg,caf\u00e9\n".encode("latin-1"))
    line = _one_line(_extract(table, tmp_path / "run"))
    assert "'--manifest' takes a table of image paths (CSV/TSV) in UTF-8" in line, line
    assert f"{table} is not UTF-8: line 3, byte offset 32 holds 0xe9" in line, line


@pytest.fixture(scope="module")
def residual_file(tmp_path_factory, tiny_run):
    from embedlab.analysis.residual import residual

    out = tmp_path_factory.mktemp("res") / "r.npy"
    residual(tiny_run, "backlit", "welllit", out, bootstrap=0, progress=False)
    return out


def test_a_latin1_vocabulary_file(tmp_path, residual_file):
    vocab = tmp_path / "concepts.txt"
    vocab.write_bytes("# concepts\nsky\ncaf\u00e9\n".encode("latin-1"))
    r = _cli(
        "explain-residual", residual_file, "--vocab", vocab, "--out", tmp_path / "rep", "--device", "cpu",
        "--permutations", "0", "--no-progress",
    )  # fmt: skip
    line = _one_line(r)
    assert "'--vocab' takes a vocabulary file" in line and f"{vocab} is not UTF-8: line 3, byte offset 18" in line


def test_a_latin1_residual_sidecar(tmp_path, residual_file):
    import shutil

    npy = tmp_path / "r.npy"
    shutil.copy(residual_file, npy)
    side = json.loads(residual_file.with_suffix(".json").read_text())
    side["note"] = "caf\u00e9"
    npy.with_suffix(".json").write_bytes(json.dumps(side, ensure_ascii=False).encode("latin-1"))
    r = _cli("explain-residual", npy, "--out", tmp_path / "rep", "--device", "cpu", "--permutations", "0")
    line = _one_line(r)
    assert f"{npy.with_suffix('.json')} is not UTF-8: line 1, byte offset" in line, line


# ---------------------------------------------------------------- a residual of another width than the model
def _pair(folder, residual_file, name, vector, drop_dims=False):
    """NAME.npy holding `vector` with a copy of the tiny residual's sidecar (its widths dropped if `drop_dims`)."""
    side = json.loads(residual_file.with_suffix(".json").read_text())
    if drop_dims:
        side.pop("dim")
        side["model"].pop("embed_dim")
    npy = folder / f"{name}.npy"
    np.save(npy, vector.astype(np.float32))
    npy.with_suffix(".json").write_text(json.dumps(side))
    return npy


def _wide(residual_file):
    v = np.load(residual_file)
    return np.concatenate([v, v]) / np.sqrt(2)  # 128-d, a unit vector


def test_train_with_a_guidance_model_of_another_width(tmp_path, residual_file, demo_manifest):
    r = _cli(
        "train", "--out", tmp_path / "t", "--residual", residual_file, "--model", "embedlab-demo", "--pretrained",
        "none", "--backlit", f"{demo_manifest}:role=welllit", "--preset", "cpu-small", "--identity", "pixel",
        "--device", "cpu",
    )  # fmt: skip
    line = _one_line(r)
    assert f"Residual {residual_file} is 64-dimensional (made with embedlab-tiny/none, per " in line, line
    assert "embedlab-demo/none makes 128-dimensional embeddings" in line, line
    assert (
        "pass '--model' embedlab-tiny '--pretrained' none" in line
        and "recreate the residual with embedlab-demo" in line
    )


def test_a_residual_vector_that_does_not_match_its_sidecar(tmp_path, residual_file, demo_manifest):
    wide = _pair(tmp_path, residual_file, "wide", _wide(residual_file))
    r = _cli(
        "train", "--out", tmp_path / "t", "--residual", wide, "--backlit", f"{demo_manifest}:role=welllit",
        "--preset", "cpu-small", "--identity", "pixel", "--device", "cpu",
    )  # fmt: skip
    line = _one_line(r)
    assert f"Residual {wide} is 128-dimensional, but {wide.with_suffix('.json')} says it was made with " in line
    assert "embedlab-tiny/none, which makes 64-dimensional embeddings" in line and "Fix: " in line, line


def test_probe_and_evaluate_check_the_width_of_the_sidecars_model(tmp_path, residual_file):
    nodim = _pair(tmp_path, residual_file, "nodim", _wide(residual_file), drop_dims=True)
    pred = tmp_path / "pred"
    write_photo(pred / "a.png", fmt="PNG")
    for argv in (
        ["probe-residual", nodim, pred, "--out", tmp_path / "p", "--device", "cpu", "--no-progress"],
        ["evaluate", "--pred", pred, "--residual", nodim, "--device", "cpu", "--no-progress"],
    ):
        line = _one_line(_cli(*argv))
        assert f"Residual {nodim} is 128-dimensional, but {nodim.with_suffix('.json')} says it was made with " in line
        assert "embedlab-tiny/none, which makes 64-dimensional embeddings" in line, (argv[0], line)
