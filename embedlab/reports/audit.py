"""`audit`: every slice of one or more runs against its rest, in words and with one audit-wide test, written as
slices.parquet, concepts.parquet, columns.parquet, audit.json, one residual file per listed slice and audit.html.

The computation is `embedlab.analysis.audit.audit_vectors`; this module reads the runs (vectors, metadata, a side
table joined on the image path), embeds the vocabulary with the runs' model, and writes the files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from embedlab._io import check_output_dir, display_path, parse_bytes
from embedlab.analysis.audit import PAIRED, AuditConfig, audit_units
from embedlab.analysis.audit_pass import run_pass, slice_set_sums
from embedlab.analysis.audit_result import AuditResult
from embedlab.analysis.audit_stats import residual_cosines
from embedlab.analysis.formula import group_codes
from embedlab.analysis.slices import categorical_columns, check_columns, define_slices
from embedlab.choices import ENGINES
from embedlab.errors import ConfigError, IncompatibleRunError
from embedlab.reports.audit_files import write_summary, write_tables
from embedlab.reports.audit_screen import check_screen_options, screen_line, screen_runs, write_screen

log = logging.getLogger(__name__)


def _open_runs(runs) -> list:
    from embedlab.runs.store import Run

    runs = [runs] if isinstance(runs, (str, os.PathLike, Run)) else list(runs)
    if not runs:
        raise ConfigError("audit needs at least one run.").naming("runs")
    opened = [r if isinstance(r, Run) else Run(Path(r)) for r in runs]
    first = opened[0].model_identity
    for r in opened[1:]:
        if r.model_identity != first:
            raise IncompatibleRunError(
                f"Run {r.path} was embedded with {r.model_identity['model']}/{r.model_identity['pretrained']} and run "
                f"{opened[0].path} with {first['model']}/{first['pretrained']}: their vectors cannot be compared. Fix: "
                "audit runs of one model."
            )
    return opened


def read_side_table(path: str | os.PathLike) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"'metadata' {display_path(str(p))} does not exist or is not a file.").naming("metadata")
    if p.suffix.lower() == ".csv":
        table = pd.read_csv(p)
    elif p.suffix.lower() in (".parquet", ".pq"):
        table = pd.read_parquet(p)
    else:
        raise ConfigError(f"'metadata' {p.name}: a side table is a .csv or .parquet file.").naming("metadata")
    if "path" not in table.columns:
        raise ConfigError(
            f"'metadata' {p.name} has no 'path' column (its columns: {', '.join(map(str, table.columns))}). Fix: "
            "name the column of image paths 'path'."
        ).naming("metadata")
    return table


def join_side_table(meta: pd.DataFrame, table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Left-join the side table's columns on the image path (as the manifest wrote it, else the file name). A table
    that matches no image, or whose columns clash with the run's, is refused."""
    clash = [c for c in table.columns if c != "path" and c in meta.columns]
    if clash:
        raise ConfigError(
            f"'metadata' {source} repeats the run's column(s) {clash}. Fix: rename them in the side table."
        ).naming("metadata")
    table = table.drop_duplicates("path").assign(path=lambda t: t["path"].astype(str))
    for key in ("path", "file"):
        left = meta[key].astype(str) if key == "path" else meta["path"].astype(str).map(lambda s: Path(s).name)
        right = table["path"] if key == "path" else table["path"].map(lambda s: Path(s).name)
        hits = left.isin(set(right))
        if hits.any():
            extra = table.assign(_key=right).drop(columns="path").drop_duplicates("_key").set_index("_key")
            joined = extra.reindex(left.to_numpy()).reset_index(drop=True)
            return pd.concat([meta.reset_index(drop=True), joined], axis=1)
    example = meta["path"].astype(str).head(2).tolist()
    raise ConfigError(
        f"'metadata' {source} matches no image path of the runs (the runs' paths look like {example}; the table's "
        f"like {table['path'].head(2).tolist()}). Fix: write the paths as the manifest did."
    ).naming("metadata")


def _read_meta(runs: list, metadata) -> pd.DataFrame:
    metas = []
    for r in runs:
        m = r.metadata.copy()
        if len(runs) > 1:
            m["run"] = r.path.name
        metas.append(m)
    meta = pd.concat(metas, ignore_index=True)
    if metadata is not None:
        meta = join_side_table(meta, read_side_table(metadata), Path(metadata).name)
    return meta


