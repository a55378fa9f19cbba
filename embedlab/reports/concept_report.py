"""Render a concept report (one dict, the source of truth) to CSV, JSON, Markdown and one self-contained HTML.

Pages come from Jinja2 templates (embedlab/reports/templates, autoescaped); user strings reach figures as plain text
(never matplotlib mathtext), Markdown escaped, and links URL-encoded. Shared by the demo index and the map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedlab._io import atomic_write_bytes, atomic_write_json
from embedlab.reports.html import fmt, md_escape, plain_text_figures, render_page, shown_path

COLUMNS = [
    "rank",
    "direction",
    "concept",
    "score_centred",
    "z",
    "raw_cosine",
    "cosine_at_pick",
    "cum_explained",
    "mean_sim_from",
    "mean_sim_to",
    "diff",
    "t",
    "auroc",
    "welch_p",
    "q_bh",
    "p_fwer",
    "p_fwer_deflated",
]
SHORT_COLUMNS = ["rank", "concept", "cosine_at_pick", "diff", "auroc", "p_fwer", "q_bh"]
# the columns computed on the test units (images, or groups of images); the rest come from the residual, itself
# built from the sets' image means: each header names which (`column_label`)
UNIT_COLUMNS = ("mean_sim_from", "mean_sim_to", "diff", "t", "auroc", "welch_p", "q_bh", "p_fwer", "p_fwer_deflated")
RESIDUAL_COLUMNS = ("score_centred", "z", "raw_cosine", "cosine_at_pick", "cum_explained")
COLUMN_HELP = {
    "rank": "order of the greedy (deflated) pick on this side",
    "direction": "adds: toward the to set; removes: toward the from set",
    "concept": "the vocabulary entry",
    "score_centred": "cosine of the residual with the concept's text embedding, vocabulary mean removed",
    "z": "score_centred standardised against the whole vocabulary",
    "raw_cosine": "cosine without centring (what RAVE ranks)",
    "cosine_at_pick": "cosine with the residual at the concept's deflation step: what the list ranks by (each step "
    "picks the largest) and the bar chart plots; its sign decides the side",
    "cum_explained": "share of |r|^2 explained by the picks so far",
    "mean_sim_from": "mean per-image similarity to the concept in the from set",
    "mean_sim_to": "mean per-image similarity to the concept in the to set",
    "diff": "mean_sim_to - mean_sim_from",
    "t": "diff over its standard error on the test units (the statistic p_fwer tests); positive: more similar in to",
    "auroc": "chance that a to-set image is more similar to the concept than a from-set image",
    "welch_p": "per-concept Welch t-test, nominal (not corrected)",
    "q_bh": "Benjamini-Hochberg q over the whole vocabulary",
    "p_fwer": "family-wise adjusted permutation p: how often shuffled sets give any concept of the vocabulary a "
    "|t| this large (max-T); green when < 0.05",
    "p_fwer_deflated": "step-down max-T p along the list's order (first steps only): each pick against the "
    "vocabulary without the picks above it",
}
SIG_LEVEL = 0.05
SET_NAMES = ("from", "to")


def bar_chart(adds: pd.DataFrame, removes: pd.DataFrame, k: int = 15):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    with plain_text_figures():
        a, r = adds.head(k), removes.head(k)
        labels = [str(c) for c in list(a["concept"]) + list(r["concept"])]
        vals = list(a["cosine_at_pick"]) + list(r["cosine_at_pick"])
        colors = ["#2b8a3e"] * len(a) + ["#c92a2a"] * len(r)
        fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(labels) + 1.5))
        y = np.arange(len(labels))[::-1]
        ax.barh(y, vals, color=colors)
        ax.set_yticks(y, labels, fontsize=8)
        ax.axvline(0, color="k", lw=0.6)
        fig.subplots_adjust(
            left=0.3, top=1 - 0.6 / (0.28 * len(labels) + 1.5), bottom=0.55 / (0.28 * len(labels) + 1.5)
        )
        ax.set_xlabel("cosine_at_pick: cosine with the residual at the deflation step (lists rank by it)", fontsize=8)
        ax.set_title("Top concepts of the residual from the 'from' set to the 'to' set", fontsize=10)
        ax.legend(
            handles=[
                Patch(color="#2b8a3e", label="added (toward the to set)"),
                Patch(color="#c92a2a", label="removed (toward the from set)"),
            ],
            fontsize=7,
            loc="lower right",
        )
    return fig


SIDE_COLOURS = {"adds": "#2b8a3e", "removes": "#c92a2a"}


def overlaid_histograms(ax, first, second, labels: tuple[str, str], n_bins: int = 25) -> None:
    """Two samples on shared bins, grey then orange, as densities (the samples' sizes differ, the shapes are what
    compares). Filled step outlines (one patch per sample, not one per bin) keep drawing cheap."""
    from matplotlib.ticker import MaxNLocator

    lo, hi = min(first.min(), second.min()), max(first.max(), second.max())
    bins = np.linspace(lo, hi + 1e-9, n_bins)
    for values, label, colour in zip((first, second), labels, ("#495057", "#f08c00")):
        ax.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.55, color=colour, label=label)
    ax.set_yticks([])
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.tick_params(labelsize=7)


def similarity_histograms(items: list[tuple], name_from: str, name_to: str):
    """One figure: per top concept, a histogram of per-image similarity in the from set vs the to set.

    `items` are (concept, sims_from, sims_to) or (concept, sims_from, sims_to, side) with side 'adds'/'removes'.
    Filled step outlines (one patch per set, not one per bin) and a fixed grid instead of tight_layout keep
    this to a fraction of a second: it is drawn on every explain call."""
    import matplotlib.pyplot as plt

    with plain_text_figures():
        cols = 4
        rows = max(1, (len(items) + cols - 1) // cols)
        height = 2.3 * rows + 0.9
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, height), squeeze=False)
        fig.subplots_adjust(left=0.04, right=0.99, top=1 - 0.85 / height, bottom=0.5 / height, wspace=0.22, hspace=0.5)
        handles = None
        for ax, item in zip(axes.flat, items):
            concept, s_from, s_to = item[:3]
            side = item[3] if len(item) > 3 else None
            overlaid_histograms(
                ax, s_from, s_to, (f"from set: {name_from} (n={len(s_from)})", f"to set: {name_to} (n={len(s_to)})")
            )
            prefix = {"adds": "added: ", "removes": "removed: "}.get(side, "")
            ax.set_title(f"{prefix}{concept}", fontsize=9, color=SIDE_COLOURS.get(side, "k"))
            handles = handles or ax.get_legend_handles_labels()
        for ax in list(axes.flat)[len(items) :]:
            ax.axis("off")
        if handles:
            fig.legend(*handles, loc="upper center", ncol=2, fontsize=8, frameon=False)
        fig.supxlabel("per-image cosine similarity to the concept (centred vocabulary); density", fontsize=8)
    return fig


# ---- what the page says -----------------------------------------------------------------------------------


def _perm(report: dict) -> dict:
    return report["info"].get("permutation") or {}


def significant(table: pd.DataFrame, col: str = "p_fwer") -> pd.DataFrame:
    if col not in table.columns:
        return table.iloc[:0]
    p = pd.to_numeric(table[col], errors="coerce")
    return table[p < SIG_LEVEL]


def test_description(report: dict) -> str:
    """One line naming the test: unit, shuffle scheme, family, K and the smallest attainable p."""
    info, perm = report["info"], _perm(report)
    if not perm.get("K"):
        return info.get("significance_note") or "No permutation test was run (K = 0), so p_fwer is blank."
    unit = info.get("test_unit")
    if unit:
        n_from, n_to = unit.get("n_from"), unit.get("n_to")
        what = unit.get("unit", "images")
        eff = fmt(unit.get("effective_n", "?"))
        fam = perm.get("family_note") or unit.get("family", "the vocabulary")
        head = (
            f"Permutation test on {what}: {n_from} + {n_to} {what} (effective n = {eff} {what}), "
            f"{perm.get('scheme') or unit.get('shuffle', '')}; family: {fam}"
        )
    else:
        head = (
            f"Permutation test: {perm.get('scheme', 'labels shuffled')} ({perm.get('n_units', '?')} units); "
            "family: max statistic over the vocabulary"
        )
    used = ""
    if info.get("images") is not None:
        used = (
            f" It read {info['images']:,} images"
            + (f" in {info['groups']:,} groups" if info.get("groups") else "")
            + (" from the runs' shards, block by block" if info.get("read_from") == "runs" else "")
            + "."
        )
        if unit and unit.get("auroc_max_error") is not None:
            used += f" AUROC {unit['auroc']} (at most {unit['auroc_max_error']:.4f} off)."
    tested = ""
    if perm.get("statistic"):
        tested = (
            f" Tested: {perm['statistic']}; p_fwer compares each listed concept's t with "
            f"{perm.get('max_statistic', 'the largest |t| over the whole vocabulary under each shuffle')} "
            "(Westfall-Young max-T), so it asks whether the sets differ along the concept, whatever the residual's "
            "direction."
        )
    return (
        f"{head}; K = {perm['K']} shuffles, smallest attainable p = {fmt(perm.get('smallest_attainable_p'))}."
        + tested
        + used
    )


def why_not_significant(report: dict, table: pd.DataFrame) -> str:
    """Why no concept passes the report's own test, read from how the test was run (no statistics here)."""
    info, perm = report["info"], _perm(report)
    if not perm.get("K"):
        return info.get("significance_note") or "no permutation test was run (K = 0)"
    shuffle = str((info.get("test_unit") or {}).get("shuffle") or perm.get("scheme", ""))
    if "within" in shuffle:
        return (
            "labels are shuffled within groups (the groups span both sets), and shuffles within groups cannot "
            "test content that differs between groups, such as which scenes or objects each set holds; "
            "read AUROC and q_bh beside it"
        )
    smallest = perm.get("smallest_attainable_p")
    if smallest is not None and smallest >= SIG_LEVEL:
        return (
            f"with {perm.get('n_units', 'these')} exchangeable units only "
            f"~10^{perm.get('log10_distinct_shuffles', 0):.1f} distinct shuffles exist, "
            f"so no p below {fmt(smallest)} can be reached"
        )
    p = pd.to_numeric(table.get("p_fwer", pd.Series(dtype=float)), errors="coerce")
    best = fmt(float(p.min())) if p.notna().any() else "n/a"
    return (
        f"no listed concept's t (its difference between the sets over its standard error) beats the largest |t| "
        f"that shuffled sets give any concept often enough (smallest p_fwer {best}, family-wise over "
        f"{info.get('vocabulary_size', 'all')} concepts)"
    )


