"""Imports flow one way: data -> models -> extract/store -> residual (explain, correct) -> enhance -> demo -> CLI."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "embedlab"
LAYERS = {
    "errors": 0,
    "_io": 0,
    "colour": 0,
    "_validate": 0,
    "photos": 1,
    "synth": 1,
    "synth_dataset": 1,
    "images": 1,
    "manifests": 1,
    "selector": 1,
    "models": 2,
    "runs": 3,
    "index": 3,
    "extract": 3,
    "extract_ray": 3,
    "search": 3,
    "lock": 0,
    "residual": 4,
    "vocab": 4,
    "explain": 4,
    "permutation": 4,
    "unit_stats": 4,
    "image_sets": 3,
    "report": 4,
    "correct": 4,
    "plot": 4,
    "probe": 4,
    "embedding_map": 4,
    "enhance": 5,
    "demo_clip": 6,
    "demo": 7,
    "demo_loop": 7,
    "cli": 8,
    "__init__": 9,
    "__main__": 9,
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


# inside enhance/: the network, losses, towers and data at the bottom; guidance modes and inference on them;
# training and evaluation on top (inference never imports the training module)
ENHANCE_LAYERS = {
    "network": 0,
    "losses": 0,
    "towers": 0,
    "data": 0,
    "guidance": 1,
    "presets": 1,
    "infer": 1,
    "evaluate": 2,
    "train": 2,
}


def test_enhance_modules_import_downwards():
    problems = []
    for path in (PKG / "enhance").glob("*.py"):
        if path.stem == "__init__":
            continue
        mine = ENHANCE_LAYERS[path.stem]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                problems += [
                    f"enhance.{path.stem} imports enhance.{t}"
                    for t in targets
                    if ENHANCE_LAYERS[t.split(".")[0]] > mine
                ]
    assert not problems, problems
