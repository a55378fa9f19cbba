"""`audit --screen`: the audit's streamed pass alone, for collections whose test units do not fit in memory (a
million images without groups): every slice's one-vs-rest sums in one pass, then from the sums alone each slice's
debiased effect, its omnibus ratio T and the concepts its difference direction points to. Images are the units and
nothing is tested: the screen ranks slices (a slice with T near 1 differs no more than a random relabelling would);
claims need the full audit (groups, or a subset of the images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedlab.analysis.audit import AuditConfig, check_family
from embedlab.analysis.audit_result import AuditResult
from embedlab.analysis.audit_scale import omnibus_screen, screen_concept_scores
from embedlab.analysis.explain import centre, unit_rows32
from embedlab.errors import ConfigError
from embedlab.reports.audit_files import write_summary, write_tables

SCREEN_TOP = 3  # concepts named per slice and side in the table
SCREEN_NOTE = (
    "screen: images as units, nothing tested. T = |d|^2 / E|d|^2 under a random relabelling of the images (about 1 "
    "when a slice differs no more than chance would make it; correlated images, such as crops of one photo, raise "
    "it). Claims need the full audit."
)


def check_screen_options(cfg: AuditConfig, from_, within, score) -> None:
    """The screen has no units and no permutations: refuse the options that need them, before any work."""
    needs = {"from_": from_ is not None, "within": within is not None, "score": score is not None,
             "discover": bool(cfg.discover)}  # fmt: skip
    given = [k for k, v in needs.items() if v]
    if given:
        raise ConfigError(
            f"'screen' runs the streamed pass alone (images as units, no permutations), which does not take "
            f"{', '.join(repr(g) for g in given)}. Fix: drop {'it' if len(given) == 1 else 'them'}, or audit without "
            "'screen'."
        ).naming("screen", *given)


def screen_runs(opened: list, keep: np.ndarray, fam, E: np.ndarray, concepts: list[str], cfg: AuditConfig,
                progress: bool) -> AuditResult:  # fmt: skip
    """The screen of the metadata slices `fam` over the audited rows `keep` of the runs `opened`."""
    from embedlab.analysis.audit_pass import screen_block_sums, stream_sums
    from embedlab.analysis.slices import membership

    check_family(fam, cfg)
    masks = [sl.mask for sl in fam.slices]
    n = int(keep.sum())
    # one more column: every audited image, whose sum (the total) the pass returns as unit 0's
    M = membership([*masks, np.ones(n, bool)], len(keep), np.flatnonzero(keep))
    acc = stream_sums(opened, np.where(keep, 0, 1), 2, M, None, cfg.engine, progress, block_fn=screen_block_sums)
    total = acc["unit_sums"][0]
    counts = np.array([m.sum() for m in masks], np.float64)
    # a run stores unit vectors, so their squared norms sum to n
    scr = omnibus_screen(acc["slice_sums"], counts, total, float(n), n)
    C, _ = centre(unit_rows32(E))
    scores = screen_concept_scores(scr["d"], C)
    table, concept_rows = [], []
    for s, sl in enumerate(fam.slices):
        named = {}
        for side, order in (("adds", np.argsort(-scores[s])), ("removes", np.argsort(scores[s]))):
            picked = [j for j in order[:SCREEN_TOP] if (scores[s, j] > 0) == (side == "adds")]
            named[side] = [concepts[j] for j in picked]
            concept_rows += [{"slice_id": s, "slice": sl.name, "side": side, "rank": r, "concept": concepts[j],
                              "vocab_index": int(j), "score": float(scores[s, j])}
                             for r, j in enumerate(picked, 1)]  # fmt: skip
        words = "; ".join(f"{w} {', '.join(named[k])}" for k, w in (("adds", "more"), ("removes", "less")) if named[k])
        table.append({"slice_id": s, "name": sl.name, "kind": sl.kind, "columns": ",".join(sl.columns),
                      "n_images": int(counts[s]), "n_images_rest": n - int(counts[s]), "effect": scr["effect"][s],
                      "statistic": scr["T"][s], "d2": scr["d2"][s], "e0": scr["e0"][s], "top_concepts": words,
                      "listed": True})  # fmt: skip
    slices = pd.DataFrame(table).sort_values("statistic", ascending=False, na_position="last")
    of_column = {c: [s for s, sl in enumerate(fam.slices) if sl.columns == (c,)] for c in fam.columns["column"]}
    columns = fam.columns.assign(statistic=[float(np.nanmean(scr["T"][of_column[c]])) if of_column[c] else np.nan
                                            for c in fam.columns["column"]])  # fmt: skip
    info = {"mode": "screen", "unit": "images", "n_units": n, "n_images": n, "family_slices": len(fam.slices),
            "vocabulary": len(concepts), "alpha": cfg.alpha, "skipped": fam.skipped, "note": SCREEN_NOTE,
            "columns_statistic": "mean T of the column's slices",
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}  # fmt: skip
    result = AuditResult(slices.reset_index(drop=True), pd.DataFrame(concept_rows), columns, info)
    result.masks = {s: m for s, m in enumerate(masks)}
    return result


def write_screen(result: AuditResult, out: Path) -> None:
    """slices/concepts/columns .parquet, then audit.json and slices.csv (no page, no residual files)."""
    out.mkdir(parents=True, exist_ok=True)
    write_tables(result, out)
    write_summary(result, out)
    result.out = out


def screen_line(result: AuditResult) -> str:
    """The console line of a screen: the slices with the largest T, and that nothing was tested."""
    s = result.slices.dropna(subset=["statistic"]).head(3)
    named = ", ".join(f"{r.name} (T {r.statistic:.1f}; {r.top_concepts or 'no concept'})" for r in s.itertuples())
    return (
        f"audit --screen: {len(result.slices)} slices over {len(result.columns)} column(s), images as units, not "
        f"tested; largest T: {named or 'none'}. Claims need the full audit (groups, or a subset)."
    )
