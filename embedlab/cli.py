"""The `embedlab` command line: a thin shell over the Python API (each command calls one function).

Exit codes: 0 success, 1 failure (an embedlab error: one line, no traceback unless --debug), 2 usage error.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .errors import EmbedlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Embedding analysis and bias inspection around RAVE: extract CLIP embeddings, compute and "
                       "explain residual vectors, correct them, and train/run backlit-image enhancers.")
_STATE = {"debug": False}

MODEL_HELP = "open_clip architecture (e.g. ViT-B-32), hf-hub:ORG/REPO, or embedlab-demo / embedlab-tiny."
PRETRAINED_HELP = "Weights: an open_clip pretrained tag (e.g. openai), hf-hub:ORG/REPO, a local checkpoint file, or none (random init)."
DEVICE_HELP = "auto (GPU when present, says which), cpu, cuda, cuda:N. 'cuda' without a GPU is an error."


def _echo(msg: str) -> None:
    typer.echo(msg)


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmbedlabError as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            typer.echo("Interrupted. Finished work is kept; rerun the same command to resume.", err=True)
            raise typer.Exit(130)
    return wrapper


def _version(value: bool):
    if value:
        typer.echo(f"embedlab {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
          verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
          debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")):
    # embedlab's own messages at INFO by default; third-party chatter (open_clip logs to root) only with -vv
    ours = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedlab").setLevel(ours)
    if verbose < 2:
        logging.getLogger().setLevel(logging.ERROR if quiet else logging.WARNING)
        logging.getLogger("faiss").setLevel(logging.WARNING)
    _STATE["debug"] = debug


def _print_json(obj) -> None:
    from ._io import dumps_json

    typer.echo(dumps_json(obj))


@app.command("models")
@handle_errors
def models_cmd(pattern: str = typer.Argument("", help="Only names containing this text.")):
    """List the open_clip architectures and pretrained tags embedlab can load."""
    from . import models

    import open_clip

    models.register_configs()
    for name in models.list_models():
        if pattern.lower() in name.lower():
            tags = open_clip.list_pretrained_tags_by_model(name)
            typer.echo(f"{name:40s} {', '.join(tags) if tags else '(no tags: pass a checkpoint file or none)'}")


@app.command("manifest")
@handle_errors
def manifest_cmd(layout: str = typer.Argument(..., help="flat, baid, lol, lolv2, sice, fivek480, afifi or demo."),
                 root: Path = typer.Argument(Path("."), help="Dataset root folder (ignored for demo)."),
                 out: Path = typer.Option(..., "--out", "-o", help="Manifest file to write (.jsonl)."),
                 role: str = typer.Option("welllit", help="Set label for every image (flat layout only)."),
                 split: Optional[str] = typer.Option(None, help="Split for every image (flat: default train; baid: override)."),
                 source: Optional[str] = typer.Option(None, help="Source name recorded per image (flat layout).")):
    """Write a data manifest for a dataset folder layout (or the bundled demo)."""
    from .manifests import manifest

    opts = {"role": role, "source": source}
    if split:
        opts["split"] = split
    path, report = manifest(layout, root, out, **opts)
    typer.echo(f"wrote {path} ({report['count']} images)")
    if report.get("dropped_duplicates"):
        typer.echo(f"dropped {len(report['dropped_duplicates'])} duplicate(s): {', '.join(report['dropped_duplicates'][:10])}")


@app.command("extract")
@handle_errors
def extract_cmd(manifest: Path = typer.Option(..., "--manifest", "-m", help="Data manifest (.jsonl)."),
                model: str = typer.Option(..., help=MODEL_HELP),
                pretrained: str = typer.Option(..., help=PRETRAINED_HELP),
                out: Path = typer.Option(..., "--out", "-o", help="Run folder to create or resume."),
                device: str = typer.Option("auto", help=DEVICE_HELP),
                batch_size: int = typer.Option(64, help="Images per forward pass."),
                workers: Optional[int] = typer.Option(None, help="DataLoader worker processes (default min(4, cores); 0 = in-process)."),
                shard_size: int = typer.Option(1024, help="Images per shard (the unit of resume)."),
                decode: str = typer.Option("pil", help="pil (PIL decode + open_clip preprocess) or torchvision "
                                           "(batched torchvision.io.decode_jpeg on the device; a different, recorded preprocessing)."),
                dtype: str = typer.Option("float32", help="Stored vector dtype: float32 or float16."),
                role: Optional[List[str]] = typer.Option(None, help="Only embed images with this set label (repeatable)."),
                overwrite: bool = typer.Option(False, help="Replace a run folder made with another configuration."),
                progress: bool = typer.Option(True, help="Show a progress bar.")):
    """Embed a manifest's images into a resumable run folder (vectors, metadata, FAISS index)."""
    from .extract import extract

    summary = extract(manifest, model, pretrained, out, device=device, batch_size=batch_size, workers=workers,
                      shard_size=shard_size, decode=decode, vector_dtype=dtype, overwrite=overwrite, roles=role,
                      progress=progress)
    typer.echo(f"run {out}: {summary['embedded']} embedded, {summary['skipped']} skipped"
               + (f" ({', '.join(f'{k}: {v}' for k, v in summary['skipped_by_reason'].items())}; see {out}/errors.csv)"
                  if summary["skipped"] else "")
               + (f"; {summary['this_call']['images_per_second']} img/s" if summary.get("this_call") else ""))


