"""The enhancement network of CLIP-LIT / RAVE (docs/method.md section 4): 278,790 parameters, no downsampling.

It predicts a one-channel illumination map L >= 0 and returns clamp(I / L, 0, 1). Training uses zero padding
in cond1/condx/condy/cond_add1 (`padding="train"`); the published test-time class uses reflect padding there
(`padding="test"`). Residual-block convs are always reflect-padded; the pyramid-pooling fuse conv always uses
zero padding. Parameter names match the published checkpoints (after stripping their `module.` prefix).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from embedlab._io import load_weights_file
from embedlab.errors import ConfigError, IncompatibleRunError

TRAIN_EPS = 1e-9


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, padding_mode="reflect")
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        return F.leaky_relu(self.conv2(y) + x, 0.2)


class PyramidPooling(nn.Module):
    """Average-pool to 1, 2, 3 and 6 bins, 1x1 conv 32->8 + PReLU, upsample, concat, 3x3 zero-padded fuse."""

    def __init__(self, channels: int = 32, reduced: int = 8, bins=(1, 2, 3, 6)):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, reduced, 1, bias=False), nn.PReLU())
            for b in bins
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + reduced * len(bins), channels, 3, padding=1, bias=False), nn.PReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        feats = [x] + [F.interpolate(f(x), size, mode="bilinear", align_corners=True) for f in self.features]
        return self.fuse(torch.cat(feats, 1))


class EnhancementNet(nn.Module):
    """CLIP-LIT's small Retinex-style enhancer. forward(x) -> (enhanced, illumination)."""

    def __init__(self, padding: str = "train"):
        super().__init__()
        if padding not in ("train", "test"):
            raise ValueError("padding must be 'train' (zero) or 'test' (reflect)")
        mode = "zeros" if padding == "train" else "reflect"
        self.padding = padding
        self.cond1 = nn.Conv2d(3, 32, 3, padding=1, padding_mode=mode)
        self.ResidualBlock1 = ResidualBlock(32)
        self.ResidualBlock2 = ResidualBlock(32)
        self.PPM1 = PyramidPooling(32, 8)
        self.condx = nn.Conv2d(32, 64, 3, padding=1, padding_mode=mode)
        self.ResidualBlock3 = ResidualBlock(64)
        self.ResidualBlock4 = ResidualBlock(64)
        self.condy = nn.Conv2d(64, 32, 3, padding=1, padding_mode=mode)
        self.ResidualBlock5 = ResidualBlock(32)
        self.ResidualBlock6 = ResidualBlock(32)
        self.cond_add1 = nn.Conv2d(32, 1, 3, padding=1, padding_mode=mode)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The published initialisation: conv weights ~ N(0, 0.02); biases keep PyTorch's default."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def init_identity(self) -> None:
        """Final conv weights zero and bias 1: L == 1 everywhere, so the output equals the input exactly."""
        with torch.no_grad():
            self.cond_add1.weight.zero_()
            self.cond_add1.bias.fill_(1.0)

    def illumination(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.cond1(x), 0.2)
        y = self.ResidualBlock2(self.ResidualBlock1(y))
        y = self.PPM1(y)
        y = self.condx(y)
        y = self.ResidualBlock4(self.ResidualBlock3(y))
        y = self.condy(y)
        y = self.ResidualBlock6(self.ResidualBlock5(y))
        return F.relu(self.cond_add1(y))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        light = self.illumination(x)
        eps = TRAIN_EPS if self.padding == "train" else 0.0
        return apply_illumination(x, light, eps), light


def apply_illumination(x: torch.Tensor, light: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """clamp(I / (L + eps), 0, 1); with eps = 0 (the published test time) a zero L gives 1 (or 0 for I = 0)."""
    out = x / (light + eps)
    return torch.nan_to_num(out, nan=0.0, posinf=1.0).clamp(0, 1)


def strip_module_prefix(state: dict) -> dict:
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def load_enhancer_state(path: str | os.PathLike) -> dict:
    """A state dict for EnhancementNet from embedlab's safetensors/ckpt or a published .pth (keys 'module.*')."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"Checkpoint {p} not found.")
    if p.is_dir():  # a training run's folder, most often: name the file in it
        found = next((p / n for n in ("enhancer.safetensors", "ckpt_last.pt") if (p / n).is_file()), None)
        fix = f"pass {found}" if found else f"pass the enhancer.safetensors that `embedlab train --out {p}` writes"
        raise ConfigError(
            f"Checkpoint {p} is a folder; a checkpoint is a file (enhancer.safetensors, ckpt_last.pt or a published "
            f"CLIP-LIT/RAVE .pth). Fix: {fix}."
        )
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = load_weights_file(p, "the network's state_dict")
        if isinstance(state, dict) and "net" in state and isinstance(state["net"], dict):
            state = state["net"]
    if not isinstance(state, dict):
        raise IncompatibleRunError(f"{p} holds a {type(state).__name__}, not a state dict of the enhancement network.")
    state = strip_module_prefix(state)
    expected = set(EnhancementNet().state_dict())
    if set(state) != expected:
        missing, extra = expected - set(state), set(state) - expected
        raise IncompatibleRunError(
            f"{p} is not an enhancement-network checkpoint (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(extra)[:3]})."
        )
    return state
