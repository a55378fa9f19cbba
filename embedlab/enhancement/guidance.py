"""Guidance modes of `embedlab train`: what steers the enhancement network besides the identity loss.

One class per mode, behind one interface, registered by name (`@register_guidance`); the trainer knows none
of them by name. Built in:

- `residual` (RAVE): a fixed direction in CLIP space, made by `embedlab residual` / `correct`;
- `latent` (CLIP-LIT-Latent): two learned vectors in CLIP space;
- `prompt` (CLIP-LIT): two learned prompts read through CLIP's text tower;
- `none`: no guidance (the control).

The interface (`GuidanceMode`): `check_config(cfg)` fails fast before any work; `prepare(trainer)` loads what
the mode needs; `loss(out)` is the unweighted guidance term of a network step (None for none) and `weight` its
weight; a mode with `refines = True` also has its own optimiser, stepped by `refine(trainer, ranking, round)`
in stages between network stages; `state()` / `load_state(st)` say what goes into the checkpoint.

Importing this module is cheap (torch is imported inside the methods, as in models.py), so the CLI can list
the registered modes without loading torch.
"""

from __future__ import annotations

import abc
import logging
import warnings
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from embedlab._validate import check_param
from embedlab.errors import EmbedlabError, IncompatibleRunError, InvalidParameterError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
_REGISTRY: dict[str, type[GuidanceMode]] = {}


class GuidanceMode:
    """The interface of a guidance mode; this base class is also the no-guidance behaviour."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    weight: ClassVar[float] = 1.0  # weight of `loss(out)` in the network's loss
    refines: ClassVar[bool] = False  # True: own optimiser, stepped by `refine` between network stages

    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError when `cfg` lacks something this mode needs (called before any work)."""

    def prepare(self, trainer) -> None:
        """Load models and create state on `trainer.dev` (called once, before the identity tower is loaded)."""

    def loss(self, out: torch.Tensor) -> torch.Tensor | None:
        """The unweighted guidance term for enhanced outputs `out` (B, 3, H, W) in [0, 1], or None."""
        return None

    def refine(self, trainer, ranking: bool, round_index: int) -> tuple[int, float]:
        """One stage of the mode's own optimiser; returns (iterations, final loss). Only for `refines` modes."""
        raise TypeError(f"guidance mode {self.name!r} has no optimiser of its own (its `refines` is False)")

    def state(self) -> dict:
        """Tensors (and optimiser state dicts) to save in the training checkpoint; keys must not clash with
        the trainer's (net, opt, step, schedule, phase)."""
        return {}

    def load_state(self, st: dict) -> None:
        """Restore what `state()` saved from a checkpoint dict `st`."""


def register_guidance(cls: type[GuidanceMode]) -> type[GuidanceMode]:
    """Class decorator: make `cls` selectable as `guidance=cls.name` (registering a name again replaces it)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty 'name' to be registered as a guidance mode.")
    old = _REGISTRY.get(cls.name)
    if old is not None and old is not cls:
        warnings.warn(
            f"Guidance mode {cls.name!r} registered again: {cls.__qualname__} replaces {old.__qualname__}.",
            stacklevel=2,
        )
    _REGISTRY[cls.name] = cls
    return cls


def list_guidance() -> dict[str, str]:
    """{name: one-line help} of the registered guidance modes, in registration order."""
    return {name: cls.help for name, cls in _REGISTRY.items()}


def get_guidance(name: str) -> type[GuidanceMode]:
    if name not in _REGISTRY:
        check_param("guidance", name, tuple(_REGISTRY), "train")
    return _REGISTRY[name]


def _frozen_encoder(lm, device):
    from embedlab.enhancement.towers import GuidanceEncoder

    for p in lm.model.parameters():
        p.requires_grad_(False)
    return GuidanceEncoder(lm).to(device)


@register_guidance
class ResidualGuidance(GuidanceMode):
    """RAVE: pull the outputs' CLIP embeddings along a fixed residual direction up to its threshold."""

    name = "residual"
    help = "RAVE: a residual direction made by `embedlab residual`/`correct` (needs residual)"

    @classmethod
    def check_config(cls, cfg) -> None:
        if not cfg.residual:
            raise InvalidParameterError(
                "The 'residual' parameter of train is required with guidance='residual': a "
                "residual .npy such as corrected.npy (made by `residual` or `correct`).",
                param="residual",
                owner="train",
            )

    @property
    def weight(self) -> float:
        from embedlab.enhancement import losses as L

        return L.W_RESIDUAL

    def prepare(self, trainer) -> None:
        import torch

        from embedlab import models
        from embedlab.analysis.residual_file import load_residual

        cfg = self.cfg
        res = load_residual(cfg.residual)
        mi = res.info["model"]
        if cfg.model and (cfg.model, cfg.pretrained) != (mi["model"], mi["pretrained"]):
            try:  # its width, for the message (a model that cannot be loaded here is named without it)
                other_dim = models.load_model(cfg.model, cfg.pretrained, "cpu").dim
            except EmbedlabError:
                other_dim = None
            if other_dim is not None and other_dim != len(res.vector):
                raise res.dimension_mismatch(other_dim, f"{cfg.model}/{cfg.pretrained}", has_model_option=True)
            raise IncompatibleRunError(
                f"The guidance model {cfg.model}/{cfg.pretrained} differs from the model residual {cfg.residual} "
                f"was made with ({mi['model']}/{mi['pretrained']}, per its sidecar); train reads the model from the "
                f"residual. Fix: pass 'model' {mi['model']} 'pretrained' {mi['pretrained']} (or leave them out), or "
                f"recreate the residual with {cfg.model}/{cfg.pretrained}."
            ).naming("model", "pretrained")
        self.lm = res.load_model(trainer.dev)
        self.v_res = torch.tensor(res.vector, dtype=torch.float32, device=trainer.dev)
        self.thr = res.thr
        log.info(
            "guidance encodes training outputs squash-resized to %d px (as the paper); the residual was "
            "computed with: %s",
            self.lm.image_size,
            mi["preprocess"][:160],
        )
        self.encoder = _frozen_encoder(self.lm, trainer.dev)

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        from embedlab.enhancement import losses as L

        return L.residual_guidance_loss(self.encoder(out), self.v_res, self.thr)


