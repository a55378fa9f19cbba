"""Synthetic lighting recipes (pure NumPy on float arrays).

Recipe A (docs/method.md section 5): dual exposure in linear light through a soft background mask, veiling
glare, shadow desaturation, Poisson-Gaussian noise and highlight clipping. For the same uint8 photo and seed
it returns the same array as the reference sketch; the random draws happen in the sketch's order.
Recipe B: a radial light source behind and above the scene. Recipe C: a global exposure shift (controls).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from embedlab.colour import LUMA, linear_to_srgb, scale_chroma, srgb_to_linear


def smoothstep(a: float, b: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - a) / (b - a + 1e-8), 0, 1)
    return t * t * (3 - 2 * t)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return ndi.uniform_filter(x, size=2 * r + 1, mode="reflect")


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a box window of radius r."""
    mean_i, mean_p = _box(guide, r), _box(src, r)
    a = (_box(guide * src, r) - mean_i * mean_p) / (_box(guide * guide, r) - mean_i * mean_i + eps)
    return _box(a, r) * guide + _box(mean_p - a * mean_i, r)


def sky_mask(img: np.ndarray) -> np.ndarray:
    """Heuristic sky mask: bright, blue or grey-white, smooth regions connected to the top rows."""
    h, w, _ = img.shape
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    v = img.max(-1)
    s = (v - img.min(-1)) / (v + 1e-6)
    local_sd = _local_sd(img @ LUMA, 0.01 * max(h, w))
    candidate = (v > 0.35) & ((((b - r) > 0.04) & (b >= g - 0.02)) | ((s < 0.15) & (v > 0.65))) & (local_sd < 0.06)
    sky = _regions_reaching_top(candidate, max(1, h // 10))
    return ndi.gaussian_filter(sky.astype(float), 0.005 * max(h, w))


def _local_sd(y: np.ndarray, sigma: float) -> np.ndarray:
    """The standard deviation of `y` in a Gaussian window of `sigma` px (smooth regions have a small one)."""
    return np.sqrt(np.clip(ndi.gaussian_filter(y**2, sigma) - ndi.gaussian_filter(y, sigma) ** 2, 0, None))


def _regions_reaching_top(candidate: np.ndarray, rows: int) -> np.ndarray:
    """The connected regions of `candidate` that reach into its first `rows` rows."""
    labels, _ = ndi.label(candidate)
    top = np.unique(labels[:rows])
    return np.isin(labels, top[top > 0])


def _light_from_above(h: int, w: int) -> np.ndarray:
    """A ramp from 1 near the top rows to 0 toward the bottom: the light is behind and above the scene."""
    yy = np.mgrid[0:h, 0:w][0]
    return smoothstep(0.3, 0.9, 1 - yy / (h - 1))


def _subject_dip(h: int, w: int, cy: float, cx: float) -> np.ndarray:
    """A factor down to 0.65 over the subject, a Gaussian blob centred at (cy, cx)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return 1 - 0.35 * np.exp(-(((yy - cy) / (0.35 * h)) ** 2 + ((xx - cx) / (0.3 * w)) ** 2) / 2)


def backlight_mask(img: np.ndarray, rng: np.random.Generator, params: dict | None = None) -> np.ndarray:
    """Soft background mask m in [0, 1] (1 = toward the light)."""
    params = {} if params is None else params
    h, w, _ = img.shape
    y = img @ LUMA
    blur = ndi.gaussian_filter(y, 0.04 * max(h, w))
    q_lo, q_hi = rng.uniform(0.4, 0.6), rng.uniform(0.8, 0.95)
    lo, hi = np.quantile(blur, [q_lo, q_hi])
    m = np.maximum(smoothstep(lo, hi, blur), sky_mask(img))
    m = 0.7 * m + 0.3 * _light_from_above(h, w)
    cy, cx = rng.uniform(0.5, 0.7) * h, rng.uniform(0.35, 0.65) * w
    m *= _subject_dip(h, w, cy, cx)
    m = guided_filter(y, m, max(2, int(0.04 * max(h, w))), 1e-3)
    params.update(q_lo=q_lo, q_hi=q_hi, subject_cy=cy / h, subject_cx=cx / w)
    return np.clip(smoothstep(0.25, 0.75, m), 0, 1)


@dataclass
class Synthesis:
    """A rendered image (uint8 HxWx3), its mask (float HxW, or None) and the drawn parameters."""

    image: np.ndarray
    mask: np.ndarray | None
    params: dict = field(default_factory=dict)


def _check_u8(u8: np.ndarray) -> np.ndarray:
    u8 = np.asarray(u8)
    if u8.ndim != 3 or u8.shape[2] != 3 or u8.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {u8.shape} dtype {u8.dtype}")
    return u8


def _light_source(m: np.ndarray) -> tuple:
    """Where the light source sits: (row, column) of the peak of the blurred background mask `m` in the top 60% of
    the frame."""
    h, w = m.shape
    m_blur = ndi.gaussian_filter(m, 0.05 * max(h, w))
    m_blur[int(0.6 * h) :] = 0
    return np.unravel_index(m_blur.argmax(), m_blur.shape)


def add_veiling_glare(x: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Recipe A's veiling glare added to linear-light x (h, w, 3): a tinted Gaussian light source at the peak of the
    blurred background mask `m` in the top 60% of the frame, plus 2% of its strength everywhere. Draws the
    strength, the radius and the tint from `rng`, in that order."""
    h, w = m.shape
    ys, xs = _light_source(m)
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = ((yy - ys) ** 2 + (xx - xs) ** 2) / max(h, w) ** 2
    glare = rng.uniform(0.03, 0.15)
    rho = rng.uniform(0.15, 0.35)
    tint = [1, rng.uniform(0.85, 1), rng.uniform(0.65, 0.95)]
    x = x + (glare * np.exp(-d2 / (2 * rho**2)))[..., None] * tint + 0.02 * glare
    return x, {
        "glare": glare,
        "glare_radius": rho,
        "glare_tint": [float(t) for t in tint],
        "light_yx": [int(ys), int(xs)],
    }


RECIPE_A_STEPS = ("desaturation", "glare", "noise")  # the steps after the dual exposure that `omit` may leave out


def recipe_a(u8: np.ndarray, seed: int = 0, omit: tuple[str, ...] = ()) -> Synthesis:
    """Recipe A (normative): backlight by dual exposure through a background mask, glare, noise, clipping.

    `omit` leaves named steps out (an ablation: which part of the degradation does an enhancer fail to undo?);
    every random draw is still made, so the other steps stay exactly those of the full recipe for this seed."""
    u8 = _check_u8(u8)
    unknown = set(omit) - set(RECIPE_A_STEPS)
    if unknown:
        raise ValueError(f"recipe_a: unknown step(s) {sorted(unknown)} in omit; the steps are {RECIPE_A_STEPS}")
    rng = np.random.default_rng(seed)
    img = u8 / 255.0
    params: dict = {"recipe": "A", "seed": int(seed)}
    x = srgb_to_linear(img)
    m = backlight_mask(img, rng, params)
    ev_bg, ev_fg = rng.uniform(0.3, 1.5), rng.uniform(-4, -2)
    x = x * (2.0 ** (m * ev_bg + (1 - m) * ev_fg))[..., None]
    sat = rng.uniform(0.6, 0.9)
    if "desaturation" not in omit:
        x = scale_chroma(x, (m + (1 - m) * sat)[..., None])
    glared, glare_params = add_veiling_glare(x, m, rng)
    if "glare" not in omit:
        x = glared
    noise = rng.normal(size=x.shape)
    k, sigma_r = rng.uniform(5e-4, 3e-3), rng.uniform(5e-4, 2e-3)
    if "noise" not in omit:
        x = x + noise * np.sqrt(np.clip(x, 0, None) * k + sigma_r**2)
    out = (linear_to_srgb(x) * 255 + 0.5).astype(np.uint8)
    params.update(ev_bg=ev_bg, ev_fg=ev_fg, shadow_saturation=sat, **glare_params, noise_k=k, noise_sigma_r=sigma_r)
    if omit:
        params["omitted"] = [s for s in RECIPE_A_STEPS if s in omit]
    return Synthesis(out, m, _floats(params))


def recipe_b(u8: np.ndarray, seed: int = 0) -> Synthesis:
    """Recipe B: a radial light source on or above the top edge; no content mask."""
    u8 = _check_u8(u8)
    rng = np.random.default_rng(seed)
    img = u8 / 255.0
    h, w, _ = img.shape
    ys, xs = rng.uniform(-0.2, 0.15) * h, rng.uniform(0.15, 0.85) * w
    s = rng.uniform(0.25, 0.5)
    ev_fg, ev_bg = rng.uniform(-3.5, -2), rng.uniform(0.5, 1.5)
    glow = rng.uniform(0.05, 0.2)
    yy, xx = np.mgrid[0:h, 0:w]
    diag = np.hypot(h, w)
    f = np.exp(-((yy - ys) ** 2 + (xx - xs) ** 2) / (2 * (s * diag) ** 2))
    x = srgb_to_linear(img) * (2.0 ** (ev_fg + (ev_bg - ev_fg) * f))[..., None]
    x = x + glow * (f**3)[..., None] * np.array([1, 0.93, 0.8])
    out = (linear_to_srgb(x) * 255 + 0.5).astype(np.uint8)
    params = {
        "recipe": "B",
        "seed": int(seed),
        "light_y": ys / h,
        "light_x": xs / w,
        "spread": s,
        "ev_fg": ev_fg,
        "ev_bg": ev_bg,
        "glow": glow,
    }
    return Synthesis(out, f, _floats(params))


def recipe_c(u8: np.ndarray, ev: float = -1.5) -> Synthesis:
    """Recipe C: a global exposure error of `ev` stops in linear light (Afifi-style control)."""
    u8 = _check_u8(u8)
    x = srgb_to_linear(u8 / 255.0) * 2.0**ev
    out = (linear_to_srgb(x) * 255 + 0.5).astype(np.uint8)
    return Synthesis(out, None, {"recipe": "C", "ev": float(ev)})


def afifi_suffix(ev: float) -> str:
    """Afifi et al.'s file suffix for an exposure value: -1.5 -> N1.5, 1 -> P1, 0 -> 0."""
    if ev == 0:
        return "0"
    mag = f"{abs(ev):g}"
    return ("N" if ev < 0 else "P") + mag


RECIPES = {
    "A": "backlight: a darkened subject against a bright background, via a background mask",
    "B": "radial light: a bright source falling off across the frame",
    "C": "global exposure error (over- and under-exposed copies at fixed EVs)",
}


def render(u8: np.ndarray, recipe: str, seed: int = 0, ev: float | None = None) -> Synthesis:
    """Dispatch by recipe name ('A', 'B' or 'C'); C takes `ev` (default -1.5)."""
    recipe = recipe.upper()
    if recipe == "A":
        return recipe_a(u8, seed)
    if recipe == "B":
        return recipe_b(u8, seed)
    if recipe == "C":
        return recipe_c(u8, -1.5 if ev is None else ev)
    if recipe == "V":  # the demo's lens vignette (`ev` stops at the corners; not a lighting recipe of RECIPES)
        ev = 2.0 if ev is None else float(ev)
        return Synthesis(vignette(u8, ev), None, {"recipe": "V", "ev": ev})
    if recipe in EDITS:  # edits that change no lighting (the audit's controls); `ev` is their strength
        return EDITS[recipe](u8, ev)
    raise ValueError(f"Unknown recipe {recipe!r}. Choose A (backlight, mask), B (radial light) or C (global exposure).")


def blur(u8: np.ndarray, sigma: float | None = None) -> Synthesis:
    """A Gaussian blur of `sigma` pixels (default 2): sharpness changes, lighting does not."""
    from scipy.ndimage import gaussian_filter

    sigma = 2.0 if sigma is None else float(sigma)
    out = gaussian_filter(_check_u8(u8).astype(np.float32), sigma=(sigma, sigma, 0))
    return Synthesis(np.clip(out + 0.5, 0, 255).astype(np.uint8), None, {"recipe": "BLUR", "ev": sigma})


def jpeg(u8: np.ndarray, quality: float | None = None) -> Synthesis:
    """A JPEG round trip at `quality` (default 10): compression artefacts, the same lighting."""
    import io

    from PIL import Image

    quality = 10 if quality is None else int(quality)
    buf = io.BytesIO()
    Image.fromarray(_check_u8(u8)).save(buf, format="JPEG", quality=quality)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return Synthesis(out, None, {"recipe": "JPEG", "ev": float(quality)})


EDITS = {"BLUR": blur, "JPEG": jpeg}


def _floats(params: dict) -> dict:
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in params.items()}


def vignette_gain(h: int, w: int, ev: float) -> np.ndarray:
    """(h, w) linear-light gain of a lens vignette: 2 ** (-ev * rho ** 2), rho the distance from the centre with the
    corners at 1 (so the corners lose `ev` stops and the centre none)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rho2 = (((yy + 0.5) / h - 0.5) ** 2 + ((xx + 0.5) / w - 0.5) ** 2) / 0.5
    return 2.0 ** (-float(ev) * rho2)


def vignette(u8: np.ndarray, ev: float) -> np.ndarray:
    """A uint8 sRGB image with a lens vignette of `ev` stops at the corners applied in linear light (one gain per
    pixel: the paper's enhancer could make or undo it)."""
    u8 = _check_u8(u8)
    x = srgb_to_linear(u8 / 255.0) * vignette_gain(*u8.shape[:2], ev)[..., None]
    return (linear_to_srgb(x) * 255 + 0.5).astype(np.uint8)


def corner_centre_ratio(u8: np.ndarray, frac: float = 0.2) -> float:
    """Mean linear-light luma of the four corner patches (each `frac` of the height and width) over that of the
    central patch of the same size: 1 for a flat field, 2 ** -ev-ish for a vignette of `ev` stops."""
    y = srgb_to_linear(np.asarray(u8, np.float64) / 255.0) @ LUMA
    h, w = y.shape
    ph, pw = max(1, int(h * frac)), max(1, int(w * frac))
    corners = np.concatenate([c.ravel() for c in (y[:ph, :pw], y[:ph, -pw:], y[-ph:, :pw], y[-ph:, -pw:])])
    cy, cx = (h - ph) // 2, (w - pw) // 2
    return float(corners.mean() / max(y[cy : cy + ph, cx : cx + pw].mean(), 1e-6))
