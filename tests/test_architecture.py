"""The house: packages by stage with imports flowing one way (function-level imports included), no import cycle,
modules of a readable size, a public facade whose names stay put, and the GPU check script still resolving."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PKG = REPO / "embedlab"
# the package order (docs/architecture.md): a module may import its own package and anything of a lower layer;
# packages of one layer are siblings and never import each other
LAYERS = {
    "errors": 0, "choices": 0, "colour": 0, "_validate": 1, "_io": 1, "models": 2,
    "datasets": 3, "runs": 4, "analysis": 5, "reports": 6, "enhancement": 6, "exports": 7, "demos": 8, "cli": 9,
    "__init__": 10, "__main__": 10,
}  # fmt: skip
# inside a package, the same rule between its modules (those not listed are free within their package)
INNER = {
    "enhancement": {"network": 0, "losses": 0, "towers": 0, "data": 0, "guidance": 1, "infer": 1, "presets": 2,
                    "evaluate": 3, "train": 3},
    "runs.extract": {"rows": 0, "device": 0, "dataset": 1, "encoder": 1, "job": 2, "collector": 3, "local": 4,
                     "ray": 4, "pipeline": 5},
    "analysis": {"null_kernels": 0, "permutation": 1},
    "runs": {"lock": 0, "store": 0, "index_kinds": 1, "index": 2, "search": 3, "finalize": 3, "merge": 4,
             "importer": 4},
    "cli": {"defaults": 0, "app": 1, "data": 2, "runs": 2, "analysis": 2, "reports": 2, "enhancement": 2, "demos": 2,
            "exports": 2, "imports": 3},
}  # fmt: skip


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PKG).with_suffix("").parts): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """Every embedlab module `name` imports, at any depth of the file (inside functions too), resolved to modules."""
    mods = _modules()
    pkg = name.split(".")[:-1] if not name.endswith("__init__") else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["embedlab", *pkg[: len(pkg) - node.level + 1], *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            if not t.startswith("embedlab"):
                continue
            parts = t.split(".")[1:]
            while parts and ".".join(parts) not in mods and ".".join([*parts, "__init__"]) not in mods:
                parts.pop()
            if parts:
                out.add(".".join(parts) if ".".join(parts) in mods else ".".join([*parts, "__init__"]))
    out.discard(name)
    return out


def _graph() -> dict[str, set[str]]:
    return {name: _imports(name, path) for name, path in _modules().items()}


def test_packages_import_only_lower_layers_and_never_a_sibling():
    problems = []
    for me, targets in _graph().items():
        top = me.split(".")[0]
        for t in targets:
            other = t.split(".")[0]
            if t.endswith("__init__") and t.count(".") == 0:
                continue  # the facade's lazy names are not imported by the package itself
            if other != top and LAYERS[other] >= LAYERS[top]:
                problems.append(f"{me} imports {t}")
    assert not problems, problems


def test_modules_inside_a_package_import_downwards():
    problems = []
    for me, targets in _graph().items():
        for pkg, order in INNER.items():
            prefix = pkg + "."
            if not me.startswith(prefix) or me[len(prefix) :] not in order:
                continue
            for t in targets:
                inner = t[len(prefix) :]
                if t.startswith(prefix) and inner in order and order[inner] >= order[me[len(prefix) :]]:
                    problems.append(f"{me} imports {t}")
    assert not problems, problems


def test_no_import_cycle_between_modules():
    graph = {m: {t for t in ts if not t.endswith("__init__")} for m, ts in _graph().items()}
    graph = {m: ts for m, ts in graph.items() if not m.endswith("__init__")}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_modules_stay_readable():
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in _modules().items()}
    assert not {m: n for m, n in sizes.items() if n > 500}, "modules over 500 lines"
    assert not {m: n for m, n in sizes.items() if m.startswith("cli.") and n > 300}, "cli modules over 300 lines"


def test_every_public_name_is_the_same_object_however_often_it_is_read():
    """Importing every submodule first (what a notebook does over time) must not turn a function into a module."""
    code = (
        "import importlib, pkgutil, embedlab\n"
        "for m in pkgutil.walk_packages(embedlab.__path__, 'embedlab.'):\n"
        "    if m.name != 'embedlab.__main__': importlib.import_module(m.name)\n"
        "bad = []\n"
        "for n in embedlab.__all__:\n"
        "    a, b = getattr(embedlab, n), getattr(embedlab, n)\n"
        "    if a is not b or not (callable(a) or isinstance(a, type) or n == '__version__'): bad.append(n)\n"
        "print(bad)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]", p.stdout


def test_every_command_has_its_function_in_the_facade():
    import importlib

    import embedlab
    from embedlab.cli.defaults import API

    for command, sources in API.items():
        module, name = sources[0]
        if command == "manifest":
            module, name = "datasets.layouts", "manifest"
        assert name in embedlab.__all__, command
        assert getattr(embedlab, name) is getattr(importlib.import_module(f"embedlab.{module}"), name), command
    for name in ("list_models", "explain_vectors", "probe_residual", "index_run", "Residual"):
        assert name in embedlab.__all__, name


def test_the_gpu_check_script_resolves_every_benchmark_and_argument():
    """`bash analyses/gpu_check.sh --dry-run` on a CPU: every module it runs exists and parses its arguments."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    p = subprocess.run(["bash", str(REPO / "analyses" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                       text=True, cwd=REPO, env=env, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "dry run ok" in p.stdout and p.stdout.count("arguments ok") >= 6, p.stdout[-3000:]


@pytest.mark.parametrize("tree", ["embedlab", "tests", "analyses"])
def test_ruff_is_clean(tree):
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed in this environment (README's setup installs it with the test extra)")
    p = subprocess.run([str(ruff), "check", "-q", tree], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:]
