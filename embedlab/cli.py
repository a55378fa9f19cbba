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
from .enhance.presets import IDENTITY_LOSSES, LR_SCHEDULES, PADDINGS, TrainConfig, list_presets
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
    """typer.Typer whose commands and groups are the classes above, and whose options declared with default
    FROM_API take the default of the API function the command calls (one place, every command)."""

    def __init__(self, prefix: str = "", **kwargs):
        super().__init__(cls=_Group, rich_markup_mode=None, **kwargs)   # no markup: help shows [ray] etc. verbatim
        self.prefix = prefix            # a sub-app's name and a space ("runs "): its commands' keys in API

    def command(self, name: str | None = None, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        register = super().command(name, *args, **kwargs)
        key = self.prefix + (name or "")
        return lambda fn: register(from_api(key)(fn) if key in API else fn)


def choices(name: str, values) -> type[enum.Enum]:
    """A typer enum of fixed string choices: listed by --help, anything else rejected with exit 2."""
    return enum.Enum(name, {v: v for v in values}, type=str)


def registry_help(table: dict, sep: str = "; ") -> str:
    """'name: help; name: help' from a registry's {name: help}."""
    return sep.join(f"{k}: {v}" for k, v in table.items())


@functools.lru_cache(maxsize=None)
def _source(module: str):
    import ast

    return ast.parse((Path(__file__).parent / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))


def _constant(module: str, name: str):
    """A module-level literal constant of `embedlab.<module>`, followed through `from .x import NAME`."""
    import ast

    for node in _source(module).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.ImportFrom) and node.level and any((a.asname or a.name) == name for a in node.names):
            base = module.split(".")[:-node.level]
            return _constant(".".join([*base, node.module]), next(a.name for a in node.names if (a.asname or a.name) == name))
    raise LookupError(f"embedlab.{module} has no literal constant {name!r}")


@functools.lru_cache(maxsize=None)
def api_defaults(module: str, name: str) -> dict:
    """{parameter: default} of function (or dataclass) `name` in `embedlab.<module>`, read from its source with
    `ast`, so that --help stays fast (no torch or pandas import) and every option default comes from the API (one
    place; tests/test_cli.py checks each against `inspect.signature`). Defaults must be literals or module-level
    literal constants."""
    import ast

    def value(node):
        return _constant(module, node.id) if isinstance(node, ast.Name) else ast.literal_eval(node)

    def literal(pairs):         # defaults that are not literals (a call, an expression) are left out
        out = {}
        for key, node in pairs:
            try:
                out[key] = value(node)
            except (ValueError, LookupError):
                pass
        return out

    for node in _source(module).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            break
    else:
        raise LookupError(f"embedlab.{module} has no function or class {name!r}")
    if isinstance(node, ast.ClassDef):          # a dataclass: its annotated fields with a value
        return literal((n.target.id, n.value) for n in node.body if isinstance(n, ast.AnnAssign) and n.value is not None)
    a = node.args
    positional = a.posonlyargs + a.args
    pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
    pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
    return literal((arg.arg, d) for arg, d in pairs)


# command -> where its option defaults live: (module, function or config dataclass), searched in order
API = {
    "manifest": [("manifests", "_gen_flat")], "extract": [("extract", "extract")], "search": [("search", "search")],
    "index": [("index", "index_run")], "runs merge": [("runs", "merge_runs")], "residual": [("residual", "residual")],
    "explain-residual": [("explain", "explain_residual")], "correct": [("correct", "correct")],
    "probe-residual": [("probe", "probe_residual")], "plot": [("plot", "plot")],
    "embedding-map": [("embedding_map", "embedding_map")], "train": [("enhance.train", "train"), ("enhance.presets", "TrainConfig")],
    "enhance": [("enhance.infer", "enhance")], "evaluate": [("enhance.evaluate", "evaluate")],
    "synth-backlit": [("synth_dataset", "synth_backlit")],
    "pretrain-demo": [("demo_clip", "pretrain_demo"), ("demo_clip", "DemoRecipe")], "demo": [("demo", "demo")],
}


def default(command: str, param: str):
    """The default of Python parameter `param` of the function `command` calls (`API`): never retyped here."""
    for source in API[command]:
        found = api_defaults(*source)
        if param in found:
            return found[param]
    raise LookupError(f"No default for {param!r} in {API[command]} (command {command})")


class _FromAPI:
    def __repr__(self):
        return "FROM_API"


FROM_API = _FromAPI()       # an option's default: the API's (filled in by `from_api`)
# options whose CLI default differs on purpose from the API default of the same name
OWN_DEFAULTS = {
    ("manifest", "split"): "None: each layout's own split (flat: train; baid: from its folders)",
    **{("train", k): "None: the preset's value (the help states TrainConfig's)" for k in (
        "init", "iters", "recon_iters", "stage_iters", "guidance_iters", "guidance_init_iters", "lr", "batch_size",
        "size", "crop", "pixel_loss", "seed", "lr_schedule", "grad_clip", "ema", "identity_weight", "padding")},
}
FILLED: dict[str, set] = {}     # command -> the options whose default came from the API (tests/test_cli.py)