def _sentence(template: str, *args, md: bool = False):
    """One sentence of our prose with user values filled in: HTML-escaped into markup, or Markdown-escaped
    (with <b> as ** and <code> dropped) for report.md."""
    from markupsafe import Markup

    if not md:
        return Markup(template).format(*args)
    text = template.replace("<b>", "**").replace("</b>", "**").replace("<code>", "").replace("</code>", "")
    return text.replace("&lt;", "<").format(*(md_escape(a) for a in args))


def lead_sentences(report: dict, table: pd.DataFrame, md: bool = False) -> list:
    """Three sentences a newcomer can act on: what the residual is, its top concepts, what is significant."""
    res, info = report["residual"], report["info"]
    how = (
        "the normalised mean of the <b>to</b> set's normalised image embeddings minus that of the <b>from</b> set"
        if res.get("method", "rave") == "rave"
        else "the mean of the <b>to</b> set's image embeddings minus the mean of the <b>from</b> set's"
    )
    s1 = _sentence(
        "The residual is " + how + ", normalised to unit length: from = <code>{}</code> ({} images), "
        "to = <code>{}</code> ({} images).",
        res["from"],
        info.get("n_from", "?"),
        res["to"],
        info.get("n_to", "?"),
        md=md,
    )
    top = {side: [str(c) for c in table[table["direction"] == side]["concept"].head(3)] for side in ("adds", "removes")}
    s2 = _sentence(
        "It points toward <b>{}</b> (added) and away from <b>{}</b> (removed).",
        ", ".join(top["adds"]) or "nothing",
        ", ".join(top["removes"]) or "nothing",
        md=md,
    )
    sig = significant(table)
    if len(sig):
        names = ", ".join(
            f"{c} ({'added' if d == 'adds' else 'removed'}, p_fwer {fmt(p)})"
            for c, d, p in zip(sig["concept"], sig["direction"], sig["p_fwer"])
        )
        s3 = _sentence("Significant by this report's own test (p_fwer &lt; 0.05): <b>{}</b>.", names, md=md)
    else:
        s3 = _sentence(
            "No concept is significant by this report's own test (p_fwer &lt; 0.05): {}.",
            why_not_significant(report, table),
            md=md,
        )
    return [s1, s2, s3]


