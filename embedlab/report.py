"""Render a concept report (one dict, the source of truth) to CSV, JSON, Markdown and one self-contained HTML."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import atomic_write_bytes, atomic_write_json

COLUMNS = ["rank", "direction", "concept", "score_centred", "z", "raw_cosine", "cosine_at_pick", "cum_explained",
           "mean_sim_from", "mean_sim_to", "diff", "auroc", "welch_p", "q_bh", "p_fwer", "p_fwer_deflated"]


def png_data_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def thumb_data_uri(path: str, size: int = 96) -> str | None:
    """A JPEG thumbnail as a data URI, or None when the file cannot be read. The files were validated when the
    run was extracted, so this takes the cheap road: JPEGs are decoded at a reduced DCT scale (draft mode)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as src:
            src.draft("RGB", (2 * size, 2 * size))
            img = ImageOps.exif_transpose(src).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def bar_chart(adds: pd.DataFrame, removes: pd.DataFrame, k: int = 15):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, r = adds.head(k), removes.head(k)
    labels = list(a["concept"]) + list(r["concept"])
    vals = list(a["cosine_at_pick"]) + list(r["cosine_at_pick"])
    colors = ["#2b8a3e"] * len(a) + ["#c92a2a"] * len(r)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(labels) + 1))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, vals, color=colors)
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0, color="k", lw=0.6)
    fig.subplots_adjust(left=0.3)
    ax.set_xlabel("cosine with the residual at the concept's deflation step (centred vocabulary)")
    ax.set_title("ranked concepts: green = added by the residual, red = removed")
    return fig


def similarity_histograms(items: list[tuple[str, np.ndarray, np.ndarray]], name_from: str, name_to: str):
    """One figure: per top concept, a histogram of per-image similarity in set A vs set B.

    Filled step outlines (one patch per set, not one per bin) and a fixed grid instead of tight_layout keep
    this to a fraction of a second: it is drawn on every explain call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = 4
    rows = max(1, (len(items) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.3 * rows + 0.5), squeeze=False)
    fig.subplots_adjust(left=0.04, right=0.99, top=1 - 0.45 / (2.3 * rows + 0.5), bottom=0.5 / (2.3 * rows + 0.5),
                        wspace=0.22, hspace=0.45)
    for ax, (concept, s_from, s_to) in zip(axes.flat, items):
        bins = np.linspace(min(s_from.min(), s_to.min()), max(s_from.max(), s_to.max()) + 1e-9, 25)
        ax.hist(s_from, bins=bins, density=True, histtype="stepfilled", alpha=0.55, label=name_from, color="#495057")
        ax.hist(s_to, bins=bins, density=True, histtype="stepfilled", alpha=0.55, label=name_to, color="#f08c00")
        ax.set_title(concept, fontsize=9)
        ax.set_yticks([])       # densities: the sets' sizes differ, the shapes are what compares
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(items):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("per-image similarity to the concept (centred)", fontsize=8)
    return fig


def _fmt(v) -> str:
    if isinstance(v, float):
        if np.isnan(v):
            return ""
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
    return str(v)


def write_report(out_dir: str | Path, report: dict, figures: dict | None = None,
                 html_exemplars: list | None = None) -> dict:
    """Write report.json, report.csv, report.md and report.html; returns their paths.

    `html_exemplars` are the report's exemplars with inline thumbnails (kept out of the JSON)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(report["concepts"])
    cols = [c for c in COLUMNS if c in table.columns]
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.csv", table[cols].to_csv(index=False).encode())
    atomic_write_bytes(out / "report.md", render_markdown(report, table[cols]).encode())
    html_report = dict(report, exemplars=html_exemplars if html_exemplars is not None else report.get("exemplars", []))
    atomic_write_bytes(out / "report.html", render_html(html_report, table[cols], figures or {}).encode())
    return {k: str(out / f"report.{k}") for k in ("json", "csv", "md", "html")}


