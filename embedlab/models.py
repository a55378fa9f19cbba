"""open_clip models: the one place embedlab creates CLIP models, resolves weights and encodes.

`--model NAME --pretrained TAG|hf-hub:ID|PATH|none` everywhere. NAME is any open_clip architecture (or one of
embedlab's registered configs: embedlab-tiny, embedlab-tiny-rn for tests, embedlab-demo for the offline demo);
TAG is an open_clip pretrained tag; `hf-hub:ORG/REPO` a Hugging Face hub model; PATH a local checkpoint file;
`none` a random initialisation with a fixed seed (tests and benchmarks only).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from embedlab.errors import ConfigError, DeviceError, ModelLoadError

log = logging.getLogger(__name__)
_CONFIGS_REGISTERED = False
RANDOM_TAGS = ("none", "random", "")
CACHE_PREFIX = "cache:"  # --pretrained cache:REL is REL under the embedlab cache folder (see _io.cache_ref)


def register_configs() -> None:
    """Register embedlab's model configs (package data) with open_clip's registry, once."""
    global _CONFIGS_REGISTERED
    if _CONFIGS_REGISTERED:
        return
    import open_clip

    cfg_dir = resources.files("embedlab") / "data" / "model_configs"
    open_clip.add_model_config(Path(str(cfg_dir)))
    _CONFIGS_REGISTERED = True


def list_models() -> list[str]:
    register_configs()
    import open_clip

    return open_clip.list_models()


def resolve_device(spec: str | None = "auto") -> Any:
    """'auto' picks CUDA when present (and logs the choice); 'cuda' without a GPU is an error, never a fallback."""
    import torch

    spec = (spec or "auto").lower()
    if spec == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("device 'auto' chose %s", dev)
        return dev
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"'device' {spec!r} was requested but no CUDA GPU is available (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda}). Use 'device' 'cpu' or 'auto'."
            ).naming("device")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"'device' {spec!r}: only {torch.cuda.device_count()} GPU(s) visible.").naming("device")
        return dev
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("'device' 'mps' was requested but MPS is not available. Use 'device' 'cpu'.").naming(
                "device"
            )
        return torch.device("mps")
    if spec == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"Unknown device {spec!r}. Choose auto, cpu, cuda, cuda:N or mps.")


@dataclass
class LoadedModel:
    """An open_clip model with its preprocessing, tokenizer and identity (what made the vectors)."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: Any
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.info["embed_dim"])

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])


def _classify_pretrained(model: str, pretrained: str | None) -> tuple[str, str, str | None]:
    """(model_name_for_open_clip, kind, pretrained_arg) where kind is random|file|hf-hub|tag."""
    p = (os.fspath(pretrained) if pretrained is not None else "").strip()  # a Path from a notebook too
    if model.startswith("hf-hub:"):
        return model, "hf-hub", None
    if p.startswith("hf-hub:"):
        return p, "hf-hub", None
    if p.lower() in RANDOM_TAGS:
        return model, "random", None
    if p.startswith(CACHE_PREFIX):  # a checkpoint in embedlab's cache, named without the user's home
        from embedlab._io import cache_dir

        p = str(cache_dir() / p[len(CACHE_PREFIX) :])
    if os.path.sep in p or p.endswith((".pt", ".pth", ".bin", ".safetensors")) or os.path.exists(p):
        if not os.path.isfile(p):
            raise ModelLoadError(
                f"The 'pretrained' checkpoint file {p} was not found. Pass an existing open_clip "
                "checkpoint file, a pretrained tag (see `embedlab models`), or hf-hub:ORG/REPO."
            ).naming("pretrained")
        return model, "file", os.path.abspath(p)
    return model, "tag", p