class LearnedGuidance(GuidanceMode, metaclass=abc.ABCMeta):
    """CLIP-LIT's scheme: two guidance vectors (index 0 = backlit) learned from both image sets, first by
    cross-entropy, then refined by ranking against the network's current and earlier outputs."""

    refines = True
    default_lr: ClassVar[float] = 5e-4

    @property
    def weight(self) -> float:
        from embedlab.enhancement import losses as L

        return L.W_CLIP

    @classmethod
    def check_config(cls, cfg) -> None:
        if not cfg.welllit:
            raise InvalidParameterError(
                f"The 'welllit' parameter of train is required with guidance={cfg.guidance!r}: "
                "the mode learns from both sets (MANIFEST_OR_RUN[:SELECTOR]).",
                param="welllit",
                owner="train",
            )

    @abc.abstractmethod
    def initial_param(self, device) -> torch.Tensor:
        """The learned parameter's starting value on `device`."""

    @abc.abstractmethod
    def vectors(self) -> torch.Tensor:
        """(2, d) guidance vectors (index 0 = backlit)."""

    def prepare(self, trainer) -> None:
        import torch

        from embedlab import models

        cfg = self.cfg
        self.dev = trainer.dev
        self.lm = models.load_model(cfg.model or "ViT-B-32", cfg.pretrained or "openai", self.dev)
        self.encoder = _frozen_encoder(self.lm, self.dev)
        self.param = torch.nn.Parameter(self.initial_param(self.dev))
        self.opt = torch.optim.Adam([self.param], lr=cfg.guidance_lr or self.default_lr, weight_decay=cfg.weight_decay)
        self.banks: dict[str, torch.Tensor] = {}
        self.earlier: list[torch.Tensor] = []

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        import torch

        from embedlab.enhancement import losses as L

        with torch.no_grad():
            gv = self.vectors().detach()
        return L.clip_enhance_loss(self.encoder(out), gv)

    def autocast(self):
        from embedlab import models

        return models.autocast_context(self.dev)

    def build_bank(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """CLIP features of `bank_views` augmented views per image at guidance_size px (computed once; the
        reference re-encodes on the CPU inside its data loader every iteration)."""
        import torch
        import torch.nn.functional as F

        rng = np.random.default_rng(seed)
        feats = []
        with torch.no_grad():
            for _ in range(self.cfg.bank_views):
                for s in range(0, len(images), 64):
                    x = images[s : s + 64].float() / 255.0
                    x = F.interpolate(x, size=(self.cfg.guidance_size,) * 2, mode="bilinear", align_corners=False)
                    x = augment_views(x, rng, self.cfg.augment).to(self.dev)
                    with self.autocast():
                        feats.append(self.encoder(x).float())
        return torch.cat(feats)

    def outputs_bank(self, net, backlit: torch.Tensor) -> torch.Tensor:
        """Features of the network's current outputs on the training backlit images at guidance_size px."""
        import torch
        import torch.nn.functional as F

        feats = []
        with torch.no_grad():
            for s in range(0, len(backlit), 16):
                x = backlit[s : s + 16].float().div(255.0)
                x = F.interpolate(x, size=(self.cfg.guidance_size,) * 2, mode="bilinear", align_corners=False).to(
                    self.dev
                )
                with self.autocast():
                    out, _ = net(x)
                    feats.append(self.encoder(out).float())
        return torch.cat(feats)

    def guidance_step(self, rng: np.random.Generator, ranking: bool) -> dict:
        import torch

        from embedlab.enhancement import losses as L

        n = self.cfg.guidance_batch_size
        b = self.banks["backlit"][rng.integers(0, len(self.banks["backlit"]), n)]
        w = self.banks["welllit"][rng.integers(0, len(self.banks["welllit"]), n)]
        with self.autocast():
            gv = self.vectors().float()
            if not ranking:
                feats = torch.cat([b, w])
                labels = torch.cat([torch.zeros(len(b)), torch.ones(len(w))]).long().to(self.dev)
                loss = L.guidance_init_loss(feats, labels, gv)
            else:
                earlier = [bank[rng.integers(0, len(bank), n)] for bank in self.earlier]
                s_b, s_w = L.negative_probability(b, gv), L.negative_probability(w, gv)
                loss = L.W_RANK * L.ranking_loss(s_b, s_w, [L.negative_probability(e, gv) for e in earlier])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}

    def refine(self, trainer, ranking: bool, round_index: int) -> tuple[int, float]:
        """Cross-entropy initialisation (`ranking` False) or a ranking refinement against the current and the
        previous round's outputs; +100 iterations while the final loss exceeds thr_prompt."""
        cfg = self.cfg
        if "backlit" not in self.banks:
            self.banks["backlit"] = self.build_bank(trainer.backlit, cfg.seed + 1)
            self.banks["welllit"] = self.build_bank(trainer.welllit, cfg.seed + 2)
        if ranking:
            self.earlier = (self.earlier + [self.outputs_bank(trainer.net, trainer.backlit)])[-2:]
        n = cfg.guidance_init_iters if not ranking else cfg.guidance_iters
        ext = i = 0
        while i < n:
            rng = np.random.default_rng([cfg.seed, 1_000_000 + round_index, i])
            terms = self.guidance_step(rng, ranking)
            i += 1
            if i == n and terms["loss"] > cfg.thr_prompt and ext < cfg.max_extensions:
                n += 100
                ext += 1
        return n, terms["loss"]

    def state(self) -> dict:
        return {
            "banks": dict(self.banks),
            "earlier": list(self.earlier),
            "guidance": self.param.detach().clone(),
            "guidance_opt": self.opt.state_dict(),
        }

    def load_state(self, st: dict) -> None:
        import torch

        self.banks = {k: v.to(self.dev) for k, v in st.get("banks", {}).items()}
        self.earlier = [e.to(self.dev) for e in st.get("earlier", [])]
        if "guidance" in st:
            with torch.no_grad():
                self.param.copy_(st["guidance"])
            self.opt.load_state_dict(st["guidance_opt"])


