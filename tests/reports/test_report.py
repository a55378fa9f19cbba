"""The concept report's renderers: user strings reach figures, Markdown and HTML as plain text, links are
URL-encoded, the page states what the residual is and which concepts are significant, and the interactive map
is a self-contained page."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from embedlab.reports.concept_report import COLUMNS, bar_chart, render_html, render_markdown, similarity_histograms
from embedlab.reports.html import json_for_script, md_escape, png_data_uri, url_for
from tests.conftest import page_links

HOSTILE = ["$$", "$x$", "a $5 and $6", "*bold* _it_", "[link](http://e.com)", "`code` <b>x</b>", "a|b", "#head"]


def fake_report(concepts=None, scheme="groups permuted as units", p=0.3, test_unit=None) -> dict:
    concepts = concepts or ["cat", "well-lit", "dog", "dark"]
    rows = []
    for i, c in enumerate(concepts):
        side = "adds" if i % 2 == 0 else "removes"
        rows.append(
            {
                "rank": i // 2 + 1,
                "direction": side,
                "concept": c,
                "vocab_index": i,
                "score_centred": 0.3 - 0.1 * i,
                "z": 2.0,
                "raw_cosine": 0.1,
                "score_at_pick": 0.2,
                "cosine_at_pick": 0.2 if side == "adds" else -0.2,
                "explained": 0.1,
                "cum_explained": 0.1 * (i + 1),
                "mean_sim_from": 0.1,
                "mean_sim_to": 0.2,
                "diff": 0.1,
                "auroc": 0.71234,
                "welch_p": 2.52e-18,
                "q_bh": 0.0114,
                "p_fwer": p,
                "p_fwer_deflated": p,
            }
        )
    info = {
        "vocabulary": "file",
        "vocabulary_source": "words.txt",
        "templates": ["{}"],
        "vocabulary_size": 28,
        "n_from": 20,
        "n_to": 12,
        "permutation": {
            "K": 100,
            "scheme": scheme,
            "n_units": 5,
            "distinct_shuffles": 10.0,
            "log10_distinct_shuffles": 1.0,
            "smallest_attainable_p": 0.1,
        },
    }
    if test_unit:
        info["test_unit"] = test_unit
    return {
        "embedlab_report": 1,
        "info": info,
        "residual": {
            "path": "/x/residual.npy",
            "method": "rave",
            "from": "role=backlit,split=train",
            "to": "role=welllit,split=train",
            "model": "embedlab-tiny/none",
            "thr": 0.2,
            "edits": [],
        },
        "concepts": rows,
        "exemplars": [],
    }


def _table(report):
    t = pd.DataFrame(report["concepts"])
    return t[[c for c in COLUMNS if c in t.columns]]


# --- a `$` in a concept must not reach matplotlib's mathtext ---------------------------------


def test_figures_render_dollar_signs_as_plain_text():
    adds = pd.DataFrame({"concept": HOSTILE[:4], "cosine_at_pick": [0.4, 0.3, 0.2, 0.1]})
    removes = pd.DataFrame({"concept": HOSTILE[4:], "cosine_at_pick": [-0.4, -0.3, -0.2, -0.1]})
    fig = bar_chart(adds, removes)
    texts = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert "$$" in texts and "$x$" in texts
    assert png_data_uri(fig).startswith("data:image/png;base64,")  # "$$" crashed mathtext here
    rng = np.random.default_rng(0)
    items = [(c, rng.random(10), rng.random(12), side) for c, side in zip(HOSTILE, ["adds", "removes"] * 4)]
    fig = similarity_histograms(items, "from: $a$", "to: $$")
    math_texts = [t for t in fig.findobj(lambda o: hasattr(o, "get_parse_math")) if "$" in t.get_text()]
    assert math_texts and not any(t.get_parse_math() for t in math_texts)
    assert png_data_uri(fig).startswith("data:image/png;base64,")


# --- Markdown escaping and URL-encoded links --------------------------------------------------


def test_markdown_escapes_user_strings():
    r = fake_report(HOSTILE)
    md = render_markdown(r, _table(r))
    assert "\\*bold\\* \\_it\\_" in md
    assert "\\[link\\](http://e.com)" in md
    assert "\\`code\\` \\<b\\>x\\</b\\>" in md
    assert "a\\|b" in md
    assert "\n#head" not in md and "\\#head" in md
    for line in md.splitlines():
        if line.startswith("| ") and "concept" not in line:
            assert line.count(" | ") == len(_table(r).columns) - 1, line  # no cell split by a user's '|'


def test_markdown_escape_is_plain_text_for_safe_strings():
    assert md_escape("well lit photo") == "well lit photo"
    assert md_escape("two\nlines") == "two lines"


def test_url_for_encodes_reserved_characters():
    assert url_for("run/a#b?c.png") == "run/a%23b%3Fc.png"
    assert url_for("dir with space/x%y.png") == "dir%20with%20space/x%25y.png"


def test_demo_index_links_are_url_encoded_and_resolve(tmp_path):
    from urllib.parse import unquote

    from embedlab.demos.page import write_index

    odd = tmp_path / "plots" / "map #1?.png"
    odd.parent.mkdir()
    odd.write_bytes(b"x")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.html").write_text("<html></html>")
    result = {
        "files": {"report": str(tmp_path / "report" / "report.html"), "odd": str(odd)},
        "model": "m/<none>",
        "bias_concept": "<cat>",
        "residual_top": ["a&b"],
        "metrics": {},
        "timings_s": {},
        "total_s": 1.0,
    }
    text = write_index(tmp_path, result).read_text()
    assert "map%20%231%3F.png" in text and "map #1?.png'" not in text and 'map #1?.png"' not in text
    assert "&lt;cat&gt;" in text and "<cat>" not in text
    links = page_links(text)
    assert links
    for link in links:
        assert (tmp_path / unquote(link)).exists(), link


# --- the page explains itself ------------------------------------------------------------------------


def test_report_page_opens_with_what_the_residual_is_and_why_nothing_is_significant():
    r = fake_report(scheme="labels shuffled within groups (groups span both sets)", p=0.6)
    page = render_html(r, _table(r), {})
    lead = page.split("<table", 1)[0]
    assert "mean of the <b>to</b> set" in lead and "role=welllit,split=train" in lead and "12 images" in lead
    assert "cat" in lead and "No concept is significant" in lead
    assert "within groups" in lead and "between groups" in lead
    assert "set A" not in page and "set B" not in page


def test_report_page_names_significant_concepts_and_legends_its_highlight():
    r = fake_report(p=0.01)
    page = render_html(r, _table(r), {})
    assert re.search(r"Significant .*cat", page)
    assert 'class="sig"' in page or "class='sig'" in page
    assert "legend" in page.lower()
    assert "2.52e-18" in page  # significant digits, one token (no wrapping inside a number)


def test_report_page_reads_the_test_unit_when_given():
    unit = {
        "unit": "groups",
        "n_from": 3,
        "n_to": 2,
        "effective_n": 5,
        "shuffle": "groups permuted as units",
        "family": "all concepts on this page, both signs",
    }
    r = fake_report(p=0.2, test_unit=unit)
    page = render_html(r, _table(r), {})
    assert "5 groups" in page and "all concepts on this page, both signs" in page
    assert "3 + 2 groups" in page


def test_report_user_strings_are_escaped_in_html():
    r = fake_report(["<script>alert(1)</script>", "ok", "x", "y"])
    page = render_html(r, _table(r), {})
    assert "<script>alert(1)" not in page and "&lt;script&gt;" in page


# --- the interactive map and the projector sprite ------------------------------------------------


def test_json_for_script_cannot_close_the_script_element():
    hostile = {"path": "</script><script>alert(1)</script><!--", "n": 1}
    text = str(json_for_script(hostile))
    assert "</script" not in text.lower() and "<!--" not in text
    assert json.loads(text) == hostile


def test_embedding_map_page_is_self_contained_subsampled_and_draws_the_residual(tiny_run, tmp_path):
    from embedlab.analysis.residual import residual
    from embedlab.reports.embedding_map import embedding_map, map_data

    res = tmp_path / "r.npy"
    residual(tiny_run, "role=backlit", "role=welllit", res, bootstrap=0)
    data = map_data(tiny_run, residual=str(res), max_points=10, methods=("pca",))
    assert data["n_shown"] == 10 and data["n_total"] > 10 and "random sample of 10 of" in data["sample"]
    view = data["views"][0]
    assert len(view["xy"]) == 10 and view["axes"][0].startswith("PC1 (") and "% of variance" in view["axes"][0]
    assert view["arrow"] is not None and data["residual"]["drawn"]
    assert len(data["thumbs"]) == 10 and all(t and t.startswith("data:image/jpeg;base64,") for t in data["thumbs"])
    assert set(data["columns"]) >= {"role", "split", "group", "path"}
    page = embedding_map(tiny_run, tmp_path / "m.html", residual=str(res), max_points=10, methods=("pca",))["files"][
        "html"
    ].read_text()
    assert "random sample of 10 of" in page
    assert not re.search(r"""(src|href)=["']?https?://""", page)  # nothing fetched: works offline
    assert "<script src" not in page and "<link" not in page
    payload = page.split('id="map-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(payload)["n_shown"] == 10
    from embedlab.errors import ConfigError

    with pytest.raises(ConfigError, match="No metadata column 'nope'.*role"):
        map_data(tiny_run, color_by="nope", methods=("pca",))


def test_projector_export_has_a_sprite_of_thumbnails(tiny_run, tmp_path):
    from PIL import Image

    from embedlab.reports.plot import export_projector
    from embedlab.runs.store import Run

    r = Run(tiny_run)
    folder = export_projector(r.vectors, r.metadata, tmp_path / "projector")
    cfg = (folder / "projector_config.pbtxt").read_text()
    assert 'image_path: "sprite.png"' in cfg and "single_image_dim: 32" in cfg
    sprite = Image.open(folder / "sprite.png")
    side = int(np.ceil(np.sqrt(len(r))))
    assert sprite.size == (32 * side, 32 * side)
    first = np.asarray(sprite.crop((0, 0, 32, 32)), dtype=float)
    assert first.std() > 1  # a real thumbnail, not the grey fill


def test_explain_residual_with_dollar_and_markdown_concepts_writes_its_report(tiny_run, tmp_path):
    """Mathtext and Markdown escaping end to end: a user vocabulary with '$$', '$x$' and Markdown syntax."""
    from embedlab.analysis.residual import residual
    from embedlab.reports.explain import explain_residual

    res = tmp_path / "r.npy"
    residual(tiny_run, "role=backlit", "role=welllit", res, bootstrap=0)
    vocab = tmp_path / "vocab.txt"
    words = [
        "$$",
        "$x$",
        "$$ cat $$",
        "a $5 and $6",
        "*$dog$*",
        "[$tree$](x)",
        "`$sky$`",
        "$bright$ | photo",
        "$dark$ photo",
        "$$$$",
    ]  # every concept sends '$' pairs to the figures
    vocab.write_text("\n".join(words) + "\n")
    report = explain_residual(
        res, tmp_path / "report", vocab=str(vocab), top=4, permutations=0, device="cpu", progress=False, exemplars=0
    )
    page = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in page  # the figures were drawn
    md = (tmp_path / "report" / "report.md").read_text()
    listed = [c["concept"] for c in report["concepts"]]
    assert listed and all(c.count("$") >= 2 for c in listed)
    for c in listed:
        assert md_escape(c) in md
    assert "No permutation test was run" in page
