"""A run-folder lock: one writer per run folder (local or Ray), with a clear refusal and a way to break it.

The lock is RUN/.lock, a small JSON file (host, pid, process start time, user, command, since) created
atomically with link(2), which fails when the file exists, on local disks and on NFS alike. A lock whose holder
is on this host and no longer runs (killed, crashed) is stale and taken over with a warning; a lock held from
another host (or container) cannot be checked from here, so it is refused unless the caller passes `break_lock`
(`--break-lock`) after making sure that the other process is gone. `break_lock` never takes the lock of a holder
that is provably alive here (same boot id and pid namespace, its pid running with the recorded start time).

A writer checks, before it publishes each shard, that the lock is still its own (`check_lock`): after a takeover
the old writer stops in one line and writes nothing more, so a run folder never holds two configurations.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shlex
import socket
import sys
import time
import uuid
from pathlib import Path

from embedlab._io import disk_full_error, display_path, is_disk_full
from embedlab.errors import EmbedlabError

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class RunLockedError(EmbedlabError, RuntimeError):
    """Another process holds the run folder."""


def process_start(pid: int) -> str | None:
    """The kernel's start time of a process (clock ticks since boot), to tell a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.readline().strip() or None
    except OSError:
        return None


def machine_ids() -> dict:
    """What tells this kernel and pid namespace apart from another with the same host name (containers, pods):
    the kernel's boot id and the inode of our pid namespace."""
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = None
    return {"boot_id": _read_first_line("/proc/sys/kernel/random/boot_id"), "pid_ns": pidns}


def same_machine(holder: dict) -> bool:
    """The holder's pid means something here: same host name, and (when recorded) same boot and pid namespace."""
    if holder.get("host") != socket.gethostname():
        return False
    here = machine_ids()
    return all(holder.get(k) in (None, here[k]) or here[k] is None for k in here)


def holder_alive(holder: dict) -> bool | None:
    """True/False for a holder on this host; None when it cannot be known (another host, or no pid)."""
    if not same_machine(holder) or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = process_start(holder["pid"])
    return not (holder.get("pid_start") and start and start != holder["pid_start"])


def provably_alive(holder: dict) -> bool:
    """The holder runs here beyond doubt: same host name, boot id and pid namespace (all recorded), and its pid is
    running with the recorded start time. Only then is `break_lock` refused (it is for holders elsewhere)."""
    here = machine_ids()
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    if any(here[k] is None or holder.get(k) != here[k] for k in here):
        return False
    return bool(holder.get("pid_start")) and holder_alive(holder) is True and process_start(holder["pid"]) is not None


def describe(holder: dict) -> str:
    command = f", command `{holder['command']}`" if holder.get("command") else ""
    return (
        f"{holder.get('what', 'a process')} (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"user {holder.get('user', '?')}{command}) since {holder.get('since', '?')}"
    )


def _command_line() -> str:
    argv = list(sys.argv) or ["?"]
    argv[0] = os.path.basename(argv[0])
    if argv[0] == "__main__.py":  # python -m embedlab
        argv[0] = os.path.basename(os.path.dirname(sys.argv[0])) or "python -m"
    elif argv[0] == "-c":
        argv[0] = "python -c"
    text = " ".join([argv[0], shlex.join(str(a) for a in argv[1:])]).strip()
    return text if len(text) <= 200 else text[:197] + "..."


class LockLostError(RunLockedError):
    """The lock this process held was taken over (or removed): it must stop writing into the run folder."""


def read_lock(run_dir: str | os.PathLike) -> dict | None:
    """The holder recorded in RUN/.lock; None when there is none, a stub when it cannot be read."""
    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"what": "an unreadable lock file"}


def check_lock(run_dir: str | os.PathLike, token: str | None) -> None:
    """Raise LockLostError unless RUN/.lock is still the one with `token` (a writer calls it before publishing each
    shard; token None: no lock to check)."""
    if token is None:
        return
    holder = read_lock(run_dir)
    if (holder or {}).get("token") == token:
        return
    who = f"taken over by {describe(holder)}" if holder else "removed"
    raise LockLostError(
        f"The lock of run folder {display_path(str(run_dir))} was {who} while this extract was writing it; "
        "this extract stops here and writes nothing more (a run folder never mixes two configurations). "
        "Check that run; rerun this command once it is finished to resume."
    )


