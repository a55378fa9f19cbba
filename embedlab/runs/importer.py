"""`embedlab runs import`: embeddings made elsewhere as an ordinary run folder.

Sources: a clip-retrieval / img2dataset output folder (``img_emb/img_emb_0.npy ...`` with ``metadata/metadata_0.parquet
...``, also under ``embeddings/``), a plain ``.npy`` of vectors with a table of paths (`paths`), or a parquet table
with a column of vectors (and of paths). The run records where the vectors came from and the model the user named
(its weights recorded as ``unverified:MODEL/TAG``: never seen); rows without a vector are kept as skipped rows
(errors.csv, reason ``no-vector``); vectors are re-normalised only when they are not unit length (recorded). The
shards are written with `write_shard` and finalised like `extract`, so everything downstream reads it as any run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embedlab._io import atomic_write_json, display_path, load_npy
from embedlab.datasets.inputs import FIELD_COLUMNS
from embedlab.datasets.manifest import META_COLUMNS
from embedlab.errors import ConfigError, IncompatibleRunError, InputFileError
from embedlab.runs.store import Run

log = logging.getLogger(__name__)
UNVERIFIED_WEIGHTS = "unverified:"  # weights_sha256 "unverified:MODEL/TAG" (models.load_verified accepts it)
PATH_CANDIDATES = ("image_path", "path", "filepath", "file_name", "file", "url", "key")
VECTOR_CANDIDATES = ("embedding", "embeddings", "vector", "vectors", "img_emb", "emb")
UNIT_TOLERANCE = {"float16": 2e-3, "float32": 1e-4}


@dataclass
class Part:
    """One file of vectors and its table (one row per vector)."""

    vectors_file: Path
    vectors: np.ndarray
    table_file: Path
    table: pd.DataFrame


def parse_model(model: str) -> tuple[str, str]:
    """'NAME[:TAG]' -> (name, tag); hf-hub:ORG/REPO is a name (tag 'hf-hub')."""
    if model.startswith("hf-hub:"):
        return model, "hf-hub"
    name, _, tag = model.partition(":")
    if not name:
        raise ConfigError(
            f"The 'model' {model!r} names no model. Fix: 'model' as NAME[:TAG], e.g. ViT-B-32:openai."
        ).naming("model")
    return name, tag or "unknown"


def config_dim(name: str) -> int | None:
    """The embedding dimension of an open_clip model config (embedlab's own included), without weights; None when
    the model config is not known here (an hf-hub model, a name open_clip does not know)."""
    from embedlab import models

    if name.startswith("hf-hub:"):
        return None
    models.register_configs()
    import open_clip

    cfg = open_clip.get_model_config(name)
    return int(cfg["embed_dim"]) if cfg and cfg.get("embed_dim") else None


def _numbered(folder: Path, stem: str, suffix: str) -> dict[int, Path]:
    pat = re.compile(rf"^{stem}_(\d+){re.escape(suffix)}$")
    return {int(m.group(1)): p for p in folder.iterdir() if (m := pat.match(p.name))}


def _load_vectors(path: Path) -> np.ndarray:
    arr = load_npy(path, expect="a float array of shape (images, dim)")
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise InputFileError(
            f"{display_path(str(path))} holds an array of shape {arr.shape} ({arr.dtype}); vectors are a float "
            "array of shape (images, dim). Fix: pass the embeddings file."
        )
    return arr


def _parts(source: Path, paths: str | os.PathLike | None) -> list[Part]:
    from embedlab.datasets.inputs import read_table

    if source.is_dir():
        if not (source / "img_emb").is_dir() and (source / "embeddings").is_dir():
            source = source / "embeddings"
        emb_dir, meta_dir = source / "img_emb", source / "metadata"
        if not emb_dir.is_dir():
            raise ConfigError(
                f"{display_path(str(source))} is a folder without img_emb/ (the clip-retrieval layout). Fix: pass a "
                "clip-retrieval output folder, or a .npy of vectors with a 'paths' table; a folder of images is "
                "embedded with `embedlab extract -m FOLDER ...`."
            )
        npys = _numbered(emb_dir, "img_emb", ".npy")
        metas = _numbered(meta_dir, "metadata", ".parquet") if meta_dir.is_dir() else {}
        if not npys:
            raise ConfigError(f"{display_path(str(emb_dir))} holds no img_emb_N.npy file. Fix: check the folder.")
        out = []
        for k in sorted(npys):
            if k not in metas:
                raise ConfigError(
                    f"{display_path(str(npys[k]))} has no metadata/metadata_{k}.parquet beside it (clip-retrieval "
                    "writes one per vector file, with the image paths). Fix: copy the metadata folder too."
                )
            out.append(Part(npys[k], _load_vectors(npys[k]), metas[k], read_table(metas[k])))
        return out
    if source.suffix.lower() == ".npy":
        if paths is None:
            raise ConfigError(
                f"{display_path(str(source))} holds vectors only; which image each row is comes from a table. Fix: "
                "add a 'paths' table (CSV or parquet, one row per vector, with a column of image paths)."
            ).naming("paths")
        return [Part(source, _load_vectors(source), Path(paths), read_table(Path(paths)))]
    if source.suffix.lower() in (".parquet", ".pq"):
        table = read_table(source)
        col = next((c for c in VECTOR_CANDIDATES if c in table.columns), None)
        if col is None:
            col = next(
                (c for c in table.columns if len(table) and isinstance(table[c].iloc[0], (list, np.ndarray))), None
            )
        if col is None:
            raise ConfigError(
                f"{display_path(str(source))} has no column of vectors (columns: {', '.join(map(str, table.columns))})."
                " Fix: store the vectors as a list column named embedding, or pass a .npy with a 'paths' table."
            )
        vecs = np.stack([np.asarray(v, np.float32) if v is not None else _nan_row(table[col]) for v in table[col]])
        rest = table.drop(columns=[col])
        if paths is not None:
            rest = read_table(Path(paths))
        return [Part(source, vecs, Path(paths) if paths is not None else source, rest)]
    raise ConfigError(
        f"{display_path(str(source))} is not a source of vectors. Fix: pass a clip-retrieval output folder "
        "(img_emb/, metadata/), a .npy with a 'paths' table, or a parquet table with an embedding column."
    )


def _nan_row(column) -> np.ndarray:
    first = next(v for v in column if v is not None)
    return np.full(len(first), np.nan, np.float32)


def _path_column(part: Part, wanted: str | None) -> str:
    cols = [str(c) for c in part.table.columns]
    if wanted is not None:
        if wanted not in cols:
            raise ConfigError(
                f"{display_path(str(part.table_file))} has no column {wanted!r} (columns: {', '.join(cols)}). "
                "Fix: pass the column of image paths as 'path_column'."
            ).naming("path_column")
        return wanted
    col = next((c for c in PATH_CANDIDATES if c in cols), None)
    if col is None:
        raise ConfigError(
            f"{display_path(str(part.table_file))} has no column of image paths (looked for "
            f"{', '.join(PATH_CANDIDATES)}; columns: {', '.join(cols)}). Fix: name it with 'path_column'."
        ).naming("path_column")
    return col


def row_norms(vectors: np.ndarray, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(L2 norm of each row in float64, whether the row is a usable vector: finite and not zero), `block` rows at a
    time (no float64 copy of the whole array)."""
    norms = np.zeros(len(vectors), np.float64)
    has = np.zeros(len(vectors), bool)
    for a in range(0, len(vectors), block):
        X = vectors[a : a + block].astype(np.float64)
        finite = np.isfinite(X).all(axis=1)
        norms[a : a + block] = np.linalg.norm(np.where(finite[:, None], X, 0.0), axis=1)
        has[a : a + block] = finite & (norms[a : a + block] > 0)
    return norms, has


def _resolve(path: str, base: Path) -> str | None:
    """The local file for a table path (relative to the table's folder), None for a URL."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", path):
        return None
    return path if os.path.isabs(path) else str(base / path)


def _check_source(source: Path, paths) -> None:
    """The source and its paths table exist."""
    if not source.exists():
        raise ConfigError(f"Source {display_path(str(source))} does not exist. Fix: pass the embeddings to import.")
    if paths is not None and not Path(paths).is_file():
        raise ConfigError(
            f"The 'paths' table {display_path(os.fspath(paths))} is not a file. Fix: pass a CSV or parquet."
        )


def _check_out(out: Path, overwrite: bool) -> None:
    """`out` is a folder (or not there yet), empty unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"'out' {display_path(str(out))} is an existing file, not a run folder.").naming("out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"{display_path(str(out))} exists and is not empty. Fix: pass another 'out', or 'overwrite' to replace it."
        ).naming("out", "overwrite")


