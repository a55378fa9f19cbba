"""The page `embedlab compare` writes: DIR/index.html, whose first paragraph answers "how do A and B differ?"."""

from __future__ import annotations

import os
from pathlib import Path

from embedlab._io import atomic_write_bytes
from embedlab.reports.html import render_page

SIGNIFICANCE = 0.05


def _quoted(concepts: list[dict]) -> str:
    names = [f"“{c['concept']}”" for c in concepts]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def answer(report: dict, residual_info: dict, names: tuple[str, str], top: int = 3) -> str:
    """One paragraph: what B has more and less of than A (the report's top concepts each way), whether that holds
    beyond chance (family-wise permutation p < 0.05), and on how many images it rests."""
    a, b = names
    concepts = sorted(report.get("concepts", []), key=lambda c: c["rank"])
    adds = [c for c in concepts if c["direction"] == "adds"][:top]
    removes = [c for c in concepts if c["direction"] == "removes"][:top]
    parts = []
    if adds:
        parts.append(f"more {_quoted(adds)}")
    if removes:
        parts.append(f"less {_quoted(removes)}")
    n_a, n_b = residual_info["from"]["count"], residual_info["to"]["count"]
    text = f"Compared with {a}, {b} shows " + ("; ".join(parts) if parts else "no concept of the vocabulary") + "."
    tested = [c for c in adds + removes if c.get("p_fwer") is not None]
    significant = [c for c in tested if c["p_fwer"] < SIGNIFICANCE]
    if not tested:
        text += " Significance was not tested."
    elif significant:
        text += (
            f" {len(significant)} of these {len(tested)} hold beyond chance (family-wise permutation p < "
            f"{SIGNIFICANCE:g}: {_quoted(significant)})."
        )
    else:
        text += (
            f" None of them holds beyond chance (family-wise permutation p ≥ {SIGNIFICANCE:g} for each): with these "
            "images the difference may be noise."
        )
    cos = residual_info.get("cos_v_from_v_to")
    text += f" Based on {n_a} images of {a} and {n_b} of {b}"
    text += f"; their mean embeddings have cosine {cos:.3f}." if cos is not None else "."
    return text


def write_compare_page(out: str | os.PathLike, ctx: dict) -> Path:
    """Render DIR/index.html from the summary `compare` gathered (`ctx`: see demos/compare.py)."""
    out = Path(out)
    page = render_page("compare.html.j2", **ctx)
    path = out / "index.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
