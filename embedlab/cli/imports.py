"""`embedlab runs import`: embeddings made elsewhere as a run folder (a command of the runs stage, beside
cli/runs.py, which holds the other runs commands)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from embedlab.cli import app as cli
from embedlab.cli.app import handle_errors
from embedlab.cli.runs import runs_app


@runs_app.command("import")
@handle_errors
def runs_import_cmd(
    source: Path = typer.Argument(
        ...,
        help="Embeddings made elsewhere: a clip-retrieval / img2dataset output folder (img_emb/img_emb_N.npy with "
        "metadata/metadata_N.parquet, or under embeddings/), a .npy of vectors (with --paths), or a parquet table "
        "with an embedding column.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The run folder to write."),
    model: str = typer.Option(
        ..., help="The model that made the vectors, NAME[:TAG] (e.g. ViT-B-32:openai); checked against the dimension."
    ),
    paths: Optional[Path] = cli.api_option("A .npy source: the CSV/parquet table of its rows' images."),
    path_column: Optional[str] = cli.api_option(
        "The column of image paths (default: image_path, path, filepath, file_name, file, url or key)."
    ),
    allow_missing_images: bool = cli.api_option(
        "Import even when image paths are not files here (the vectors are used; thumbnails are not)."
    ),
    overwrite: bool = cli.api_option("Replace --out if it exists."),
    shard_size: int = cli.api_option("Vectors per shard."),
    as_json: bool = cli.json_option(),
):
    """Make a run folder of embeddings computed elsewhere, usable by residual, explain-residual and the rest. Rows
    without a vector are kept as skipped rows; vectors are re-normalised only if they are not unit length."""
    summary = cli.call_api("runs.importer:import_run", locals())
    if as_json:
        return cli.print_json(summary)
    rec = summary["imported"]
    typer.echo(
        f"run {out}: {summary['embedded']} vectors imported from {source} as {rec['model_named']}"
        + (f", {summary['skipped']} rows without a vector (see {out}/errors.csv)" if summary["skipped"] else "")
        + (f"; re-normalised (max norm deviation {rec['max_norm_deviation']:.3g})" if rec["renormalised"] else "")
        + (f"; {rec['missing_images']} images not found here" if rec["missing_images"] else "")
    )
