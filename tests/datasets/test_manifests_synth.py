import json
from pathlib import Path

import numpy as np
import pytest

from embedlab.datasets import synth
from embedlab.datasets.images import load_rgb
from embedlab.datasets.layouts import DEMO_VIGNETTE_EV, generate, manifest
from embedlab.datasets.manifest import materialize, read_manifest
from embedlab.errors import ManifestError
from tests.conftest import write_photo


def test_recipe_a_matches_the_normative_sketch():
    from embedlab.datasets.photos import load_photo
    from tests.helpers.reference_recipe_a import synth_backlit as reference

    img = load_photo("pkg:skimage/coffee")[::2, ::2].copy()
    for seed in (0, 3):
        ours = synth.recipe_a(img, seed)
        ref_img, ref_mask = reference(img, seed)
        assert np.array_equal(ours.image, ref_img)
        assert np.allclose(ours.mask, ref_mask)
        assert ours.params["seed"] == seed and -4 <= ours.params["ev_fg"] <= -2


def test_recipe_a_ablation_leaves_out_only_the_named_steps():
    """`omit` (used by analyses/demo/oracle_gain.py) keeps every draw of the full recipe (each single-step ablation
    records the full recipe's parameters), and what is left equals the recipe's steps recomputed from those
    parameters: exposure; exposure + desaturation; exposure + desaturation + glare."""
    from embedlab.colour import LUMA, linear_to_srgb, srgb_to_linear
    from embedlab.datasets.photos import load_photo

    img = load_photo("pkg:skimage/coffee")[::4, ::4].copy()
    full = synth.recipe_a(img, 2)
    p, m = full.params, full.mask
    for step in synth.RECIPE_A_STEPS:
        one = synth.recipe_a(img, 2, omit=(step,))
        assert {k: v for k, v in one.params.items() if k != "omitted"} == p and one.params["omitted"] == [step]
        assert not np.array_equal(one.image, full.image) and np.array_equal(one.mask, m)

    def u8(x):
        return (linear_to_srgb(x) * 255 + 0.5).astype(np.uint8)

    x = srgb_to_linear(img / 255.0) * (2.0 ** (m * p["ev_bg"] + (1 - m) * p["ev_fg"]))[..., None]
    assert np.array_equal(synth.recipe_a(img, 2, omit=synth.RECIPE_A_STEPS).image, u8(x))
    y = (x @ LUMA)[..., None]
    x = y + (x - y) * (m + (1 - m) * p["shadow_saturation"])[..., None]
    assert np.array_equal(synth.recipe_a(img, 2, omit=("glare", "noise")).image, u8(x))
    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = ((yy - p["light_yx"][0]) ** 2 + (xx - p["light_yx"][1]) ** 2) / max(h, w) ** 2
    x = x + (p["glare"] * np.exp(-d2 / (2 * p["glare_radius"] ** 2)))[..., None] * p["glare_tint"] + 0.02 * p["glare"]
    assert np.abs(synth.recipe_a(img, 2, omit=("noise",)).image.astype(int) - u8(x)).max() <= 1
    with pytest.raises(ValueError, match="unknown step"):
        synth.recipe_a(img, 2, omit=("blur",))


def test_recipes_are_deterministic_and_distinct():
    from embedlab.datasets.photos import load_photo

    img = load_photo("pkg:sklearn/china.jpg")[::4, ::4].copy()
    a1, a2 = synth.recipe_b(img, 5).image, synth.recipe_b(img, 5).image
    assert np.array_equal(a1, a2)
    assert not np.array_equal(a1, synth.recipe_b(img, 6).image)
    dark = synth.recipe_c(img, -1.5).image
    assert dark.mean() < img.mean()
    assert synth.afifi_suffix(-1.5) == "N1.5" and synth.afifi_suffix(1) == "P1" and synth.afifi_suffix(0) == "0"


