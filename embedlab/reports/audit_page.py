"""The page `embedlab audit` writes: DIR/audit.html, whose first paragraph says which slices differ from the rest of
the collection beyond chance, and how (their top concepts), followed by the ranked slices, one card per finding, the
columns' omnibus tests, the overlap of the listed slices and what was tested.

Every user string (slice, column and concept names, paths) reaches the page as text through Jinja's autoescape and
the figures through `plain_text_figures`; nothing here marks user text safe."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from embedlab._io import atomic_write_bytes
from embedlab.analysis.audit_result import AuditResult
from embedlab.reports.concept_report import SIDE_COLOURS, overlaid_histograms
from embedlab.reports.html import fmt, plain_text_figures, png_data_uri, render_page, thumb_data_uri

ALPHA = 0.05
TOP_WORDS = 2  # concepts per side the answer names for a slice
MAX_TABLE_ROWS = 200  # the page stays readable; slices.parquet holds every row
MAX_CARDS = 12
FALLBACK_CARDS = 6  # cards shown when nothing is significant: the largest effects, so the reader sees what was closest
MAX_JACCARD = 10  # columns of the overlap table that fit 1024 px
MAX_THUMBS = 8
BAR_WIDTH, BAR_HEIGHT = 110, 14
SIDE_WORDS = {"adds": "more in slice", "removes": "less in slice"}


# ---- the answer -------------------------------------------------------------------------------------------


def _alpha(result: AuditResult) -> float:
    a = result.info.get("alpha")
    return float(a) if isinstance(a, (int, float)) and 0 < a < 1 else ALPHA


def _num(v) -> float:
    """A table cell as a float, NaN when missing or not numeric (the statistics may leave cells blank)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def slice_concepts(result: AuditResult, slice_id) -> pd.DataFrame:
    """The slice's rows of the concepts table, "adds" before "removes", each side by rank."""
    c = result.concepts
    if c.empty or "slice_id" not in c:
        return c.iloc[0:0]
    rows = c[c["slice_id"].astype(str) == str(slice_id)]
    if "side" in rows:
        rows = rows.assign(_side=(rows["side"] != "adds").astype(int)).sort_values(["_side", "rank"])
        rows = rows.drop(columns="_side")
    return rows


def concept_phrase(result: AuditResult, row, top: int = TOP_WORDS) -> str:
    """'more “dim”, “dark”; less “sunny”' from the concepts table, else the slices table's top_concepts as given."""
    rows = slice_concepts(result, row.get("slice_id"))
    parts = []
    for side, word in (("adds", "more"), ("removes", "less")):
        names = [f"“{n}”" for n in rows[rows["side"] == side]["concept"].head(top)] if "side" in rows else []
        if names:
            parts.append(f"{word} {', '.join(names)}")
    if parts:
        return "; ".join(parts)
    given = row.get("top_concepts")
    if isinstance(given, (list, tuple, np.ndarray)):
        return ", ".join(str(x) for x in given)
    return "" if given is None or (isinstance(given, float) and math.isnan(given)) else str(given)


def _size(row, unit: str | None) -> str:
    n_img, n_grp = row.get("n_images"), row.get("n_groups")
    text = f"{fmt(n_img)} images"
    if unit == "groups" and n_grp is not None and not pd.isna(n_grp) and n_grp != n_img:
        text += f" in {fmt(n_grp)} groups"
    return text


def _finding(result: AuditResult, row, alpha: float) -> str:
    what = concept_phrase(result, row)
    rows = slice_concepts(result, row.get("slice_id"))
    if len(rows) and "p_fwer" in rows and not (pd.to_numeric(rows["p_fwer"], errors="coerce") < alpha).any():
        what += "; no single concept beyond chance" if what else "no single concept beyond chance"
    inner = _size(row, result.info.get("unit")) + (f"; {what}" if what else "")
    return f"“{row['name']}” ({inner})"


def _columns_sentence(result: AuditResult, alpha: float) -> str:
    c = result.columns
    if c.empty or "p" not in c:
        return ""
    hit = c[pd.to_numeric(c["p"], errors="coerce") < alpha]
    if hit.empty:
        return ""
    names = [f"'{r['column']}' (omnibus p = {fmt(r['p'])})" for _, r in hit.iterrows()]
    verb = "differs across its values" if len(names) == 1 else "differ across their values"
    return f" Taken as a whole, {_and(names)} {verb}."


