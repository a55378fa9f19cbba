"""The `embedlab` command line: a thin shell over the Python API (each command calls one function).

Exit codes: 0 success, 1 failure (an embedlab error: one line, no traceback unless --debug), 2 usage error.
"""
from __future__ import annotations

import enum
import functools
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from typer.core import TyperCommand, TyperGroup

from . import __version__
from .enhance.guidance import list_guidance
from .enhance.presets import TrainConfig, list_presets
from .index import KINDS as _INDEX_KINDS
from .manifests import LAYOUT_HELP, LAYOUTS
from .vocab import TEMPLATES
from .errors import EmbedlabError


class _FlagsShowNoType:
    """Boolean flags (and --help) show as flags: typer >= 0.2x prints a `<bool>` type column after them otherwise."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params


class _Command(_FlagsShowNoType, TyperCommand):
    pass


class _Group(_FlagsShowNoType, TyperGroup):
    pass


class _Typer(typer.Typer):
    """typer.Typer whose commands and groups are the classes above (one place, every command)."""

    def __init__(self, **kwargs):
        super().__init__(cls=_Group, rich_markup_mode=None, **kwargs)   # no markup: help shows [ray] etc. verbatim

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


def choices(name: str, values) -> type[enum.Enum]:
    """A typer enum of fixed string choices: listed by --help, anything else rejected with exit 2."""
    return enum.Enum(name, {v: v for v in values}, type=str)


def registry_help(table: dict, sep: str = "; ") -> str:
    """'name: help; name: help' from a registry's {name: help}."""
    return sep.join(f"{k}: {v}" for k, v in table.items())


app = _Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Embedding analysis and bias inspection around RAVE: extract CLIP embeddings, compute and "
                       "explain residual vectors, correct them, and train/run backlit-image enhancers.")
_STATE = {"debug": False}

