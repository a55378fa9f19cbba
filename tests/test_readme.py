"""What the README promises runs: its notebook session (with the offline test model) and the CLI reference it
links (docs/cli.md is the current `--help` of every command)."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_photo


def _notebook_session() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## In a notebook") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_cli_md_is_the_current_help():
    from embedlab.cli.reference import render

    assert (REPO / "docs" / "cli.md").read_text(encoding="utf-8") == render(), (
        "docs/cli.md is out of date: python -m embedlab.cli.reference > docs/cli.md"
    )


@pytest.mark.slow
def test_the_readme_notebook_session_runs(tmp_path):
    code = _notebook_session().replace('"ViT-B-32", "openai"', '"embedlab-tiny", "none"')
    assert "embedlab-tiny" in code, "the session's model call changed: update this test's substitution"
    for name in ("day", "night"):
        for i in range(4):
            write_photo(tmp_path / "photos" / name / f"{i}.png", seed=i + (10 if name == "night" else 0))
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Residual(role=day -> role=night, dim=" in p.stdout and "in memory" in p.stdout, p.stdout
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "corrected.npy").is_file()
    assert not (tmp_path / "r.npy").exists()  # nothing written that the session did not ask for
