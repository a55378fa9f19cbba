"""Extraction at scale: the streaming pipeline's pieces, device decode and its fallbacks, bounded memory for
extreme-aspect images, non-UTF-8 names end to end, write failures that stop the run and resume."""

import io
import json
import os

import numpy as np
import pandas as pd
import pytest

import embedlab.runs.extract.local as local_engine
from embedlab.datasets.layouts import manifest
from embedlab.datasets.manifest import scan_manifest
from embedlab.runs.extract.collector import write_results
from embedlab.runs.extract.dataset import ShardBatches
from embedlab.runs.extract.device import device_preprocess, pixel_chunks, resolve_decode
from embedlab.runs.extract.encoder import BatchEncoder
from embedlab.runs.extract.pipeline import extract
from embedlab.runs.extract.rows import safe_text
from embedlab.runs.store import Run
from tests.conftest import write_photo
from tests.helpers.extraction import TINY
from tests.helpers.extraction import photo_folder as _photos
from tests.helpers.extraction import run_cli as _cli


# ---------------------------------------------------------------- pure pieces of the pipeline
def test_shard_batches_never_straddle_shards_and_chunks_respect_the_budget():
    batches = list(ShardBatches([0, 2], shard_size=5, n_inputs=12, batch_size=3))
    assert batches == [[0, 1, 2], [3, 4], [10, 11]]
    assert len(ShardBatches([0, 2], 5, 12, 3)) == 3
    assert pixel_chunks([4, 4, 4, 10, 1], budget=8) == [[0, 1], [2], [3], [4]]
    assert resolve_decode("auto", "cuda") == "torchvision" and resolve_decode("auto", "cpu") == "pil"
    assert safe_text(os.fsdecode(b"caf\xe9")) == "caf\\xe9" and safe_text("\ud800x") == "\\ud800x"


def test_batched_device_preprocess_equals_the_per_image_path():
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, s, generator=g, dtype=torch.uint8)
        for s in [(3, 40, 60), (3, 40, 60), (1, 50, 30), (3, 40, 60), (3, 33, 90)]
    ]
    mean, std = (0.48, 0.45, 0.40), (0.26, 0.26, 0.27)
    got, luma = device_preprocess(images, 32, mean, std, "cpu", budget=3 * 40 * 60 * 4 * 2)  # forces sub-chunks
    for k, img in enumerate(images):  # reference: one image at a time (the previous code)
        x = img.expand(3, -1, -1).float().unsqueeze(0) / 255.0
        h, w = x.shape[-2:]
        nh, nw = max(32, round(h * 32 / min(h, w))), max(32, round(w * 32 / min(h, w)))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        lum = float((x[0] * torch.tensor([0.2126, 0.7152, 0.0722]).view(3, 1, 1)).sum(0).mean())
        top, left = (nh - 32) // 2, (nw - 32) // 2
        ref = (x[..., top : top + 32, left : left + 32] - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
            1, 3, 1, 1
        )
        assert torch.allclose(got[k : k + 1], ref, atol=1e-5), k
        assert abs(float(luma[k]) - lum) < 1e-5


