"""Open pages in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium) and list
what a reader would hit: console errors, images that did not load, links to files that do not exist, tables
wider than the viewport. Shared by tests/test_browser.py and for taking the README's screenshots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver", "chromium-driver")


def find_browser() -> tuple[str | None, str | None]:
    browser = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    driver = next((shutil.which(n) for n in DRIVER_NAMES if shutil.which(n)), None)
    return browser, driver


def make_driver(width: int = 1400, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--allow-file-access-from-files",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(driver))
    d.set_page_load_timeout(60)
    return d


def set_width(driver, width: int, height: int = 900) -> None:
    """Resize so that the page's viewport (not the window) is `width` px wide."""
    driver.set_window_size(width, height)
    inner = driver.execute_script("return window.innerWidth")
    if inner != width:
        driver.set_window_size(2 * width - inner, height)


_PAGE_FACTS = """
const vw = document.documentElement.clientWidth;
const imgs = Array.from(document.images).map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}));
const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
const tables = Array.from(document.querySelectorAll('table')).filter(t => t.offsetParent !== null)
  .map(t => ({right: Math.ceil(t.getBoundingClientRect().right), width: Math.ceil(t.getBoundingClientRect().width)}));
return {vw: vw, imgs: imgs, links: links, tables: tables, scrollWidth: document.documentElement.scrollWidth};
"""


def local_target(url: str) -> Path | None:
    """The file a file:// link points to (fragment and query dropped, percent-decoding undone)."""
    u = urlparse(url)
    if u.scheme != "file":
        return None
    return Path(unquote(u.path))


def check_page(driver, url: str, width: int, shots: Path | None = None, name: str = "page") -> list[str]:
    """Load `url` at `width` px and return the problems found (empty: the page passed)."""
    set_width(driver, width)
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(url)
    driver.execute_script("return document.readyState")
    facts = driver.execute_script(_PAGE_FACTS)
    problems = [
        f"console {e['level']}: {e['message'][:300]}"
        for e in driver.get_log("browser")
        if e["level"] in ("SEVERE", "ERROR")
    ]
    problems += [f"image not loaded: {i['src'][:200]}" for i in facts["imgs"] if not i["ok"]]
    for link in facts["links"]:
        target = local_target(link)
        if target is not None and not target.exists():
            problems.append(f"broken link: {link}")
        elif (
            target is None
            and not link.startswith(("data:", "javascript:"))
            and urlparse(link).scheme in ("http", "https")
        ):
            problems.append(f"link leaves the machine (pages must work offline): {link}")
    problems += [
        f"table {t['width']} px wide, right edge {t['right']} px > viewport {facts['vw']} px"
        for t in facts["tables"]
        if t["right"] > facts["vw"]
    ]
    if shots is not None:
        screenshot(driver, shots / f"{name}_{width}.png", width)
    return problems


def screenshot(driver, path: Path, width: int, max_height: int = 2600) -> Path:
    """The page as a reader sees it from the top, down to `max_height` px (DevTools full-page capture)."""
    import base64

    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": width, "height": min(max_height, int(size["height"])), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def shots_dir(default: Path) -> Path:
    """Screenshots go to $EMBEDLAB_SCREENSHOTS (a CI artifact folder) when set."""
    return Path(os.environ.get("EMBEDLAB_SCREENSHOTS") or default)