MODEL_HELP = "open_clip architecture (e.g. ViT-B-32), hf-hub:ORG/REPO, or embedlab-demo / embedlab-tiny."
PRETRAINED_HELP = "Weights: an open_clip pretrained tag (e.g. openai), hf-hub:ORG/REPO, a local checkpoint file, or none (random init)."
INDEX_KINDS = tuple(_INDEX_KINDS)
SearchIndex = enum.Enum("SearchIndex", {k: k for k in ("run", *INDEX_KINDS)}, type=str)        # real choices
IndexKindChoice = enum.Enum("IndexKindChoice", {k: k for k in ("auto", *INDEX_KINDS)}, type=str)
JSON_HELP = "Print a machine-readable summary (JSON) on stdout instead of text."
LayoutChoice = choices("LayoutChoice", LAYOUTS)             # the registry (embedlab.manifests.LAYOUTS) gives choices and help
DEVICE_HELP = "auto (GPU when present, says which), cpu, cuda, cuda:N. 'cuda' without a GPU is an error."


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmbedlabError as exc:
            if _STATE["debug"]:
                raise
            typer.echo(f"Error: {cli_message(exc)}", err=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            typer.echo("Interrupted. Finished work is kept; rerun the same command to resume.", err=True)
            raise typer.Exit(130)
        except OSError as exc:     # the file system said no (permissions, disk full, a file where a folder goes)
            if _STATE["debug"]:
                raise
            typer.echo(f"Error: {_os_error_line(exc)}", err=True)
            raise typer.Exit(1)
    return wrapper


# Python parameter -> the CLI parameter that sets it, where the two names differ (else the names are the same)
CLI_NAMES = {"vector_dtype": "dtype", "roles": "role", "edits": "edit", "methods": "umap"}


def _current_ctx():
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import get_current_context
    return get_current_context(silent=True)


def flag_for(param: str, ctx=None) -> str | None:
    """The flag (`--top`, `--from`) or argument (`RUN`) of the running command that sets Python parameter `param`."""
    ctx = ctx or _current_ctx()
    if ctx is None:
        return None
    name = CLI_NAMES.get(param, param)
    for p in ctx.command.params:
        if p.name in (name, name + "_"):        # from_ -> --from
            if p.param_type_name == "argument":
                return p.human_readable_name
            return max((o for o in p.opts if o.startswith("--")), key=len, default=p.opts[0])
    return None


def cli_message(exc: Exception) -> str:
    """An error's message with a Python parameter and function rewritten as the flag and command the user typed."""
    msg, param = str(exc), getattr(exc, "param", None)
    flag = flag_for(param) if param else None
    if flag is None:
        return msg
    command = _current_ctx().command_path.split(" ", 1)[-1]
    kind = "argument" if not flag.startswith("-") else "option"
    return msg.replace(f"The {param!r} parameter of {exc.owner}", f"The '{flag}' {kind} of {command}", 1)


def _os_error_line(exc: OSError) -> str:
    from ._io import display_path

    names = [display_path(str(f)) for f in (exc.filename, exc.filename2) if f is not None]
    return (f"{exc.strerror or type(exc).__name__}: {' -> '.join(names) or str(exc)}. Fix the path or its permissions "
            "and rerun (--debug shows the traceback).")


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
def manifest_cmd(layout: LayoutChoice = typer.Argument(..., help="Dataset layout. " + registry_help(LAYOUT_HELP) + "."),
                 root: Path = typer.Argument(Path("."), help="Dataset root folder (ignored for demo); webdataset: a folder of .tar shards or a glob."),
                 out: Path = typer.Option(..., "--out", "-o", help="Manifest file to write (.jsonl)."),
                 role: str = typer.Option("welllit", help="Set label for every image (flat layout only)."),
                 split: Optional[str] = typer.Option(None, help="Split for every image (flat: default train; baid: override)."),
                 source: Optional[str] = typer.Option(None, help="Source name recorded per image (flat layout)."),
                 as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Write a data manifest for a dataset folder layout (or the bundled demo)."""
    from .manifests import manifest

    opts = {"role": role, "source": source}
    if split:
        opts["split"] = split
    report = manifest(layout.value, root, out, **opts)
    if as_json:
        return _print_json(report)
    typer.echo(f"wrote {report['files']['manifest']} ({report['count']} images)")
    for note in report.get("notes", [])[:10]:
        typer.echo(f"note: {note}")
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
                workers: Optional[int] = typer.Option(None, help="DataLoader worker processes (default: on a GPU up to 8; on the CPU all cores for small towers, 1 for large ones; 0 = in-process). With --engine ray: CPUs (decode threads) per actor."),
                shard_size: int = typer.Option(1024, help="Images per shard (the unit of resume)."),
                decode: str = typer.Option("auto", help="auto (torchvision on CUDA, pil elsewhere), pil (PIL decode + open_clip preprocess) or torchvision "
                                           "(batched torchvision.io.decode_jpeg on the device, nvJPEG on CUDA; a different, recorded preprocessing)."),
                dtype: str = typer.Option("float32", help="Stored vector dtype: float32 or float16."),
                role: Optional[List[str]] = typer.Option(None, help="Only embed images with this set label (repeatable)."),
                overwrite: bool = typer.Option(False, help="Replace a run folder made with another configuration."),
                max_aspect: float = typer.Option(100.0, help="Refuse images whose long side exceeds this many times the short side (recorded as extreme-aspect; bounds the memory of the short-side resize)."),
                engine: str = typer.Option("local", help="local (this process and its decode workers) or ray (Ray actors: one per GPU, or per CPU share; pip install 'embedlab[ray]')."),
                address: Optional[str] = typer.Option(None, help="--engine ray: address of a running Ray cluster (e.g. auto, or HEAD:6379); default: start a local instance. The run folder must be on storage every node mounts at the same path."),
                gpus_per_worker: Optional[float] = typer.Option(None, help="--engine ray: GPUs per actor (default 1 when the cluster has GPUs)."),
                break_lock: bool = typer.Option(False, help="Take over the run folder's lock from a process that is gone (e.g. killed on another machine)."),
                progress: bool = typer.Option(True, help="Show a progress bar.")):
    """Embed a manifest's images into a resumable run folder (vectors, metadata, FAISS index)."""
    from .extract import extract

    summary = extract(manifest, model, pretrained, out, device=device, batch_size=batch_size, workers=workers,
                      shard_size=shard_size, decode=decode, vector_dtype=dtype, overwrite=overwrite, roles=role,
                      max_aspect=max_aspect, engine=engine, address=address, gpus_per_worker=gpus_per_worker,
                      break_lock=break_lock, progress=progress)
    typer.echo(f"run {out}: {summary['embedded']} embedded, {summary['skipped']} skipped"
               + (f" ({', '.join(f'{k}: {v}' for k, v in summary['skipped_by_reason'].items())}; see {out}/errors.csv)"
                  if summary["skipped"] else "")
               + (f"; {summary['this_call']['images_per_second']} img/s" if summary.get("this_call") else ""))
    failed = (summary.get("this_call") or {}).get("failed_shards")
    if failed:
        typer.echo(f"{len(failed)} shard(s) failed and were left undone (rerun the command to retry them): "
                   + "; ".join(f"shard {k}: {v}" for k, v in list(failed.items())[:3]), err=True)
        raise typer.Exit(1)


@app.command("search")
@handle_errors
def search_cmd(run: Path = typer.Argument(..., help="Run folder made by `embedlab extract`."),
               text: Optional[str] = typer.Option(None, help="Text query."),
               image: Optional[Path] = typer.Option(None, help="Image query (a file)."),
               k: int = typer.Option(10, "--k", "-k", help="How many results."),
               index: SearchIndex = typer.Option("run",
                                         help="run: the run's own index (built by extract or `embedlab index`; default). "
                                              "A kind (" + ", ".join(INDEX_KINDS) + "): build that index in memory for this "
                                              "query. An approximate index's recall against exact search is printed."),
               device: str = typer.Option("auto", help=DEVICE_HELP),
               as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Top-k nearest images of a run to a text or image query, with scores."""
    from .search import search

    table, info = search(run, text=text, image=str(image) if image else None, k=k, index=index.value, device=device)
    if as_json:
        _print_json({"info": info, "results": table.to_dict(orient="records")})
        return
    typer.echo(table.to_string(index=False))
    extra = ""
    if not info["exact"]:
        rec = ", ".join(f"@{kk} {v:.3f}" for kk, v in info.get("recall", {}).items())
        extra = f"; recall vs exact search: {rec or 'not measured'} ({info.get('search_params') or 'default search'})"
    typer.echo(f"[answered by {info['index']} index, {info['ntotal']} vectors{extra}]")


@app.command("index")
@handle_errors
def index_cmd(run: Path = typer.Argument(..., help="Run folder made by `embedlab extract` (or `embedlab runs merge`)."),
              kind: IndexKindChoice = typer.Option("auto",
                                       help="auto: by size (exact below 1M vectors when they fit the budget, HNSW when its "
                                            "graph fits, else IVF with float32, 8-bit or PQ codes). Or: " +
                                            "; ".join(f"{k.name}: {k.help}" for k in _INDEX_KINDS.values()) + "."),
              memory_budget: str = typer.Option("4G", help="Memory the finished index may take (e.g. 4G, 512M); auto picks "
                                                "the most precise kind that fits, an explicit kind over it is refused."),
              nlist: Optional[int] = typer.Option(None, help="Inverted lists for IVF kinds (default 2^round(log2(4 sqrt(N))))."),
              train_size: Optional[int] = typer.Option(None, help="Vectors sampled to train IVF kinds (default 50 per list, "
                                                       "at least 10,000)."),
              queries: int = typer.Option(500, help="Held-out queries for tuning, and as many again for the recall@1/10/100 "
                                          "measured against exact search."),
              recall_target: float = typer.Option(0.95, help="recall@10 the search setting (nprobe / efSearch) is tuned to reach."),
              seed: int = typer.Option(0, help="Seed for the training sample and the queries."),
              as_json: bool = typer.Option(False, "--json", help="Print the index record as JSON.")):
    """Build the run's FAISS index out of core (trained on a sample, filled shard by shard, written atomically; on the GPU
    with a GPU build of FAISS) and record its recall and latency in the run manifest."""
    from .index import index_run

    info = index_run(run, kind.value, memory_budget=memory_budget, nlist=nlist, train_size=train_size, queries=queries,
                     recall_target=recall_target, seed=seed)
    if as_json:
        _print_json(info)
        return
    typer.echo(f"wrote {run / info['file']}: {info['kind']} ({info['factory']}; {info['why']}), {info['ntotal']:,} vectors, "
               f"{info['size_bytes'] / 2**20:.1f} MiB, built in {info['build_seconds']:.1f} s")
    if not info["exact"]:
        rec = ", ".join(f"@{k} {v:.3f}" for k, v in info["recall"].items())
        typer.echo(f"recall vs exact search ({info['recall_queries']} held-out queries): {rec}; search {info['search_params']}")
    typer.echo(f"single-query latency: median {info['latency']['median_ms']:.3f} ms, p95 {info['latency']['p95_ms']:.3f} ms")


runs_app = _Typer(no_args_is_help=True, help="Work with run folders as wholes (merge).")
app.add_typer(runs_app, name="runs")


@runs_app.command("merge")
@handle_errors
def runs_merge_cmd(runs: List[Path] = typer.Argument(..., help="Two or more finished run folders of the same model and preprocessing."),
                   out: Path = typer.Option(..., "--out", "-o", help="The merged run folder to write."),
                   overwrite: bool = typer.Option(False, help="Replace --out if it exists."),
                   index_budget: str = typer.Option("4G", help="Build the exact index while its float32 vectors fit this "
                                                    "memory; beyond, run `embedlab index` on the merged run.")):
    """Merge runs extracted separately (several machines, days) into one run; refuses mixed models or preprocessing.
    Row ids are renumbered; the column merged_from names each image's source run."""
    from .runs import merge_runs

    summary = merge_runs(runs, out, overwrite=overwrite, index_budget=index_budget)
    typer.echo(f"merged {summary['merged']} runs into {out}: {summary['embedded']} images, {summary['skipped']} skipped"
               + (f"; {summary['index'].get('note')}" if summary.get("index", {}).get("note") else ""))


@app.command("residual")
@handle_errors
def residual_cmd(run: Path = typer.Argument(..., help="Run folder (the 'from' set, and the 'to' set unless --to-run)."),
                 from_: str = typer.Option(..., "--from", help="The starting set: a set label (backlit), COLUMN=VALUE, or several joined by commas."),
                 to: str = typer.Option(..., "--to", help="The target set, same syntax (e.g. welllit)."),
                 out: Path = typer.Option(..., "--out", "-o", help="Output .npy (a JSON sidecar is written beside it)."),
                 to_run: Optional[Path] = typer.Option(None, help="Take the 'to' set from this run (same model and preprocessing required)."),
                 method: str = typer.Option("rave", help="rave (the paper: normalise, mean, normalise, subtract, normalise) or mean-diff."),
                 bootstrap: int = typer.Option(200, help="Bootstrap resamples for the stability figure (0 = skip)."),
                 seed: int = typer.Option(0, help="Random seed for the bootstrap."),
                 memory_budget: str = typer.Option("1G", help="Memory for what the streaming pass keeps beyond one block of "
                                                   "vectors (per-group sums, bootstrap weights), e.g. 512M, 2G.")):
    """Compute the residual vector between two image sets (the paper's formula) with its sidecar.

    Streams the run's memory-mapped vectors once, block by block: runs larger than memory are fine."""
    from .residual import residual

    res = residual(run, from_, to, out, to_run=str(to_run) if to_run else None, method=method, bootstrap=bootstrap, seed=seed,
                   memory_budget=memory_budget)
    info = res.info
    typer.echo(f"wrote {out} (dim {len(res.vector)}, thr {res.thr:.4f}; {info['from']['count']} '{from_}' -> "
               f"{info['to']['count']} '{to}' images; cos(v_from, v_to) = {info['cos_v_from_v_to']:.4f})")
    if info["bootstrap"]:
        b = info["bootstrap"]
        typer.echo(f"bootstrap stability ({b['n_boot']} resamples of {b['unit']}s): mean cosine {b['mean_cosine']:.3f}, "
                   f"95% interval [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]")


FamilyChoice = enum.Enum("FamilyChoice", {k: k for k in ("page", "adds", "removes")}, type=str)   # permutation.FAMILIES


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
                         deflated_steps: int = typer.Option(10, help="Deflation steps that get the sequential permutation test (p_fwer_deflated)."),
                         family: FamilyChoice = typer.Option("page", help="What p_fwer controls: page (both lists, one family) or a one-sided question about one list (adds or removes; the other list gets no p-values)."),
                         min_explained: float = typer.Option(0.001, help="A list ends at a pick that explains less than this share of |r|^2."),
                         exemplars: int = typer.Option(3, help="Exemplar images per top concept and set."),
                         device: str = typer.Option("auto", help=DEVICE_HELP)):
    """Rank the concepts a residual carries, with significance, into report.{json,csv,md,html}."""
    from .explain import explain_residual

    rep = explain_residual(residual, out, vocab=vocab, templates=templates, top=top, candidates=candidates,
                           permutations=permutations, seed=seed, exemplars=exemplars, device=device,
                           deflated_steps=deflated_steps, family=family.value, min_explained=min_explained)
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
        from .selector import split_spec

        if ":" not in remove_labelled:
            raise ConfigError(f"--remove-labelled takes RUN:COLUMN=VALUE. Got {remove_labelled!r}.")
        run_path, selector = split_spec(remove_labelled, "")
        labelled = (str(run_path), str(selector))
    res = correct(residual, out, remove=remove, remove_pair=pairs, remove_labelled=labelled, preset=preset, k=k,
                  vocab=vocab, templates=templates, device=device)
    c = res.info["correction"]
    typer.echo(f"wrote {out}: cos(r, r') = {c['cos_before_after']:.4f}, {100 * c['fraction_of_norm_removed']:.1f}% of |r| removed, "
               f"thr {c['thr_before']:.4f} -> {c['thr_after']:.4f}")
    for d, e in zip(c["directions"], res.info["edits"][-len(c["directions"]):]):
        typer.echo(f"  {e.get('concept') or e.get('prompt') or e['kind']}: projection {d['projection_before']:.4f} -> {d['projection_after']:.2e}")


@app.command("probe-residual")
@handle_errors
def probe_residual_cmd(residual: Path = typer.Argument(..., help="residual.npy (with its sidecar: model and thr)."),
                       images: List[str] = typer.Argument(..., help="Images: files, folders, or MANIFEST.jsonl[:SELECTOR]."),
                       out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default RESIDUAL_probe/ beside the residual)."),
                       selector: str = typer.Option("role=backlit", help="Selector for manifests (COLUMN=VALUE[,...])."),
                       edit: Optional[List[str]] = typer.Option(None, help="Only these edits (repeatable; default all)."),
                       max_images: int = typer.Option(32, help="At most this many images (a seeded sample)."),
                       device: str = typer.Option("auto", help=DEVICE_HELP)):
    """Which image edits (exposure, gamma, contrast, saturation, shadows, highlights, glare, blur, JPEG, downscale)
    move the images' projection on a residual towards its target thr: a table with 95% CIs and a plot."""
    from .probe import probe_residual

    r = probe_residual(residual, images, out, selector=selector, edits=edit, max_images=max_images, device=device)
    typer.echo(r["table"])
    typer.echo(f"probe: {r['files']['png']} (also .json, .csv, .md)")