def _scope(result: AuditResult) -> str:
    s = result.slices
    n_disc = int((s["kind"] == "discovered").sum()) if "kind" in s else 0
    n_cols = len(result.columns)
    where = [f"{n_cols} column{'s' if n_cols != 1 else ''}"] if n_cols else []
    where += [f"{n_disc} found in embedding space"] if n_disc else []
    return f"Of {len(s)} slice{'s' if len(s) != 1 else ''}" + (f" ({' and '.join(where)})" if where else "")


def _nothing(s: pd.DataFrame, alpha: float) -> str:
    """The clause for no significant slice: the smallest p_fwer, or that the audit-wide test was not run."""
    p = pd.to_numeric(s["p_fwer"], errors="coerce") if "p_fwer" in s else pd.Series(dtype=float)
    if not p.notna().any():
        return "none was tested against the audit-wide null (no p_fwer), so none can be called beyond chance."
    # the closest listed slice; among equal p the larger effect (a repeat of a listed slice is not a candidate)
    cand = s.assign(_p=p)[p.notna()]
    if "listed" in cand and cand["listed"].astype(bool).any():
        cand = cand[cand["listed"].astype(bool)]
    row = by_effect(cand).sort_values("_p", kind="stable").iloc[0]
    best = f"; the smallest is {fmt(row['_p'])}, for “{row['name']}”"
    return f"none differs from the rest beyond chance (audit-wide family-wise p ≥ {alpha:g} for each{best})."


def audit_answer(result: AuditResult) -> str:
    """One paragraph: which slices differ from the rest beyond chance (audit-wide family-wise p < alpha) and how
    (their top concepts), which columns differ as a whole, and, when nothing passes, that it may be noise."""
    s, alpha = result.slices, _alpha(result)
    if s.empty:
        return "No slice was audited, so nothing can be said about how parts of the collection differ."
    sig = result.significant(alpha)
    columns = _columns_sentence(result, alpha)
    text = _scope(result) + ", "
    if len(sig):
        verb = "differs" if len(sig) == 1 else "differ"
        found = [_finding(result, r, alpha) for _, r in sig.iterrows()]
        text += f"{len(sig)} {verb} from the rest beyond chance (audit-wide family-wise p < {alpha:g}): {_and(found)}."
    else:
        text += _nothing(s, alpha)
    text += _repeats_sentence(s, alpha) + columns
    if len(sig):
        text += " Nothing else holds beyond chance."
    elif columns:
        text += " No single value stands out beyond chance."
    elif "p_fwer" in s and s["p_fwer"].notna().any():
        text += " With these images the differences may be noise."
    text += _discovered_sentence(result)
    return text


def _discovered_sentence(result: AuditResult, most: int = 2) -> str:
    """The strongest clusters found in embedding space (not repeats of a listed slice), described in words: they
    carry no embedding p-value (they differ from their rest by construction), so they are leads, not findings."""
    s = result.slices
    if "kind" not in s:
        return ""
    disc = s[s["kind"] == "discovered"]
    if "listed" in disc:
        disc = disc[disc["listed"].astype(bool)]
    if disc.empty:
        return ""
    names = []
    for _, r in by_effect(disc).head(most).iterrows():
        what = concept_phrase(result, r)
        names.append(f"“{r['name']}” ({_size(r, result.info.get('unit'))}" + (f"; {what})" if what else ")"))
    return (
        " Found in embedding space on half of the groups and described on the other (leads: their embedding "
        "difference is not tested): "
        f"{_and(names)}."
    )


def _repeats_sentence(s: pd.DataFrame, alpha: float) -> str:
    """Slices that pass but are not listed: they repeat a larger listed slice, so they are not separate findings."""
    if "duplicates" not in s or "p_fwer" not in s:
        return ""
    dup = s[(pd.to_numeric(s["p_fwer"], errors="coerce") < alpha) & s["duplicates"].map(_present)]
    parts = [f"“{r['name']}” also passes but repeats “{r['duplicates']}”" for _, r in dup.iterrows()]
    return f" ({'; '.join(parts)}.)" if parts else ""


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != ""


