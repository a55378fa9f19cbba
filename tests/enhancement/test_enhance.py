import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embedlab.enhancement import losses as L
from embedlab.enhancement.network import EnhancementNet, load_enhancer_state
from tests.conftest import REPO, shared_dir
from tests.helpers.extraction import run_cli


def test_network_size_and_identity_init():
    net = EnhancementNet("train")
    assert sum(p.numel() for p in net.parameters()) == 278_790
    net.init_identity()
    x = torch.rand(2, 3, 40, 56)
    out, light = net(x)
    assert torch.equal(out, x) and torch.all(light == 1)


def test_published_checkpoints_match_golden_outputs():
    from embedlab.enhancement.infer import enhance_array, load_enhancer

    shared = shared_dir()
    golden = shared / "checkpoints" / "golden"
    x = torch.from_numpy(np.load(golden / "input_coffee_s3.npy", allow_pickle=False))[None]
    files = sorted(golden.glob("*__*.npy"))
    assert len(files) == 9
    for f in files:
        folder, name = f.stem.split("__")
        net = load_enhancer(shared / "checkpoints" / folder / f"{name}.pth")
        y = enhance_array(net, x)[0].numpy()
        assert np.abs(y - np.load(f, allow_pickle=False)).max() < 1e-5, name


def test_downscaled_illumination_path_is_close_to_full_resolution():
    from skimage.metrics import peak_signal_noise_ratio

    from embedlab.datasets.photos import load_photo
    from embedlab.enhancement.infer import enhance_array, load_enhancer

    shared = shared_dir()
    net = load_enhancer(shared / "checkpoints" / "rave" / "rave_unpaired.pth")
    from embedlab.datasets.synth import recipe_a

    img = recipe_a(load_photo("pkg:skimage/coffee"), 0).image
    x = torch.from_numpy(img / 255.0).float().permute(2, 0, 1)[None]
    full = enhance_array(net, x, max_pixels=None)[0].numpy()
    # an image twice the pixel budget: the map is computed at 1/sqrt(2) per side and upsampled
    small = enhance_array(net, x, max_pixels=x.shape[-1] * x.shape[-2] // 2)[0].numpy()
    assert peak_signal_noise_ratio(full, small, data_range=1.0) >= 40.0


def test_losses_against_hand_computed_values():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert L.residual_guidance_loss(feats, torch.tensor([1.0, 0.0]), 0.5).item() == pytest.approx(0.25)
    assert L.residual_guidance_loss(feats, torch.tensor([1.0, 0.0]), 1.0).item() == pytest.approx(0.5)  # two-sided
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = L.negative_probability(torch.tensor([[0.01, 0.0]]), g)
    assert p.item() == pytest.approx(np.e / (np.e + 1), rel=1e-5)
    assert L.clip_enhance_loss(torch.tensor([[0.01, 0.0], [0.0, 0.01]]), g).item() == pytest.approx(0.5)
    ce = L.guidance_init_loss(torch.tensor([[0.01, 0.0]]), torch.tensor([1]), g)
    assert ce.item() == pytest.approx(np.log(1 + np.e), rel=1e-5)
    maps_out, maps_in = (
        [torch.ones(2, 1, 2, 2), torch.zeros(2, 3, 1, 1)],
        [torch.zeros(2, 1, 2, 2), torch.zeros(2, 3, 1, 1)],
    )
    assert L.identity_loss(maps_out, maps_in, (0.5, 1.0)).item() == pytest.approx(1.0)  # summed over the batch
    # the paper's lower last-layer weight stays on the last map whatever the tower's number of maps
    assert L.layer_weights(L.PAPER_ID_WEIGHTS_GUIDED, 5) == (1.0, 1.0, 1.0, 1.0, 0.5)
    assert L.layer_weights(L.PAPER_ID_WEIGHTS_GUIDED, 4) == (1.0, 1.0, 1.0, 0.5)
    assert L.layer_weights(L.PAPER_ID_WEIGHTS_GUIDED, 6) == (1.0, 1.0, 1.0, 1.0, 1.0, 0.5)
    assert L.layer_weights(L.PAPER_ID_WEIGHTS_RECON, 4) == (1.0, 1.0, 1.0, 1.0)
    b, w = torch.tensor([0.9]), torch.tensor([0.1])
    assert L.ranking_loss(b, w, []).item() == pytest.approx(0.2)
    assert L.ranking_loss(b, w, [torch.tensor([0.5])]).item() == pytest.approx(0.1 + 0.5 + 0.0)
    # oldest 0.6 must be >= newest 0.3 + 0.1: satisfied; oldest vs newest swapped costs 0.4
    assert L.ranking_loss(b, w, [torch.tensor([0.6]), torch.tensor([0.3])]).item() == pytest.approx(0.1 + 0.6)
    assert L.ranking_loss(b, w, [torch.tensor([0.3]), torch.tensor([0.6])]).item() == pytest.approx(
        0.1 + 0.3 + 0.4 + 0.0
    )
    assert L.W_RESIDUAL == 1920 and L.W_ID_GUIDED == 22.5 and L.W_CLIP == 320


@pytest.fixture(scope="module")
def residual_file(tiny_run, tmp_path_factory):
    from embedlab.analysis.residual import residual

    path = tmp_path_factory.mktemp("res") / "residual.npy"
    residual(tiny_run, "role=backlit,split=train", "role=welllit,split=train", path, bootstrap=0)
    return path


def _opts(tiny_run, residual_file, **kw):
    base = dict(
        guidance="residual",
        residual=str(residual_file),
        backlit=f"{tiny_run}:role=backlit,split=train",
        identity_model="embedlab-tiny-rn",
        identity_pretrained="none",
        iters=8,
        size=48,
        crop=32,
        batch_size=2,
        device="cpu",
        display_iter=2,
        sample_iter=4,
        ckpt_iter=4,
    )
    base.update(kw)
    return base


def test_rave_iterations_lower_the_guidance_loss(tiny_run, residual_file, tmp_path):
    from embedlab.enhancement.train import Trainer, make_config

    # the guidance term alone (identity weight 0): its loss on the training images must fall
    opts = _opts(tiny_run, residual_file, lr=2e-3, augment=False, identity_weight=0.0)
    cfg = make_config("cpu-small", out=str(tmp_path / "t"), **opts)
    tr = Trainer(cfg)
    x = tr.backlit.float() / 255.0  # every training image: what the guidance term is minimised over

    def guidance_loss():
        with torch.no_grad():
            return L.residual_guidance_loss(
                tr.guidance.encoder(tr.net(x)[0]), tr.guidance.v_res, tr.guidance.thr
            ).item()

    before = guidance_loss()
    tr.cfg.iters = 25
    tr.run(progress=False)
    assert guidance_loss() < before


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tiny_run, residual_file, tmp_path):
    from embedlab.enhancement.train import train

    full = train(tmp_path / "full", preset="cpu-small", progress=False, **_opts(tiny_run, residual_file))
    part = train(tmp_path / "part", preset="cpu-small", progress=False, stop_after=4, **_opts(tiny_run, residual_file))
    assert not part["finished"] and part["steps"] == 4
    rest = train(tmp_path / "part", preset="cpu-small", progress=False, **_opts(tiny_run, residual_file))
    assert rest["finished"] and rest["steps"] == 8
    a, b = load_enhancer_state(full["enhancer"]), load_enhancer_state(rest["enhancer"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint round-trips through weights_only loading
    ck = torch.load(tmp_path / "full" / "ckpt_last.pt", weights_only=True)
    assert all(torch.equal(ck["net"][k], a[k]) for k in a)
    assert (tmp_path / "full" / "log.csv").read_text().count("\n") == 5
    assert list((tmp_path / "full" / "samples").glob("*.png"))
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert config["guidance"] == "residual" and config["preset"] == "cpu-small"


@pytest.mark.parametrize("mode", ["latent", "prompt", "none"])
def test_other_guidance_modes_run(tiny_run, residual_file, tmp_path, mode):
    from embedlab.enhancement.train import Trainer, make_config

    opts = _opts(
        tiny_run,
        residual_file,
        guidance=mode,
        residual=None,
        model="embedlab-tiny",
        pretrained="none",
        welllit=f"{tiny_run}:role=welllit,split=train",
        iters=6,
        stage_iters=3,
        guidance_iters=4,
        guidance_init_iters=5,
        bank_views=1,
        guidance_size=32,
        thr_train=1e9,
    )
    tr = Trainer(make_config("cpu-small", out=str(tmp_path / mode), **opts))
    before = tr.guidance.param.detach().clone() if mode != "none" else None
    result = tr.run(progress=False)
    assert result["finished"]
    if mode != "none":
        assert not torch.equal(before, tr.guidance.param.detach())
        assert len(tr.guidance.earlier) >= 1  # a refinement round used earlier outputs


def test_train_refuses_a_residual_of_another_model(tiny_run, residual_file, tmp_path):
    from embedlab.enhancement.train import train
    from embedlab.errors import IncompatibleRunError

    with pytest.raises(IncompatibleRunError):
        train(
            tmp_path / "x",
            preset="cpu-small",
            progress=False,
            **_opts(tiny_run, residual_file, model="embedlab-tiny-rn", pretrained="none"),
        )


def test_cpu_training_end_to_end_through_the_cli(tiny_run, residual_file, tmp_path):
    def cli(*args):
        return run_cli(*args, timeout=900)

    r = cli(
        "train",
        "--out",
        str(tmp_path / "run"),
        "--residual",
        str(residual_file),
        "--backlit",
        f"{tiny_run}:role=backlit,split=train",
        "--preset",
        "cpu-small",
        "--identity",
        "pixel",
        "--iters",
        "10",
        "--size",
        "64",
        "--crop",
        "64",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    from embedlab.runs.store import Run

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    import shutil

    files = Run(tiny_run).metadata.query("split == 'test' and role == 'backlit'")["file"]
    for f in files:
        shutil.copy(f, inputs / Path(f).name)
    r = cli(
        "enhance",
        str(tmp_path / "run" / "enhancer.safetensors"),
        str(inputs),
        "--out",
        str(tmp_path / "enh"),
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    outs = sorted((tmp_path / "enh").glob("*.png"))
    assert len(outs) == len(files)
    from PIL import Image

    for f, o in zip(sorted(files, key=lambda p: Path(p).stem), outs):
        assert Image.open(o).size == Image.open(f).size
    r = cli(
        "evaluate",
        "--pred",
        str(tmp_path / "enh"),
        "--gt",
        str(Path(Run(tiny_run).manifest["source_manifest"])),
        "--gray",
        "--lpips",
        "--json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["paired"] == len(files) and np.isfinite(summary["psnr"]) and 0 < summary["ssim"] <= 1
    assert "psnr_gray" in summary and (summary.get("lpips") is not None or summary["notes"])


def test_synth_backlit_cli(tmp_path):
    from PIL import Image

    from embedlab.datasets.manifest import read_manifest
    from embedlab.datasets.photos import load_photo
    from embedlab.datasets.synth import recipe_a

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedlab",
            "synth-backlit",
            "pkg:skimage/chelsea",
            "--out",
            str(tmp_path / "s"),
            "--seeds",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    man = read_manifest(tmp_path / "s" / "manifest.jsonl")
    assert [e.role for e in man.entries] == ["welllit", "backlit", "backlit"]
    got = np.asarray(Image.open(tmp_path / "s" / "images" / "chelsea_A1.png"))
    assert np.array_equal(got, recipe_a(load_photo("pkg:skimage/chelsea"), 1).image)
    params = json.loads((tmp_path / "s" / "params.json").read_text())
    assert params[1]["seed"] == 1 and "ev_fg" in params[1]


def test_paired_batches_share_their_augmentation_and_the_pixel_loss_extension_trains(tiny_run, residual_file, tmp_path):
    from embedlab.enhancement.data import sample_batch
    from embedlab.enhancement.train import Trainer, make_config

    imgs = (torch.rand(5, 3, 40, 40) * 255).to(torch.uint8)
    out = sample_batch(imgs, 16, np.random.default_rng(0), True, 24, paired=imgs.clone())
    assert out.shape == (16, 6, 24, 24) and torch.equal(out[:, :3], out[:, 3:])
    tr = Trainer(make_config("cpu-small", out=str(tmp_path / "px"), **_opts(tiny_run, residual_file, pixel_loss=1.0)))
    assert tr.gt is not None and len(tr.gt) == len(tr.backlit)
    terms = tr.network_step(np.random.default_rng(0), reconstruct=False)
    assert terms["pixel"] > 0


def test_init_from_a_published_checkpoint():
    ckpt = shared_dir() / "checkpoints" / "rave" / "rave_unpaired.pth"
    net = EnhancementNet("train")
    net.load_state_dict(load_enhancer_state(ckpt))
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert torch.equal(net.cond1.weight, raw["module.cond1.weight"])