@app.command("plot")
@handle_errors
def plot_cmd(run: Path = typer.Argument(..., help="Run folder."),
             out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default RUN/plots)."),
             color_by: str = typer.Option("role", help="Metadata column that colours the points."),
             residual: Optional[Path] = typer.Option(None, help="Draw this residual's direction."),
             umap: bool = typer.Option(True, help="Also draw a UMAP (cosine) map."),
             projector: bool = typer.Option(True, help="Export tensors.tsv/metadata.tsv for the TensorBoard projector."),
             max_points: int = typer.Option(10_000, help="Larger runs are drawn from a seeded sample of this many images, "
                                            "stratified by --color-by and group (the titles and sample.json say so)."),
             seed: int = typer.Option(0, help="Seed for the sample and for UMAP.")):
    """2-D maps (PCA, UMAP) of a run's image embeddings, coloured by set, with the residual drawn."""
    from .plot import plot

    files = plot(run, out, color_by=color_by, residual=str(residual) if residual else None,
                 methods=("pca", "umap") if umap else ("pca",), projector=projector, max_points=max_points, seed=seed)
    for k, v in files.items():
        typer.echo(f"{k}: {v}")


@app.command("embedding-map")
@handle_errors
def embedding_map_cmd(run: Path = typer.Argument(..., help="Run folder."),
                      out: Optional[Path] = typer.Option(None, "--out", "-o", help="The .html to write (default RUN/map.html)."),
                      residual: Optional[Path] = typer.Option(None, help="Draw this residual (its sets are found in the run by their selectors)."),
                      color_by: str = typer.Option("role", help="Metadata column coloured at first (any column can be picked on the page)."),
                      max_points: int = typer.Option(2000, help="Subsample bigger runs to this many images (seeded; the page states it)."),
                      umap: bool = typer.Option(True, help="Also compute a UMAP (cosine) view.")):
    """Interactive map of a run's image embeddings: one offline HTML page, PCA/UMAP, thumbnails on hover, search."""
    from .embedding_map import embedding_map

    typer.echo(str(embedding_map(run, out, residual=str(residual) if residual else None, color_by=color_by,
                                 max_points=max_points, methods=("pca", "umap") if umap else ("pca",))))


