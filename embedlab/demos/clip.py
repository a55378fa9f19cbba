"""The offline demo CLIP: a small lighting-aware open_clip model that embedlab trains itself.

A DEMO AND TEST MODEL, not a real CLIP: it knows lighting words and the package photos' objects, nothing else.
Training data: the photos shipped inside scikit-image and scikit-learn (plus Debian wallpaper photos when
installed), rendered under five lighting conditions (well-lit, Recipe-A backlit, Recipe-B radial backlight,
global dark, global overexposed) and captioned from a small grammar (lighting synonyms x object tags). Every
training crop gets a random colour saturation, so that saturation is no lighting cue (see DemoRecipe).
The loss is a multi-positive contrastive loss: every caption whose stated attributes match an image counts as
a positive for it, so the many images that share a caption are not pushed apart. The checkpoint is an
open_clip state dict (safetensors) for the registered config `embedlab-demo`, loadable with
`--model embedlab-demo --pretrained PATH`; its vocabulary ships beside it as PATH.vocab.txt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from embedlab._io import atomic_path, atomic_write_bytes, atomic_write_json, cache_dir, read_json
from embedlab.colour import linear_to_srgb, scale_chroma, srgb_to_linear
from embedlab.datasets import photos, synth

log = logging.getLogger(__name__)
MODEL_NAME = "embedlab-demo"
CLASSES = ("welllit", "backlit", "dark", "overexposed")
SYNONYMS = {
    "welllit": ("well-lit", "evenly lit", "properly exposed", "bright daylight"),
    "backlit": ("backlit", "silhouetted", "against the light", "contre-jour"),
    "dark": ("dark", "underexposed", "dim", "murky"),
    "overexposed": ("overexposed", "washed-out", "blown-out", "faded"),
}
TEMPLATES = ("a {L} photo of a {O}.", "a photo of a {O}, {L}.", "{L} {O}", "a {O} that is {L}.")
LIGHT_ONLY = ("a {L} photo.", "{L}", "a photo that is {L}.")
OBJECT_ONLY = ("a photo of a {O}.", "{O}")
# A lens style the model also learns (recipe v5): a share of the training crops get a vignette (dark corners, one gain
# per pixel) and some of their captions say "vignetted"; the demo's well-lit set is vignetted (its planted bias).
STYLE_WORDS = ("vignetted",)
STYLE_ONLY = ("a vignetted photo.", "vignetted", "a photo with a vignette, vignetted.")


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines the trained model; its hash keys the cache."""

    seed: int = 0
    steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 50
    base_short_side: int = 96
    render_seeds: int = 12
    image_size: int = 64
    photos: tuple = field(default_factory=tuple)
    variants: str = "spatial"  # "spatial" (see render_condition) or "global" (exposure-only lighting variants)
    # every training crop's colour saturation is scaled by a factor drawn from this range ((1, 1) turns it off), so
    # that the backlit -> well-lit residual does not reward saturation (Recipe A desaturates the subject), which the
    # paper's enhancer cannot change (one gain per pixel keeps each pixel's chromaticity): see saturate()
    saturation_jitter: tuple = (0.6, 1.25)
    # the spatial well-lit variants (half the well-lit ones) light the background up to +0.7 EV above the subject,
    # without veiling glare, so that "well-lit" never means "a brightened backlit frame" (earlier recipes' results:
    # analyses/results/archive/)
    welllit_background_ev: tuple = (0.0, 0.7)
    welllit_glare: bool = False
    # recipe v5: this share of the training crops gets a lens vignette of this many stops at the corners, and this
    # share of their captions say "vignetted" (a caption that says it matches vignetted crops only); at (0.3, 0.5)
    # the demo's residual read the planted vignette as 'dim' and 'faded' before 'vignetted'
    vignette_p: float = 0.5
    vignette_ev: tuple = (1.0, 2.5)
    vignette_said: float = 0.8
    version: int = 5

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def default_recipe(debian_photos: bool = False, **overrides) -> DemoRecipe:
    """The demo CLIP's recipe: the package photos (`photos.demo_photos`), and with `debian_photos` also the Debian
    wallpaper photos installed on this machine. Those join only on request: a default that took whatever a
    machine has installed (an Ubuntu desktop ships wallpapers there) would miss the shipped copy and train for
    minutes, and give other figures than the documented ones."""
    uris = tuple(p.uri for p in photos.demo_photos())
    if debian_photos:
        uris += tuple(f"deb:{p}" for p in photos.debian_photos())
    return DemoRecipe(photos=uris, **overrides)


