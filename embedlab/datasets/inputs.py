"""Image collections as people keep them, turned into a data manifest that `extract` reads.

Forms (`input_form` tells which one a path is):

- ``manifest``: a data manifest (.jsonl), used as it is;
- ``folder``: a folder of images, read recursively; role: the given one, else the folder's name; a subfolder
  becomes the metadata column ``folder``;
- ``table``: a CSV / TSV / parquet table with a column of image paths (``path``, or `path_column`), relative to the
  table's folder or absolute; columns role, split, group, pair_id, gt, source and license fill those manifest
  fields, every other column travels into the run's metadata;
- ``hf-dataset``: a Hugging Face dataset saved with ``save_to_disk`` (a Dataset or a DatasetDict folder), or its
  parquet files (one file, or a folder of them): the image column is decoded from its stored bytes, the other
  columns become metadata (offline; ``pip install 'embedlab[hf]'`` for the saved-to-disk form);
- ``webdataset``: tar shards (a .tar, a glob, or a folder of them), read in place.

Every form but a manifest is written as a manifest into the embedlab cache (``inputs/<key>/manifest.jsonl``; the
images held as bytes into ``inputs/images/``), and the run records where it came from (`Input.provenance`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from embedlab._io import IMAGE_EXTENSIONS, atomic_write_bytes, cache_dir, check_text_file, display_path
from embedlab.datasets.manifest import META_COLUMNS, WDS_COLUMNS, write_manifest
from embedlab.errors import ManifestError, MissingDependencyError

FORMS = ("manifest", "folder", "table", "hf-dataset", "webdataset")
INPUT_HELP = (
    "a folder of images (recursive), a manifest (.jsonl), a CSV/TSV/parquet table of image paths, a Hugging Face "
    "dataset saved to disk (or its parquet files), or webdataset tars"
)
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
# manifest fields a table column may fill directly; every other column becomes metadata
FIELD_COLUMNS = ("role", "split", "group", "pair_id", "gt", "source", "license")
# columns a run's metadata already has (and the bytes column): a user column of one of these names arrives as
# meta_<name>
RESERVED_COLUMNS = (*META_COLUMNS, "bytes", *WDS_COLUMNS)
_MAGIC = ((b"\xff\xd8", ".jpg"), (b"\x89PNG", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"II*\x00", ".tif"))


@dataclass
class Input:
    """An image collection resolved to a manifest: `manifest` is the file `extract` reads."""

    manifest: Path
    form: str
    source: str
    options: dict = field(default_factory=dict)
    count: int | None = None
    meta_columns: tuple = ()

    @property
    def provenance(self) -> dict:
        """What a run records about its input (manifest.json "input")."""
        return {
            "form": self.form,
            "source": self.source,
            "manifest": str(self.manifest),
            **({"options": self.options} if self.options else {}),
            **({"meta_columns": list(self.meta_columns)} if self.meta_columns else {}),
        }


def input_form(source: str | os.PathLike) -> str:
    """The form of an input path (see the module doc), or ManifestError in one line naming the forms accepted."""
    text = os.fspath(source)
    p = Path(text)
    if any(ch in text for ch in "*?[") and not p.exists():
        return "webdataset"
    if not p.exists():
        raise ManifestError(f"Input {display_path(text)} does not exist. Fix: pass {INPUT_HELP}.")
    if p.is_dir():
        if (p / "manifest.json").is_file() and (p / "shards").is_dir():
            return "run"
        if (p / "img_emb").is_dir() or (p / "embeddings").is_dir():
            return "embeddings"
        if any((p / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "hf-dataset"
        if any(p.glob("*.tar")):
            return "webdataset"
        if _parquet_files(p) and not _has_images(p):
            return "hf-dataset"
        return "folder"
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "manifest"
    if suffix == ".tar":
        return "webdataset"
    if suffix in TABLE_SUFFIXES:
        if suffix in (".parquet", ".pq") and _image_struct_column(_parquet_schema(p)) is not None:
            return "hf-dataset"
        return "table"
    if suffix in IMAGE_EXTENSIONS:
        raise ManifestError(
            f"{display_path(text)} is one image; an input is a collection. Fix: pass the folder that holds it "
            f"({display_path(str(p.parent))}), or {INPUT_HELP}."
        )
    if suffix in (".npy", ".npz"):
        raise ManifestError(
            f"{display_path(text)} holds vectors, not images. Fix: make a run of them with "
            f"`embedlab runs import {display_path(text)} --paths TABLE --model NAME --out RUN`."
        )
    raise ManifestError(f"{display_path(text)} is a {suffix or 'suffix-less'} file. Fix: pass {INPUT_HELP}.")


def as_manifest(
    source: str | os.PathLike,
    *,
    role: str | None = None,
    path_column: str | None = None,
    image_column: str | None = None,
) -> Input:
    """Any input form as a manifest (written into the cache unless it is one). Nothing is embedded here."""
    form = input_form(source)
    text = os.fspath(source)
    if form == "run":
        raise ManifestError(
            f"{display_path(text)} is a run folder (embeddings already made), not images. Fix: use it where a run "
            "is expected (`embedlab residual RUN ...`), or `embedlab compare`, which takes runs and images alike."
        )
    if form == "embeddings":
        raise ManifestError(
            f"{display_path(text)} holds embeddings made elsewhere (img_emb/ or embeddings/), not images. Fix: "
            f"`embedlab runs import {display_path(text)} --model NAME --out RUN`, then use RUN."
        )
    if form == "manifest":
        return Input(Path(text), form, str(Path(text).resolve()))
    resolved = text if form == "webdataset" and not Path(text).exists() else str(Path(text).resolve())
    options = {k: v for k, v in (("role", role), ("path_column", path_column), ("image_column", image_column)) if v}
    key = hashlib.sha1(json.dumps([form, resolved, options], sort_keys=True).encode()).hexdigest()[:16]
    out = cache_dir() / "inputs" / key / "manifest.jsonl"
    if form == "webdataset":
        from embedlab.datasets.webdataset import webdataset_manifest

        folder = Path(text) if Path(text).is_dir() else Path(text).parent  # a glob or one .tar: its folder
        default_role = folder.resolve().name
        _, report = webdataset_manifest(text, out, role=role or default_role or "images")
        return Input(out, form, resolved, options, report["count"])
    if form == "folder":
        records, meta_cols, root = _folder_records(Path(text), role)
    elif form == "table":
        records, meta_cols, root = _table_records(Path(text), role, path_column)
    else:
        records, meta_cols, root = _hf_records(Path(text), role, image_column)
    header = {"name": Path(resolved).stem or "input", "root": str(root), "input_form": form, "input_source": resolved}
    if meta_cols:
        header["meta_columns"] = list(meta_cols)
    write_manifest(out, records, header)
    return Input(out, form, resolved, options, len(records), tuple(meta_cols))


def input_entries(source: str | os.PathLike, selector=None, *, selector_given: bool = True, **options):
    """(manifest, entries) of any input form, for the commands that read image files (train, enhance, evaluate,
    synth-backlit): a manifest's entries picked by `selector` (all without one); another form's by `selector` only
    when the user gave it (`selector_given`; a folder's role is its name, so a default such as role=backlit would
    pick none). `options` go to `as_manifest`. The error when a selector picks none lists the labels present."""
    from embedlab.datasets.manifest import read_manifest

    src = as_manifest(source, **options)
    man = read_manifest(src.manifest)
    if selector is None or (src.form != "manifest" and not selector_given):
        return man, list(man.entries)
    try:
        return man, man.select(selector)
    except ManifestError as exc:  # name the input given, not the manifest written for it in the cache
        raise ManifestError(str(exc).replace(str(src.manifest), display_path(os.fspath(source)))) from None


def input_images(source: str | os.PathLike, selector=None, *, selector_given: bool = True, **options) -> list[str]:
    """Real file paths of the images of any input form (see `input_entries`)."""
    from embedlab.datasets.manifest import materialize

    man, entries = input_entries(source, selector, selector_given=selector_given, **options)
    return [materialize(man, e.path, e) for e in entries]


# ---------------------------------------------------------------- folders
def _folder_images(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [
            Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith(".")
        ]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def _folder_records(folder: Path, role: str | None):
    images = _folder_images(folder)
    if not images:
        raise ManifestError(
            f"Folder {display_path(str(folder))} holds no image ({', '.join(IMAGE_EXTENSIONS)}), in it or below. "
            f"Fix: pass the folder that holds the images, or {INPUT_HELP}."
        )
    name = folder.resolve().name or "images"
    nested = any(p.parent != folder for p in images)
    records = []
    for p in images:
        rel = p.relative_to(folder).as_posix()
        rec = {"path": rel, "role": role or name, "split": "train", "group": rel.rsplit(".", 1)[0], "source": name}
        if nested:
            rec["meta"] = {"folder": p.parent.relative_to(folder).as_posix() or "."}
        records.append(rec)
    return records, ("folder",) if nested else (), folder.resolve()


# ---------------------------------------------------------------- tables
def read_table(path: Path):
    import pandas as pd

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", encoding="utf-8")
    except UnicodeDecodeError:
        check_text_file(path, "a table of image paths (CSV/TSV)", "manifest", ManifestError)  # names line, offset
        raise ManifestError(f"Table {display_path(str(path))} is not UTF-8 text. Fix: save it as UTF-8.") from None
    except (ValueError, OSError) as exc:  # pandas / pyarrow: not a table of that kind
        line = " ".join(str(exc).split())[:160]
        raise ManifestError(
            f"Table {display_path(str(path))} could not be read as {path.suffix.lstrip('.')} ({line}). Fix: pass a "
            f"CSV, TSV or parquet table with one row per image."
        ) from None


def _table_records(path: Path, role: str | None, path_column: str | None):
    df = read_table(path)
    col = path_column or "path"
    if col not in df.columns:
        how = "'path_column'" if path_column is None else "'path_column' with one of them"
        raise ManifestError(
            f"Table {display_path(str(path))} has no column {col!r} (columns: {', '.join(map(str, df.columns))}). "
            f"Fix: name the column of image paths with {how}."
        ).naming("path_column")
    if not len(df):
        raise ManifestError(f"Table {display_path(str(path))} has no rows. Fix: list one image per row.")
    root = path.resolve().parent
    paths = [str(v) if v is not None and v == v else "" for v in df[col].tolist()]
    missing = [(i, p) for i, p in enumerate(paths) if not p or not os.path.isfile(os.path.join(root, p))]
    if missing:
        i, p = missing[0]
        raise ManifestError(
            f"{len(missing)} of {len(paths)} paths in column {col!r} of {display_path(str(path))} are not files "
            f"(first: row {i + 1}, {p!r}, looked for at {display_path(os.path.join(root, p))}). Fix: paths are "
            "relative to the table's folder or absolute; correct them or drop those rows."
        )
    seen: dict[str, int] = {}
    for i, p in enumerate(paths):
        if p in seen:
            raise ManifestError(
                f"{display_path(str(path))}: path {p!r} is listed twice (rows {seen[p] + 1} and {i + 1}). Fix: list "
                "each image once."
            )
        seen[p] = i
    default_role = role or path.stem
    records, meta_cols = _rows_to_records(df.drop(columns=[col]), paths, default_role, path.stem)
    return records, meta_cols, root


def _meta_name(column: str) -> str:
    return f"meta_{column}" if column in RESERVED_COLUMNS else column


def _json_value(v):
    """A cell as a JSON value (numpy scalars as Python numbers, NaN as null, anything else as its text)."""
    if v is None:
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (bool, int, float, str)):
        return v
    try:
        import pandas as pd

        if v is pd.NaT or (not isinstance(v, (list, dict, tuple)) and pd.isna(v)):
            return None
    except (TypeError, ValueError):
        pass
    return str(v) if not isinstance(v, (list, dict, tuple)) else json.dumps(v, default=str)


def _rows_to_records(df, paths: list[str], default_role: str, source: str, split: str = "train"):
    """Manifest records for the rows of `df` (the columns other than the path); returns (records, metadata columns)."""
    fields = [c for c in df.columns if c in FIELD_COLUMNS]
    meta_cols = [c for c in df.columns if c not in FIELD_COLUMNS]
    names = {c: _meta_name(str(c)) for c in meta_cols}
    records = []
    cols = {c: df[c].tolist() for c in df.columns}
    for i, p in enumerate(paths):
        rec = {"path": p, "role": default_role, "split": split, "source": source}
        for c in fields:
            v = _json_value(cols[c][i])
            if v is not None:
                rec[c] = str(v)
        rec["meta"] = {names[c]: _json_value(cols[c][i]) for c in meta_cols} if meta_cols else None
        records.append(rec)
    return records, tuple(names[c] for c in meta_cols)


# ---------------------------------------------------------------- Hugging Face datasets
def _parquet_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet")) or sorted(folder.glob("*/*.parquet"))


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def _parquet_schema(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except Exception:  # noqa: BLE001 - a damaged parquet file is reported when read as a table
        return None


def _image_struct_column(schema, wanted: str | None = None) -> str | None:
    """The column holding images as {bytes, path} structs (the Hugging Face Image feature in parquet)."""
    import pyarrow as pa

    if schema is None:
        return None
    for f in schema:
        if (wanted is None or f.name == wanted) and pa.types.is_struct(f.type):
            if {"bytes"} <= {f.type.field(i).name for i in range(f.type.num_fields)}:
                return f.name
    return None


def _image_file(data: bytes | None, orig: str | None, where: str, seen: dict) -> str:
    """A cache file holding an image's bytes (content-addressed; the k-th repeat of the same bytes in one dataset
    gets its own name, so every row stays a row), or the original file when no bytes are stored."""
    if data is None:
        if orig and os.path.isfile(orig):
            return os.path.abspath(orig)
        raise ManifestError(f"{where}: the image has neither stored bytes nor an existing file ({orig!r}).")
    digest = hashlib.sha1(data).hexdigest()
    ext = next((e for magic, e in _MAGIC if data.startswith(magic)), None)
    if ext is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        ext = ".webp"
    ext = ext or (Path(orig).suffix.lower() if orig and Path(orig).suffix.lower() in IMAGE_EXTENSIONS else ".png")
    k = seen[digest] = seen.get(digest, -1) + 1
    target = cache_dir() / "inputs" / "images" / digest[:2] / f"{digest}{f'-{k}' if k else ''}{ext}"
    if not target.exists():
        atomic_write_bytes(target, data)
    return str(target)


HF_BATCH = 512  # rows of a Hugging Face dataset held at once (their image bytes are written out batch by batch)


def _hf_batches(path: Path, image_column: str | None):
    """Yield (split, image column, DataFrame of up to HF_BATCH rows, the image column as {bytes, path} dicts) of a
    saved Hugging Face dataset (load_from_disk) or of its parquet files, never the whole dataset in memory."""
    import pyarrow.parquet as pq

    if path.is_dir() and any((path / n).is_file() for n in ("dataset_info.json", "state.json", "dataset_dict.json")):
        try:
            import datasets
        except ImportError:
            raise MissingDependencyError(
                f"{display_path(str(path))} is a Hugging Face dataset saved to disk; reading it needs the datasets "
                "package. Fix: pip install 'embedlab[hf]' (or pass its parquet files)."
            ) from None
        import pandas as pd

        loaded = datasets.load_from_disk(str(path))
        splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("train", loaded)]
        for split, ds in splits:
            col = image_column or next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
            if col is None or col not in ds.features:
                raise ManifestError(_no_image_column(path, list(ds.features), image_column)).naming("image_column")
            labels = {k: f for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
            for batch in ds.cast_column(col, datasets.Image(decode=False)).iter(batch_size=HF_BATCH):
                frame = pd.DataFrame(batch)
                for k, f in labels.items():  # class labels by name
                    frame[k] = [f.int2str(int(v)) if v is not None and v >= 0 else None for v in frame[k]]
                yield split, col, frame
        return
    for f in [path] if path.is_file() else _parquet_files(path):
        schema = _parquet_schema(f)
        col = _image_struct_column(schema, image_column)
        if col is None:
            names = list(schema.names) if schema is not None else []
            raise ManifestError(_no_image_column(f, names, image_column)).naming("image_column")
        split = f.stem.split("-")[0] if "-of-" in f.stem else (f.parent.name if f.parent != path else "train")
        for batch in pq.ParquetFile(f).iter_batches(batch_size=HF_BATCH):
            yield split, col, batch.to_pandas()


def _hf_records(path: Path, role: str | None, image_column: str | None):
    """Records of a saved Hugging Face dataset or of its parquet files; images written from their bytes."""
    name = path.stem if path.is_file() else path.resolve().name
    records, meta_cols, seen, offsets = [], (), {}, {}
    for split, col, frame in _hf_batches(path, image_column):
        first = offsets.get(split, 0)
        files = []
        for i, cell in enumerate(frame[col].tolist()):
            cell = cell or {}
            where = f"{display_path(str(path))} split {split} row {first + i}"
            files.append(_image_file(cell.get("bytes"), cell.get("path"), where, seen))
        frame = frame.drop(columns=[col])
        frame.insert(0, "source_row", range(first, first + len(frame)))
        offsets[split] = first + len(frame)
        recs, cols = _rows_to_records(frame, files, role or name, name, split=split)
        records += recs
        meta_cols = tuple(dict.fromkeys([*meta_cols, *cols]))
    if not records:
        raise ManifestError(f"{display_path(str(path))} holds no rows. Fix: pass a dataset with images.")
    return records, meta_cols, Path("/")


def _no_image_column(path: Path, columns: list, wanted: str | None) -> str:
    what = f"no column {wanted!r}" if wanted else "no image column"
    return (
        f"{display_path(str(path))} has {what} (columns: {', '.join(map(str, columns))}). Fix: name the column that "
        "holds the images with 'image_column' (a Hugging Face Image feature: {bytes, path})."
    )
