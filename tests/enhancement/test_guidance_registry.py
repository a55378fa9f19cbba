"""A guidance mode defined here, outside the package, trains through the public API: the registry is the only
place a mode lives (the trainer knows no mode by name)."""

import json

import pytest
import torch

from embedlab import list_guidance, register_guidance, train
from embedlab.enhancement.guidance import GuidanceMode, get_guidance
from embedlab.errors import ConfigError


@register_guidance
class ToyBrightness(GuidanceMode):
    """Pulls the outputs' mean brightness towards a target that its own optimiser learns from the well-lit set."""

    name = "toy-brightness"
    help = "a test mode: mean brightness towards the well-lit set's (learned)"
    weight = 10.0
    refines = True
    calls = {"loss": 0, "init": 0, "rank": 0}

    @classmethod
    def check_config(cls, cfg):
        if not cfg.welllit:
            raise ConfigError("toy-brightness needs welllit")

    def prepare(self, trainer):
        self.target = torch.nn.Parameter(torch.zeros((), device=trainer.dev))
        self.opt = torch.optim.SGD([self.target], lr=0.5)

    def loss(self, out):
        type(self).calls["loss"] += 1
        return (out.float().mean() - self.target.detach()) ** 2

    def refine(self, trainer, ranking, round_index):
        type(self).calls["rank" if ranking else "init"] += 1
        goal = trainer.welllit.float().mean() / 255.0
        for _ in range(3):
            loss = (self.target - goal) ** 2
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        return 3, loss.item()

    def state(self):
        return {"toy_target": self.target.detach().clone(), "toy_opt": self.opt.state_dict()}

    def load_state(self, st):
        with torch.no_grad():
            self.target.copy_(st["toy_target"])
        self.opt.load_state_dict(st["toy_opt"])


def _options(tiny_run):
    return dict(
        guidance="toy-brightness",
        backlit=f"{tiny_run}:role=backlit,split=train",
        welllit=f"{tiny_run}:role=welllit,split=train",
        identity="pixel",
        iters=2,
        stage_iters=1,
        thr_train=1e9,
        size=32,
        crop=None,
        batch_size=2,
        device="cpu",
        display_iter=1,
        sample_iter=2,
        ckpt_iter=1,
    )


def test_a_mode_registered_from_a_test_file_trains_through_the_public_api(tiny_run, tmp_path):
    assert "toy-brightness" in list_guidance() and get_guidance("toy-brightness") is ToyBrightness
    ToyBrightness.calls.update(loss=0, init=0, rank=0)
    result = train(tmp_path / "toy", preset="cpu-small", progress=False, **_options(tiny_run))
    assert result["finished"] and result["steps"] == 2 and "guidance" in result["last"]
    # two guided network steps, an initialisation stage first and one refinement between the two stages
    assert ToyBrightness.calls == {"loss": 2, "init": 1, "rank": 1}
    ck = torch.load(tmp_path / "toy" / "ckpt_last.pt", weights_only=True)
    assert 0.0 < float(ck["toy_target"]) < 1.0  # the mode's own state is checkpointed
    assert json.loads((tmp_path / "toy" / "enhancer.json").read_text())["guidance"] == "toy-brightness"


def test_the_toy_mode_resumes_bitwise(tiny_run, tmp_path):
    from embedlab.enhancement.network import load_enhancer_state

    full = train(tmp_path / "full", preset="cpu-small", progress=False, **_options(tiny_run))
    part = train(tmp_path / "part", preset="cpu-small", progress=False, stop_after=1, **_options(tiny_run))
    assert not part["finished"]
    rest = train(tmp_path / "part", preset="cpu-small", progress=False, **_options(tiny_run))
    a, b = load_enhancer_state(full["enhancer"]), load_enhancer_state(rest["enhancer"])
    assert rest["finished"] and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_modes_and_missing_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(
        ConfigError, match=r"'guidance' parameter of train must be a str among .*'toy-brightness'.*Got 'nope'"
    ):
        train(tmp_path / "x", guidance="nope", backlit="unused", progress=False)
    with pytest.raises(ConfigError, match="toy-brightness needs welllit"):
        train(tmp_path / "x", guidance="toy-brightness", backlit="unused", progress=False)
    assert set(list_guidance()) >= {"residual", "latent", "prompt", "none"}