@register_guidance
class LatentGuidance(LearnedGuidance):
    """Two free vectors in CLIP's joint space, drawn from N(0, 1) with the training seed."""

    name = "latent"
    help = "CLIP-LIT-Latent: two learned vectors in CLIP space (needs welllit)"
    default_lr = 5e-4

    def initial_param(self, device) -> torch.Tensor:
        import torch

        g = torch.Generator().manual_seed(self.cfg.seed)
        return torch.randn(2, self.lm.dim, generator=g).to(device)

    def vectors(self) -> torch.Tensor:
        return self.param


@register_guidance
class PromptGuidance(LearnedGuidance):
    """Two prompts of `prompt_length` learned token embeddings (initialised from "X X ... X"), read through the
    guidance model's text tower (models.text_tower)."""

    name = "prompt"
    help = "CLIP-LIT: two learned prompts read through CLIP's text tower (needs welllit)"
    default_lr = 5e-6

    def initial_param(self, device) -> torch.Tensor:
        import torch

        tokens = self.lm.tokenizer([" ".join(["X"] * self.cfg.prompt_length)] * 2).to(device)
        eot = int(tokens[0].argmax())
        self.tokens = tokens[:, : eot + 1]  # positions after the end-of-text token cannot affect it (causal mask)
        with torch.no_grad():
            return self.lm.model.token_embedding(self.tokens).float().clone()

    def vectors(self) -> torch.Tensor:
        from embedlab import models

        return models.text_tower(self.lm.model, self.param, self.tokens)


@register_guidance
class NoGuidance(GuidanceMode):
    name = "none"
    help = "no guidance: the identity loss alone (the control)"


def augment_views(x: torch.Tensor, rng: np.random.Generator, on: bool) -> torch.Tensor:
    from embedlab.enhancement.data import augment

    return augment(x, rng, zoom=(0.5, 1.5)) if on else x
