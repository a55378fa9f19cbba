"""`embedlab train`: the enhancement network guided by a residual (RAVE), learned latent vectors
(CLIP-LIT-Latent), learned prompts (CLIP-LIT), or nothing (control).

Training run folder: config.json (resolved), log.csv, samples/step_XXXXXX.png, ckpt_last.pt (network, optimiser,
guidance state, feature banks, step; loadable with torch.load(weights_only=True)), enhancer.safetensors +
enhancer.json (final weights for `embedlab enhance`). Rerunning the same command resumes from ckpt_last.pt;
batches are drawn from an RNG seeded by (seed, step), so a resumed CPU run is bitwise equal to an
uninterrupted one.
"""
from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_write_json, read_json
from ..errors import ConfigError, IncompatibleRunError
from . import losses as L
from .data import load_resized, resolve_images, resolve_pairs, sample_batch
from .network import EnhancementNet, strip_module_prefix

log = logging.getLogger(__name__)
GUIDANCE_MODES = ("residual", "latent", "prompt", "none")


@dataclass
class TrainConfig:
    """Defaults are the paper's (method.md 1.6, 2.4); `preset='cpu-small'` shrinks them for CPU runs."""

    out: str = "train_run"
    guidance: str = "residual"
    residual: str | None = None
    backlit: str | None = None
    welllit: str | None = None
    model: str | None = None                  # guidance CLIP for latent/prompt (residual mode reads the sidecar)
    pretrained: str | None = None
    identity: str = "clip"                    # clip (feature loss through --identity-model) or pixel (non-paper)
    identity_model: str = "RN101"
    identity_pretrained: str = "openai"
    init: str = "reconstruct"                 # reconstruct | identity | path to a checkpoint
    iters: int = 5200                         # network iterations, reconstruction included (RAVE's best round ends at 5200)
    recon_iters: int = 1000
    stage_iters: int = 2100                   # network iterations per stage (RAVE blocks; CLIP-LIT UNet stages)
    guidance_iters: int = 1000                # prompt/latent refinement iterations per cycle
    guidance_init_iters: int = 8000           # prompt/latent cross-entropy initialisation
    thr_train: float = 90.0                   # +60 network iterations while the stage-end loss exceeds this
    thr_prompt: float = 60.0                  # +100 refinement iterations while the loss exceeds this
    max_extensions: int = 10
    lr: float = 2e-5
    weight_decay: float = 1e-3
    guidance_lr: float | None = None          # default: 5e-4 latent, 5e-6 prompt
    batch_size: int = 8
    guidance_batch_size: int = 16
    size: int = 512                           # images are squash-resized to size x size, then augmented
    guidance_size: int = 256                  # size of the prompt/latent learning views (the reference uses 256)
    crop: int | None = None                   # optional random crop after resizing (small CPU runs)
    augment: bool = True
    bank_views: int = 4                       # augmented views per image in the prompt/latent feature banks
    prompt_length: int = 16
    pixel_loss: float = 0.0                   # EXTENSION, off by default: weight of an L1 to the paired GT (not in the paper)
    display_iter: int = 20
    sample_iter: int = 200
    ckpt_iter: int = 200
    seed: int = 0
    device: str = "auto"
    preset: str = "paper"

    def validate(self) -> None:
        if self.guidance not in GUIDANCE_MODES:
            raise ConfigError(f"The 'guidance' option of train must be one of {GUIDANCE_MODES}. Got {self.guidance!r}.")
        if self.guidance == "residual" and not self.residual:
            raise ConfigError("--guidance residual needs --residual corrected.npy (made by `embedlab residual`/`correct`).")
        if not self.backlit:
            raise ConfigError("train needs --backlit MANIFEST_OR_RUN (the images to enhance).")
        if self.guidance in ("latent", "prompt") and not self.welllit:
            raise ConfigError(f"--guidance {self.guidance} learns from both sets: pass --welllit MANIFEST_OR_RUN.")
        if self.identity not in ("clip", "pixel"):
            raise ConfigError(f"--identity must be clip or pixel. Got {self.identity!r}.")
        for name in ("iters", "batch_size", "size", "stage_iters"):
            if getattr(self, name) < 1:
                raise ConfigError(f"The '{name}' option of train must be >= 1. Got {getattr(self, name)}.")


