"""The CLI as a whole: flags show as flags, fixed choices are real choices built from the registries, --json is
JSON, and one validator words errors for Python (parameter names) and for the CLI (flag names)."""

import json

import numpy as np
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from embedlab.cli import app
from embedlab.cli.app import flag_for
from tests.conftest import REPO

ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1"}


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def _commands(group=None, path=()):
    """(command path, click command) of every command, subcommands included."""
    group = group or get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_help_shows_flags_as_flags():
    found = list(_commands())
    assert len(found) >= 15
    for path, _ in [((), None), *found]:
        r = _invoke(*path, "--help")
        assert r.exit_code == 0, (path, r.output)
        assert "<bool>" not in r.output, (path, r.output)
        assert "method.md" not in r.output.replace("docs/method.md", ""), path  # only shipped files cited


# fields: command line before the bad value, the option (None: an argument), the choices help must list
CHOICES = [
    (["manifest"], None, ["flat", "baid", "webdataset", "demo"]),
    (["train", "--out", "o", "--backlit", "b", "--preset"], "--preset", ["paper", "cpu-small", "demo"]),
    (["train", "--out", "o", "--backlit", "b", "--guidance"], "--guidance", ["residual", "latent", "prompt", "none"]),
    (["train", "--out", "o", "--backlit", "b", "--identity"], "--identity", ["clip", "pixel"]),
    (["extract", "-m", "m", "--model", "x", "--pretrained", "none", "--out", "o", "--decode"], "--decode", ["pil"]),
    (["residual", "r", "--from", "a", "--to", "b", "--out", "o.npy", "--method"], "--method", ["rave", "mean-diff"]),
    (["search", "r", "--text", "t", "--index"], "--index", ["run", "flat", "hnsw"]),
    (["index", "r", "--kind"], "--kind", ["auto", "flat"]),
    (["explain-residual", "r.npy", "--family"], "--family", ["page", "adds", "removes"]),
    (["correct", "r.npy", "--out", "o.npy", "--preset"], "--preset", ["rave-shift"]),
    (["enhance", "c", "i", "--out", "o", "--precision"], "--precision", ["fp32", "bf16"]),
    (["synth-backlit", "pkg", "--out", "o", "--recipe"], "--recipe", ["A", "B", "C"]),
]


@pytest.mark.parametrize("argv, option, listed", CHOICES, ids=[c[0][0] + (c[1] or "") for c in CHOICES])
def test_fixed_choices_are_listed_and_others_rejected_with_exit_2(argv, option, listed):
    r = _invoke(*argv, "no-such-choice")
    assert r.exit_code == 2, r.output
    text = _invoke(argv[0], "--help").output
    for choice in listed:
        assert choice in text, (argv[0], choice)


def test_cli_choices_come_from_the_tables_the_library_validates_against():
    """The CLI's fixed choices are the tuples of embedlab.choices (one home); the registries that carry help texts
    (correct presets, synth recipes, layouts, guidance modes, train presets) list the same names."""
    from embedlab import choices
    from embedlab.analysis import correct
    from embedlab.cli import analysis as cli_analysis
    from embedlab.cli import data as cli_data
    from embedlab.cli import enhancement as cli_enhancement
    from embedlab.cli import runs as cli_runs
    from embedlab.datasets import synth
    from embedlab.datasets.layouts import list_layouts
    from embedlab.enhancement import guidance, presets

    def values(enum_cls):
        return tuple(e.value for e in enum_cls)

    assert values(cli_runs.DecodeChoice) == choices.DECODERS and values(cli_runs.EngineChoice) == choices.ENGINES
    assert values(cli_runs.DtypeChoice) == choices.VECTOR_DTYPES
    assert values(cli_analysis.MethodChoice) == choices.METHODS
    assert values(cli_analysis.FamilyChoice) == choices.FAMILIES
    assert values(cli_enhancement.PrecisionChoice) == choices.PRECISIONS
    assert values(cli_analysis.CorrectPresetChoice) == choices.CORRECT_PRESETS == tuple(correct.PRESETS)
    assert values(cli_data.RecipeChoice) == choices.RECIPES == tuple(synth.RECIPES)
    assert values(cli_data.LayoutChoice) == list_layouts()
    # a mode registered by another test file (the toy mode) may come before or after the CLI was built
    builtin = tuple(n for n in guidance.list_guidance() if guidance.get_guidance(n).__module__.startswith("embedlab."))
    assert set(builtin) <= set(values(cli_enhancement.GuidanceChoice)) <= set(guidance.list_guidance())
    assert values(cli_enhancement.PresetChoice) == tuple(presets.PRESETS)


