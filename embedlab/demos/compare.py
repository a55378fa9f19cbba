"""`embedlab compare A B --out DIR`: one command for "how do A and B differ?".

A and B are run folders or any image input of `embedlab.datasets.inputs` (a folder, a manifest, a table of paths, a
Hugging Face dataset on disk, webdataset tars), optionally as ``PATH:SELECTOR`` to pick a subset. Everything is
checked before a model loads (paths, columns, selectors, the model against runs given, the output folder); then
the inputs not yet embedded are extracted (resumably) into DIR/runs/, the residual from A to B is computed
(DIR/residual.npy), explained (DIR/report/), both sets are drawn on one map (DIR/map.html), and DIR/index.html
opens with a paragraph that answers the question.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from embedlab._io import display_path, read_json
from embedlab.errors import ConfigError, IncompatibleRunError

log = logging.getLogger(__name__)
EXTRACT_SHARD_SIZE = 1024  # images per shard of the runs compare extracts


@dataclass
class Side:
    label: str  # "A" or "B"
    spec: str  # as the user wrote it
    path: Path
    selector: str | None
    form: str
    run_dir: Path
    manifest: Path | None = None  # the manifest to extract (None: already a run)


def _split(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """'PATH[:SELECTOR]' -> (path, selector); a path that exists as written wins."""
    text = os.fspath(spec)
    if os.path.exists(text) or ":" not in text:
        return Path(text), None
    path, selector = text.rsplit(":", 1)
    return Path(path), selector or None


def _roles_of(side: Side) -> list[str]:
    if side.manifest is None:
        from embedlab.runs.store import Run

        return sorted(map(str, Run(side.run_dir).read_metadata(["role"])["role"].dropna().unique()))
    from embedlab.datasets.manifest import read_manifest

    return sorted(read_manifest(side.manifest, check_files=False).roles())


def _check_selector(side: Side) -> str:
    """The side's selector (the given one, else its only role), checked against its rows now."""
    from embedlab.datasets.selector import Selector

    if side.selector is None:
        roles = _roles_of(side)
        if len(roles) != 1:
            raise ConfigError(
                f"{side.label} ({display_path(side.spec)}) holds several sets (roles {', '.join(roles[:10])}). "
                f"Fix: pick one as PATH:SELECTOR, e.g. {display_path(str(side.path))}:role={roles[0]}."
            )
        return f"role={roles[0]}"
    sel = Selector.parse(side.selector)
    if side.manifest is None:
        from embedlab.runs.store import Run

        Run(side.run_dir).select(sel)  # raises naming the column or the values present
    else:
        from embedlab.datasets.manifest import read_manifest

        man = read_manifest(side.manifest, check_files=False)
        if not sel.filter(man.entries):
            raise ConfigError(
                f"No image of {side.label} ({display_path(side.spec)}) matches {side.selector!r}. Roles present: "
                f"{sorted(man.roles())}."
            )
    return side.selector


def _resolve_sides(a, b, out: Path, path_column, image_column) -> list[Side]:
    from embedlab.datasets.inputs import as_manifest, input_form

    sides = []
    for label, spec in (("A", a), ("B", b)):
        path, selector = _split(spec)
        form = input_form(path)
        if form == "run":
            sides.append(Side(label, os.fspath(spec), path, selector, form, path))
            continue
        src = as_manifest(path, path_column=path_column, image_column=image_column)  # raises on bad inputs
        run_dir = out / "runs" / label.lower()
        sides.append(Side(label, os.fspath(spec), path, selector, src.form, run_dir, src.manifest))
    return sides


def _model_for(sides: list[Side], model: str | None, pretrained: str | None) -> tuple[str | None, str | None]:
    """The model to embed with: the one given, else that of the runs given; refuses runs of two models, and a
    model given that differs from a run's."""
    runs = [read_json(s.run_dir / "manifest.json") for s in sides if s.manifest is None]
    named = {(m["model"], m["pretrained"]) for m in runs}
    if len(named) > 1 or (len(runs) == 2 and runs[0].get("weights_sha256") != runs[1].get("weights_sha256")):
        raise IncompatibleRunError(
            f"Runs {sides[0].spec} and {sides[1].spec} were made with different models ({sorted(named)}); compare "
            "needs one. Fix: pass the images of one of them instead, so that it is embedded with the other's model."
        )
    if named:
        run_model, run_pre = named.pop()
        if model is not None and (model, pretrained or run_pre) != (run_model, run_pre):
            raise IncompatibleRunError(
                f"The run given was made with {run_model}/{run_pre}, not {model}/{pretrained}. Fix: drop 'model' and "
                "'pretrained' (the run's model is used), or pass images instead of the run."
            ).naming("model", "pretrained")
        return run_model, run_pre
    if model is None:
        raise ConfigError(
            "Neither A nor B is a run, so a model must embed them. Fix: pass 'model' and 'pretrained' (as for "
            "`embedlab extract`)."
        ).naming("model", "pretrained")
    return model, pretrained or "none"


