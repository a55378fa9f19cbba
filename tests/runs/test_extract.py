import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedlab.datasets.layouts import manifest
from embedlab.datasets.manifest import write_manifest
from embedlab.errors import DeviceError, IncompatibleRunError, ModelLoadError
from embedlab.runs.extract.pipeline import extract
from embedlab.runs.index import load_index
from embedlab.runs.store import Run
from tests.conftest import REPO, write_photo
from tests.helpers.extraction import tiny_extract_argv


def _cli(*args, env=None, timeout=600, kill_after_shards=None):
    e = dict(os.environ, **(env or {}))
    # kill_after_shards=N: the process SIGKILLs itself after writing N shards (tests/helpers/kill_after_shards.py)
    entry = (
        ["-m", "embedlab"]
        if kill_after_shards is None
        else [str(REPO / "tests" / "helpers" / "kill_after_shards.py"), str(kill_after_shards)]
    )
    return subprocess.run(
        [sys.executable, *entry, *args], capture_output=True, text=True, env=e, timeout=timeout, cwd=REPO
    )


def test_run_folder_contract(tiny_run):
    run = Run(tiny_run)
    m = run.manifest
    recorded = "model pretrained weights_sha256 preprocess decode vector_dtype device input_hash open_clip_version"
    for key in recorded.split():
        assert key in m or key in m["model_info"]
    assert m["status"] == "complete" and m["counts"]["embedded"] == len(run.metadata)
    norms = np.linalg.norm(run.vectors, axis=1)
    assert np.allclose(norms, 1, atol=1e-5)
    index = load_index(run)
    assert index.ntotal == len(run.metadata)
    # the index ids are the row ids: the nearest neighbour of a stored vector is its own row
    D, I = index.search(run.vectors[:5], 1)
    assert list(I[:, 0]) == list(run.metadata["row_id"][:5])
    meta = pd.read_parquet(Path(tiny_run) / "metadata.parquet")
    for col in (
        "row_id",
        "path",
        "content_sha1",
        "width",
        "height",
        "format",
        "jpeg_quality",
        "mean_luma",
        "role",
        "split",
        "group",
        "pair_id",
    ):
        assert col in meta.columns
    assert len(list((Path(tiny_run) / "shards").glob("*.done.json"))) == m["shards"]


def _mixed_manifest(tmp_path, n=24):
    folder = tmp_path / "imgs"
    for i in range(n):
        write_photo(
            folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}", size=(40 + i, 36), seed=i, fmt="JPEG" if i % 2 else "PNG"
        )
    out = manifest("flat", folder, tmp_path / "m.jsonl", role="welllit")["files"]["manifest"]
    return out


