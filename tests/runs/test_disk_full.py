"""A full disk (ENOSPC) while extracting or indexing: one line that names the disk's folder, what the step needed
when known, and that rerunning after freeing space resumes; no temporary or lock file left behind. Run on a small
tmpfs mounted for the test (needs root); skipped, with the reason, where one cannot be mounted."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.extraction import jpeg_folder as _photos
from tests.helpers.extraction import quiet_cli as _cli
from tests.helpers.extraction import tiny_extract_argv


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at tmp_path/disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs (mount -t tmpfs) for a real ENOSPC")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()[:200]}), so no real ENOSPC")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk: Path, leave: int = 0) -> Path:
    """A ballast file that leaves about `leave` bytes free on `disk` (0: write until ENOSPC)."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as fh:
        try:
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            fh.write(b"\0" * max(0, free - leave))
            fh.flush()
            if not leave:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
        except OSError:
            pass
    return ballast


_FLAGS = ("--workers", "0", "--no-progress", "--shard-size", "2", "--batch-size", "2", "--json")


def _extract(man, out, *extra):
    return _cli(*tiny_extract_argv(man, out, *_FLAGS, *extra))


def _disk_full_line(r, folder: Path) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr[-3000:]
    line = lines[0]
    assert f"The disk holding {folder}" in line and "is full" in line, line
    assert "rerun the same command" in line and "resumes" in line and "permissions" not in line, line
    return line


def _leftovers(disk: Path) -> list:
    return sorted(str(p.relative_to(disk)) for p in disk.rglob("*") if ".tmp" in p.name or p.name.startswith(".lock"))


def test_extract_on_a_full_disk_says_so_in_one_line_and_leaves_no_lock(tmp_path, small_disk):
    man = _photos(tmp_path / "imgs", 4)
    ballast = _fill(small_disk)  # 0 bytes free
    run = small_disk / "run"
    line = _disk_full_line(_extract(man, run), run)
    assert "this step needed" in line  # the lock file's size is known
    assert _leftovers(small_disk) == []  # no empty .lock.<hex>, no .lock
    ballast.unlink()
    r = _extract(man, run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["embedded"] == 4


def test_a_disk_that_fills_up_mid_run_stops_in_one_line_and_the_rerun_resumes(tmp_path, small_disk):
    man = _photos(tmp_path / "imgs", 40)
    ballast = _fill(small_disk, leave=100_000)  # room for the header and a few shards, not for 20
    run = small_disk / "run"
    line = _disk_full_line(_extract(man, run), run / "shards")
    assert "this step needed" in line, line
    done = len(list((run / "shards").glob("*.done.json")))
    assert 1 <= done < 20, done
    assert _leftovers(small_disk) == [], _leftovers(small_disk)
    ballast.unlink()
    r = _extract(man, run)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["embedded"] == 40 and summary["this_call"]["embedded"] == 40 - 2 * done  # resumed


def test_the_faiss_index_write_on_a_full_disk_is_one_line(tmp_path, small_disk):
    man = _photos(tmp_path / "imgs", 6)
    run = small_disk / "run"
    r = _extract(man, run)
    assert r.returncode == 0, r.stderr[-3000:]
    (run / "index.faiss").unlink()
    ballast = _fill(small_disk)
    _disk_full_line(_cli("index", run, "--no-progress"), run)
    assert _leftovers(small_disk) == [] and not (run / "index.faiss").exists()
    ballast.unlink()
    assert _cli("index", run, "--no-progress").returncode == 0 and (run / "index.faiss").exists()


def test_write_index_on_a_full_disk_raises_disk_full_and_removes_its_temporary(small_disk):
    import faiss
    import numpy as np

    from embedlab.errors import DiskFullError
    from embedlab.runs.index_kinds import write_index

    index = faiss.IndexFlatIP(64)
    index.add(np.random.default_rng(0).random((8000, 64), dtype=np.float32))  # 2 MB: more than the disk
    with pytest.raises(DiskFullError) as info:
        write_index(index, small_disk / "index.faiss")
    assert f"The disk holding {small_disk} (mounted at {small_disk}) is full" in str(info.value)
    assert list(small_disk.iterdir()) == []


def test_a_full_disk_or_a_lost_lock_in_a_ray_actor_stops_the_run_in_one_line():
    ray = pytest.importorskip("ray")
    from collections import deque

    from embedlab._io import disk_full_error
    from embedlab.errors import DiskFullError
    from embedlab.runs.extract.ray import on_failure
    from embedlab.runs.lock import LockLostError

    full = disk_full_error("/data/run/shards/emb_00003.npy", 4096)
    for cause in (full, LockLostError("The lock of run folder /data/run was taken over")):
        task_error = ray.exceptions.RayTaskError("embed_shard", "Traceback ...", cause)
        counts = {"failed_shards": {}}
        with pytest.raises(type(cause)) as info:  # raised in the driver, not recorded as one failed shard
            on_failure(ray, task_error, object(), 3, [], deque(), {}, counts)
        assert str(info.value) == str(cause) and "\n" not in str(info.value) and not counts["failed_shards"]
    assert isinstance(full, DiskFullError) and "this step needed 4.0 KB" in str(full)
