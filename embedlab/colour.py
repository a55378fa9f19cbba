"""Colour constants and transfer functions shared by the recipes, decoders, metrics and losses (NumPy only;
the transfer functions also accept torch tensors)."""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 luma weights (linear or sRGB-encoded RGB)
LUMA_601 = np.array([0.299, 0.587, 0.114])  # Rec. 601 weights (the RAVE repo's grayscale metrics)


def srgb_to_linear(x):
    """sRGB-encoded values in [0, 1] to linear light (IEC 61966-2-1), for NumPy arrays and torch tensors alike."""
    low, high = x / 12.92, ((x.clip(0) + 0.055) / 1.055) ** 2.4
    if isinstance(x, (np.ndarray, np.generic, float, int)):
        return np.where(x <= 0.04045, low, high)
    return low.where(x <= 0.04045, high)  # torch.where(cond, low, high), keeping torch out of imports


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def scale_chroma(x: np.ndarray, factor) -> np.ndarray:
    """Scale each pixel's colour around its luma by `factor` (a number, or an (..., 1) array of per-pixel factors;
    0 = grey, 1 = unchanged) in whatever encoding x is in; not clipped."""
    y = (x @ LUMA)[..., None]
    return y + (x - y) * factor
