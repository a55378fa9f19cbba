import json
from pathlib import Path

import numpy as np
import pytest


def _photos(names, size=160):
    """Package photos and seeded crops of them, as float [0,1] arrays with the short side `size`."""
    from PIL import Image

    from embedlab.datasets import photos

    out = []
    for p in photos.package_photos():
        if p.uri.split("/", 1)[1] not in names:
            continue
        im = Image.fromarray(photos.load_photo(p.uri))
        for k in range(3):
            w, h = im.size
            f = 1.0 - 0.15 * k
            crop = im.crop((0, 0, int(w * f), int(h * f))) if k % 2 else im.crop((w - int(w * f), h - int(h * f), w, h))
            s = size / min(crop.size)
            out.append(np.asarray(crop.resize((round(crop.width * s), round(crop.height * s)), Image.LANCZOS)) / 255.0)
    return out


def test_edits_are_identities_at_neutral_strength_and_move_the_right_way():
    from embedlab.analysis import probe

    rng = np.random.default_rng(0)
    x = np.clip(rng.random((40, 50, 3)) * 0.6 + 0.2, 0, 1)
    assert np.allclose(probe.edit_exposure(x, 0.0), x, atol=1e-9)
    assert np.allclose(probe.edit_gamma(x, 1.0), x) and np.allclose(probe.edit_contrast(x, 1.0), x)
    assert np.allclose(probe.edit_saturation(x, 1.0), x) and np.allclose(probe.edit_veil(x, 0.0), x, atol=1e-9)
    assert probe.edit_exposure(x, 1).mean() > x.mean() > probe.edit_exposure(x, -1).mean()
    assert probe.edit_veil(x, 0.1).min() > x.min() and probe.edit_blur(x, 0.02).std() < x.std()
    dark_half = np.concatenate([x[:, :25] * 0.2, x[:, 25:]], 1)
    lifted = probe.edit_shadows(dark_half, 2.0)
    assert lifted[:, :20].mean() > 2 * dark_half[:, :20].mean()  # the dark side brightens a lot
    assert abs(lifted[:, 30:].mean() - dark_half[:, 30:].mean()) < 0.05  # the bright side barely moves
    for e in probe.EDITS:
        y = e.fn(x, e.strengths[0])
        assert y.shape == x.shape and np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1, e.name


def test_summary_statistics():
    from embedlab.analysis import probe

    m, lo, hi = probe.mean_ci(np.array([1.0, 2.0, 3.0]))
    assert m == 2.0 and lo < 2.0 < hi and np.isclose(hi - 2.0, 2.0 - lo)
    edits = probe.select_edits(["exposure", "blur"])
    base = np.array([0.0, 0.1, 0.2])
    edited = {("exposure", s): base + 0.01 * s for s in edits[0].strengths}
    edited.update({("blur", s): base + 0.05 + 0.001 * np.arange(3) for s in edits[1].strengths})
    rows, ranking = probe.summarise(base, edited, thr=0.6, edits=edits)
    assert [r["edit"] for r in ranking] == ["blur", "exposure"]
    assert np.isclose(ranking[1]["mean_delta"], 0.02) and ranking[1]["best_strength"] == 2.0
    assert np.isclose(ranking[0]["gap_closed"], 0.051 / 0.5) and ranking[0]["significant"]
    assert len(rows) == len(edits[0].strengths) + len(edits[1].strengths)
    with pytest.raises(Exception):
        probe.select_edits(["nope"])


@pytest.mark.slow
def test_planted_blur_residual_ranks_blur_first(tmp_path, tiny_model):
    """A planted residual from sharp to blurred versions of the same photos, on a small (random-init) model: the
    probe, through the CLI's API function, must rank blur first among all edits, with a CI that excludes zero."""
    from PIL import Image

    from embedlab.analysis import probe
    from embedlab.analysis.formula import rave_residual
    from embedlab.analysis.residual_file import save_residual

    lm = tiny_model
    enc = probe.make_encoder(lm)
    photos = _photos({"astronaut", "chelsea", "rocket", "motorcycle", "flower.jpg", "coffee", "china.jpg"})
    r, thr, _, _ = rave_residual(enc(photos), enc([probe.edit_blur(x, 0.02) for x in photos]))
    save_residual(
        tmp_path / "blur.npy",
        r,
        {"thr": thr, "model": {k: lm.info[k] for k in ("model", "pretrained", "weights_sha256")}},
    )
    folder = tmp_path / "images"
    folder.mkdir()
    for i, x in enumerate(photos):
        Image.fromarray((x * 255 + 0.5).astype(np.uint8)).save(folder / f"{i:02d}.png")
    res = probe.probe_residual(tmp_path / "blur.npy", [str(folder)], tmp_path / "probe", device="cpu")
    assert res["ranking"][0]["edit"] == "blur", res["table"]
    assert res["ranking"][0]["significant"] and res["ranking"][0]["mean_delta"] > 0
    saved = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert saved["ranking"][0]["edit"] == "blur" and len(saved["images"]) == len(photos)
    for f in ("csv", "md", "png"):
        assert (tmp_path / "probe" / f"probe.{f}").stat().st_size > 0
    assert set(res["files"]) == {"json", "csv", "md", "png"} and all(Path(p).exists() for p in res["files"].values())


def test_image_specs_take_a_manifest_with_a_selector(tmp_path):
    """`PATH:SELECTOR` goes through the one Selector; a plain manifest path uses the default selector."""
    from PIL import Image

    from embedlab.analysis import probe
    from embedlab.errors import ConfigError

    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / name)
    lines = [
        {"embedlab_manifest": 1, "name": "t", "layout": "flat", "root": "."},
        {"path": "a.png", "role": "backlit", "split": "train"},
        {"path": "b.png", "role": "welllit", "split": "train"},
        {"path": "c.png", "role": "backlit", "split": "test"},
    ]
    man = tmp_path / "m.jsonl"
    man.write_text("\n".join(json.dumps(l) for l in lines) + "\n")
    names = lambda files: sorted(Path(f).name for f in files)
    assert names(probe._image_files([str(man)], "role=backlit")) == ["a.png", "c.png"]
    assert names(probe._image_files([f"{man}:backlit,split=test"], "role=welllit")) == ["c.png"]
    with pytest.raises(ConfigError, match="No images found"):
        probe._image_files([f"{man}:split=val"], "role=backlit")
