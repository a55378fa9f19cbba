"""The normative Recipe A sketch of shared/reference/data.md 2.2, verbatim (the test oracle)."""

# flake8: noqa
import numpy as np
from scipy import ndimage as ndi


def srgb_to_lin(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def lin_to_srgb(x):
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def smoothstep(a, b, x):
    t = np.clip((x - a) / (b - a + 1e-8), 0, 1)
    return t * t * (3 - 2 * t)


def box(x, r):
    return ndi.uniform_filter(x, size=2 * r + 1, mode="reflect")


def guided_filter(I, p, r, eps):
    mI, mp = box(I, r), box(p, r)
    a = (box(I * p, r) - mI * mp) / (box(I * I, r) - mI * mI + eps)
    return box(a, r) * I + box(mp - a * mI, r)


def sky_mask(img):
    h, w, _ = img.shape
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    v = img.max(-1)
    s = (v - img.min(-1)) / (v + 1e-6)
    Y = img @ [0.2126, 0.7152, 0.0722]
    sd = np.sqrt(
        np.clip(ndi.gaussian_filter(Y**2, 0.01 * max(h, w)) - ndi.gaussian_filter(Y, 0.01 * max(h, w)) ** 2, 0, None)
    )
    cand = (v > 0.35) & ((((b - r) > 0.04) & (b >= g - 0.02)) | ((s < 0.15) & (v > 0.65))) & (sd < 0.06)
    lab, _ = ndi.label(cand)
    top = np.unique(lab[: max(1, h // 10)])
    top = top[top > 0]
    return ndi.gaussian_filter(np.isin(lab, top).astype(float), 0.005 * max(h, w))


def backlight_mask(img, rng):
    h, w, _ = img.shape
    Y = img @ [0.2126, 0.7152, 0.0722]
    blur = ndi.gaussian_filter(Y, 0.04 * max(h, w))
    lo, hi = np.quantile(blur, [rng.uniform(0.4, 0.6), rng.uniform(0.8, 0.95)])
    m = np.maximum(smoothstep(lo, hi, blur), sky_mask(img))
    yy, xx = np.mgrid[0:h, 0:w]
    m = 0.7 * m + 0.3 * smoothstep(0.3, 0.9, 1 - yy / (h - 1))
    cy, cx = rng.uniform(0.5, 0.7) * h, rng.uniform(0.35, 0.65) * w
    m *= 1 - 0.35 * np.exp(-(((yy - cy) / (0.35 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2) / 2)
    m = guided_filter(Y, m, max(2, int(0.04 * max(h, w))), 1e-3)
    return np.clip(smoothstep(0.25, 0.75, m), 0, 1)


def synth_backlit(u8, seed=0):
    rng = np.random.default_rng(seed)
    img = u8 / 255.0
    h, w, _ = img.shape
    x = srgb_to_lin(img)
    m = backlight_mask(img, rng)
    x = x * (2.0 ** (m * rng.uniform(0.3, 1.5) + (1 - m) * rng.uniform(-4, -2)))[..., None]
    Y = x @ [0.2126, 0.7152, 0.0722]
    x = Y[..., None] + (x - Y[..., None]) * (m + (1 - m) * rng.uniform(0.6, 0.9))[..., None]
    mb = ndi.gaussian_filter(m, 0.05 * max(h, w))
    mb[int(0.6 * h) :] = 0
    ys, xs = np.unravel_index(mb.argmax(), mb.shape)
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = ((yy - ys) ** 2 + (xx - xs) ** 2) / max(h, w) ** 2
    g = rng.uniform(0.03, 0.15)
    x = (
        x
        + (g * np.exp(-d2 / (2 * rng.uniform(0.15, 0.35) ** 2)))[..., None]
        * [1, rng.uniform(0.85, 1), rng.uniform(0.65, 0.95)]
        + 0.02 * g
    )
    x = x + rng.normal(size=x.shape) * np.sqrt(
        np.clip(x, 0, None) * rng.uniform(5e-4, 3e-3) + rng.uniform(5e-4, 2e-3) ** 2
    )
    return (lin_to_srgb(x) * 255 + 0.5).astype(np.uint8), m  # (backlit image, mask); the original is the paired GT