def _paired_sets(meta: pd.DataFrame, from_: str, to: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept: the images of the two sets in groups that hold both, the 'to' flag of each kept row); images of
    groups with one set only are left out, with a warning."""
    from embedlab.datasets.selector import Selector

    if "group" not in meta.columns or meta["group"].isna().all():
        raise ConfigError(
            "Auditing a residual ('from_' and 'to') compares each group's own difference, but the runs' images have "
            "no groups. Fix: give the manifest a 'group' per pair or scene, or audit the images without 'from_'/'to'."
        )
    m_from = Selector.parse(from_).mask(meta, "the audited runs")
    m_to = Selector.parse(to).mask(meta, "the audited runs")
    if (m_from & m_to).any():
        raise ConfigError(f"'from_' {from_!r} and 'to' {to!r} share {int((m_from & m_to).sum())} image(s).")
    group = meta["group"].astype(str)
    both = set(group[m_from]) & set(group[m_to])
    keep = (m_from | m_to) & group.isin(both).to_numpy()
    dropped = int(((m_from | m_to) & ~keep).sum())
    if dropped:
        log.warning("audit: %d image(s) of groups without images of both sets are left out.", dropped)
    return keep, m_to[keep]


def _vocabulary(run, vocab, templates, device: str, progress: bool):
    from embedlab import models
    from embedlab.analysis import vocab as vb

    mi = run.manifest
    lm = models.TextModelHandle(mi["model"], mi["pretrained"], mi["weights_sha256"], run.dim, device)
    V = vb.resolve_vocab(vocab, lm)
    tpls = vb.resolve_templates(templates)
    E, _ = vb.embed_concepts(lm, V.concepts, tpls, progress=progress)
    return V, E, tpls


def _by_columns(by, meta: pd.DataFrame, bins: int) -> list[str]:
    cols = [c.strip() for c in (by.split(",") if isinstance(by, str) else by) if c.strip()]
    if cols == ["all"]:
        cols = categorical_columns(meta, bins)
        if not cols:
            raise ConfigError("by='all': the runs' metadata has no column with 2 to 50 values.").naming("by")
    return cols


def audit(
    runs,
    by: "str | list[str]" = "all",
    out: str | os.PathLike | None = None,
    *,
    metadata: str | os.PathLike | None = None,
    within: str | None = None,
    score: str | None = None,
    from_: str | None = None,
    to: str | None = None,
    vocab: str | None = None,
    templates: str | None = None,
    device: str = "auto",
    progress: bool = True,
    **options,
) -> AuditResult:
    """Audit every slice of `runs` (run folders or `Run`s of one model) over the metadata columns `by` ("all": every
    categorical column), each value against the rest of the audited images, with one audit-wide permutation test.

    `metadata`: a .csv/.parquet side table joined on the image path; `within`: a column to stratify by (a possible
    confounder); `score`: a per-image numeric column (a loss, an error) tested per slice too. `options` are the fields
    of `AuditConfig` (bins, depth, min_groups, discover, permutations, seed, top, alpha, q, bootstrap, engine,
    memory_budget, screen). The runs' vectors are read once, shard by shard ("local", or one Ray task per shard with
    engine="ray"), into one mean vector per test unit; no image vector is held. Nothing is written unless `out` is
    given: then slices/concepts/columns .parquet, audit.json, residuals/ and audit.html.

    `from_` and `to` (selectors, e.g. "backlit" and "welllit") audit the residual between the two sets instead: each
    slice's own to-minus-from difference against the rest's, on groups that hold both sets. `screen=True`: the pass
    alone, untested, for collections whose units do not fit (`embedlab.reports.audit_screen`)."""
    cfg = _config(options, from_=from_, within=within, score=score)
    if out is not None:
        check_output_dir(out)
    opened = _open_runs(runs)
    meta = _read_meta(opened, metadata)
    cols = _by_columns(by, meta, cfg.bins)
    _check_column_options(meta, within=within, score=score)
    keep, is_to = _audited_rows(meta, from_, to)
    kept = meta[keep].reset_index(drop=True)
    check_columns(kept, cols, "The audited images' metadata")
    codes = _unit_codes(kept)
    fam = define_slices(kept, cols, codes, bins=cfg.bins, depth=cfg.depth, min_groups=cfg.min_groups,
                        max_slices=cfg.max_slices)  # fmt: skip
    V, E, tpls = _vocabulary(opened[0], vocab, templates, device, progress)  # before the pass: errors first
    provenance = _provenance(opened, cols, V, tpls)
    if cfg.screen:
        return _screen(opened, keep, fam, E, V.concepts, cfg, provenance, out, progress)
    units, sums = run_pass(opened, keep, codes, fam.slices, is_to, engine=cfg.engine, progress=progress,
                           memory_budget=parse_bytes(cfg.memory_budget), permutations=cfg.permutations)  # fmt: skip
    scores = None if score is None else pd.to_numeric(kept[score], errors="coerce").to_numpy(np.float64)
    result = audit_units(units, kept, cols, E, V.concepts, within=None if within is None else kept[within].to_numpy(),
                         scores=scores, config=cfg, family=fam)  # fmt: skip
    set_sums = slice_set_sums([result.masks[s] for s in sorted(result.masks)], len(fam.slices), sums, codes, is_to)
    if is_to is not None:
        _residual_columns(result, set_sums, sums, is_to)
    result.info.update(provenance, within=within, score=score, from_=from_, to=to)
    result.exemplars = {s: kept["file"].iloc[rows].astype(str).tolist() for s, rows in result.exemplars.items()}
    if out is not None:
        write_audit(result, Path(out), set_sums, opened, device=device)
    return result


def _unit_codes(kept: pd.DataFrame) -> np.ndarray:
    """Each audited image's test unit: its group when the images have groups, else itself."""
    groups = kept["group"].to_numpy() if "group" in kept and kept["group"].notna().any() else None
    return group_codes(groups, len(kept))


