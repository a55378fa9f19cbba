"""Data manifests: one JSON Lines format for every dataset, validated, with generators for common layouts.

Format (see data_manifests/README.md): an optional header line ``{"embedlab_manifest": 1, "name": ...,
"root": ...}`` and one record per image::

    {"path": "BAID/test/input/0152.png", "role": "backlit", "split": "test", "group": "0152",
     "pair_id": "baid:0152", "gt": "BAID/test/gt/0152.png", "source": "BAID", "license": "research-only"}

`path` and `gt` are relative to `root` (itself relative to the manifest's folder), absolute, or virtual:
``pkg:skimage/astronaut`` (a photo shipped inside a package) or ``synth:<id>`` with a ``synth`` object
``{"recipe": "A", "source": "pkg:sklearn/china.jpg", "seed": 3}`` that is rendered deterministically into
the cache on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from embedlab._io import atomic_write_bytes, cache_dir, decode_utf8, display_path, hash_records, iter_text_lines
from embedlab.datasets import photos
from embedlab.errors import ManifestError

FORMAT_VERSION = 1
MANIFEST_WHAT = "a data manifest (.jsonl: one JSON record per line)"
WDS_PREFIX = "wds:"  # a virtual entry: a member of a webdataset tar, "wds:TAR::MEMBER"
WDS_SEP = "::"
# a manifest line's fields that describe its set and travel into the run's metadata, and all its fields
SET_FIELDS = ("role", "split", "group", "pair_id", "gt", "source")
RECORD_FIELDS = ("path", *SET_FIELDS, "license", "params", "synth", "tar", "meta")
# the columns every run's metadata has (written by the extraction's rows), and those of webdataset members
IMAGE_COLUMNS = (
    "content_sha1", "width", "height", "format", "mode", "jpeg_quality", "mean_luma", "frames", "notes", "decoder"
)  # fmt: skip
META_COLUMNS = ("row_id", "path", "file", *IMAGE_COLUMNS, *SET_FIELDS, "manifest_line")
WDS_COLUMNS = ("url", "caption", "key", "status", "source_width", "source_height")


@dataclass
class ManifestEntry:
    path: str
    role: str
    split: str = "train"
    group: str | None = None
    pair_id: str | None = None
    gt: str | None = None
    source: str | None = None
    license: str | None = None
    params: dict | None = None
    synth: dict | None = None
    tar: dict | None = None  # webdataset member: {"file": tar path (like `path`), "member", "offset", "size"}
    meta: dict | None = None  # per-image source metadata (img2dataset's url, caption, key, status, width, height)
    line: int = 0

    def to_record(self) -> dict:
        rec = {k: getattr(self, k) for k in RECORD_FIELDS}
        return {k: v for k, v in rec.items() if v is not None}


@dataclass
class Manifest:
    """A parsed manifest. `entries` keep their line numbers for error messages."""

    path: Path | None
    header: dict = field(default_factory=dict)
    entries: list[ManifestEntry] = field(default_factory=list)

    @property
    def root(self) -> Path:
        base = self.path.parent if self.path is not None else Path.cwd()
        return (base / self.header.get("root", ".")).resolve()  # an absolute root replaces the base

    @property
    def name(self) -> str:
        return str(self.header.get("name") or (self.path.stem if self.path else "manifest"))

    def where(self, entry: ManifestEntry) -> str:
        return f"{self.path or '<manifest>'} line {entry.line}"

    def resolve(self, path: str) -> str:
        """Absolute file-system path for a record path (virtual paths are returned unchanged)."""
        if is_virtual(path) or os.path.isabs(path):
            return path
        return os.path.join(str(self.root), path)

    def roles(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e.role] = counts.get(e.role, 0) + 1
        return counts

    def select(self, selector=None, *, role: str | None = None, split: str | None = None) -> list[ManifestEntry]:
        """Entries a selector picks (a `Selector`, or its text: 'backlit', 'role=backlit,split=test'), or those with
        the given role and/or split; an error names the manifest and the roles it has."""
        from embedlab.datasets.selector import Selector

        clauses = [f"role={role}"] * (role is not None) + [f"split={split}"] * (split is not None)
        if selector is None and not clauses:
            return list(self.entries)
        sel = Selector.parse(selector if selector is not None else ",".join(clauses))
        out = sel.filter(self.entries)
        if not out:
            splits = sorted({e.split for e in self.entries})
            wanted = " and ".join(f"{c}={v!r}" for c, v in sel.clauses)
            raise ManifestError(
                f"No image in {self.path} has {wanted}. Roles present: {self.roles()}; splits: {splits}. Fix: pass one "
                "of those labels, or add records with those values "
                f'(e.g. "role": "{dict(sel.clauses).get("role", "backlit")}") to the manifest.'
            )
        return out

    def fingerprint(self) -> str:
        return hash_records(e.to_record() for e in self.entries)


def is_virtual(path: str) -> bool:
    return path.startswith("pkg:") or path.startswith("synth:") or path.startswith(WDS_PREFIX)


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> Manifest:
    """Parse and validate a manifest. Raises ManifestError naming the line and the fix."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(
            f"Manifest {path} does not exist. Create one with `embedlab manifest LAYOUT ROOT --out {path}`."
        )
    manifest = Manifest(path=path)
    seen: dict[str, int] = {}
    for lineno, _, raw in iter_text_lines(path, MANIFEST_WHAT, "manifest", ManifestError):
        item = parse_line(path, lineno, raw, after_entries=bool(manifest.entries))
        if item is None:
            continue
        if isinstance(item, dict):
            manifest.header = item
            continue
        entry = item
        if entry.path in seen:
            raise _duplicate(path, lineno, entry.path, seen[entry.path])
        seen[entry.path] = lineno
        manifest.entries.append(entry)
    if not manifest.entries:
        raise ManifestError(f"{path} lists zero images. Fix: add records, or regenerate it with `embedlab manifest`.")
    if check_files:
        validate_files(manifest)
    return manifest