def photo_objects(uri: str) -> tuple[str, ...]:
    for p in photos.demo_photos():
        if p.uri == uri:
            return p.objects
    return ("scene",)


def vocabulary() -> list[str]:
    """The words and phrases of the caption grammar (lighting synonyms, the style word, then object tags)."""
    words = [s for c in CLASSES for s in SYNONYMS[c]] + list(STYLE_WORDS)
    objs = sorted({o for p in photos.demo_photos() for o in p.objects} | {"scene"})
    return words + objs


def lighting_words() -> set[str]:
    return {s for c in CLASSES for s in SYNONYMS[c]}


def _load_base(uri: str, short_side: int) -> np.ndarray:
    from PIL import Image

    arr = photos.load_photo(uri) if uri.startswith("pkg:") else np.asarray(Image.open(uri[4:]).convert("RGB"))
    img = Image.fromarray(arr)
    scale = short_side / min(img.size)
    img = img.resize(
        (max(short_side, round(img.width * scale)), max(short_side, round(img.height * scale))), Image.BICUBIC
    )
    return np.asarray(img, dtype=np.uint8)


def render_spatial(base: np.ndarray, seed: int, ev_fg: tuple, ev_bg: tuple, glare: bool) -> np.ndarray:
    """Spatially varying lighting through Recipe A's background mask with chosen exposure ranges (stops, linear
    light) for the subject (mask 0) and the background (mask 1), optionally with Recipe A's veiling glare."""
    rng = np.random.default_rng(20_000_000 + seed)
    img = base / 255.0
    m = synth.backlight_mask(img, rng)
    x = synth.srgb_to_linear(img) * (2.0 ** (m * rng.uniform(*ev_bg) + (1 - m) * rng.uniform(*ev_fg)))[..., None]
    if glare:
        x, _ = synth.add_veiling_glare(x, m, rng)
    return (synth.linear_to_srgb(x) * 255 + 0.5).astype(np.uint8)


def render_condition(
    base: np.ndarray,
    cls: str,
    seed: int,
    variants: str = "spatial",
    welllit_background_ev: tuple = DemoRecipe.welllit_background_ev,
    welllit_glare: bool = DemoRecipe.welllit_glare,
) -> np.ndarray:
    """One lighting variant of a base photo.

    "global": well-lit = +-0.3 EV; backlit alternates Recipe A (even seeds) and B (odd seeds).
    "spatial" decouples "backlit" from "bright pixels" so the backlit -> well-lit direction rewards a brighter
    subject rather than a darker frame: half the well-lit variants keep the subject exposed (ev_fg +-0.3) under a
    brighter background (ev_bg `welllit_background_ev`, with glare only if `welllit_glare`), and a third of the
    backlit ones darken only the subject (ev_fg -4..-2, ev_bg +-0.3, no glare); the others are as in "global"."""
    rng = np.random.default_rng(10_000_000 + seed)
    spatial = variants == "spatial"
    if cls == "welllit":
        if spatial and seed % 2 == 1:
            return render_spatial(base, seed, (-0.3, 0.3), tuple(welllit_background_ev), glare=welllit_glare)
        return synth.recipe_c(base, float(rng.uniform(-0.3, 0.3))).image
    if cls == "backlit":
        if spatial and seed % 3 == 2:
            return render_spatial(base, seed, (-4.0, -2.0), (-0.3, 0.3), glare=False)
        return (synth.recipe_a if seed % 2 == 0 else synth.recipe_b)(base, seed).image
    if cls == "dark":
        return synth.recipe_c(base, float(rng.uniform(-3.5, -2.0))).image
    if cls == "overexposed":
        return synth.recipe_c(base, float(rng.uniform(1.3, 2.5))).image
    raise ValueError(cls)


def render_pool(recipe: DemoRecipe, seeds: range) -> list[tuple[np.ndarray, str, str]]:
    """(image, class, photo uri) for every photo x class x seed."""
    pool = []
    for uri in recipe.photos:
        base = _load_base(uri, recipe.base_short_side)
        for cls in CLASSES:
            for seed in seeds:
                pool.append(
                    (
                        render_condition(
                            base, cls, seed, recipe.variants, recipe.welllit_background_ev, recipe.welllit_glare
                        ),
                        cls,
                        uri,
                    )
                )
    return pool


