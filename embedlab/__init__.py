"""embedlab: embedding analysis and bias inspection around RAVE (residual vector embedding).

The public API mirrors the CLI: every command has a function of the same name. Heavy libraries (torch,
open_clip, faiss) are imported lazily, inside the functions that need them.
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = {
    "manifest": "embedlab.manifests", "read_manifest": "embedlab.manifests",
    "extract": "embedlab.extract", "search": "embedlab.search", "Run": "embedlab.runs", "merge_runs": "embedlab.runs",
    "index_run": "embedlab.index", "Selector": "embedlab.selector",
    "load_model": "embedlab.models", "list_models": "embedlab.models", "load_verified": "embedlab.models",
    "residual": "embedlab.residual", "compute_residual": "embedlab.residual", "load_residual": "embedlab.residual",
    "explain_residual": "embedlab.explain", "correct": "embedlab.correct", "plot": "embedlab.plot",
    "embedding_map": "embedlab.embedding_map",
    "train": "embedlab.enhance.train", "register_guidance": "embedlab.enhance.guidance",
    "list_guidance": "embedlab.enhance.guidance", "enhance": "embedlab.enhance.infer", "evaluate": "embedlab.enhance.evaluate",
    "synth_backlit": "embedlab.synth_dataset", "pretrain_demo": "embedlab.demo_clip", "demo": "embedlab.demo",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'embedlab' has no attribute {name!r}")