def _state_hash(model) -> str:
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(key.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _hub_reachable(url: str, timeout: float = 3.0) -> str | None:
    """None when a TCP connection to the URL's host opens within `timeout`, else the reason."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{parsed.hostname}:{port} unreachable ({exc})"


@contextlib.contextmanager
def _short_hub_timeouts():
    """Hub look-ups fail within seconds, not after minutes of retries, while weights are fetched; a timeout the
    user set (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT) is kept. Nothing is changed outside this block."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    wanted = {"HF_HUB_ETAG_TIMEOUT": 3, "HF_HUB_DOWNLOAD_TIMEOUT": 5}
    saved = {k: getattr(constants, k) for k in wanted if hasattr(constants, k) and k not in os.environ}
    for k in saved:
        setattr(constants, k, wanted[k])
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(constants, k, v)


def _preflight_fetch(name: str, kind: str, tag: str | None) -> None:
    """Fail within seconds when weights are neither cached nor reachable (the hub client retries for ~50 s)."""
    if kind not in ("tag", "hf-hub") or os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag) if kind == "tag" else {"hf_hub": name[len("hf-hub:") :]}
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        names = [
            cfg.get("hf_hub_filename"),
            "open_clip_model.safetensors",
            "open_clip_pytorch_model.bin",
            "open_clip_config.json",
        ]
        repo_id = "/".join(cfg["hf_hub"].rstrip("/").split("/")[:2])
        for fname in filter(None, names):
            if isinstance(try_to_load_from_cache(repo_id, fname), str):
                return
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    elif cfg.get("url"):
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if cached.exists():
            return
        endpoint = cfg["url"]
    else:
        return
    reason = _hub_reachable(endpoint)
    if reason:
        raise ModelLoadError(
            f"Cannot fetch weights for {name} / {tag or name}: {reason}, and they are not in the local cache. "
            f"On an offline machine, download the checkpoint elsewhere and pass the file as 'pretrained' "
            f"(/path/to/open_clip_model.safetensors), or set HF_HUB_OFFLINE=1 to use only cached files."
        ).naming("pretrained")


def _check_known(name: str, kind: str, arg: str | None) -> None:
    """Refuse an architecture or pretrained tag open_clip does not know, listing the choices."""
    import open_clip

    if kind != "hf-hub" and name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if m.lower().replace("-", "") == name.lower().replace("-", "")]
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ModelLoadError(
            f"Unknown model {name!r}.{hint} See `embedlab models` for the architectures open_clip knows "
            "(embedlab adds embedlab-tiny, embedlab-tiny-rn and embedlab-demo)."
        )
    if kind == "tag":
        tags = open_clip.list_pretrained_tags_by_model(name)
        if arg not in tags:
            raise ModelLoadError(
                f"Unknown pretrained tag {arg!r} for {name}. Available: {', '.join(tags) or 'none'}; "
                "or pass a local checkpoint file, hf-hub:ORG/REPO, or none (random init)."
            )


@contextlib.contextmanager
def _root_log_level(level: int | None):
    """Raise the root logger's level to `level` inside the block (None, or a root already that quiet: no change)."""
    root = logging.getLogger()
    previous = root.level
    change = level is not None and previous <= logging.WARNING
    if change:
        root.setLevel(level)
    try:
        yield
    finally:
        if change:
            root.setLevel(previous)


