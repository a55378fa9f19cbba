"""Corrective edits of a residual: orthogonal projection out of chosen directions (docs/method.md section 3).

Directions: text concepts (on the centred vocabulary), prompt differences ("a photo of a person" minus
"a photo"), image edits (the mean change an edit makes to the residual's own images; analysis.edit_directions),
directions learned from user-labelled images (INLP), and the paper's own `rave-shift` preset.
Pure functions first; `correct()` does the I/O.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from embedlab._validate import Interval, check_param
from embedlab.analysis.formula import l2n
from embedlab.analysis.residual_file import Residual, as_residual, save_residual
from embedlab.errors import ConfigError, IncompatibleRunError, InvalidParameterError

log = logging.getLogger(__name__)


def gram_schmidt(directions: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Orthonormal basis (k, d) of the span of `directions` (m, d); near-dependent rows are dropped."""
    basis: list[np.ndarray] = []
    for v in np.atleast_2d(np.asarray(directions, np.float64)):
        w = v - sum((v @ b) * b for b in basis) if basis else v.copy()
        n = np.linalg.norm(w)
        if n > tol * max(1.0, np.linalg.norm(v)):
            basis.append(w / n)
    return np.array(basis).reshape(-1, np.asarray(directions).shape[-1])


def project_out(r: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, dict]:
    """r' = normalise(r - Q Q^T r) for an orthonormal basis Q of `directions`; with statistics."""
    r = l2n(np.asarray(r, np.float64))
    Q = gram_schmidt(directions)
    removed = Q.T @ (Q @ r) if len(Q) else np.zeros_like(r)
    kept = r - removed
    if np.linalg.norm(kept) < 1e-9:
        raise ConfigError("The edit would remove the whole residual (it lies in the span of the chosen directions).")
    r_new = l2n(kept)
    return r_new, {
        "fraction_of_norm_removed": float(1 - np.linalg.norm(kept)),
        "fraction_of_sq_norm_removed": float(removed @ removed),
        "cos_before_after": float(r @ r_new),
        "basis_rank": int(len(Q)),
    }


