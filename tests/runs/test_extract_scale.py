"""Extraction at scale: the streaming pipeline's pieces, webdataset input, the run lock, bounded memory for
extreme-aspect images, non-UTF-8 names end to end, and the Ray engine on a local 2-CPU Ray instance."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import embedlab.runs.extract.local as local_engine
from embedlab.datasets.layouts import manifest
from embedlab.datasets.manifest import read_manifest, scan_manifest
from embedlab.errors import ManifestError
from embedlab.runs.extract.collector import write_results
from embedlab.runs.extract.dataset import ShardBatches
from embedlab.runs.extract.device import device_preprocess, pixel_chunks, resolve_decode
from embedlab.runs.extract.encoder import BatchEncoder
from embedlab.runs.extract.pipeline import extract
from embedlab.runs.extract.rows import safe_text
from embedlab.runs.index import load_index
from embedlab.runs.store import Run
from tests.conftest import REPO, write_photo

TINY = dict(device="cpu", progress=False)


def _cli(*args, timeout=300, code=None):
    entry = ["-c", code] if code else ["-m", "embedlab"]
    return subprocess.run(
        [sys.executable, *entry, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )


def _photos(folder: Path, n: int, size=(64, 48)) -> Path:
    for i in range(n):
        write_photo(
            folder / f"{i:03d}.{'jpg' if i % 3 else 'png'}",
            size=(size[0] + i % 5, size[1]),
            seed=i,
            fmt="JPEG" if i % 3 else "PNG",
        )
    out = manifest("flat", folder, folder.parent / f"{folder.name}.jsonl", role="welllit")["files"]["manifest"]
    return out


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


# ---------------------------------------------------------------- non-UTF-8 names (issue 12, item 1)
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


# ---------------------------------------------------------------- webdataset
def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _write_shards(folder: Path, images: list[tuple[str, bytes]], per_tar: int = 4) -> None:
    folder.mkdir(parents=True)
    for t in range(0, len(images), per_tar):
        with tarfile.open(
            folder / f"{t // per_tar:05d}.tar",
            "w",
            format=tarfile.GNU_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tf:
            for key, data in images[t : t + per_tar]:
                _add(tf, f"{key}.jpg", data)
                _add(
                    tf,
                    f"{key}.json",
                    json.dumps(
                        {
                            "url": f"http://x/{len(data)}",
                            "caption": f"caption {key!r}",
                            "key": key,
                            "status": "success",
                            "width": 64,
                            "height": 48,
                            "exif": "{}",
                        }
                    ).encode(),
                )
                _add(tf, f"{key}.txt", b"a txt caption")
            _add(tf, "orphan.json", b"{}")  # a sample without an image


def test_webdataset_round_trip_equals_files_with_broken_and_non_utf8_members(tmp_path):
    files = tmp_path / "files"
    _photos(files, 9)
    names = sorted(p.name for p in files.iterdir())
    images = [(Path(n).stem, (files / n).read_bytes()) for n in names]
    images[3] = (os.fsdecode(b"caf\xe9"), images[3][1])  # a member name that is not UTF-8
    images.append(("broken", b"this member is not an image"))
    _write_shards(tmp_path / "shards", images)
    r = _cli(
        "manifest", "webdataset", tmp_path / "shards" / "*.tar", "--out", tmp_path / "wds.jsonl", "--role", "welllit"
    )
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "10 images" in r.stdout and "no image member" in r.stdout
    m = read_manifest(tmp_path / "wds.jsonl")
    assert m.entries[3].tar["member"] == os.fsdecode(b"caf\xe9.jpg") and m.entries[3].meta["status"] == "success"
    wds = extract(
        tmp_path / "wds.jsonl",
        "embedlab-tiny",
        "none",
        tmp_path / "run_wds",
        shard_size=4,
        batch_size=3,
        workers=0,
        **TINY,
    )
    ref = extract(
        files.parent / "files.jsonl",
        "embedlab-tiny",
        "none",
        tmp_path / "run_files",
        shard_size=4,
        batch_size=3,
        workers=0,
        **TINY,
    )
    assert wds["embedded"] == ref["embedded"] == 9 and wds["skipped"] == 1
    a, b = Run(tmp_path / "run_wds"), Run(tmp_path / "run_files")
    assert np.array_equal(a.vectors, b.vectors)  # read from the tars, no unpacking: same pixels
    assert list(a.metadata["content_sha1"]) == list(b.metadata["content_sha1"])
    meta = pd.read_parquet(tmp_path / "run_wds" / "metadata.parquet")
    assert {"url", "caption", "key", "status", "source_width"} <= set(meta.columns)
    assert meta["caption"].iloc[0] == "caption '000'" and meta["source_width"].iloc[0] == 64
    assert "00000.tar::caf\\xe9.jpg" in meta["path"].iloc[3] and meta["key"].iloc[3] == "caf\\xe9"
    err = a.errors()
    assert list(err["reason"]) == ["not-an-image"] and err["path"].iloc[0].endswith("00002.tar::broken.jpg")


def test_webdataset_manifest_streams_and_reports_a_truncated_tar(tmp_path):
    files = tmp_path / "files"
    _photos(files, 4)
    images = [(p.stem, p.read_bytes()) for p in sorted(files.iterdir())]
    _write_shards(tmp_path / "shards", images, per_tar=4)
    tar = tmp_path / "shards" / "00000.tar"
    with tarfile.open(tar) as tf:
        third = [m for m in tf.getmembers() if m.name.endswith(".jpg")][2]
    tar.write_bytes(tar.read_bytes()[: third.offset_data + third.size // 2])  # cut inside the third image
    report = manifest("webdataset", tmp_path / "shards", tmp_path / "w.jsonl")
    out = report["files"]["manifest"]
    assert report["count"] == 3 and any("damaged" in n for n in report["notes"])
    summary = extract(out, "embedlab-tiny", "none", tmp_path / "run", workers=0, **TINY)
    assert summary["embedded"] == 2 and summary["skipped_by_reason"] == {"truncated-or-corrupt": 1}


# ---------------------------------------------------------------- bounded memory for extreme aspect ratios
_MEMORY_SCRIPT = r"""
import json, resource, sys
from embedlab.runs.extract.pipeline import extract
normal, strip, out = sys.argv[1:4]
extract(normal, "embedlab-tiny", "none", out + "/warm", device="cpu", workers=0, progress=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = {}
for decode in ("pil", "torchvision"):
    s = extract(strip, "embedlab-tiny", "none", out + "/" + decode, device="cpu", workers=0, progress=False, decode=decode)
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


# ---------------------------------------------------------------- the run lock
class caplog_warnings:
    """Collect the embedlab.lock log records of a block."""

    def __enter__(self):
        import logging

        self.records, self.logger = [], logging.getLogger("embedlab.runs.lock")
        self.handler = logging.Handler()
        self.handler.emit = self.records.append
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


_HOLDER = (
    "import sys, time\nfrom embedlab.runs.lock import RunLock\n"
    "RunLock(sys.argv[1], what='extract --engine local').acquire()\nprint('held', flush=True)\ntime.sleep(300)\n"
)


@pytest.mark.slow
def test_a_locked_run_folder_refuses_a_second_extract_in_one_line(tmp_path):
    man = _photos(tmp_path / "imgs", 3)
    run = tmp_path / "run"
    args = [
        "extract",
        "-m",
        man,
        "--model",
        "embedlab-tiny",
        "--pretrained",
        "none",
        "--device",
        "cpu",
        "--out",
        run,
        "--no-progress",
        "--workers",
        "0",
    ]
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = _cli(*args)
        assert r.returncode == 1
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("INFO")]
        assert len(lines) == 1, r.stderr
        assert f"locked by extract --engine local (pid {holder.pid} on host" in lines[0]
        assert "since 20" in lines[0] and "--break-lock" in lines[0]
        assert not (run / "manifest.json").exists() and not (run / "shards").exists()  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog_warnings() as records:  # the holder is gone: a stale lock on this host
        summary = extract(man, "embedlab-tiny", "none", run, workers=0, **TINY)
    assert summary["embedded"] == 3 and not (run / ".lock").exists()
    assert any("Taking over the lock" in r.getMessage() and "its process is gone" in r.getMessage() for r in records)