PRESETS = {
    "paper": {},
    # A CPU-sized schedule: identity init (no reconstruction warm-up), 128 px crops of 256 px images, batch 4,
    # short stages; the paper's learning rate (higher rates let the guidance darken whole images within 150 steps).
    "cpu-small": {"init": "identity", "iters": 200, "recon_iters": 0, "stage_iters": 100, "guidance_iters": 25,
                  "guidance_init_iters": 150, "batch_size": 4, "size": 256, "crop": 128, "guidance_size": 128,
                  "lr": 2e-5, "display_iter": 10, "sample_iter": 50, "ckpt_iter": 50, "bank_views": 2,
                  "max_extensions": 1},
}


def make_config(preset: str = "paper", **overrides) -> TrainConfig:
    if preset not in PRESETS:
        raise ConfigError(f"Unknown preset {preset!r}. Available: {', '.join(PRESETS)}.")
    base = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(base) - known
    if unknown:
        raise ConfigError(f"Unknown train option(s): {sorted(unknown)}")
    return TrainConfig(preset=preset, **base)


def load_enhancer_state(path: str | os.PathLike) -> dict:
    """A state dict for EnhancementNet from embedlab's safetensors/ckpt or a published .pth (keys 'module.*')."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"Checkpoint {p} not found.")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "net" in state and isinstance(state["net"], dict):
            state = state["net"]
    state = strip_module_prefix(state)
    expected = set(EnhancementNet().state_dict())
    if set(state) != expected:
        missing, extra = expected - set(state), set(state) - expected
        raise IncompatibleRunError(f"{p} is not an enhancement-network checkpoint (missing {sorted(missing)[:3]}, "
                                   f"unexpected {sorted(extra)[:3]}).")
    return state


class Trainer:
    """Holds the network, the frozen towers, the guidance state and the schedule; `run()` trains to cfg.iters."""

    def __init__(self, cfg: TrainConfig):
        from .. import models

        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dev = models.resolve_device(cfg.device)
        self.cuda = self.dev.type == "cuda"
        torch.manual_seed(cfg.seed)
        self.net = EnhancementNet("train").to(self.dev)
        self._init_network()
        if self.cuda:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self._load_guidance_model()
        self._load_identity_model()
        self.gt = None
        if cfg.pixel_loss > 0:   # the extension: pairs from the manifest's "gt" (not in the paper)
            self.backlit_paths, gt_paths = resolve_pairs(cfg.backlit, "role=backlit")
            self.gt = load_resized(gt_paths, cfg.size)
            log.info("pixel loss (an extension, not in the paper): weight %g, %d pairs", cfg.pixel_loss, len(gt_paths))
        else:
            self.backlit_paths = resolve_images(cfg.backlit, "role=backlit")
        self.welllit_paths = resolve_images(cfg.welllit, "role=welllit") if cfg.welllit else []
        self.backlit = load_resized(self.backlit_paths, cfg.size)
        self.welllit = load_resized(self.welllit_paths, cfg.size) if self.welllit_paths else None
        self.step = 0
        self.schedule_state = {"phase": "init", "stage_end": None, "extensions": 0, "round": 0}
        self.banks: dict[str, torch.Tensor] = {}
        self.earlier: list[torch.Tensor] = []

    # ----------------------------------------------------------------- setup
    def _init_network(self) -> None:
        init = self.cfg.init
        if init == "identity":
            self.net.init_identity()
        elif init != "reconstruct":
            self.net.load_state_dict(load_enhancer_state(init))

    def _load_guidance_model(self) -> None:
        from .. import models
        from ..residual import load_residual

        cfg = self.cfg
        self.guidance_lm = None
        self.v_res = None
        if cfg.guidance == "residual":
            res = load_residual(cfg.residual)
            mi = res.info["model"]
            if cfg.model and (cfg.model, cfg.pretrained) != (mi["model"], mi["pretrained"]):
                raise IncompatibleRunError(f"--model {cfg.model}/{cfg.pretrained} differs from the residual's model "
                                           f"{mi['model']}/{mi['pretrained']}; train reads the model from the residual.")
            self.guidance_lm = models.load_model(mi["model"], mi["pretrained"], self.dev)
            if self.guidance_lm.info["weights_sha256"] != mi["weights_sha256"] or self.guidance_lm.dim != len(res.vector):
                raise IncompatibleRunError(f"Residual {cfg.residual} was made with other weights or dimension than "
                                           f"{mi['model']}/{mi['pretrained']} (dim {len(res.vector)}).")
            self.v_res = torch.tensor(res.vector, dtype=torch.float32, device=self.dev)
            self.thr = res.thr
            log.info("guidance encodes training outputs squash-resized to %d px (as the paper); the residual was "
                     "computed with: %s", self.guidance_lm.image_size, mi["preprocess"][:160])
        elif cfg.guidance in ("latent", "prompt"):
            self.guidance_lm = models.load_model(cfg.model or "ViT-B-32", cfg.pretrained or "openai", self.dev)
        if self.guidance_lm is not None:
            from .towers import GuidanceEncoder

            for p in self.guidance_lm.model.parameters():
                p.requires_grad_(False)
            self.encoder = GuidanceEncoder(self.guidance_lm).to(self.dev)
        self.guidance_param = None
        if cfg.guidance == "latent":
            g = torch.Generator().manual_seed(cfg.seed)
            self.guidance_param = torch.nn.Parameter(torch.randn(2, self.guidance_lm.dim, generator=g).to(self.dev))
        elif cfg.guidance == "prompt":
            m = self.guidance_lm.model
            tokens = self.guidance_lm.tokenizer([" ".join(["X"] * cfg.prompt_length)] * 2).to(self.dev)
            self.prompt_eot = int(tokens[0].argmax())
            self.prompt_len = self.prompt_eot + 1       # positions after EOT cannot affect it (causal mask)
            self.prompt_tokens = tokens[:, :self.prompt_len]
            with torch.no_grad():
                init = m.token_embedding(self.prompt_tokens).float()
            self.guidance_param = torch.nn.Parameter(init.clone())
        if self.guidance_param is not None:
            lr = cfg.guidance_lr or (5e-4 if cfg.guidance == "latent" else 5e-6)
            self.guidance_opt = torch.optim.Adam([self.guidance_param], lr=lr, weight_decay=cfg.weight_decay)

    def _load_identity_model(self) -> None:
        from .. import models

        self.identity = None
        if self.cfg.identity == "pixel":
            log.info("identity loss: L1 in linear light (a non-paper option)")
            return
        from .towers import IdentityFeatures

        lm = models.load_model(self.cfg.identity_model, self.cfg.identity_pretrained, self.dev)
        for p in lm.model.parameters():
            p.requires_grad_(False)
        self.identity = IdentityFeatures(lm).to(self.dev)

    # ----------------------------------------------------------------- pieces
    def guidance_vectors(self) -> torch.Tensor:
        """(2, d) guidance (index 0 = backlit): the latent vectors, or the prompts through the text tower."""
        if self.cfg.guidance == "latent":
            return self.guidance_param
        m = self.guidance_lm.model
        x = self.guidance_param + m.positional_embedding[:self.prompt_len]
        x = m.transformer(x, attn_mask=m.attn_mask[:self.prompt_len, :self.prompt_len])
        x = m.ln_final(x)[:, self.prompt_eot]
        return x @ m.text_projection if not isinstance(m.text_projection, torch.nn.Linear) else m.text_projection(x)

    def autocast(self):
        from .. import models

        return models.autocast_context(self.dev)

    def identity_term(self, out: torch.Tensor, inp: torch.Tensor, weights) -> torch.Tensor:
        if self.identity is None:
            return L.pixel_identity_loss(out, inp)
        with torch.no_grad():
            maps_in = self.identity(inp)
        maps_out = self.identity(out)
        w = (tuple(weights) + (1.0,) * len(maps_out))[: len(maps_out)]   # ViT towers may give fewer or more maps
        return L.identity_loss(maps_out, maps_in, w)

    def network_step(self, rng: np.random.Generator, reconstruct: bool) -> dict:
        cfg = self.cfg
        x = sample_batch(self.backlit, cfg.batch_size, rng, cfg.augment, cfg.crop, self.gt).to(self.dev)
        gt = None
        if self.gt is not None:
            x, gt = x[:, :3].contiguous(), x[:, 3:].contiguous()
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        terms = {}
        with self.autocast():
            out, _ = self.net(x)
            if reconstruct:
                loss = L.W_ID * self.identity_term(out, x, L.PAPER_ID_WEIGHTS_RECON)
                terms["identity"] = loss.item() / L.W_ID
            else:
                ident = self.identity_term(out, x, L.PAPER_ID_WEIGHTS_GUIDED)
                terms["identity"] = ident.item()
                loss = L.W_ID_GUIDED * ident
                if cfg.guidance == "residual":
                    g = L.residual_guidance_loss(self.encoder(out), self.v_res, self.thr)
                    loss = loss + L.W_RESIDUAL * g
                    terms["guidance"] = g.item()
                elif cfg.guidance in ("latent", "prompt"):
                    with torch.no_grad():
                        gv = self.guidance_vectors().detach()
                    g = L.clip_enhance_loss(self.encoder(out), gv)
                    loss = loss + L.W_CLIP * g
                    terms["guidance"] = g.item()
            if gt is not None:
                px = (out.float() - gt).abs().mean()
                loss = loss + cfg.pixel_loss * px
                terms["pixel"] = px.item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        terms["loss"] = loss.item()
        return terms

    @torch.no_grad()
    def build_bank(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """CLIP features of `bank_views` augmented views per image at guidance_size px (computed once; the
        reference re-encodes on the CPU inside its data loader every iteration)."""
        rng = np.random.default_rng(seed)
        feats = []
        for _ in range(self.cfg.bank_views):
            for s in range(0, len(images), 64):
                x = images[s:s + 64].float() / 255.0
                x = F.interpolate(x, size=(self.cfg.guidance_size,) * 2, mode="bilinear", align_corners=False)
                x = augment_views(x, rng, self.cfg.augment).to(self.dev)
                with self.autocast():
                    feats.append(self.encoder(x).float())
        return torch.cat(feats)

    @torch.no_grad()
    def outputs_bank(self) -> torch.Tensor:
        """Features of the current network's outputs on the training backlit images at guidance_size px."""
        feats = []
        for s in range(0, len(self.backlit), 16):
            x = self.backlit[s:s + 16].float().div(255.0)
            x = F.interpolate(x, size=(self.cfg.guidance_size,) * 2, mode="bilinear", align_corners=False).to(self.dev)
            with self.autocast():
                out, _ = self.net(x)
                feats.append(self.encoder(out).float())
        return torch.cat(feats)

    def guidance_step(self, rng: np.random.Generator, ranking: bool) -> dict:
        cfg = self.cfg
        b = self.banks["backlit"][rng.integers(0, len(self.banks["backlit"]), cfg.guidance_batch_size)]
        w = self.banks["welllit"][rng.integers(0, len(self.banks["welllit"]), cfg.guidance_batch_size)]
        with self.autocast():
            gv = self.guidance_vectors().float()
            if not ranking:
                feats = torch.cat([b, w])
                labels = torch.cat([torch.zeros(len(b)), torch.ones(len(w))]).long().to(self.dev)
                loss = L.guidance_init_loss(feats, labels, gv)
            else:
                earlier = [bank[rng.integers(0, len(bank), cfg.guidance_batch_size)] for bank in self.earlier]
                s_b, s_w = L.negative_probability(b, gv), L.negative_probability(w, gv)
                loss = L.W_RANK * L.ranking_loss(s_b, s_w, [L.negative_probability(e, gv) for e in earlier])
        self.guidance_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.guidance_opt.step()
        return {"loss": loss.item()}

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        st = {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "step": torch.tensor(self.step),
              "schedule": {k: torch.tensor(-1 if v is None else v) for k, v in self.schedule_state.items() if k != "phase"},
              "phase": torch.tensor(PHASES.index(self.schedule_state["phase"])),
              "banks": dict(self.banks), "earlier": list(self.earlier)}
        if self.guidance_param is not None:
            st["guidance"] = self.guidance_param.detach().clone()
            st["guidance_opt"] = self.guidance_opt.state_dict()
        return st

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "ckpt_last.pt.tmp"
        torch.save(self.state(), tmp)
        os.replace(tmp, self.out / "ckpt_last.pt")

    def load(self, path: Path) -> None:
        st = torch.load(path, map_location=self.dev, weights_only=True)
        self.net.load_state_dict(st["net"])
        self.opt.load_state_dict(st["opt"])
        self.step = int(st["step"])
        self.schedule_state = {k: (None if int(v) == -1 else int(v)) for k, v in st["schedule"].items()}
        self.schedule_state["phase"] = PHASES[int(st["phase"])]
        self.banks = {k: v.to(self.dev) for k, v in st["banks"].items()}
        self.earlier = [e.to(self.dev) for e in st["earlier"]]
        if self.guidance_param is not None and "guidance" in st:
            with torch.no_grad():
                self.guidance_param.copy_(st["guidance"])
            self.guidance_opt.load_state_dict(st["guidance_opt"])

    def export(self) -> Path:
        from safetensors.torch import save_file

        path = self.out / "enhancer.safetensors"
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
        atomic_write_json(self.out / "enhancer.json", {"format": "embedlab-enhancer", "network": "CLIP-LIT/RAVE enhancement net",
                                                       "parameters": 278790, "steps": self.step, "guidance": self.cfg.guidance})
        return path

    # ----------------------------------------------------------------- the loop
    def run(self, progress: bool = True, stop_after: int | None = None) -> dict:
        """Train until cfg.iters network iterations. `stop_after` ends this call early (for tests of resume)."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        cfg_path = self.out / "config.json"
        resolved = asdict(cfg)
        if (self.out / "ckpt_last.pt").exists():
            old = read_json(cfg_path) if cfg_path.exists() else {}
            diff = {k for k in resolved if k not in ("device", "out") and old.get(k) != resolved[k]}
            if diff:
                raise IncompatibleRunError(f"{self.out} holds a training run with other settings ({sorted(diff)}); "
                                           "use another --out, or --overwrite.")
            self.load(self.out / "ckpt_last.pt")
            log.info("resuming %s at step %d", self.out, self.step)
        atomic_write_json(cfg_path, resolved)
        log_path = self.out / "log.csv"
        new_log = not log_path.exists() or self.step == 0
        logf = open(log_path, "w" if new_log else "a", newline="")
        writer = csv.writer(logf)
        if new_log:
            writer.writerow(["step", "phase", "loss", "guidance", "identity", "seconds", "it_per_s"])
        tb = _tensorboard(self.out)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.iters, initial=self.step, desc=f"train {cfg.guidance}", unit="it", dynamic_ncols=True)
        t0, last_t, done_this_call = time.perf_counter(), time.perf_counter(), 0
        fixed = self.backlit[: min(4, len(self.backlit))].float() / 255.0
        try:
            while self.step < cfg.iters:
                if stop_after is not None and done_this_call >= stop_after:
                    break
                phase = self._advance_schedule()
                if phase in ("guidance-init", "guidance-rank"):
                    self._run_guidance_stage(phase, bar)
                    continue
                rng = np.random.default_rng([cfg.seed, self.step])
                terms = self.network_step(rng, reconstruct=phase == "reconstruct")
                self.step += 1
                done_this_call += 1
                self.last_terms = terms
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
                if self.step % cfg.display_iter == 0 or self.step == cfg.iters:
                    now = time.perf_counter()
                    rate = cfg.display_iter / max(now - last_t, 1e-9)
                    last_t = now
                    writer.writerow([self.step, phase, terms["loss"], terms.get("guidance", ""), terms.get("identity", ""),
                                     round(now - t0, 3), round(rate, 3)])
                    logf.flush()
                    if tb is not None:
                        for k, v in terms.items():
                            tb.add_scalar(k, v, self.step)
                if self.step % cfg.sample_iter == 0 or self.step == cfg.iters:
                    self._save_samples(fixed)
                if self.step % cfg.ckpt_iter == 0 or self.step == cfg.iters:
                    self.save()
        finally:
            logf.close()
            if bar is not None:
                bar.close()
            if tb is not None:
                tb.close()
        self.save()
        final = self.export() if self.step >= cfg.iters else None
        return {"out": str(self.out), "steps": self.step, "finished": self.step >= cfg.iters,
                "enhancer": str(final) if final else None, "seconds_this_call": round(time.perf_counter() - t0, 2),
                "last": getattr(self, "last_terms", {})}

    def _advance_schedule(self) -> str:
        """Decide the phase for the next network step (and run prompt/latent stages between network stages)."""
        cfg, st = self.cfg, self.schedule_state
        if st["phase"] == "init":
            recon = cfg.recon_iters if cfg.init == "reconstruct" else 0
            st["recon_end"] = recon
            if cfg.guidance in ("latent", "prompt"):
                st["phase"] = "guidance-init"
                return st["phase"]
            st["phase"] = "reconstruct" if recon > 0 else "guided"
            st["stage_end"] = recon if recon > 0 else cfg.stage_iters
        if st["phase"] == "guidance-init-done":
            st["phase"] = "reconstruct" if st["recon_end"] > 0 else "guided"
            st["stage_end"] = st["recon_end"] if st["recon_end"] > 0 else cfg.stage_iters
        if st["phase"] == "reconstruct" and self.step >= st["stage_end"]:
            st["phase"] = "guided"
            st["stage_end"] = self.step + cfg.stage_iters
        if st["phase"] == "guided" and self.step >= st["stage_end"]:
            loss = getattr(self, "last_terms", {}).get("loss", 0.0)
            if loss > cfg.thr_train and st["extensions"] < cfg.max_extensions:
                st["extensions"] += 1
                st["stage_end"] = self.step + 60
            elif cfg.guidance in ("latent", "prompt"):
                st["phase"] = "guidance-rank"
                st["extensions"] = 0
            else:
                st["stage_end"] = self.step + cfg.stage_iters
                st["extensions"] = 0
        if st["phase"] == "guidance-rank-done":
            st["phase"] = "guided"
            st["stage_end"] = self.step + cfg.stage_iters
        return st["phase"]

    def _run_guidance_stage(self, phase: str, bar) -> None:
        cfg, st = self.cfg, self.schedule_state
        if "backlit" not in self.banks:
            self.banks["backlit"] = self.build_bank(self.backlit, cfg.seed + 1)
            self.banks["welllit"] = self.build_bank(self.welllit, cfg.seed + 2)
        ranking = phase == "guidance-rank"
        if ranking:
            self.earlier = (self.earlier + [self.outputs_bank()])[-2:]
        n = cfg.guidance_init_iters if not ranking else cfg.guidance_iters
        thr = cfg.thr_prompt
        ext = 0
        i = 0
        while i < n:
            rng = np.random.default_rng([cfg.seed, 1_000_000 + st.get("round", 0), i])
            terms = self.guidance_step(rng, ranking)
            i += 1
            if i == n and terms["loss"] > thr and ext < cfg.max_extensions:
                n += 100
                ext += 1
        st["round"] = st.get("round", 0) + 1
        st["phase"] = "guidance-rank-done" if ranking else "guidance-init-done"
        log.info("%s stage: %d iterations, final loss %.4g", phase, n, terms["loss"])

    def _save_samples(self, fixed: torch.Tensor) -> None:
        from PIL import Image

        with torch.no_grad():
            x = fixed.to(self.dev)
            with self.autocast():
                out, _ = self.net(x)
            grid = torch.cat([torch.cat(list(x.float()), -1), torch.cat(list(out.float()), -1)], -2)
        arr = (grid.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        (self.out / "samples").mkdir(exist_ok=True)
        Image.fromarray(arr).save(self.out / "samples" / f"step_{self.step:06d}.png")


PHASES = ("init", "guidance-init", "guidance-init-done", "reconstruct", "guided", "guidance-rank", "guidance-rank-done")


def augment_views(x: torch.Tensor, rng: np.random.Generator, on: bool) -> torch.Tensor:
    from .data import augment

    return augment(x, rng, zoom=(0.5, 1.5)) if on else x


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def train(out: str | os.PathLike, preset: str = "paper", overwrite: bool = False, progress: bool = True,
          stop_after: int | None = None, **options) -> dict:
    """Train an enhancement network into run folder `out` (resumes when it holds a compatible run)."""
    import shutil

    cfg = make_config(preset, out=str(out), **options)
    if overwrite and Path(out).exists():
        shutil.rmtree(out)
    return Trainer(cfg).run(progress=progress, stop_after=stop_after)
