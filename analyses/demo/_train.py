"""The demo studies' one way to train a demo enhancer: `train_with_curve` with the options `embedlab demo` uses."""

from __future__ import annotations

from pathlib import Path


def train_demo_enhancer(
    work: Path, scorer, curve_every: int, demo: Path, residual: str, exclude_groups=(), **opts
) -> dict:
    """Train the `demo` preset on the backlit training set of the finished demo folder `demo` with `residual`, its
    identity model the residual's own, on the CPU; a curve point on `scorer` every `curve_every` iterations.
    `exclude_groups`: training photos (groups) left out of the enhancer's training (a validation fold). `opts` are
    further `train` options (iters, seed, identity_weight, padding, ...)."""
    from embedlab.analysis.residual_file import load_residual
    from embedlab.demos.loop import train_with_curve
    from embedlab.demos.pipeline import LOOP_MAX_PIXELS

    model = load_residual(residual).info["model"]
    return train_with_curve(
        work, scorer, curve_every, LOOP_MAX_PIXELS, preset="demo", residual=str(residual),
        backlit=f"{Path(demo) / 'run'}:role=backlit,split=train" + "".join(f",group!={g}" for g in exclude_groups),
        identity_model=model["model"],
        identity_pretrained=model["pretrained"], device="cpu", **opts,
    )  # fmt: skip