def _summary_lines(report: dict) -> list[str]:
    info, res = report["info"], report["residual"]
    lines = [f"Residual: {res['path']} ({res['method']}, {res['from']} -> {res['to']}; model {res['model']})",
             f"Vocabulary: {info['vocabulary']} - {info['vocabulary_source']}; templates {info['templates']}"]
    if info.get("vocabulary_note"):
        lines.append(info["vocabulary_note"])
    perm = info.get("permutation")
    if perm and perm.get("K"):
        lines.append(f"Permutation test: K = {perm['K']} shuffles ({perm['scheme']}), distinct shuffles possible "
                     f"~10^{perm['log10_distinct_shuffles']:.1f}, smallest attainable p = {perm['smallest_attainable_p']:.4g}."
                     + (" Shuffling within groups holds each group's make-up fixed, so differences between groups (such as "
                        "a content bias carried by which scenes each set holds) cannot reach significance, and few or "
                        "unbalanced groups make the test conservative; read AUROC and q_bh beside it."
                        if "within groups" in perm["scheme"] else ""))
    elif info.get("significance_note"):
        lines.append(info["significance_note"])
    lines.append("Scores: cosine with the centred vocabulary (the text mean removed); z against the vocabulary; "
                 "raw_cosine as RAVE ranks. p_fwer: family-wise adjusted (max statistic over the vocabulary); "
                 "p_fwer_deflated: the same test at each deflation step (the first steps; blank beyond); welch_p: per-concept Welch t-test (nominal); q_bh: Benjamini-Hochberg over the whole vocabulary.")
    return lines


def render_markdown(report: dict, table: pd.DataFrame) -> str:
    lines = ["# Concept report", ""] + [f"- {ln}" for ln in _summary_lines(report)] + [""]
    for side, title in (("adds", "What the residual adds (toward the 'to' set)"),
                        ("removes", "What the residual removes (toward the 'from' set)")):
        t = table[table["direction"] == side]
        lines += [f"## {title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
        for _, row in t.iterrows():
            lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row.to_list()) + " |")
        lines.append("")
    return "\n".join(lines)


def render_html(report: dict, table: pd.DataFrame, figures: dict) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>embedlab concept report</title><style>",
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td.c{text-align:left}.ex img{margin:2px}"
             ".sig{background:#d3f9d8}.figs img{margin:4px}</style></head><body><h1>Concept report</h1><ul>"]
    parts += [f"<li>{e(ln)}</li>" for ln in _summary_lines(report)]
    parts.append("</ul>")
    if figures.get("bar"):
        parts.append(f"<img alt='top concepts' src='{figures['bar']}'>")
    for side in ("adds", "removes"):
        t = table[table["direction"] == side]
        parts.append(f"<h2>{'Added' if side == 'adds' else 'Removed'} concepts</h2><table><tr>"
                     + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr>")
        for _, row in t.iterrows():
            p_deflated = row.get("p_fwer_deflated")
            sig = " class='sig'" if pd.notna(p_deflated) and float(p_deflated) < 0.05 else ""
            parts.append(f"<tr{sig}>" + "".join(f"<td class='c'>{e(_fmt(v))}</td>" if c == "concept" else f"<td>{e(_fmt(v))}</td>"
                                               for c, v in row.items()) + "</tr>")
        parts.append("</table>")
    if figures.get("histograms"):
        parts.append("<h2>Per-image similarity, set A vs set B</h2><div class='figs'>"
                     f"<img alt='per-image similarity histograms' src='{figures['histograms']}'></div>")
    if report.get("exemplars"):
        parts.append("<h2>Exemplar images per concept</h2>")
        for ex in report["exemplars"]:
            parts.append(f"<h3>{e(ex['concept'])}</h3><div class='ex'>")
            for setname in ("from", "to"):
                parts.append(f"<p>{e(setname)} set: " + "".join(
                    f"<img title='{e(item['path'])} ({item['score']:.3f})' alt='{e(item['path'])}' src='{item['thumb']}'>"
                    if item.get("thumb") else f"<span>{e(item['path'])}</span> " for item in ex[setname]) + "</p>")
            parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)
