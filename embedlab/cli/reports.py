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
    cli.emit_files(cli.call_api("reports.plot:plot", locals(), exclude=("umap",), methods=methods), as_json)


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
    result = cli.call_api("reports.embedding_map:embedding_map", locals(), exclude=("umap",), methods=methods)
    if as_json:
        return cli.print_json(result)
    typer.echo(str(result["files"]["html"]))