# ---- the tables ---------------------------------------------------------------------------------------------


def _bar(row, lo: float, hi: float) -> dict | None:
    """Pixel positions of a row's effect and CI on the table's shared scale (numbers only: nothing user-supplied)."""
    e, a, b = _num(row.get("effect")), _num(row.get("effect_lo")), _num(row.get("effect_hi"))
    if math.isnan(e) or not hi > lo:
        return None
    x = lambda v: round(4 + (v - lo) / (hi - lo) * (BAR_WIDTH - 8), 1)
    bar = {"w": BAR_WIDTH, "h": BAR_HEIGHT, "e": x(e), "zero": x(0.0) if lo <= 0 <= hi else None}
    if not (math.isnan(a) or math.isnan(b)):
        bar.update(a=x(a), b=x(b))
    return bar


def _scale(s: pd.DataFrame) -> tuple[float, float]:
    cols = [c for c in ("effect", "effect_lo", "effect_hi") if c in s]
    vals = pd.to_numeric(s[cols].stack(), errors="coerce").to_numpy(float) if cols else np.empty(0)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return 0.0, 0.0
    return min(0.0, float(vals.min())), max(0.0, float(vals.max()))


def _href(row, out: Path) -> str | None:
    """The slice's concept report, linked only when the file is there (a dead link is worse than none)."""
    href = row.get("report_href")
    if not _present(href):
        return None
    return str(href) if (out / str(href)).exists() else None


def by_effect(s: pd.DataFrame) -> pd.DataFrame:
    """Largest effect first (blank effects last); an empty table as it is."""
    return s.sort_values("effect", ascending=False, na_position="last") if "effect" in s else s


def ranked_rows(result: AuditResult, out: Path) -> list[dict]:
    s = by_effect(result.slices).head(MAX_TABLE_ROWS)
    lo, hi, alpha = *_scale(s), _alpha(result)
    rows = []
    for rank, (_, r) in enumerate(s.iterrows(), 1):
        p_fwer = _num(r.get("p_fwer"))
        rows.append(
            {
                "rank": rank,
                "id": str(r.get("slice_id", rank)),
                "name": str(r["name"]),
                "kind": r.get("kind") if r.get("kind") in ("conjunction", "discovered", "bin") else None,
                "href": _href(r, out),
                "repeats": str(r["duplicates"]) if _present(r.get("duplicates")) else None,
                "listed": bool(r.get("listed", True)),
                "sig": p_fwer < alpha and bool(r.get("listed", True)),
                "cells": {c: fmt(r.get(c)) for c in ("n_images", "n_groups", "effect", "p", "p_fwer", "q")},
                "ci": f"[{fmt(r.get('effect_lo'))}, {fmt(r.get('effect_hi'))}]",
                "bar": _bar(r, lo, hi),
                "concepts": concept_phrase(result, r, top=3),
            }
        )
    return rows


def concept_rows(result: AuditResult, slice_id) -> list[dict]:
    alpha = _alpha(result)
    return [
        {
            "rank": fmt(r.get("rank")),
            "concept": str(r.get("concept", "")),
            "side": SIDE_WORDS.get(r.get("side"), str(r.get("side", ""))),
            "up": r.get("side") == "adds",
            "t": fmt(r.get("t")),
            "auroc": fmt(r.get("auroc")),
            "p_fwer": fmt(r.get("p_fwer")),
            "sig": _num(r.get("p_fwer")) < alpha,
        }
        for _, r in slice_concepts(result, slice_id).iterrows()
    ]


def column_rows(result: AuditResult) -> list[dict]:
    alpha, rows = _alpha(result), []
    for _, r in result.columns.iterrows():
        cells = {c: fmt(r.get(c)) for c in ("column", "kind", "n_values", "n_slices", "statistic", "p")}
        rows.append({"cells": cells, "sig": _num(r.get("p")) < alpha})
    return rows