def _provenance(opened: list, cols: list[str], V, tpls) -> dict:
    """What every audit records of its inputs: the runs, the audited columns, the vocabulary and the model."""
    mi = opened[0].manifest
    return {"runs": [str(r.path) for r in opened], "by": cols, "vocabulary_name": V.name,
            "vocabulary_source": V.source, "templates": tpls, "model": f"{mi['model']}/{mi['pretrained']}"}  # fmt: skip


def _screen(opened, keep, fam, E, concepts, cfg, provenance: dict, out, progress: bool) -> AuditResult:
    """`screen=True`: the pass alone (no units, no test), written when `out` is given."""
    result = screen_runs(opened, keep, fam, E, concepts, cfg, progress)
    result.info.update(provenance)
    if out is not None:
        write_screen(result, Path(out))
    return result


def _audited_rows(meta: pd.DataFrame, from_, to) -> tuple[np.ndarray, np.ndarray | None]:
    """(rows audited, the 'to' flag of each when a residual is audited)."""
    if (from_ is None) != (to is None):
        raise ConfigError("Pass both 'from_' and 'to' (the two sets whose residual is audited), or neither.")
    if from_ is None:
        return np.ones(len(meta), bool), None
    return _paired_sets(meta, from_, to)


def _residual_columns(result: AuditResult, set_sums: list, sums: dict, is_to: np.ndarray) -> None:
    totals = sums["unit_sums"].sum(-2)
    glob = (totals[0], int((~is_to).sum()), totals[1], int(is_to.sum()))
    result.slices["residual_cos_global"] = residual_cosines(set_sums, glob)
    result.info["audits"] = PAIRED


