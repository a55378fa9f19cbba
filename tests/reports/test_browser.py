"""The demo's pages in a real headless Chromium (Debian's chromium + chromium-driver, selenium), at 1400 and
1024 px: no console errors, every image loaded, every link resolves, no table wider than the viewport, and the
map's hover thumbnail appears. Screenshots go to $EMBEDLAB_SCREENSHOTS (a CI artifact folder) or a tmp folder.
Each check is also run against doctored copies of the pages (a broken image, an over-wide table, a console
error, a dead link, a broken thumbnail) to show it catches them."""

import re

import pytest

from tests.helpers.browser_check import check_page, shots_dir
from tests.reports.conftest import WIDTHS

PAGES = {"index": "index.html", "report": "report/report.html", "map": "map.html"}


def hover_problems(driver) -> list[str]:
    """Move the mouse onto map points; the tooltip must appear with a loaded thumbnail."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    points = driver.find_elements(By.CSS_SELECTOR, "circle.pt")
    if not points:
        return ["no points on the map"]
    problems = []
    for pt in points[:3]:
        ActionChains(driver).move_to_element(pt).perform()
        tip = driver.find_element(By.ID, "tip")
        if not tip.is_displayed():
            problems.append(f"no tooltip on hovering point {pt.get_attribute('data-i')}")
            continue
        ok = driver.execute_script(
            "const i = document.querySelector('#tip img'); return !!i && i.complete && i.naturalWidth > 0"
        )
        if not ok:
            problems.append(f"tooltip of point {pt.get_attribute('data-i')} has no loaded thumbnail")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", list(PAGES))
def test_demo_pages_pass_in_chromium(tiny_demo, driver, shots, page, width):
    out = tiny_demo[0]
    problems = check_page(driver, (out / PAGES[page]).as_uri(), width, shots, page)
    assert not problems, problems


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_map_hover_thumbnail_search_and_views(tiny_demo, driver, shots, width):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    out = tiny_demo[0]
    assert not check_page(driver, (out / "map.html").as_uri(), width)
    assert not hover_problems(driver)
    driver.save_screenshot(str(shots / f"map_hover_{width}.png"))  # the viewport, tooltip showing
    assert driver.find_elements(By.CSS_SELECTOR, "line.residual"), "the residual arrow is drawn"
    search = driver.find_element(By.ID, "search")
    search.send_keys("chelsea")
    found = driver.find_element(By.ID, "found").text
    assert re.match(r"[1-9]\d* of \d+ match", found), found
    search.clear()
    Select(driver.find_element(By.ID, "colour")).select_by_value("group")
    assert "Colour: group" in driver.find_element(By.ID, "legend-title").text
    driver.find_element(By.ID, "view-umap").click()
    assert "UMAP 1" in driver.find_element(By.CSS_SELECTOR, "#plot svg").text
    assert not hover_problems(driver)
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


_LAYOUT = """
const top = s => {
  const e = document.querySelector(s); return e ? e.getBoundingClientRect().top + window.scrollY : null; };
const first = document.querySelector('main h1 + *');
return {first: first ? first.className : null, finding: top('p.finding'), grid: top('figure.grid'),
        planted: top('table.planted'), metrics: top('div.cards'),
        text: (document.querySelector('p.finding') || {}).innerText,
        gridWidth: document.querySelector('figure.grid img').getBoundingClientRect().width};
"""


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_demo_index_leads_with_the_finding(tiny_demo, driver, shots, width):
    """The index opens with one paragraph on the finding (which bias, how significant, what `correct` removed, what it
    changed in the enhancers' outputs), then both enhancers side by side in one grid that starts on the first
    screen, then the corner-falloff numbers, then the metrics; the model is named by name, never by a cache path."""
    out = tiny_demo[0]
    assert not check_page(driver, (out / "index.html").as_uri(), width, shots, "index_lead")
    got = driver.execute_script(_LAYOUT)
    assert "finding" in got["first"], got
    assert got["finding"] < got["grid"] < got["planted"] < got["metrics"], got
    assert got["grid"] < 900, got  # the grid starts within the first screen (900 px high)
    assert got["gridWidth"] > 0.5 * min(width, 1100), got  # wide enough to compare the columns
    text = got["text"]
    assert "vignett" in text and "p_fwer" in text and "stops" in text and "raw residual" in text, text
    body = driver.find_element("tag name", "main").text
    assert "cache:" not in body and "Model: embedlab-tiny" in body, body[:400]


def _doctor(page_path, tmp_dir):
    """A copy of a page, next to the original (so its links still resolve), with a broken image, a table
    2000 px wide, a console error and a dead link injected."""
    text = page_path.read_text()
    bad = (
        "<img src='no_such_image.png' alt='broken'><table style='width:2000px'><tr><td>wide</td></tr></table>"
        "<a href='no_such_file.html'>dead</a><script>console.error('doctored')</script>"
    )
    doctored = page_path.with_name("doctored_" + page_path.name)
    doctored.write_text(text.replace("</main>", bad + "</main>", 1))
    return doctored


@pytest.mark.slow
@pytest.mark.parametrize("page", list(PAGES))
def test_checker_fails_on_doctored_pages(tiny_demo, driver, tmp_path, page):
    out = tiny_demo[0]
    doctored = _doctor(out / PAGES[page], tmp_path)
    try:
        problems = check_page(driver, doctored.as_uri(), 1024)
    finally:
        doctored.unlink()
    joined = "\n".join(problems)
    assert "image not loaded" in joined and "no_such_image.png" in joined
    assert "table 2000 px wide" in joined
    assert "console SEVERE" in joined and "doctored" in joined
    assert "broken link" in joined and "no_such_file.html" in joined


@pytest.mark.slow
def test_hover_check_fails_on_a_map_with_broken_thumbnails(tiny_demo, driver):
    out = tiny_demo[0]
    text = (out / "map.html").read_text()
    broken = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "data:image/jpeg;base64,AAAA", text)
    assert broken != text
    doctored = out / "doctored_map.html"
    doctored.write_text(broken)
    try:
        check_page(driver, doctored.as_uri(), 1400)
        problems = hover_problems(driver)
    finally:
        doctored.unlink()
    assert problems and all("no loaded thumbnail" in p for p in problems), problems


def test_screenshot_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDLAB_SCREENSHOTS", str(tmp_path / "artifacts"))
    assert shots_dir(tmp_path / "default") == tmp_path / "artifacts"
    monkeypatch.delenv("EMBEDLAB_SCREENSHOTS")
    assert shots_dir(tmp_path / "default") == tmp_path / "default"


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory):
    """`embedlab compare` of two generated folders with the offline test model."""
    from embedlab.demos.compare import compare
    from tests.conftest import write_photo

    tmp = tmp_path_factory.mktemp("compare")
    for name, offset in (("day", 0), ("night", 10)):
        for i in range(4):
            write_photo(tmp / name / f"{i}.png", seed=i + offset)
    (tmp / "vocab.txt").write_text("dark\nbright\nnight\nday\nsun\nlamp\n")
    compare(tmp / "day", tmp / "night", tmp / "cmp", model="embedlab-tiny", pretrained="none", device="cpu",
            workers=0, vocab=str(tmp / "vocab.txt"), permutations=50, bootstrap=10, progress=False)  # fmt: skip
    return tmp / "cmp" / "index.html"


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_compare_page_passes_in_chromium(compare_page, driver, shots, width):
    problems = check_page(driver, compare_page.as_uri(), width, shots, "compare")
    assert not problems, problems
