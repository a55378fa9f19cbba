"""Commands of the exports stage: export fiftyone, export concept-scores."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional

import typer

from embedlab.choices import CONCEPT_CATEGORIES, SCORE_LAYOUTS
from embedlab.cli import app as cli
from embedlab.cli.app import app, handle_errors
from embedlab.cli.defaults import FROM_API, default
from embedlab.errors import MissingDependencyError

export_app = cli.StageTyper(
    prefix="export ",
    no_args_is_help=True,
    help="Hand a run to other tools: a FiftyOne dataset, per-image concept scores as parquet.",
)
app.add_typer(export_app, name="export")

LayoutChoice = cli.choices("LayoutChoice", SCORE_LAYOUTS)
VOCAB_HELP = (
    "concepts (embedlab's concept bank; concepts:CATEGORY,... for some of "
    f"{', '.join(CONCEPT_CATEGORIES)}), tokens, words, model, or a file with one concept per line. Default: the "
    "model's own vocabulary, else the concept bank (a real CLIP), else words."
)
RESIDUAL_HELP = "A residual .npy of this run's model: each image's projection on it and which of its sets it is in."
CENTRED_HELP = (
    "Score: cosine with the centred concept (vocabulary mean removed, as explain-residual), or --no-centred for "
    "the raw cosine."
)


def _missing_extra(exc) -> None:
    """An optional package that is not installed: one line with the pip command, exit 2."""
    typer.echo(f"Error: {exc}", err=True)
    raise typer.Exit(2)


@export_app.command("fiftyone")
@handle_errors
def export_fiftyone_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    name: str = typer.Option(..., "--name", help="The FiftyOne dataset to write (persistent)."),
    residual: Optional[Path] = cli.api_option(RESIDUAL_HELP),
    vocab: Optional[str] = cli.api_option(VOCAB_HELP),
    templates: Optional[str] = cli.api_option(cli.TEMPLATES_HELP),
    top: int = typer.Option(FROM_API, "--top", "-k", help="Top concepts per image (the 'concepts' field; 1-100)."),
    umap: bool = typer.Option("umap" in default("export fiftyone", "methods"), help="Also a UMAP (cosine) map."),
    max_points: int = cli.api_option("Larger runs: a seeded sample of this many images, stratified by role and group."),
    seed: int = cli.api_option("Seed for the sample and for UMAP."),
    overwrite: bool = cli.api_option("Replace a FiftyOne dataset of that name."),
    device: str = cli.device_option(),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """A FiftyOne dataset of a run (optional extra: pip install 'embedlab[fiftyone]'): embeddings, a 2-D map (Brain
    visualization: lasso sets in the App), each image's projection on the residual and its top concepts."""
    methods = ("pca", "umap") if umap else ("pca",)
    try:
        ds = cli.call_api("exports.fiftyone_dataset:export_fiftyone", locals(), exclude=("umap",), methods=methods)
    except MissingDependencyError as exc:
        return _missing_extra(exc)
    summary = {"dataset": ds.name, "samples": len(ds), "fields": sorted(ds.get_field_schema()), **ds.info["embedlab"]}
    if as_json:
        return cli.print_json(summary)
    typer.echo(
        f"FiftyOne dataset {ds.name!r}: {len(ds)} images of {run}, top {top} concepts of {summary['vocabulary']}, "
        f"maps {', '.join(summary['maps'])}. Open it with: fiftyone app launch {ds.name}"
    )


@export_app.command("concept-scores")
@handle_errors
def export_concept_scores_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Path = typer.Option(..., "--out", "-o", help="The parquet file to write."),
    residual: Optional[Path] = cli.api_option(RESIDUAL_HELP),
    vocab: Optional[str] = cli.api_option(VOCAB_HELP),
    templates: Optional[str] = cli.api_option(cli.TEMPLATES_HELP),
    layout: LayoutChoice = cli.api_option(
        "wide (one row per image, one column per concept) or tidy (one row per image and concept: concept, score, "
        "rank)."
    ),
    top: Optional[int] = typer.Option(
        FROM_API, "--top", "-k", help="tidy: each image's top k concepts only (default: every concept)."
    ),
    centred: bool = cli.api_option(CENTRED_HELP),
    overwrite: bool = cli.api_option("Replace --out if it exists."),
    device: str = cli.device_option(),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """Per-image concept similarity scores of a run as one parquet table (wide or tidy) that any tool reads."""
    table = cli.call_api("exports.concept_scores:export_concept_scores", locals())
    cli.finish(table, as_json, partial(_show_table, out), summary=_table_summary)


def _table_summary(table) -> dict:
    """export concept-scores' --json: the table's attributes and its size."""
    return dict(table.attrs, rows=len(table), columns=len(table.columns))


def _show_table(out: Path, table) -> None:
    """export concept-scores' text: the file written, the table's size and layout, and the vocabulary."""
    typer.echo(
        f"wrote {out} ({len(table):,} rows x {len(table.columns):,} columns, {table.attrs['layout']}; "
        f"{table.attrs['vocabulary_source']})"
    )
