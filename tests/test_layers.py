"""Imports flow one way: data -> models -> extract/store -> residual (explain, correct) -> enhance -> demo -> CLI."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "embedlab"
LAYERS = {
    "errors": 0, "_io": 0,
    "photos": 1, "synth": 1, "images": 1, "manifests": 1,
    "models": 2,
    "runs": 3, "index": 3, "extract": 3, "search": 3,
    "residual": 4, "vocab": 4, "explain": 4, "report": 4, "correct": 4, "plot": 4,
    "enhance": 5,
    "demo_clip": 6, "demo": 7, "cli": 8, "__init__": 9, "__main__": 9,
}


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_lower_layers_never_import_higher_ones():
    problems = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        me = ".".join(rel.parts)
        mine = _layer(me)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(rel.parts[:-1])[: len(rel.parts) - node.level] if node.level > 1 else list(rel.parts[:-1])
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
                for t in targets:
                    t = t or "__init__"
                    if t.split(".")[0] in LAYERS and _layer(t) > mine and t.split(".")[0] != me.split(".")[0]:
                        problems.append(f"{me} imports {t}")
    assert not problems, problems
