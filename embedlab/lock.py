"""A run-folder lock: one writer per run folder (local or Ray), with a clear refusal and a way to break it.

The lock is RUN/.lock, a small JSON file (host, pid, process start time, user, command, since) created
atomically with link(2), which fails when the file exists, on local disks and on NFS alike. A lock whose holder
is on this host and no longer runs (killed, crashed) is stale and taken over with a warning; a lock held from
another host cannot be checked from here, so it is refused unless the caller passes `break_lock`
(`--break-lock`) after making sure that the other process is gone.
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path

from ._io import display_path
from .errors import EmbedlabError

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


def holder_alive(holder: dict) -> bool | None:
    """True/False for a holder on this host; None when it cannot be known (another host, or no pid)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = process_start(holder["pid"])
    return not (holder.get("pid_start") and start and start != holder["pid_start"])


def describe(holder: dict) -> str:
    return (f"{holder.get('what', 'a process')} (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"user {holder.get('user', '?')}) since {holder.get('since', '?')}")


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
        return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
                "user": user, "what": self.what, "token": self.token,
                "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}

    def read_holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"what": "an unreadable lock file"}

    def _try_link(self) -> bool:
        tmp = self.path.with_name(f"{LOCK_NAME}.{self.token}")
        tmp.write_text(json.dumps(self._record()), encoding="utf-8")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._try_link():
                self.held = True
                return
            holder = self.read_holder()
            if holder is None:
                continue                                   # released meanwhile: try again
            alive = holder_alive(holder)
            if alive is False or self.break_lock:
                why = "its process is gone" if alive is False else "--break-lock was given"
                log.warning("Taking over the lock of %s held by %s: %s.", display_path(str(self.path.parent)),
                            describe(holder), why)
                self.path.unlink(missing_ok=True)
                continue
            raise RunLockedError(
                f"Run folder {display_path(str(self.path.parent))} is locked by {describe(holder)}. Wait for it to "
                "finish; if that process is gone (e.g. killed on another machine), rerun with --break-lock.")
        raise RunLockedError(f"Could not lock {display_path(str(self.path.parent))}: another process keeps taking it.")

    def release(self) -> None:
        if self.held and (self.read_holder() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