def _config(options: dict, from_=None, within=None, score=None) -> AuditConfig:
    """The checked `AuditConfig` of `options`; a screen also refuses the arguments it cannot use (`from_`, ...)."""
    unknown = set(options) - set(AuditConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(
            f"audit got unknown option(s) {sorted(unknown)}; known: {list(AuditConfig.__dataclass_fields__)}."
        )
    cfg = AuditConfig(**options)
    if cfg.engine not in ENGINES:
        raise ConfigError(f"The 'engine' parameter must be one of {ENGINES}. Got {cfg.engine!r} instead.")
    if cfg.screen:
        check_screen_options(cfg, from_, within, score)
    return cfg


def _check_column_options(meta: pd.DataFrame, **named) -> None:
    for name, col in named.items():
        if col is not None and col not in meta.columns:
            raise ConfigError(
                f"{col!r} (given as '{name}') is not a column of the runs' metadata. Columns: "
                f"{', '.join(meta.columns)}."
            ).naming(name)


def summary_line(result: AuditResult) -> str:
    """One line for the console: how many slices were audited and which differ beyond chance."""
    if result.info.get("mode") == "screen":
        return screen_line(result)
    sig = result.significant(result.info.get("alpha", 0.05))
    head = f"audit: {len(result.slices)} slices over {len(result.columns)} column(s), {result.info['unit']} as units"
    if sig.empty:
        return head + "; none differs from the rest beyond chance (audit-wide p_fwer >= alpha)."
    named = ", ".join(
        f"{r.name} ({r.top_concepts or 'no concept'}; p_fwer {r.p_fwer:.3g})" for r in sig.head(3).itertuples()
    )
    verb = "differs" if len(sig) == 1 else "differ"
    return head + f"; {len(sig)} {verb} beyond chance: {named}" + (" ..." if len(sig) > 3 else "")


def write_audit(result: AuditResult, out: Path, set_sums: list, runs: list, device: str = "auto") -> None:
    """Write the audit's files into `out`; audit.json last, so that a folder with audit.json is a complete audit.
    `set_sums`: per slice the (from_sum, n_from, to_sum, n_to) of its residual (`audit_pass.slice_set_sums`)."""
    out.mkdir(parents=True, exist_ok=True)
    result.slices["residual_path"] = _write_residuals(result, out / "residuals", set_sums, runs[0], len(runs) == 1)
    result.slices["report_href"] = _concept_reports(result, out, device)
    write_tables(result, out)
    page = _page(result, out)
    if page is not None:
        result.info["page"] = page.name
    write_summary(result, out)
    result.out = out


MAX_REPORTS = 5  # concept reports written for the strongest significant slices (each takes one explain-residual)


def _concept_reports(result: AuditResult, out: Path, device: str) -> list[str]:
    """A full concept report (explain-residual of the slice's residual file: its page, histograms and exemplars) for
    the strongest listed significant slices; '' for the others."""
    from embedlab.reports.explain import explain_residual

    s = result.slices
    alpha = result.info.get("alpha", 0.05)
    chosen = s[s["listed"] & (s["p_fwer"] < alpha) & (s["residual_path"] != "")]
    chosen = set(chosen.sort_values("effect", ascending=False)["slice_id"].head(MAX_REPORTS))
    hrefs = []
    for row in s.itertuples():
        if row.slice_id not in chosen:
            hrefs.append("")
            continue
        folder = out / "reports" / f"slice_{row.slice_id:04d}"
        explain_residual(out / row.residual_path, folder, permutations=result.info["permutations"],
                         seed=result.info["seed"], device=device, progress=False)  # fmt: skip
        hrefs.append(f"reports/slice_{row.slice_id:04d}/report.html")
    return hrefs


def _page(result: AuditResult, out: Path):
    try:
        from embedlab.reports.audit_page import write_audit_page
    except ImportError:  # the page module is optional while it is being built
        return None
    return write_audit_page(result, out)


def _write_residuals(result: AuditResult, folder: Path, set_sums: list, run, single_run: bool) -> list[str]:
    """One ordinary residual file (RAVE) per listed slice, so that `correct`, `train --residual` and `probe-residual`
    take it: from the slice's rest to the slice, or, auditing a residual, from the 'from' set to the 'to' set within
    the slice; '' for slices not listed."""
    from embedlab.analysis.formula import residual_from_sums
    from embedlab.analysis.residual import _model_record
    from embedlab.analysis.residual_file import save_residual

    paths = []
    for row in result.slices.itertuples():
        if not row.listed:
            paths.append("")
            continue
        s_from, n_from, s_to, n_to = set_sums[row.slice_id]
        r, thr, v_from, v_to = residual_from_sums(s_from, n_from, s_to, n_to, "rave")
        from_sel, to_sel = _selectors(row, result.info, single_run)
        info = {
            "embedlab_residual": 1, "method": "rave", "thr": thr, "model": _model_record(run.manifest),
            "from": {"run": str(run.path.resolve()), "selector": from_sel, "count": n_from},
            "to": {"run": str(run.path.resolve()), "selector": to_sel, "count": n_to},
            "cos_v_from_v_to": float(v_from @ v_to), "v_from": v_from.astype(np.float32).tolist(),
            "v_to": v_to.astype(np.float32).tolist(), "bootstrap": None, "edits": [],
            "audit": {"slice": row.name, "kind": row.kind, "p_fwer": _none_if_nan(row.p_fwer)},
        }  # fmt: skip
        path = folder / f"slice_{row.slice_id:04d}.npy"
        save_residual(path, r, info)
        paths.append(str(path.relative_to(folder.parent)))
    return paths


def _selectors(row, info: dict, single_run: bool) -> tuple[str, str]:
    """Selectors (from, to) of a slice's residual, with which `explain-residual` reads its sets back: a value slice of
    a single run and its rest (or, auditing a residual, the two sets within the slice). Other slices have no selector
    form; their sidecar names them in words (explain-residual then ranks without significance)."""
    plain = single_run and row.kind == "value" and "&" not in row.name
    if info.get("from_") is not None:
        if plain:
            return f"{info['from_']},{row.name}", f"{info['to']},{row.name}"
        return f"{info['from_']} in slice {row.name}", f"{info['to']} in slice {row.name}"
    if plain:
        col, val = row.name.split("=", 1)
        return f"{col}!={val}", f"{col}={val}"
    return f"rest of {row.name}", f"slice {row.name}"


def _none_if_nan(x):
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)
