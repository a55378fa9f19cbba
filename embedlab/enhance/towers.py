"""Frozen CLIP towers used during training: the guidance image encoder (squash-resize, as the paper) and the
identity-loss feature extractor (ResNet stem + 4 stages, or ViT intermediate blocks)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class GuidanceEncoder(torch.nn.Module):
    """L2-normalised open_clip image embeddings of [0,1] images, squash-resized to the tower's input size
    (bilinear, no crop), as CLIP-LIT/RAVE encode training outputs. Batched (the reference loops per image)."""

    def __init__(self, lm):
        super().__init__()
        self.visual = lm.model.visual
        self.size = lm.image_size
        self.register_buffer("mean", torch.tensor(lm.info["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(lm.info["std"]).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return F.normalize(self.visual((x - self.mean) / self.std).float(), dim=-1)


class IdentityFeatures(torch.nn.Module):
    """Five feature maps of a frozen open_clip image tower for the identity loss.

    ResNet towers: stem, layer1..layer4 (the paper, RN101). ViT towers: five evenly spaced blocks."""

    def __init__(self, lm):
        super().__init__()
        self.visual = lm.model.visual
        self.size = lm.image_size
        self.register_buffer("mean", torch.tensor(lm.info["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(lm.info["std"]).view(1, 3, 1, 1))
        blocks = getattr(getattr(self.visual, "transformer", None), "resblocks", None)
        if blocks is not None:
            n = len(blocks)
            self.indices = sorted({max(0, round(n * k / 5) - 1) for k in range(1, 6)})
            self.kind = "vit"
        else:
            self.indices = None
            self.kind = "resnet"
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def n_maps(self) -> int:
        return 5 if self.kind == "resnet" else len(self.indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        out = self.visual.forward_intermediates((x - self.mean) / self.std, indices=self.indices, intermediates_only=True)
        return [m.float() for m in out["image_intermediates"]]