# ---------------------------------------------------------------- non-UTF-8 names
def test_non_utf8_file_names_survive_flat_manifest_extract_and_every_output(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rgb = (np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(str(folder), os.fsdecode(b"caf\xe9.jpg")), format="JPEG")
    Image.fromarray(rgb[::-1]).save(folder / "plain.png")
    with open(os.path.join(str(folder), os.fsdecode(b"na\xefve.png")), "wb") as fh:
        fh.write(b"not an image")  # a broken file with a non-UTF-8 name: errors.csv
    manifest("flat", folder, tmp_path / "m.jsonl")  # what `embedlab manifest flat` calls
    extract(tmp_path / "m.jsonl", "embedlab-tiny", "none", tmp_path / "run", workers=0, **TINY)  # crashed before
    meta = pd.read_parquet(tmp_path / "run" / "metadata.parquet")
    for col in meta.columns:
        for v in meta[col]:
            if isinstance(v, str):
                v.encode("utf-8")  # strict: raises on any lone surrogate
    assert set(meta["group"]) == {"caf\\xe9", "plain"} and "caf\\xe9.jpg" in set(meta["path"])
    errors = (tmp_path / "run" / "errors.csv").read_bytes().decode("utf-8")
    assert "na\\xefve.png" in errors and "not-an-image" in errors
    man = json.loads((tmp_path / "run" / "manifest.json").read_text(encoding="utf-8"))
    assert man["status"] == "complete" and man["counts"]["embedded"] == 2
    from embedlab.runs.search import search

    table = search(tmp_path / "run", text="a photo", k=2, device="cpu")["table"]
    assert "caf\\xe9.jpg" in set(table["path"])
    json.dumps(table.to_dict(orient="records"), ensure_ascii=False).encode("utf-8")  # JSON output: strict UTF-8


# ---------------------------------------------------------------- bounded memory for extreme aspect ratios
_MEMORY_SCRIPT = r"""
import json, resource, sys
from embedlab.runs.extract.pipeline import extract
normal, strip, out = sys.argv[1:4]
extract(normal, "embedlab-tiny", "none", out + "/warm", device="cpu", workers=0, progress=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = {}
for decode in ("pil", "torchvision"):
    s = extract(
        strip, "embedlab-tiny", "none", out + "/" + decode, device="cpu", workers=0, progress=False, decode=decode
    )
    res[decode] = s["skipped_by_reason"]
print(json.dumps({"base_kb": base, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "skipped": res}))
"""


@pytest.mark.slow
def test_extreme_aspect_images_are_refused_from_the_header_within_a_memory_bound(tmp_path):
    """A 200000x1 PNG and a 65000x2 JPEG: the short-side resize to 224 px would allocate 30 GB and 7 GB (PIL
    uint8); they are recorded as extreme-aspect and the process's peak RSS grows by less than 150 MB."""
    from PIL import Image

    normal = _photos(tmp_path / "normal", 3)
    strips = tmp_path / "strips"
    strips.mkdir()
    Image.new("RGB", (200_000, 1), (200, 10, 10)).save(strips / "wide.png")
    Image.new("RGB", (2, 65_000), (20, 100, 10)).save(strips / "tall.jpg", quality=80)
    write_photo(strips / "ok.jpg", size=(300, 4))  # 75:1, within the default limit of 100:1
    strip_man = manifest("flat", strips, tmp_path / "strips.jsonl")["files"]["manifest"]
    r = _cli(normal, strip_man, tmp_path, code=_MEMORY_SCRIPT)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["skipped"] == {"pil": {"extreme-aspect": 2}, "torchvision": {"extreme-aspect": 2}}
    assert (got["peak_kb"] - got["base_kb"]) / 1024 < 150, got
    err = Run(tmp_path / "pil").errors().set_index("reason")
    assert "200000x1 px" in " ".join(err["detail"]) and "--max-aspect" in " ".join(err["detail"])


# ---------------------------------------------------------------- write failures, decode fallbacks, locks
def _damaged_jpeg(seed=0) -> bytes:
    """A JPEG whose header reads fine but whose scan data stops early (torchvision's decoder raises on it)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((48, 64, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[: data.index(b"\xff\xda") + 20]


def test_a_corrupt_jpeg_in_a_batch_decode_is_recorded_and_the_rest_embedded(tmp_path):
    folder = tmp_path / "imgs"
    man = _photos(folder, 6)
    (folder / "002.jpg").write_bytes(_damaged_jpeg())  # in the middle of the batch-decoded JPEGs
    summary = extract(
        man, "embedlab-tiny", "none", tmp_path / "run", workers=0, decode="torchvision", batch_size=8, **TINY
    )
    assert summary["embedded"] == 5 and summary["skipped"] == 1 and summary["shards_done"] == summary["shards"]
    err = Run(tmp_path / "run").errors()
    assert list(err["path"]) == ["002.jpg"] and err["reason"][0] == "truncated-or-corrupt", err
    meta = Run(tmp_path / "run").metadata.set_index("path")
    assert set(meta.loc[[p for p in meta.index if p.endswith(".jpg")], "decoder"]) == {"torchvision-cpu"}


def test_batch_decode_failure_falls_back_per_image_then_to_pil(monkeypatch):
    import torch
    import torchvision.io

    from embedlab.runs.extract.device import decode_jpegs

    good_bytes = [(np.random.default_rng(i).random((40, 56, 3)) * 255).astype(np.uint8) for i in range(3)]
    from PIL import Image

    def jpeg(arr):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG")
        return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)

    good = [{"jpeg": jpeg(a), "meta": {"notes": ""}} for a in good_bytes]
    good.append({"jpeg": torch.frombuffer(bytearray(_damaged_jpeg()), dtype=torch.uint8), "meta": {"notes": ""}})
    real = torchvision.io.decode_jpeg
    refused = good[1]["jpeg"]

    def flaky(data, **kw):  # the decoder refuses image 1 (PIL can read it) and the damaged one
        if isinstance(data, list):
            return [flaky(d, **kw) for d in data]
        if data is refused:
            raise RuntimeError("Unsupported marker type 0xc2")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", flaky)
    failed: dict = {}
    out = decode_jpegs(good, [0, 1, 2, 3], torch.device("cpu"), "torchvision-cpu", failed)
    assert sorted(out) == [0, 1, 2] and list(failed) == [3] and failed[3][0] == "truncated-or-corrupt"
    assert [good[i]["meta"].get("decoder") for i in range(3)] == ["torchvision-cpu", "pil", "torchvision-cpu"]
    assert "Unsupported marker" in good[1]["meta"]["notes"] and out[1].shape == (3, 40, 56)


def test_device_preprocess_moves_host_images_to_the_device_before_stacking():
    import torch

    # The "meta" device stands in for CUDA on a machine without one: a host tensor and a device tensor of one
    # shape land in one group; stacking them as they are raises (tensors on different devices).
    host, dev = torch.zeros(3, 40, 60, dtype=torch.uint8), torch.zeros(3, 40, 60, dtype=torch.uint8, device="meta")
    pixels, luma = device_preprocess([host, dev, host], 32, (0.5,) * 3, (0.2,) * 3, torch.device("meta"))
    assert pixels.shape == (3, 3, 32, 32) and pixels.device.type == "meta" and luma.shape == (3,)


@pytest.mark.gpu
def test_cuda_batch_with_an_nvjpeg_jpeg_and_a_pil_png_of_one_size(tmp_path):
    import torch

    from embedlab import models

    folder = tmp_path / "imgs"
    write_photo(folder / "a.jpg", size=(64, 48), seed=1, fmt="JPEG")
    write_photo(folder / "b.png", size=(64, 48), seed=2, fmt="PNG")
    man = manifest("flat", folder, tmp_path / "m.jsonl", role="welllit")["files"]["manifest"]
    summary = extract(
        man, "embedlab-tiny", "none", tmp_path / "run", device="cuda", decode="auto", workers=0, progress=False
    )
    assert summary["embedded"] == 2 and summary["skipped"] == 0
    meta = Run(tmp_path / "run").metadata.set_index("path")
    assert meta.loc["a.jpg", "decoder"] == "nvjpeg" and meta.loc["b.png", "decoder"] == "pil"
    # no host sync inside the batched decode + preprocess (the results are read back once, after the batch)
    lm = models.load_model("embedlab-tiny", "none", "cuda")
    from embedlab.runs.extract.dataset import _ImageDataset
    from embedlab.runs.extract.rows import Rows

    ds = _ImageDataset(
        Rows(*(lambda s: (s.manifest, s.manifest.entries))(scan_manifest(man))), None, "torchvision", None, None
    )
    good = [ds[0], ds[1]]
    from torchvision.io import decode_jpeg

    images = [decode_jpeg(g["jpeg"], device="cuda") if "jpeg" in g else g["rgb"].pin_memory() for g in good]
    args = (lm.image_size, lm.info["mean"], lm.info["std"], torch.device("cuda"))
    device_preprocess(images, *args)  # warm-up (allocations, cached constants)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync in the batched preprocessing raises
    try:
        pixels, luma = device_preprocess(images, *args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert pixels.shape == (2, 3, lm.image_size, lm.image_size) and luma.device.type == "cuda"


def test_decode_auto_resumes_a_run_with_the_decode_path_it_recorded(tmp_path):
    from embedlab.runs.extract.device import recorded_decode

    man = _photos(tmp_path / "imgs", 4)
    first = extract(man, "embedlab-tiny", "none", tmp_path / "run", workers=0, decode="torchvision", **TINY)
    assert recorded_decode(tmp_path / "run") == "torchvision" and recorded_decode(tmp_path / "none") is None
    # auto would pick pil on this CPU; on the run started with torchvision it keeps torchvision (not "another run")
    again = extract(man, "embedlab-tiny", "none", tmp_path / "run", workers=0, decode="auto", **TINY)
    assert again["embedded"] == first["embedded"] == 4
    # the CUDA case of the issue: a run started with pil, resumed with auto on a GPU, stays pil
    assert resolve_decode("auto", "cuda", "pil") == "pil" and resolve_decode("auto", "cuda", None) == "torchvision"
    assert resolve_decode("torchvision", "cpu", "pil") == "torchvision"  # an explicit choice is checked as before


def test_a_failing_shard_write_stops_the_run_promptly_and_it_resumes(tmp_path, monkeypatch):

    man = _photos(tmp_path / "imgs", 20)
    run = tmp_path / "run"
    real_write, pushed = write_results, []
    real_push = BatchEncoder.push

    def failing_write(job, shard, results):
        if shard == 1:
            raise OSError(28, "No space left on device")
        return real_write(job, shard, results)

    monkeypatch.setattr(local_engine, "write_results", failing_write)
    monkeypatch.setattr(BatchEncoder, "push", lambda self, batch: (pushed.append(1), real_push(self, batch))[1])
    with pytest.raises(OSError, match="No space left on device"):
        extract(man, "embedlab-tiny", "none", run, workers=0, shard_size=2, batch_size=2, **TINY)
    assert len(pushed) <= 5, len(pushed)  # of 10 batches: stopped within the 2 pending writes
    assert not (run / ".lock").exists() and 1 not in Run(run).done_shards()
    monkeypatch.setattr(local_engine, "write_results", real_write)
    resumed = extract(man, "embedlab-tiny", "none", run, workers=0, shard_size=2, batch_size=2, **TINY)
    fresh = extract(man, "embedlab-tiny", "none", tmp_path / "fresh", workers=0, shard_size=2, batch_size=2, **TINY)
    assert resumed["embedded"] == fresh["embedded"] == 20
    assert np.array_equal(Run(run).vectors, Run(tmp_path / "fresh").vectors)


def test_a_run_whose_every_image_is_skipped_completes_without_an_index(tmp_path):
    """Every input unreadable: the run still completes (errors table, no vectors) and says why it has no index."""
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"not an image at all")
    man = manifest("flat", folder, tmp_path / "bad.jsonl", role="welllit")["files"]["manifest"]
    summary = extract(man, "embedlab-tiny", "none", tmp_path / "run", workers=0, **TINY)
    assert summary["embedded"] == 0 and summary["skipped"] == 3
    recorded = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert recorded["status"] == "complete" and "no vectors" in recorded["counts"]["index"]["note"]