GUIDANCE_MODES = list_guidance()            # the registry (embedlab.enhance.guidance) is the source of choices and help
GuidanceChoice = enum.Enum("GuidanceChoice", {k: k for k in GUIDANCE_MODES}, type=str)


@app.command("train")
@handle_errors
def train_cmd(out: Path = typer.Option(..., "--out", "-o", help="Training run folder (rerun the same command to resume)."),
              residual: Optional[Path] = typer.Option(None, help="Residual .npy (e.g. corrected.npy) guiding --guidance residual; "
                                                      "its sidecar gives thr and the guidance model."),
              backlit: str = typer.Option(..., help="Images to enhance: MANIFEST.jsonl[:SELECTOR], RUN[:SELECTOR] or a folder "
                                          "(default selector role=backlit)."),
              welllit: Optional[str] = typer.Option(None, help="Well-lit set (latent/prompt modes; default selector role=welllit). "
                                                   "Unpaired: any well-lit set; paired: the GT of the same scenes."),
              guidance: GuidanceChoice = typer.Option("residual", help="; ".join(f"{k}: {v}" for k, v in GUIDANCE_MODES.items()) + "."),
              model: Optional[str] = typer.Option(None, help="Guidance CLIP for latent/prompt (default ViT-B-32). " + MODEL_HELP),
              pretrained: Optional[str] = typer.Option(None, help="Its weights (default openai). " + PRETRAINED_HELP),
              identity: str = typer.Option("clip", help="clip: feature loss through --identity-model (the paper); "
                                           "pixel: L1 in linear light (NOT the paper; for when no tower is available)."),
              identity_model: str = typer.Option("RN101", help="open_clip image tower for the identity loss (ResNet: stem+4 stages; ViT: 5 blocks)."),
              identity_pretrained: str = typer.Option("openai", help="Its weights. " + PRETRAINED_HELP),
              preset: str = typer.Option("paper", help="paper (Adam 2e-5, batch 8, 512 px, 5,200 iterations) or cpu-small "
                                         "(identity init, 128 px crops of 256 px images, batch 4, 200 iterations)."),
              init: Optional[str] = typer.Option(None, help="reconstruct (the paper's identity-loss warm-up), identity "
                                                 "(output = input at step 0) or a checkpoint (embedlab's or a published .pth)."),
              iters: Optional[int] = typer.Option(None, help="Network iterations in total (reconstruction included)."),
              recon_iters: Optional[int] = typer.Option(None, help="Reconstruction warm-up iterations (init reconstruct)."),
              stage_iters: Optional[int] = typer.Option(None, help="Network iterations per stage (2,100 in the paper)."),
              guidance_iters: Optional[int] = typer.Option(None, help="Prompt/latent refinement iterations per cycle (1,000)."),
              guidance_init_iters: Optional[int] = typer.Option(None, help="Prompt/latent cross-entropy initialisation (8,000)."),
              lr: Optional[float] = typer.Option(None, help="Adam learning rate of the network (2e-5)."),
              batch_size: Optional[int] = typer.Option(None, help="Batch size (8)."),
              size: Optional[int] = typer.Option(None, help="Images are squash-resized to SIZE x SIZE before augmentation (512)."),
              crop: Optional[int] = typer.Option(None, help="Random crop after resizing (off in the paper)."),
              pixel_loss: Optional[float] = typer.Option(None, help="EXTENSION (not in the paper, off): weight of a pixel loss."),
              seed: Optional[int] = typer.Option(None, help="Random seed (0)."),
              device: str = typer.Option("auto", help=DEVICE_HELP),
              overwrite: bool = typer.Option(False, help="Start afresh, deleting an existing run in --out.")):
    """Train the enhancement network with RAVE, CLIP-LIT-Latent or CLIP-LIT guidance."""
    from .enhance.train import train

    result = train(out, preset=preset, overwrite=overwrite, guidance=guidance.value, residual=str(residual) if residual else None,
                   backlit=backlit, welllit=welllit, model=model, pretrained=pretrained, identity=identity,
                   identity_model=identity_model, identity_pretrained=identity_pretrained, init=init, iters=iters,
                   recon_iters=recon_iters, stage_iters=stage_iters, guidance_iters=guidance_iters,
                   guidance_init_iters=guidance_init_iters, lr=lr, batch_size=batch_size, size=size, crop=crop,
                   pixel_loss=pixel_loss, seed=seed, device=device)
    typer.echo(f"trained {result['steps']} iterations in {result['seconds_this_call']} s; enhancer: {result['enhancer']}")