def _random_crop(img: np.ndarray, size: int, rng: np.random.Generator):
    from PIL import Image

    h, w, _ = img.shape
    frac = rng.uniform(0.6, 1.0)
    ch, cw = max(8, int(min(h, w) * frac)), max(8, int(min(h, w) * frac))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(img[y0 : y0 + ch, x0 : x0 + cw]).resize((size, size), Image.BICUBIC)
    arr = np.asarray(crop)
    return arr[:, ::-1] if rng.random() < 0.5 else arr


def _caption(cls: str | None, obj: str | None, rng: np.random.Generator) -> str:
    L = SYNONYMS[cls][rng.integers(len(SYNONYMS[cls]))] if cls else None
    if cls and obj:
        return TEMPLATES[rng.integers(len(TEMPLATES))].format(L=L, O=obj)
    if cls:
        return LIGHT_ONLY[rng.integers(len(LIGHT_ONLY))].format(L=L)
    return OBJECT_ONLY[rng.integers(len(OBJECT_ONLY))].format(O=obj)


def saturate(u8: np.ndarray, factor: float) -> np.ndarray:
    """Scale an sRGB image's colour saturation by `factor` around its luma, in linear light (as Recipe A does to
    the subject); values pushed out of [0, 1] are clipped (by linear_to_srgb)."""
    return (linear_to_srgb(scale_chroma(srgb_to_linear(u8 / 255.0), factor)) * 255 + 0.5).astype(np.uint8)


def _to_tensor(batch: list[np.ndarray], mean, std):
    import torch

    x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def train_demo_clip(recipe: DemoRecipe, out_dir: Path, device: str = "auto", progress: bool = True) -> dict:
    """Train the demo CLIP for `recipe` into out_dir (checkpoint, vocabulary, metadata). Deterministic on CPU."""
    import torch

    from embedlab import models

    dev = models.resolve_device(device)
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    t0 = time.perf_counter()
    pool = render_pool(recipe, range(recipe.render_seeds))
    t_render = time.perf_counter() - t0
    lm = models.load_model(MODEL_NAME, "none", dev, seed=recipe.seed)
    model, tok = lm.model, lm.tokenizer
    model.train()
    mean, std = lm.info["mean"], lm.info["std"]
    opt, sched = _optimizer(model, recipe)
    objects_of = {uri: photo_objects(uri) for uri in recipe.photos}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=recipe.steps, desc="pretrain-demo", unit="step", dynamic_ncols=True)
    losses = []
    for step in range(recipe.steps):
        imgs, captions, target = _sample_batch(pool, objects_of, recipe, rng)
        loss = _contrastive_loss(model, tok, imgs, captions, target, mean, std, dev)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    ckpt = _save_checkpoint(model, out_dir)
    meta = {
        "model": MODEL_NAME,
        "checkpoint": str(ckpt),
        "recipe": asdict(recipe),
        "recipe_key": recipe.key(),
        "label": "embedlab demo model: trained offline on package photos; not a general-purpose CLIP",
        "train_seconds": round(time.perf_counter() - t0, 1),
        "render_seconds": round(t_render, 1),
        "device": str(dev),
        "final_loss": float(np.mean(losses[-20:])),
        "loss_curve": losses[::10],
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    atomic_write_json(out_dir / "train.json", meta)
    return meta


def _optimizer(model, recipe: DemoRecipe):
    """AdamW (no weight decay on biases, norms, token and positional embeddings) and its warmup-cosine schedule."""
    import torch

    decay = [
        p for n, p in model.named_parameters() if p.ndim >= 2 and "token_embedding" not in n and "positional" not in n
    ]
    no_decay = [
        p
        for n, p in model.named_parameters()
        if not (p.ndim >= 2 and "token_embedding" not in n and "positional" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / recipe.steps)))
    )
    return opt, sched


