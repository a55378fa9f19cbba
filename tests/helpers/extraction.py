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


def jpeg_folder(folder: Path, n: int) -> Path:
    """`n` small JPEGs of slightly different sizes in `folder`, and their manifest (role welllit)."""
    for i in range(n):
        write_photo(folder / f"{i:03d}.jpg", size=(40 + i, 32), seed=i, fmt="JPEG")
    return manifest("flat", folder, folder.parent / f"{folder.name}.jsonl", role="welllit")["files"]["manifest"]


def quiet_cli(*args, timeout=300):
    """`embedlab -q ARGS` in a subprocess (only warnings and errors on stderr)."""
    return run_cli("-q", *args, timeout=timeout)


def tiny_extract_argv(manifest, out, *extra, device="cpu") -> list:
    """The argv of `embedlab extract` of `manifest` into `out` with the tiny random-init model, then `extra`."""
    return ["extract", "-m", manifest, "--model", "embedlab-tiny", "--pretrained", "none", "--out", out,
            "--device", device, *extra]  # fmt: skip
