"""page: split from demo.py."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from embedlab._io import atomic_write_bytes, read_json
from embedlab.reports.concept_report import lead_sentences
from embedlab.reports.html import render_page, set_nav

log = logging.getLogger(__name__)


HIGHER_IS_BETTER = {
    "psnr": True,
    "ssim": True,
    "ms_ssim": True,
    "lpips": False,
    "niqe": False,
    "brisque": False,
    "delta_e": False,
    "ciede2000": False,
    "mae": False,
    "mse": False,
    # the demo's projection on the corrected residual: the guidance pulls outputs toward well-lit (up to thr)
    "projection": True,
}
METRIC_NAMES = {  # demo.json's metric keys as the page shows them
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "mean_luma": "mean luma",
    "dark40_luma": "darkest-40% luma",
    "projection": "projection toward well-lit",
}
TOP_FIGURES = ("before_after", "plot_training_curves")  # shown side by side at the top of the page
PAGE_KEYS = {
    "files",
    "bias_concept",
    "model",
    "model_label",
    "finding",
    "world",
    "residual_top",
    "metrics",
    "correction",
    "removed_edit",
    "timings_s",
    "total_s",
}


def _scalar(v) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def metric_views(metrics: dict) -> tuple[list, list, list]:
    """demo.json's metrics as page parts, whatever keys they hold: a table of the variants (dicts of numbers
    sharing keys, e.g. input and enhanced), key/value lines for other flat dicts, the rest as JSON."""
    variants = {
        k: v for k, v in (metrics or {}).items() if isinstance(v, dict) and v and all(_scalar(x) for x in v.values())
    }
    lists, tables = [], []
    keyed = {}
    for k, v in variants.items():
        keyed.setdefault(frozenset(v), []).append(k)
    for keys, names in keyed.items():
        if len(names) > 1:
            cols = [c for c in variants[names[0]]]
            tables.append(
                {"title": "Metrics: " + ", ".join(names), "columns": cols, "rows": [(n, variants[n]) for n in names]}
            )
        else:
            lists.append((names[0], list(variants[names[0]].items())))
    extras = [
        (k, json.dumps(v, default=str)[:400])
        for k, v in (metrics or {}).items()
        if k not in variants and not (isinstance(v, dict) and not v)
    ]
    return tables, lists, extras


def compare_cards(tables: list) -> tuple[list, str]:
    """The enhanced result against the reference row (the input when present): improved, got worse, unchanged,
    or changed (a metric with no better/worse direction, such as mean luma); then which row is best per metric
    when baselines sit beside it."""
    cards, buckets = [], {"improved": [], "got worse": [], "unchanged": [], "changed (no better/worse direction)": []}
    best = []
    for t in tables:
        rows = dict(t["rows"])
        ref = next((n for n in rows if "input" in n or "baseline" in n), next(iter(rows)))
        main = next((n for n in rows if "enhanced" in n), next((n for n in rows if n != ref), ref))
        for metric in t["columns"] if main != ref else []:
            a, b = rows[ref].get(metric), rows[main].get(metric)
            if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
                continue
            better = HIGHER_IS_BETTER.get(metric.lower())
            word = (
                "unchanged"
                if f"{a:.4g}" == f"{b:.4g}"
                else "changed (no better/worse direction)"
                if better is None
                else "improved"
                if (b > a) == better
                else "got worse"
            )
            cls = {"improved": "up", "got worse": "down"}.get(word, "flat")
            cards.append(
                {"name": metric, "ref": a, "val": b, "ref_name": ref, "val_name": main, "word": word, "cls": cls}
            )
            buckets[word].append(f"{METRIC_NAMES.get(metric, metric)} ({_f(a)} → {_f(b)})")
            scored = {n: v.get(metric) for n, v in rows.items() if isinstance(v.get(metric), (int, float))}
            if better is not None and len(scored) > 2:
                top = (max if better else min)(scored, key=scored.get)
                best.append(f"{METRIC_NAMES.get(metric, metric)}: {top} ({_f(scored[top])})")
    text = " ".join(
        f"{word.capitalize()} ({cards[0]['val_name']} vs {cards[0]['ref_name']}): {', '.join(items)}."
        for word, items in buckets.items()
        if items
    )
    return cards, text + (f" Best of all rows, {'; '.join(best)}." if best else "")


def file_groups(out: Path, cap: int = 40) -> list[dict]:
    """Every file under the demo folder, grouped by top-level folder (links relative to `out`)."""
    top = sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    groups = [{"name": "demo folder", "href": ".", "entries": [(p.name, p.name) for p in top], "more": 0}]
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        files = sorted(f for f in d.rglob("*") if f.is_file())
        items = [(str(f.relative_to(out)), str(f.relative_to(out))) for f in files[:cap]]
        groups.append({"name": d.name + "/", "href": d.name + "/", "entries": items, "more": max(0, len(files) - cap)})
    return groups


def _report_lead(report_html: Path) -> list:
    import pandas as pd

    path = Path(report_html).with_suffix(".json")
    if not path.exists():
        return []
    r = read_json(path, "a report's JSON (UTF-8 text)")
    table = pd.DataFrame(r["concepts"]) if r.get("concepts") else pd.DataFrame(columns=["direction", "concept"])
    return lead_sentences(r, table)


def _shown(v, out: Path):
    """A value for the page: an absolute path under the demo folder becomes relative to it."""
    if isinstance(v, str) and os.path.isabs(v) and Path(v).resolve().is_relative_to(Path(out).resolve()):
        return os.path.relpath(v, out)
    return v


def _label(im, text: str):
    """A column header drawn on a grid tile (top-left, white on a dark box), so the grid reads on its own."""
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=16)
    box = draw.textbbox((8, 6), text, font=font)
    draw.rectangle((box[0] - 5, box[1] - 4, box[2] + 5, box[3] + 4), fill=(0, 0, 0))
    draw.text((8, 6), text, fill=(255, 255, 255), font=font)
    return im


PLANTED_NAMES = {"input": "backlit input", "raw": "enhancer, raw residual", "corrected": "enhancer, corrected residual"}


def _removal_clause(e: dict | None) -> str:
    """How `correct` removed the finding, when it went through an image edit (demo.json's removed_edit)."""
    from markupsafe import escape

    if not (e or {}).get("edit"):
        return ""
    return (
        f" through the image edit closest to the word, <b>{escape(e['edit'])} {e['strength']:g}</b> (cosine "
        f"{e['cosine_to_concept']:.2f}; <code>correct --remove-edit-like</code>: the change that edit makes to "
        "the backlit training images, which a word's text direction only approximates)"
    )


def _corners_sentence(st: dict) -> str:
    """Both enhancers' corner falloff on the held-out photos, and whether the raw residual's darkens them more."""
    more = (
        f"the raw residual's enhancer darkens the corners {st['corrected'] - st['raw']:.2f} stops more, the planted "
        "vignette it learned."
        if st["raw"] < st["corrected"]
        else "the raw residual's enhancer does not darken the corners more than the corrected one's."
    )
    return (
        f"On the held-out photos, the enhancer trained on the raw residual leaves the corners "
        f"<b>{st['raw']:+.2f} stops</b> from the originals' falloff, the one trained on the corrected residual "
        f"<b>{st['corrected']:+.2f} stops</b> (the backlit inputs: {st['input']:+.2f}): {more}"
    )


def finding_paragraph(result: dict):
    """The page's first paragraph: which bias the residual carried, how significant, what `correct` removed and what
    that changed in the enhancers' outputs (every number from demo.json)."""
    from markupsafe import Markup, escape

    f, planted = result.get("finding") or {}, (result.get("loop") or {}).get("planted") or {}
    world = result.get("world") or {}
    parts = []
    planted_word = world.get("concept")
    if world.get("vignette_ev") is not None:
        parts.append(
            f"The demo's well-lit training photos were all taken through a lens vignette ({world['vignette_ev']:g} "
            f"stops darker at the corners); the backlit ones were not. So the residual (backlit &rarr; well-lit, "
            f"{escape(world.get('train_groups', '?'))} photos) has reason to carry <b>{escape(planted_word)}</b> "
            "besides the lighting."
        )
    if f.get("concept"):
        test = (
            f"family-wise max-T permutation test with the {escape(f.get('groups'))} photos as units, labels shuffled "
            f"within each photo's images, K = {escape(f.get('permutations'))}"
            if f.get("shuffle") == "within"
            else f"family-wise max-T permutation test on {escape(f.get('unit'))}, K = {escape(f.get('permutations'))}"
        )
        other = (
            f" (not the planted <b>{escape(planted_word)}</b>)" if planted_word and f["concept"] != planted_word else ""
        )
        how = _removal_clause(result.get("removed_edit"))
        parts.append(
            f"The concept report finds <b>{escape(f['concept'])}</b>{other} among the concepts it adds at "
            f"<b>p_fwer = {f['p_fwer']:.3g}</b> ({test}), and <code>correct</code> removed it from the residual{how}."
        )
    else:
        parts.append(
            "The concept report finds no added concept at p_fwer &lt; 0.05 other than lighting words, so "
            "<code>correct</code> removed nothing."
        )
    st = planted.get("stops") or {}
    if "raw" in st and "corrected" in st:
        parts.append(_corners_sentence(st))
        m = result.get("metrics") or {}
        raw_m, cor_m, inp = m.get("enhanced, raw residual"), m.get("enhanced"), m.get("input")
        if raw_m and cor_m and inp:
            parts.append(
                f"Held-out PSNR: input {inp['psnr']:.2f} dB, raw-residual enhancer {raw_m['psnr']:.2f} dB, "
                f"corrected-residual enhancer {cor_m['psnr']:.2f} dB; mean luma {raw_m['mean_luma']:.3f} vs "
                f"{cor_m['mean_luma']:.3f}."
            )
    elif "corrected" in st:
        parts.append(f"The enhancer's held-out outputs: corners {st['corrected']:+.2f} stops from the originals'.")
    return Markup(" ".join(parts))


def write_index(out: Path, result: dict) -> Path:
    """index.html from demo.json's content (rendered generically), and the report page's links back to it."""

    out = Path(out)
    arts = result["files"]

    def rel(p):
        return os.path.relpath(p, out)

    tables, lists, extras = metric_views(result.get("metrics") or {})
    lists = [(k, [(a, v) for a, v in items if a != "model"]) for k, items in lists]  # the model is named above
    cards, headline = compare_cards(tables)
    report_html = arts.get("report")
    map_href = rel(arts["map"]) if arts.get("map") else None
    nav = _nav_links(out, rel, report_html, map_href)
    figures = [
        (k.removeprefix("plot_").replace("_", " "), rel(v))
        for k, v in arts.items()
        if str(v).endswith(".png") and k not in TOP_FIGURES
    ]
    report_files = [
        (f"report.{s}", rel(Path(report_html).with_suffix(f".{s}")))
        for s in ("json", "csv", "md")
        if report_html and Path(report_html).with_suffix(f".{s}").exists()
    ]
    extras += [(k, json.dumps(v, default=str)[:400]) for k, v in result.items() if k not in PAGE_KEYS]
    page = render_page(
        "index.html.j2",
        nav_links=nav,
        model=result.get("model", ""),
        model_label=result.get("model_label") or result.get("model", ""),
        finding_html=finding_paragraph(result),
        planted=(result.get("loop") or {}).get("planted"),
        planted_names=PLANTED_NAMES,
        metric_names=METRIC_NAMES,
        n_held=len((result.get("loop") or {}).get("held_out_images") or []),
        headline=headline,
        cards=cards,
        metric_tables=tables,
        metric_lists=lists,
        before_after=rel(arts["before_after"]) if arts.get("before_after") else None,
        curves=rel(arts["plot_training_curves"]) if arts.get("plot_training_curves") else None,
        report_lead=_report_lead(report_html) if report_html else [],
        report_href=rel(report_html) if report_html else "",
        report_files=report_files,
        bias=str(result.get("bias_concept")),
        correction=[(k, _shown(v, out)) for k, v in (result.get("correction") or {}).items() if _scalar(v)],
        map_href=map_href,
        figures=figures,
        extras=extras,
        files=file_groups(out),
        training=_training_links(arts, rel),
        timings=list((result.get("timings_s") or {}).items()),
        total=result.get("total_s"),
    )
    path = out / "index.html"
    atomic_write_bytes(path, page.encode())
    _link_back(out, nav, map_href, report_html)
    return path


def _nav_links(out: Path, rel, report_html, map_href) -> list[tuple[str, str]]:
    return (
        [("demo index", "index.html")]
        + ([("concept report", rel(report_html))] if report_html else [])
        + ([("embedding map", map_href)] if map_href else [])
        + ([("demo.json", "demo.json")] if (out / "demo.json").exists() else [])
    )


def _training_links(arts: dict, rel) -> dict | None:
    """The training log, its sample images and its folder, relative to the page (None when nothing was trained)."""
    train_dir = Path(arts["training_log"]).parent if arts.get("training_log") else None
    if train_dir is None:
        return None
    samples = sorted((train_dir / "samples").glob("*.png"))
    return {"log": rel(arts["training_log"]), "samples": [rel(p) for p in samples], "folder": rel(train_dir) + "/"}


def _link_back(out: Path, nav: list, map_href, report_html) -> None:
    """The map's and the report's navigation bars link back to the demo's pages."""
    if map_href:
        set_nav(out / map_href, nav)
    if report_html and Path(report_html).exists():
        up = os.path.relpath(out, Path(report_html).parent)
        set_nav(
            report_html,
            [(label, href if href.startswith(("http", "/")) else os.path.join(up, href)) for label, href in nav],
        )


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
