"""The losses of CLIP-LIT and RAVE (docs/method.md section 4), as small pure functions on tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embedlab.colour import srgb_to_linear

PAPER_ID_WEIGHTS_RECON = (1.0, 1.0, 1.0, 1.0, 1.0)
PAPER_ID_WEIGHTS_GUIDED = (1.0, 1.0, 1.0, 1.0, 0.5)
W_CLIP = 16 * 20  # 320, CLIP-Enhance
W_RESIDUAL = 6 * 16 * 20  # 1920, RAVE
W_ID = 25.0
W_ID_GUIDED = 0.9 * 25.0  # 22.5
W_RANK = 200.0


def residual_guidance_loss(feats: torch.Tensor, v_res: torch.Tensor, thr: float) -> torch.Tensor:
    """RAVE's two-sided loss: mean_b (<f_b, v_res> - thr)^2, with f_b L2-normalised image embeddings."""
    return ((feats @ v_res - thr) ** 2).mean()


def negative_probability(feats: torch.Tensor, guidance: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """p_neg per image: softmax over the two guidance vectors (index 0 = backlit/negative) at logit scale 100."""
    g = F.normalize(guidance, dim=-1)
    return torch.softmax(scale * feats @ g.T, dim=-1)[:, 0]


def clip_enhance_loss(feats: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """CLIP-LIT's L_clip: the batch mean of p_neg (pushes outputs away from the negative prompt)."""
    return negative_probability(feats, guidance).mean()


def guidance_init_loss(feats: torch.Tensor, labels: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """Prompt / latent initialisation: cross-entropy of 100*<f, g_i> with label 0 = backlit, 1 = well-lit."""
    return F.cross_entropy(100.0 * feats @ F.normalize(guidance, dim=-1).T, labels)


def layer_weights(weights, n_maps: int) -> tuple[float, ...]:
    """The identity loss's per-layer weights for a tower with `n_maps` feature maps: the last weight stays on the last
    map (the paper lowers it to 0.5 in guided training for the layer nearest the embedding, which "relates more to
    colour"), the earlier weights fill the maps before it in order, padded with 1.0. RN101 gives five maps, as the
    paper; a small ViT's evenly spaced taps can land on fewer distinct blocks (four for a 4-block tower)."""
    w = tuple(float(v) for v in weights)
    if n_maps < 1 or not w:
        raise ValueError(f"need at least one feature map and one weight, got {n_maps} maps and {len(w)} weights")
    return (w[:-1] + (1.0,) * n_maps)[: n_maps - 1] + (w[-1],)


def identity_loss(
    maps_out: list[torch.Tensor], maps_in: list[torch.Tensor], weights=PAPER_ID_WEIGHTS_GUIDED
) -> torch.Tensor:
    """sum_b sum_l w_l MSE(map_l(out_b), map_l(in_b)): per-image MSE per layer, summed over the batch (as the
    reference)."""
    if len(maps_out) != len(weights):
        raise ValueError(f"{len(maps_out)} feature maps but {len(weights)} weights")
    total = maps_out[0].new_zeros(())
    for w, a, b in zip(weights, maps_out, maps_in):
        total = total + w * ((a - b) ** 2).flatten(1).mean(1).sum()
    return total


def pixel_identity_loss(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """Non-paper option: L1 in linear light, summed over the batch like the feature loss."""
    return (srgb_to_linear(out) - srgb_to_linear(inp)).abs().flatten(1).mean(1).sum()


def ranking_loss(score_backlit: torch.Tensor, score_welllit: torch.Tensor, earlier: list[torch.Tensor]) -> torch.Tensor:
    """Margin-ranking refinement (x200 applied by the caller). Scores are p_neg ("how backlit").

    `earlier` holds the network's outputs from earlier rounds ordered oldest -> newest; we require
    backlit >= oldest >= ... >= newest >= well-lit (the reference code may order R1/R2 the
    other way). Margins as the reference: 1.0 with no earlier results; 0.9/0.9/0.2 with one; 0.9/0.9/0.1/0.1 with
    two."""

    def hinge(a, b, m):
        return F.relu(m - (a - b)).mean()

    if not earlier:
        return hinge(score_backlit, score_welllit, 1.0)
    if len(earlier) == 1:
        (r1,) = earlier
        return hinge(score_backlit, score_welllit, 0.9) + hinge(score_backlit, r1, 0.9) + hinge(r1, score_welllit, 0.2)
    old, new = earlier[-2], earlier[-1]
    return (
        hinge(score_backlit, score_welllit, 0.9)
        + hinge(score_backlit, old, 0.9)
        + hinge(old, new, 0.1)
        + hinge(new, score_welllit, 0.1)
    )