def test_killed_extraction_resumes_to_the_same_vectors(tmp_path):
    manifest = _mixed_manifest(tmp_path)
    flags = ("--shard-size", "4", "--batch-size", "3", "--workers", "0", "--no-progress")

    def args(out: str) -> list:
        return tiny_extract_argv(str(manifest), str(tmp_path / out), *flags)

    killed = _cli(*args("resumed"), kill_after_shards=2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    partial = Run(tmp_path / "resumed")
    assert partial.manifest["status"] == "running" and len(partial.done_shards()) == 2
    assert not (tmp_path / "resumed" / "index.faiss").exists()
    again = _cli(*args("resumed"))
    assert again.returncode == 0, again.stderr[-2000:]
    fresh = _cli(*args("fresh"))
    assert fresh.returncode == 0
    a, b = Run(tmp_path / "resumed"), Run(tmp_path / "fresh")
    assert list(a.metadata["row_id"]) == list(range(24)) == list(b.metadata["row_id"])
    assert np.array_equal(a.vectors, b.vectors)  # bitwise, row for row
    assert load_index(a).ntotal == len(a.metadata) == 24
    assert a.manifest["counts"]["this_call"]["embedded"] == 16  # only the 4 missing shards were done again


def test_other_model_is_refused_unless_overwrite(tmp_path, tiny_run, demo_manifest):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(tiny_run, target)
    config = dict(device="cpu", workers=0, shard_size=16, decode="torchvision", progress=False)
    with pytest.raises(IncompatibleRunError, match="different configuration"):
        extract(demo_manifest, "embedlab-tiny", "none", target, **config)
    summary = extract(demo_manifest, "embedlab-tiny", "none", target, overwrite=True, **config)
    run = Run(target)
    assert run.manifest["decode"] == "torchvision" and "decode_jpeg" in run.manifest["preprocess"]
    assert summary["embedded"] == len(Run(tiny_run).metadata)
    # a different decode path gives close but different vectors: it is a different preprocessing
    cos = np.sum(run.vectors * Run(tiny_run).vectors, axis=1)
    assert cos.min() > 0.9


def _broken_folder(root: Path) -> dict:
    """One file of every awkward kind; returns name -> expected outcome ('ok' or an error reason)."""
    from PIL import Image

    root.mkdir(parents=True)
    exp = {}
    rng = np.random.default_rng(0)
    rgb = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(root / "good.jpg", quality=75)
    exp["good.jpg"] = "ok"
    data = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    exp["truncated.jpg"] = "truncated-or-corrupt"
    (root / "zero.png").write_bytes(b"")
    exp["zero.png"] = "zero-byte-file"
    (root / "notes.png").write_text("this is not an image")
    exp["notes.png"] = "not-an-image"
    Image.fromarray(rgb).save(root / "icon.ico")
    exp["icon.ico"] = "unsupported-format"
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg")
    exp["cmyk.jpg"] = "ok"
    Image.fromarray((rng.random((20, 20)) * 65535).astype(np.uint16)).save(root / "sixteen.png")
    exp["sixteen.png"] = "ok"
    pal = Image.fromarray(rgb).convert("P")
    pal.info["transparency"] = 0
    pal.save(root / "palette.png", transparency=0)
    exp["palette.png"] = "ok"
    Image.fromarray(np.dstack([rgb, np.full((30, 40), 128, np.uint8)])).save(root / "rgba.png")
    exp["rgba.png"] = "ok"
    Image.fromarray(rgb[..., 0]).save(root / "grey.png")
    exp["grey.png"] = "ok"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(root / "rotated.jpg", exif=exif)
    exp["rotated.jpg"] = "ok"
    frames = [Image.fromarray(np.full((16, 16, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    exp["anim.gif"] = "ok"
    frames[0].save(root / "pages.tiff", save_all=True, append_images=frames[1:])
    exp["pages.tiff"] = "ok"
    Image.new("L", (3000, 3000)).save(root / "bomb.png")
    exp["bomb.png"] = "decompression-bomb"
    os.symlink(root / "gone.png", root / "dangling.png")
    exp["dangling.png"] = "broken-symlink"
    name = os.fsdecode(b"caf\xe9.png")
    Image.fromarray(rgb).save(os.path.join(str(root), name), format="PNG")
    exp[name] = "ok"
    return exp


def test_every_kind_of_broken_image_is_embedded_or_listed(tmp_path):
    folder = tmp_path / "broken"
    expected = _broken_folder(folder)
    # flat layout lists image extensions only; include all files explicitly
    records = [{"path": name, "role": "welllit"} for name in sorted(expected)]
    man_path = write_manifest(tmp_path / "broken.jsonl", records, {"root": "broken"})
    summary = extract(
        man_path,
        "embedlab-tiny",
        "none",
        tmp_path / "run",
        device="cpu",
        workers=0,
        max_pixels=4_000_000,
        progress=False,
    )
    run = Run(tmp_path / "run")
    errors = run.errors()
    got = {os.fsdecode(os.fsencode(p)) for p in run.metadata["path"]}
    reasons = dict(zip(errors["path"].map(lambda p: Path(p).name), errors["reason"]))
    for name, outcome in expected.items():
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        if outcome == "ok":
            assert shown in got, name
        else:
            assert reasons.get(shown) == outcome, (name, reasons)
    assert summary["skipped"] == sum(v != "ok" for v in expected.values())
    assert summary["embedded"] == sum(v == "ok" for v in expected.values())
    meta = run.metadata.set_index("path")
    assert (meta.loc["rotated.jpg", "width"], meta.loc["rotated.jpg", "height"]) == (30, 40)  # EXIF rotation applied
    assert "first of 2 frames" in meta.loc["anim.gif", "notes"]
    assert 60 <= meta.loc["good.jpg", "jpeg_quality"] <= 90
    assert (tmp_path / "run" / "errors.csv").read_text().count("\n") == summary["skipped"] + 1


def test_checkpoint_file_path_and_device_errors(tmp_path, tiny_model):
    import torch

    from embedlab import models

    torch.manual_seed(1)
    other = models.load_model("embedlab-tiny", "none", "cpu", seed=1)
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": other.model.state_dict()}, ckpt)
    lm = models.load_model("embedlab-tiny", str(ckpt), "cpu")
    from embedlab._io import sha256_file

    assert lm.info["pretrained_kind"] == "file" and lm.info["weights_sha256"] == sha256_file(ckpt)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(lm.model.encode_image(x), other.model.encode_image(x))
    assert not torch.allclose(lm.model.encode_image(x), tiny_model.model.encode_image(x))
    with pytest.raises(ModelLoadError, match="'pretrained' checkpoint file .* was not found"):
        models.load_model("embedlab-tiny", str(tmp_path / "nope.pt"))
    with pytest.raises(ModelLoadError, match="Unknown pretrained tag 'laion9' for ViT-B-32. Available: "):
        models.load_model("ViT-B-32", "laion9")
    with pytest.raises(ModelLoadError, match="Unknown model 'vitb32'"):
        models.load_model("vitb32", "none")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            models.resolve_device("cuda")
        r = _cli(*tiny_extract_argv("data_manifests/demo.jsonl", str(tmp_path / "r"), device="cuda"))
        assert r.returncode == 1 and "no CUDA GPU" in r.stderr


def test_unfetchable_weights_fail_fast_with_help(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # a closed local port
    env["EMBEDLAB_CACHE"] = str(tmp_path / "cache")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import embedlab.models, open_clip, faiss"], env=env, cwd=REPO)
    import_time = time.perf_counter() - start
    # a guard against the hang, not a timing: an unguarded hub lookup waits ~46 s beyond the imports
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedlab",
            "extract",
            "-m",
            "data_manifests/demo.jsonl",
            "--model",
            "ViT-B-32",
            "--pretrained",
            "openai",
            "--out",
            str(tmp_path / "r"),
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=import_time + 30,
    )
    assert r.returncode == 1
    assert "unreachable" in r.stderr and "'--pretrained' (/path/to" in r.stderr


def test_search_exact_and_approximate(tiny_run):
    from embedlab.runs.search import search

    table = search(tiny_run, text="a backlit photo", k=5, device="cpu")["table"]
    assert len(table) == 5 and list(table["rank"]) == [1, 2, 3, 4, 5]
    assert np.all(np.diff(table["score"].to_numpy()) <= 1e-7)
    img = Run(tiny_run).metadata["file"].iloc[3]
    table = search(tiny_run, image=img, k=1, device="cpu")["table"]
    assert table["row_id"].iloc[0] == Run(tiny_run).metadata["row_id"].iloc[3] and table["score"].iloc[0] > 0.999
    info = search(tiny_run, text="a cat", k=5, index="hnsw", device="cpu")
    assert "recall_at_k" in info and 0 <= info["recall_at_k"] <= 1


def test_cli_version_help_and_usage_errors():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("embedlab ")
    r = _cli("extract", "--help")
    assert r.returncode == 0 and "--pretrained" in r.stdout and "--shard-size" in r.stdout
    r = _cli("extract", "--nonsense")
    assert r.returncode == 2
