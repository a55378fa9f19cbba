"""html: split from report.py."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np

from embedlab._io import atomic_write_bytes

MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#!|~])")  # with [ ] escaped, ( ) cannot form a link


# ---- small pure helpers -------------------------------------------------------------------------------------


def md_escape(s) -> str:
    """A user string as literal Markdown text: special characters backslash-escaped, newlines flattened."""
    return MD_SPECIAL.sub(r"\\\1", " ".join(str(s).splitlines()))


def url_for(path) -> str:
    """A relative path as a URL: each segment percent-encoded ('#', '?', '%', spaces), '/' kept."""
    return quote(str(path).replace("\\", "/"), safe="/")


def fmt(v) -> str:
    """A number to three significant digits, without wrapping-prone spaces; blanks for missing values."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "0" if v == 0 else f"{float(v):.3g}"
    return str(v)


# ---- Jinja2 -----------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def jinja_env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("embedlab.reports", "templates"),
        autoescape=True,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    env.filters["url"] = lambda p: p if str(p).startswith(("data:", "#", "http://", "https://")) else url_for(p)
    env.filters["fmt"] = fmt
    return env


def asset(name: str):
    """A bundled CSS/JS file as markup to inline (pages work offline: nothing is fetched)."""
    from markupsafe import Markup

    return Markup(resources.files("embedlab.reports").joinpath("templates", name).read_text(encoding="utf-8"))


def json_for_script(obj):
    """JSON safe inside a <script> element (no '</script>' or '<!--' can close it)."""
    from markupsafe import Markup

    text = json.dumps(obj, allow_nan=False, default=str)
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def render_page(template: str, **context) -> str:
    return jinja_env().get_template(template).render(css=asset("page.css"), **context)


def set_nav(html_path: str | Path, links: list[tuple[str, str]]) -> None:
    """Replace the navigation links of a page written from these templates (e.g. add 'back to the index')."""
    path = Path(html_path)
    text = path.read_text(encoding="utf-8")
    block = jinja_env().from_string('{% from "_nav.html.j2" import nav %}{{ nav(links) }}').render(links=links)
    inner = block.split("<!--nav:start-->", 1)[1].split("<!--nav:end-->", 1)[0]
    if "<!--nav:start-->" not in text or "<!--nav:end-->" not in text:
        return  # not a page from these templates (an older report): leave it as it is
    start, end = text.index("<!--nav:start-->") + len("<!--nav:start-->"), text.index("<!--nav:end-->")
    atomic_write_bytes(path, (text[:start] + inner + text[end:]).encode())


# ---- figures ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def plain_text_figures():
    """Matplotlib with mathtext off: a '$' in a concept or selector is drawn as a dollar sign."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        yield


def png_data_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def thumb_data_uri(path: str, size: int = 96) -> str | None:
    """A JPEG thumbnail as a data URI, or None when the file cannot be read. The files were validated when the
    run was extracted, so this takes the cheap road: JPEGs are decoded at a reduced DCT scale (draft mode)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as src:
            src.draft("RGB", (2 * size, 2 * size))
            img = ImageOps.exif_transpose(src).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def shown_path(path, base) -> str:
    """A path as a page in `base` shows it: relative when it lies under base's parent, else as given."""
    if not path or base is None:
        return str(path or "")
    try:
        p, b = Path(path).resolve(), Path(base).resolve()
        return os.path.relpath(p, b) if p.is_relative_to(b.parent) else str(path)
    except (OSError, ValueError):
        return str(path)
