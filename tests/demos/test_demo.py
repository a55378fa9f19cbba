import json
import os
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest

from tests.conftest import page_links


def test_pretrain_demo_plumbing_is_deterministic_and_cached(tmp_path, monkeypatch):
    from embedlab import models
    from embedlab.analysis import vocab
    from embedlab.demos import clip as dc

    a = dc.pretrain_demo(tmp_path / "a", device="cpu", progress=False, steps=3, render_seeds=1)["files"]["checkpoint"]
    b = dc.pretrain_demo(tmp_path / "b", device="cpu", progress=False, steps=3, render_seeds=1)["files"]["checkpoint"]
    assert a.read_bytes() == b.read_bytes()  # deterministic for a seed
    stamp = a.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached demo CLIP was retrained")

    with monkeypatch.context() as m:  # cached: no retraining (not a timed assert)
        m.setattr(dc, "train_demo_clip", no_training)
        again = dc.pretrain_demo(tmp_path / "a", device="cpu", progress=False, steps=3, render_seeds=1)
        assert again["files"]["checkpoint"] == a and again["source"] == "cache"
    assert a.stat().st_mtime_ns == stamp
    lm = models.load_model("embedlab-demo", str(a), "cpu")  # through open_clip's checkpoint path
    assert lm.info["pretrained_kind"] == "file" and lm.dim == 128
    v = vocab.resolve_vocab(None, lm)
    assert v.name == "model" and v.concepts == dc.vocabulary() and "backlit" in v.concepts and "cat" in v.concepts
    captions = {dc._caption("dark", "cat", np.random.default_rng(i)) for i in range(30)}
    assert all(("cat" in c) for c in captions)


def test_saturation_jitter_changes_colour_and_keeps_luma():
    """The demo CLIP's saturation augmentation (recipe v3 on) must not be a lighting change: it scales each pixel's
    colour around its linear-light luma, so the luma stays (where nothing clips) and factor 1 is the identity."""
    from embedlab.colour import LUMA, srgb_to_linear
    from embedlab.demos.clip import DemoRecipe, saturate

    img = np.random.default_rng(0).integers(60, 190, (24, 24, 3), dtype=np.uint8)
    luma = lambda u8: srgb_to_linear(u8 / 255.0) @ LUMA  # noqa: E731
    spread = lambda u8: np.ptp(srgb_to_linear(u8 / 255.0), axis=2).mean()  # noqa: E731
    assert np.abs(saturate(img, 1.0).astype(int) - img).max() <= 1
    assert np.ptp(saturate(img, 0.0).astype(int), axis=2).max() <= 1  # grey
    for factor in (0.6, 1.25):
        out = saturate(img, factor)
        assert np.abs(luma(out) - luma(img)).max() < 0.01
        assert (spread(out) > spread(img)) == (factor > 1)
    lo, hi = DemoRecipe().saturation_jitter
    assert lo < 1 < hi  # on by default