@app.command("enhance")
@handle_errors
def enhance_cmd(checkpoint: Path = typer.Argument(..., help="enhancer.safetensors, ckpt_last.pt, or a published CLIP-LIT/RAVE .pth."),
                inputs: List[str] = typer.Argument(..., help="Image files or folders."),
                out: Path = typer.Option(..., "--out", "-o", help="Output folder (PNG, named by input stem)."),
                device: str = typer.Option("auto", help=DEVICE_HELP),
                batch_size: int = typer.Option(4, help="Images of one size per forward pass."),
                max_pixels: int = typer.Option(16_000_000, help="Above this many pixels per image (default 16,000,000 = 16 MP) "
                                               "the illumination map is estimated on a downscaled copy and upsampled; "
                                               "logged once per image."),
                precision: str = typer.Option("fp32", help="fp32 (default; matches the published code's outputs to 1e-5) or "
                                              "bf16 (autocast: faster on a GPU, outputs differ by up to ~1e-2).")):
    """Enhance images at full resolution with a trained or published network."""
    from .enhance.infer import enhance

    results = enhance(checkpoint, inputs, out, device=device, batch_size=batch_size, max_pixels=max_pixels,
                      precision=precision)
    ok = sum(r["output"] is not None for r in results)
    typer.echo(f"enhanced {ok} image(s) into {out}" + (f"; {len(results) - ok} skipped" if ok < len(results) else ""))


