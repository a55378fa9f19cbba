"""Option defaults read from the API's own signatures (with `ast`, so `--help` imports no torch or pandas): every
CLI default has one home, the Python function or config dataclass the command calls."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.lru_cache(maxsize=None)
def _source(module: str):
    import ast

    return ast.parse((Path(__file__).parents[1] / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))


def _constant(module: str, name: str):
    """A module-level literal constant of `embedlab.<module>`, followed through `from embedlab.x import NAME`."""
    import ast

    for node in _source(module).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
        if (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("embedlab.")
            and any((a.asname or a.name) == name for a in node.names)
        ):
            return _constant(
                node.module[len("embedlab.") :], next(a.name for a in node.names if (a.asname or a.name) == name)
            )
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

    def literal(pairs):  # defaults that are not literals (a call, an expression) are left out
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
    if isinstance(node, ast.ClassDef):  # a dataclass: its annotated fields with a value
        return literal(
            (n.target.id, n.value) for n in node.body if isinstance(n, ast.AnnAssign) and n.value is not None
        )
    a = node.args
    positional = a.posonlyargs + a.args
    pairs = list(zip(positional[len(positional) - len(a.defaults) :], a.defaults))
    pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
    return literal((arg.arg, d) for arg, d in pairs)


# command -> where its option defaults live: "module:function" (or a config dataclass) under embedlab, as
# `call_api` names its target; several (space-separated) are searched in order
_SOURCES = {
    "manifest": "datasets.layouts:_gen_flat",
    "extract": "runs.extract.pipeline:extract",
    "search": "runs.search:search",
    "index": "runs.index:index_run",
    "runs merge": "runs.merge:merge_runs",
    "runs import": "runs.importer:import_run",
    "residual": "analysis.residual:residual",
    "explain-residual": "reports.explain:explain_residual",
    "audit": "reports.audit:audit analysis.audit:AuditConfig",
    "correct": "analysis.correct:correct",
    "probe-residual": "analysis.probe:probe_residual",
    "plot": "reports.plot:plot",
    "embedding-map": "reports.embedding_map:embedding_map",
    "train": "enhancement.train:train enhancement.presets:TrainConfig",
    "enhance": "enhancement.infer:enhance",
    "evaluate": "enhancement.evaluate:evaluate",
    "synth-backlit": "datasets.synth_sets:synth_backlit",
    "pretrain-demo": "demos.clip:pretrain_demo demos.clip:DemoRecipe",
    "demo": "demos.pipeline:demo",
    "compare": "demos.compare:compare",
    "export fiftyone": "exports.fiftyone_dataset:export_fiftyone",
    "export concept-scores": "exports.concept_scores:export_concept_scores",
}
API = {command: [tuple(source.split(":")) for source in spec.split()] for command, spec in _SOURCES.items()}


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


FROM_API = _FromAPI()  # an option's default: the API's (filled in by `from_api`)
# options whose CLI default differs on purpose from the API default of the same name
OWN_DEFAULTS = {
    ("manifest", "split"): "None: each layout's own split (flat: train; baid: from its folders)",
    ("audit", "out"): "audit: the command writes a folder; the API writes nothing unless given one",
    **{
        ("train", k): "None: the preset's value (the help states TrainConfig's)"
        for k in (
            "init",
            "iters",
            "recon_iters",
            "stage_iters",
            "guidance_iters",
            "guidance_init_iters",
            "lr",
            "batch_size",
            "size",
            "crop",
            "pixel_loss",
            "seed",
            "lr_schedule",
            "grad_clip",
            "ema",
            "identity_weight",
            "padding",
        )
    },
}
FILLED: dict[str, set] = {}  # command -> the options whose default came from the API (tests/test_cli.py)


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


# Python parameter -> the CLI parameter that sets it, where the two names differ (else the names are the same)
CLI_NAMES = {"vector_dtype": "dtype", "roles": "role", "edits": "edit", "k": "top", "train_iters": "iters"}