def test_demo_manifest_is_split_by_photo_and_plants_a_bias(demo_manifest):
    """Split by photo; every training photo is a group with backlit and well-lit images; every well-lit training
    image (and no backlit one, and no held-out original) carries the planted vignette."""
    man = read_manifest(demo_manifest)
    test_groups = {e.group for e in man.entries if e.split == "test"}
    train_groups = {e.group for e in man.entries if e.split == "train"}
    assert test_groups and not test_groups & train_groups
    welllit = [e for e in man.entries if e.role == "welllit" and e.split == "train"]
    backlit = [e for e in man.entries if e.role == "backlit" and e.split == "train"]
    assert {e.group for e in welllit} == {e.group for e in backlit} == train_groups and len(train_groups) >= 12
    assert all(e.synth["recipe"] == "V" and e.synth["ev"] == DEMO_VIGNETTE_EV for e in welllit)
    assert not any((e.synth or {}).get("recipe") == "V" for e in man.entries if e not in welllit)
    e = next(e for e in man.entries if e.path.startswith("synth:A"))
    p1 = materialize(man, e.path, e)
    assert Path(p1).exists() and materialize(man, e.path, e) == p1
    v = next(e for e in welllit if e.synth.get("crop_seed") is None)
    vig, orig = load_rgb(materialize(man, v.path, v)), load_rgb(materialize(man, v.synth["source"]))
    assert vig.shape == orig.shape
    assert synth.corner_centre_ratio(vig) < 0.6 * synth.corner_centre_ratio(orig)  # dark corners,
    h, w, _ = vig.shape
    c = (slice(h // 2 - 4, h // 2 + 4), slice(w // 2 - 4, w // 2 + 4))
    assert np.abs(vig[c].astype(int) - orig[c]).max() <= 2  # the centre untouched


def test_vignette_is_one_gain_per_pixel():
    """The planted vignette keeps each pixel's chromaticity (linear RGB ratios): the enhancer's one gain per pixel can
    make or undo it; its corners lose `ev` stops."""
    from embedlab.colour import srgb_to_linear

    flat = np.full((40, 60, 3), 200, np.uint8)
    assert synth.corner_centre_ratio(flat) == 1.0
    for ev in (1.0, 2.0):
        out = synth.vignette(flat, ev)
        ratio = synth.corner_centre_ratio(out)
        assert 2.0**-ev < ratio < 2.0 ** (-ev / 3), (ev, ratio)  # patches, not the corner pixel alone
    img = np.random.default_rng(0).integers(80, 250, (40, 60, 3), dtype=np.uint8)
    lin_in, lin_out = srgb_to_linear(img / 255.0), srgb_to_linear(synth.vignette(img, 1.0) / 255.0)
    gain = lin_out / lin_in
    assert np.abs(gain - gain.mean(2, keepdims=True)).max() < 0.03  # one gain per pixel (up to uint8 rounding)


def _tree(tmp_path, files):
    for rel in files:
        write_photo(tmp_path / rel, seed=len(rel))
    return tmp_path


def test_baid_clip_lit_layout_pairs_by_exact_stem_and_drops_duplicates(tmp_path):
    root = _tree(
        tmp_path / "BAID",
        [
            "test/resize_input/0001.png",
            "test/resize_input/0002.png",
            "test/resize_input/0002(2).png",
            "test/resize_input/0010.png",
            "test/resize_gt/0001.png",
            "test/resize_gt/0002.png",
            "test/resize_gt/0010.png",
        ],
    )
    report = manifest("baid", root, tmp_path / "baid.jsonl")
    man = read_manifest(report["files"]["manifest"])
    assert [e.path for e in man.entries] == [
        "test/resize_input/0001.png",
        "test/resize_input/0002.png",
        "test/resize_input/0010.png",
    ]
    assert [e.gt for e in man.entries] == [
        "test/resize_gt/0001.png",
        "test/resize_gt/0002.png",
        "test/resize_gt/0010.png",
    ]
    assert report["dropped_duplicates"] == ["0002(2).png"]


def test_baid_rave_layout_and_broken_pair(tmp_path):
    root = _tree(tmp_path / "B", ["train/backlit/a.png", "train/well-lit/a.png"])
    man = read_manifest(manifest("baid", root, tmp_path / "m.jsonl")["files"]["manifest"])
    assert {(e.role, e.split) for e in man.entries} == {("backlit", "train"), ("welllit", "train")}
    write_photo(root / "train/backlit/b.png")
    with pytest.raises(ManifestError, match="broken pair"):
        generate("baid", root)


@pytest.mark.parametrize(
    "layout,files,expect",
    [
        ("flat", ["0001.png", "0002.png"], 2),
        ("lol", ["our485/low/1.png", "our485/high/1.png", "eval15/low/7.png", "eval15/high/7.png"], 4),
        (
            "lolv2",
            [
                "Real_captured/Train/Low/low00001.png",
                "Real_captured/Train/Normal/normal00001.png",
                "Synthetic/Test/Low/s1.png",
                "Synthetic/Test/Normal/s1.png",
            ],
            4,
        ),
        ("sice", ["Dataset_Part1/1/1.JPG", "Dataset_Part1/1/2.JPG", "Dataset_Part1/Label/1.JPG"], 2),
        (
            "afifi",
            [
                "training/INPUT_IMAGES/a0001-x_N1.5.JPG",
                "training/INPUT_IMAGES/a0001-x_P1.JPG",
                "training/GT_IMAGES/a0001-x.jpg",
            ],
            2,
        ),
    ],
)
def test_layout_generators(tmp_path, layout, files, expect):
    root = tmp_path / "data"
    for rel in files:
        write_photo(root / rel, fmt="PNG" if rel.lower().endswith("png") else "JPEG")
    out = manifest(layout, root, tmp_path / f"{layout}.jsonl")["files"]["manifest"]
    man = read_manifest(out)
    assert len(man.entries) == expect
    for e in man.entries:
        if e.gt:
            assert Path(man.resolve(e.gt)).exists()


def test_fivek480_layout(tmp_path):
    root = tmp_path / "fiveK"
    for n in ("a0001", "a0002"):
        write_photo(root / f"input/JPG/480p/{n}.jpg", fmt="JPEG")
        write_photo(root / f"expertC/JPG/480p/{n}.jpg", fmt="JPEG")
    (root / "train.txt").write_text("a0001\n")
    (root / "test.txt").write_text("a0002\n")
    man = read_manifest(manifest("fivek480", root, tmp_path / "f.jsonl")["files"]["manifest"])
    assert [(e.split, e.pair_id) for e in man.entries] == [("train", "fivek:a0001"), ("test", "fivek:a0002")]


def _write(tmp_path, lines, header=None):
    p = tmp_path / "m.jsonl"
    rows = ([json.dumps(header)] if header else []) + [json.dumps(r) if isinstance(r, dict) else r for r in lines]
    p.write_text("\n".join(rows) + "\n")
    return p


def test_manifest_errors_name_the_line_and_the_fix(tmp_path):
    write_photo(tmp_path / "a.png")
    with pytest.raises(ManifestError, match=r"line 3: duplicate path 'a.png' \(first on line 2\)"):
        read_manifest(
            _write(tmp_path, [{"path": "a.png", "role": "x"}, {"path": "a.png", "role": "y"}], {"embedlab_manifest": 1})
        )
    with pytest.raises(ManifestError, match=r"line 1: .*missing.png not found"):
        read_manifest(_write(tmp_path, [{"path": "missing.png", "role": "x"}]))
    with pytest.raises(ManifestError, match=r"line 1: paired ground truth \(broken pair\)"):
        read_manifest(_write(tmp_path, [{"path": "a.png", "role": "x", "gt": "nope.png"}]))
    with pytest.raises(ManifestError, match="zero images"):
        read_manifest(_write(tmp_path, ["# only a comment"]))
    with pytest.raises(ManifestError, match=r"line 1: missing \"role\""):
        read_manifest(_write(tmp_path, [{"path": "a.png"}]))
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(_write(tmp_path, ["{oops"]))
    with pytest.raises(ManifestError, match="root folder .* does not exist"):
        read_manifest(_write(tmp_path, [{"path": "a.png", "role": "x"}], {"embedlab_manifest": 1, "root": "nowhere"}))
    man = read_manifest(_write(tmp_path, [{"path": "a.png", "role": "welllit"}]))
    with pytest.raises(ManifestError, match=r"No image .* role='backlit'.*Roles present: \{'welllit': 1\}"):
        man.select(role="backlit")
    with pytest.raises(ManifestError, match="Unknown layout"):
        generate("div3k", tmp_path)
    with pytest.raises(ManifestError, match="zero images"):
        (tmp_path / "empty").mkdir()
        generate("flat", tmp_path / "empty")