def _sample_batch(pool, objects_of: dict, recipe: DemoRecipe, rng):
    """One training batch: cropped images, their captions and the (image, caption) match matrix."""
    import torch

    idx = rng.integers(0, len(pool), recipe.batch_size)
    imgs, img_keys, captions, cap_keys = [], [], [], []
    for i in idx:
        arr, cls, uri = pool[i]
        obj = objects_of[uri][rng.integers(len(objects_of[uri]))]
        crop = _random_crop(arr, recipe.image_size, rng)
        lo, hi = recipe.saturation_jitter
        crop = saturate(crop, rng.uniform(lo, hi)) if (lo, hi) != (1, 1) else crop
        vig = bool(recipe.vignette_p > 0 and rng.random() < recipe.vignette_p)
        imgs.append(synth.vignette(crop, rng.uniform(*recipe.vignette_ev)) if vig else crop)
        img_keys.append((cls, set(objects_of[uri]), vig))
        kind = rng.random()
        c_cls, c_obj = (cls, obj) if kind < 0.6 else ((cls, None) if kind < 0.85 else (None, obj))
        caption, c_vig = _caption(c_cls, c_obj, rng), None
        if vig and rng.random() < recipe.vignette_said:  # it says "vignetted": alone, or after the caption
            c_vig = True
            if rng.random() < 0.3:
                c_cls = c_obj = None
                caption = STYLE_ONLY[rng.integers(len(STYLE_ONLY))]
            else:
                caption = caption.rstrip(".") + ", vignetted."
        captions.append(caption)
        cap_keys.append((c_cls, c_obj, c_vig))
    target = torch.tensor(
        [
            [
                float((cc is None or cc == ic) and (co is None or co in iobjs) and (cv is None or iv))
                for cc, co, cv in cap_keys
            ]
            for ic, iobjs, iv in img_keys
        ]
    )
    return imgs, captions, target


def _contrastive_loss(model, tok, imgs, captions, target, mean, std, dev):
    """Symmetric CLIP loss against soft targets (a caption may match several images of the batch)."""
    import torch.nn.functional as F

    pixels = _to_tensor(imgs, mean, std).to(dev)
    tokens = tok(captions).to(dev)
    img_f = F.normalize(model.encode_image(pixels), dim=-1)
    txt_f = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100) * img_f @ txt_f.T
    t_img = (target / target.sum(1, keepdim=True)).to(dev)
    t_txt = (target.T / target.T.sum(1, keepdim=True)).to(dev)
    return 0.5 * (
        -(t_img * F.log_softmax(logits, 1)).sum(1).mean() - (t_txt * F.log_softmax(logits.T, 1)).sum(1).mean()
    )


def _save_checkpoint(model, out_dir: Path) -> Path:
    """Write the weights (safetensors) and the tokenizer vocabulary into out_dir; return the checkpoint path."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / f"{MODEL_NAME}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(ckpt) as tmp:
        save_file(state, str(tmp))
    atomic_write_bytes(ckpt.with_suffix(".vocab.txt"), ("\n".join(vocabulary()) + "\n").encode())
    return ckpt


def pretrain_demo(
    out: str | os.PathLike | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    debian_photos: bool = False,
    **recipe_overrides,
) -> dict:
    """Train (or reuse from the cache) the demo CLIP. Returns {"files": {"checkpoint": Path}, "source": "cache",
    "package" or "trained", "recipe_key"}.

    `debian_photos`: also train on the installed Debian wallpaper photos (`default_recipe`; another recipe, so never
    the shipped copy). The cache key is the recipe's hash, so the second call with the same recipe is instant."""
    recipe = default_recipe(debian_photos, **recipe_overrides)
    out_dir = Path(out) if out else cache_dir() / "demo_clip" / recipe.key()
    ckpt = out_dir / f"{MODEL_NAME}.safetensors"
    found = {"recipe_key": recipe.key()}
    if ckpt.exists() and (out_dir / "train.json").exists() and not overwrite:
        if read_json(out_dir / "train.json").get("recipe_key") == recipe.key():
            log.info("demo CLIP found in cache: %s", ckpt)
            return {"files": {"checkpoint": ckpt}, "source": "cache", **found}
    if out is None and not overwrite and packaged_key() == recipe.key():
        log.info("demo CLIP: unpacking the copy shipped with embedlab (recipe %s) into %s", recipe.key(), out_dir)
        return {"files": {"checkpoint": unpack_packaged(out_dir)}, "source": "package", **found}
    log.info("training the demo CLIP (recipe %s) into %s", recipe.key(), out_dir)
    train_demo_clip(recipe, out_dir, device, progress)
    return {"files": {"checkpoint": ckpt}, "source": "trained", **found}


# A copy of the default recipe's model ships inside the package (made by `embedlab pretrain-demo --pack`), so the
# first `embedlab demo` needs no training. The token-embedding table (49,408 x 128) is most of the checkpoint, and
# training only changes the rows of the caption grammar's tokens: the pack keeps those rows, the rows of every token
# of vocabulary() and every other tensor; unpacking sets the other rows to zero. So every text `embedlab demo` embeds
# (vocabulary words with the "{}" template, the grammar's captions and prompts) embeds as in the trained model; other
# texts on the unpacked model (e.g. `--templates ensemble`, `--vocab words`) meet zeroed rows for untrained tokens,
# whose trained values were random-init anyway.
PACKAGED = Path(__file__).resolve().parents[1] / "data" / "demo_clip"
PACKED_FILE = f"{MODEL_NAME}.packed.safetensors"
TOKEN_KEY = "token_embedding.weight"


