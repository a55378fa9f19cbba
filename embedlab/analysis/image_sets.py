"""Two image sets ('from' and 'to') as a stream of row blocks that can be read again: the input of every
statistic that explains a residual. In memory (two arrays) or on disk (selected rows of memory-mapped run
shards); either way a reader holds one block at a time, never the sets.

Rows come in one fixed order, every 'from' row and then every 'to' row (the order of `np.r_[x_from, x_to]`), so
labels, groups and shuffles indexed over the concatenation line up with the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd


@dataclass
class ImageSets:
    n_from: int
    n_to: int
    read: Callable[[], Iterable[np.ndarray]]  # a new iterator over the row blocks at every call
    source: str = "arrays"
    progress: bool = False  # a progress bar (stderr) over each pass
    passes: int = 0

    @property
    def n(self) -> int:
        return self.n_from + self.n_to

    @property
    def is_to(self) -> np.ndarray:
        return np.r_[np.zeros(self.n_from, bool), np.ones(self.n_to, bool)]

    def blocks(self) -> Iterator[np.ndarray]:
        from embedlab._io import progress_bar

        self.passes += 1
        with progress_bar(
            self.progress, total=self.n, desc=f"reading the sets (pass {self.passes})", unit="img"
        ) as bar:
            for b in self.read():
                yield b
                bar.update(len(b))

    @classmethod
    def from_arrays(cls, x_from: np.ndarray, x_to: np.ndarray) -> "ImageSets":
        x_from, x_to = np.asarray(x_from), np.asarray(x_to)
        return cls(len(x_from), len(x_to), lambda: (x_from, x_to), "arrays")

    @classmethod
    def from_runs(
        cls, run_from, mask_from: np.ndarray, run_to, mask_to: np.ndarray, block: int = 65536, progress: bool = False
    ) -> "ImageSets":
        """The selected rows (boolean masks over each run's metadata) of one or two runs, read from their
        memory-mapped shards as stored (float16 or float32)."""

        def read():
            for run, mask in ((run_from, mask_from), (run_to, mask_to)):
                for _, X in run.iter_vectors(mask, block, dtype=None):
                    yield X

        return cls(int(np.count_nonzero(mask_from)), int(np.count_nonzero(mask_to)), read, "runs", progress)


def aligned_chunks(data, chunk: int):
    """Yield (start, rows) in chunks of exactly `chunk` rows (the last one shorter), from an array, an
    `ImageSets` or an iterable of row blocks cut anywhere: the chunks, and so every sum built from them, do
    not depend on the cut."""
    blocks = (data,) if isinstance(data, np.ndarray) else data.blocks() if isinstance(data, ImageSets) else data
    buf, have, start = [], 0, 0
    for b in blocks:
        b = np.asarray(b)
        while len(b):
            take = min(chunk - have, len(b))
            buf.append(b[:take])
            have, b = have + take, b[take:]
            if have == chunk:
                yield start, (buf[0] if len(buf) == 1 else np.concatenate(buf))
                start, buf, have = start + chunk, [], 0
    if have:
        yield start, (buf[0] if len(buf) == 1 else np.concatenate(buf))


def set_group_ids(*columns) -> np.ndarray | None:
    """Integer group ids of the concatenated sets (equal ids: same group label), or None when no image has a
    group; an image without one is its own group. Works on categorical columns of millions of rows without
    turning them into strings."""
    cats = [
        pd.Categorical(np.asarray(c, dtype=object) if not isinstance(c, (pd.Series, pd.Categorical)) else c)
        for c in columns
    ]
    if all((c.codes < 0).all() for c in cats):
        return None
    labels = pd.Index(pd.unique(np.concatenate([np.asarray(c.categories.astype(str)) for c in cats])))
    # a lookup table per column with -1 appended, so that a missing label (code -1) stays -1
    parts = [np.append(labels.get_indexer(c.categories.astype(str)), -1)[c.codes] for c in cats]
    ids = np.concatenate(parts).astype(np.int64)
    missing = ids < 0
    ids[missing] = len(labels) + np.arange(int(missing.sum()))
    return ids