@app.command("evaluate")
@handle_errors
def evaluate_cmd(pred: Path = typer.Option(..., help="Folder of enhanced images."),
                 gt: Optional[str] = typer.Option(None, help="Ground-truth folder (pairs by exact stem) or a manifest (.jsonl)."),
                 out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where per_image.csv and summary.json go (default PRED/metrics)."),
                 gray: bool = typer.Option(False, help="Also the RAVE repo's grayscale PSNR/SSIM protocol."),
                 lpips: bool = typer.Option(False, help="Also LPIPS (needs the lpips package and local AlexNet weights)."),
                 inputs: Optional[str] = typer.Option(None, help="Folder of the inputs, for the residual projection of inputs."),
                 residual: Optional[Path] = typer.Option(None, help="Report the mean projection of embeddings on this residual."),
                 device: str = typer.Option("auto", help=DEVICE_HELP)):
    """PSNR/SSIM (and LPIPS) against ground truth, exposure statistics, and the residual projection."""
    from .enhance.evaluate import evaluate

    summary = evaluate(pred, gt, out, gray=gray, lpips=lpips, inputs=inputs, residual=str(residual) if residual else None,
                       device=device)
    _print_json({k: v for k, v in summary.items()})


@app.command("synth-backlit")
@handle_errors
def synth_backlit_cmd(src: List[str] = typer.Argument(..., help="Photos: files, folders, or 'pkg' (the package photos)."),
                      out: Path = typer.Option(..., "--out", "-o", help="Output folder (images/, originals/, manifest.jsonl, params.json)."),
                      recipe: str = typer.Option("A", help="A (backlight via a background mask; data.md 2.2), B (radial light) or C (global exposure)."),
                      seeds: int = typer.Option(1, help="Variants per photo (recipes A and B)."),
                      first_seed: int = typer.Option(0, help="First seed."),
                      split: str = typer.Option("train", help="Split recorded in the manifest.")):
    """Render paired synthetic backlit (or exposure-error) versions of photos, with a manifest."""
    from .synth_dataset import synth_backlit

    r = synth_backlit(src, out, recipe=recipe, seeds=seeds, first_seed=first_seed, split=split)
    typer.echo(f"wrote {r['images']} images and {r['manifest']}")