def packaged_key() -> str | None:
    """The recipe key of the shipped copy (None when absent, or when EMBEDLAB_DEMO_NO_PACKAGED is set)."""
    if os.environ.get("EMBEDLAB_DEMO_NO_PACKAGED"):
        return None
    meta = PACKAGED / "train.json"
    return read_json(meta).get("recipe_key") if meta.exists() and (PACKAGED / PACKED_FILE).exists() else None


IDLE_SECONDS_PER_STEP = 0.5  # a step of batch 128 on 2 idle cores, for the notice (analyses/results/bench_demo.json)


def first_run_notice(steps: int | None = None) -> str:
    """One line for the demo's first output: does this run train the demo CLIP, and for about how long?"""
    recipe = default_recipe(**({"steps": steps} if steps else {}))
    folder = cache_dir() / "demo_clip" / recipe.key()
    if (folder / f"{MODEL_NAME}.safetensors").exists():
        return f"demo CLIP: cached ({folder}); no training needed."
    if packaged_key() == recipe.key():
        return "demo CLIP: using the copy shipped with embedlab (recipe %s); no training needed." % recipe.key()
    minutes = IDLE_SECONDS_PER_STEP * recipe.steps * recipe.batch_size / 128 / 60
    return (
        f"demo CLIP: this first run TRAINS it ({recipe.steps} steps; about {minutes:.0f} min on 2 idle CPU cores, "
        f"several times longer on a busy machine; cached afterwards)."
    )


def pack_model(ckpt: str | os.PathLike, dest: str | os.PathLike = PACKAGED) -> Path:
    """Write the shippable pack of a trained demo CLIP (see PACKAGED) and its train.json into `dest`."""
    from safetensors.torch import load_file, save_file

    from embedlab import models

    ckpt = Path(ckpt)
    meta = read_json(ckpt.parent / "train.json")
    state = load_file(str(ckpt))
    lm = models.load_model(MODEL_NAME, "none", "cpu", seed=int(meta["recipe"]["seed"]))
    changed = (state[TOKEN_KEY] != lm.model.state_dict()[TOKEN_KEY]).any(1)
    # also every token of the vocabulary `explain-residual` and `correct` embed: a word no caption used (e.g. "scene",
    # the tag of photos that are not installed) kept its random-init row, and zeroing it on unpacking changed that
    # word's embedding, hence the vocabulary centre of `correct` and the demo's corrected residual
    changed[lm.tokenizer(vocabulary()).unique()] = True
    changed = changed.nonzero().flatten()
    packed = {k: v.contiguous() for k, v in state.items() if k != TOKEN_KEY}
    packed.update(token_rows=state[TOKEN_KEY][changed].contiguous(), token_ids=changed.contiguous())
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / PACKED_FILE) as tmp:
        save_file(packed, str(tmp), metadata={"vocab_size": str(state[TOKEN_KEY].shape[0])})
    meta = {k: v for k, v in meta.items() if k != "checkpoint"}
    atomic_write_json(
        dest / "train.json",
        dict(
            meta, packed_token_rows=int(len(changed)), packed_from_sha256=hashlib.sha256(ckpt.read_bytes()).hexdigest()
        ),
    )
    return dest / PACKED_FILE


def unpack_packaged(out_dir: Path, src: Path = PACKAGED) -> Path:
    """Rebuild a loadable checkpoint (with vocabulary and train.json) from a pack."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src / PACKED_FILE), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        vocab_size = int(f.metadata()["vocab_size"])
    rows, ids = state.pop("token_rows"), state.pop("token_ids")
    table = torch.zeros((vocab_size, rows.shape[1]), dtype=rows.dtype)
    table[ids] = rows
    state[TOKEN_KEY] = table
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / f"{MODEL_NAME}.safetensors"
    with atomic_path(ckpt) as tmp:
        save_file(state, str(tmp))
    atomic_write_bytes(ckpt.with_suffix(".vocab.txt"), ("\n".join(vocabulary()) + "\n").encode())
    atomic_write_json(
        out_dir / "train.json", dict(read_json(src / "train.json"), checkpoint=str(ckpt), source="packaged")
    )
    return ckpt