def parse_line(path, lineno: int, raw: str, after_entries: bool = False):
    """One manifest line: None (blank or comment), the header (a dict) or a validated ManifestEntry."""
    text = raw.strip()
    if not text or text.startswith("#"):
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{path} line {lineno}: not valid JSON ({exc.msg}). Fix: one JSON object per line."
        ) from None
    if not isinstance(rec, dict):
        raise ManifestError(f"{path} line {lineno}: expected a JSON object, got {type(rec).__name__}.")
    if "embedlab_manifest" in rec:
        if after_entries:
            raise ManifestError(f"{path} line {lineno}: the header must be the first record.")
        if rec["embedlab_manifest"] != FORMAT_VERSION:
            raise ManifestError(
                f"{path} line {lineno}: unsupported manifest version {rec['embedlab_manifest']!r} "
                f"(expected {FORMAT_VERSION})."
            )
        return rec
    unknown = set(rec) - set(RECORD_FIELDS)
    if unknown:
        raise ManifestError(
            f"{path} line {lineno}: unknown field(s) {sorted(unknown)}. Allowed: {list(RECORD_FIELDS)}."
        )
    for key in ("path", "role"):
        if not isinstance(rec.get(key), str) or not rec[key]:
            raise ManifestError(
                f'{path} line {lineno}: missing "{key}" (a non-empty string). Every record needs path and role.'
            )
    entry = ManifestEntry(line=lineno, **{k: rec[k] for k in rec})
    entry.split = entry.split or "train"
    if entry.path.startswith("synth:") and not isinstance(entry.synth, dict):
        raise ManifestError(
            f'{path} line {lineno}: virtual path {entry.path!r} needs a "synth" object '
            'like {"recipe": "A", "source": "pkg:skimage/astronaut", "seed": 0}.'
        )
    return entry


def _duplicate(path, lineno: int, value: str, first: int) -> ManifestError:
    return ManifestError(
        f"{path} line {lineno}: duplicate path {value!r} (first on line {first}). "
        'Fix: list each image once; use "group" to tie variants of one scene together.'
    )


def validate_files(manifest: Manifest) -> None:
    """Check that the root exists and that every plain path and ground truth exists."""
    if not all(is_virtual(e.path) or os.path.isabs(e.path) for e in manifest.entries) and not manifest.root.is_dir():
        raise ManifestError(
            f'{manifest.path}: root folder {manifest.root} does not exist. Fix: set "root" in the header '
            "line to the dataset folder (relative to the manifest's folder), or move the manifest."
        )
    missing = []
    for e in manifest.entries:
        for key in ("path", "gt"):
            value = getattr(e, key)
            if value is None or is_virtual(value):
                continue
            full = manifest.resolve(value)
            if not os.path.lexists(full):
                what = "image" if key == "path" else "paired ground truth (broken pair)"
                missing.append(f"{manifest.where(e)}: {what} {display_path(full)} not found")
    for tar in sorted({e.tar["file"] for e in manifest.entries if e.tar}):
        if not os.path.isfile(manifest.resolve(tar)):
            missing.append(f"{manifest.path}: webdataset shard {display_path(manifest.resolve(tar))} not found")
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ManifestError(
            "; ".join(missing[:5]) + more + '. Fix: correct the paths or the header\'s "root", or drop those records.'
        )


