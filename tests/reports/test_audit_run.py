"""`embedlab audit` end to end on the demo-CLIP world (package photos, crops of one photo in one group): the planted
backlit slice is found and described in lighting words, non-lighting edits and an unrelated column are not, every
file is written, and bad input gets one line with nothing written."""

import json

import numpy as np
import pandas as pd
import pytest

from embedlab.analysis.residual_file import load_residual
from embedlab.datasets.audit_world import audit_world_records
from embedlab.datasets.manifest import write_manifest
from embedlab.demos import clip as dc
from embedlab.runs.store import Run
from tests.helpers.browser_check import check_page
from tests.helpers.extraction import run_cli
from tests.reports.conftest import WIDTHS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
    from embedlab.runs.extract.pipeline import extract

    root = tmp_path_factory.mktemp("audit_world")
    recs, truth = audit_world_records()
    write_manifest(root / "world.jsonl", recs, {"meta_columns": ["light", "edit", "camera"]})
    ckpt = dc.unpack_packaged(root / "clip")
    extract(root / "world.jsonl", out=root / "run", model="embedlab-demo", pretrained=str(ckpt), device="cpu",
            progress=False)  # fmt: skip
    return root, truth


@pytest.fixture(scope="module")
def audited(world_run):
    root, _ = world_run
    out = root / "audit"
    proc = run_cli("audit", str(root / "run"), "--by", "light,edit,camera", "--discover", "4", "--out", str(out),
                   "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_the_backlit_slice_is_found_in_lighting_words(audited):
    out, proc = audited
    slices = pd.read_parquet(out / "slices.parquet").set_index("name")
    concepts = pd.read_parquet(out / "concepts.parquet")
    lighting = dc.lighting_words()
    assert slices.loc["light=backlit", "p_fwer"] < 0.05
    adds = concepts[(concepts.slice == "light=backlit") & (concepts.side == "adds")].sort_values("rank")
    assert adds["concept"].iloc[0] in lighting and adds["p_fwer"].iloc[0] < 0.05
    assert "light=backlit" in proc.stdout and "open " in proc.stdout
    # blur and JPEG change no lighting: no lighting word is claimed for them; the camera column holds nothing
    edits = concepts[concepts.slice.str.startswith("edit=") & concepts.concept.isin(lighting)]
    assert (edits["p_fwer"] >= 0.05).all()
    assert (slices.filter(like="camera=", axis=0)["p_fwer"] >= 0.05).all()


def test_discovery_finds_the_hidden_under_exposed_groups_and_names_their_lighting(audited, world_run):
    """No column names the 5 under-exposed groups: a cluster found on one half holds, on the other, only them, and
    its first added concept is a lighting word."""
    out, _ = audited
    truth = world_run[1]
    slices = pd.read_parquet(out / "slices.parquet")
    concepts = pd.read_parquet(out / "concepts.parquet")
    meta = Run(world_run[0] / "run").metadata
    from embedlab import audit

    res = audit(world_run[0] / "run", "light,edit,camera", discover=4, progress=False)
    found = []
    for s, mask in res.masks.items():
        name = res.slices.iloc[s]["name"]
        if not name.startswith("cluster"):
            continue
        groups = set(meta["group"][mask])
        first = concepts[(concepts.slice == name) & (concepts.side == "adds")].sort_values("rank")["concept"].iloc[0]
        if len(groups) >= 2 and groups <= set(truth["hidden_dark_groups"]):
            found.append((name, first))
    assert found and all(first in dc.lighting_words() for _, first in found), found
    assert set(slices["name"]) == set(res.slices["name"])  # the CLI and the API audit the same family


def test_every_file_is_written_and_the_slice_residual_is_an_ordinary_one(audited, world_run):
    out, _ = audited
    info = json.loads((out / "audit.json").read_text())
    assert info["unit"] == "groups" and info["n_units"] == 15 and info["split"]["k"] == 4
    slices = pd.read_parquet(out / "slices.parquet").set_index("name")
    res = load_residual(out / slices.loc["light=backlit", "residual_path"])
    assert res.info["to"]["selector"] == "light=backlit" and res.info["from"]["selector"] == "light!=backlit"
    run = Run(world_run[0] / "run")
    assert run.select("light=backlit").sum() == res.info["to"]["count"] == slices.loc["light=backlit", "n_images"]
    assert abs(float(np.linalg.norm(res.vector)) - 1) < 1e-5
    report = out / slices.loc["light=backlit", "report_href"]
    found = json.loads(report.with_suffix(".json").read_text())["concepts"]
    assert any(c["concept"] in dc.lighting_words() and c["p_fwer"] < 0.05 for c in found)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_audit_page_of_a_real_run_passes_in_chromium(audited, driver, shots, width):
    out, _ = audited
    problems = check_page(driver, (out / "audit.html").as_uri(), width, shots, "audit_run")
    assert not problems, problems
    assert "light=backlit" in driver.find_element("tag name", "main").text


def test_bad_input_gets_one_line_and_writes_nothing(world_run, tmp_path):
    root, _ = world_run
    run = str(root / "run")
    cases = [
        (["--by", "colour"], "no column 'colour'"),
        (["--by", "light", "--min-groups", "9"], "No slice has 9 units"),
        (["--by", "light", "--within", "nope"], "'nope' (given as '--within') is not a column"),
    ]
    table = tmp_path / "side.csv"
    pd.DataFrame({"path": ["elsewhere/a.png"], "site": ["x"]}).to_csv(table, index=False)
    cases.append((["--by", "site", "--metadata", str(table)], "matches no image path"))
    cases.append((["--by", "light", "--screen", "--within", "camera"], "does not take '--within'"))
    cases.append((["--by", "light", "--screen", "--min-groups", "9"], "No slice has 9 units"))
    for extra, message in cases:
        out = tmp_path / "out"
        proc = run_cli("audit", run, "--out", str(out), "--no-progress", *extra)
        assert proc.returncode == 1, proc.stderr
        lines = [x for x in proc.stderr.splitlines() if x.startswith("Error")]
        assert len(lines) == 1 and message in lines[0], proc.stderr
        assert not out.exists()


def test_a_side_table_joined_on_the_path_adds_columns(world_run, tmp_path):
    from embedlab import audit

    root, _ = world_run
    meta = Run(root / "run").metadata
    site = np.where(meta["group"].isin(["astronaut", "coffee", "chelsea", "rocket"]), "north", "south")
    table = tmp_path / "side.parquet"
    pd.DataFrame({"path": meta["path"], "site": site}).to_parquet(table)
    r = audit(root / "run", "site", metadata=table, permutations=99, bootstrap=0, progress=False, device="cpu")
    assert list(r.slices["name"]) == ["site=north"] and r.slices["n_groups"].iloc[0] == 4


def test_the_screen_ranks_the_backlit_slice_first_from_one_pass(world_run, tmp_path):
    """--screen (the streamed pass alone: images as units, nothing tested) puts the planted backlit value first by its
    omnibus ratio, with a lighting word among its first three added concepts (the raw direction also carries the
    backlit photos' content: 'camera' and 'man' of the camera photo come first here, which the full audit's
    group-wise t ranks below the lighting), and its ratio equals a direct computation on the run's vectors."""
    root, _ = world_run
    out = tmp_path / "screen"
    proc = run_cli("audit", str(root / "run"), "--by", "light,edit,camera", "--screen", "--out", str(out),
                   "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "not tested" in proc.stdout and "light=backlit" in proc.stdout
    slices = pd.read_parquet(out / "slices.parquet")
    assert slices["name"].iloc[0] == "light=backlit" and "p_fwer" not in slices
    concepts = pd.read_parquet(out / "concepts.parquet")
    adds = concepts[(concepts.slice == "light=backlit") & (concepts.side == "adds")].sort_values("rank")
    assert len(adds) == 3 and set(adds["concept"]) & dc.lighting_words()
    assert json.loads((out / "audit.json").read_text())["mode"] == "screen"
    run = Run(root / "run")
    X = run.vectors.astype(np.float64)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    mask = run.select("light=backlit")
    d = X[mask].mean(0) - X[~mask].mean(0)
    e0 = (1 / mask.sum() + 1 / (~mask).sum()) * float(((X - X.mean(0)) ** 2).sum()) / (len(X) - 1)
    assert slices["statistic"].iloc[0] == pytest.approx(float(d @ d) / e0, rel=1e-5)
    from embedlab import audit  # the API: the same screen, in memory

    res = audit(run, "light,edit,camera", screen=True, progress=False, device="cpu")
    assert res.out is None and "untested" in repr(res)
    pd.testing.assert_frame_equal(res.slices, slices, check_dtype=False)


def test_the_ray_engine_equals_the_local_engine(world_run):
    """One Ray task per shard, reduced on the driver in shard order: the same sums (to float64 rounding) and so
    the same audit."""
    ray = pytest.importorskip("ray")
    from embedlab import audit
    from embedlab.analysis.audit_pass import stream_sums

    root, _ = world_run
    run = Run(root / "run")
    codes = np.arange(len(run))
    M = np.eye(len(run))[:, :5]
    ray.init(num_cpus=2, object_store_memory=1_000_000_000, include_dashboard=False, log_to_driver=False)
    try:
        remote = stream_sums([run], codes, len(run), M, engine="ray")
        r_ray = audit(run, "light", permutations=99, bootstrap=0, progress=False, device="cpu", engine="ray")
        s_ray = audit(run, "light,edit", screen=True, progress=False, device="cpu", engine="ray")
    finally:
        ray.shutdown()
    local = stream_sums([run], codes, len(run), M, engine="local")
    for key in ("unit_sums", "slice_sums"):
        assert np.allclose(remote[key], local[key], rtol=1e-12, atol=1e-12)
    r_local = audit(run, "light", permutations=99, bootstrap=0, progress=False, device="cpu")
    cols = ["effect", "statistic", "p", "p_fwer"]
    assert np.allclose(r_ray.slices[cols].to_numpy(float), r_local.slices[cols].to_numpy(float), rtol=1e-9)
    s_local = audit(run, "light,edit", screen=True, progress=False, device="cpu")
    assert np.allclose(s_ray.slices["statistic"], s_local.slices["statistic"], rtol=1e-9)


def test_units_that_do_not_fit_the_budget_are_refused_before_reading(world_run):
    from embedlab import audit
    from embedlab.errors import ConfigError

    with pytest.raises(ConfigError, match="over 'memory_budget'"):
        audit(world_run[0] / "run", "light", memory_budget="1K", progress=False, device="cpu")