def python_names(option: str) -> list[str]:
    """The Python parameters a CLI option may set: its own name, or those CLI_NAMES maps to it."""
    return [option, *(py for py, cli in CLI_NAMES.items() if cli == option)]


def from_api(command: str):
    """Decorator: every option declared with default FROM_API gets the default of the Python parameter it sets
    (`default`); typer reads defaults when it builds the command, after this has run."""
    import inspect

    def deco(fn):
        for name, p in inspect.signature(fn).parameters.items():
            if getattr(p.default, "default", None) is FROM_API:
                found = [py for py in python_names(name) if _has_default(command, py)]
                if not found:
                    raise LookupError(f"{command} --{name}: no API default for it (see cli.API)")
                p.default.default = default(command, found[0])
                FILLED.setdefault(command, set()).add(name)
        return fn
    return deco


def _has_default(command: str, param: str) -> bool:
    try:
        default(command, param)
        return True
    except LookupError:
        return False


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
PROGRESS_HELP = "Show a progress bar (on stderr)."
# fixed choices whose tables live in modules too heavy to import for --help (pandas, torch); tests/test_cli.py
# checks that each equals its module's table (extract.DECODERS, VECTOR_DTYPES, ENGINES, residual.METHODS, ...)
DecodeChoice = choices("DecodeChoice", ("auto", "pil", "torchvision"))
DtypeChoice = choices("DtypeChoice", ("float32", "float16"))
EngineChoice = choices("EngineChoice", ("local", "ray"))
MethodChoice = choices("MethodChoice", ("rave", "mean-diff"))
PrecisionChoice = choices("PrecisionChoice", ("fp32", "bf16"))
CorrectPresetChoice = choices("CorrectPresetChoice", ("rave-shift",))
RecipeChoice = choices("RecipeChoice", ("A", "B", "C"))
LayoutChoice = choices("LayoutChoice", LAYOUTS)             # the registry (embedlab.manifests.LAYOUTS) gives choices and help
TEMPLATES_HELP = ("Prompt templates (embedlab.vocab.TEMPLATES): " + ", ".join(
    f"{k} ({v[0]!r})" if len(v) == 1 else f"{k} ({len(v)} templates: {v[0]!r}, ...)" for k, v in TEMPLATES.items())
    + f"; or one template containing {{}}. Default: {next(iter(TEMPLATES))}.")
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
CLI_NAMES = {"vector_dtype": "dtype", "roles": "role", "edits": "edit", "k": "top", "train_iters": "iters"}


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
                return p.name.upper()
            return max((o for o in p.opts if o.startswith("--")), key=len, default=p.opts[0])
    return None


def cli_message(exc: Exception) -> str:
    """An error's message with a Python parameter and function rewritten as the flag and command the user typed,
    and every other parameter it quotes ('name', listed in `exc.also`) as its flag."""
    msg, param = str(exc), getattr(exc, "param", None)
    flag = flag_for(param) if param else None
    if flag is not None:
        ctx, names = _current_ctx(), []
        while ctx.parent is not None:       # the command's own names, without the program's (embedlab, -m embedlab)
            names.append(ctx.info_name)
            ctx = ctx.parent
        command = " ".join(reversed(names)) or ctx.info_name
        kind = "argument" if not flag.startswith("-") else "option"
        msg = msg.replace(f"The {param!r} parameter of {exc.owner}", f"The '{flag}' {kind} of {command}", 1)
    for name in filter(None, (param, *getattr(exc, "also", ()))):
        other = flag_for(name)
        if other is not None:
            msg = msg.replace(repr(name), f"'{other}'")
    return msg


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
def models_cmd(pattern: str = typer.Argument("", help="Only names containing this text."),
               as_json: bool = typer.Option(False, "--json", help="Print {architecture: [pretrained tags]} as JSON.")):
    """List the open_clip architectures and pretrained tags embedlab can load."""
    from . import models

    import open_clip

    models.register_configs()
    found = {name: list(open_clip.list_pretrained_tags_by_model(name)) for name in models.list_models()
             if pattern.lower() in name.lower()}
    if as_json:
        return _print_json(found)
    for name, tags in found.items():
        typer.echo(f"{name:40s} {', '.join(tags) if tags else '(no tags: pass a checkpoint file or none)'}")