def _summary_lines(report: dict, base=None) -> list[str]:
    info, res = report["info"], report["residual"]
    lines = [
        f"Residual: {shown_path(res['path'], base)} ({res['method']}, from {res['from']} to {res['to']}; "
        f"model {res['model']})",
        f"Vocabulary: {info['vocabulary']} - {info['vocabulary_source']}; templates {info['templates']}",
    ]
    if info.get("vocabulary_note"):
        lines.append(info["vocabulary_note"])
    lines.append(test_description(report))
    lines.append(
        "Scores: cosine with the centred vocabulary (the text mean removed); z against the vocabulary; "
        "raw_cosine as RAVE ranks. t: the concept's difference of mean similarity between the sets over its "
        "standard error on the test units. p_fwer: family-wise adjusted, max-T over the whole vocabulary under "
        "shuffled labels; p_fwer_deflated: step-down max-T along the list's order (the first steps; blank "
        "beyond); welch_p: per-concept Welch t-test (nominal); q_bh: Benjamini-Hochberg over the whole "
        "vocabulary."
    )
    lines.append(sign_rule(report))
    return lines


SIGN_RULE = (
    "Sign rule: each list is a greedy deflation ranking read from the top while its picks point its way: "
    "added needs a positive centred score (score_centred, the cosine of the residual with the centred "
    "concept embedding: toward the to set) and a positive cosine at its deflation step, removed needs both "
    "negative; a concept appears on one side at most."
)