def test_a_lock_from_another_host_needs_break_lock(tmp_path):
    man = _photos(tmp_path / "imgs", 3)
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(
        json.dumps(
            {
                "host": "node-7.cluster",
                "pid": 4242,
                "user": "ana",
                "since": "2026-01-01 00:00:00 UTC",
                "what": "extract --engine ray",
                "token": "x",
            }
        )
    )
    with pytest.raises(
        Exception,
        match=r"locked by extract --engine ray \(pid 4242 on host node-7.cluster, user ana\) "
        r"since 2026-01-01 00:00:00 UTC.*'break_lock'",
    ):
        extract(man, "embedlab-tiny", "none", run, workers=0, **TINY)
    summary = extract(man, "embedlab-tiny", "none", run, workers=0, break_lock=True, **TINY)
    assert summary["embedded"] == 3 and not (run / ".lock").exists()


# ---------------------------------------------------------------- the Ray engine (a local 2-CPU instance)
@pytest.fixture(scope="module")
def ray_address():
    import ray

    ctx = ray.init(num_cpus=2, object_store_memory=1_000_000_000, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ray")
    man = _photos(base / "imgs", 40, size=(96, 72))
    extract(man, "embedlab-tiny", "none", base / "local", shard_size=2, batch_size=2, workers=0, **TINY)
    return man, Run(base / "local")


def _same_as_local(run: Run, local: Run) -> None:
    assert list(run.metadata["row_id"]) == list(local.metadata["row_id"]) == list(range(40))
    assert np.allclose(run.vectors, local.vectors, atol=1e-6, rtol=0)
    assert run.manifest["status"] == "complete" and load_index(run).ntotal == 40


@pytest.mark.slow
def test_ray_engine_writes_the_same_run_as_the_local_engine(tmp_path, ray_address, ray_inputs):
    man, local = ray_inputs
    summary = extract(man, "embedlab-tiny", "none", tmp_path / "run", shard_size=2, batch_size=2, engine="ray", **TINY)
    run = Run(tmp_path / "run")
    _same_as_local(run, local)
    assert summary["this_call"]["engine"] == "ray" and summary["this_call"]["workers"] == 2
    assert summary["this_call"]["engine_startup_seconds"] > 0
    assert run.identity == {**local.identity}  # same model, preprocessing, inputs: resumable by either
    assert not (tmp_path / "run" / ".engine").exists() and not (tmp_path / "run" / ".lock").exists()


@pytest.mark.slow
def test_ray_actor_killed_mid_run_every_image_once(tmp_path, ray_address, ray_inputs):
    man, local = ray_inputs
    out, killed = tmp_path / "run", {}

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            workers = sorted((out / ".engine").glob("worker-*.json")) if (out / ".engine").exists() else []
            done = len(list((out / "shards").glob("*.done.json"))) if (out / "shards").exists() else 0
            if workers and done >= 1:
                pid = json.loads(workers[0].read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid, done=done)
            time.sleep(0.002)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = extract(man, "embedlab-tiny", "none", out, shard_size=2, batch_size=2, engine="ray", **TINY)
    thread.join(5)
    assert killed and killed["done"] < 20, killed  # the actor died with shards still to do
    run = Run(out)
    _same_as_local(run, local)  # every image once, same vectors
    assert summary["embedded"] == 40 and not summary["this_call"]["failed_shards"]


_KILL_DRIVER = (
    "import os, signal, sys\nimport embedlab.runs.extract.ray as er\nseen = []\n"
    "def hook(job, shard, result):\n    seen.append(shard)\n"
    "    if len(seen) >= 3:\n        os.kill(os.getpid(), signal.SIGKILL)\n"
    "er.shard_finished = hook\nsys.argv = ['embedlab', *sys.argv[1:]]\nfrom embedlab.cli import main\nmain()\n"
)


@pytest.mark.slow
def test_ray_killed_driver_resumes_on_rerun(tmp_path, ray_address, ray_inputs):
    man, local = ray_inputs
    args = [
        "extract",
        "-m",
        man,
        "--model",
        "embedlab-tiny",
        "--pretrained",
        "none",
        "--out",
        tmp_path / "run",
        "--shard-size",
        "2",
        "--batch-size",
        "2",
        "--engine",
        "ray",
        "--address",
        ray_address,
        "--device",
        "cpu",
        "--no-progress",
    ]
    r = _cli(*args, code=_KILL_DRIVER)
    assert r.returncode == -9, r.stderr[-3000:]
    partial = Run(tmp_path / "run")
    assert partial.manifest["status"] == "running" and 3 <= len(partial.done_shards()) < 20
    summary = extract(man, "embedlab-tiny", "none", tmp_path / "run", shard_size=2, batch_size=2, engine="ray", **TINY)
    run = Run(tmp_path / "run")
    _same_as_local(run, local)
    assert (
        summary["this_call"]["embedded"] < 40
    )  # only the missing shards were embedded again     # only the missing shards were embedded again


# ---------------------------------------------------------------- manifests that stream
def test_manifest_scan_matches_read_manifest_and_streams_in_bounded_memory(tmp_path):
    import tracemalloc

    from embedlab.datasets.manifest import read_manifest, scan_manifest

    man = _photos(tmp_path / "imgs", 6)
    full, scan = read_manifest(man), scan_manifest(man, roles=["welllit"])
    assert scan.fingerprint == full.fingerprint() and list(scan.manifest.entries) == full.entries
    from embedlab._io import hash_records

    assert scan.input_hash == hash_records(e.to_record() for e in full.entries)
    assert len(scan_manifest(man, roles=["nope"]).manifest.entries) == 0
    big = tmp_path / "big.jsonl"  # 40,000 webdataset-style records
    with open(big, "w") as fh:
        fh.write(json.dumps({"embedlab_manifest": 1, "root": "."}) + "\n")
        for i in range(40_000):
            fh.write(
                json.dumps(
                    {
                        "path": f"wds:{i // 1000:05d}.tar::{i:09d}.jpg",
                        "role": "welllit",
                        "group": f"{i:09d}",
                        "tar": {
                            "file": f"{i // 1000:05d}.tar",
                            "member": f"{i:09d}.jpg",
                            "offset": 512 * i,
                            "size": 4096,
                        },
                        "meta": {"url": f"http://example.com/{i}.jpg", "caption": "a photo " * 8, "status": "success"},
                    }
                )
                + "\n"
            )
    tracemalloc.start()
    scan = scan_manifest(big, check_files=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(scan.manifest.entries) == 40_000 and scan.with_meta == 40_000
    assert scan.manifest.entries[34_321].tar["offset"] == 512 * 34_321
    assert peak < 40_000 * 64, peak  # < 64 bytes per line at peak (parsed objects: > 1 kB per line)
    (tmp_path / "dup.jsonl").write_text(
        big.read_text().splitlines()[0]
        + "\n"
        + "\n".join(
            [
                json.dumps({"path": "a.jpg", "role": "x"}),
                json.dumps({"path": "b.jpg", "role": "x"}),
                json.dumps({"path": "a.jpg", "role": "x"}),
            ]
        )
        + "\n"
    )
    with pytest.raises(ManifestError, match="line 4: duplicate path 'a.jpg' \\(first on line 2\\)"):
        scan_manifest(tmp_path / "dup.jsonl", check_files=False)


# ---------------------------------------------------------------- review fixes (issue 10 follow-up)
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


def _race_for_the_lock(run: str, barrier, results) -> None:
    from embedlab.runs.lock import RunLock, RunLockedError

    lock = RunLock(run, what="racer")
    barrier.wait()
    try:
        lock.acquire()
        results.put("won")
    except RunLockedError:
        results.put("refused")
    barrier.wait()  # hold the lock until both have tried


def test_two_processes_racing_for_a_stale_lock_exactly_one_wins(tmp_path):
    import multiprocessing as mp
    import socket

    from embedlab.runs.lock import machine_ids

    ctx = mp.get_context("fork")
    dead = ctx.Process(target=int)
    dead.start()
    dead.join()  # a pid that no longer runs: its lock is stale
    for attempt in range(20):
        run = tmp_path / f"run{attempt}"
        run.mkdir()
        (run / ".lock").write_text(
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": dead.pid,
                    "pid_start": "1",
                    **machine_ids(),
                    "what": "a dead extract",
                    "token": f"dead{attempt}",
                }
            )
        )
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race_for_the_lock, args=(str(run), barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        got = sorted(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(60)
        assert got == ["refused", "won"], (attempt, got)


def test_a_lock_from_another_container_with_the_same_host_name_is_not_judged_dead(tmp_path):
    import socket

    from embedlab.runs.lock import holder_alive, machine_ids

    here = machine_ids()
    holder = {"host": socket.gethostname(), "pid": 2**22 + 7, **here}  # a pid that does not run here
    assert holder_alive(holder) is False
    if here["boot_id"]:
        assert holder_alive(dict(holder, boot_id="another-boot")) is None
    if here["pid_ns"]:
        assert holder_alive(dict(holder, pid_ns="1")) is None


def test_pax_tars_with_long_member_names_round_trip(tmp_path):
    files = tmp_path / "files"
    _photos(files, 3)
    long_dir = "d" * 80 + "/" + "e" * 80  # > 100 characters: a pax path record, as img2dataset writes
    (tmp_path / "shards").mkdir()
    with tarfile.open(tmp_path / "shards" / "00000.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(files.iterdir()):
            _add(tf, f"{long_dir}/{p.stem}{'x' * 40}.jpg", p.read_bytes())
            _add(tf, f"{long_dir}/{p.stem}{'x' * 40}.json", json.dumps({"key": p.stem, "status": "success"}).encode())
    report = manifest("webdataset", tmp_path / "shards", tmp_path / "w.jsonl")
    assert report["count"] == 3
    m = read_manifest(tmp_path / "w.jsonl")
    assert m.entries[0].tar["member"] == f"{long_dir}/000{'x' * 40}.jpg" and m.entries[0].meta["key"] == "000"
    wds = extract(tmp_path / "w.jsonl", "embedlab-tiny", "none", tmp_path / "run_wds", workers=0, **TINY)
    ref = extract(files.parent / "files.jsonl", "embedlab-tiny", "none", tmp_path / "run_files", workers=0, **TINY)
    assert wds["embedded"] == ref["embedded"] == 3
    assert np.array_equal(Run(tmp_path / "run_wds").vectors, Run(tmp_path / "run_files").vectors)


def test_a_manifest_changed_after_its_scan_is_refused_in_one_line(tmp_path):
    man = _photos(tmp_path / "imgs", 3)
    scan = scan_manifest(man)
    assert scan.manifest.entries[0].path == "000.png"
    later = scan_manifest(man)
    with open(man, "a", encoding="utf-8") as fh:  # the offsets of `later` no longer hold
        fh.write("\n")
    with pytest.raises(ManifestError, match=r"changed \(or was replaced\) after it was read") as exc:
        later.manifest.entries[1]
    assert "\n" not in str(exc.value)


def test_tar_descriptor_cache_never_closes_a_descriptor_in_use(tmp_path, monkeypatch):
    from embedlab.datasets import images

    monkeypatch.setattr(images, "_MAX_FDS", 4)
    tars = []
    for i in range(8):
        tars.append(str(tmp_path / f"{i}.tar"))
        Path(tars[-1]).write_bytes(b"x" * 10)
    with images._tar_fd(tars[0]) as held:  # a reader mid-pread while others open more tars
        for t in tars[1:]:
            with images._tar_fd(t) as fd:
                assert os.pread(fd, 3, 0) == b"xxx"
        assert os.pread(held, 3, 0) == b"xxx"  # not closed (nor reused for another tar)
        assert os.fstat(held).st_ino == os.stat(tars[0]).st_ino
    assert len([k for k in images._FDS if k[0] == os.getpid()]) <= 5


def test_ray_failures_are_retried_bounded_and_an_unavailable_actor_is_kept():
    ray = pytest.importorskip("ray")
    from collections import deque

    from embedlab.runs.extract.ray import MAX_RESUBMITS, on_failure

    ex = ray.exceptions

    def err(cls):
        return cls.__new__(cls)  # the classification looks at the type only

    actor, other = object(), object()
    for cls, verdict, kept in [
        (ex.ActorUnavailableError, "retried", True),
        (ex.RayActorError, "dropped", False),
        (ex.OutOfMemoryError, "retried", True),
        (ex.NodeDiedError, "retried", True),
        (ex.ObjectLostError, "retried", True),
        (ex.WorkerCrashedError, "retried", True),
    ]:
        alive, queue, resubmits, counts = [actor, other], deque([9]), {}, {"failed_shards": {}}
        assert on_failure(ray, err(cls), actor, 3, alive, queue, resubmits, counts) == verdict, cls
        assert (actor in alive) is kept and list(queue) == [3, 9] and not counts["failed_shards"], cls
        for _ in range(MAX_RESUBMITS - 1):
            on_failure(ray, err(cls), actor, 3, alive, queue, resubmits, counts)
        assert on_failure(ray, err(cls), actor, 3, alive, queue, resubmits, counts) == "failed"  # bounded
        assert cls.__name__ in counts["failed_shards"]["3"] and list(queue).count(3) == MAX_RESUBMITS
    counts = {"failed_shards": {}}
    task_error = ex.RayTaskError("embed_shard", "Traceback ...\nValueError: bad record", ValueError("bad record"))
    assert on_failure(ray, task_error, actor, 5, [actor], deque(), {}, counts) == "failed"  # a data error: no retry
    assert "bad record" in counts["failed_shards"]["5"]


def test_a_ray_actor_that_cannot_see_the_dataset_fails_its_check(tmp_path):
    pytest.importorskip("ray")
    from embedlab.runs.extract.ray import ShardActor

    run = tmp_path / "run"
    (run / ".engine").mkdir(parents=True)
    (run / ".engine" / "probe.json").write_text(json.dumps({"token": "t"}))
    from embedlab import models

    lm = models.load_model("embedlab-tiny", "none", "cpu")
    spec = {
        "max_pixels": None,
        "model": "embedlab-tiny",
        "pretrained": "none",
        "device": "cpu",
        "root": str(tmp_path),
        "threads": 1,
        "run_dir": str(run),
        "token": "t",
        "weights_sha256": lm.info["weights_sha256"],
        "compute_dtype": models.compute_dtype(lm.device),
        "probe_paths": [str(tmp_path)],
    }
    actor = ShardActor(spec)  # the class itself, without Ray: the check is plain Python
    assert actor.check()["error"] is None
    actor.spec = dict(spec, probe_paths=[str(tmp_path), str(tmp_path / "not-mounted-here" / "0001.tar")])
    msg = actor.check()["error"]
    assert "cannot see the dataset" in msg and "not-mounted-here" in msg


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