@app.command("manifest")
@handle_errors
def manifest_cmd(layout: LayoutChoice = typer.Argument(..., help="Dataset layout. " + registry_help(LAYOUT_HELP) + "."),
                 root: Path = typer.Argument(Path("."), help="Dataset root folder (ignored for demo); webdataset: a folder of .tar shards or a glob."),
                 out: Path = typer.Option(..., "--out", "-o", help="Manifest file to write (.jsonl)."),
                 role: str = typer.Option(FROM_API, help="Set label for every image (flat layout only)."),
                 split: Optional[str] = typer.Option(None, help="Split for every image (flat: default train; baid: override)."),
                 source: Optional[str] = typer.Option(FROM_API, help="Source name recorded per image (flat layout)."),
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
                device: str = typer.Option(FROM_API, help=DEVICE_HELP),
                batch_size: int = typer.Option(FROM_API, help="Images per forward pass."),
                workers: Optional[int] = typer.Option(FROM_API, help="DataLoader worker processes (default: on a GPU up to 8; on the CPU all cores for small towers, 1 for large ones; 0 = in-process). With --engine ray: CPUs (decode threads) per actor."),
                shard_size: int = typer.Option(FROM_API, help="Images per shard (the unit of resume)."),
                decode: DecodeChoice = typer.Option(FROM_API, help="auto (torchvision on CUDA, pil elsewhere), pil (PIL decode + open_clip preprocess) or torchvision "
                                           "(batched torchvision.io.decode_jpeg on the device, nvJPEG on CUDA; a different, recorded preprocessing)."),
                dtype: DtypeChoice = typer.Option(FROM_API, help="Stored vector dtype."),
                role: Optional[List[str]] = typer.Option(FROM_API, help="Only embed images with this set label (repeatable)."),
                overwrite: bool = typer.Option(FROM_API, help="Replace a run folder made with another configuration."),
                max_aspect: float = typer.Option(FROM_API, help="Refuse images whose long side exceeds this many times the short side (recorded as extreme-aspect; bounds the memory of the short-side resize)."),
                engine: EngineChoice = typer.Option(FROM_API, help="local (this process and its decode workers) or ray (Ray actors: one per GPU, or per CPU share; pip install 'embedlab[ray]')."),
                address: Optional[str] = typer.Option(FROM_API, help="--engine ray: address of a running Ray cluster (e.g. auto, or HEAD:6379); default: start a local instance. The run folder must be on storage every node mounts at the same path."),
                gpus_per_worker: Optional[float] = typer.Option(FROM_API, help="--engine ray: GPUs per actor (default 1 when the cluster has GPUs)."),
                break_lock: bool = typer.Option(FROM_API, help="Take over the run folder's lock from a process that is gone (e.g. killed on another machine)."),
                progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
                as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Embed a manifest's images into a resumable run folder (vectors, metadata, FAISS index)."""
    from .extract import extract

    summary = extract(manifest, model, pretrained, out, device=device, batch_size=batch_size, workers=workers,
                      shard_size=shard_size, decode=decode.value, vector_dtype=dtype.value, overwrite=overwrite, roles=role,
                      max_aspect=max_aspect, engine=engine.value, address=address, gpus_per_worker=gpus_per_worker,
                      break_lock=break_lock, progress=progress)
    if as_json:
        _print_json(summary)
    else:
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
               text: Optional[str] = typer.Option(FROM_API, help="Text query."),
               image: Optional[Path] = typer.Option(FROM_API, help="Image query (a file)."),
               top: int = typer.Option(FROM_API, "--top", "-k", help="How many results (the top k)."),
               index: SearchIndex = typer.Option(FROM_API,
                                         help="run: the run's own index (built by extract or `embedlab index`; default). "
                                              "A kind (" + ", ".join(INDEX_KINDS) + "): build that index in memory for this "
                                              "query. An approximate index's recall against exact search is printed."),
               device: str = typer.Option(FROM_API, help=DEVICE_HELP),
               as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Top-k nearest images of a run to a text or image query, with scores."""
    from .search import search

    info = search(run, text=text, image=image, k=top, index=index.value, device=device)
    table = info.pop("table")
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
              kind: IndexKindChoice = typer.Option(FROM_API,
                                       help="auto: by size (exact below 1M vectors when they fit the budget, HNSW when its "
                                            "graph fits, else IVF with 4-bit fast-scan PQ codes re-ranked from the stored "
                                            "vectors, or 8-bit PQ when only those fit). Or: " +
                                            "; ".join(f"{k.name}: {k.help}" for k in _INDEX_KINDS.values()) + "."),
              memory_budget: str = typer.Option(FROM_API, help="Memory the finished index may take (e.g. 4G, 512M); auto picks "
                                                "by it, an explicit kind over it is refused."),
              nlist: Optional[int] = typer.Option(FROM_API, help="Inverted lists for IVF kinds (default 2^round(log2(4 sqrt(N))))."),
              train_size: Optional[int] = typer.Option(FROM_API, help="Vectors sampled to train IVF kinds (default 50 per list, "
                                                       "at least 10,000)."),
              queries: int = typer.Option(FROM_API, help="Held-out queries for tuning, and as many again for the recall@1/10/100 "
                                          "measured against exact search."),
              recall_target: float = typer.Option(FROM_API, help="recall@10 the search setting (nprobe / efSearch) is tuned to reach."),
              seed: int = typer.Option(FROM_API, help="Seed for the training sample and the queries."),
              progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
              as_json: bool = typer.Option(False, "--json", help="Print the index record as JSON.")):
    """Build the run's FAISS index out of core (trained on a sample, filled shard by shard, written atomically; on the GPU
    with a GPU build of FAISS) and record its recall and latency in the run manifest."""
    from .index import index_run

    info = index_run(run, kind.value, memory_budget=memory_budget, nlist=nlist, train_size=train_size, queries=queries,
                     recall_target=recall_target, seed=seed, progress=progress)
    if as_json:
        _print_json(info)
        return
    typer.echo(f"wrote {run / info['file']}: {info['kind']} ({info['factory']}; {info['why']}), {info['ntotal']:,} vectors, "
               f"{info['size_bytes'] / 2**20:.1f} MiB, built in {info['build_seconds']:.1f} s")
    if not info["exact"]:
        rec = ", ".join(f"@{k} {v:.3f}" for k, v in info["recall"].items())
        typer.echo(f"recall vs exact search ({info['recall_queries']} held-out queries): {rec}; search {info['search_params']}")
    typer.echo(f"single-query latency: median {info['latency']['median_ms']:.3f} ms, p95 {info['latency']['p95_ms']:.3f} ms")


runs_app = _Typer(prefix="runs ", no_args_is_help=True, help="Work with run folders as wholes (merge).")
app.add_typer(runs_app, name="runs")


@runs_app.command("merge")
@handle_errors
def runs_merge_cmd(runs: List[Path] = typer.Argument(..., help="Two or more finished run folders of the same model and preprocessing."),
                   out: Path = typer.Option(..., "--out", "-o", help="The merged run folder to write."),
                   overwrite: bool = typer.Option(FROM_API, help="Replace --out if it exists."),
                   index_budget: str = typer.Option(FROM_API, help="Build the exact index while its float32 vectors fit this "
                                                    "memory; beyond, run `embedlab index` on the merged run."),
                   progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
                   as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Merge runs extracted separately (several machines, days) into one run; refuses mixed models or preprocessing.
    Row ids are renumbered; the column merged_from names each image's source run."""
    from .runs import merge_runs

    summary = merge_runs(runs, out, overwrite=overwrite, index_budget=index_budget, progress=progress)
    if as_json:
        return _print_json(summary)
    typer.echo(f"merged {summary['merged']} runs into {out}: {summary['embedded']} images, {summary['skipped']} skipped"
               + (f"; {summary['index'].get('note')}" if summary.get("index", {}).get("note") else ""))