def sign_rule(report: dict) -> str:
    share = report["info"].get("min_explained")
    stop = (
        f" A side's list stops at its first pick with the wrong sign of either, or that explains less than "
        f"{fmt(100 * share)}% of |r|^2 (min_explained; default 0.1%)."
        if isinstance(share, (int, float))
        else ""
    )
    return SIGN_RULE + stop


def unit_word(report: dict) -> str:
    """'per group' or 'per image': what one test unit is (the rows the unit columns average and compare)."""
    unit = (report["info"].get("test_unit") or {}).get("unit", "images")
    return "per group" if unit == "groups" else "per image"


def column_label(report: dict, c: str) -> str:
    """A column header that names its unit: the test units' (per group / per image) or the residual's (from the
    sets' image means)."""
    if c in UNIT_COLUMNS:
        return f"{c} ({unit_word(report)})"
    if c in RESIDUAL_COLUMNS:
        return f"{c} (residual of image means)"
    return c


def sign_disagrees(row) -> bool:
    """The row's list side (from the residual, i.e. the image means) and the sign of its difference on the test
    units (diff) disagree: e.g. a concept the residual adds that the groups hold less of in the to set."""
    d = row.get("diff")
    if d is None or pd.isna(d) or float(d) == 0:
        return False
    return (float(d) > 0) != (row.get("direction") == "adds")


def _rows(t: pd.DataFrame) -> list[dict]:
    rows = []
    for _, row in t.iterrows():
        p, p_defl = row.get("p_fwer"), row.get("p_fwer_deflated")
        sig = pd.notna(p) and float(p) < SIG_LEVEL
        dagger = not sig and pd.notna(p_defl) and float(p_defl) < SIG_LEVEL
        cells = {c: fmt(v) for c, v in row.items()}
        rows.append({"cells": cells, "sig": sig, "dagger": dagger, "flip": sign_disagrees(row)})
    return rows