def test_welllit_spatial_variants_light_the_background_mildly_without_glare():
    """Recipe v4: the spatial well-lit variants (odd seeds) keep the subject exposed under a background at most
    +0.7 EV brighter and without veiling glare (v2/v3's glaring, blown-out backgrounds taught the model that a
    brightened backlit frame is well-lit); the recipe's fields reach the renderer and its cache key."""
    from embedlab.datasets import photos
    from embedlab.demos import clip as dc

    base = dc._load_base("pkg:skimage/chelsea", 96)
    recipe = dc.DemoRecipe(photos=tuple(p.uri for p in photos.demo_photos()))
    assert (recipe.welllit_background_ev, recipe.welllit_glare, recipe.version) == ((0.0, 0.7), False, 5)
    for seed in (1, 3):
        v4 = dc.render_condition(base, "welllit", seed)
        assert np.array_equal(v4, dc.render_spatial(base, seed, (-0.3, 0.3), (0.0, 0.7), glare=False))
        v3 = dc.render_condition(base, "welllit", seed, welllit_background_ev=(0.3, 1.5), welllit_glare=True)
        assert v3.mean() > v4.mean() + 5  # the old variant: brighter,
        assert np.percentile(v3, 2) > np.percentile(v4, 2)  # its veil lifts the blacks,
        assert (v3 > 240).mean() > (v4 > 240).mean()  # and more pixels near white
    assert np.array_equal(
        dc.render_condition(base, "welllit", 2), dc.render_condition(base, "welllit", 2, "spatial", (0.3, 1.5), True)
    )  # even: global
    assert dc.DemoRecipe(welllit_glare=True).key() != dc.DemoRecipe().key()
    # the recipe's fields reach the training pool (not only render_condition's defaults)
    pool_v4 = dc.render_pool(dc.DemoRecipe(photos=("pkg:skimage/chelsea",)), range(1, 2))
    pool_v3 = dc.render_pool(
        dc.DemoRecipe(photos=("pkg:skimage/chelsea",), welllit_background_ev=(0.3, 1.5), welllit_glare=True),
        range(1, 2),
    )
    well = dc.CLASSES.index("welllit")  # one seed: the pool is one image a class
    assert np.array_equal(pool_v4[well][0], dc.render_condition(base, "welllit", 1))
    assert np.array_equal(pool_v3[well][0], dc.render_condition(base, "welllit", 1, "spatial", (0.3, 1.5), True))
    assert all(np.array_equal(a[0], b[0]) for i, (a, b) in enumerate(zip(pool_v4, pool_v3)) if i != well)


def test_training_batches_carry_the_saturation_jitter():
    """The demo CLIP's batches are the plain crops with (1, 1) and recoloured crops with the default range."""
    from embedlab.demos import clip as dc

    rng = np.random.default_rng(0)
    pool = [(rng.integers(40, 220, (80, 96, 3), dtype=np.uint8), cls, "pkg:skimage/chelsea") for cls in dc.CLASSES]
    objects = {"pkg:skimage/chelsea": ("cat",)}
    plain = dc._sample_batch(
        pool, objects, dc.DemoRecipe(batch_size=6, saturation_jitter=(1, 1)), np.random.default_rng(1)
    )
    again = dc._sample_batch(
        pool, objects, dc.DemoRecipe(batch_size=6, saturation_jitter=(1, 1)), np.random.default_rng(1)
    )
    jittered = dc._sample_batch(pool, objects, dc.DemoRecipe(batch_size=6), np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(plain[0], again[0]))
    assert not any(np.array_equal(a, b) for a, b in zip(plain[0], jittered[0]))


def test_training_batches_say_vignetted_only_of_vignetted_crops():
    """Recipe v5: a share of the crops is vignetted (dark corners) and only those may be captioned "vignetted"; a
    caption that says it is a positive for vignetted crops only."""
    from embedlab.datasets.synth import corner_centre_ratio
    from embedlab.demos import clip as dc

    pool = [(np.full((80, 96, 3), 200, np.uint8), cls, "pkg:skimage/chelsea") for cls in dc.CLASSES]
    recipe = dc.DemoRecipe(batch_size=96, saturation_jitter=(1, 1))
    imgs, caps, target = dc._sample_batch(pool, {"pkg:skimage/chelsea": ("cat",)}, recipe, np.random.default_rng(3))
    vig = [corner_centre_ratio(im) < 0.9 for im in imgs]  # the crops are flat grey unless vignetted
    said = ["vignetted" in c for c in caps]
    assert 0.3 < np.mean(vig) < 0.7 and any(said)  # vignette_p 0.5
    assert all(v for v, s in zip(vig, said) if s)
    for j in (j for j, s in enumerate(said) if s):
        assert target[:, j][~np.array(vig)].sum() == 0 and target[:, j][np.array(vig)].sum() > 0
    assert "vignetted" in dc.vocabulary() and "vignetted" not in dc.lighting_words()


