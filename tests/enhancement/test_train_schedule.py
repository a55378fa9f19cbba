"""The training schedule's options (learning-rate schedule, gradient clipping, EMA weights, identity weight, the
trained network's padding): the paper's defaults are unchanged, the `demo` preset is the only one using them, and a run
with them resumes bitwise and exports the moving average."""

import math

import pytest
import torch

from tests.enhancement.test_enhance import _opts, residual_file  # noqa: F401  (module-scoped fixture reused)


def test_scheduled_lr_constant_and_cosine():
    from embedlab.enhancement.train import scheduled_lr

    assert [scheduled_lr(1e-3, s, 10) for s in (0, 5, 9)] == [1e-3] * 3
    lrs = [scheduled_lr(1.0, s, 11, "cosine", 0.1) for s in range(11)]
    assert lrs[0] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert scheduled_lr(2.0, 3, 7, "cosine") == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    with pytest.raises(ValueError):
        scheduled_lr(1.0, 0, 10, "linear")


def test_ema_update_by_hand():
    from embedlab.enhancement.train import ema_update

    avg = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    ema_update(avg, {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}, 0.75)
    assert torch.allclose(avg["w"], torch.tensor([1.5, 3.0])) and int(avg["n"]) == 5


def test_paper_defaults_unchanged_and_only_the_demo_preset_differs():
    from embedlab.enhancement import losses as L
    from embedlab.enhancement.presets import PRESETS, TrainConfig, list_presets, make_config
    from embedlab.errors import InvalidParameterError

    cfg = TrainConfig()
    assert (cfg.lr_schedule, cfg.grad_clip, cfg.ema, cfg.identity_weight) == ("constant", None, None, L.W_ID_GUIDED)
    assert cfg.padding == "zeros"  # the paper trains its zero-padded network class
    schedule_keys = {"lr_schedule", "lr_floor", "grad_clip", "ema", "identity_weight", "padding"}
    assert [name for name, over in PRESETS.items() if set(over) & schedule_keys] == ["demo"]
    demo = make_config("demo", out="x", backlit="y", residual="z")
    assert demo.lr_schedule == "cosine" and demo.ema and demo.grad_clip and demo.identity_weight != L.W_ID_GUIDED
    assert demo.padding == "reflect"
    assert "NOT the paper's" in list_presets()["demo"]
    for bad in ({"lr_schedule": "linear"}, {"ema": 1.0}, {"grad_clip": 0.0}, {"lr_floor": 2.0}, {"padding": "same"}):
        with pytest.raises(InvalidParameterError):
            make_config("paper", backlit="y", residual="z", **bad).validate()


@pytest.mark.slow
def test_ema_run_resumes_bitwise_and_exports_the_average(tiny_run, residual_file, tmp_path):  # noqa: F811
    from embedlab.enhancement.network import load_enhancer_state
    from embedlab.enhancement.train import Trainer, make_config, train

    sched = dict(lr=1e-3, lr_schedule="cosine", lr_floor=0.1, grad_clip=0.5, ema=0.8, identity_weight=40.0)
    full = train(tmp_path / "full", preset="cpu-small", progress=False, **_opts(tiny_run, residual_file, **sched))
    part = train(
        tmp_path / "part", preset="cpu-small", progress=False, stop_after=3, **_opts(tiny_run, residual_file, **sched)
    )
    assert not part["finished"] and "grad_norm" in part["last"]
    rest = train(tmp_path / "part", preset="cpu-small", progress=False, **_opts(tiny_run, residual_file, **sched))
    a, b = load_enhancer_state(full["enhancer"]), load_enhancer_state(rest["enhancer"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    ck = torch.load(tmp_path / "full" / "ckpt_last.pt", weights_only=True)
    assert all(torch.equal(ck["ema"][k], a[k]) for k in a)  # exported = the average
    assert any(not torch.equal(ck["net"][k], a[k]) for k in a)  # ... not the last weights
    tr = Trainer(make_config("cpu-small", out=str(tmp_path / "lr"), **_opts(tiny_run, residual_file, **sched)))
    tr.run(progress=False)
    assert tr.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.1)  # the cosine's last step


@pytest.mark.slow
def test_a_run_from_before_the_schedule_options_still_resumes(tiny_run, residual_file, tmp_path):  # noqa: F811
    """config.json written before lr_schedule/grad_clip/ema/identity_weight/padding existed: their defaults are
    assumed."""
    import json

    from embedlab.enhancement.train import train

    opts = _opts(tiny_run, residual_file)
    part = train(tmp_path / "run", preset="cpu-small", progress=False, stop_after=2, **opts)
    cfg_path = tmp_path / "run" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in ("lr_schedule", "lr_floor", "grad_clip", "ema", "identity_weight", "padding"):
        del cfg[k]
    cfg_path.write_text(json.dumps(cfg))
    rest = train(tmp_path / "run", preset="cpu-small", progress=False, **opts)
    assert not part["finished"] and rest["finished"] and rest["steps"] == 8


def test_padding_option_picks_the_trained_network_class(tiny_run, residual_file, tmp_path):  # noqa: F811
    """--padding reflect trains the test-time class (what `embedlab enhance` runs); the paper's default trains the
    zero-padded training class."""
    from embedlab.enhancement.train import Trainer, make_config

    for padding in ("zeros", "reflect"):
        tr = Trainer(
            make_config("cpu-small", out=str(tmp_path / padding), padding=padding, **_opts(tiny_run, residual_file))
        )
        assert tr.net.cond1.padding_mode == padding and tr.net.ResidualBlock1.conv1.padding_mode == "reflect"
