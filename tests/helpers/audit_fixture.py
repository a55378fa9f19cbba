"""A hand-made `AuditResult` for the audit page's tests: three columns (camera, time, a binned width), nine slices with
one conjunction that repeats a listed slice and one discovered cluster, two significant slices, per-slice concepts,
similarity arrays from a seeded RNG and exemplar PNGs written with PIL. One camera value is hostile markup, to show
that every user string reaches the page escaped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from embedlab.analysis.audit_result import AuditResult

HOSTILE = "<script>alert(1)</script>&"
SIGNIFICANT = {"s4": ("time=night", "dim"), "s1": ("camera=B", "grainy")}

# slice_id, name, kind, columns, images, groups, effect, lo, hi, p, p_fwer, q, listed, duplicates
SLICES = [
    ("s0", "camera=A", "value", "camera", 60, 15, 0.0009, -0.0004, 0.0021, 0.21, 0.74, 0.42, True, None),
    ("s1", "camera=B", "value", "camera", 52, 13, 0.0102, 0.0061, 0.0148, 0.001, 0.021, 0.006, True, None),
    ("s2", f"camera={HOSTILE}", "value", "camera", 48, 12, 0.0031, 0.0002, 0.0063, 0.04, 0.31, 0.12, True, None),
    ("s3", "time=day", "value", "time", 112, 28, 0.0018, 0.0003, 0.0035, 0.03, 0.28, 0.12, True, None),
    ("s4", "time=night", "value", "time", 48, 12, 0.0164, 0.0107, 0.0226, 0.001, 0.004, 0.006, True, None),
    ("s5", "width in [0, 640)", "bin", "width", 80, 20, -0.0003, -0.0011, 0.0006, 0.62, 0.99, 0.70, True, None),
    ("s6", "width in [640, 4096]", "bin", "width", 80, 20, 0.0004, -0.0006, 0.0013, 0.48, 0.97, 0.62, True, None),
    (
        "s7",
        "camera=B & time=night",
        "conjunction",
        "camera,time",
        20,
        5,
        0.0189,
        0.0052,
        0.0331,
        0.002,
        0.031,
        0.006,
        False,
        "time=night",
    ),
    ("s8", "cluster 3", "discovered", "", 24, 6, 0.0071, 0.0012, 0.0135, 0.01, 0.12, 0.03, True, None),
]
SLICE_COLUMNS = [
    "slice_id",
    "name",
    "kind",
    "columns",
    "n_images",
    "n_groups",
    "effect",
    "effect_lo",
    "effect_hi",
    "p",
    "p_fwer",
    "q",
    "listed",
    "duplicates",
]
# per slice: (concept, side, t, auroc, p_fwer); the significant slices' first concepts pass, the rest do not
CONCEPTS = {
    "s4": [
        ("dim", "adds", 6.1, 0.86, 0.004),
        ("dark", "adds", 5.2, 0.82, 0.011),
        ("sunny", "removes", -4.4, 0.23, 0.03),
    ],
    "s1": [
        ("grainy", "adds", 4.9, 0.8, 0.021),
        ("blurry", "adds", 2.1, 0.63, 0.41),
        ("sharp", "removes", -2.0, 0.4, 0.5),
    ],
    "s2": [("<b>bold</b> & co", "adds", 2.4, 0.64, 0.31), ("studio", "removes", -1.9, 0.41, 0.55)],
    "s3": [("sunny", "adds", 2.2, 0.6, 0.28), ("dim", "removes", -2.0, 0.42, 0.33)],
    "s8": [("snow", "adds", 3.1, 0.7, 0.12), ("grass", "removes", -2.6, 0.35, 0.2)],
    "s0": [("indoor", "adds", 1.1, 0.55, 0.74)],
    "s7": [("dim", "adds", 5.0, 0.88, 0.031), ("grainy", "adds", 3.9, 0.79, 0.09)],
}


def _concepts(names: dict) -> pd.DataFrame:
    rows = []
    for sid, items in CONCEPTS.items():
        ranks = {"adds": 0, "removes": 0}
        for concept, side, t, auroc, p_fwer in items:
            ranks[side] += 1
            rows.append(
                {
                    "slice_id": sid,
                    "slice": names[sid],
                    "rank": ranks[side],
                    "concept": concept,
                    "side": side,
                    "score": 0.02 * t,
                    "t": t,
                    "auroc": auroc,
                    "mean_sim_slice": 0.24 + 0.002 * t,
                    "mean_sim_rest": 0.24,
                    "p_fwer": p_fwer,
                    "q": min(1.0, 2 * p_fwer),
                }
            )
    return pd.DataFrame(rows)


def _exemplars(tmp_path: Path, listed: list[str]) -> dict:
    from PIL import Image

    rng = np.random.default_rng(7)
    folder = tmp_path / "images"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, sid in enumerate(listed):
        paths = []
        for i in range(4):
            shade = rng.integers(40, 215, size=3)
            arr = np.clip(shade + rng.normal(0, 25, (60, 80, 3)), 0, 255).astype(np.uint8)
            path = folder / f"{sid}_{i}.png"
            Image.fromarray(arr).save(path)
            paths.append(str(path))
        out[sid] = paths + [str(folder / f"{sid}_gone.png")]  # a file that is gone: the page skips it
    return out


def _jaccard(s: pd.DataFrame, rng) -> pd.DataFrame:
    ids = list(s.loc[s["listed"], "slice_id"])
    m = np.eye(len(ids))
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            m[i, j] = m[j, i] = round(float(rng.uniform(0, 0.3)), 3)
    return pd.DataFrame(m, index=ids, columns=ids)


def _slices(significant: bool) -> pd.DataFrame:
    s = pd.DataFrame(SLICES, columns=SLICE_COLUMNS)
    s["n_images_rest"] = 400 - s["n_images"]
    s["n_groups_rest"] = 100 - s["n_groups"]
    s["ratio"] = 1 + s["effect"] * 200
    s["column_p"] = s["columns"].map({"camera": 0.003, "time": 0.001, "width": 0.71}).astype(float)
    s["overlaps"] = [[] for _ in range(len(s))]
    s["residual_path"] = [f"residuals/{sid}.npz" for sid in s["slice_id"]]
    s["top_concepts"] = [", ".join(c[0] for c in CONCEPTS.get(sid, [])) for sid in s["slice_id"]]
    s["report_href"] = ["" if sid not in SIGNIFICANT else f"slices/{sid}/report.html" for sid in s["slice_id"]]
    if not significant:
        s["p_fwer"] = s["p_fwer"].clip(lower=0.05)
    return s


def _columns(significant: bool) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "column": ["camera", "time", "width"],
            "kind": ["categorical", "categorical", "numeric (2 quantile bins)"],
            "n_values": [3, 2, 2],
            "n_slices": [3, 2, 2],
            "statistic": [41.2, 57.9, 3.1],
            "p": [0.003, 0.001, 0.71] if significant else [0.31, 0.22, 0.71],
        }
    )


def _figures(s: pd.DataFrame, rng) -> dict:
    """Per listed slice with concepts: its groups' and the rest's similarity to its top concept, shifted by its t."""
    figures = {}
    for sid, n in zip(s.loc[s["listed"], "slice_id"], s.loc[s["listed"], "n_groups"]):
        items = CONCEPTS.get(sid)
        if items:
            concept, side, t = items[0][:3]
            shift = 0.01 * t * (1 if side == "adds" else -1)
            rest = rng.normal(0.24, 0.03, 100 - n)
            figures[sid] = {"concept": concept, "slice": rng.normal(0.24 + shift, 0.03, n), "rest": rest}
    return figures


def _write_outputs(out: Path, s: pd.DataFrame, concepts: pd.DataFrame, info: dict) -> None:
    """What the CLI writes beside the page (the nav links to them) and the concept reports the slices link to."""
    out.mkdir(parents=True, exist_ok=True)
    for href in s["report_href"]:
        if href:
            (out / href).parent.mkdir(parents=True, exist_ok=True)
            (out / href).write_text("<!doctype html><title>concept report</title><p>report</p>")
    s.to_parquet(out / "slices.parquet")
    concepts.to_parquet(out / "concepts.parquet")
    (out / "audit.json").write_text(json.dumps(info, indent=1))


INFO = {
    "unit": "groups",
    "n_units": 100,
    "permutations": 2000,
    "family_slices": len(SLICES),
    "family_concepts": 512,
    "within": None,
    "seed": 0,
    "split": {"discovery groups": 50, "test groups": 50, "seed": 0},
    "alpha": 0.05,
    "vocabulary": "builtin (512 concepts)",
}


def fake_audit_result(tmp_path: Path, significant: bool = True) -> AuditResult:
    """The fixture result; `significant=False` lifts every p_fwer to 0.05 or more (the honest "nothing" case).
    `result.out` is tmp_path/"audit", holding slices.parquet, concepts.parquet, audit.json and the two concept
    reports the significant slices link to."""
    rng = np.random.default_rng(0)
    s = _slices(significant)
    concepts = _concepts(dict(zip(s["slice_id"], s["name"])))
    if not significant:
        concepts["p_fwer"] = concepts["p_fwer"].clip(lower=0.05)
    out = tmp_path / "audit"
    _write_outputs(out, s, concepts, INFO)
    return AuditResult(
        slices=s,
        concepts=concepts,
        columns=_columns(significant),
        info=dict(INFO),
        jaccard=_jaccard(s, rng),
        figures=_figures(s, rng),
        exemplars=_exemplars(tmp_path, list(s.loc[s["listed"], "slice_id"])),
        out=out,
    )