def write_manifest(path: str | os.PathLike, records: Iterable[dict], header: dict | None = None) -> Path:
    path = Path(path)
    lines = [json.dumps({"embedlab_manifest": FORMAT_VERSION, **(header or {})})]
    lines += [json.dumps({k: v for k, v in r.items() if v is not None}) for r in records]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    return path


# ---------------------------------------------------------------- virtual images
def materialize(manifest: Manifest, value: str, entry: ManifestEntry | None = None) -> str:
    """A real file path for a record path, rendering `pkg:` and `synth:` images into the cache once."""
    if value.startswith("pkg:"):
        return _cached_png(f"pkg/{value[4:].replace('/', '_')}.png", lambda: photos.load_photo(value))
    if value.startswith("synth:"):
        spec = entry.synth if entry is not None else None
        if not spec:
            raise ManifestError(f"{value!r} has no synth spec")
        key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
        return _cached_png(f"synth/{value[6:].replace('/', '_')}_{key}.png", lambda: render_synth(manifest, spec))
    return manifest.resolve(value)


def render_synth(manifest: Manifest, spec: dict) -> np.ndarray:
    """Render a synth spec: recipe A/B/C, or 'crop' (a seeded crop + flip, for well-lit variants)."""
    from embedlab.datasets import synth
    from embedlab.datasets.images import load_rgb

    src = spec["source"]
    base = photos.load_photo(src) if src.startswith("pkg:") else load_rgb(manifest.resolve(src))
    recipe = str(spec.get("recipe", "A")).upper()
    if spec.get("crop_seed") is not None:
        base = seeded_crop(base, int(spec["crop_seed"]))
    out = base if recipe == "NONE" else synth.render(base, recipe, int(spec.get("seed", 0)), spec.get("ev")).image
    edit = spec.get("edit")  # a non-lighting edit on top (BLUR or JPEG: the audit world's controls)
    return out if not edit else synth.render(out, str(edit).upper()).image


def seeded_crop(u8: np.ndarray, seed: int, min_frac: float = 0.75) -> np.ndarray:
    """A deterministic random crop (75-100% per side) with a random horizontal flip."""
    rng = np.random.default_rng(seed)
    h, w, _ = u8.shape
    fh, fw = rng.uniform(min_frac, 1.0), rng.uniform(min_frac, 1.0)
    ch, cw = max(8, int(h * fh)), max(8, int(w * fw))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = u8[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _cached_png(rel: str, make) -> str:
    from PIL import Image

    target = cache_dir() / "images" / rel
    if not target.exists():
        import io

        buf = io.BytesIO()
        Image.fromarray(make()).save(buf, format="PNG")
        atomic_write_bytes(target, buf.getvalue())
    return str(target)


# ---------------------------------------------------------------- streaming manifests (millions of lines)
class LazyEntries:
    """A read-only sequence of manifest entries kept as byte offsets into the manifest file (12 bytes per entry):
    an entry is parsed when it is asked for, so a manifest of millions of lines never sits in memory as objects.
    Safe across fork (each process opens its own handle) and threads (one lock per process)."""

    def __init__(self, path: Path, offsets: np.ndarray, lines: np.ndarray, stat: tuple | None = None):
        self.path, self.offsets, self.lines = Path(path), offsets, lines
        self.stat = stat  # (host, st_dev, st_ino, st_size, st_mtime_ns) at scan time: offsets are only valid then
        self._fh = self._lock = self._pid = None

    def __len__(self) -> int:
        return len(self.offsets)

    def _handle(self):
        import threading

        if self._fh is None or self._pid != os.getpid():
            fh = open(self.path, "rb")
            if self.stat is not None and not stamp_matches(self.stat, fh.fileno()):
                fh.close()
                raise ManifestError(
                    f"Manifest {self.path} changed (or was replaced) after it was read; its line offsets "
                    "no longer hold. Fix: do not edit a manifest while an extract uses it; rerun."
                )
            self._fh, self._lock, self._pid = fh, threading.Lock(), os.getpid()
        return self._fh, self._lock

    def __getitem__(self, i: int) -> ManifestEntry:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        fh, lock = self._handle()
        with lock:
            fh.seek(int(self.offsets[i]))
            raw = fh.readline()
        line = int(self.lines[i])
        text = decode_utf8(
            raw, self.path, MANIFEST_WHAT, "manifest", line=line, offset=int(self.offsets[i]), error=ManifestError
        )
        return parse_line(self.path, line, text)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self):
        return {
            "path": self.path,
            "offsets": self.offsets,
            "lines": self.lines,
            "stat": self.stat,
            "_fh": None,
            "_lock": None,
            "_pid": None,
        }


