"""Inputs that stream: webdataset tars (broken, non-UTF-8 and long members) and manifests scanned in bounded
memory, refused when changed after their scan."""

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedlab.datasets.layouts import manifest
from embedlab.datasets.manifest import read_manifest, scan_manifest
from embedlab.errors import ManifestError
from embedlab.runs.extract.pipeline import extract
from embedlab.runs.store import Run
from tests.helpers.extraction import TINY
from tests.helpers.extraction import photo_folder as _photos
from tests.helpers.extraction import run_cli as _cli


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