def _load_error(model: str, pretrained: str | None, tried: str, exc: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    return ModelLoadError(
        f"Could not load weights for {model} / {pretrained} ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). "
        f"{'HF_HUB_OFFLINE=1 is set, so nothing can be downloaded. ' if offline else ''}"
        f"If this machine is offline, download the checkpoint on a connected machine (e.g. `open_clip` caches it "
        f"under ~/.cache/huggingface) and pass the file: "
        f"'model' {model if not model.startswith('hf-hub:') else 'ARCH'}, "
        f"'pretrained' /path/to/open_clip_model.safetensors. Tried: {tried}."
    ).naming("model", "pretrained")


def load_model(model: str, pretrained: str | None = None, device: str | Any = "cpu", seed: int = 0) -> LoadedModel:
    """Create an open_clip model and its eval preprocessing; raise ModelLoadError with a fix when weights can't be
    had."""
    register_configs()
    import open_clip
    import torch

    from embedlab._io import sha256_file

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    name, kind, arg = _classify_pretrained(model, pretrained)
    _check_known(name, kind, arg)
    _preflight_fetch(name, kind, arg)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    try:
        # open_clip warns on the root logger that no weights were loaded: for `none` that is what was asked for
        with _short_hub_timeouts(), _root_log_level(logging.ERROR if kind == "random" else None):
            if kind == "random":
                created = open_clip.create_model_and_transforms(name, pretrained=None, device=dev)
            elif kind == "hf-hub":
                created = open_clip.create_model_and_transforms(name, device=dev)
            else:
                created = open_clip.create_model_and_transforms(name, pretrained=arg, device=dev)
    except Exception as exc:  # noqa: BLE001 - every fetch/parse failure gets the same helpful message
        raise _load_error(model, pretrained, arg or name, exc) from exc
    clip_model, _, preprocess = created
    clip_model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    visual = clip_model.visual
    image_size = getattr(visual, "image_size", None)
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else image_size
    pp_cfg = getattr(visual, "preprocess_cfg", {}) or {}
    weights_sha = sha256_file(arg) if kind == "file" else _state_hash(clip_model)
    embed_dim = int(
        getattr(clip_model, "embed_dim", 0)
        or clip_model.encode_image(torch.zeros(1, 3, image_size, image_size, device=dev)).shape[-1]
    )
    info = {
        "model": model,
        "pretrained": pretrained or "none",
        "pretrained_kind": kind,
        "weights_sha256": weights_sha,
        "random_init_seed": seed if kind == "random" else None,
        "embed_dim": embed_dim,
        "image_size": int(image_size),
        "mean": list(pp_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": list(pp_cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        "interpolation": pp_cfg.get("interpolation", "bicubic"),
        "resize_mode": pp_cfg.get("resize_mode", "shortest"),
        "preprocess": repr(preprocess).replace("\n", " "),
        "open_clip_version": open_clip.__version__,
        "torch_version": torch.__version__,
        "tokenizer": type(tokenizer).__name__,
        "context_length": int(getattr(tokenizer, "context_length", 77)),
        "device": str(dev),
    }
    log.info("loaded %s/%s (%s) in %.1fs on %s", model, pretrained, kind, time.perf_counter() - t0, dev)
    return LoadedModel(clip_model, preprocess, tokenizer, dev, info)


def load_verified(
    identity: dict, device: str | Any = "auto", source: str | None = None, dim_error: Any = None
) -> LoadedModel:
    """The model that made some vectors, refused when its weights or dimension differ from those recorded.

    Parameters
    ----------
    identity : dict
        'model', 'pretrained' and 'weights_sha256' (and 'embed_dim' when known), as a run's manifest or a
        residual's info['model'] records them.
    device : str or torch.device
    source : str, optional
        What recorded the identity (e.g. "run runs/a"), for the error message.
    dim_error : callable, optional
        dim_error(lm) -> the exception to raise when the widths differ (a residual's own message, which names its
        file and sidecar: `embedlab.analysis.residual_file.Residual.load_model`).

    Raises
    ------
    IncompatibleRunError
        When the weights loaded today are not those the vectors were made with.
    """
    from embedlab.errors import IncompatibleRunError

    lm = load_model(identity["model"], identity["pretrained"], device)
    want_dim = identity.get("embed_dim")
    if want_dim is not None and lm.dim != int(want_dim):
        if dim_error is not None:
            raise dim_error(lm)
        raise IncompatibleRunError(
            f"{identity['model']}/{identity['pretrained']} makes {lm.dim}-dimensional embeddings, but the vectors"
            f"{' of ' + source if source else ''} have {int(want_dim)} dimensions: they were made with another model."
        )
    if str(identity["weights_sha256"]).startswith("unverified:"):  # vectors imported (runs/importer.py): the model
        return lm  # was named, its weights never seen: nothing to verify against
    if lm.info["weights_sha256"] != identity["weights_sha256"]:
        made = f" that made {source}" if source else " the vectors were made with"
        raise IncompatibleRunError(
            f"The weights of {identity['model']}/{identity['pretrained']} (sha256 {lm.info['weights_sha256'][:12]}..., "
            f"dim {lm.dim}) differ from those{made} (sha256 {identity['weights_sha256'][:12]}..., dim {want_dim})."
        )
    return lm


class TextModelHandle:
    """A model known by its identity (from a residual's sidecar) that is created only when text must be encoded,
    so a call served entirely from the text-embedding cache never builds the network."""

    def __init__(self, model: str, pretrained: str, weights_sha256: str, dim: int, device="auto"):
        self.model_name, self.pretrained, self.device = model, pretrained, device
        self.dim = int(dim)
        self._lm: LoadedModel | None = None
        self._tokenizer = None
        name, kind, _ = _classify_pretrained(model, pretrained)
        self.open_clip_name = name
        self.info = {
            "model": model,
            "pretrained": pretrained,
            "pretrained_kind": kind,
            "weights_sha256": weights_sha256,
        }

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            register_configs()
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.open_clip_name)
            self.info.update(
                tokenizer=type(self._tokenizer).__name__,
                context_length=int(getattr(self._tokenizer, "context_length", 77)),
            )
        return self._tokenizer

    def loaded(self) -> LoadedModel:
        """The real model; refuses weights that differ from the expected identity."""
        if self._lm is None:
            self._lm = load_verified(dict(self.info, embed_dim=self.dim), self.device)
        return self._lm


def autocast_context(device):
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); a no-op on the CPU so CPU results stay bitwise."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def compute_dtype(device) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return "bfloat16-autocast" if torch.cuda.is_bf16_supported() else "float16-autocast"
    return "float32"