def test_train_help_states_the_dataclass_defaults():
    from embedlab.enhancement.presets import TrainConfig

    text = " ".join(_invoke("train", "--help").output.split())
    cfg = TrainConfig()
    assert f"({cfg.iters:,})" in text and f"({cfg.lr:g})" in text and f"({cfg.batch_size})" in text


def test_json_prints_parseable_summaries(tmp_path):
    r = _invoke("manifest", "demo", "--out", tmp_path / "demo.jsonl", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["count"] > 0 and got["files"]["manifest"] == str(tmp_path / "demo.jsonl")
    r = _invoke("synth-backlit", "pkg:skimage/chelsea", "--out", tmp_path / "s", "--recipe", "c", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["images"] == 4 and set(got["files"]) == {"manifest", "params"}


def test_python_errors_name_the_parameter_and_the_cli_names_the_flag(tmp_path):
    from embedlab.errors import ConfigError, InvalidParameterError
    from embedlab.reports.explain import explain_residual

    with pytest.raises(InvalidParameterError) as err:
        explain_residual(tmp_path / "r.npy", tmp_path / "rep", top=0)
    assert str(err.value) == (
        "The 'top' parameter of explain_residual must be an int in the range [1, 500]. Got 0 instead."
    )
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)
    r = CliRunner().invoke(app, ["explain-residual", str(tmp_path / "r.npy"), "--top", "0"], env=ENV)
    assert r.exit_code == 1
    assert (
        "Error: The '--top' option of explain-residual must be an int in the range [1, 500]. Got 0 instead." in r.output
    )


def test_flag_for_maps_python_names_to_the_flags_of_each_command():
    from types import SimpleNamespace

    commands = dict(_commands())
    ctx = lambda name: SimpleNamespace(command=commands[(name,)])  # noqa: E731   (all flag_for reads)
    assert flag_for("from_", ctx("residual")) == "--from"
    assert flag_for("run", ctx("residual")) == "RUN"
    assert flag_for("k", ctx("search")) == "--top" and flag_for("k", ctx("correct")) == "--top"
    assert flag_for("vector_dtype", ctx("extract")) == "--dtype"
    assert flag_for("block", ctx("residual")) is None  # API-only: the Python message is kept


@pytest.mark.parametrize(
    "value, constraint, message",
    [
        (0, ("int", 1, None), "must be an int in the range [1, inf). Got 0 instead."),
        (2.5, ("float", 0, 1), "must be a float in the range [0, 1]. Got 2.5 instead."),
        (True, ("int", 0, None), "must be an int in the range [0, inf). Got True instead."),
        ("x", ("rave", "mean-diff"), "must be a str among {'rave', 'mean-diff'}. Got 'x' instead."),
    ],
)
def test_check_param_wording(value, constraint, message):
    from embedlab._validate import Interval, check_param
    from embedlab.errors import InvalidParameterError

    c = (
        Interval({"int": int, "float": float}[constraint[0]], *constraint[1:])
        if constraint[0] in ("int", "float")
        else constraint
    )
    with pytest.raises(InvalidParameterError, match=None) as err:
        check_param("p", value, c, "f")
    assert str(err.value) == f"The 'p' parameter of f {message}" and err.value.param == "p"
    assert check_param("p", None, c, "f", allow_none=True) is None


def test_correct_labels_every_direction_by_the_edit_it_came_from():
    from embedlab.analysis.correct import _origins, edit_label

    d = np.eye(4)
    concept = ([d[0]], [{"kind": "concept", "concept": "cat"}])
    inlp = ([d[1], d[2]], [{"kind": "learned-inlp", "attribute": "group=a"}])
    pair = ([d[3]], [{"kind": "prompt-pair", "prompt": "a dog", "baseline": "a photo"}])
    dirs, edits, origin = _origins([concept, inlp, pair], first=1)  # one edit already in the sidecar
    assert len(dirs) == 4 and len(edits) == 3
    assert [o[0] for o in origin] == [1, 2, 2, 3]
    all_edits = [{"kind": "earlier"}] + edits
    labels = [edit_label(all_edits[e], j, n) for e, j, n in origin]
    assert labels == [
        "cat",
        "group=a (learned-inlp direction 1 of 2)",
        "group=a (learned-inlp direction 2 of 2)",
        "a dog",
    ]


# --progress/--no-progress and --json on every command that does long work or prints a summary
LONG = [
    "extract",
    "index",
    "runs merge",
    "residual",
    "explain-residual",
    "probe-residual",
    "plot",
    "train",
    "enhance",
    "evaluate",
    "synth-backlit",
    "pretrain-demo",
    "demo",
]


def test_long_commands_take_progress_and_every_command_json():
    commands = {" ".join(path): cmd for path, cmd in _commands()}
    for name in LONG:
        opts = {o for p in commands[name].params for o in (*p.opts, *p.secondary_opts)}
        assert {"--progress", "--no-progress"} <= opts, name
    for name, cmd in commands.items():
        assert "--json" in {o for p in cmd.params for o in p.opts}, name
        assert all(p.help for p in cmd.params), (name, [p.name for p in cmd.params if not p.help])


def test_no_progress_prints_nothing_and_progress_draws_a_bar(tiny_run, tmp_path, capfd):
    from embedlab.analysis.residual import residual

    residual(tiny_run, "role=backlit", "role=welllit", tmp_path / "q.npy", bootstrap=20, progress=False)
    assert capfd.readouterr().err == ""
    for args, bar in (
        (
            [
                "residual",
                tiny_run,
                "--from",
                "role=backlit",
                "--to",
                "role=welllit",
                "--out",
                tmp_path / "r.npy",
                "--bootstrap",
                "20",
            ],
            "residual: ",
        ),
        (["plot", tiny_run, "--out", tmp_path / "p", "--no-umap", "--no-projector"], "plot "),
    ):
        quiet = _invoke(*args, "--no-progress", "--json")
        assert quiet.exit_code == 0, quiet.output
        assert quiet.stderr == "" and json.loads(quiet.stdout)["files"], (args[0], quiet.stderr)
        loud = _invoke(*args)
        assert loud.exit_code == 0 and bar in loud.stderr, (args[0], loud.stderr)


def _api_signature_defaults(command):
    import importlib
    import inspect

    from embedlab.cli import defaults as cli_defaults

    found = {}
    for module, name in reversed(cli_defaults.API[command]):  # the first source wins, as in cli_defaults.default
        obj = getattr(importlib.import_module(f"embedlab.{module}"), name)
        found.update(
            {
                k: p.default
                for k, p in inspect.signature(obj).parameters.items()
                if p.default is not inspect.Parameter.empty
            }
        )
    return found


def test_option_defaults_come_from_the_api_never_retyped():
    """Every option that sets a Python parameter with a default takes that default from the API (declared
    FROM_API, filled by cli_defaults.from_api), equal to what inspect.signature says; OWN_DEFAULTS lists the deliberate
    exceptions."""
    from embedlab.cli import defaults as cli_defaults

    commands = {" ".join(path): cmd for path, cmd in _commands()}
    assert set(cli_defaults.API) == set(commands) - {"models"}
    problems = []
    for name, api in cli_defaults.API.items():
        defaults = _api_signature_defaults(name)
        for p in commands[name].params:
            py = next((n for n in cli_defaults.python_names(p.name) if n in defaults), None)
            if py is None or p.required or (name, p.name) in cli_defaults.OWN_DEFAULTS:
                continue
            want, got = defaults[py], p.default
            got = getattr(got, "value", got)
            if p.name not in cli_defaults.FILLED.get(name, ()):
                problems.append(f"{name} --{p.name}: default typed in cli.py, not taken from {api}")
            elif not (got == want or str(got) == str(want)):
                problems.append(f"{name} --{p.name}: cli {got!r} != api {want!r}")
    assert not problems, problems


def test_api_errors_name_parameters_and_the_cli_names_flags(tmp_path):
    from embedlab.errors import InvalidParameterError
    from embedlab.runs.search import search

    with pytest.raises(InvalidParameterError) as err:
        search(tmp_path / "run")
    msg = str(err.value)
    assert msg.startswith("The 'text' parameter of search must be a str when 'image' is None") and "--" not in msg
    r = _invoke("search", tmp_path / "run")
    assert r.exit_code == 1
    assert "Error: The '--text' option of search must be a str when '--image' is None" in r.output, r.output
    r = _invoke("runs", "merge", tmp_path / "a", "--out", tmp_path / "m")
    assert r.exit_code == 1 and "Error: The 'RUNS' argument of runs merge must hold at least two runs" in r.output


def test_no_api_message_names_a_cli_flag():
    """Messages raised by the Python API quote parameters ('device'); only the cli package writes flags. Command lines
    the user is told to run (`embedlab ... --out`) are left aside."""
    import ast
    import re

    pkg = REPO / "embedlab"
    bad = []
    for path in pkg.rglob("*.py"):
        if path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise):
                text = ast.unparse(node)
                for hit in re.findall(r"(?<![\w`-])--[a-z][\w-]*", re.sub(r"`[^`]*`", "", text)):
                    bad.append(f"{path.name}: {hit} in {text[:100]}")
    assert not bad, bad
