import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """A per-session embedlab cache, so tests never read a developer's cache (the demo CLIP is shared across tests)."""
    cache = os.environ.get("EMBEDLAB_TEST_CACHE")
    path = Path(cache) if cache else tmp_path_factory.mktemp("embedlab-cache")
    os.environ["EMBEDLAB_CACHE"] = str(path)
    yield path


def shared_dir() -> Path:
    """../shared beside the checkout. Missing: skip locally, fail when CI is set."""
    if not SHARED.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED} is missing; CI must provide ../shared beside the checkout.")
        pytest.skip("../shared not present")
    return SHARED


@pytest.fixture(scope="session")
def tiny_model():
    from embedlab import models

    return models.load_model("embedlab-tiny", "none", "cpu")


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory):
    from embedlab.datasets.layouts import manifest

    out = tmp_path_factory.mktemp("manifests") / "demo.jsonl"
    manifest("demo", ".", out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, demo_manifest):
    from embedlab.runs.extract.pipeline import extract

    out = tmp_path_factory.mktemp("runs") / "tiny"
    extract(demo_manifest, "embedlab-tiny", "none", out, device="cpu", workers=0, shard_size=16, progress=False)
    return out


def write_photo(path: Path, size=(48, 40), seed=0, fmt=None, **save_kwargs):
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt, **save_kwargs)
    return path


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """One `embedlab demo` run through the CLI with the tiny random-init model, shared by every test that reads
    its pages or artifacts: (output folder, demo.json as a dict, the command's stdout)."""
    import json
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("demo") / "demo"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedlab",
            "demo",
            "--out",
            str(out),
            "--model",
            "embedlab-tiny",
            "--pretrained",
            "none",
            "--iters",
            "6",
            "--permutations",
            "100",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ),
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads((out / "demo.json").read_text()), r.stdout


def page_links(html_text: str) -> list[str]:
    """The local targets of a page's <a href> and <img src> (data: URIs and in-page anchors left out)."""
    import html.parser

    class Links(html.parser.HTMLParser):
        links: list[str] = []

        def handle_starttag(self, tag, attrs):
            for k, v in attrs:
                if (tag, k) in (("a", "href"), ("img", "src")) and v and not v.startswith(("data:", "#")):
                    self.links.append(v)

    parser = Links()
    parser.links = []
    parser.feed(html_text)
    return parser.links