def test_bias_rule_takes_the_reports_significant_finding_and_skips_lighting_words():
    """`correct` removes what the report's family-wise test finds (p_fwer < 0.05) among the added concepts, skipping
    the lighting the residual is for; a top-ranked concept the test does not find is not removed, and without a
    finding nothing is."""
    from embedlab.demos.finding import pick_bias_concept

    concepts = [
        {"direction": "adds", "concept": "well-lit", "p_fwer": 0.001},
        {"direction": "adds", "concept": "cat", "p_fwer": 0.4},
        {"direction": "adds", "concept": "bright daylight", "p_fwer": 0.001},
        {"direction": "removes", "concept": "dog", "p_fwer": 0.001},
        {"direction": "adds", "concept": "vignetted", "p_fwer": 0.002},
    ]
    assert pick_bias_concept(concepts) == "vignetted"
    assert pick_bias_concept(concepts[:4]) is None  # "cat" ranks high but is not found; "dog" is removed, not added
    assert pick_bias_concept([{"direction": "adds", "concept": "cat", "p_fwer": None}]) is None  # no test run
    # a lighting word of another condition, added toward well-lit, is a finding (the v5 demo CLIP reads the planted
    # vignette as 'dim'); the target condition's own words never are
    darker = [concepts[0], {"direction": "adds", "concept": "dim", "p_fwer": 0.001}, concepts[4]]
    assert pick_bias_concept(darker) == "dim"
    assert pick_bias_concept(darker, toward=None) == "vignetted"  # every lighting word skipped


def test_demo_end_to_end_with_the_tiny_model(tiny_demo):
    out, result, stdout = tiny_demo  # one CLI run shared with tests/test_browser.py (conftest.py)
    assert "index.html" in stdout
    arts = result["files"]
    for f in ("report.json", "report.csv", "report.md", "report.html"):
        assert (out / "report" / f).stat().st_size > 0
    for key in ("plot_pca", "plot_umap", "before_after", "enhancer", "residual", "corrected", "metrics"):
        assert Path(arts[key]).exists(), key
    assert result["bias_concept"]
    from PIL import Image

    enhanced = sorted((out / "enhanced").glob("*.png"))
    assert len(enhanced) == 4
    for f in enhanced:
        a = np.asarray(Image.open(f), dtype=np.float32) / 255
        assert 0.02 < a.mean() < 0.98 and a.std() > 0.02  # neither blank nor saturated
        assert (a >= 0.999).mean() < 0.5 and (a <= 0.001).mean() < 0.5
    summary = json.loads((out / "metrics" / "summary.json").read_text())
    for k in ("psnr", "ssim", "mean_luma"):
        assert np.isfinite(summary[k])
    assert np.isfinite(summary["residual_projection"]["enhanced"])
    links = page_links((out / "index.html").read_text())
    assert len(links) >= 8
    for link in links:
        assert (out / unquote(link)).exists(), link
    # the held-out photos never enter training or the residual
    man = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()[1:]]
    test_groups = {m["group"] for m in man if m["split"] == "test"}
    side = json.loads((out / "residual.json").read_text())
    assert "split=train" in side["from"]["selector"] and "split=train" in side["to"]["selector"]
    from embedlab.runs.store import Run

    run = Run(out / "run")
    train_rows = run.metadata.query("split == 'train'")
    assert not set(train_rows["group"]) & test_groups
    # pages and sidecars name cached files relative to the cache root, never by the user's (absolute) cache path
    cache = os.environ["EMBEDLAB_CACHE"]
    shown = [
        f
        for f in out.rglob("*")
        if f.suffix in (".html", ".json", ".md", ".csv") and cache in f.read_text(errors="replace")
    ]
    assert not shown, shown


