"""Image lists for training and evaluation from a manifest or a run folder ("PATH[:SELECTOR]"), and the
paper's augmentations with per-step seeded randomness (so a resumed run sees the same batches)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embedlab.datasets.manifest import materialize, read_manifest
from embedlab.errors import InvalidParameterError


def _is_run(p: Path) -> bool:
    return p.is_dir() and (p / "manifest.json").exists()


def _selector_given(spec: str) -> bool:
    """Whether 'PATH[:SELECTOR]' names a selector (split_spec's rule: a path that exists as written has none)."""
    return ":" in str(spec) and not os.path.exists(str(spec))


def resolve_images(spec: str, default_selector: str) -> list[str]:
    """Real file paths for 'RUN[:SELECTOR]' or 'INPUT[:SELECTOR]', INPUT any form of embedlab.datasets.inputs (a
    manifest, a folder, a table of paths, ...); the default selector applies to a run or a manifest only."""

    from embedlab.datasets.inputs import input_images
    from embedlab.datasets.selector import split_spec
    from embedlab.runs.store import Run

    p, selector = split_spec(spec, default_selector)
    if _is_run(p):
        run = Run(p)
        return list(run.metadata.loc[run.select(selector), "file"])
    # a manifest's selector picks none: the error lists the labels present
    return input_images(p, selector, selector_given=_selector_given(spec))


def resolve_pairs(spec: str, default_selector: str) -> tuple[list[str], list[str]]:
    """(images, paired ground truths) for a run, manifest or other input spec (a table's `gt` column); every
    selected image must have a `gt`."""

    from embedlab.datasets.selector import split_spec
    from embedlab.runs.store import Run

    p, selector = split_spec(spec, default_selector)
    if _is_run(p):
        run = Run(p)
        meta = run.metadata.loc[run.select(selector)]
        man = read_manifest(run.manifest["source_manifest"])
        by_line = {e.line: e for e in man.entries}
        entries = [by_line[int(line)] for line in meta["manifest_line"]]
    elif p.suffix == ".jsonl":
        man = read_manifest(p)
        entries = selector.filter(man.entries)
    else:  # a table with a gt column (or any other input form, whose images then have no gt)
        from embedlab.datasets.inputs import input_entries

        man, entries = input_entries(p, selector, selector_given=_selector_given(spec))
    missing = [e.path for e in entries if not e.gt]
    if missing or not entries:
        raise InvalidParameterError(
            f"The 'pixel_loss' parameter of train needs a ground truth for every training "
            f"image; {len(missing)} of {len(entries)} have none (e.g. {missing[:2]}). Fix: use "
            "paired data (e.g. BAID with GT) or set 'pixel_loss' to 0.",
            param="pixel_loss",
            owner="train",
        )
    return [materialize(man, e.path, e) for e in entries], [materialize(man, e.gt) for e in entries]


def load_resized(paths: list[str], size: int) -> torch.Tensor:
    """uint8 (N, 3, size, size): each image squash-resized to size x size (the paper resizes to 512x512)."""
    from PIL import Image

    from embedlab.datasets.images import ImageError, decode_image
    from embedlab.errors import InputFileError

    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, p in enumerate(paths):
        try:
            img = decode_image(p).image.resize((size, size), Image.LANCZOS)
        except ImageError as exc:
            # training needs every listed image: name the file instead of a traceback
            raise InputFileError(
                f"{os.fsdecode(p)} cannot be used for training ({exc}). Fix: replace the file or "
                "drop it from the manifest / folder."
            ) from None
        out[i] = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    return out


def augment(batch: torch.Tensor, rng: np.random.Generator, zoom=(0.7, 1.3)) -> torch.Tensor:
    """The papers' augmentation: hflip, vflip, transpose (p 0.5 each), per-axis zoom (p 0.3) and rotation
    (p 0.3, +-90 deg),
    with reflect borders. `batch` is float (B, 3, H, W) in [0, 1]."""
    out = []
    for x in batch:
        if rng.random() < 0.5:
            x = x.flip(-1)
        if rng.random() < 0.5:
            x = x.flip(-2)
        if rng.random() < 0.5:
            x = x.transpose(-1, -2)
        zy = zx = 1.0
        angle = 0.0
        if rng.random() < 0.3:
            zy, zx = rng.uniform(*zoom), rng.uniform(*zoom)
        if rng.random() < 0.3:
            angle = rng.uniform(-90, 90)
        if zy != 1.0 or angle != 0.0:
            a = math.radians(angle)
            theta = torch.tensor(
                [[math.cos(a) / zx, -math.sin(a) / zx, 0.0], [math.sin(a) / zy, math.cos(a) / zy, 0.0]], dtype=x.dtype
            )
            grid = F.affine_grid(theta[None], [1, *x.shape], align_corners=False)
            x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
        out.append(x)
    return torch.stack(out)


def sample_batch(
    images: torch.Tensor,
    batch_size: int,
    rng: np.random.Generator,
    augment_on: bool = True,
    crop: int | None = None,
    paired: torch.Tensor | None = None,
) -> torch.Tensor:
    """A random batch (float, [0, 1]); optionally a random crop of `crop` px. With `paired` (ground truths aligned
    with `images`) the pairs share one crop and augmentation and come back as 6 channels (image, then GT)."""
    idx = rng.integers(0, len(images), batch_size)
    x = images[idx].float() / 255.0
    if paired is not None:
        x = torch.cat([x, paired[idx].float() / 255.0], 1)
    if crop and crop < x.shape[-1]:
        y0, x0 = rng.integers(0, x.shape[-2] - crop + 1), rng.integers(0, x.shape[-1] - crop + 1)
        x = x[..., y0 : y0 + crop, x0 : x0 + crop]
    return augment(x, rng) if augment_on else x