def render_markdown(report: dict, table: pd.DataFrame, base=None) -> str:
    lead = " ".join(lead_sentences(report, table, md=True))
    lines = ["# Concept report", "", lead, ""] + [f"- {md_escape(ln)}" for ln in _summary_lines(report, base)] + [""]
    for side, title in (
        ("adds", "Concepts the residual adds (toward the to set)"),
        ("removes", "Concepts the residual removes (toward the from set)"),
    ):
        t = table[table["direction"] == side]
        heads = [column_label(report, c) for c in t.columns]
        lines += [f"## {title}", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(t.columns)]
        for _, row in t.iterrows():
            cells = [md_escape(v) if isinstance(v, str) else fmt(v) for v in row.to_list()]
            if sign_disagrees(row):
                cells[list(t.columns).index("concept")] += " (sign of diff disagrees with the list)"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def render_html(report: dict, table: pd.DataFrame, figures: dict, nav_links: list | None = None, base=None) -> str:
    info, res = report["info"], report["residual"]
    columns = [
        {
            "name": c,
            "label": column_label(report, c),
            "help": COLUMN_HELP.get(c, ""),
            "cls": ("c" if c == "concept" else "n") + ("" if c in SHORT_COLUMNS else " x"),
        }
        for c in table.columns
        if c != "direction"
    ]
    order = {c: i for i, c in enumerate(SHORT_COLUMNS)}
    columns.sort(key=lambda c: order.get(c["name"], len(order)))  # the short view first, the rest one click away
    sides = []
    for side, title, toward in (
        ("adds", "Concepts the residual adds", "to"),
        ("removes", "Concepts the residual removes", "from"),
    ):
        t = table[table["direction"] == side]
        rows = _rows(t)
        sides.append(
            {
                "key": side,
                "title": f"{title} (toward the {toward} set)",
                "rows": rows,
                "rule": sign_rule(report),
                "any_deflated": any(r["dagger"] for r in rows),
                "any_flip": any(r["flip"] for r in rows),
            }
        )
    sets = [
        {"name": "from", "selector": res["from"], "n": info.get("n_from", "?"), "role": "start of the residual"},
        {
            "name": "to",
            "selector": res["to"],
            "n": info.get("n_to", "?"),
            "role": "end of the residual (it points here)",
        },
    ]
    return render_page(
        "report.html.j2",
        nav_links=nav_links or [],
        lead=lead_sentences(report, table),
        sets=sets,
        residual_path=shown_path(res.get("path", ""), base),
        model=res.get("model", ""),
        vocabulary=f"{info.get('vocabulary')} ({info.get('vocabulary_size', '?')} concepts)",
        figures=figures or {},
        sides=sides,
        columns=columns,
        test_line=test_description(report),
        unit_word=unit_word(report),
        exemplars=report.get("exemplars") or [],
        details=_summary_lines(report, base),
    )


def write_report(
    out_dir: str | Path,
    report: dict,
    figures: dict | None = None,
    html_exemplars: list | None = None,
    nav_links: list | None = None,
) -> dict:
    """Write report.json, report.csv, report.md and report.html; returns their paths.

    `html_exemplars` are the report's exemplars with inline thumbnails (kept out of the JSON)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(report["concepts"])
    cols = [c for c in COLUMNS if c in table.columns]
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.csv", table[cols].to_csv(index=False).encode())
    atomic_write_bytes(out / "report.md", render_markdown(report, table[cols], out).encode())
    html_report = dict(report, exemplars=html_exemplars if html_exemplars is not None else report.get("exemplars", []))
    atomic_write_bytes(
        out / "report.html", render_html(html_report, table[cols], figures or {}, nav_links, out).encode()
    )
    return {k: str(out / f"report.{k}") for k in ("json", "csv", "md", "html")}
