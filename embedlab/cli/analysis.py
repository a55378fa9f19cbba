"""Commands of the analysis stage: residual, explain-residual, correct, probe-residual."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from embedlab.choices import CORRECT_PRESETS, FAMILIES, METHODS
from embedlab.cli import app as cli
from embedlab.cli.app import app, handle_errors
from embedlab.cli.defaults import FROM_API

MethodChoice = cli.choices("MethodChoice", METHODS)
CorrectPresetChoice = cli.choices("CorrectPresetChoice", CORRECT_PRESETS)


@app.command("residual")
@handle_errors
def residual_cmd(
    run: Path = typer.Argument(..., help="Run folder (the 'from' set, and the 'to' set unless --to-run)."),
    from_: str = typer.Option(
        ..., "--from", help="The starting set: a set label (backlit), COLUMN=VALUE, or several joined by commas."
    ),
    to: str = typer.Option(..., "--to", help="The target set, same syntax (e.g. welllit)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npy (a JSON sidecar is written beside it)."),
    to_run: Optional[Path] = cli.api_option("Take the 'to' set from this run (same model and preprocessing required)."),
    method: MethodChoice = cli.api_option(
        "rave (the paper: normalise, mean, normalise, subtract, normalise; docs/method.md) or mean-diff."
    ),
    bootstrap: int = cli.api_option("Bootstrap resamples for the stability figure (0 = skip)."),
    seed: int = cli.api_option("Random seed for the bootstrap."),
    memory_budget: str = cli.api_option(
        "Memory for what the streaming pass keeps beyond one block of "
        "vectors (per-group sums, bootstrap weights), e.g. 512M, 2G."
    ),
    progress: bool = cli.progress_option(),
    overwrite: bool = cli.api_option("Replace --out when it is a file embedlab did not write."),
    as_json: bool = cli.json_option(),
):
    """Compute the residual vector between two image sets (the paper's formula) with its sidecar.

    Streams the run's memory-mapped vectors once, block by block: runs larger than memory are fine."""
    res = cli.call_api("analysis.residual:residual", locals())
    if as_json:
        return cli.print_json(res.summary())
    info = res.info
    typer.echo(
        f"wrote {out} (dim {len(res.vector)}, thr {res.thr:.4f}; {info['from']['count']} '{from_}' -> "
        f"{info['to']['count']} '{to}' images; cos(v_from, v_to) = {info['cos_v_from_v_to']:.4f})"
    )
    if info["bootstrap"]:
        b = info["bootstrap"]
        typer.echo(
            f"bootstrap stability ({b['n_boot']} resamples of {b['unit']}s): mean cosine {b['mean_cosine']:.3f}, "
            f"95% interval [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]"
        )


FamilyChoice = cli.choices("FamilyChoice", FAMILIES)
VOCAB_HELP = (
    "concepts (embedlab's concept bank for bias studies: objects, scenes, attributes, photographic and lighting "
    "qualities, people-neutral descriptors; concepts:CATEGORY,... for some), tokens (all tokenizer tokens, as "
    "RAVE), words, model (the model's own), or a file with one concept per line. Default: model when the model "
    "ships one (the demo CLIP), else concepts for a real CLIP, else words."
)
FAMILY_HELP = (
    "What p_fwer controls: page (both lists, one family) or a one-sided question about one list (adds or "
    "removes; the other list gets no p-values)."
)


@app.command("explain-residual")
@handle_errors
def explain_residual_cmd(
    residual: Path = typer.Argument(..., help="residual.npy (with its sidecar)."),
    vocab: Optional[str] = cli.api_option(VOCAB_HELP),
    templates: Optional[str] = cli.api_option(cli.TEMPLATES_HELP),
    top: int = typer.Option(FROM_API, "--top", "-k", help="Concepts per side after deflation (the top k; 1-500)."),
    out: Path = typer.Option(FROM_API, "--out", "-o", help="Report folder."),
    candidates: int = cli.api_option("Top concepts that get per-image statistics (AUROC, Welch p, BH q)."),
    permutations: int = cli.api_option("Label shuffles for the family-wise permutation test (0 = skip)."),
    seed: int = cli.api_option("Seed for the shuffles."),
    deflated_steps: int = cli.api_option("Deflation steps that get the sequential permutation test (p_fwer_deflated)."),
    family: FamilyChoice = cli.api_option(FAMILY_HELP),
    min_explained: float = cli.api_option("A list ends at a pick that explains less than this share of |r|^2."),
    exemplars: int = cli.api_option("Exemplar images per top concept and set."),
    device: str = cli.device_option(),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """Rank the concepts a residual carries, with significance, into report.{json,csv,md,html}."""
    cli.finish(cli.call_api("reports.explain:explain_residual", locals()), as_json, _show_explanation)


def _show_explanation(rep: dict) -> None:
    """explain-residual's text: each side's first five concepts, and the report's file."""
    for side in ("adds", "removes"):
        rows = [c for c in rep["concepts"] if c["direction"] == side][:5]
        typer.echo(
            f"{side}: "
            + ", ".join(
                f"{c['concept']} ({c['score_centred']:.3f}"
                + (f", p={c['p_fwer_deflated']:.3g}" if c.get("p_fwer_deflated") is not None else "")
                + ")"
                for c in rows
            )
        )
    typer.echo(f"report: {rep['files']['html']} (also .json, .csv, .md)")


@app.command("correct")
@handle_errors
def correct_cmd(
    residual: Path = typer.Argument(..., help="residual.npy to correct."),
    out: Path = typer.Option(..., "--out", "-o", help="Corrected .npy (with sidecar)."),
    remove: Optional[List[str]] = cli.api_option("A concept to project out (centred text embedding); repeatable."),
    remove_pair: Optional[List[str]] = cli.api_option(
        "'PROMPT|BASELINE': project out the difference of two prompts; repeatable."
    ),
    remove_labelled: Optional[str] = cli.api_option(
        "'RUN:COLUMN=VALUE': learn directions separating those images (INLP)."
    ),
    remove_edit: Optional[List[str]] = cli.api_option(
        "'EDIT[:STRENGTH]': project out the mean change an image edit of probe-residual (e.g. vignette:2, blur, "
        "jpeg:20) makes to the residual's 'from' images; no strength: the edit's first listed; repeatable."
    ),
    remove_edit_like: Optional[List[str]] = cli.api_option(
        "A concept to remove through the non-lighting image edit whose direction is closest to its text direction "
        "(a report's finding, e.g. 'vignetted'); the candidates and cosines go to the sidecar; repeatable."
    ),
    preset: Optional[CorrectPresetChoice] = cli.api_option(
        "rave-shift: the released RAVE code's shifted residual (docs/method.md)."
    ),
    top: int = typer.Option(FROM_API, "--top", "-k", help="Tokens per side for --preset rave-shift (the top k)."),
    edit_images: int = typer.Option(
        FROM_API, "--edit-images", help="Images of the 'from' set an image edit is measured on (a seeded sample)."
    ),
    vocab: Optional[str] = cli.api_option("Vocabulary whose mean centres --remove concepts (as in explain-residual)."),
    templates: Optional[str] = cli.api_option("Templates for --remove concepts. " + cli.TEMPLATES_HELP),
    device: str = cli.device_option(),
    as_json: bool = cli.json_option(),
):
    """Remove bias directions from a residual by orthogonal projection; writes every edit to the sidecar."""
    from embedlab.analysis.correct import correct

    res = correct(
        residual,
        out,
        remove=remove,
        remove_pair=_remove_pairs(remove_pair),
        remove_labelled=_remove_labelled(remove_labelled),
        remove_edit=remove_edit,
        remove_edit_like=remove_edit_like,
        preset=preset.value if preset else None,
        k=top,
        edit_images=edit_images,
        vocab=vocab,
        templates=templates,
        device=device,
    )
    if as_json:
        return cli.print_json(res.summary())
    c = res.info["correction"]
    typer.echo(
        f"wrote {out}: cos(r, r') = {c['cos_before_after']:.4f}, {100 * c['fraction_of_norm_removed']:.1f}% of |r| "
        f"removed, "
        f"thr {c['thr_before']:.4f} -> {c['thr_after']:.4f}"
    )
    for d in c["directions"]:
        typer.echo(f"  {d['label']}: projection {d['projection_before']:.4f} -> {d['projection_after']:.2e}")


def _remove_pairs(specs: Optional[List[str]]) -> list:
    """--remove-pair 'PROMPT|BASELINE' values as (prompt, baseline) pairs."""
    from embedlab.errors import ConfigError

    pairs = []
    for spec in specs or []:
        if "|" not in spec:
            raise ConfigError(
                f"--remove-pair takes 'PROMPT|BASELINE' (e.g. 'a photo of a person|a photo'). Got {spec!r}."
            )
        a, b = spec.split("|", 1)
        pairs.append((a.strip(), b.strip()))
    return pairs


def _remove_labelled(spec: Optional[str]) -> Optional[tuple]:
    """--remove-labelled RUN:COLUMN=VALUE as (run, selector), or None."""
    if not spec:
        return None
    from embedlab.datasets.selector import split_spec
    from embedlab.errors import ConfigError

    if ":" not in spec:
        raise ConfigError(f"--remove-labelled takes RUN:COLUMN=VALUE. Got {spec!r}.")
    run_path, selector = split_spec(spec, "")
    return (run_path, str(selector))


@app.command("probe-residual")
@handle_errors
def probe_residual_cmd(
    residual: Path = typer.Argument(..., help="residual.npy (with its sidecar: model and thr)."),
    images: List[str] = typer.Argument(
        ..., help="Images: files, folders, tables of paths, saved datasets, or MANIFEST.jsonl[:SELECTOR]."
    ),
    out: Optional[Path] = typer.Option(
        FROM_API, "--out", "-o", help="Output folder (default RESIDUAL_probe/ beside the residual)."
    ),
    selector: str = cli.api_option("Selector for manifests (COLUMN=VALUE[,...])."),
    edit: Optional[List[str]] = cli.api_option("Only these edits (repeatable; default all)."),
    max_images: int = cli.api_option("At most this many images (a seeded sample)."),
    device: str = cli.device_option(),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """Which image edits (exposure, gamma, contrast, saturation, shadows, highlights, glare, blur, JPEG, downscale)
    move the images' projection on a residual towards its target thr: a table with 95% CIs and a plot."""
    r = cli.call_api("analysis.probe:probe_residual", locals())
    if as_json:
        return cli.print_json(r)
    typer.echo(r["table"])
    typer.echo(f"probe: {r['files']['png']} (also .json, .csv, .md)")
