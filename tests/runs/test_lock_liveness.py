"""The run lock and liveness: `break_lock` never takes the lock of a holder alive on this host, and a writer whose
lock is taken over stops before its next shard, so a run folder never holds shards of two configurations."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import embedlab.runs.extract.local as local_engine
from embedlab.runs.extract.pipeline import extract
from embedlab.runs.lock import RunLock, RunLockedError, machine_ids
from tests.conftest import REPO
from tests.helpers.extraction import jpeg_folder as _photos
from tests.helpers.extraction import run_cli as _cli
from tests.helpers.extraction import tiny_extract_argv

TINY = dict(device="cpu", progress=False, workers=0)

# a real extract (float32, one image per shard) that writes shard 0, then waits for the file GO before the others
_SLOW_HOLDER = """
import sys, time
from pathlib import Path
import embedlab.runs.extract.local as local
real = local.write_results
def gated(job, shard, results):
    if shard >= 1:
        deadline = time.time() + 900  # the test touches GO when it is done (also when it fails)
        while not Path(sys.argv[3]).exists() and time.time() < deadline:
            time.sleep(0.05)
    return real(job, shard, results)
local.write_results = gated
from embedlab.runs.extract.pipeline import extract
s = extract(sys.argv[1], 'embedlab-tiny', 'none', sys.argv[2], device='cpu', workers=0, shard_size=1, batch_size=1,
            progress=False)
print(s['embedded'], flush=True)
"""


def _wait_for(cond, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _shard_dtypes(run: Path) -> set:
    return {str(np.load(p, allow_pickle=False).dtype) for p in sorted((run / "shards").glob("emb_*.npy"))}


@pytest.mark.slow
def test_break_lock_is_refused_ten_of_ten_while_the_holder_runs_here(tmp_path):
    man = _photos(tmp_path / "imgs", 6)
    run, go = tmp_path / "run", tmp_path / "go"
    holder = subprocess.Popen(
        [sys.executable, "-c", _SLOW_HOLDER, str(man), str(run), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    try:
        _wait_for(lambda: (run / "shards" / "00000.done.json").exists() or holder.poll() is not None, "shard 0")
        assert holder.poll() is None, holder.stderr.read()
        refused = 0
        for attempt in range(10):  # a resume of the same run, or another configuration replacing it: never get in
            other = dict(vector_dtype="float16", overwrite=True) if attempt % 2 else {}
            with pytest.raises(RunLockedError) as info:
                extract(man, "embedlab-tiny", "none", run, shard_size=1, batch_size=1, break_lock=True, **other, **TINY)
            msg = str(info.value)
            assert "'break_lock' refused" in msg and f"kill {holder.pid}" in msg and "\n" not in msg
            refused += 1
        assert refused == 10
        # the CLI: one line, who holds it (host, pid, command) and since when
        flags = ("--dtype", "float16", "--shard-size", "1", "--workers", "0", "--no-progress", "--overwrite")
        r = _cli(*tiny_extract_argv(man, run, *flags, "--break-lock"))
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("INFO")]
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        line = lines[0]
        assert f"pid {holder.pid} on host {socket.gethostname()}" in line and "command `python -c " in line, line
        assert "since 20" in line and "'--break-lock' refused" in line and "Traceback" not in r.stderr
        assert holder.poll() is None  # untouched by every attempt
    finally:
        go.touch()
        out, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err[-3000:]
    assert out.strip() == "6"
    assert _shard_dtypes(run) == {"float32"} and len(list((run / "shards").glob("*.done.json"))) == 6
    assert json.loads((run / "manifest.json").read_text())["vector_dtype"] == "float32"
    assert not (run / ".lock").exists()


def test_a_live_holder_here_is_not_offered_break_lock_one_elsewhere_is(tmp_path):
    run = tmp_path / "run"
    with RunLock(run, what="extract --engine local"):  # this very process holds it: provably alive
        with pytest.raises(RunLockedError) as info:
            RunLock(run).acquire()
        assert "break_lock" not in str(info.value) and f"kill {os.getpid()}" in str(info.value)
        with pytest.raises(RunLockedError, match="'break_lock' refused"):
            RunLock(run, break_lock=True).acquire()
    assert not (run / ".lock").exists()
    other = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": "1", **machine_ids(), "token": "x"}
    other["boot_id"] = "another-container"  # same host name and pid, another kernel: cannot be checked from here
    run.mkdir(exist_ok=True)
    (run / ".lock").write_text(json.dumps(other))
    with pytest.raises(RunLockedError, match="rerun with 'break_lock'"):
        RunLock(run).acquire()
    with RunLock(run, break_lock=True) as lock:
        assert json.loads((run / ".lock").read_text())["token"] == lock.token


def test_a_takeover_under_a_running_writer_stops_it_before_its_next_shard(tmp_path, monkeypatch):
    man = _photos(tmp_path / "imgs", 8)
    run = tmp_path / "run"
    real, written = local_engine.write_results, []
    taker = {"host": "node-9", "pid": 99, "what": "extract --engine local", "token": "taker", "since": "now"}

    def write_then_take_over(job, shard, results):
        out = real(job, shard, results)
        written.append(shard)
        if shard == 1:  # someone else takes the lock (e.g. --break-lock from another machine)
            (run / ".lock").write_text(json.dumps(taker))
        return out

    monkeypatch.setattr(local_engine, "write_results", write_then_take_over)
    with pytest.raises(RunLockedError) as info:  # LockLostError, a RunLockedError
        extract(man, "embedlab-tiny", "none", run, shard_size=2, batch_size=2, **TINY)
    msg = str(info.value)
    assert "taken over by extract --engine local (pid 99 on host node-9" in msg and "\n" not in msg
    assert "writes nothing more" in msg
    done = sorted(p.name for p in (run / "shards").glob("*.done.json"))
    assert done == ["00000.done.json", "00001.done.json"], done
    assert not list((run / "shards").glob("*_00002.*")) and not list((run / "shards").glob("*_00003.*"))
    assert json.loads((run / ".lock").read_text())["token"] == "taker"  # the old writer left the new lock alone
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"  # not finalised
