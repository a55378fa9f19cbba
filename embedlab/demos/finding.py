"""The demo's finding: which concept of the concept report counts as the planted bias (a significant added concept
that is not the lighting the residual is for), its one-line summary, and its removal through the image edit closest
to it (`correct --remove-edit-like`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


# Words that name lighting or exposure. The demo model's caption grammar is the authority for its own words;
# this list extends the rule to real CLIP vocabularies.
GENERAL_LIGHTING_WORDS = {
    "light",
    "lit",
    "lighting",
    "bright",
    "brightness",
    "dark",
    "darkness",
    "shadow",
    "shadows",
    "sun",
    "sunny",
    "sunlight",
    "sunlit",
    "backlit",
    "backlight",
    "silhouette",
    "silhouetted",
    "exposure",
    "exposed",
    "overexposed",
    "underexposed",
    "dim",
    "glare",
    "glow",
    "night",
    "daylight",
    "contrast",
    "haze",
    "hazy",
    "flare",
}


def lighting_words() -> set[str]:
    from embedlab.demos.clip import lighting_words as grammar_words

    words = set(GENERAL_LIGHTING_WORDS) | grammar_words()
    return words | {w for phrase in words for w in phrase.replace("-", " ").split()}


BIAS_ALPHA = 0.05  # a concept is removed only if the report's family-wise test finds it at this level


def pick_bias_concept(concepts: list[dict], alpha: float = BIAS_ALPHA, toward: str | None = "welllit") -> str | None:
    """The report's finding: the top-ranked concept the residual adds that its family-wise permutation test finds
    (p_fwer < alpha) and that is not the lighting the residual is for. Lighting words are skipped, except the demo
    grammar's words for a condition other than `toward` (a residual toward well-lit that adds 'dim' or 'blown-out'
    carries something besides that lighting). None when the report finds no such concept: nothing is removed."""
    from embedlab.demos.clip import SYNONYMS

    light = lighting_words()
    other = {w.lower() for cls, syn in SYNONYMS.items() if toward and cls != toward for w in syn}
    for c in concepts:
        if c["direction"] != "adds":
            continue
        p = c.get("p_fwer")
        if p is None or not p < alpha:
            continue
        name = str(c["concept"]).lower()
        words = set(name.replace("-", " ").split())
        if name in other or (name not in light and not words & light):
            return str(c["concept"])
    return None


def removal_line(corrected, bias: str | None) -> str:
    """The console's `correct` line: the finding and the image edit it was removed through."""
    if bias is None:
        return "nothing removed (no significant non-lighting concept)"
    e = corrected.info["edits"][-1]
    edit = f"{e['edit']} {e['strength']:g} (cosine {e['cosine_to_concept']:.2f})"
    return f"removed {bias!r} through its closest image edit, {edit}"


def bias_finding(report: dict, bias: str | None) -> dict:
    """What the concept report found about the removed concept: its row's statistics and the test's units, and a
    one-line summary."""
    info = report["info"]
    unit = info.get("test_unit") or {}
    row = next((c for c in report["concepts"] if c["concept"] == bias and c["direction"] == "adds"), None)
    n_sig = info.get("significant_fwer_05")
    out = {
        "concept": bias,
        "p_fwer": row.get("p_fwer") if row else None,
        "t": row.get("t") if row else None,
        "rank": row.get("rank") if row else None,
        "groups": info.get("groups"),
        "unit": unit.get("unit"),
        "shuffle": unit.get("shuffle"),
        "permutations": (info.get("permutation") or {}).get("K"),
        "significant": n_sig,
    }
    if bias and row:
        out["line"] = (
            f"{bias!r} added, p_fwer {row['p_fwer']:.3g} ({unit.get('unit')}: {info.get('groups')}, shuffled "
            f"{unit.get('shuffle')}); {n_sig} concept(s) at p_fwer < {BIAS_ALPHA}"
        )
    else:
        out["line"] = f"{n_sig} concept(s) at p_fwer < {BIAS_ALPHA}, none of them a non-lighting concept"
    return out


def remove_bias(bias: str | None, res, res_path: Path, corrected: Path, device: str):
    """`correct` the residual by removing the bias concept through the image edit closest to it
    (`--remove-edit-like`: a word's text direction removes little of what the images carry, analysis.edit_directions);
    without a finding, the residual is copied as it is."""
    from embedlab.analysis import correct as corr

    if bias is not None:
        return corr.correct(res_path, corrected, remove_edit_like=[bias], device=device)
    log.warning(
        "demo: the report finds no added concept (p_fwer < %s) that is not a lighting word; nothing removed", BIAS_ALPHA
    )
    shutil.copy(res_path, corrected)
    shutil.copy(res_path.with_suffix(".json"), corrected.with_suffix(".json"))
    return res