class _TakeoverMutex:
    """An exclusive flock on a side file for the few lines of a takeover; a no-op where locks are unsupported."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self):
        try:
            import fcntl

            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError):
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock


class RunLock:
    """Context manager: `with RunLock(run_dir, break_lock=False, what="extract"):` ..."""

    def __init__(self, run_dir: str | os.PathLike, break_lock: bool = False, what: str = "extract"):
        self.path = Path(run_dir) / LOCK_NAME
        self.break_lock, self.what = break_lock, what
        self.token = uuid.uuid4().hex
        self.held = False

    def _record(self) -> dict:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid()) if hasattr(os, "getuid") else "?"
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            **machine_ids(),
            "user": user,
            "what": self.what,
            "command": _command_line(),
            "token": self.token,
            "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        }

    def read_holder(self) -> dict | None:
        return read_lock(self.path.parent)

    def verify(self) -> None:
        """Raise LockLostError unless the lock is still this one (see `check_lock`)."""
        check_lock(self.path.parent, self.token)

    def _try_link(self) -> bool:
        tmp = self.path.with_name(f"{LOCK_NAME}.{self.token}")
        record = json.dumps(self._record())
        try:
            tmp.write_text(record, encoding="utf-8")
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if is_disk_full(exc):
                tmp.unlink(missing_ok=True)
                raise disk_full_error(self.path, len(record)) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)  # also when the disk is full: no empty .lock.<hex> is left behind

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._try_link():
                self.held = True
                return
            holder = self.read_holder()
            if holder is None:
                continue  # released meanwhile: try again
            alive = holder_alive(holder)
            here = provably_alive(holder)
            where = display_path(str(self.path.parent))
            if self.break_lock and here:
                raise RunLockedError(
                    f"Run folder {where} is locked by {describe(holder)}, which is alive on this host (same boot and "
                    f"pid namespace): 'break_lock' refused. Wait for it to finish or stop it (kill {holder['pid']}); "
                    "'break_lock' is only for a holder on another host or in another container."
                ).naming("break_lock")
            if alive is False or (self.break_lock and not here):
                why = "its process is gone" if alive is False else "break_lock was given"
                if self._take_over(holder):
                    log.warning(
                        "Taking over the lock of %s held by %s: %s.",
                        display_path(str(self.path.parent)),
                        describe(holder),
                        why,
                    )
                continue
            if here:
                then = f"Wait for it to finish, or stop it (kill {holder['pid']}) and rerun."
            else:
                then = (
                    "Wait for it to finish; if that process is gone (it runs on another host or in another container, "
                    "which cannot be checked from here), rerun with 'break_lock'."
                )
            raise RunLockedError(f"Run folder {where} is locked by {describe(holder)}. {then}").naming("break_lock")
        raise RunLockedError(f"Could not lock {display_path(str(self.path.parent))}: another process keeps taking it.")

    def _take_over(self, holder: dict) -> bool:
        """Remove the stale lock `holder` and nothing else: takeovers are serialised by an flock on RUN/.lock.takeover
        (where the file system has locks), and the lock is moved aside with rename(2), which only one process can do
        to one file, then checked to be the holder that was judged stale; a fresher lock moved by mistake is put
        back."""
        with _TakeoverMutex(self.path.with_name(f"{LOCK_NAME}.takeover")):
            if self.read_holder() != holder:
                return False  # released or taken over meanwhile: look again
            aside = self.path.with_name(f"{LOCK_NAME}.stale.{self.token}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return False
            try:
                moved = json.loads(aside.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                moved = {"what": "an unreadable lock file"}
            if moved != holder:
                try:
                    os.link(aside, self.path)  # not the stale one: give it back
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                return False
            aside.unlink(missing_ok=True)
            return True

    def release(self) -> None:
        if self.held and (self.read_holder() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
