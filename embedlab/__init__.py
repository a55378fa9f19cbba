"""embedlab: embedding analysis and bias inspection around RAVE (residual vector embedding).

The public API mirrors the CLI: every command has a function of the same name. This module is the facade that owns
the public names; the code lives in packages by stage (datasets -> runs -> analysis -> reports / enhancement ->
demos -> cli; docs/architecture.md). Names are resolved lazily, so that `import embedlab` and `embedlab --help`
stay fast (torch, open_clip and faiss load only with the function that needs them). No public name is also the
name of a submodule of this package, so a name read here is the same object however often it is read.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    # datasets
    "manifest": "embedlab.datasets.layouts",
    "list_layouts": "embedlab.datasets.layouts",
    "read_manifest": "embedlab.datasets.manifest",
    "Selector": "embedlab.datasets.selector",
    "synth_backlit": "embedlab.datasets.synth_sets",
    # models
    "load_model": "embedlab.models",
    "list_models": "embedlab.models",
    "load_verified": "embedlab.models",
    # runs
    "extract": "embedlab.runs.extract.pipeline",
    "Run": "embedlab.runs.store",
    "merge_runs": "embedlab.runs.merge",
    "import_run": "embedlab.runs.importer",
    "index_run": "embedlab.runs.index",
    "search": "embedlab.runs.search",
    # analysis
    "residual": "embedlab.analysis.residual",
    "compute_residual": "embedlab.analysis.formula",
    "load_residual": "embedlab.analysis.residual_file",
    "Residual": "embedlab.analysis.residual_file",
    "explain_vectors": "embedlab.analysis.explain",
    "correct": "embedlab.analysis.correct",
    "probe_residual": "embedlab.analysis.probe",
    "audit_vectors": "embedlab.analysis.audit",
    "AuditConfig": "embedlab.analysis.audit",
    # reports
    "explain_residual": "embedlab.reports.explain",
    "plot": "embedlab.reports.plot",
    "embedding_map": "embedlab.reports.embedding_map",
    "audit": "embedlab.reports.audit",
    # exports (after reports; fiftyone is an optional extra, imported only when export_fiftyone runs)
    "export_concept_scores": "embedlab.exports.concept_scores",
    "export_fiftyone": "embedlab.exports.fiftyone_dataset",
    # enhancement
    "train": "embedlab.enhancement.train",
    "register_guidance": "embedlab.enhancement.guidance",
    "list_guidance": "embedlab.enhancement.guidance",
    "enhance": "embedlab.enhancement.infer",
    "evaluate": "embedlab.enhancement.evaluate",
    # demos
    "pretrain_demo": "embedlab.demos.clip",
    "demo": "embedlab.demos.pipeline",
    "compare": "embedlab.demos.compare",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later reads skip this hook
        return value
    raise AttributeError(f"module 'embedlab' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