def test_shipped_demo_clip_is_the_default_recipe_and_unpacks(tmp_path):
    """The pack under embedlab/data/demo_clip is the default recipe's model (a recipe change without a new
    `embedlab pretrain-demo --pack` fails here, not silently on a user's first run), is < 10 MB, and unpacks to a
    loadable checkpoint whose grammar texts embed as in the packed model."""
    from embedlab import models
    from embedlab.datasets import photos
    from embedlab.demos import clip as dc

    recipe = dc.DemoRecipe(photos=tuple(p.uri for p in photos.demo_photos()))
    assert dc.packaged_key() == recipe.key()
    assert (dc.PACKAGED / dc.PACKED_FILE).stat().st_size < 10_000_000
    meta = json.loads((dc.PACKAGED / "train.json").read_text())
    assert meta["recipe"]["seed"] == recipe.seed and meta["recipe_key"] == recipe.key()
    ckpt = dc.unpack_packaged(tmp_path / "clip")
    lm = models.load_model(dc.MODEL_NAME, str(ckpt), "cpu")
    e = models.encode_texts(lm, ["a backlit photo of a cat.", "a well-lit photo of a cat."])
    assert np.isfinite(e).all() and float(e[0] @ e[1]) < 0.99
    # every token of the vocabulary explain-residual and correct embed is kept, so those embeddings are the trained
    # model's (a zeroed "scene" row once moved the demo's corrected residual by 3.7e-4 and its enhancer by 0.5 dB)
    from safetensors import safe_open

    with safe_open(str(dc.PACKAGED / dc.PACKED_FILE), "pt") as f:
        kept = set(f.get_tensor("token_ids").tolist())
    assert set(lm.tokenizer(dc.vocabulary()).unique().tolist()) <= kept


def test_demo_clip_recipe_ignores_installed_wallpapers_unless_asked(monkeypatch):
    """Wallpaper photos installed on the machine (an Ubuntu desktop has some) leave the default recipe, hence the
    shipped copy and the documented figures, alone; `debian_photos=True` (`pretrain-demo --debian-photos`) adds
    them, as another recipe."""
    from embedlab.datasets import photos
    from embedlab.demos import clip as dc

    plain = dc.default_recipe()
    monkeypatch.setattr(photos, "debian_photos", lambda: ["/usr/share/backgrounds/hill.jpg"])
    assert dc.default_recipe().key() == plain.key() == dc.packaged_key()
    asked = dc.default_recipe(debian_photos=True)
    assert asked.photos == plain.photos + ("deb:/usr/share/backgrounds/hill.jpg",)
    assert asked.key() != plain.key()


@pytest.fixture(scope="module")
def demo_loop_result(tmp_path_factory):
    """One default demo run (the shipped demo CLIP, the `demo` train preset, fixed seed, the demo's fixed training
    thread count as in the measured run in analyses/results/eval_demo_loop.json) scored by
    analyses/demo/eval_loop.py."""
    from analyses.demo.eval_loop import run_eval

    return run_eval("cpu", str(tmp_path_factory.mktemp("loop")))


@pytest.mark.slow
def test_demo_loop_enhances_the_held_out_photos(demo_loop_result):
    """The closed loop on the held-out photos: the enhancer gains >= 1 dB PSNR over the input and lifts the darkest
    40% of pixels (no wall-time bound). The stopping point (the `demo` preset's 150 iterations, the end of its cosine
    schedule) was chosen on a validation set, never on these photos (analyses/results/validate_demo_schedule.json);
    the measured held-out margins are in analyses/results/eval_demo_loop.json (+1.81 dB). The bar is not a lucky
    last point: each of the last three held-out points (the last 50 iterations) is at least input + 1 dB (measured
    16.55, 16.68, 16.65 dB against 14.84)."""
    b, m = demo_loop_result["bars"], demo_loop_result["metrics"]
    assert b["psnr_ok"] and b["dark40_ok"], (b, m)
    assert m["enhanced"]["mean_luma"] > m["input"]["mean_luma"], m
    last = [p["psnr"] for p in demo_loop_result["curves"]["RAVE, corrected residual"][-3:]]
    assert len(last) == 3 and min(last) >= m["input"]["psnr"] + 1.0, last


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 15's projection bar (mean projection on the corrected residual at least halfway from the input's "
    "to thr) is not met on the held-out photos since `correct` removes the planted vignette through its image edit: "
    "measured 0.36 of the gap (0.29 and 0.36 with demo-CLIP seeds 1 and 2; the originals reach 0.70). It is met on "
    "the training photos under new seeds (0.50), not on colour photos the demo never uses (0.34), and was met with "
    "the word's direction (0.56), where the enhancer reached it by turning china's sky grey (docs/demo.md)",
)
def test_demo_loop_moves_the_held_out_projection_halfway_to_thr(demo_loop_result):
    b = demo_loop_result["bars"]
    assert b["projection_ok"], b


