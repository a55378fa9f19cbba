"""Commands of the data stage: models, manifest, synth-backlit."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from embedlab.choices import RECIPES
from embedlab.cli import app as cli
from embedlab.cli.app import app, handle_errors
from embedlab.cli.defaults import FROM_API
from embedlab.datasets.layouts import get_layout, list_layouts

RecipeChoice = cli.choices("RecipeChoice", RECIPES)
LayoutChoice = cli.choices("LayoutChoice", list_layouts())  # the layout registry gives cli.choices and help


@app.command("models")
@handle_errors
def models_cmd(
    pattern: str = typer.Argument("", help="Only names containing this text."),
    as_json: bool = cli.json_option("Print {architecture: [pretrained tags]} as JSON."),
):
    """List the open_clip architectures and pretrained tags embedlab can load."""
    import open_clip

    from embedlab import models

    models.register_configs()
    found = {
        name: list(open_clip.list_pretrained_tags_by_model(name))
        for name in models.list_models()
        if pattern.lower() in name.lower()
    }
    if as_json:
        return cli.print_json(found)
    for name, tags in found.items():
        typer.echo(f"{name:40s} {', '.join(tags) if tags else '(no tags: pass a checkpoint file or none)'}")


@app.command("manifest")
@handle_errors
def manifest_cmd(
    layout: LayoutChoice = typer.Argument(
        ..., help="Dataset layout. " + cli.registry_help({n: get_layout(n).help for n in list_layouts()}) + "."
    ),
    root: Path = typer.Argument(
        Path("."), help="Dataset root folder (ignored for demo); webdataset: a folder of .tar shards or a glob."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest file to write (.jsonl)."),
    role: str = cli.api_option("Set label for every image (flat layout only)."),
    split: Optional[str] = typer.Option(None, help="Split for every image (flat: default train; baid: override)."),
    source: Optional[str] = cli.api_option("Source name recorded per image (flat layout)."),
    as_json: bool = cli.json_option(),
):
    """Write a data manifest for a dataset folder layout (or the bundled demo)."""
    from embedlab.datasets.layouts import manifest

    opts = {"role": role, "source": source}
    if split:
        opts["split"] = split
    report = manifest(layout.value, root, out, **opts)
    if as_json:
        return cli.print_json(report)
    typer.echo(f"wrote {report['files']['manifest']} ({report['count']} images)")
    for note in report.get("notes", [])[:10]:
        typer.echo(f"note: {note}")
    if report.get("dropped_duplicates"):
        typer.echo(
            f"dropped {len(report['dropped_duplicates'])} duplicate(s): {', '.join(report['dropped_duplicates'][:10])}"
        )


@app.command("synth-backlit")
@handle_errors
def synth_backlit_cmd(
    src: List[str] = typer.Argument(
        ...,
        help="Photos: image files, 'pkg' (the package photos), folders (recursive), manifests, CSV/parquet tables of "
        "paths, saved HF datasets or webdataset tars.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder (images/, originals/, manifest.jsonl, params.json)."
    ),
    recipe: RecipeChoice = typer.Option(
        FROM_API,
        case_sensitive=False,
        help="A: backlight (a background mask), B: radial light, C: global exposure (docs/method.md).",
    ),
    seeds: int = cli.api_option("Variants per photo (recipes A and B)."),
    first_seed: int = cli.api_option("First seed."),
    split: str = cli.api_option("Split recorded in the manifest."),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """Render paired synthetic backlit (or exposure-error) versions of photos, with a manifest."""
    r = cli.call_api("datasets.synth_sets:synth_backlit", locals())
    if as_json:
        return cli.print_json(r)
    typer.echo(f"wrote {r['images']} images and {r['files']['manifest']}")