def jaccard_table(result: AuditResult, ranked: list[dict]) -> dict | None:
    """The overlap of the listed slices in rank order, numbered like the slice table so the headers stay narrow."""
    j = result.jaccard
    if j is None or j.empty or len(j) < 2:
        return None
    number = {r["id"]: r for r in ranked}
    names = {str(r["name"]): r for r in ranked}
    keys = [k for k in j.index if str(k) in number or str(k) in names]
    keys = sorted(keys, key=lambda k: (number.get(str(k)) or names[str(k)])["rank"])
    shown = keys[:MAX_JACCARD]
    if len(shown) < 2:
        return None
    heads = [number.get(str(k)) or names[str(k)] for k in shown]
    rows = [{"head": h, "cells": [fmt(_num(j.loc[k, c])) for c in shown]} for h, k in zip(heads, shown)]
    return {"heads": heads, "rows": rows, "cut": len(keys) - len(shown)}


# ---- the cards ----------------------------------------------------------------------------------------------


def _lookup(mapping: dict, slice_id):
    """Per-slice data keyed by the slice id as the statistics wrote it (an int or a str)."""
    if slice_id in mapping:
        return mapping[slice_id]
    return next((v for k, v in mapping.items() if str(k) == str(slice_id)), None)


def _short(text: str, n: int = 48) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def slice_histogram(name: str, data: dict, side: str | None, unit: str = "image"):
    """The slice's and the rest's per-unit similarity to the slice's top concept, on shared bins."""
    import matplotlib.pyplot as plt

    s, r = (np.asarray(data.get(k, ()), dtype=float) for k in ("slice", "rest"))
    s, r = s[np.isfinite(s)], r[np.isfinite(r)]
    if not (len(s) and len(r)):
        return None
    with plain_text_figures():
        fig, ax = plt.subplots(figsize=(4.4, 2.6))
        fig.subplots_adjust(left=0.05, right=0.97, top=0.86, bottom=0.2)
        # fewer bins for a slice of few units: 25 bins over a dozen values draw spikes, not a shape
        n_bins = int(np.clip(3 * np.sqrt(min(len(s), len(r))), 12, 25))
        overlaid_histograms(ax, r, s, (f"rest (n={len(r)})", f"slice: {_short(name, 28)} (n={len(s)})"), n_bins)
        word = {"adds": "more", "removes": "less"}.get(side, "")
        title = f"similarity to “{_short(str(data.get('concept', '')))}”" + (f" ({word} in slice)" if word else "")
        ax.set_title(title, fontsize=9, color=SIDE_COLOURS.get(side, "k"))
        ax.set_xlabel(f"per-{unit} cosine similarity to the concept; density", fontsize=8)
        ax.legend(fontsize=7, frameon=False, loc="best")
    return fig


def _thumbs(paths) -> list[dict]:
    out = []
    for p in list(paths or ())[: 2 * MAX_THUMBS]:  # a few spares for files that are gone
        uri = thumb_data_uri(str(p))
        if uri:
            out.append({"path": str(p), "src": uri})
        if len(out) == MAX_THUMBS:
            break
    return out


def card_slices(result: AuditResult) -> tuple[pd.DataFrame, bool]:
    """(slices to show as cards, whether they are the significant ones); else the largest listed effects."""
    sig = result.significant(_alpha(result))
    if len(sig):
        return sig.head(MAX_CARDS), True
    s = result.slices
    s = s[s["listed"].astype(bool)] if "listed" in s else s
    return by_effect(s).head(FALLBACK_CARDS), False


def cards(result: AuditResult, ranked: list[dict]) -> list[dict]:
    by_id = {r["id"]: r for r in ranked}
    unit = "group" if result.info.get("unit") == "groups" else "image"
    out = []
    for _, row in card_slices(result)[0].iterrows():
        sid = row.get("slice_id")
        concepts = concept_rows(result, sid)
        data = _lookup(result.figures, sid)
        side = _side_of(result, sid, data)
        fig = slice_histogram(str(row["name"]), data, side, unit) if data else None
        out.append(
            {
                "row": by_id.get(str(sid)),
                "name": str(row["name"]),
                "size": _size(row, result.info.get("unit")),
                "stats": _card_stats(row),
                "concepts": concepts,
                "figure": png_data_uri(fig) if fig is not None else None,
                "figure_concept": str(data.get("concept", "")) if data else "",
                "thumbs": _thumbs(_lookup(result.exemplars, sid)),
            }
        )
    return out