@app.command("residual")
@handle_errors
def residual_cmd(run: Path = typer.Argument(..., help="Run folder (the 'from' set, and the 'to' set unless --to-run)."),
                 from_: str = typer.Option(..., "--from", help="The starting set: a set label (backlit), COLUMN=VALUE, or several joined by commas."),
                 to: str = typer.Option(..., "--to", help="The target set, same syntax (e.g. welllit)."),
                 out: Path = typer.Option(..., "--out", "-o", help="Output .npy (a JSON sidecar is written beside it)."),
                 to_run: Optional[Path] = typer.Option(FROM_API, help="Take the 'to' set from this run (same model and preprocessing required)."),
                 method: MethodChoice = typer.Option(FROM_API, help="rave (the paper: normalise, mean, normalise, subtract, normalise; "
                                                     "docs/method.md) or mean-diff."),
                 bootstrap: int = typer.Option(FROM_API, help="Bootstrap resamples for the stability figure (0 = skip)."),
                 seed: int = typer.Option(FROM_API, help="Random seed for the bootstrap."),
                 memory_budget: str = typer.Option(FROM_API, help="Memory for what the streaming pass keeps beyond one block of "
                                                   "vectors (per-group sums, bootstrap weights), e.g. 512M, 2G."),
                 progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
                 as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Compute the residual vector between two image sets (the paper's formula) with its sidecar.

    Streams the run's memory-mapped vectors once, block by block: runs larger than memory are fine."""
    from .residual import residual

    res = residual(run, from_, to, out, to_run=to_run, method=method.value, bootstrap=bootstrap, seed=seed,
                   memory_budget=memory_budget, progress=progress)
    if as_json:
        return _print_json(res.summary())
    info = res.info
    typer.echo(f"wrote {out} (dim {len(res.vector)}, thr {res.thr:.4f}; {info['from']['count']} '{from_}' -> "
               f"{info['to']['count']} '{to}' images; cos(v_from, v_to) = {info['cos_v_from_v_to']:.4f})")
    if info["bootstrap"]:
        b = info["bootstrap"]
        typer.echo(f"bootstrap stability ({b['n_boot']} resamples of {b['unit']}s): mean cosine {b['mean_cosine']:.3f}, "
                   f"95% interval [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}]")


FamilyChoice = choices("FamilyChoice", ("page", "adds", "removes"))   # permutation.FAMILIES (tests/test_cli.py)


@app.command("explain-residual")
@handle_errors
def explain_residual_cmd(residual: Path = typer.Argument(..., help="residual.npy (with its sidecar)."),
                         vocab: Optional[str] = typer.Option(FROM_API, help="tokens (all tokenizer tokens, as RAVE), words, model "
                                                             "(the model's own, default when it ships one), or a file with one concept per line. Default: model, else words."),
                         templates: Optional[str] = typer.Option(FROM_API, help=TEMPLATES_HELP),
                         top: int = typer.Option(FROM_API, "--top", "-k", help="Concepts per side after deflation (the top k; 1-500)."),
                         out: Path = typer.Option(FROM_API, "--out", "-o", help="Report folder."),
                         candidates: int = typer.Option(FROM_API, help="Top concepts that get per-image statistics (AUROC, Welch p, BH q)."),
                         permutations: int = typer.Option(FROM_API, help="Label shuffles for the family-wise permutation test (0 = skip)."),
                         seed: int = typer.Option(FROM_API, help="Seed for the shuffles."),
                         deflated_steps: int = typer.Option(FROM_API, help="Deflation steps that get the sequential permutation test (p_fwer_deflated)."),
                         family: FamilyChoice = typer.Option(FROM_API, help="What p_fwer controls: page (both lists, one family) or a one-sided question about one list (adds or removes; the other list gets no p-values)."),
                         min_explained: float = typer.Option(FROM_API, help="A list ends at a pick that explains less than this share of |r|^2."),
                         exemplars: int = typer.Option(FROM_API, help="Exemplar images per top concept and set."),
                         device: str = typer.Option(FROM_API, help=DEVICE_HELP),
                         progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
                         as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Rank the concepts a residual carries, with significance, into report.{json,csv,md,html}."""
    from .explain import explain_residual

    rep = explain_residual(residual, out, vocab=vocab, templates=templates, top=top, candidates=candidates,
                           permutations=permutations, seed=seed, exemplars=exemplars, device=device, progress=progress,
                           deflated_steps=deflated_steps, family=family.value, min_explained=min_explained)
    if as_json:
        return _print_json(rep)
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
                remove: Optional[List[str]] = typer.Option(FROM_API, help="A concept to project out (centred text embedding); repeatable."),
                remove_pair: Optional[List[str]] = typer.Option(FROM_API, help="'PROMPT|BASELINE': project out the difference of two prompts; repeatable."),
                remove_labelled: Optional[str] = typer.Option(FROM_API, help="'RUN:COLUMN=VALUE': learn directions separating those images (INLP)."),
                preset: Optional[CorrectPresetChoice] = typer.Option(FROM_API, help="rave-shift: the released RAVE code's shifted "
                                                                     "residual (docs/method.md)."),
                top: int = typer.Option(FROM_API, "--top", "-k", help="Tokens per side for --preset rave-shift (the top k)."),
                vocab: Optional[str] = typer.Option(FROM_API, help="Vocabulary whose mean centres --remove concepts (as in explain-residual)."),
                templates: Optional[str] = typer.Option(FROM_API, help="Templates for --remove concepts. " + TEMPLATES_HELP),
                device: str = typer.Option(FROM_API, help=DEVICE_HELP),
                as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
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
        labelled = (run_path, str(selector))
    res = correct(residual, out, remove=remove, remove_pair=pairs, remove_labelled=labelled,
                  preset=preset.value if preset else None, k=top, vocab=vocab, templates=templates, device=device)
    if as_json:
        return _print_json(res.summary())
    c = res.info["correction"]
    typer.echo(f"wrote {out}: cos(r, r') = {c['cos_before_after']:.4f}, {100 * c['fraction_of_norm_removed']:.1f}% of |r| removed, "
               f"thr {c['thr_before']:.4f} -> {c['thr_after']:.4f}")
    for d in c["directions"]:
        typer.echo(f"  {d['label']}: projection {d['projection_before']:.4f} -> {d['projection_after']:.2e}")


@app.command("probe-residual")
@handle_errors
def probe_residual_cmd(residual: Path = typer.Argument(..., help="residual.npy (with its sidecar: model and thr)."),
                       images: List[str] = typer.Argument(..., help="Images: files, folders, or MANIFEST.jsonl[:SELECTOR]."),
                       out: Optional[Path] = typer.Option(FROM_API, "--out", "-o", help="Output folder (default RESIDUAL_probe/ beside the residual)."),
                       selector: str = typer.Option(FROM_API, help="Selector for manifests (COLUMN=VALUE[,...])."),
                       edit: Optional[List[str]] = typer.Option(FROM_API, help="Only these edits (repeatable; default all)."),
                       max_images: int = typer.Option(FROM_API, help="At most this many images (a seeded sample)."),
                       device: str = typer.Option(FROM_API, help=DEVICE_HELP),
                       progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
                       as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Which image edits (exposure, gamma, contrast, saturation, shadows, highlights, glare, blur, JPEG, downscale)
    move the images' projection on a residual towards its target thr: a table with 95% CIs and a plot."""
    from .probe import probe_residual

    r = probe_residual(residual, images, out, selector=selector, edits=edit, max_images=max_images, device=device,
                       progress=progress)
    if as_json:
        return _print_json(r)
    typer.echo(r["table"])
    typer.echo(f"probe: {r['files']['png']} (also .json, .csv, .md)")


@app.command("plot")
@handle_errors
def plot_cmd(run: Path = typer.Argument(..., help="Run folder."),
             out: Optional[Path] = typer.Option(FROM_API, "--out", "-o", help="Output folder (default RUN/plots)."),
             color_by: str = typer.Option(FROM_API, help="Metadata column that colours the points."),
             residual: Optional[Path] = typer.Option(FROM_API, help="Draw this residual's direction."),
             umap: bool = typer.Option("umap" in default("plot", "methods"), help="Also draw a UMAP (cosine) map."),
             projector: bool = typer.Option(FROM_API, help="Export tensors.tsv/metadata.tsv for the TensorBoard projector."),
             max_points: int = typer.Option(FROM_API, help="Larger runs are drawn from a seeded sample of this many images, "
                                            "stratified by --color-by and group (the titles and sample.json say so)."),
             seed: int = typer.Option(FROM_API, help="Seed for the sample and for UMAP."),
             progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
             as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """2-D maps (PCA, UMAP) of a run's image embeddings, coloured by set, with the residual drawn."""
    from .plot import plot

    result = plot(run, out, color_by=color_by, residual=residual, methods=("pca", "umap") if umap else ("pca",),
                  projector=projector, max_points=max_points, seed=seed, progress=progress)
    if as_json:
        return _print_json(result)
    for k, v in result["files"].items():
        typer.echo(f"{k}: {v}")


@app.command("embedding-map")
@handle_errors
def embedding_map_cmd(run: Path = typer.Argument(..., help="Run folder."),
                      out: Optional[Path] = typer.Option(FROM_API, "--out", "-o", help="The .html to write (default RUN/map.html)."),
                      residual: Optional[Path] = typer.Option(FROM_API, help="Draw this residual (its sets are found in the run by their selectors)."),
                      color_by: str = typer.Option(FROM_API, help="Metadata column coloured at first (any column can be picked on the page)."),
                      max_points: int = typer.Option(FROM_API, help="Subsample bigger runs to this many images (seeded; the page states it)."),
                      umap: bool = typer.Option("umap" in default("embedding-map", "methods"), help="Also compute a UMAP (cosine) view."),
                      as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Interactive map of a run's image embeddings: one offline HTML page, PCA/UMAP, thumbnails on hover, search."""
    from .embedding_map import embedding_map

    result = embedding_map(run, out, residual=residual, color_by=color_by, max_points=max_points,
                           methods=("pca", "umap") if umap else ("pca",))
    if as_json:
        return _print_json(result)
    typer.echo(str(result["files"]["html"]))


GUIDANCE_MODES = list_guidance()            # the registry (embedlab.enhance.guidance) is the source of choices and help
GuidanceChoice = choices("GuidanceChoice", GUIDANCE_MODES)
PresetChoice = choices("PresetChoice", list_presets())          # embedlab.enhance.presets.PRESETS
IdentityChoice = choices("IdentityChoice", IDENTITY_LOSSES)
_TC = TrainConfig()                         # train's help states the defaults of the dataclass, never retyped


@app.command("train")
@handle_errors
def train_cmd(out: Path = typer.Option(..., "--out", "-o", help="Training run folder (rerun the same command to resume)."),
              residual: Optional[Path] = typer.Option(FROM_API, help="Residual .npy (e.g. corrected.npy) guiding --guidance residual; "
                                                      "its sidecar gives thr and the guidance model."),
              backlit: str = typer.Option(..., help="Images to enhance: MANIFEST.jsonl[:SELECTOR], RUN[:SELECTOR] or a folder "
                                          "(default selector role=backlit)."),
              welllit: Optional[str] = typer.Option(FROM_API, help="Well-lit set (latent/prompt modes; default selector role=welllit). "
                                                   "Unpaired: any well-lit set; paired: the GT of the same scenes."),
              guidance: GuidanceChoice = typer.Option(FROM_API, help=registry_help(GUIDANCE_MODES) + "."),
              model: Optional[str] = typer.Option(FROM_API, help="Guidance CLIP for latent/prompt (default ViT-B-32). " + MODEL_HELP),
              pretrained: Optional[str] = typer.Option(FROM_API, help="Its weights (default openai). " + PRETRAINED_HELP),
              identity: IdentityChoice = typer.Option(FROM_API, help=registry_help(IDENTITY_LOSSES) + "."),
              identity_model: str = typer.Option(FROM_API, help="open_clip image tower for the identity loss (ResNet: stem+4 stages; ViT: 5 blocks)."),
              identity_pretrained: str = typer.Option(FROM_API, help="Its weights. " + PRETRAINED_HELP),
              preset: PresetChoice = typer.Option(FROM_API, help="Overrides of the defaults below. " + registry_help(list_presets()) + "."),
              init: Optional[str] = typer.Option(None, help="reconstruct (the paper's identity-loss warm-up), identity "
                                                 "(output = input at step 0) or a checkpoint (embedlab's or a published .pth)."),
              iters: Optional[int] = typer.Option(None, help=f"Network iterations in total, reconstruction included ({_TC.iters:,})."),
              recon_iters: Optional[int] = typer.Option(None, help=f"Reconstruction warm-up iterations, init reconstruct ({_TC.recon_iters:,})."),
              stage_iters: Optional[int] = typer.Option(None, help=f"Network iterations per stage ({_TC.stage_iters:,})."),
              guidance_iters: Optional[int] = typer.Option(None, help=f"Prompt/latent refinement iterations per cycle ({_TC.guidance_iters:,})."),
              guidance_init_iters: Optional[int] = typer.Option(None, help=f"Prompt/latent cross-entropy initialisation ({_TC.guidance_init_iters:,})."),
              lr: Optional[float] = typer.Option(None, help=f"Adam learning rate of the network ({_TC.lr:g})."),
              batch_size: Optional[int] = typer.Option(None, help=f"Batch size ({_TC.batch_size})."),
              size: Optional[int] = typer.Option(None, help=f"Images are squash-resized to SIZE x SIZE before augmentation ({_TC.size})."),
              crop: Optional[int] = typer.Option(None, help=f"Random crop after resizing ({_TC.crop or 'off'})."),
              pixel_loss: Optional[float] = typer.Option(None, help=f"EXTENSION (not in the paper): weight of a pixel loss ({_TC.pixel_loss:g} = off)."),
              lr_schedule: Optional[str] = typer.Option(None, help=f"Learning-rate schedule: {registry_help(LR_SCHEDULES)} ({_TC.lr_schedule})."),
              grad_clip: Optional[float] = typer.Option(None, help=f"Clip the gradient's global norm at this ({_TC.grad_clip or 'off'}; the paper: off)."),
              ema: Optional[float] = typer.Option(None, help=f"Export an exponential moving average of the weights with this decay ({_TC.ema or 'off'}; the paper: off)."),
              identity_weight: Optional[float] = typer.Option(None, help=f"Weight of the identity term in guided training ({_TC.identity_weight:g}, the paper's)."),
              padding: Optional[str] = typer.Option(None, help=f"The trained network's padding: {registry_help(PADDINGS)} ({_TC.padding})."),
              seed: Optional[int] = typer.Option(None, help=f"Random seed ({_TC.seed})."),
              device: str = typer.Option(FROM_API, help=DEVICE_HELP),
              overwrite: bool = typer.Option(FROM_API, help="Start afresh, deleting an existing run in --out."),
              progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
              as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Train the enhancement network with RAVE, CLIP-LIT-Latent or CLIP-LIT guidance (defaults: the paper's; a
    preset overrides them, a flag overrides both)."""
    from .enhance.train import train

    result = train(out, preset=preset.value, overwrite=overwrite, progress=progress, guidance=guidance.value,
                   residual=residual, backlit=backlit, welllit=welllit, model=model,
                   pretrained=pretrained, identity=identity.value,
                   identity_model=identity_model, identity_pretrained=identity_pretrained, init=init, iters=iters,
                   recon_iters=recon_iters, stage_iters=stage_iters, guidance_iters=guidance_iters,
                   guidance_init_iters=guidance_init_iters, lr=lr, batch_size=batch_size, size=size, crop=crop,
                   pixel_loss=pixel_loss, lr_schedule=lr_schedule, grad_clip=grad_clip, ema=ema,
                   identity_weight=identity_weight, padding=padding, seed=seed, device=device)
    if as_json:
        return _print_json(result)
    typer.echo(f"trained {result['steps']} iterations in {result['seconds_this_call']} s; enhancer: {result['enhancer']}")


@app.command("enhance")
@handle_errors
def enhance_cmd(checkpoint: Path = typer.Argument(..., help="enhancer.safetensors, ckpt_last.pt, or a published CLIP-LIT/RAVE .pth."),
                inputs: List[str] = typer.Argument(..., help="Image files or folders."),
                out: Path = typer.Option(..., "--out", "-o", help="Output folder (PNG, named by input stem)."),
                device: str = typer.Option(FROM_API, help=DEVICE_HELP),
                batch_size: int = typer.Option(FROM_API, help="Images of one size per forward pass."),
                max_pixels: int = typer.Option(FROM_API, help="Above this many pixels per image (default 16,000,000 = 16 MP) "
                                               "the illumination map is estimated on a downscaled copy and upsampled; "
                                               "logged once per image."),
                precision: PrecisionChoice = typer.Option(FROM_API, help="fp32 (default; matches the published code's outputs to 1e-5) or "
                                                          "bf16 (autocast: faster on a GPU, outputs differ by up to ~1e-2)."),
                progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
                as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Enhance images at full resolution with a trained or published network."""
    from .enhance.infer import enhance

    result = enhance(checkpoint, inputs, out, device=device, batch_size=batch_size, max_pixels=max_pixels,
                     precision=precision.value, progress=progress)
    if as_json:
        return _print_json(result)
    typer.echo(f"enhanced {result['enhanced']} image(s) into {out}"
               + (f"; {result['skipped']} skipped" if result["skipped"] else ""))


@app.command("evaluate")
@handle_errors
def evaluate_cmd(pred: Path = typer.Option(..., help="Folder of enhanced images."),
                 gt: Optional[str] = typer.Option(FROM_API, help="Ground-truth folder (pairs by exact stem) or a manifest (.jsonl)."),
                 out: Optional[Path] = typer.Option(FROM_API, "--out", "-o", help="Where per_image.csv and summary.json go (default PRED/metrics)."),
                 gray: bool = typer.Option(FROM_API, help="Also the RAVE repo's grayscale PSNR/SSIM protocol."),
                 lpips: bool = typer.Option(FROM_API, help="Also LPIPS (needs the lpips package and local AlexNet weights)."),
                 inputs: Optional[str] = typer.Option(FROM_API, help="Folder of the inputs, for the residual projection of inputs."),
                 residual: Optional[Path] = typer.Option(FROM_API, help="Report the mean projection of embeddings on this residual."),
                 device: str = typer.Option(FROM_API, help=DEVICE_HELP),
                 progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
                 as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """PSNR/SSIM (and LPIPS) against ground truth, exposure statistics, and the residual projection."""
    from .enhance.evaluate import evaluate

    summary = evaluate(pred, gt, out, gray=gray, lpips=lpips, inputs=inputs, residual=residual, device=device,
                       progress=progress)
    if as_json:
        return _print_json(summary)
    shown = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    typer.echo(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    for note in summary.get("notes", [])[:10]:
        typer.echo(f"note: {note}")
    typer.echo(f"per-image metrics: {summary['files']['per_image']}; summary: {summary['files']['summary']}")


@app.command("synth-backlit")
@handle_errors
def synth_backlit_cmd(src: List[str] = typer.Argument(..., help="Photos: files, folders, or 'pkg' (the package photos)."),
                      out: Path = typer.Option(..., "--out", "-o", help="Output folder (images/, originals/, manifest.jsonl, params.json)."),
                      recipe: RecipeChoice = typer.Option(FROM_API, case_sensitive=False, help="A: backlight (a background "
                                                          "mask), B: radial light, C: global exposure (docs/method.md)."),
                      seeds: int = typer.Option(FROM_API, help="Variants per photo (recipes A and B)."),
                      first_seed: int = typer.Option(FROM_API, help="First seed."),
                      split: str = typer.Option(FROM_API, help="Split recorded in the manifest."),
                      progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
                      as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Render paired synthetic backlit (or exposure-error) versions of photos, with a manifest."""
    from .synth_dataset import synth_backlit

    r = synth_backlit(src, out, recipe=recipe.value, seeds=seeds, first_seed=first_seed, split=split, progress=progress)
    if as_json:
        return _print_json(r)
    typer.echo(f"wrote {r['images']} images and {r['files']['manifest']}")


@app.command("pretrain-demo")
@handle_errors
def pretrain_demo_cmd(out: Optional[Path] = typer.Option(FROM_API, "--out", "-o", help="Folder for the checkpoint (default: the user cache, keyed by the recipe)."),
                      device: str = typer.Option(FROM_API, help=DEVICE_HELP),
                      iters: Optional[int] = typer.Option(None, help="Training iterations (default: the full schedule)."),
                      seed: int = typer.Option(FROM_API, help="Seed (the model is deterministic on the CPU for a seed)."),
                      overwrite: bool = typer.Option(FROM_API, help="Retrain even when a cached (or shipped) model exists."),
                      progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
                      pack: Optional[Path] = typer.Option(None, "--pack", help="Also write the shippable pack (token rows "
                                                          "the grammar uses + all other tensors) into this folder, "
                                                          "e.g. embedlab/data/demo_clip."),
                      as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Train (or find cached) the small offline demo CLIP (a DEMO model: lighting words and package-photo objects only)."""
    from .demo_clip import pack_model, pretrain_demo

    extra = {"steps": iters} if iters else {}
    result = pretrain_demo(out, device=device, overwrite=overwrite, seed=seed, progress=progress, **extra)
    ckpt = result["files"]["checkpoint"]
    if pack:
        result["files"]["pack"] = pack_model(ckpt, pack)
    if as_json:
        return _print_json(result)
    typer.echo(f"demo CLIP: {ckpt}\nuse it with: --model embedlab-demo --pretrained {ckpt}")
    if pack:
        typer.echo(f"pack: {result['files']['pack']}")


@app.command("demo")
@handle_errors
def demo_cmd(out: Path = typer.Option(FROM_API, "--out", "-o", help="Output folder (index.html is the entry point)."),
             model: Optional[str] = typer.Option(FROM_API, help="Default: the offline demo CLIP (trained and cached on first use). "
                                                 "Or any open_clip model, e.g. ViT-B-32 with --pretrained openai."),
             pretrained: Optional[str] = typer.Option(FROM_API, help=PRETRAINED_HELP),
             device: str = typer.Option(FROM_API, help=DEVICE_HELP),
             enhancer: Optional[Path] = typer.Option(FROM_API, help="Use this enhancer (e.g. a published RAVE .pth) instead of training one."),
             iters: Optional[int] = typer.Option(FROM_API, help="Iterations of the short RAVE training (default: the 'demo' train preset's)."),
             permutations: int = typer.Option(FROM_API, help="Shuffles for the concept report's permutation test."),
             compare: bool = typer.Option(FROM_API, help="Also train CLIP-LIT-Latent on the same budget for the curve figure."),
             raw_curve: bool = typer.Option(FROM_API, help="Also train on the raw (uncorrected) residual for the curve figure."),
             progress: bool = typer.Option(FROM_API, help=PROGRESS_HELP),
             as_json: bool = typer.Option(False, "--json", help=JSON_HELP)):
    """Run the whole chain on the bundled demo data and write one index.html."""
    from .demo import demo, training_notice
    from .demo_clip import first_run_notice

    if model is None:
        typer.echo(first_run_notice() + " " + training_notice(iters, raw_curve, compare), err=as_json)
    result = demo(out, model=model, pretrained=pretrained, device=device, enhancer=enhancer,
                  train_iters=iters, permutations=permutations, compare=compare, raw_curve=raw_curve, progress=progress)
    if as_json:
        return _print_json(result)
    for name, path in result["files"].items():
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
