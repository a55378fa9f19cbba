"""Image-edit directions for `correct` (--remove-edit, --remove-edit-like): planted shifts are recovered, and a
planted vignette is removed from a residual better through its image edit than through its word."""

import numpy as np
import pytest


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_edit_direction_recovers_a_planted_shift():
    from embedlab.analysis.edit_directions import edit_direction

    rng = np.random.default_rng(0)
    before = _unit(rng.normal(size=(40, 32)))
    shift = _unit(rng.normal(size=32))
    after = before + 0.3 * shift + 0.02 * rng.normal(size=(40, 32))
    d = edit_direction(before, after)
    assert _unit(d) @ shift > 0.95
    assert np.allclose(edit_direction(before, before), 0)  # no edit, no direction


def test_rank_edits_by_concept_puts_the_closest_edit_first():
    from embedlab.analysis.edit_directions import rank_edits_by_concept

    rng = np.random.default_rng(1)
    concept = _unit(rng.normal(size=16))
    directions = {("blur", 0.02): rng.normal(size=16), ("vignette", 1.0): 2 * concept + 0.1 * rng.normal(size=16)}
    directions[("jpeg", 20.0)] = -concept
    table = rank_edits_by_concept(directions, concept)
    assert list(table["edit"]) == ["vignette", "blur", "jpeg"]
    assert table["cosine_to_concept"].iloc[0] > 0.9 and np.isclose(table["cosine_to_concept"].iloc[-1], -1)


def test_edit_specs_and_bad_ones():
    from embedlab.analysis.edit_directions import parse_edit_spec
    from embedlab.errors import InvalidParameterError

    assert parse_edit_spec("vignette:2") == ("vignette", 2.0) and parse_edit_spec("blur") == ("blur", None)
    with pytest.raises(InvalidParameterError, match="EDIT\\[:STRENGTH\\]"):
        parse_edit_spec("vignette:strong")


@pytest.fixture(scope="module")
def vignette_world(tmp_path_factory):
    """Package photos (from), the same photos a stop brighter AND vignetted 2 stops (to), and a stop brighter only
    (the world without the plant), embedded with the demo CLIP: (raw residual, the unplanted world's residual)."""
    from PIL import Image

    from embedlab.analysis.probe import edit_exposure, edit_vignette
    from embedlab.analysis.residual import residual
    from embedlab.datasets.photos import load_photo
    from embedlab.demos.clip import MODEL_NAME, pretrain_demo
    from embedlab.runs.extract.pipeline import extract

    root = tmp_path_factory.mktemp("vignette_world")
    ckpt = pretrain_demo(device="cpu", progress=False)["files"]["checkpoint"]
    names = ["skimage/astronaut", "skimage/coffee", "skimage/chelsea", "skimage/rocket", "sklearn/china.jpg",
             "sklearn/flower.jpg", "skimage/camera", "skimage/moon"]  # fmt: skip
    runs = {}
    for kind, fn in {
        "from": lambda x: x,
        "to": lambda x: edit_vignette(edit_exposure(x, 1.0), 2.0),
        "unplanted": lambda x: edit_exposure(x, 1.0),
    }.items():
        for i, n in enumerate(names):
            x = load_photo(f"pkg:{n}") / 255.0
            (root / kind).mkdir(exist_ok=True)
            Image.fromarray((np.clip(fn(x), 0, 1) * 255 + 0.5).astype(np.uint8)).save(root / kind / f"{i}.png")
        runs[kind] = root / f"run_{kind}"
        extract(root / kind, MODEL_NAME, ckpt, runs[kind], device="cpu", workers=0, progress=False)
    raw = residual(runs["from"], to_run=runs["to"], out=root / "raw.npy", bootstrap=0, progress=False)
    oracle = residual(runs["from"], to_run=runs["unplanted"], bootstrap=0, progress=False)
    return raw, oracle


def test_a_planted_vignette_is_removed_through_its_image_edit(vignette_world):
    """The found word ('vignetted') matched to the vignette edit, and the corrected residual closer to the world
    without the vignette than the word's own text direction gets it (cosines measured here: see the asserts)."""
    from embedlab.analysis.correct import correct

    raw, oracle = vignette_world
    by_edit = correct(raw, None, remove_edit_like=["vignetted"], device="cpu")
    by_word = correct(raw, None, remove=["vignetted"], device="cpu")
    edit = by_edit.info["edits"][-1]
    assert edit["edit"] == "vignette" and edit["like"] == "vignetted" and edit["images"] == 8
    assert edit["candidates"][0]["edit"] == "vignette" and len(edit["candidates"]) == 5
    cos = {k: float(_unit(r.vector.astype(np.float64)) @ oracle.vector) for k, r in
           {"raw": raw, "word": by_word, "edit": by_edit}.items()}  # fmt: skip
    assert cos["edit"] > cos["word"] + 0.05 and cos["edit"] > cos["raw"] + 0.05, cos
    named = correct(raw, None, remove_edit=["vignette:2"], device="cpu")
    assert named.info["correction"]["directions"][0]["label"] == "vignette 2 (image edit)"
    assert float(_unit(named.vector.astype(np.float64)) @ oracle.vector) > cos["word"], cos


def test_an_unknown_edit_or_a_residual_without_its_run_gets_one_line(vignette_world, tmp_path):
    import shutil

    from embedlab.analysis.correct import correct
    from embedlab.analysis.residual_file import load_residual
    from embedlab.errors import ConfigError

    raw, _ = vignette_world
    with pytest.raises(ConfigError, match="Unknown edit.*Available: exposure"):
        correct(raw, None, remove_edit=["sepia"], device="cpu")
    with pytest.raises(ConfigError, match="saturation:1 does not change the embeddings"):
        correct(raw, None, remove_edit=["saturation:1"], edit_images=2, device="cpu")
    moved = load_residual(raw.path)
    moved.info["from"] = dict(moved.info["from"], run=str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match="names no run that exists here"):
        correct(moved, None, remove_edit=["vignette"], device="cpu")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_command_removes_a_named_edit_and_a_found_word(vignette_world, tmp_path):
    """`embedlab correct --remove-edit` / `--remove-edit-like` write the corrected residual and print each removed
    direction with the residual's projection on it before and after (zero after)."""
    from typer.testing import CliRunner

    from embedlab.analysis.residual_file import load_residual
    from embedlab.cli.app import app

    raw, _ = vignette_world
    out = tmp_path / "c.npy"
    r = CliRunner().invoke(
        app, ["correct", str(raw.path), "--remove-edit", "blur:0.02", "--remove-edit-like", "vignetted", "--out",
              str(out), "--edit-images", "4", "--device", "cpu"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "blur 0.02 (image edit)" in r.output and "vignette 1 (image edit, like 'vignetted')" in r.output, r.output
    edits = load_residual(out).info["edits"]
    assert [e["edit"] for e in edits] == ["blur", "vignette"] and edits[0]["images"] == 4
