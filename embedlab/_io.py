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
def atomic_path(path: str | os.PathLike, suffix: str = "", needed: int | None = None) -> Iterator[Path]:
    """A temporary path beside `path` (ending in `suffix`, for writers that insist on one) for code that writes
    by file name; it replaces `path` (os.replace) when the block ends, and is removed if the block raises. A full
    disk (ENOSPC, quota, numpy's short write, FAISS's write error) raises DiskFullError in one line
    (`disk_full_error`; `needed`: the bytes the file takes, when known)."""
    from embedlab.errors import DiskFullError

    path = Path(path)
    check_output_dir(path.parent, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, DiskFullError) or not is_disk_full(exc, path.parent, needed):
            raise
        tmp.unlink(missing_ok=True)
        raise disk_full_error(path, needed) from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, needed=len(data)) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def is_disk_full(exc: BaseException, folder: str | os.PathLike | None = None, needed: int | None = None) -> bool:
    """Whether a write failed for want of space: ENOSPC or EDQUOT, FAISS's "No space left on device", or numpy's
    errno-less "N requested and M written" where `folder`'s disk has less than N (or `needed`) bytes free."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    if isinstance(exc, RuntimeError):
        return "No space left on device" in text or "Disk quota exceeded" in text
    if isinstance(exc, OSError) and exc.errno is None and " requested and " in text and " written" in text:
        if folder is None:
            return True
        try:
            asked = int(text.split(" requested", 1)[0].split()[-1])
            return free_bytes(folder) < max(asked, needed or 0)
        except (ValueError, IndexError, OSError):
            return True
    return False


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes (for this user) on the disk holding `path` (its nearest existing folder)."""
    import shutil

    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def disk_full_error(path: str | os.PathLike, needed: int | None = None):
    """The one-line DiskFullError for a write of `path` that found its disk full: the folder and its mount point,
    the space free, what the step needed (when known), and that rerunning after freeing space resumes."""
    from embedlab.errors import DiskFullError

    path = Path(path)
    folder = path.parent
    mount = folder
    while not mount.exists() and mount != mount.parent:
        mount = mount.parent
    mount = Path(os.path.abspath(mount))
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        free = f"{human_bytes(free_bytes(folder))} free"
    except OSError:
        free = "free space unknown"
    need = f"; this step needed {human_bytes(needed)}" if needed else ""
    return DiskFullError(
        f"The disk holding {display_path(str(folder))} (mounted at {display_path(str(mount))}) is full ({free}{need}): "
        f"{display_path(path.name)} was not written. Free space there and rerun the same command: finished work is "
        "kept and it resumes from there.",
        str(path),
    )


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


def read_json(path: str | os.PathLike, what: str = "a JSON file (UTF-8 text)", param: str | None = None) -> Any:
    """A JSON file, read as UTF-8 (`read_text`: a binary file or a non-UTF-8 byte is refused in one line)."""
    return json.loads(read_text(path, what, param))


# ---------------------------------------------------------------- text files: UTF-8 or a one-line refusal
# what a file that should be text is, told by its first bytes (the formats people pass by mistake)
BINARY_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x93NUMPY", "a NumPy array (.npy)"),
    (b"PK\x03\x04", "a zip archive (.zip, .npz, ...)"),
    (b"PK\x05\x06", "a zip archive (.zip, .npz, ...)"),
    (b"\x1f\x8b", "a gzip-compressed file (decompress it first)"),
    (b"(\xb5/\xfd", "a zstd-compressed file (decompress it first)"),
    (b"PAR1", "a Parquet table"),
    (b"%PDF-", "a PDF document"),
    (b"\x7fELF", "an executable (ELF)"),
)


def sniff_binary(head: bytes) -> str | None:
    """What kind of binary file starts with `head` (its first 16 bytes or more), or None when it may be text."""
    for magic, kind in BINARY_MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if b"\x00" in head:
        return "a binary file (it holds NUL bytes)"
    return None


