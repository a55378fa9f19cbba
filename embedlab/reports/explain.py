"""explain: split from explain.py."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd

from embedlab._io import cache_ref, check_output_dir
from embedlab._validate import Interval, check_param
from embedlab.analysis.explain import FIGURE_CONCEPTS, MIN_EXPLAINED, explain_vectors
from embedlab.analysis.image_sets import ImageSets, set_group_ids
from embedlab.analysis.results import Result
from embedlab.errors import ConfigError
from embedlab.reports.concept_report import bar_chart, similarity_histograms, write_report
from embedlab.reports.html import png_data_uri, thumb_data_uri

log = logging.getLogger(__name__)


def _set_vectors(side: dict):
    from embedlab.runs.store import Run

    run = Run(side["run"])
    return run, run.select(side["selector"])


def _exemplars(run, mask: np.ndarray, nearest: list[tuple]) -> list[list[dict]]:
    """Per concept, the nearest images of one set ((scores, positions within the set), exact: found in the
    streamed pass) with their run rows' ids and files, read in one visit of the shards that hold them."""
    set_rows = np.flatnonzero(mask)
    picked = [set_rows[np.asarray(pos, np.int64)] for _, pos in nearest]
    rows = np.unique(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
    meta = dict(zip(rows.tolist(), run.metadata_rows(rows, ["row_id", "path", "file"]).itertuples(index=False)))
    return [
        [
            {"row_id": int(meta[r].row_id), "path": str(meta[r].path), "file": str(meta[r].file), "score": float(sc)}
            for sc, r in zip(scores, rows_j.tolist())
        ]
        for (scores, _), rows_j in zip(nearest, picked)
    ]


def explain_residual(
    residual,
    out: str | os.PathLike = "report",
    *,
    vocab: str | None = None,
    templates: str | None = None,
    top: int = 30,
    candidates: int = 500,
    permutations: int = 1000,
    seed: int = 0,
    exemplars: int = 3,
    device: str = "auto",
    progress: bool = True,
    deflated_steps: int = 10,
    family: str = "page",
    min_explained: float = MIN_EXPLAINED,
) -> dict:
    """Rank concepts for a residual (its .npy, or a `Residual`, e.g. one computed in memory) and write
    report.{json,csv,md,html} into `out`. Returns the report: a dict whose `.to_pandas()` is the concept table."""
    from embedlab.analysis.residual_file import as_residual

    check_param("top", top, Interval(int, 1, 500), "explain_residual")
    check_param("permutations", permutations, Interval(int, 0), "explain_residual")
    check_param("candidates", candidates, Interval(int, 1), "explain_residual")
    check_output_dir(out)  # an --out that is an existing file: one line now, not a traceback at the end
    res = as_residual(residual)  # a Residual (a notebook's, maybe in memory) or its file
    V, E, text_info = _embed_vocabulary(res, vocab, templates, device, progress)
    sets, groups, runs, note = _source_sets(res, progress)
    result = explain_vectors(
        res.vector,
        E,
        V.concepts,
        sets,
        None,
        groups,
        top=top,
        candidates=candidates,
        permutations=permutations,
        seed=seed,
        method=res.info.get("method", "rave"),
        deflated_steps=deflated_steps,
        family=family,
        min_explained=min_explained,
        exemplars=exemplars,
    )
    info = _report_info(result["info"], text_info, note)
    table = pd.concat([result["adds"], result["removes"]], ignore_index=True)
    report = {
        "embedlab_report": 1,
        "info": info,
        "residual": _residual_record(res),
        "concepts": table.replace({np.nan: None}).to_dict(orient="records"),
        "exemplars": [],
    }
    figures = {"bar": png_data_uri(bar_chart(result["adds"], result["removes"]))}
    if runs is not None and "figure" in result:
        figures["histograms"] = _exemplars_and_histograms(report, result, runs, exemplars, res)
    html_exemplars = _html_exemplars(report)
    report["files"] = write_report(out, report, figures, html_exemplars)
    return Result(report, "concepts")  # a dict; .to_pandas(): the ranked concepts


def _embed_vocabulary(res, vocab, templates, device: str, progress: bool) -> tuple:
    """The vocabulary, its concepts' text embeddings with the residual's model, and the report's record of both.
    The network is built (and its weights checked against the residual's) only if some text is not cached."""
    from embedlab import models
    from embedlab.analysis import vocab as vb

    mi = res.info["model"]
    lm = models.TextModelHandle(mi["model"], mi["pretrained"], mi["weights_sha256"], len(res.vector), device)
    V = vb.resolve_vocab(vocab, lm)
    tpls = vb.resolve_templates(templates)
    t0 = time.perf_counter()
    E, cache_info = vb.embed_concepts(lm, V.concepts, tpls, progress=progress)
    t_embed = time.perf_counter() - t0
    text_info = dict(
        vocabulary=V.name,
        vocabulary_source=V.source,
        templates=tpls,
        text_embedding_seconds=round(t_embed, 3),
        text_cache=cache_info["cache"],
    )
    return V, E, text_info


def _report_info(result_info: dict, text_info: dict, note: str | None) -> dict:
    """The report's info: the ranking's, the vocabulary's and text embeddings', and why significance was skipped."""
    info = dict(result_info, **text_info, significance_note=note)
    if text_info["vocabulary"] == "model":
        info["vocabulary_note"] = (
            "Default vocabulary for this model: the words and phrases it was trained on "
            "(other words would score as noise)."
        )
    return info


def _source_sets(res, progress: bool) -> tuple:
    """The residual's two image sets read back from its source runs, for significance: (sets, group ids, (run_a,
    mask_a, run_b, mask_b), None), or (None, None, None, why) where the runs cannot be read."""
    try:
        (run_a, mask_a), (run_b, mask_b) = _set_vectors(res.info["from"]), _set_vectors(res.info["to"])
        sets = ImageSets.from_runs(run_a, mask_a, run_b, mask_b, progress=progress)  # read in blocks, never held
        groups = set_group_ids(
            run_a.read_metadata(["group"])["group"][mask_a], run_b.read_metadata(["group"])["group"][mask_b]
        )
    except (ConfigError, FileNotFoundError, KeyError) as exc:
        note = f"Significance skipped: the source runs could not be read ({exc})."
        log.warning(note)
        return None, None, None, note
    return sets, groups, (run_a, mask_a, run_b, mask_b), None


def _residual_record(res) -> dict:
    """The report's record of the residual it explains."""
    mi = res.info["model"]
    return {
        "path": str(res.path) if res.path is not None else None,
        "method": res.info.get("method"),
        "from": res.info["from"]["selector"],
        "to": res.info["to"]["selector"],
        "model": f"{mi['model']}/{mi['pretrained']}",
        "thr": res.thr,
        "edits": res.info.get("edits", []),
    }


def _exemplars_and_histograms(report: dict, result: dict, runs, exemplars: int, res) -> str:
    """Append the figure concepts' exemplar images to report["exemplars"]; return the similarity histograms."""

    run_a, mask_a, run_b, mask_b = runs
    both = pd.concat([result["adds"], result["removes"]])
    names = dict(zip(both["vocab_index"], both["concept"]))
    n_adds = min(FIGURE_CONCEPTS["adds"], len(result["adds"]))
    if exemplars > 0:
        ex_from = _exemplars(run_a, mask_a, result["nearest"]["from"])
        ex_to = _exemplars(run_b, mask_b, result["nearest"]["to"])
    hists = []
    for i, j in enumerate(result["figure"]["index"]):
        side = "adds" if i < n_adds else "removes"
        hists.append((names[j], result["figure"]["from"][:, i], result["figure"]["to"][:, i], side))
        if exemplars > 0:
            report["exemplars"].append({"concept": names[j], "direction": side, "from": ex_from[i], "to": ex_to[i]})
    return png_data_uri(similarity_histograms(hists, res.info["from"]["selector"], res.info["to"]["selector"]))


def _html_exemplars(report: dict) -> list:
    """The exemplars with thumbnails for the HTML page; both lists' files become cache references."""

    thumbs = {it["file"]: None for ex in report["exemplars"] for s in ("from", "to") for it in ex[s]}
    thumbs = {f: thumb_data_uri(f) for f in thumbs}  # an image is often exemplar of several concepts
    html_exemplars = [
        {**ex, **{s: [dict(it, thumb=thumbs[it["file"]]) for it in ex[s]] for s in ("from", "to")}}
        for ex in report["exemplars"]
    ]
    for it in (
        it for exs in (report["exemplars"], html_exemplars) for ex in exs for s in ("from", "to") for it in ex[s]
    ):
        it["file"] = cache_ref(it["file"])  # files materialised in the cache: no user's home in the report
    return html_exemplars
