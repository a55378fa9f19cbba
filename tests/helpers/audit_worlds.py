"""Small planted worlds for the audit's tests: unit vectors in groups of correlated images, metadata per group, and a
vocabulary whose text embeddings share an offset (as a CLIP's do), one of them the planted concept."""

from __future__ import annotations

import numpy as np
import pandas as pd


def vocabulary(rng, d: int, V: int, planted: str = "dim"):
    """(E (V, d) unit rows with a shared offset, words, the planted word's centred direction)."""
    offset = rng.normal(size=d)
    offset /= np.linalg.norm(offset)
    words = [f"w{i}" for i in range(V - 1)] + [planted]
    E = rng.normal(size=(V, d))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    E += 2 * offset
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    direction = E[-1] - E.mean(0)
    return E, words, direction / np.linalg.norm(direction)


def world(seed=0, d=64, G=40, per=4, effect=0.5, V=40, share=0.3, spread=0.5):
    """Groups of `per` images around random centres; metadata per group: light (dark for a `share` of the groups,
    shifted by `effect` along the planted concept "dim"), camera (A/B/C, no effect) and a per-image numeric iso."""
    rng = np.random.default_rng(seed)
    E, words, direction = vocabulary(rng, d, V)
    centres = rng.normal(size=(G, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    light = np.where(rng.random(G) < share, "dark", "bright")
    light[:2], light[2:4] = "dark", "bright"  # both values present whatever the seed
    cam = rng.choice(["A", "B", "C"], G)
    X, rows = [], []
    for g in range(G):
        for _ in range(per):
            x = centres[g] + spread * rng.normal(size=d) / np.sqrt(d)
            x /= np.linalg.norm(x)
            if light[g] == "dark":
                x = x + effect * direction
            X.append(x)
            rows.append({"group": f"g{g}", "light": light[g], "camera": cam[g], "iso": int(rng.integers(100, 3200))})
    return np.asarray(X), pd.DataFrame(rows), E, words
