"""Helpers of the extraction tests: the CLI in a subprocess, and a folder of small photos with its manifest."""

import os
import subprocess
import sys
from pathlib import Path

from embedlab.datasets.layouts import manifest
from tests.conftest import REPO, write_photo

TINY = dict(device="cpu", progress=False)


def run_cli(*args, timeout=300, code=None):
    entry = ["-c", code] if code else ["-m", "embedlab"]
    return subprocess.run(
        [sys.executable, *entry, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )


def photo_folder(folder: Path, n: int, size=(64, 48)) -> Path:
    for i in range(n):
        write_photo(
            folder / f"{i:03d}.{'jpg' if i % 3 else 'png'}",
            size=(size[0] + i % 5, size[1]),
            seed=i,
            fmt="JPEG" if i % 3 else "PNG",
        )
    out = manifest("flat", folder, folder.parent / f"{folder.name}.jsonl", role="welllit")["files"]["manifest"]
    return out
