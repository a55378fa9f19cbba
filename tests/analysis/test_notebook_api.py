"""The notebook API: residual(run_a, run_b) in memory, the next steps taking the Residual, results as DataFrames."""

import numpy as np
import pytest

import embedlab
from embedlab.errors import ConfigError
from embedlab.runs.store import Run
from tests.analysis.test_errors_before_work import _imported


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nb")
    return _imported(tmp, "a", 0), _imported(tmp, "b", 10), tmp


def test_residual_in_memory_equals_the_written_one(runs):
    ra, rb, tmp = runs
    before = sorted(p.name for p in tmp.iterdir())
    res = embedlab.residual(ra, rb, bootstrap=20, progress=False)
    assert res.path is None and sorted(p.name for p in tmp.iterdir()) == before  # nothing written
    written = embedlab.residual(ra, "a", "b", tmp / "r.npy", to_run=rb, bootstrap=20, progress=False)
    np.testing.assert_array_equal(res.vector, written.vector)
    assert res.info["from"]["selector"] == "role=a" and res.info["to"]["selector"] == "role=b"
    df = res.to_pandas()
    assert list(df[["n_from", "n_to"]].iloc[0]) == [4, 4] and df["path"][0] is None
    assert df["bootstrap_mean_cosine"][0] == pytest.approx(written.info["bootstrap"]["mean_cosine"])
    again = embedlab.residual(Run(ra), Run(rb), bootstrap=0, progress=False)  # Run objects too
    np.testing.assert_array_equal(again.vector, res.vector)


def test_next_steps_take_the_residual_and_give_dataframes(runs):
    ra, rb, tmp = runs
    res = embedlab.residual(ra, rb, bootstrap=0, progress=False)
    vocab = tmp / "vocab.txt"
    vocab.write_text("dark\nbright\nnight\nday\ncat\n")
    report = embedlab.explain_residual(res, tmp / "rep", vocab=str(vocab), permutations=0, device="cpu", progress=False)
    table = report.to_pandas()
    assert set(table["concept"]) <= {"dark", "bright", "night", "day", "cat"} and len(table) >= 1
    assert list(table.columns[:3]) == ["rank", "direction", "concept"]
    assert (tmp / "rep" / "report.html").exists() and report["residual"]["path"] is None
    fixed = embedlab.correct(res, remove=["dark"], vocab=str(vocab), device="cpu")
    assert fixed.path is None and fixed.vector.shape == res.vector.shape
    assert abs(float(fixed.vector @ res.vector)) < 1.0 and fixed.info["correction"]["source_residual"] is None


def test_a_run_of_several_sets_needs_a_selector(runs, tmp_path):
    from embedlab.datasets.manifest import write_manifest
    from embedlab.runs.extract.pipeline import extract
    from tests.conftest import write_photo

    recs = [{"path": str(write_photo(tmp_path / f"{i}.png", seed=i)), "role": "xy"[i % 2]} for i in range(4)]
    man = write_manifest(tmp_path / "m.jsonl", recs)
    extract(man, "embedlab-tiny", "none", tmp_path / "run", device="cpu", workers=0, progress=False)
    with pytest.raises(ConfigError, match=r"holds several sets \(roles x, y\).*from_='role=x'"):
        embedlab.residual(tmp_path / "run", bootstrap=0, progress=False)
    res = embedlab.residual(tmp_path / "run", "x", "y", bootstrap=0, progress=False)
    assert res.info["from"]["count"] == 2