def _side_of(result: AuditResult, slice_id, data) -> str | None:
    if not data:
        return None
    rows = slice_concepts(result, slice_id)
    hit = rows[rows["concept"].astype(str) == str(data.get("concept"))] if len(rows) else rows
    return hit["side"].iloc[0] if len(hit) and "side" in hit else None


def _card_stats(row) -> str:
    text = (
        f"effect {fmt(row.get('effect'))} [{fmt(row.get('effect_lo'))}, {fmt(row.get('effect_hi'))}], "
        f"p {fmt(row.get('p'))}, p_fwer {fmt(row.get('p_fwer'))}, q {fmt(row.get('q'))}"
    )
    if _present(row.get("score_diff")):
        text += (
            f"; score difference {fmt(row.get('score_diff'))} [{fmt(row.get('score_lo'))}, "
            f"{fmt(row.get('score_hi'))}], p {fmt(row.get('score_p'))}"
        )
    return text


# ---- what was tested ----------------------------------------------------------------------------------------


def tested_sentences(result: AuditResult) -> list[str]:
    """What the p-values mean, from the choices the audit recorded (every key optional)."""
    info, alpha = result.info, _alpha(result)
    unit = info.get("unit") or "images"
    n_units = info.get("n_units")
    within = info.get("within")
    shuffle = f"within strata of '{within}'" if within else "over the whole collection"
    out = [
        f"Each slice is compared with the rest of the audited {unit}"
        + (f" ({fmt(n_units)} {unit} in all)" if n_units is not None else "")
        + f": the {unit} are the exchangeable units, shuffled {shuffle}."
    ]
    perms, fam_s, fam_c = info.get("permutations"), info.get("family_slices"), info.get("family_concepts")
    family = " × ".join(x for x in (fam_s and f"{fmt(fam_s)} slices", fam_c and f"{fmt(fam_c)} concepts") if x)
    out.append(
        "p_fwer is the audit-wide family-wise p (max-T from one shared set of "
        + (f"{fmt(perms)} permutations" if perms is not None else "permutations")
        + (f" over {family} × both signs" if family else "")
        + f"): a slice or concept is called significant when p_fwer < {alpha:g}. p is the slice's own permutation "
        "p; q is Benjamini-Hochberg over slices (the exploratory list)."
    )
    split = info.get("split")
    if isinstance(split, dict) and split:
        parts = ", ".join(f"{k} {fmt(v)}" for k, v in split.items())
        out.append(f"Slices found in embedding space were discovered on one part and tested on the other ({parts}).")
    extra = [f"vocabulary {info['vocabulary']}" if info.get("vocabulary") else "", _seed(info)]
    line = "; ".join(e for e in extra if e)
    if line:
        out.append(line[0].upper() + line[1:] + ".")  # not str.capitalize: it would lower a vocabulary's name
    return out


def _seed(info: dict) -> str:
    return f"seed {info['seed']}" if info.get("seed") is not None else ""


# ---- the page -----------------------------------------------------------------------------------------------

OUTPUT_FILES = ("slices.parquet", "concepts.parquet", "audit.json")  # linked from the nav when present


def write_audit_page(result: AuditResult, out: str | os.PathLike, nav_links: list | None = None) -> Path:
    """Render OUT/audit.html from an audit's result; written atomically, so a reader never sees half a page."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ranked = ranked_rows(result, out)
    significant = card_slices(result)[1]
    page = render_page(
        "audit.html.j2",
        title="Slice audit: which parts of the collection differ from the rest",
        nav_links=nav_links or [],
        files=[(name, name) for name in OUTPUT_FILES if (out / name).exists()],
        answer=audit_answer(result),
        alpha=_alpha(result),
        ranked=ranked,
        n_slices=len(result.slices),
        any_repeats=any(r["repeats"] for r in ranked),
        cards=cards(result, ranked),
        cards_significant=significant,
        columns=column_rows(result),
        jaccard=jaccard_table(result, ranked),
        tested=tested_sentences(result),
        unit=result.info.get("unit") or "images",
    )
    path = out / "audit.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