@app.command("pretrain-demo")
@handle_errors
def pretrain_demo_cmd(out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the checkpoint (default: the user cache, keyed by the recipe)."),
                      device: str = typer.Option("auto", help=DEVICE_HELP),
                      steps: Optional[int] = typer.Option(None, help="Training steps (default: the full schedule)."),
                      seed: int = typer.Option(0, help="Seed (the model is deterministic on the CPU for a seed)."),
                      force: bool = typer.Option(False, help="Retrain even when a cached (or shipped) model exists."),
                      pack: Optional[Path] = typer.Option(None, "--pack", help="Also write the shippable pack (token rows "
                                                          "the grammar uses + all other tensors) into this folder, "
                                                          "e.g. embedlab/data/demo_clip.")):
    """Train (or find cached) the small offline demo CLIP (a DEMO model: lighting words and package-photo objects only)."""
    from .demo_clip import pack_model, pretrain_demo

    extra = {"steps": steps} if steps else {}
    ckpt = pretrain_demo(out, device=device, force=force, seed=seed, **extra)
    typer.echo(f"demo CLIP: {ckpt}\nuse it with: --model embedlab-demo --pretrained {ckpt}")
    if pack:
        typer.echo(f"pack: {pack_model(ckpt, pack)}")


@app.command("demo")
@handle_errors
def demo_cmd(out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Output folder (index.html is the entry point)."),
             model: Optional[str] = typer.Option(None, help="Default: the offline demo CLIP (trained and cached on first use). "
                                                 "Or any open_clip model, e.g. ViT-B-32 with --pretrained openai."),
             pretrained: Optional[str] = typer.Option(None, help=PRETRAINED_HELP),
             enhancer: Optional[Path] = typer.Option(None, help="Use this enhancer (e.g. a published RAVE .pth) instead of training one."),
             train_iters: int = typer.Option(150, help="Iterations of the short RAVE training (the 'demo' train preset)."),
             permutations: int = typer.Option(1000, help="Shuffles for the concept report's permutation test."),
             compare: bool = typer.Option(False, help="Also train CLIP-LIT-Latent on the same budget for the curve figure."),
             raw_curve: bool = typer.Option(True, help="Also train on the raw (uncorrected) residual for the curve figure."),
             device: str = typer.Option("auto", help=DEVICE_HELP)):
    """Run the whole chain on the bundled demo data and write one index.html."""
    from .demo import demo
    from .demo_clip import first_run_notice

    if model is None:
        typer.echo(first_run_notice())
    result = demo(out, model=model, pretrained=pretrained, device=device, enhancer=str(enhancer) if enhancer else None,
                  train_iters=train_iters, permutations=permutations, compare=compare, raw_curve=raw_curve)
    for name, path in result["artifacts"].items():
        typer.echo(f"{name:14s} {path}")
    typer.echo(f"bias concept removed: {result['bias_concept']}; PSNR input {result['metrics']['input'].get('psnr'):.2f} dB -> "
               f"enhanced {result['metrics']['enhanced'].get('psnr'):.2f} dB; total {result['total_s']} s")
    typer.echo(f"open {out / 'index.html'}")


def main() -> None:
    """Console entry point. Exit codes: 0 success, 1 an embedlab error, 2 a usage error (each one line on stderr,
    the traceback with --debug), 130 interrupted."""
    try:
        from typer._click import exceptions as click_exc     # typer >= 0.2x vendors click
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions as click_exc
    try:
        code = app(standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click_exc.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "embedlab"
        typer.echo(f"Error: {' '.join(exc.format_message().split()).rstrip('.')}. See `{where} --help`.", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    except EmbedlabError as exc:  # raised outside a command (e.g. by a callback)
        if _STATE["debug"]:
            raise
        typer.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
