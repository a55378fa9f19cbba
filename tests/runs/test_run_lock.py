"""The run lock: one writer per run folder, refusals in one line, stale locks taken by exactly one process."""

import json
import signal
import subprocess
import sys

import pytest

from embedlab.runs.extract.pipeline import extract
from tests.conftest import REPO
from tests.helpers.extraction import TINY, tiny_extract_argv
from tests.helpers.extraction import photo_folder as _photos
from tests.helpers.extraction import run_cli as _cli


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
    args = tiny_extract_argv(man, run, "--no-progress", "--workers", "0")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = _cli(*args)
        assert r.returncode == 1
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("INFO")]
        assert len(lines) == 1, r.stderr
        assert f"locked by extract --engine local (pid {holder.pid} on host" in lines[0]
        # alive on this host: not offered --break-lock (it is refused for a live holder here), told how to stop it
        assert "since 20" in lines[0] and "--break-lock" not in lines[0] and f"kill {holder.pid}" in lines[0]
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
