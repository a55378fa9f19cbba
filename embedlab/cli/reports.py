"""Commands of the reports stage: plot, embedding-map."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from embedlab.cli import app as cli
from embedlab.cli.app import app, handle_errors
from embedlab.cli.defaults import FROM_API, default


@app.command("plot")
@handle_errors
def plot_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Optional[Path] = typer.Option(FROM_API, "--out", "-o", help="Output folder (default RUN/plots)."),
    color_by: str = cli.api_option("Metadata column that colours the points."),
    residual: Optional[Path] = cli.api_option("Draw this residual's direction."),
    umap: bool = typer.Option("umap" in default("plot", "methods"), help="Also draw a UMAP (cosine) map."),
    projector: bool = cli.api_option("Export tensors.tsv/metadata.tsv for the TensorBoard projector."),
    max_points: int = cli.api_option(
        "Larger runs are drawn from a seeded sample of this many images, "
        "stratified by --color-by and group (the titles and sample.json say so)."
    ),
    seed: int = cli.api_option("Seed for the sample and for UMAP."),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """2-D maps (PCA, UMAP) of a run's image embeddings, coloured by set, with the residual drawn."""
    methods = ("pca", "umap") if umap else ("pca",)
    out = out or run / "plots"  # the API writes nothing without an out (it returns a Figure)
    cli.finish(cli.call_api("reports.plot:plot", locals(), exclude=("umap",), methods=methods), as_json)


@app.command("embedding-map")
@handle_errors
def embedding_map_cmd(
    run: Path = typer.Argument(..., help="Run folder."),
    out: Optional[Path] = typer.Option(FROM_API, "--out", "-o", help="The .html to write (default RUN/map.html)."),
    residual: Optional[Path] = cli.api_option("Draw this residual (its sets are found in the run by their selectors)."),
    color_by: str = cli.api_option("Metadata column coloured at first (any column can be picked on the page)."),
    max_points: int = cli.api_option("Subsample bigger runs to this many images (seeded; the page states it)."),
    umap: bool = typer.Option("umap" in default("embedding-map", "methods"), help="Also compute a UMAP (cosine) view."),
    as_json: bool = cli.json_option(),
):
    """Interactive map of a run's image embeddings: one offline HTML page, PCA/UMAP, thumbnails on hover, search."""
    methods = ("pca", "umap") if umap else ("pca",)
    out = out or run / "map.html"  # the API writes nothing without an out (it returns a Figure)
    result = cli.call_api("reports.embedding_map:embedding_map", locals(), exclude=("umap",), methods=methods)
    if as_json:
        return cli.print_json(result)
    typer.echo(str(result["files"]["html"]))


@app.command("audit")
@handle_errors
def audit_cmd(
    runs: list[Path] = typer.Argument(
        ..., help="Run folder(s) of one model; together they are the audited collection."
    ),
    by: str = cli.api_option(
        "Metadata columns to audit, comma-separated: each value against the rest of the images ('all': every column "
        "with 2 to 50 values, image size, format and decoder included)."
    ),
    out: Path = typer.Option(Path("audit"), "--out", "-o", help="Output folder (audit.html, *.parquet, residuals/)."),
    metadata: Optional[Path] = cli.api_option(
        "A .csv/.parquet side table with a 'path' column, joined on the image path."
    ),
    within: Optional[str] = cli.api_option("Permute only within this column's values (a confounder, e.g. camera)."),
    score: Optional[str] = cli.api_option("A numeric per-image column (a loss, an error) tested per slice as well."),
    from_: Optional[str] = cli.api_option(
        "With --to: audit the residual from this set (a selector) in every slice, not the images.", "--from"
    ),
    to: Optional[str] = cli.api_option(
        "The residual's target set; each group holding both sets gives its own to-minus-from difference."
    ),
    vocab: Optional[str] = cli.api_option(
        "Vocabulary that describes each slice, as in explain-residual: concepts, tokens, words, model, or a file "
        "with one concept per line (default as there)."
    ),
    templates: Optional[str] = cli.api_option(cli.TEMPLATES_HELP),
    bins: int = cli.api_option("Quantile bins of a numeric column (each bin is a slice and counts in the family)."),
    depth: int = cli.api_option("Conjunctions of up to this many predicates of different columns (1: none)."),
    min_groups: int = cli.api_option("Groups (or images, without groups) needed inside a slice and outside it."),
    discover: int = cli.api_option(
        "Also find this many slices in embedding space (k-means on a seeded half of the groups, described on the "
        "other half)."
    ),
    permutations: int = cli.api_option("Shared permutations of the audit-wide test (p-values are at least 1/(K+1))."),
    seed: int = cli.api_option("Seed of the permutations, the discovery split and the bootstrap."),
    top: int = cli.api_option("Concepts listed per slice and side."),
    alpha: float = cli.api_option("Family-wise level of the headline claims."),
    q: float = cli.api_option("False discovery rate of the exploratory list (hierarchical: slices, then concepts)."),
    bootstrap: int = cli.api_option("Group-bootstrap draws for each slice's effect interval (0: none)."),
    engine: str = cli.api_option(
        "local, or ray: the pass over the vectors as one Ray task per shard (a local Ray instance is started)."
    ),
    memory_budget: str = cli.api_option(
        "What the permutation test holds must fit in this (e.g. 4G): the unit vectors, the slices' weights per unit "
        "and the permutation table; refused before any vector is read."
    ),
    screen: bool = cli.api_option(
        "Only the streamed pass, for collections whose units do not fit in memory: images as units, every slice's "
        "effect, omnibus ratio T and top concepts from its sums, nothing tested (no page; slices.parquet ranked by T). "
        "Not with --from/--to, --within, --score or --discover."
    ),
    device: str = cli.device_option(),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """Which slices of a collection differ from the rest, and how, in words: every value of the named metadata columns
    (and conjunctions, and clusters with --discover) against the rest of the images, with one audit-wide test over
    all slices and concepts (the unit is the group when images come in groups)."""
    cli.finish(cli.call_api("reports.audit:audit", locals()), as_json, _show_audit, summary=_audit_summary)


def _audit_summary(result) -> dict:
    """audit's --json: the audit's info and its slices as records."""
    return {"info": result.info, "slices": result.slices.to_dict(orient="records")}


def _show_audit(result) -> None:
    """audit's text: its summary line and the page (or table) to open."""
    from embedlab.reports.audit import summary_line

    typer.echo(summary_line(result))
    typer.echo(f"open {result.out / result.info.get('page', 'slices.csv')}")