def _expected(what: str, param: str | None) -> str:
    """'manifest' takes WHAT (the CLI shows the parameter as its flag) / Expected WHAT."""
    return f"{param!r} takes {what}" if param else f"Expected {what}"


def _text_error(message: str, param: str | None, error: type | None):
    from embedlab.errors import InputFileError

    exc = (error or InputFileError)(message)
    return exc.naming(param) if param else exc


def refuse_binary(path, head: bytes, what: str, param: str | None = None, error: type | None = None) -> None:
    """Raise (InputFileError, or `error`) in one line when `head`, the start of the file `path`, is a known binary
    format: '`param` takes WHAT; PATH is a JPEG image.'"""
    kind = sniff_binary(head)
    if kind is not None:
        raise _text_error(f"{_expected(what, param)}; {display_path(os.fspath(path))} is {kind}.", param, error)


def decode_utf8(
    raw: bytes,
    path,
    what: str,
    param: str | None = None,
    *,
    line: int | None = None,
    offset: int = 0,
    error: type | None = None,
) -> str:
    """`raw` (a whole file, or its line `line` starting at byte `offset`) as UTF-8 text; a byte that is not
    UTF-8 raises (InputFileError, or `error`) in one line naming the file, the line and the byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start
        line_no = line if line is not None else raw.count(b"\n", 0, at) + 1
        shown = display_path(os.fspath(path))
        raise _text_error(
            f"{_expected(what, param)} in UTF-8; {shown} is not UTF-8: line {line_no}, byte offset {offset + at} "
            f"holds 0x{raw[at]:02x} (Latin-1 or another legacy encoding?). Fix: convert it to UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8 {shown} > NEW) and pass the new file.",
            param,
            error,
        ) from None


def read_text(path: str | os.PathLike, what: str, param: str | None = None, error: type | None = None) -> str:
    """A whole text file as UTF-8: a known binary format (JPEG, PNG, .npy, zip, gzip, Parquet, ...) or a byte
    that is not UTF-8 is refused in one line that names the file (and the line and byte offset) and says what
    was expected (`what`, the text of `param` where a parameter passed the file). A UTF-8 BOM is dropped."""
    with open(path, "rb") as fh:
        data = fh.read()
    refuse_binary(path, data[:16], what, param, error)
    return decode_utf8(data, path, what, param, error=error).removeprefix("\ufeff")


def check_text_file(path: str | os.PathLike, what: str, param: str | None = None, error: type | None = None) -> None:
    """Stream the whole file through the checks of `read_text` (for readers that parse the file themselves, e.g.
    pandas: call it when they fail to decode, to name the line and byte offset)."""
    for _ in iter_text_lines(path, what, param, error):
        pass


def iter_text_lines(path: str | os.PathLike, what: str, param: str | None = None, error: type | None = None):
    """Stream a text file as (line number, byte offset of the line, line as UTF-8 text with its newline), with the
    checks of `read_text` (a binary format from its first bytes; each line's bytes as they come)."""
    with open(path, "rb") as fh:
        refuse_binary(path, fh.read(16), what, param, error)
        fh.seek(0)
        at = 0
        for lineno, raw in enumerate(fh, 1):
            text = decode_utf8(raw, path, what, param, line=lineno, offset=at, error=error)
            yield lineno, at, text.removeprefix("\ufeff") if lineno == 1 else text
            at += len(raw)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, ".npy", needed=int(array.nbytes) + 128) as tmp:
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


def prefetched(items: Iterable, depth: int = 1) -> Iterator:
    """`items` produced in a background thread, up to `depth` ahead of the consumer: a reader's I/O (which releases
    the GIL) overlaps the work on the item before. A producer that reuses buffers needs `depth + 2` of them in turn
    (one with the consumer, `depth` queued, one being filled). An exception in the producer is raised in the
    consumer; a consumer that stops early stops the producer."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((done, exc))

    worker = threading.Thread(target=produce, daemon=True, name="embedlab-prefetch")
    worker.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