def _dimension(parts: list, source: Path, name: str) -> int:
    """The vectors' one dimension, checked against the named model's where its config is known."""
    dims = {p.vectors.shape[1] for p in parts}
    if len(dims) > 1:
        raise ConfigError(f"The vector files of {display_path(str(source))} have different dimensions {sorted(dims)}.")
    dim = dims.pop()
    want = config_dim(name)
    if want is not None and want != dim:
        raise IncompatibleRunError(
            f"{display_path(str(parts[0].vectors_file))} holds {dim}-dimensional vectors, but {name} makes "
            f"{want}-dimensional embeddings. Fix: name the model that made them with 'model' (NAME[:TAG])."
        ).naming("model")
    return dim


def _image_rows(parts: list, path_column: str | None) -> tuple[list, list, int]:
    """Per row of every part: (path as given, local file or None for a URL, table file, row); the rows whose local
    file is missing; how many paths are URLs. Each part's vectors and table must match row for row."""
    rows, missing, urls = [], [], 0
    for part in parts:
        if len(part.vectors) != len(part.table):
            raise ConfigError(
                f"{display_path(str(part.vectors_file))} holds {len(part.vectors)} vectors but "
                f"{display_path(str(part.table_file))} has {len(part.table)} rows; they must match row for row. "
                "Fix: pass the table written with these vectors."
            )
        col = _path_column(part, path_column)
        base = part.table_file.resolve().parent
        for i, v in enumerate(part.table[col].tolist()):
            text = "" if v is None or v != v else str(v)
            local = _resolve(text, base) if text else ""
            urls += local is None
            if local is not None and (not local or not os.path.isfile(local)):
                missing.append((part.table_file, i, text))
            rows.append((text, local, part.table_file, i))
    return rows, missing, urls


