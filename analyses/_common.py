"""Shared helpers for the analyses scripts: argument parsing with a dry run, hardware/version records, JSON output."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(ap):
    """`ap.parse_args()`, except that with ANALYSES_DRY_RUN=1 it stops after the arguments parse (exit 0): the GPU
    check's --dry-run resolves every module and argument on a CPU machine this way."""
    args = ap.parse_args()
    if os.environ.get("ANALYSES_DRY_RUN") == "1":
        print(f"dry run: {ap.prog} arguments ok")
        sys.exit(0)
    return args


def hardware() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        import open_clip

        info["open_clip"] = open_clip.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def write_json(name: str, payload: dict, out_dir: str | None = None) -> Path:
    folder = Path(out_dir) if out_dir else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    payload = dict(payload, hardware=hardware())
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path
