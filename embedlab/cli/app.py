"""The `embedlab` command line: a thin shell over the Python API (each command calls one function).

Exit codes: 0 success, 1 failure (an embedlab error: one line, no traceback unless --debug), 2 usage error.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import sys

import typer
from typer.core import TyperCommand, TyperGroup

from embedlab import __version__
from embedlab.analysis.vocab import TEMPLATES
from embedlab.cli.defaults import API, CLI_NAMES, FROM_API, from_api, python_names
from embedlab.errors import EmbedlabError


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


class StageTyper(typer.Typer):
    """typer.Typer whose commands and groups are the classes above, and whose options declared with default
    FROM_API take the default of the API function the command calls (one place, every command)."""

    def __init__(self, prefix: str = "", **kwargs):
        super().__init__(cls=_Group, rich_markup_mode=None, **kwargs)  # no markup: help shows [ray] etc. verbatim
        self.prefix = prefix  # a sub-app's name and a space ("runs "): its commands' keys in API

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


app = StageTyper(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Embedding analysis and bias inspection around RAVE: extract CLIP embeddings, compute and "
    "explain residual vectors, correct them, and train/run backlit-image enhancers.",
)
_STATE = {"debug": False}

MODEL_HELP = "open_clip architecture (e.g. ViT-B-32), hf-hub:ORG/REPO, or embedlab-demo / embedlab-tiny."
PRETRAINED_HELP = (
    "Weights: an open_clip pretrained tag (e.g. openai), hf-hub:ORG/REPO, a local checkpoint file, "
    "or none (random init)."
)
JSON_HELP = "Print a machine-readable summary (JSON) on stdout instead of text."
PROGRESS_HELP = "Show a progress bar (on stderr)."
TEMPLATES_HELP = (
    "Prompt templates (embedlab.vocab.TEMPLATES): "
    + ", ".join(
        f"{k} ({v[0]!r})" if len(v) == 1 else f"{k} ({len(v)} templates: {v[0]!r}, ...)" for k, v in TEMPLATES.items()
    )
    + f"; or one template containing {{}}. Default: {next(iter(TEMPLATES))}."
)
DEVICE_HELP = "auto (GPU when present, says which), cpu, cuda, cuda:N. 'cuda' without a GPU is an error."


def json_option(help: str = JSON_HELP):
    """The --json flag every command that prints a summary has."""
    return typer.Option(False, "--json", help=help)


def api_option(help: str, *flags: str):
    """An option whose default is the API function's (filled in by cli.defaults.from_api)."""
    return typer.Option(FROM_API, *flags, help=help)


def progress_option():
    return typer.Option(FROM_API, help=PROGRESS_HELP)


def device_option():
    return typer.Option(FROM_API, help=DEVICE_HELP)


def call_api(target: str, options: dict, exclude: tuple = (), **fixed):
    """Call the API function `target` ("package.module:function" under embedlab, imported now, so that --help stays
    fast) with a command's options (its `locals()`): choices become their values, flags their Python parameters
    (CLI_NAMES), and --json stays with the CLI. `fixed` are arguments the command computed itself (from the
    options in `exclude`)."""
    import importlib
    import inspect

    module, name = target.split(":")
    fn = getattr(importlib.import_module(f"embedlab.{module}"), name)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = dict(fixed)
    for option, value in options.items():
        if option == "as_json" or option in fixed or option in exclude:
            continue
        py = next((n for n in python_names(option) if n in params), option if takes_any else None)
        if py is None:
            raise TypeError(f"{target} has no parameter for the option {option!r}")
        kwargs[py] = value.value if isinstance(value, enum.Enum) else value
    return fn(**kwargs)


def finish(result, as_json: bool, show=None, summary=None) -> None:
    """A command's ending: with --json the result as JSON on stdout (`summary(result)` when given: what of it
    to print), else `show(result)`, which prints it as text; without `show`, one line per file it wrote."""
    if as_json:
        return print_json(result if summary is None else summary(result))
    if show is not None:
        return show(result)
    for name, path in result["files"].items():
        typer.echo(f"{name}: {path}")


def _fail(line: str):
    typer.echo(f"Error: {line}", err=True)
    raise typer.Exit(1)


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("Interrupted. Finished work is kept; rerun the same command to resume.", err=True)
            raise typer.Exit(130)
        except (EmbedlabError, OSError, UnicodeDecodeError, RuntimeError) as exc:
            from embedlab._io import is_disk_full

            unexpected = isinstance(exc, RuntimeError) and not isinstance(exc, EmbedlabError) and not is_disk_full(exc)
            if _STATE["debug"] or unexpected:  # FAISS reports a full disk as a RuntimeError; any other is a bug
                raise
            _fail(_error_line(exc))

    return wrapper


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
        if p.name in (name, name + "_"):  # from_ -> --from
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
        while ctx.parent is not None:  # the command's own names, without the program's (embedlab, -m embedlab)
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


def _error_line(exc: Exception) -> str:
    """One line for an expected error: embedlab's own, the file system's, a text file that is not UTF-8."""
    if isinstance(exc, EmbedlabError):
        return cli_message(exc)
    if isinstance(exc, UnicodeDecodeError):  # a text file read without embedlab._io.read_text: still one line
        return (
            f"a file that should be UTF-8 text is not (byte 0x{exc.object[exc.start]:02x} at byte offset "
            f"{exc.start}). Convert it to UTF-8 and rerun (--debug shows which file, in the traceback)."
        )
    return _os_error_line(exc)


def _os_error_line(exc: OSError) -> str:
    from embedlab._io import disk_full_error, display_path, is_disk_full

    filename = getattr(exc, "filename", None)
    if is_disk_full(exc):
        if filename is not None:
            return str(disk_full_error(os.fsdecode(filename)))
        return (
            "A disk that embedlab was writing to is full. Free space there and rerun the same command: finished "
            "work is kept and it resumes from there (--debug shows the traceback)."
        )
    names = [display_path(str(f)) for f in (exc.filename, exc.filename2) if f is not None]
    return (
        f"{exc.strerror or type(exc).__name__}: {' -> '.join(names) or str(exc)}. Fix the path or its permissions "
        "and rerun (--debug shows the traceback)."
    )


def _version(value: bool):
    if value:
        typer.echo(f"embedlab {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
):
    # embedlab's own messages at INFO by default; third-party chatter (open_clip logs to root) only with -vv
    ours = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("embedlab").setLevel(ours)
    if verbose < 2:
        logging.getLogger().setLevel(logging.ERROR if quiet else logging.WARNING)
        logging.getLogger("faiss").setLevel(logging.WARNING)
    _STATE["debug"] = debug


def print_json(obj) -> None:
    from embedlab._io import dumps_json

    typer.echo(dumps_json(obj))


def main() -> None:
    """Console entry point. Exit codes: 0 success, 1 an embedlab error, 2 a usage error (each one line on stderr,
    the traceback with --debug), 130 interrupted."""
    try:
        from typer._click import exceptions as click_exc  # typer >= 0.2x vendors click
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
