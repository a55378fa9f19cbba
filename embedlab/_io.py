"""Small I/O helpers: atomic writes (tmp then os.replace), hashing and JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` (ending in `suffix`, for writers that insist on one) for code that writes
    by file name; it replaces `path` (os.replace) when the block ends, and is removed if the block raises."""
    path = Path(path)
    check_output_dir(path.parent, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _default(obj: Any):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_default, allow_nan=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (dumps_json(obj) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, ".npy") as tmp:
        np.save(tmp, array, allow_pickle=False)


REFUSE_PICKLE = "embedlab refuses to unpickle files (unpickling can run arbitrary code)"


def load_npy(path: str | os.PathLike, expect: str = "a plain numeric array") -> np.ndarray:
    """np.load(allow_pickle=False); a pickle, an object array, an .npz or a damaged file raises InputFileError in
    one sentence that says what the file should hold (`expect`)."""
    from embedlab.errors import InputFileError

    shown = display_path(os.fspath(path))
    with open(path, "rb") as fh:
        head = fh.read(6)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "Object arrays" in str(exc):
            why = "holds an array of Python objects (dtype object), stored as pickled data; " + REFUSE_PICKLE
        elif head[:1] == b"\x80":
            why = "is a Python pickle, not a .npy array; " + REFUSE_PICKLE
        elif head != b"\x93NUMPY":
            why = "is not a .npy file (no NumPy header)"
        else:
            why = f"is damaged or truncated ({str(exc).splitlines()[0][:120]})"
        raise InputFileError(f"{shown} {why}. It should hold {expect}.") from None
    except (EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise InputFileError(
            f"{shown} is damaged or truncated ({type(exc).__name__}). It should hold {expect}."
        ) from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise InputFileError(
            f"{shown} is a .npz archive of several arrays, not one .npy array. It should hold {expect}."
        )
    return arr


def load_weights_file(path: str | os.PathLike, what: str = "a state_dict of tensors") -> Any:
    """torch.load(weights_only=True) on the CPU; a file holding pickled objects other than tensors, or not a
    PyTorch checkpoint at all, raises InputFileError in one sentence (nothing beyond tensors is ever unpickled)."""
    import pickle

    import torch

    from embedlab.errors import InputFileError

    shown = display_path(os.fspath(path))
    fix = f"Fix: save {what} (torch.save(model.state_dict(), path)) or use a .safetensors file"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((l.strip() for l in str(exc).splitlines() if "Unsupported global" in l or "GLOBAL" in l), "")
        if "invalid load key" in str(exc) or not detail:
            raise InputFileError(f"{shown} is not a PyTorch checkpoint (damaged or another format). {fix}.") from None
        detail = detail.split("GLOBAL", 1)[-1].split(" was not", 1)[0].strip()
        raise InputFileError(
            f"{shown} is not a plain weights file: it holds pickled Python objects beyond tensors "
            f"({detail}), refused for safety. {fix}."
        ) from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise InputFileError(
            f"{shown} is not a PyTorch checkpoint (damaged or another format: {str(exc).splitlines()[0][:100]}). {fix}."
        ) from None


def check_output_dir(folder: str | os.PathLike, target: str | os.PathLike | None = None) -> None:
    """Refuse, before anything is written, an output folder that (or a parent of which) is an existing file:
    one line that names it; the file is left untouched. `target` is what was to be written there (for the message)."""
    from embedlab.errors import ConfigError

    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.is_dir():
            return
        if p.exists() or p.is_symlink():
            what = display_path(str(target if target is not None else folder))
            which = "it" if p == folder and target is None else display_path(str(p))
            raise ConfigError(
                f"Cannot write {what}: {which} is an existing file, not a folder, and is left untouched. "
                "Fix: choose another 'out' path or move that file."
            ).naming("out")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def hash_records(records: Iterable[dict]) -> str:
    """sha256 over JSON records (keys sorted), streaming: `records` may be a generator."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in `folder` (by extension, any case), sorted; dotfiles such as macOS '._x.jpg'
    resource forks are skipped."""
    return sorted(
        p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def progress_bar(
    enabled: bool, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it"
):
    """A tqdm progress bar on stderr over `iterable` (or updated by hand up to `total`); enabled=False: the same
    object, disabled, so it prints nothing (every command's progress=False)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=not enabled)


def display_path(path: str) -> str:
    """A printable, UTF-8-safe form of a path (non-UTF-8 bytes become \\xNN escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else every core)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cache_dir() -> Path:
    """The user's cache folder for embedlab (EMBEDLAB_CACHE, else XDG_CACHE_HOME/embedlab, else ~/.cache/embedlab)."""
    env = os.environ.get("EMBEDLAB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "embedlab"


def cache_ref(path: str | os.PathLike) -> str:
    """'cache:REL' for a file under the embedlab cache folder (so pages and sidecars do not show the user's home;
    models accept it as --pretrained), else the path unchanged."""
    p = Path(path)
    root = cache_dir()
    try:
        return "cache:" + p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def parse_bytes(size: "str | int") -> int:
    """'4G', '512M', '1.5G' or a number of bytes -> bytes."""
    from embedlab.errors import ConfigError

    if isinstance(size, (int, np.integer)):
        return int(size)
    text = str(size).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if mult > 1 else text) * mult)
    except ValueError:
        raise ConfigError(
            f"A memory size must look like 4G, 512M or a number of bytes. Got {size!r} instead."
        ) from None
