"""stdout carries only embedlab's own output: with `extract --engine ray --json`, an actor killed mid-run makes Ray
print raylet messages, and those go to stderr, so stdout stays one JSON document. The CLI starts (and stops) its
own local Ray instance (explicit CPUs and object store, `extract_ray.plan`); RAY_ADDRESS is cleared so that it
never joins another cluster."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedlab.datasets.layouts import manifest
from tests.conftest import REPO, write_photo

pytest.importorskip("ray")

# the CLI, with a hook that SIGKILLs one actor's process right after the first shard is written
_KILL_ACTOR = """
import json, os, signal, sys
import embedlab.runs.extract.ray as er
killed = []
def hook(job, shard, result):
    if not killed:
        workers = sorted((job.run_dir / '.engine').glob('worker-*.json'))
        pid = json.loads(workers[0].read_text())['pid']
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        print(f'test: killed actor pid {pid}', file=sys.stderr, flush=True)
er.shard_finished = hook
sys.argv = ['embedlab', *sys.argv[1:]]
from embedlab.cli import main
main()
"""


def _photos(folder: Path, n: int) -> Path:
    for i in range(n):
        write_photo(folder / f"{i:03d}.jpg", size=(40 + i, 32), seed=i, fmt="JPEG")
    return manifest("flat", folder, folder.parent / f"{folder.name}.jsonl", role="welllit")["files"]["manifest"]


@pytest.mark.slow
def test_json_stdout_stays_parseable_when_a_ray_actor_is_killed(tmp_path):
    man = _photos(tmp_path / "imgs", 24)
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run(
        [sys.executable, "-c", _KILL_ACTOR, "extract", "-m", str(man), "--model", "embedlab-tiny", "--pretrained",
         "none", "--out", str(run), "--shard-size", "2", "--batch-size", "2", "--engine", "ray", "--device", "cpu",
         "--no-progress", "--json"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=REPO,
        env=dict(env, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test: killed actor pid" in r.stderr  # an actor did die mid-run
    summary = json.loads(r.stdout)  # nothing but embedlab's JSON on stdout
    assert summary["embedded"] == 24 and summary["this_call"]["engine"] == "ray"
    assert not summary["this_call"]["failed_shards"]
    assert "(raylet)" in r.stderr  # Ray's messages about the dead worker are not hidden: they are on stderr