def _encode_text_cut(model, tokens, normalize: bool = True):
    """CLIP.encode_text with the context cut to tokens.shape[1]; exact under the causal mask."""
    return text_tower(model, model.token_embedding(tokens), tokens, normalize)


def text_tower(model, embedded, tokens, normalize: bool = False):
    """CLIP's text tower from token embeddings `embedded` (B, n, width) of `tokens` (B, n) on: positional
    embedding, causal transformer, final LayerNorm, pooling at the end-of-text token, projection -> (B, dim).
    The embeddings may be learned (CLIP-LIT's prompts); a context cut to n tokens is exact under the causal mask."""
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    n = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = embedded.to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    mask = model.attn_mask[:n, :n] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, torch_nn_linear())
            else x @ model.text_projection
        )
    return F.normalize(x, dim=-1) if normalize else x


def torch_nn_linear():
    from torch import nn

    return nn.Linear


def supports_cut_context(model) -> bool:
    """True for open_clip's CLIP class with a causal mask and argmax/last pooling (where cutting is exact)."""
    return (
        hasattr(model, "token_embedding")
        and hasattr(model, "positional_embedding")
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", "argmax") in ("argmax", "last", "eos")
    )


def encode_texts(
    lm: LoadedModel,
    texts: list[str],
    batch_size: int = 512,
    cut_context: bool = True,
    progress: bool = False,
    normalize: bool = True,
) -> np.ndarray:
    """Text embeddings, float32 (n, dim), L2-normalised unless `normalize=False` (the raw projected features
    RAVE's shift uses). Batches are cut to their longest tokenised prompt (exact under the causal mask)."""
    import torch
    import torch.nn.functional as F

    model, device = lm.model, lm.device
    out = np.empty((len(texts), lm.dim), dtype=np.float32)
    cut = cut_context and supports_cut_context(model)
    iterator = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="encode text", unit="batch", total=(len(texts) + batch_size - 1) // batch_size)
    with torch.inference_mode(), autocast_context(device):
        for start in iterator:
            tokens = lm.tokenizer(texts[start : start + batch_size]).to(device)
            if cut:
                length = int((tokens != 0).sum(1).max().item())
                feats = _encode_text_cut(model, tokens[:, : max(length, 2)], normalize)
            else:
                feats = model.encode_text(tokens)
                feats = F.normalize(feats, dim=-1) if normalize else feats
            out[start : start + len(feats)] = feats.float().cpu().numpy()
    return out


def encode_image_batch(lm: LoadedModel, pixels) -> np.ndarray:
    """L2-normalised image embeddings (float32) for a preprocessed batch (B, 3, S, S)."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode(), autocast_context(lm.device):
        feats = lm.model.encode_image(pixels.to(lm.device, non_blocking=True))
    return F.normalize(feats.float(), dim=-1).cpu().numpy()
