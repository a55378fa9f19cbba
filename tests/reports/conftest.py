"""Fixtures of the browser-tested pages: one headless Chromium per module and the screenshot folder."""

import importlib.util
import os

import pytest

from tests.helpers.browser_check import find_browser, make_driver, shots_dir

WIDTHS = (1400, 1024)


def _need_browser():
    browser, driver = find_browser()
    if importlib.util.find_spec("selenium") is None:
        browser = None
    if browser and driver:
        return
    msg = (
        "headless Chromium is missing: install Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver) and selenium (pip install -e '.[test]')"
    )
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def driver():
    _need_browser()
    d = make_driver()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    path = shots_dir(tmp_path_factory.mktemp("screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path