def import_run(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str,
    paths: str | os.PathLike | None = None,
    path_column: str | None = None,
    allow_missing_images: bool = False,
    overwrite: bool = False,
    shard_size: int = 65536,
    index_budget: str = "4G",
) -> dict:
    """Import vectors made elsewhere into the run folder `out` (see the module doc); `model` is 'NAME[:TAG]' (e.g.
    ViT-B-32:openai), checked against the vectors' dimension when its config is known. Every check runs before
    anything is written. Returns the run's summary (like `extract`) with `import`: the record written."""
    source, out = Path(source), Path(out)
    _check_source(source, paths)
    name, tag = parse_model(model)
    _check_out(out, overwrite)
    parts = _parts(source, paths)
    dim = _dimension(parts, source, name)
    rows, missing, urls = _image_rows(parts, path_column)
    local_rows = len(rows) - urls
    if missing and not allow_missing_images:
        f, i, text = missing[0]
        raise ConfigError(
            f"{len(missing)} of {local_rows} image paths in {display_path(str(f))} are not files (first: row {i + 1}, "
            f"{text!r}). Fix: 'path_column' naming the column of paths (relative to the table's folder), or "
            "'allow_missing_images' to import the vectors without their images."
        ).naming("path_column", "allow_missing_images")
    vectors = np.concatenate([p.vectors for p in parts])
    meta_extra = pd.concat([p.table.reset_index(drop=True) for p in parts], ignore_index=True)
    notes = dict(missing_images=len(missing), url_paths=urls)
    return _write(
        source, out, (name, tag, dim), vectors, meta_extra, rows, parts, overwrite, shard_size, index_budget, notes
    )