def rave_shift_direction(r: np.ndarray, E_raw: np.ndarray, k: int = 15) -> tuple[np.ndarray, dict]:
    """The released RAVE code's shift: score raw token embeddings by cosine with r;
    a = norm(mean_top-k s*E), b = norm(mean_bottom-k s*E),
    u = norm(a + b). (The reference hard-codes k = 15 and crashes on an undefined name; here k is an option.)"""
    check_param("k", k, Interval(int, 1, len(E_raw) // 2), "correct")
    r = l2n(np.asarray(r, np.float64))
    E = np.asarray(E_raw, np.float64)
    s = (E @ r) / np.linalg.norm(E, axis=1).clip(1e-12)
    order = np.argsort(-s)
    top, bottom = order[:k], order[::-1][:k]
    a = l2n((s[top, None] * E[top]).mean(0))
    b = l2n((s[bottom, None] * E[bottom]).mean(0))
    return l2n(a + b), {
        "top_indices": top.tolist(),
        "bottom_indices": bottom.tolist(),
        "top_scores": s[top].tolist(),
        "bottom_scores": s[bottom].tolist(),
    }


def inlp_directions(
    X: np.ndarray, y: np.ndarray, max_iter: int = 10, seed: int = 0, tol: float = 0.05
) -> tuple[np.ndarray, list]:
    """Iterative nullspace projection (Ravfogel et al.): fit a linear classifier for the attribute, keep its
    direction, project it out of X, repeat until held-out accuracy is within `tol` of the majority rate."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    X = l2n(np.asarray(X, np.float64))
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) != 2:
        raise ConfigError(
            "A learned direction needs images of both kinds: the attribute is true for all or none of them."
        )
    majority = max(y.mean(), 1 - y.mean())
    dirs, history = [], []
    Xp = X.copy()
    for it in range(max_iter):
        Xtr, Xte, ytr, yte = train_test_split(Xp, y, test_size=0.3, random_state=seed + it, stratify=y)
        clf = LogisticRegression(max_iter=2000).fit(Xtr, ytr)
        acc = float(clf.score(Xte, yte))
        history.append({"iteration": it, "heldout_accuracy": acc, "majority_rate": float(majority)})
        if acc <= majority + tol:
            break
        w = l2n(clf.coef_[0])
        dirs.append(w)
        Xp = Xp - np.outer(Xp @ w, w)
    return np.array(dirs).reshape(-1, X.shape[1]), history


def _concept_edits(lm, remove: list[str], vocab: str | None, templates: str | None) -> tuple[list, list]:
    """Directions of concepts: their text embeddings minus the vocabulary's mean (both cached)."""
    from embedlab.analysis import vocab as vb

    V = vb.resolve_vocab(vocab, lm)
    tpls = vb.resolve_templates(templates)
    E_vocab, _ = vb.embed_concepts(lm, V.concepts, tpls)
    mu = E_vocab.mean(0, dtype=np.float64)
    E_c, _ = vb.embed_concepts(lm, list(remove), tpls)
    dirs = [l2n(e - mu) for e in E_c]
    return dirs, [{"kind": "concept", "concept": c, "vocabulary_centre": V.source, "templates": tpls} for c in remove]


def _pair_edits(lm, remove_pair: list[tuple[str, str]]) -> tuple[list, list]:
    """Directions of prompt differences (prompt minus its baseline prompt)."""
    from embedlab.analysis import vocab as vb

    dirs, edits = [], []
    for a, b in remove_pair:
        (ea, eb), _ = vb.embed_concepts(lm, [a, b], ["{}"])
        dirs.append(l2n(ea.astype(np.float64) - eb))
        edits.append({"kind": "prompt-pair", "prompt": a, "baseline": b})
    return dirs, edits


def _labelled_edits(remove_labelled: tuple[str, str], model_identity: dict, dim: int, residual) -> tuple[list, list]:
    """Directions learned (INLP) from a run's images labelled by COLUMN=VALUE."""
    from embedlab.runs.store import Run

    run_path, attribute = remove_labelled
    run = Run(run_path)
    if run.manifest["embed_dim"] != dim or run.manifest["weights_sha256"] != model_identity["weights_sha256"]:
        raise IncompatibleRunError(f"Run {run_path} was made with another model than residual {residual}.")
    if "=" not in attribute:
        raise InvalidParameterError(
            f"The 'remove_labelled' parameter of correct needs (RUN, 'COLUMN=VALUE'), e.g. "
            f"role=welllit. Got {attribute!r} instead.",
            param="remove_labelled",
            owner="correct",
        )
    D, history = inlp_directions(run.vectors, run.select(attribute))
    if len(D) == 0:
        raise ConfigError(f"No linear direction predicts {attribute!r} in {run_path} above chance; nothing to remove.")
    return list(D), [
        {"kind": "learned-inlp", "run": str(run_path), "attribute": attribute, "directions": len(D), "history": history}
    ]


def _rave_shift_edits(lm, r: np.ndarray, k: int) -> tuple[list, list]:
    """The rave-shift direction from the raw token embeddings (cached)."""
    from embedlab.analysis import vocab as vb

    V = vb.resolve_vocab("tokens", lm)
    E_raw, _ = vb.embed_concepts(lm, V.concepts, ["{}"], normalize=False)
    u, detail = rave_shift_direction(r, E_raw, k)
    return [u], [
        {
            "kind": "rave-shift",
            "k": k,
            "vocabulary": V.source,
            "removed_info_from": [V.concepts[i] for i in detail["top_indices"]],
            "added_info_from": [V.concepts[i] for i in detail["bottom_indices"]],
        }
    ]


PRESETS = {
    "rave-shift": "the released RAVE code's shifted residual: project out the direction of the top-k and "
    "bottom-k raw token embeddings (docs/method.md)"
}


def edit_label(edit: dict, index: int = 0, count: int = 1) -> str:
    """A short name of an edit for printing: its concept, prompt, attribute (with the direction's number when the
    edit learned several, as INLP does) or kind."""
    name = edit.get("concept") or edit.get("prompt") or edit.get("attribute") or edit["kind"]
    if edit["kind"] == "image-edit":
        like = f", like '{edit['like']}'" if edit.get("like") else ""
        name = f"{edit['edit']} {edit['strength']:g} (image edit{like})"
    return f"{name} ({edit['kind']} direction {index + 1} of {count})" if count > 1 else name


def _origins(parts: list, first: int) -> tuple[list, list, list]:
    """Flatten [(directions, edits)] parts into directions, edits and, per direction, (edit index, direction number,
    directions of that edit). An edit yields one direction, or (INLP) one edit several."""
    dirs, edits, origin = [], [], []
    for part_dirs, part_edits in parts:
        one_each = len(part_edits) == len(part_dirs)
        for j in range(len(part_dirs)):
            origin.append(
                (first + len(edits) + (j if one_each else 0), 0 if one_each else j, 1 if one_each else len(part_dirs))
            )
        dirs += list(part_dirs)
        edits += list(part_edits)
    return dirs, edits, origin


def _edit_parts(res, r, ask: dict, k, vocab, templates, device, source, edit_images) -> list:
    """Each kind of edit asked for as (directions, edits), in the order concepts, pairs, image edits, labelled
    images, preset."""
    from embedlab import models
    from embedlab.analysis.edit_directions import image_edit_parts

    remove, remove_pair, remove_labelled, preset = (
        ask[n] for n in ("remove", "remove_pair", "remove_labelled", "preset")
    )
    mi = res.info["model"]
    # as in explain: the network is built (and its weights checked against the residual's) only if some text
    # is not in the text-embedding cache
    lm = (
        models.TextModelHandle(mi["model"], mi["pretrained"], mi["weights_sha256"], len(r), device)
        if (remove or remove_pair or preset or ask["remove_edit_like"])
        else None
    )
    parts = []
    if remove:
        parts.append(_concept_edits(lm, remove, vocab, templates))
    if remove_pair:
        parts.append(_pair_edits(lm, remove_pair))
    if ask["remove_edit"] or ask["remove_edit_like"]:
        like = lambda c: _concept_edits(lm, [c], vocab, templates)[0][0]  # noqa: E731 - the centred text direction
        parts.append(image_edit_parts(res, ask["remove_edit"], ask["remove_edit_like"], like, device, edit_images))
    if remove_labelled:
        parts.append(_labelled_edits(remove_labelled, mi, len(r), source))
    if preset == "rave-shift":
        parts.append(_rave_shift_edits(lm, r, k))
    return parts


def _per_direction(D: np.ndarray, origin: list, edits: list, r: np.ndarray, r_new: np.ndarray) -> list[dict]:
    """Per removed direction: its edit's index, label, and the residual's projection on it before and after."""
    return [
        {
            "edit": e,
            "label": edit_label(edits[e], j, n),
            "projection_before": float(l2n(d) @ r),
            "projection_after": float(l2n(d) @ r_new),
        }
        for d, (e, j, n) in zip(D, origin)
    ]


def _corrected_info(res, edits: list, D: np.ndarray, origin: list, r, r_new, stats: dict) -> dict:
    """The corrected residual's sidecar: the residual's own, with every edit, the correction's statistics per removed
    direction and thr recomputed on the corrected vector."""
    thr_after = float(res.v_to @ r_new)
    correction = dict(
        stats,
        directions=_per_direction(D, origin, edits, r, r_new),
        thr_before=res.thr,
        thr_after=thr_after,
        source_residual=str(res.path.resolve()) if res.path is not None else None,
    )
    return dict(res.info, edits=edits, correction=correction, thr=thr_after)


def correct(
    residual: "str | os.PathLike | Residual",
    out: str | os.PathLike | None = None,
    *,
    remove: list[str] | None = None,
    remove_pair: list[tuple[str, str]] | None = None,
    remove_labelled: tuple[str, str] | None = None,
    remove_edit: list[str] | None = None,
    remove_edit_like: list[str] | None = None,
    preset: str | None = None,
    k: int = 15,
    vocab: str | None = None,
    templates: str | None = None,
    edit_images: int = 64,
    device: str = "auto",
) -> Residual:
    """Project chosen directions out of a residual and write `out` (.npy) with a sidecar listing every edit.

    remove: concept names (centred text embeddings); remove_pair: (prompt, baseline prompt) differences;
    remove_labelled: (RUN, COLUMN=VALUE) learns directions (INLP) separating images with that attribute;
    remove_edit: image edits of `embedlab probe-residual` as 'EDIT[:STRENGTH]' (e.g. 'vignette:2'; no strength: the
    edit's first listed), each the mean change it makes to `edit_images` images of the residual's 'from' set;
    remove_edit_like: concepts, each removed through the non-lighting edit whose direction is closest to its text
    direction (the candidates and cosines go to the sidecar); preset 'rave-shift' (`PRESETS`) reproduces the
    released code's shift with `k` tokens per side.

    `residual`: its .npy or a `Residual` (a notebook's); `out` None: the result stays in memory (not written).
    Returns the corrected Residual (`.files`: the .npy and its sidecar); its info["correction"]["directions"] has,
    per removed direction, `edit` (its index in info["edits"]), `label` and the projections before and after."""
    res = as_residual(residual)  # a Residual (a notebook's) or its file
    ask = dict(remove=remove, remove_pair=remove_pair, remove_labelled=remove_labelled, remove_edit=remove_edit,
               remove_edit_like=remove_edit_like, preset=preset)  # fmt: skip
    if not any(ask.values()):
        raise InvalidParameterError(
            "The 'remove' parameter of correct, or 'remove_pair', 'remove_labelled', 'remove_edit', "
            "'remove_edit_like' or 'preset', must name at least one edit. Got none.",
            param="remove",
            owner="correct",
            also=("remove_pair", "remove_labelled", "remove_edit", "remove_edit_like", "preset"),
        )
    check_param("preset", preset, tuple(PRESETS), "correct", allow_none=True)
    check_param("edit_images", edit_images, Interval(int, 2), "correct")
    r = l2n(res.vector)
    parts = _edit_parts(res, r, ask, k, vocab, templates, device, residual, edit_images)
    earlier = list(res.info.get("edits", []))
    dirs, edits, origin = _origins(parts, len(earlier))
    D = np.array(dirs)
    if D.shape[1] != len(r):
        raise IncompatibleRunError(f"Edit directions have dimension {D.shape[1]} but the residual {len(r)}.")
    r_new, stats = project_out(r, D)
    info = _corrected_info(res, earlier + [dict(e) for e in edits], D, origin, r, r_new, stats)
    if out is None:  # a notebook's: kept in memory
        return Residual(r_new.astype(np.float32), dict(info, dim=int(len(r_new))), None)
    save_residual(out, r_new, info)
    return Residual(r_new.astype(np.float32), info, Path(out))
