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
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from embedlab._io import atomic_path, atomic_write_json, read_json
from embedlab.enhancement import losses as L
from embedlab.enhancement.data import load_resized, resolve_images, resolve_pairs, sample_batch
from embedlab.enhancement.guidance import get_guidance
from embedlab.enhancement.network import EnhancementNet, load_enhancer_state
from embedlab.enhancement.presets import TrainConfig, make_config
from embedlab.errors import IncompatibleRunError

log = logging.getLogger(__name__)
NETWORK_PADDING = {"zeros": "train", "reflect": "test"}  # TrainConfig.padding -> EnhancementNet's padding class


class Trainer:
    """Holds the network, the frozen towers, the guidance state and the schedule; `run()` trains to cfg.iters."""

    def __init__(self, cfg: TrainConfig):
        from embedlab import models

        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dev = models.resolve_device(cfg.device)
        self.cuda = self.dev.type == "cuda"
        torch.manual_seed(cfg.seed)
        self.net = EnhancementNet(NETWORK_PADDING[self.cfg.padding]).to(self.dev)
        self._init_network()
        if self.cuda:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ema = {k: v.detach().clone() for k, v in self.net.state_dict().items()} if cfg.ema is not None else None
        self.guidance = get_guidance(cfg.guidance)(cfg)
        self.guidance.prepare(self)
        self._load_identity_model()
        self.gt = None
        if cfg.pixel_loss > 0:  # the extension: pairs from the manifest's "gt" (not in the paper)
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

    # ----------------------------------------------------------------- setup
    def _init_network(self) -> None:
        init = self.cfg.init
        if init == "identity":
            self.net.init_identity()
        elif init != "reconstruct":
            self.net.load_state_dict(load_enhancer_state(init))

    def _load_identity_model(self) -> None:
        from embedlab import models

        self.identity = None
        if self.cfg.identity == "pixel":
            log.info("identity loss: L1 in linear light (a non-paper option)")
            return
        from embedlab.enhancement.towers import IdentityFeatures

        lm = models.load_model(self.cfg.identity_model, self.cfg.identity_pretrained, self.dev)
        for p in lm.model.parameters():
            p.requires_grad_(False)
        self.identity = IdentityFeatures(lm).to(self.dev)

    # ----------------------------------------------------------------- pieces
    def autocast(self):
        from embedlab import models

        return models.autocast_context(self.dev)

    def identity_term(self, out: torch.Tensor, inp: torch.Tensor, weights) -> torch.Tensor:
        if self.identity is None:
            return L.pixel_identity_loss(out, inp)
        with torch.no_grad():
            maps_in = self.identity(inp)
        maps_out = self.identity(out)
        return L.identity_loss(maps_out, maps_in, L.layer_weights(weights, len(maps_out)))

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
                loss = cfg.identity_weight * ident
                g = self.guidance.loss(out)
                if g is not None:
                    loss = loss + self.guidance.weight * g
                    terms["guidance"] = g.item()
            if gt is not None:
                px = (out.float() - gt).abs().mean()
                loss = loss + cfg.pixel_loss * px
                terms["pixel"] = px.item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip))
        for group in self.opt.param_groups:
            group["lr"] = scheduled_lr(cfg.lr, self.step, cfg.iters, cfg.lr_schedule, cfg.lr_floor)
        self.opt.step()
        if self.ema is not None:
            ema_update(self.ema, self.net.state_dict(), cfg.ema)
        terms["loss"] = loss.item()
        return terms

    def weights(self) -> dict:
        """The weights to use and export: the moving average when cfg.ema is set, else the network's own."""
        return self.ema if self.ema is not None else self.net.state_dict()

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        st = {
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "step": torch.tensor(self.step),
            "schedule": {
                k: torch.tensor(-1 if v is None else v) for k, v in self.schedule_state.items() if k != "phase"
            },
            "phase": torch.tensor(PHASES.index(self.schedule_state["phase"])),
        }
        if self.ema is not None:
            st["ema"] = self.ema
        own = self.guidance.state()
        if set(own) & set(st):
            raise ValueError(
                f"guidance mode {self.cfg.guidance!r} saves keys the trainer uses: {sorted(set(own) & set(st))}"
            )
        return {**st, **own}

    def save(self) -> None:
        with atomic_path(self.out / "ckpt_last.pt") as tmp:
            torch.save(self.state(), tmp)

    def load(self, path: Path) -> None:
        st = torch.load(path, map_location=self.dev, weights_only=True)
        self.net.load_state_dict(st["net"])
        self.opt.load_state_dict(st["opt"])
        if self.ema is not None:
            self.ema = {k: v.to(self.dev) for k, v in st["ema"].items()}
        self.step = int(st["step"])
        self.schedule_state = {k: (None if int(v) == -1 else int(v)) for k, v in st["schedule"].items()}
        self.schedule_state["phase"] = PHASES[int(st["phase"])]
        self.guidance.load_state(st)

    def export(self) -> Path:
        from safetensors.torch import save_file

        path = self.out / "enhancer.safetensors"
        state = {k: v.detach().cpu().contiguous() for k, v in self.weights().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp))
        atomic_write_json(
            self.out / "enhancer.json",
            {
                "format": "embedlab-enhancer",
                "network": "CLIP-LIT/RAVE enhancement net",
                "parameters": 278790,
                "steps": self.step,
                "guidance": self.cfg.guidance,
                "trained_padding": self.cfg.padding,
            },
        )
        return path

    # ----------------------------------------------------------------- the loop
    def run(self, progress: bool = True, stop_after: int | None = None) -> dict:
        """Train until cfg.iters network iterations. `stop_after` ends this call early (for tests of resume)."""
        cfg = self.cfg
        self._resume_or_start()
        logs = _TrainLog(self.out, cfg, self.step, progress)
        t0, done_this_call = time.perf_counter(), 0
        fixed = self.backlit[: min(4, len(self.backlit))].float() / 255.0
        try:
            while self.step < cfg.iters:
                if stop_after is not None and done_this_call >= stop_after:
                    break
                phase = self._advance_schedule()
                if phase in ("guidance-init", "guidance-rank"):
                    self._run_guidance_stage(phase, logs.bar)
                    continue
                rng = np.random.default_rng([cfg.seed, self.step])
                terms = self.network_step(rng, reconstruct=phase == "reconstruct")
                self.step += 1
                done_this_call += 1
                self.last_terms = terms
                logs.record(self.step, phase, terms)
                if self.step % cfg.sample_iter == 0 or self.step == cfg.iters:
                    self._save_samples(fixed)
                if self.step % cfg.ckpt_iter == 0 or self.step == cfg.iters:
                    self.save()
        finally:
            logs.close()
        self.save()
        final = self.export() if self.step >= cfg.iters else None
        return {
            "out": str(self.out),
            "steps": self.step,
            "finished": self.step >= cfg.iters,
            "enhancer": str(final) if final else None,
            "seconds_this_call": round(time.perf_counter() - t0, 2),
            "last": getattr(self, "last_terms", {}),
        }

    def _resume_or_start(self) -> None:
        """Resume from ckpt_last.pt when the folder holds a run with the same settings (refuse other settings);
        write the resolved config."""
        self.out.mkdir(parents=True, exist_ok=True)
        cfg_path = self.out / "config.json"
        resolved = asdict(self.cfg)
        if (self.out / "ckpt_last.pt").exists():
            old = read_json(cfg_path) if cfg_path.exists() else {}
            known = asdict(TrainConfig())  # a key an older version did not write had its default value
            diff = {k for k in resolved if k not in ("device", "out") and old.get(k, known[k]) != resolved[k]}
            if diff:
                raise IncompatibleRunError(
                    f"{self.out} holds a training run with other settings ({sorted(diff)}); "
                    "use another 'out', or set 'overwrite'."
                ).naming("out", "overwrite")
            self.load(self.out / "ckpt_last.pt")
            log.info("resuming %s at step %d", self.out, self.step)
        atomic_write_json(cfg_path, resolved)

    def _advance_schedule(self) -> str:
        """Decide the phase for the next network step (and run prompt/latent stages between network stages)."""
        cfg, st = self.cfg, self.schedule_state
        if st["phase"] == "init":
            recon = cfg.recon_iters if cfg.init == "reconstruct" else 0
            st["recon_end"] = recon
            if self.guidance.refines:
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
            elif self.guidance.refines:
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
        """A stage of the guidance mode's own optimiser (initialisation, or ranking refinement) between network
        stages."""
        st = self.schedule_state
        ranking = phase == "guidance-rank"
        n, loss = self.guidance.refine(self, ranking, st.get("round", 0))
        st["round"] = st.get("round", 0) + 1
        st["phase"] = "guidance-rank-done" if ranking else "guidance-init-done"
        log.info("%s stage: %d iterations, final loss %.4g", phase, n, loss)

    def _save_samples(self, fixed: torch.Tensor) -> None:
        from PIL import Image

        net = self.net
        if self.ema is not None:  # samples show the weights that will be exported
            net = EnhancementNet(NETWORK_PADDING[self.cfg.padding]).to(self.dev)
            net.load_state_dict(self.ema)
        with torch.no_grad():
            x = fixed.to(self.dev)
            with self.autocast():
                out, _ = net(x)
            grid = torch.cat([torch.cat(list(x.float()), -1), torch.cat(list(out.float()), -1)], -2)
        arr = (grid.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        (self.out / "samples").mkdir(exist_ok=True)
        Image.fromarray(arr).save(self.out / "samples" / f"step_{self.step:06d}.png")


def scheduled_lr(base: float, step: int, total: int, schedule: str = "constant", floor: float = 0.0) -> float:
    """The learning rate of network step `step` (0-based) of `total`: constant (the paper), or a cosine from `base`
    at step 0 down to base * floor at the last step."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        t = min(step, total - 1) / max(total - 1, 1)
        return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")


def ema_update(avg: dict, current: dict, decay: float) -> None:
    """avg <- decay * avg + (1 - decay) * current, in place, for every floating-point tensor."""
    with torch.no_grad():
        for k, v in current.items():
            if v.is_floating_point():
                avg[k].mul_(decay).add_(v.detach(), alpha=1.0 - decay)
            else:
                avg[k].copy_(v)


PHASES = ("init", "guidance-init", "guidance-init-done", "reconstruct", "guided", "guidance-rank", "guidance-rank-done")


class _TrainLog:
    """log.csv (a row every display_iter steps, appended on resume), TensorBoard scalars when installed, and the
    progress bar."""

    def __init__(self, out: Path, cfg: TrainConfig, step: int, progress: bool):
        self.cfg = cfg
        log_path = out / "log.csv"
        new_log = not log_path.exists() or step == 0
        self.file = open(log_path, "w" if new_log else "a", newline="")
        self.writer = csv.writer(self.file)
        if new_log:
            self.writer.writerow(["step", "phase", "loss", "guidance", "identity", "seconds", "it_per_s"])
        self.tb = _tensorboard(out)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.iters, initial=step, desc=f"train {cfg.guidance}", unit="it", dynamic_ncols=True)
        self.t0 = self.last_t = time.perf_counter()

    def record(self, step: int, phase: str, terms: dict) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()}, refresh=False)
        if step % self.cfg.display_iter == 0 or step == self.cfg.iters:
            now = time.perf_counter()
            rate = self.cfg.display_iter / max(now - self.last_t, 1e-9)
            self.last_t = now
            self.writer.writerow(
                [
                    step,
                    phase,
                    terms["loss"],
                    terms.get("guidance", ""),
                    terms.get("identity", ""),
                    round(now - self.t0, 3),
                    round(rate, 3),
                ]
            )
            self.file.flush()
            if self.tb is not None:
                for k, v in terms.items():
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def train(
    out: str | os.PathLike,
    preset: str = "paper",
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    **options,
) -> dict:
    """Train an enhancement network into run folder `out` (resumes when it holds a compatible run).

    Returns the run's summary (steps, finished, seconds_this_call, last loss terms) with `files`: config, log,
    checkpoint and, once finished, the enhancer."""
    import shutil

    cfg = make_config(preset, out=str(out), **options)
    if overwrite and Path(out).exists():
        shutil.rmtree(out)
    result = Trainer(cfg).run(progress=progress, stop_after=stop_after)
    out = Path(out)
    files = {
        "config": out / "config.json",
        "log": out / "log.csv",
        "checkpoint": out / "ckpt_last.pt",
        "enhancer": Path(result["enhancer"]) if result["enhancer"] else None,
    }
    return {**result, "files": {k: str(p) for k, p in files.items() if p is not None and p.exists()}}
