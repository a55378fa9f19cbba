"""webdataset: split from manifests.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

from embedlab._io import IMAGE_EXTENSIONS, display_path
from embedlab.datasets.manifest import FORMAT_VERSION, WDS_PREFIX, WDS_SEP
from embedlab.errors import ManifestError

# ---------------------------------------------------------------- webdataset (tar shards, as img2dataset writes)
WDS_HELP = "ROOT/*.tar or a glob (img2dataset output: KEY.jpg with KEY.json / KEY.txt per sample); read in place"
WDS_META_FIELDS = ("url", "caption", "key", "status", "width", "height")
_SIDECAR_MAX_BYTES = 1 << 20


def webdataset_tars(spec: str | os.PathLike) -> tuple[Path, list[Path]]:
    """The root folder and the sorted tar shards named by a folder (its *.tar) or a glob."""
    import glob

    text = os.fspath(spec)
    if os.path.isdir(text):
        root, tars = Path(text), sorted(Path(text).glob("*.tar"))
    else:
        tars = sorted(Path(p) for p in glob.glob(text) if p.endswith(".tar") and os.path.isfile(p))
        root = Path(os.path.commonpath([str(p.parent) for p in tars])) if tars else Path(os.path.dirname(text) or ".")
    if not tars:
        raise ManifestError(
            f"No .tar shard found at {display_path(text)}. Fix: pass the folder that holds the "
            "webdataset shards (00000.tar, ...) or a glob such as 'shards/*.tar'."
        )
    return root, tars


def wds_key(member: str) -> tuple[str, str]:
    """(sample key, extension) of a webdataset member: the key is the name up to the first dot of its basename."""
    folder, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def scan_tar(tar_path: Path, notes: list[str]):
    """Yield (key, {ext: (member, offset, size, sidecar bytes or None)}) per sample, streaming through the tar.

    Members of one sample are contiguous (the webdataset convention). A damaged tar ends the scan with a note;
    samples read before the damage are kept."""
    import tarfile

    current, parts = None, {}
    try:
        with tarfile.open(tar_path, mode="r|", encoding="utf-8", errors="surrogateescape") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                key, ext = wds_key(info.name)
                if key != current and parts:
                    yield current, parts
                    parts = {}
                current = key
                side = None
                if ext in ("json", "txt") and info.size <= _SIDECAR_MAX_BYTES:
                    side = tf.extractfile(info).read()
                parts[ext] = (info.name, info.offset_data, info.size, side)
                tf.members = []  # tarfile keeps every member it has seen; a stream must not
    except (tarfile.TarError, OSError, EOFError) as exc:
        notes.append(f"{display_path(str(tar_path))}: damaged after the samples read so far ({exc})")
    if parts:
        yield current, parts


def _wds_meta(parts: dict) -> dict | None:
    meta: dict = {}
    if parts.get("json") and parts["json"][3]:
        try:
            js = json.loads(parts["json"][3].decode("utf-8", "surrogateescape"))
            meta = {k: js[k] for k in WDS_META_FIELDS if isinstance(js, dict) and js.get(k) is not None}
        except ValueError:
            meta = {"status": "unreadable-json"}
    if "caption" not in meta and parts.get("txt") and parts["txt"][3] is not None:
        meta["caption"] = parts["txt"][3].decode("utf-8", "surrogateescape")
    return meta or None


def iter_webdataset_records(spec, role: str = "welllit", split: str = "train", source: str | None = None, **_):
    """(root, record iterator, notes) for the tar shards of `spec`: one record per sample with an image member."""
    root, tars = webdataset_tars(spec)
    notes: list[str] = []
    exts = {e.lstrip(".") for e in IMAGE_EXTENSIONS}

    def records():
        for tar in tars:
            rel = os.path.relpath(tar, root)
            for key, parts in scan_tar(tar, notes):
                image_ext = next((e for e in parts if e in exts), None)
                if image_ext is None:
                    notes.append(f"{display_path(rel)}: sample {display_path(key)!r} has no image member")
                    continue
                member, offset, size, _ = parts[image_ext]
                yield {
                    "path": f"{WDS_PREFIX}{rel}{WDS_SEP}{member}",
                    "role": role,
                    "split": split,
                    "group": key,
                    "source": source or root.name,
                    "meta": _wds_meta(parts),
                    "tar": {"file": rel, "member": member, "offset": offset, "size": size},
                }

    return root, records(), notes


def webdataset_manifest(
    spec, out: Path, role: str = "welllit", split: str | None = None, source: str | None = None, **_
) -> tuple[Path, dict]:
    """Write a manifest for webdataset tar shards, one line at a time (the records are never all in memory)."""
    root, records, notes = iter_webdataset_records(spec, role=role, split=split or "train", source=source)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "embedlab_manifest": FORMAT_VERSION,
        "name": out.stem,
        "layout": "webdataset",
        "root": os.path.relpath(root.resolve(), out.resolve().parent),
    }
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    count = 0
    with open(tmp, "w", encoding="ascii") as fh:  # json.dumps escapes every non-ASCII character
        fh.write(json.dumps(header) + "\n")
        for rec in records:
            fh.write(json.dumps({k: v for k, v in rec.items() if v is not None}) + "\n")
            count += 1
    if not count:
        tmp.unlink()
        raise ManifestError(
            f"No image member in the tar shards at {display_path(os.fspath(spec))}. Fix: check the shards ({WDS_HELP})."
        )
    os.replace(tmp, out)
    return out, {"count": count, "notes": notes}