def file_stamp(fd: int) -> tuple:
    """(host, st_dev, st_ino, st_size, st_mtime_ns) of an open file."""
    import socket

    st = os.fstat(fd)
    return (socket.gethostname(), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def stamp_matches(stamp: tuple, fd: int) -> bool:
    """The open file is the one `stamp` describes. st_dev is compared on the host that took the stamp only (a shared
    file system has another device number on each node of a cluster)."""
    now = file_stamp(fd)
    return now[2:] == tuple(stamp[2:]) and (now[0] != stamp[0] or now[1] == stamp[1])


@dataclass
class ManifestScan:
    """What one streaming pass over a manifest yields (see `scan_manifest`)."""

    manifest: Manifest  # entries: a LazyEntries of the selected records
    fingerprint: str  # Manifest.fingerprint() of the whole manifest
    input_hash: str  # the same hash over the selected records only
    roles: dict
    with_meta: int  # selected records that carry source metadata (webdataset .json)


def scan_manifest(
    path: str | os.PathLike, roles: list[str] | None = None, check_files: bool = True, chunk: int = 4096
) -> ManifestScan:
    """Validate a manifest like `read_manifest` in one streaming pass, keeping only the byte offsets of the records
    whose role is in `roles` (all when None), and the hashes a run's identity needs."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(
            f"Manifest {path} does not exist. Create one with `embedlab manifest LAYOUT ROOT --out {path}`."
        )
    from array import array

    man = Manifest(path=path)
    offsets, lines, keys = array("q"), array("i"), array("q")  # 20 bytes per line while scanning
    whole, chosen, counts, pending, with_meta = hashlib.sha256(), hashlib.sha256(), {}, [], 0
    with open(path, "rb") as fh:
        stamp = file_stamp(fh.fileno())
    for lineno, at, raw in iter_text_lines(path, MANIFEST_WHAT, "manifest", ManifestError):
        item = parse_line(path, lineno, raw, after_entries=bool(counts))
        if isinstance(item, dict):
            man.header = item
        elif item is not None:
            blob = json.dumps(item.to_record(), sort_keys=True).encode("utf-8", "surrogateescape")
            whole.update(blob)
            counts[item.role] = counts.get(item.role, 0) + 1
            keys.append(hash(item.path))  # 64-bit, per process
            if not roles or item.role in roles:
                chosen.update(blob)
                offsets.append(at)
                lines.append(lineno)
                with_meta += item.meta is not None
                if check_files:
                    pending.append(item)
            if check_files and len(pending) >= chunk:
                validate_files(Manifest(path, man.header, pending))
                pending = []
    if not counts:
        raise ManifestError(f"{path} lists zero images. Fix: add records, or regenerate it with `embedlab manifest`.")
    if check_files and pending:
        validate_files(Manifest(path, man.header, pending))
    _check_duplicates(path, np.frombuffer(keys, dtype=np.int64))
    man.entries = LazyEntries(
        path, np.frombuffer(offsets, dtype=np.int64).copy(), np.frombuffer(lines, dtype=np.int32).copy(), stamp
    )
    return ManifestScan(man, whole.hexdigest(), chosen.hexdigest(), counts, with_meta)


def _check_duplicates(path: Path, keys: np.ndarray) -> None:
    """Duplicate paths, found from 64-bit hashes (sorted); a hash collision is confirmed on the paths themselves."""
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if not len(same):
        return
    suspects = set(order[same].tolist()) | set(order[same + 1].tolist())
    seen: dict[str, int] = {}
    k = -1
    for lineno, _, raw in iter_text_lines(path, MANIFEST_WHAT, "manifest", ManifestError):
        item = parse_line(path, lineno, raw)
        if isinstance(item, ManifestEntry):
            k += 1
            if k in suspects:
                if item.path in seen:
                    raise _duplicate(path, lineno, item.path, seen[item.path])
                seen[item.path] = lineno
