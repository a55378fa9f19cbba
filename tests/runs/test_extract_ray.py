"""The Ray engine on a local 2-CPU Ray instance: the same run as the local engine, killed actors and drivers,
bounded retries, actors that cannot see the dataset."""

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

from embedlab.runs.extract.pipeline import extract
from embedlab.runs.index import load_index
from embedlab.runs.store import Run
from tests.helpers.extraction import TINY, tiny_extract_argv
from tests.helpers.extraction import photo_folder as _photos
from tests.helpers.extraction import run_cli as _cli


# ---------------------------------------------------------------- the Ray engine (a local 2-CPU instance)
@pytest.fixture(scope="module")
def ray_address():
    import ray

    ctx = ray.init(num_cpus=2, object_store_memory=1_000_000_000, include_dashboard=False, log_to_driver=False)
    yield ctx.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ray")
    man = _photos(base / "imgs", 40, size=(96, 72))
    extract(man, "embedlab-tiny", "none", base / "local", shard_size=2, batch_size=2, workers=0, **TINY)
    return man, Run(base / "local")


def _same_as_local(run: Run, local: Run) -> None:
    assert list(run.metadata["row_id"]) == list(local.metadata["row_id"]) == list(range(40))
    assert np.allclose(run.vectors, local.vectors, atol=1e-6, rtol=0)
    assert run.manifest["status"] == "complete" and load_index(run).ntotal == 40


@pytest.mark.slow
def test_ray_engine_writes_the_same_run_as_the_local_engine(tmp_path, ray_address, ray_inputs):
    man, local = ray_inputs
    summary = extract(man, "embedlab-tiny", "none", tmp_path / "run", shard_size=2, batch_size=2, engine="ray", **TINY)
    run = Run(tmp_path / "run")
    _same_as_local(run, local)
    assert summary["this_call"]["engine"] == "ray" and summary["this_call"]["workers"] == 2
    assert summary["this_call"]["engine_startup_seconds"] > 0
    assert run.identity == {**local.identity}  # same model, preprocessing, inputs: resumable by either
    assert not (tmp_path / "run" / ".engine").exists() and not (tmp_path / "run" / ".lock").exists()


@pytest.mark.slow
def test_ray_actor_killed_mid_run_every_image_once(tmp_path, ray_address, ray_inputs):
    man, local = ray_inputs
    out, killed = tmp_path / "run", {}

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            workers = sorted((out / ".engine").glob("worker-*.json")) if (out / ".engine").exists() else []
            done = len(list((out / "shards").glob("*.done.json"))) if (out / "shards").exists() else 0
            if workers and done >= 1:
                pid = json.loads(workers[0].read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid, done=done)
            time.sleep(0.002)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = extract(man, "embedlab-tiny", "none", out, shard_size=2, batch_size=2, engine="ray", **TINY)
    thread.join(5)
    assert killed and killed["done"] < 20, killed  # the actor died with shards still to do
    run = Run(out)
    _same_as_local(run, local)  # every image once, same vectors
    assert summary["embedded"] == 40 and not summary["this_call"]["failed_shards"]


_KILL_DRIVER = (
    "import os, signal, sys\nimport embedlab.runs.extract.ray as er\nseen = []\n"
    "def hook(job, shard, result):\n    seen.append(shard)\n"
    "    if len(seen) >= 3:\n        os.kill(os.getpid(), signal.SIGKILL)\n"
    "er.shard_finished = hook\nsys.argv = ['embedlab', *sys.argv[1:]]\nfrom embedlab.cli import main\nmain()\n"
)


@pytest.mark.slow
def test_ray_killed_driver_resumes_on_rerun(tmp_path, ray_address, ray_inputs):
    man, local = ray_inputs
    flags = ("--shard-size", "2", "--batch-size", "2", "--engine", "ray", "--address", ray_address, "--no-progress")
    args = tiny_extract_argv(man, tmp_path / "run", *flags)
    r = _cli(*args, code=_KILL_DRIVER)
    assert r.returncode == -9, r.stderr[-3000:]
    partial = Run(tmp_path / "run")
    assert partial.manifest["status"] == "running" and 3 <= len(partial.done_shards()) < 20
    summary = extract(man, "embedlab-tiny", "none", tmp_path / "run", shard_size=2, batch_size=2, engine="ray", **TINY)
    run = Run(tmp_path / "run")
    _same_as_local(run, local)
    assert (
        summary["this_call"]["embedded"] < 40
    )  # only the missing shards were embedded again     # only the missing shards were embedded again


def test_ray_failures_are_retried_bounded_and_an_unavailable_actor_is_kept():
    ray = pytest.importorskip("ray")
    from collections import deque

    from embedlab.runs.extract.ray import MAX_RESUBMITS, on_failure

    ex = ray.exceptions

    def err(cls):
        return cls.__new__(cls)  # the classification looks at the type only

    actor, other = object(), object()
    for cls, verdict, kept in [
        (ex.ActorUnavailableError, "retried", True),
        (ex.RayActorError, "dropped", False),
        (ex.OutOfMemoryError, "retried", True),
        (ex.NodeDiedError, "retried", True),
        (ex.ObjectLostError, "retried", True),
        (ex.WorkerCrashedError, "retried", True),
    ]:
        alive, queue, resubmits, counts = [actor, other], deque([9]), {}, {"failed_shards": {}}
        assert on_failure(ray, err(cls), actor, 3, alive, queue, resubmits, counts) == verdict, cls
        assert (actor in alive) is kept and list(queue) == [3, 9] and not counts["failed_shards"], cls
        for _ in range(MAX_RESUBMITS - 1):
            on_failure(ray, err(cls), actor, 3, alive, queue, resubmits, counts)
        assert on_failure(ray, err(cls), actor, 3, alive, queue, resubmits, counts) == "failed"  # bounded
        assert cls.__name__ in counts["failed_shards"]["3"] and list(queue).count(3) == MAX_RESUBMITS
    counts = {"failed_shards": {}}
    task_error = ex.RayTaskError("embed_shard", "Traceback ...\nValueError: bad record", ValueError("bad record"))
    assert on_failure(ray, task_error, actor, 5, [actor], deque(), {}, counts) == "failed"  # a data error: no retry
    assert "bad record" in counts["failed_shards"]["5"]


def test_a_ray_actor_that_cannot_see_the_dataset_fails_its_check(tmp_path):
    pytest.importorskip("ray")
    from embedlab.runs.extract.ray import ShardActor

    run = tmp_path / "run"
    (run / ".engine").mkdir(parents=True)
    (run / ".engine" / "probe.json").write_text(json.dumps({"token": "t"}))
    from embedlab import models

    lm = models.load_model("embedlab-tiny", "none", "cpu")
    spec = {
        "max_pixels": None,
        "model": "embedlab-tiny",
        "pretrained": "none",
        "device": "cpu",
        "root": str(tmp_path),
        "threads": 1,
        "run_dir": str(run),
        "token": "t",
        "weights_sha256": lm.info["weights_sha256"],
        "compute_dtype": models.compute_dtype(lm.device),
        "probe_paths": [str(tmp_path)],
    }
    actor = ShardActor(spec)  # the class itself, without Ray: the check is plain Python
    assert actor.check()["error"] is None
    actor.spec = dict(spec, probe_paths=[str(tmp_path), str(tmp_path / "not-mounted-here" / "0001.tar")])
    msg = actor.check()["error"]
    assert "cannot see the dataset" in msg and "not-mounted-here" in msg