@pytest.mark.slow
def test_demo_finds_the_planted_bias_and_the_corrected_enhancer_shows_less_of_it(demo_loop_result):
    """The default demo's report finds a concept besides the lighting at p_fwer < 0.05 on its group-level test (13
    photo groups), `correct` removes it, and on the held-out photos the enhancer trained on the raw residual darkens
    the corners more than the one trained on the corrected residual (corner falloff vs the originals, in stops).
    Measured: 'dim' removed at p_fwer 0.001, raw +0.18 vs corrected +0.88 stops (analyses/results/eval_demo_loop.json;
    -0.39 to -0.83 over the 9 seed pairs of eval_demo_loop_seeds.json)."""
    r = demo_loop_result
    f, st = r["finding"], r["planted"]["stops"]
    assert r["bias_concept"] and f["p_fwer"] < 0.05 and f["groups"] == 13 and f["shuffle"] == "within", f
    assert st["raw"] < st["corrected"], st


@pytest.mark.slow
def test_demo_correction_takes_the_planted_vignette_out_of_the_residual(demo_loop_result):
    """The demo removes its finding through the closest image edit (the vignette), and the corrected residual is
    closer to the residual of the same world without the plant than the raw residual and than removing the word's
    text direction (measured: 0.839 raw, 0.846 word, 0.95 demo; analyses/results/demo_correction_unplanted.json)."""
    from analyses.demo.correction_unplanted import check_demo

    row = check_demo(Path(demo_loop_result["demo_folder"]))
    c = row["cos_unplanted"]
    assert row["edit"]["edit"] == "vignette" and row["edit"]["like"] == demo_loop_result["bias_concept"], row
    assert c["demo corrected"] > c["word removed"] + 0.05 and c["demo corrected"] > c["raw"] + 0.05, c


@pytest.fixture(scope="module")
def demo_clip_eval():
    from analyses.demo.eval_clip import run_eval

    return run_eval("cpu")


@pytest.mark.slow
def test_demo_clip_heldout_quality(demo_clip_eval):
    """The shipped demo CLIP on lighting variants never used in training (analyses/demo/eval_clip.py): a regression
    in the demo model's quality fails CI."""
    res = demo_clip_eval
    assert res["zero_shot_accuracy"] >= 0.90, res["zero_shot_per_class"]
    assert res["balanced"]["bottom1_is_backlit_synonym"], res["balanced"]
    # no bound on res["train_seconds"]: a wall time depends on the machine's load (analyses/ benchmarks time it)


@pytest.mark.slow
def test_demo_clip_concept_report_quality(demo_clip_eval):
    """The shipped demo CLIP (recipe v5) on held-out lighting variants: the balanced residual's top word is a
    well-lit synonym, a planted object bias ranks in the top 3 after deflation, and removing it brings the residual
    closer to the balanced one (a strict xfail from recipe v2 to v4; v5 passes all three)."""
    res = demo_clip_eval
    assert res["balanced"]["top1_is_welllit_synonym"], res["balanced"]
    assert res["planted"]["planted_object_in_top3"], res["planted"]
    assert res["planted"]["cos_with_balanced_after"] > res["planted"]["cos_with_balanced_before"], res["planted"]


def test_demo_first_line_says_what_it_trains_and_for_how_long():
    """The demo's first output line names the enhancer trainings it is about to run and their expected time."""
    from embedlab.demos.pipeline import training_notice
    from embedlab.enhancement.presets import PRESETS

    line = training_notice()
    assert f"2 small enhancer(s) of {PRESETS['demo']['iters']} iterations" in line and " min " in line
    assert "1 small enhancer(s) of 50 iterations" in training_notice(50, raw_curve=False)