@app.command("search")
@handle_errors
def search_cmd(run: Path = typer.Argument(..., help="Run folder made by `embedlab extract`."),
               text: Optional[str] = typer.Option(None, help="Text query."),
               image: Optional[Path] = typer.Option(None, help="Image query (a file)."),
               k: int = typer.Option(10, "--k", "-k", help="How many results."),
               index: str = typer.Option("flat", help="flat (exact, default), hnsw or ivf (approximate: recall@k is reported)."),
               device: str = typer.Option("auto", help=DEVICE_HELP),
               as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Top-k nearest images of a run to a text or image query, with scores."""
    from .search import search

    table, info = search(run, text=text, image=str(image) if image else None, k=k, index=index, device=device)
    if as_json:
        _print_json({"info": info, "results": table.to_dict(orient="records")})
        return
    typer.echo(table.to_string(index=False))
    extra = f"; recall@{k} vs exact = {info['recall_at_k']:.3f} over {info['recall_queries']} queries" if "recall_at_k" in info else ""
    typer.echo(f"[{info['index']}, {info['ntotal']} vectors{extra}]")


@app.command("residual")
@handle_errors
def residual_cmd(run: Path = typer.Argument(..., help="Run folder (the 'from' set, and the 'to' set unless --to-run)."),
                 from_: str = typer.Option(..., "--from", help="The starting set: a set label (backlit), COLUMN=VALUE, or several joined by commas."),
                 to: str = typer.Option(..., "--to", help="The target set, same syntax (e.g. welllit)."),
                 out: Path = typer.Option(..., "--out", "-o", help="Output .npy (a JSON sidecar is written beside it)."),
                 to_run: Optional[Path] = typer.Option(None, help="Take the 'to' set from this run (same model and preprocessing required)."),
                 method: str = typer.Option("rave", help="rave (the paper: normalise, mean, normalise, subtract, normalise) or mean-diff."),
                 bootstrap: int = typer.Option(200, help="Bootstrap resamples for the stability figure (0 = skip)."),
                 seed: int = typer.Option(0, help="Random seed for the bootstrap.")):
    """Compute the residual vector between two image sets (the paper's formula) with its sidecar."""
    from .residual import residual

    res = residual(run, from_, to, out, to_run=str(to_run) if to_run else None, method=method, bootstrap=bootstrap, seed=seed)
    info = res.info
    typer.echo(f"wrote {out} (dim {len(res.vector)}, thr {res.thr:.4f}; {info['from']['count']} '{from_}' -> "
               f"{info['to']['count']} '{to}' images; cos(v_from, v_to) = {info['cos_v_from_v_to']:.4f})")
    if info["bootstrap"]:
        b = info["bootstrap"]
        typer.echo(f"bootstrap stability ({b['n_boot']} resamples of {b['unit']}s): mean cosine {b['mean_cosine']:.3f}, "
                   f"95% interval [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]")
    for w in info["nonsemantic"]["warnings"]:
        typer.echo(f"warning: {w}", err=True)


@app.command("explain-residual")
@handle_errors
def explain_residual_cmd(residual: Path = typer.Argument(..., help="residual.npy (with its sidecar)."),
                         vocab: Optional[str] = typer.Option(None, help="tokens (all tokenizer tokens, as RAVE), words, model "
                                                             "(the model's own, default when it ships one), or a file with one concept per line. Default: model, else words."),
                         templates: Optional[str] = typer.Option(None, help="none ('{}', default), photo, ensemble, or a template containing {}."),
                         top: int = typer.Option(30, help="Concepts per side after deflation (1-500)."),
                         out: Path = typer.Option(Path("report"), "--out", "-o", help="Report folder."),
                         candidates: int = typer.Option(500, help="Top concepts that get per-image statistics (AUROC, Welch p, BH q)."),
                         permutations: int = typer.Option(1000, help="Label shuffles for the family-wise permutation test (0 = skip)."),
                         seed: int = typer.Option(0, help="Seed for the shuffles."),
                         exemplars: int = typer.Option(3, help="Exemplar images per top concept and set."),
                         device: str = typer.Option("auto", help=DEVICE_HELP)):
    """Rank the concepts a residual carries, with significance, into report.{json,csv,md,html}."""
    from .explain import explain_residual

    rep = explain_residual(residual, out, vocab=vocab, templates=templates, top=top, candidates=candidates,
                           permutations=permutations, seed=seed, exemplars=exemplars, device=device)
    for side in ("adds", "removes"):
        rows = [c for c in rep["concepts"] if c["direction"] == side][:5]
        typer.echo(f"{side}: " + ", ".join(f"{c['concept']} ({c['score_centred']:.3f}"
                                          + (f", p={c['p_fwer_deflated']:.3g}" if c.get("p_fwer_deflated") is not None else "") + ")"
                                          for c in rows))
    typer.echo(f"report: {rep['files']['html']} (also .json, .csv, .md)")


@app.command("correct")
@handle_errors
def correct_cmd(residual: Path = typer.Argument(..., help="residual.npy to correct."),
                out: Path = typer.Option(..., "--out", "-o", help="Corrected .npy (with sidecar)."),
                remove: Optional[List[str]] = typer.Option(None, help="A concept to project out (centred text embedding); repeatable."),
                remove_pair: Optional[List[str]] = typer.Option(None, help="'PROMPT|BASELINE': project out the difference of two prompts; repeatable."),
                remove_labelled: Optional[str] = typer.Option(None, help="'RUN:COLUMN=VALUE': learn directions separating those images (INLP)."),
                preset: Optional[str] = typer.Option(None, help="rave-shift: the paper's shifted residual (method.md 2.8)."),
                k: int = typer.Option(15, help="Tokens per side for --preset rave-shift."),
                vocab: Optional[str] = typer.Option(None, help="Vocabulary whose mean centres --remove concepts (as in explain-residual)."),
                templates: Optional[str] = typer.Option(None, help="Templates for --remove concepts."),
                device: str = typer.Option("auto", help=DEVICE_HELP)):
    """Remove bias directions from a residual by orthogonal projection; writes every edit to the sidecar."""
    from .correct import correct
    from .errors import ConfigError

    pairs = []
    for spec in remove_pair or []:
        if "|" not in spec:
            raise ConfigError(f"--remove-pair takes 'PROMPT|BASELINE' (e.g. 'a photo of a person|a photo'). Got {spec!r}.")
        a, b = spec.split("|", 1)
        pairs.append((a.strip(), b.strip()))
    labelled = None
    if remove_labelled:
        run_path, _, attr = remove_labelled.rpartition(":")
        if not run_path:
            raise ConfigError(f"--remove-labelled takes RUN:COLUMN=VALUE. Got {remove_labelled!r}.")
        labelled = (run_path, attr)
    res = correct(residual, out, remove=remove, remove_pair=pairs, remove_labelled=labelled, preset=preset, k=k,
                  vocab=vocab, templates=templates, device=device)
    c = res.info["correction"]
    typer.echo(f"wrote {out}: cos(r, r') = {c['cos_before_after']:.4f}, {100 * c['fraction_of_norm_removed']:.1f}% of |r| removed, "
               f"thr {c['thr_before']:.4f} -> {c['thr_after']:.4f}")
    for d, e in zip(c["directions"], res.info["edits"][-len(c["directions"]):]):
        typer.echo(f"  {e.get('concept') or e.get('prompt') or e['kind']}: projection {d['projection_before']:.4f} -> {d['projection_after']:.2e}")


@app.command("plot")
@handle_errors
def plot_cmd(run: Path = typer.Argument(..., help="Run folder."),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default RUN/plots)."),
             color_by: str = typer.Option("role", help="Metadata column that colours the points."),
             residual: Optional[Path] = typer.Option(None, help="Draw this residual's direction."),
             umap: bool = typer.Option(True, help="Also draw a UMAP (cosine) map."),
             projector: bool = typer.Option(True, help="Export tensors.tsv/metadata.tsv for the TensorBoard projector.")):
    """2-D maps (PCA, UMAP) of a run's image embeddings, coloured by set, with the residual drawn."""
    from .plot import plot

    files = plot(run, out, color_by=color_by, residual=str(residual) if residual else None,
                 methods=("pca", "umap") if umap else ("pca",), projector=projector)
    for k, v in files.items():
        typer.echo(f"{k}: {v}")


def main() -> None:
    """Console entry point."""
    try:
        app()
    except EmbedlabError as exc:  # raised outside a command (e.g. by a callback)
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(1)
