"""Directions of image edits in embedding space, for `correct --remove-edit` and `--remove-edit-like`.

A concept's text direction is only a proxy for what the concept does to images (the two modalities sit apart in
CLIP space), so projecting a word out of a residual removes little of a bias that images carry. When the bias is
something an edit can synthesise (a vignette, blur, JPEG, a colour cast), the mean change that the edit makes to
image embeddings is the bias's own direction, measured where the residual lives. `--remove-edit-like CONCEPT` picks,
among the probe's edits that are not lighting edits, the edit whose direction is closest to the concept's text
direction, so a finding of the concept report can be removed through its image edit.

Pure functions first (`edit_direction`, `rank_edits_by_concept`); `image_edit_parts` reads the residual's images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from embedlab.analysis.formula import l2n
from embedlab.errors import ConfigError, InvalidParameterError

log = logging.getLogger(__name__)

# Edits are applied at this many times the model's input size (long side), never above the image's own: the
# model sees a downsampled copy anyway, and full-size photos would make the edits most of `correct`'s time.
WORK_SCALE = 4


def edit_direction(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The mean change of L2-normalised embeddings, (n, d) before and after an edit -> (d,), not normalised (its
    length says how far the edit moves images)."""
    return (l2n(np.asarray(after, np.float64)) - l2n(np.asarray(before, np.float64))).mean(0)


def rank_edits_by_concept(directions: dict, concept_direction: np.ndarray) -> pd.DataFrame:
    """{(edit, strength): direction} ranked by cosine with a concept's (centred) text direction, highest first."""
    t = l2n(np.asarray(concept_direction, np.float64))
    rows = [
        {"edit": e, "strength": float(s), "cosine_to_concept": float(l2n(d) @ t), "shift": float(np.linalg.norm(d))}
        for (e, s), d in directions.items()
    ]
    return pd.DataFrame(rows).sort_values("cosine_to_concept", ascending=False, ignore_index=True)


def parse_edit_spec(spec: str) -> tuple[str, float | None]:
    """'vignette' or 'vignette:2' -> (name, strength or None for the edit's first listed strength)."""
    name, _, s = str(spec).partition(":")
    try:
        return name.strip(), (float(s) if s.strip() else None)
    except ValueError:
        raise InvalidParameterError(
            f"The 'remove_edit' parameter of correct takes EDIT[:STRENGTH], e.g. 'vignette:2'. Got {spec!r} instead.",
            param="remove_edit",
            owner="correct",
        ) from None


def _at_most(u8: np.ndarray, side: int) -> np.ndarray:
    """float RGB in [0, 1], box-downsampled so that its long side is at most `side`."""
    from PIL import Image

    h, w = u8.shape[:2]
    if max(h, w) > side:
        f = side / max(h, w)
        u8 = np.asarray(Image.fromarray(u8).resize((max(1, round(w * f)), max(1, round(h * f))), Image.BOX))
    return u8 / 255.0


def residual_images(res, n: int, seed: int = 0, side: int | None = None) -> tuple[list, dict]:
    """Up to `n` images (float RGB in [0, 1], long side at most `side`) of the residual's "from" set, read from its
    run; with where they came from. A residual made from arrays (no run recorded) gets one line with the fix."""
    from embedlab.datasets.images import load_rgb
    from embedlab.runs.store import Run

    src = res.info.get("from") or {}
    if not src.get("run") or not Path(src["run"]).is_dir():
        raise ConfigError(
            f"An image edit is measured on the residual's 'from' images, read from its run, but "
            f"{res.path or 'this residual'} names no run that exists here ({src.get('run')!r}). Fix: make the "
            "residual with `embedlab residual RUN ...` on this machine."
        )
    run = Run(src["run"])
    sel = src.get("selector")
    rows = np.flatnonzero(run.select(sel)) if sel else np.arange(len(run))
    if len(rows) > n:
        rows = np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))
    files = run.metadata_rows(rows, ["file"])["file"].tolist()
    images = [_at_most(load_rgb(f), side or 1 << 30) for f in files]
    return images, {"run": src["run"], "selector": src.get("selector"), "images": len(files), "max_side": side}


def edit_directions(encode, images: list[np.ndarray], edits) -> dict:
    """{(edit name, strength): direction} for every strength of every `Edit` in `edits` (probe.EDITS entries)."""
    base = encode(images)
    return {
        (e.name, float(s)): edit_direction(base, encode([e.fn(x, s) for x in images]))
        for e in edits
        for s in e.strengths
    }


def image_edit_parts(res, remove_edit, remove_edit_like, concept_direction, device, n_images: int) -> tuple[list, list]:
    """(directions, edit records) for `correct`: the named edits, then per concept the closest non-lighting edit."""
    from embedlab.analysis import probe
    from embedlab.analysis.probe import make_encoder

    named = [parse_edit_spec(s) for s in remove_edit or []]
    edits = {e.name: e for e in probe.select_edits([name for name, _ in named])}
    lm = res.load_model(device)
    images, where = residual_images(res, n_images, side=WORK_SCALE * lm.image_size)
    encode = make_encoder(lm)
    base = encode(images) if named else None
    dirs, records = [], []
    for name, strength in named:
        e = edits[name]
        s = e.strengths[0] if strength is None else strength
        d = edit_direction(base, encode([e.fn(x, s) for x in images]))
        if np.linalg.norm(d) < 1e-9:
            raise ConfigError(
                f"The edit {name}:{s:g} does not change the embeddings of the residual's images (at that strength it "
                f"leaves them as they are), so it has no direction to remove. Fix: another strength ({e.meaning})."
            )
        dirs.append(l2n(d))
        records.append({"kind": "image-edit", "edit": name, "strength": s, "shift": float(np.linalg.norm(d)), **where})
    if remove_edit_like:
        candidates = [e for e in probe.EDITS if e.family != "lighting"]
        table = edit_directions(encode, images, candidates)
        for concept in remove_edit_like:
            ranked = rank_edits_by_concept(table, concept_direction(concept))
            best = ranked.iloc[0]
            dirs.append(l2n(table[(best["edit"], best["strength"])]))
            records.append({
                "kind": "image-edit", "edit": str(best["edit"]), "strength": float(best["strength"]),
                "shift": float(best["shift"]), "like": concept, "cosine_to_concept": float(best["cosine_to_concept"]),
                "candidates": ranked.head(5).to_dict("records"), **where,
            })  # fmt: skip
    return dirs, records
