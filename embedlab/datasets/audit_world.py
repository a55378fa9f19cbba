"""A collection with planted slices for the audit, from the photos inside installed packages: each photo is one
group of seeded crops (crops of one photo are correlated, so the group is the unit), and per group, drawn from a
seed, metadata columns a user would have:

- `light`: "backlit" for a share of the groups (Recipe A on every crop), else "normal": the planted lighting slice;
- `edit`: "blur", "jpeg" or "none", a third of the groups each, on top of their lighting: edits that change no
  lighting (a lighting word must not describe them);
- `camera`: "A", "B" or "C", independent of everything: no slice should be found there;
- and, with no column naming it, a hidden subset of groups under-exposed by two stops (Recipe C), for `--discover`.

Discovery finds its clusters on one half of the groups and describes them on the other, so the hidden subset needs
at least two groups in each half: with 15 photos it is 5 groups (with 3, only one fell in the half that is
described and none could be found).
"""

from __future__ import annotations

import numpy as np

from embedlab.datasets import photos

WORLD_SEED = 1


def audit_world_records(crops: int = 3, seed: int = WORLD_SEED, backlit: int = 7, hidden: int = 5) -> tuple[list, dict]:
    """(manifest records, the planted truth): `backlit` groups with light=backlit, `hidden` other groups darkened
    without a column, edits and cameras drawn independently."""
    rng = np.random.default_rng(seed)
    pics = photos.demo_photos()
    order = rng.permutation(len(pics))
    lit = set(order[:backlit].tolist())
    dark = set(order[backlit : backlit + hidden].tolist())
    edits = [str(e) for e in np.array((["blur", "jpeg", "none"] * len(pics))[: len(pics)])[rng.permutation(len(pics))]]
    cameras = rng.choice(["A", "B", "C"], len(pics))
    recs = []
    for i, photo in enumerate(pics):
        group = photo.uri.split("/", 1)[1].split(".")[0]
        light = "backlit" if i in lit else "normal"
        for c in range(crops):
            if i in lit:
                spec = {"recipe": "A", "seed": c}
            elif i in dark:
                spec = {"recipe": "C", "ev": -2.0}
            else:
                spec = {"recipe": "NONE"}
            spec.update(source=photo.uri, crop_seed=c + 1, **({"edit": edits[i]} if edits[i] != "none" else {}))
            recs.append(
                {
                    "path": f"synth:audit/{group}/c{c}",
                    "role": "photo",
                    "split": "train",
                    "group": group,
                    "source": photo.source,
                    "license": photo.license,
                    "synth": spec,
                    "meta": {"light": light, "edit": str(edits[i]), "camera": str(cameras[i])},
                }
            )
    names = [p.uri.split("/", 1)[1].split(".")[0] for p in pics]
    truth = {
        "backlit_groups": sorted(names[i] for i in lit),
        "hidden_dark_groups": sorted(names[i] for i in dark),
        "seed": seed,
        "crops": crops,
    }
    return recs, truth
