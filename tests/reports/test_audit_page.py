"""The audit page: its first paragraph names what differs beyond chance (and says so when nothing does), every user
string reaches it escaped, and it passes the browser check at 1400 and 1024 px."""

import re

import pytest

from embedlab.reports.audit_page import audit_answer, write_audit_page
from tests.conftest import page_links
from tests.helpers.audit_fixture import HOSTILE, SIGNIFICANT, fake_audit_result
from tests.helpers.browser_check import check_page
from tests.reports.conftest import WIDTHS


@pytest.fixture(scope="module")
def audit_page(tmp_path_factory):
    result = fake_audit_result(tmp_path_factory.mktemp("audit"))
    return result, write_audit_page(result, result.out)


def test_the_answer_names_the_significant_slices_and_their_top_concepts(tmp_path):
    text = audit_answer(fake_audit_result(tmp_path))
    assert text.startswith("Of 9 slices (3 columns and 1 found in embedding space), 2 differ"), text
    for name, concept in SIGNIFICANT.values():
        assert f"“{name}” (" in text and f"“{concept}”" in text, (name, text)
    assert text.index("“time=night”") < text.index("“camera=B”"), "largest effect first"
    assert "repeats “time=night”" in text  # the conjunction passes but is not a finding of its own
    assert "'camera' (omnibus p = 0.003)" in text and "'width'" not in text
    assert "Nothing else holds beyond chance." in text and "noise" not in text
    # the cluster found in embedding space is named as a lead, after the findings, with its size and words
    lead = text[text.index("Found in embedding space") :]
    assert "“cluster 3” (24 images in 6 groups; more" in lead and "not tested" in lead, text


def test_the_answer_says_nothing_is_significant_when_no_p_fwer_is_below_alpha(tmp_path):
    result = fake_audit_result(tmp_path, significant=False)
    assert (result.slices["p_fwer"] >= 0.05).all() and result.significant().empty
    text = audit_answer(result)
    assert "none differs from the rest beyond chance" in text and "may be noise" in text, text
    assert "Nothing else holds" not in text and "repeats" not in text


def test_the_page_renders_every_section_with_user_strings_escaped(audit_page):
    result, path = audit_page
    html = path.read_text(encoding="utf-8")
    assert path.name == "audit.html" and not list(path.parent.glob("*.tmp*"))
    assert "<script>" not in html and "alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in html  # the hostile slice name, as text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in html and "<b>bold</b>" not in html  # a hostile concept
    for section in ('id="answer"', 'id="slices"', 'id="findings"', 'id="columns"', 'id="overlap"', 'id="tested"'):
        assert section in html, section
    assert html.count('<section class="slicecard">') == len(SIGNIFICANT)
    assert html.count("data:image/png;base64,") == len(SIGNIFICANT)  # one histogram per card
    assert html.count("data:image/jpeg;base64,") == 4 * len(SIGNIFICANT)  # exemplars, the missing file skipped
    assert html.count('<svg class="ci"') == len(result.slices)
    assert "repeats time=night" in html
    outputs = ["audit.json", "concepts.parquet", "slices.parquet"]  # the nav links what the audit wrote
    assert sorted(set(page_links(html))) == outputs + ["slices/s1/report.html", "slices/s4/report.html"]
    assert re.search(r"p_fwer is the audit-wide family-wise p \(max-T from one shared set of 2000 permutations", html)


def test_no_dead_link_when_a_concept_report_is_missing(tmp_path):
    result = fake_audit_result(tmp_path)
    (result.out / "slices" / "s1" / "report.html").unlink()
    html = write_audit_page(result, result.out).read_text(encoding="utf-8")
    reports = [link for link in page_links(html) if link.startswith("slices/")]
    assert reports == ["slices/s4/report.html"] * 2  # the table's link and the card's


def test_the_page_without_findings_shows_the_largest_effects(tmp_path):
    result = fake_audit_result(tmp_path, significant=False)
    html = write_audit_page(result, result.out).read_text(encoding="utf-8")
    assert "The largest effects (none beyond chance)" in html and 'class="sig"' not in html
    assert html.count('<section class="slicecard">') == 6


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_the_audit_page_passes_in_chromium(audit_page, driver, shots, width):
    problems = check_page(driver, audit_page[1].as_uri(), width, shots, "audit")
    assert not problems, problems
    assert driver.execute_script("return document.documentElement.scrollWidth") <= width
    assert HOSTILE in driver.find_element("tag name", "main").text  # shown as the text it is


def test_a_result_with_only_the_required_columns_renders(tmp_path):
    """The statistics may leave optional columns out (no groups, duplicates, CI, links) or ids as ints."""
    import numpy as np
    import pandas as pd

    from embedlab.analysis.audit_result import AuditResult

    s = pd.DataFrame({"slice_id": [0, 1], "name": ["a=1", "a=2"], "n_images": [10, 12], "effect": [0.1, np.nan],
                      "p": [0.01, 0.5], "q": [0.02, 0.5], "listed": [True, True]})  # fmt: skip
    figures = {0: {"concept": "x", "slice": np.array([0.1, 0.2]), "rest": np.array([])}}  # no rest: no figure
    result = AuditResult(s, pd.DataFrame(), pd.DataFrame(), {}, figures=figures, exemplars={0: [str(tmp_path / "x")]})
    assert "none was tested against the audit-wide null" in audit_answer(result)
    html = write_audit_page(result, tmp_path).read_text(encoding="utf-8")
    assert "a=2" in html and "data:image" not in html and 'id="overlap"' not in html