def _write(source, out, model, vectors, extra, rows, parts, overwrite, shard_size, index_budget, notes) -> dict:
    """Write the checked vectors as a run: header, shards (rows without a vector as skipped rows), finalize."""
    import shutil

    from embedlab.runs.finalize import finalize
    from embedlab.runs.lock import RunLock, check_lock
    from embedlab.runs.store import write_shard

    dtype = "float16" if vectors.dtype == np.float16 else "float32"
    norms, has = row_norms(vectors)
    dev = float(np.abs(norms[has] - 1).max()) if has.any() else 0.0
    renorm = dev > UNIT_TOLERANCE[dtype]

    def stored(rows: np.ndarray) -> np.ndarray:  # a shard's vectors as written: bitwise as given when unit length
        if renorm:
            return (vectors[rows].astype(np.float64) / norms[rows, None]).astype(dtype)
        return vectors[rows].astype(dtype, copy=False)

    record = {
        "source": str(source.resolve()),
        "files": [{"vectors": str(p.vectors_file.resolve()), "table": str(p.table_file.resolve())} for p in parts],
        "model_named": f"{model[0]}:{model[1]}",
        "source_dtype": str(vectors.dtype),
        "renormalised": bool(renorm),
        "max_norm_deviation": dev,
        "rows_without_vector": int((~has).sum()),
        **notes,
    }
    n, shard_size = len(rows), max(1, int(shard_size))
    header = _header(source, model, dtype, rows, shard_size, renorm, record)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = extra.copy()
    fields = {c: extra.pop(c) for c in FIELD_COLUMNS if c in extra.columns}  # the table's own role, split, group...
    extra = extra.rename(
        columns={c: f"meta_{c}" if c in META_COLUMNS or c == "bytes" else str(c) for c in extra.columns}
    )
    with RunLock(out, what="runs import") as lock:
        atomic_write_json(out / "manifest.json", header)
        for s in range(header["shards"]):
            lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
            ok = np.flatnonzero(has[lo:hi]) + lo
            bad = np.flatnonzero(~has[lo:hi]) + lo
            meta = _shard_metadata(rows, ok, source.stem, fields, extra)
            errs = _shard_errors(rows, bad)
            write_shard(out, s, stored(ok), meta, errs, hi - lo, lo, guard=lambda: check_lock(out, lock.token))
        lock.verify()
        summary = finalize(out, header, index_budget=index_budget)
    if (~has).any():
        log.warning("runs import: %d row(s) without a usable vector, kept in %s/errors.csv", int((~has).sum()), out)
    if renorm:
        log.warning("runs import: vectors were not unit length (max deviation %.3g); re-normalised", dev)
    Run(out)  # the folder reads back as a run
    return dict(summary, imported=record)


def _header(source: Path, model: tuple, dtype: str, rows: list, shard_size: int, renorm: bool, record: dict) -> dict:
    """The imported run's manifest as it starts (status running): the model named, what is unknown said so."""
    name, tag, dim = model
    input_hash = hashlib.sha256("\n".join(r[0] for r in rows).encode("utf-8", "surrogateescape")).hexdigest()
    n = len(rows)
    return {
        "embedlab_run": 1,
        "kind": "image-embeddings",
        "model": name,
        "pretrained": tag,
        "weights_sha256": f"{UNVERIFIED_WEIGHTS}{name}/{tag}",
        "preprocess": "unknown: vectors made elsewhere (manifest.json imported.source)",
        "decode": "imported",
        "vector_dtype": dtype,
        "compute_dtype": "unknown",
        "input_hash": input_hash,
        "shard_size": shard_size,
        "embed_dim": int(dim),
        "image_size": None,
        "model_info": {"model": name, "pretrained": tag, "embed_dim": int(dim), "imported": True},
        "device": "unknown",
        "source_manifest": record["source"],
        "source_manifest_name": source.stem,
        "source_manifest_fingerprint": input_hash,
        "normalisation": "L2 per vector" + (" (re-normalised on import)" if renorm else " (as imported)"),
        "status": "running",
        "inputs": n,
        "shards": (n + shard_size - 1) // shard_size,
        "imported": record,
    }


def _shard_metadata(rows: list, ok: np.ndarray, stem: str, fields: dict, extra: pd.DataFrame) -> pd.DataFrame:
    """The metadata of a shard's rows with a vector: run columns (the source's stem as role and source), the table's
    own values of FIELD_COLUMNS over those defaults, then its other columns."""
    meta = pd.DataFrame(
        {
            "row_id": ok.astype(np.int64),
            "path": [rows[i][0] for i in ok],
            "file": [rows[i][1] or rows[i][0] for i in ok],
            **{c: None for c in META_COLUMNS if c not in ("row_id", "path", "file")},
        }
    )
    for c in ("width", "height", "jpeg_quality", "mean_luma", "frames", "manifest_line"):
        meta[c] = np.nan
    meta["role"] = stem
    meta["split"] = "train"
    meta["group"] = meta["path"]
    meta["source"] = stem
    for c, given in fields.items():  # a value the table gives wins over the default
        meta[c] = [str(v) if v is not None and v == v else d for v, d in zip(given.iloc[ok].tolist(), meta[c].tolist())]
    return pd.concat([meta, extra.iloc[ok].reset_index(drop=True)], axis=1)


def _shard_errors(rows: list, bad: np.ndarray) -> pd.DataFrame:
    """The errors.csv rows of a shard's rows without a usable vector."""
    return pd.DataFrame(
        {
            "row_id": bad.astype(np.int64),
            "path": [rows[i][0] for i in bad],
            "reason": "no-vector",
            "detail": [f"{rows[i][2].name} row {rows[i][3] + 1}: vector missing, not finite or zero" for i in bad],
        },
        columns=["row_id", "path", "reason", "detail"],
    )
