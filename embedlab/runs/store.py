"""The run folder: the contract between `extract` and everything downstream.

    RUN/manifest.json            identity (model, weights sha256, preprocessing, decode path, dtype, device,
                                 input-list hash), counts, versions, status
    RUN/shards/emb_00000.npy     L2-normalised vectors of the shard's embedded images (float32 or float16)
    RUN/shards/meta_00000.parquet  one row per embedded image (row_id, path, sha1, size, format, ...)
    RUN/shards/err_00000.parquet   one row per rejected file (row_id, path, reason)
    RUN/shards/00000.done.json   written last and atomically: the shard is complete
    RUN/metadata.parquet, RUN/errors.csv, RUN/index.faiss   consolidated when every shard is done

Row ids are positions in the manifest's input list, so they are stable across resumes; the FAISS index's
ids are those row ids.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embedlab._io import atomic_write_bytes, atomic_write_json, read_json
from embedlab.errors import ConfigError, IncompatibleRunError

IDENTITY_KEYS = (
    "model",
    "pretrained",
    "weights_sha256",
    "preprocess",
    "decode",
    "vector_dtype",
    "compute_dtype",
    "input_hash",
    "shard_size",
)


def shard_name(i: int) -> str:
    return f"{i:05d}"


@dataclass
class Run:
    """Read access to a finished (or partly finished) run folder."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        if not (self.path / "manifest.json").exists():
            raise ConfigError(not_a_run(self.path))
        self.manifest = read_json(self.path / "manifest.json")
        self._meta: pd.DataFrame | None = None
        self._vectors: np.ndarray | None = None
        self._shards: list | None = None

    @property
    def identity(self) -> dict:
        return {k: self.manifest.get(k) for k in IDENTITY_KEYS}

    @property
    def model_identity(self) -> dict:
        """What must match for vectors to be comparable: model, weights and preprocessing."""
        return {k: self.manifest.get(k) for k in ("model", "pretrained", "weights_sha256", "preprocess", "decode")}

    def done_shards(self) -> list[int]:
        return sorted(int(p.name.split(".")[0]) for p in (self.path / "shards").glob("*.done.json"))

    def shards(self) -> list[tuple[int, Path, Path, int, int]]:
        """(shard, vectors file, metadata file, first position, rows) of every done shard with embedded images,
        in order; positions index `metadata` rows. Vector files are only opened (memory-mapped), never read."""
        if self._shards is None:
            out, pos = [], 0
            for s in self.done_shards():
                meta_p = self.path / "shards" / f"meta_{shard_name(s)}.parquet"
                if meta_p.exists():
                    emb_p = self.path / "shards" / f"emb_{shard_name(s)}.npy"
                    n = int(np.load(emb_p, mmap_mode="r", allow_pickle=False).shape[0])
                    out.append((s, emb_p, meta_p, pos, n))
                    pos += n
            self._shards = out
        return self._shards

    def __len__(self) -> int:
        return sum(s[4] for s in self.shards())

    @property
    def dim(self) -> int:
        sh = self.shards()
        if sh:
            return int(np.load(sh[0][1], mmap_mode="r", allow_pickle=False).shape[1])
        return int(self.manifest.get("embed_dim", 0))

    def read_metadata(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Metadata rows of every done shard (aligned with the vectors); `columns` reads only those, with text
        columns as categoricals (compact for runs of millions of images)."""
        if columns is None:
            return self.metadata
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        files = [meta_p for _, _, meta_p, _, _ in self.shards()]
        if not files:
            return pd.DataFrame({c: [] for c in columns})

        def read(path):
            # text columns come out of parquet's own dictionary pages (no string is materialised), so pandas gets
            # categoricals without decoding and re-encoding every string
            schema = pq.read_schema(path)
            text = [
                c
                for c in columns
                if c in schema.names
                and (pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type))
            ]
            return pq.read_table(path, columns=list(columns), read_dictionary=text)

        with ThreadPoolExecutor(2) as pool:  # parquet decoding releases the GIL: two shards at a time
            tables = list(pool.map(read, files))
        table = pa.concat_tables(tables, promote_options="default")
        # a text column stored without a dictionary in every shard is encoded here (one pass in C++)
        cols = [
            pc.dictionary_encode(c) if pa.types.is_string(c.type) or pa.types.is_large_string(c.type) else c
            for c in table.columns
        ]
        # one thread: pandas' threaded conversion of categorical columns is slower, not faster
        return pa.table(cols, names=table.column_names).to_pandas(use_threads=False)

    @property
    def metadata(self) -> pd.DataFrame:
        if self._meta is None:
            parts = [pd.read_parquet(meta_p) for _, _, meta_p, _, _ in self.shards()]
            self._meta = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"row_id": []})
            if len(self._meta) != len(self):
                raise IncompatibleRunError(f"{self.path}: metadata has {len(self._meta)} rows but vectors {len(self)}.")
        return self._meta

    def metadata_rows(self, rows: np.ndarray, columns: list[str]) -> pd.DataFrame:
        """`columns` of the metadata rows at positions `rows` (in that order), reading only the shards that hold
        them, two shards at a time: a sample of a run of millions without its whole metadata in memory."""
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        wanted = []
        for _, _, meta_p, first, n in self.shards():
            lo, hi = np.searchsorted(ordered, [first, first + n])
            if hi > lo:
                wanted.append((meta_p, ordered[lo:hi] - first))
        with ThreadPoolExecutor(2) as pool:  # parquet decoding releases the GIL: two shards at a time
            parts = list(pool.map(lambda w: pq.read_table(w[0], columns=list(columns)).take(pa.array(w[1])), wanted))
        if sum(len(t) for t in parts) != len(rows):
            raise ConfigError(f"Row positions out of range for run {self.path} ({len(self)} images).")
        if not parts:
            return pd.DataFrame({c: [] for c in columns})
        got = pa.concat_tables(parts, promote_options="default").to_pandas()
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        return got.iloc[back].reset_index(drop=True)

    def iter_vectors(self, rows: np.ndarray | None = None, block: int = 65536, dtype=np.float32):
        """Yield (positions, float32 block) over the run's vectors, shard by shard, `block` rows at a time, from
        memory-mapped shards: memory holds one block, never the run. `rows`: a boolean mask over `metadata`
        rows, or sorted positions; None = every row. Positions index `metadata` rows. dtype=None: as stored
        (float16 or float32; a block of a contiguous range is then a view of the mapped file)."""
        if block < 1:
            raise ConfigError(f"The 'block' option of iter_vectors must be an int >= 1. Got {block} instead.")
        total = len(self)
        if rows is not None:
            rows = np.asarray(rows)
            if rows.dtype == bool:
                if len(rows) != total:
                    raise ConfigError(f"Row mask has {len(rows)} entries; run {self.path} has {total} images.")
                rows = np.flatnonzero(rows)
        for _, emb_p, _, first, n in self.shards():
            mm = np.load(emb_p, mmap_mode="r", allow_pickle=False)
            if rows is None:
                for a in range(0, n, block):
                    b = min(n, a + block)
                    yield np.arange(first + a, first + b), np.asarray(mm[a:b], dtype=dtype)
                continue
            lo, hi = np.searchsorted(rows, [first, first + n])
            mine = rows[lo:hi]
            for a in range(0, len(mine), block):
                pos = mine[a : a + block]
                yield pos, np.asarray(mm[pos - first], dtype=dtype)

    def take(self, rows: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
        """The selected vectors as one in-memory array (explicit materialisation: size it first)."""
        n = len(self) if rows is None else int(np.count_nonzero(rows) if np.asarray(rows).dtype == bool else len(rows))
        out = np.empty((n, self.dim), dtype)
        at = 0
        for pos, X in self.iter_vectors(rows):
            out[at : at + len(pos)] = X
            at += len(pos)
        return out

    @property
    def vectors(self) -> np.ndarray:
        """(n_images, dim) float32, L2-normalised, aligned with `metadata` rows. Reads the WHOLE run into memory:
        for large runs use `iter_vectors`."""
        if self._vectors is None:
            self._vectors = self.take()
        return self._vectors

    def errors(self) -> pd.DataFrame:
        parts = [pd.read_parquet(p) for p in sorted((self.path / "shards").glob("err_*.parquet"))]
        return (
            pd.concat(parts, ignore_index=True)
            if parts
            else pd.DataFrame(columns=["row_id", "path", "reason", "detail"])
        )

    def select(self, selector) -> np.ndarray:
        """Boolean mask of the rows a selector (see `embedlab.selector.Selector`) picks, e.g. 'backlit' or
        'role=backlit,split=train'. Reads only the columns it needs."""
        from embedlab.datasets.selector import Selector

        sel = Selector.parse(selector)
        cols = self.available_columns(sel.columns)
        full = self._meta is not None or len(cols) < len(sel.columns)  # (a missing column: the error lists all)
        meta = self.metadata if full else self.read_metadata(cols)
        return sel.mask(meta, where=f"run {self.path}")

    def available_columns(self, wanted) -> list[str]:
        """The metadata columns of this run among `wanted` (schema read from the first shard only)."""
        import pyarrow.parquet as pq

        sh = self.shards()
        names = set(pq.read_schema(sh[0][2]).names) if sh else set()
        return [c for c in dict.fromkeys(wanted) if c in names]


def not_a_run(path: Path) -> str:
    """One line for a path given where a run folder is expected, naming what it is and the command that makes a run
    of it."""
    make = f"Make a run of it with `embedlab extract -m {path} --model X --pretrained Y --out RUN`"
    if not path.exists():
        return (
            f"Run folder {path} does not exist. Create one with "
            f"`embedlab extract -m IMAGES --model X --pretrained Y --out {path}`."
        )
    if path.is_file() and path.suffix.lower() in (".npy", ".parquet"):
        paths = " --paths TABLE" if path.suffix.lower() == ".npy" else ""
        return (
            f"{path} is a file, not a run folder. If it holds vectors, make a run of them with "
            f"`embedlab runs import {path}{paths} --model NAME --out RUN`."
        )
    if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"):
        return (
            f"{path} is an image, not a run folder. Make a run of the folder that holds it with "
            f"`embedlab extract -m {path.parent} --model X --pretrained Y --out RUN`."
        )
    if path.is_file():
        return f"{path} is a file, not a run folder. {make} (or `embedlab compare`, which takes images and runs alike)."
    if (path / "img_emb").is_dir() or (path / "embeddings").is_dir():
        return (
            f"{path} holds embeddings made elsewhere, not a run folder. Fix: "
            f"`embedlab runs import {path} --model NAME --out RUN`, then use RUN."
        )
    return f"{path} is not an embedlab run folder (no manifest.json). {make}."


def write_shard(
    run_dir: Path,
    shard: int,
    vectors: np.ndarray,
    meta: pd.DataFrame,
    errors: pd.DataFrame,
    n_inputs: int,
    first_row: int,
    guard=None,
) -> None:
    """Write one shard's files, then its done-marker last (atomically): a crash leaves no half-done shard.
    `guard()` (the run lock's check) is called before the first file and again before the done-marker: a writer
    whose lock was taken over raises there and publishes nothing more."""
    from embedlab._io import atomic_save_npy, sha256_file

    sdir = run_dir / "shards"
    name = shard_name(shard)
    if guard is not None:
        guard()
    atomic_save_npy(sdir / f"emb_{name}.npy", vectors)
    for frame, prefix in ((meta, "meta"), (errors, "err")):
        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic_write_bytes(sdir / f"{prefix}_{name}.parquet", buf.getvalue())
    if guard is not None:
        guard()
    atomic_write_json(
        sdir / f"{name}.done.json",
        {
            "shard": shard,
            "first_row": first_row,
            "inputs": n_inputs,
            "rows": int(len(meta)),
            "errors": int(len(errors)),
            "emb_sha256": sha256_file(sdir / f"emb_{name}.npy"),
        },
    )


def check_identity(existing: dict, wanted: dict, run_dir: Path) -> None:
    diff = {k: (existing.get(k), wanted.get(k)) for k in IDENTITY_KEYS if existing.get(k) != wanted.get(k)}
    if diff:
        lines = "; ".join(f"{k}: run has {str(a)[:80]!r}, this command {str(b)[:80]!r}" for k, (a, b) in diff.items())
        raise IncompatibleRunError(
            f"Run folder {run_dir} was made with a different configuration ({lines}). "
            "Resuming would mix incomparable vectors. Use another 'out', or 'overwrite' to "
            "replace it."
        ).naming("out", "overwrite")


def clear_run(run_dir: Path) -> None:
    import shutil

    shutil.rmtree(run_dir / "shards", ignore_errors=True)
    for f in ("manifest.json", "metadata.parquet", "errors.csv", "index.faiss"):
        (run_dir / f).unlink(missing_ok=True)
