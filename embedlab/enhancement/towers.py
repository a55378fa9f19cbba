"""Frozen CLIP towers used during training: the guidance image encoder (squash-resize, as the paper) and the
identity-loss feature extractor (ResNet stem + 4 stages, or ViT intermediate blocks)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class _FrozenTower(torch.nn.Module):
    """A frozen open_clip image tower fed [0,1] images squash-resized to its input size (bilinear, no crop)."""

    def __init__(self, lm):
        super().__init__()
        self.visual = lm.model.visual
        self.size = lm.image_size
        self.register_buffer("mean", torch.tensor(lm.info["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(lm.info["std"]).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)

    def normalised_input(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


class GuidanceEncoder(_FrozenTower):
    """L2-normalised image embeddings of training outputs, as CLIP-LIT/RAVE encode them (squash-resize), batched
    (the reference loops over images one at a time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(self.normalised_input(x)).float(), dim=-1)


class IdentityFeatures(_FrozenTower):
    """Up to five feature maps of a frozen open_clip image tower for the identity loss.

    ResNet towers: stem, layer1..layer4 (the paper, RN101). ViT towers: five evenly spaced blocks, fewer distinct
    ones when the tower has fewer than five (losses.layer_weights keeps the last weight on the last map)."""

    def __init__(self, lm):
        super().__init__(lm)
        blocks = getattr(getattr(self.visual, "transformer", None), "resblocks", None)
        if blocks is not None:
            n = len(blocks)
            self.indices = sorted({max(0, round(n * k / 5) - 1) for k in range(1, 6)})
            self.kind = "vit"
        else:
            self.indices = None
            self.kind = "resnet"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.visual.forward_intermediates(self.normalised_input(x), indices=self.indices, intermediates_only=True)
        return [m.float() for m in out["image_intermediates"]]