def compare(
    a: str | os.PathLike,
    b: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    path_column: str | None = None,
    image_column: str | None = None,
    method: str = "rave",
    bootstrap: int = 200,
    vocab: str | None = None,
    permutations: int = 1000,
    top: int = 30,
    map_methods: tuple = ("pca", "umap"),
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """How do A and B differ? Embeds what is not yet embedded (resumable, DIR/runs/a and DIR/runs/b), computes the
    residual from A to B, explains it, draws both sets on one map and writes DIR/index.html, whose first paragraph
    answers the question. `model`/`pretrained`: as for `extract`; taken from A or B when one is a run. Returns
    {"answer": the paragraph, "files": {...}, "sets": [...], "concepts": [...]}, whose `.to_pandas()` is the concept
    table."""
    from embedlab._io import check_output_dir

    out = Path(out)
    check_output_dir(out)  # an --out that is an existing file: one line now
    sides = _resolve_sides(a, b, out, path_column, image_column)
    model, pretrained = _model_for(sides, model, pretrained)
    selectors = [_check_selector(s) for s in sides]
    res_path = out / "residual.npy"
    _check_outputs(sides, model, pretrained, res_path, overwrite)
    # --- the work: embed, residual, explain, map, page
    _embed(sides, model, pretrained, device, batch_size, workers, path_column, image_column, overwrite, progress)
    from embedlab.analysis.residual import residual
    from embedlab.reports.explain import explain_residual

    res = residual(
        sides[0].run_dir,
        selectors[0],
        selectors[1],
        res_path,
        to_run=sides[1].run_dir,
        method=method,
        bootstrap=bootstrap,
        progress=progress,
        overwrite=True,  # DIR/residual.npy is compare's own (checked above)
    )
    report = explain_residual(
        res_path, out / "report", vocab=vocab, top=top, permutations=permutations, device=device, progress=progress
    )
    map_path = _draw_map(sides, selectors, out, res_path, map_methods, overwrite)
    return _page(out, sides, selectors, res, report, map_path, model, pretrained, method, map_methods)


def _check_outputs(sides, model, pretrained, res_path: Path, overwrite: bool) -> None:
    """Output collisions, before a model loads: DIR/residual.npy that is not a residual embedlab wrote, and a run in
    DIR/runs/ made from other inputs or with another model (unless `overwrite`)."""
    from embedlab.analysis.residual_file import check_residual_target
    from embedlab.datasets.manifest import scan_manifest
    from embedlab.runs.extract.job import _precheck_identity

    check_residual_target(res_path, overwrite)
    for s in sides:
        if s.manifest is not None and not overwrite and (s.run_dir / "manifest.json").is_file():
            scan = scan_manifest(s.manifest, check_files=False)
            _precheck_identity(s.run_dir, model, pretrained, scan.input_hash, "float32", EXTRACT_SHARD_SIZE)


def _embed(sides, model, pretrained, device, batch_size, workers, path_column, image_column, overwrite, progress):
    todo = [s for s in sides if s.manifest is not None]
    if not todo:
        return
    from embedlab import models
    from embedlab.runs.extract.pipeline import extract

    lm = models.load_model(model, pretrained, device)
    for s in todo:
        extract(
            s.path,
            model,
            pretrained,
            s.run_dir,
            device=device,
            batch_size=batch_size,
            workers=workers,
            shard_size=EXTRACT_SHARD_SIZE,
            overwrite=overwrite,
            progress=progress,
            loaded_model=lm,
            path_column=path_column,
            image_column=image_column,
        )


def _draw_map(sides, selectors, out: Path, res_path: Path, methods, overwrite) -> Path | None:
    """Both sets on one map: the two runs merged into DIR/runs/map (a set column says which is which)."""
    from embedlab.reports.embedding_map import embedding_map
    from embedlab.runs.merge import merge_runs

    merged = out / "runs" / "map"
    merge_runs([s.run_dir for s in sides], merged, overwrite=True, progress=False)
    try:
        embedding_map(merged, out / "map.html", residual=res_path, color_by="merged_from", methods=tuple(methods))
    except (ValueError, ImportError, RuntimeError) as exc:  # a map is a view: the answer does not depend on it
        log.warning("compare: the embedding map was not drawn (%s)", exc)
        return None
    return out / "map.html"


def _page(out, sides, selectors, res, report, map_path, model, pretrained, method, map_methods) -> dict:
    from embedlab.analysis.results import Result
    from embedlab.reports.compare_page import answer, write_compare_page

    names = tuple(f"{s.label} ({Path(s.path).name})" for s in sides)
    text = answer(report, res.info, names)
    rel = lambda p: os.path.relpath(p, out)  # noqa: E731
    sets = [
        {
            "label": s.label,
            "input": display_path(s.spec),
            "form": s.form,
            "run_href": rel(s.run_dir) + "/",
            "selector": sel,
            "count": res.info["from" if s.label == "A" else "to"]["count"],
        }
        for s, sel in zip(sides, selectors)
    ]
    stab = (res.info.get("bootstrap") or {}).get("mean_cosine")
    report_html = out / "report" / "report.html"
    page = write_compare_page(
        out,
        dict(
            title=f"How do {names[0]} and {names[1]} differ?",
            nav_links=[("Compare", "index.html"), ("Concept report", rel(report_html))]
            + ([("Map", rel(map_path))] if map_path else []),
            answer=text,
            warnings=(res.info.get("nonsemantic") or {}).get("warnings", []),
            sets=sets,
            model=f"{model}/{pretrained}",
            method=method,
            residual_href=rel(res.path),
            cos=res.info.get("cos_v_from_v_to"),
            stability=stab,
            concepts=sorted(report.get("concepts", []), key=lambda c: c["rank"])[:20],
            report_href=rel(report_html),
            map_href=rel(map_path) if map_path else None,
            umap="umap" in map_methods,
        ),
    )
    files = {"index": str(page), "residual": str(res.path), "report": str(report_html)}
    if map_path:
        files["map"] = str(map_path)
    concepts = sorted(report.get("concepts", []), key=lambda c: (c["rank"], c["direction"]))
    return Result({"answer": text, "files": files, "sets": sets, "concepts": concepts}, "concepts")
