"""Seconds per training iteration: the reference style (fp32, CLIP towers called once per image in a Python
loop) vs embedlab's batched path (bf16 autocast + channels_last on GPU), same shapes, in one run; plus each
guidance mode's per-iteration costs times its default schedule (an EXTRAPOLATION, labelled as such).

    python -m analyses.bench.train [--batch 8 --size 512] [--guidance-model ViT-B-32] [--identity-model RN101]
                                   [--iters 5] [--device auto] [--threads N]

Random weights (same FLOPs as the real towers). CPU default shapes are small (batch 2, 128 px); on a GPU use
--batch 8 --size 512. Writes analyses/results/bench_train.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn, iters: int, device) -> float:
    import torch

    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    import torch

    from analyses._common import parse_args, write_json
    from embedlab import models
    from embedlab.analysis.residual_file import save_residual
    from embedlab.datasets.layouts import manifest
    from embedlab.enhancement import losses as L
    from embedlab.enhancement.train import Trainer, make_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--guidance-model", default="ViT-B-32")
    ap.add_argument("--identity-model", default="RN101")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = parse_args(ap)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = models.resolve_device(args.device)
    batch = args.batch or (8 if dev.type == "cuda" else 2)
    size = args.size or (512 if dev.type == "cuda" else 128)
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    man = manifest("demo", ".", tmp / "demo.jsonl")["files"]["manifest"]
    glm = models.load_model(args.guidance_model, "none", dev)
    rng = np.random.default_rng(0)
    v = rng.normal(size=glm.dim)
    v /= np.linalg.norm(v)
    info = {
        "thr": 0.2,
        "v_to": v.tolist(),
        "model": {
            "model": args.guidance_model,
            "pretrained": "none",
            "weights_sha256": glm.info["weights_sha256"],
            "preprocess": glm.info["preprocess"],
            "embed_dim": glm.dim,
        },
        "from": {},
        "to": {},
    }
    save_residual(tmp / "r.npy", v, info)
    del glm
    common = dict(
        residual=str(tmp / "r.npy"),
        backlit=f"{man}:role=backlit",
        welllit=f"{man}:role=welllit",
        identity_model=args.identity_model,
        identity_pretrained="none",
        batch_size=batch,
        size=size,
        crop=None,
        device=args.device,
        init="identity",
        iters=10**6,
        model=args.guidance_model,
        pretrained="none",
    )
    tr = Trainer(make_config("paper", out=str(tmp / "t"), guidance="residual", **common))
    step_rng = np.random.default_rng(1)

    def batched():
        tr.network_step(step_rng, reconstruct=False)

    def reference():
        from embedlab.enhancement.data import sample_batch

        x = sample_batch(tr.backlit, batch, step_rng, True).to(dev)
        out, _ = tr.net(x)
        g_total = 0.0
        id_total = 0.0
        for i in range(len(out)):  # one image per tower call, fp32, as the reference code
            f = tr.guidance.encoder(out[i : i + 1])
            g_total = g_total + ((f @ tr.guidance.v_res - tr.guidance.thr) ** 2).sum()
            with torch.no_grad():
                m_in = tr.identity(x[i : i + 1])
            m_out = tr.identity(out[i : i + 1])
            id_total = id_total + L.identity_loss(m_out, m_in, L.PAPER_ID_WEIGHTS_GUIDED)
        loss = L.W_RESIDUAL * g_total / len(out) + L.W_ID_GUIDED * id_total
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()
        tr.opt.step()

    def recon():
        tr.network_step(step_rng, reconstruct=True)

    t_ref = timed(reference, args.iters, dev)
    t_ours = timed(batched, args.iters, dev)
    t_recon = timed(recon, args.iters, dev)
    print(f"batch {batch} x {size} px, {args.guidance_model} + {args.identity_model}, {dev}:")
    print(f"  reference style {t_ref:.3f} s/it   embedlab batched {t_ours:.3f} s/it   ratio {t_ref / t_ours:.2f}x")
    guidance_costs = {}
    for mode in ("latent", "prompt"):
        tg = Trainer(
            make_config(
                "paper",
                out=str(tmp / mode),
                guidance=mode,
                bank_views=1,
                guidance_size=min(256, size),
                **{k: v for k, v in common.items() if k != "residual"},
            )
        )
        gm = tg.guidance
        gm.banks["backlit"] = gm.build_bank(tg.backlit, 1)
        gm.banks["welllit"] = gm.build_bank(tg.welllit, 2)
        g_rng = np.random.default_rng(2)
        guidance_costs[mode] = {"init_step_s": timed(lambda: gm.guidance_step(g_rng, False), args.iters * 3, dev)}
        gm.earlier = [gm.banks["backlit"], gm.banks["backlit"]]
        guidance_costs[mode]["rank_step_s"] = timed(lambda: gm.guidance_step(g_rng, True), args.iters * 3, dev)
    # default schedules (docs/method.md section 4): RAVE = 1,000 reconstruction + 4,200 guided
    # (best round ends at 5,200);
    # CLIP-LIT(-Latent) = 8,000 CE iterations + 1,000 reconstruction + 11 cycles of (2,100 network + 1,000 guidance)
    cycles = 11
    extrap = {"rave": 1000 * t_recon + 4200 * t_ours}
    for mode, c in guidance_costs.items():
        name = "clip_lit_latent" if mode == "latent" else "clip_lit"
        extrap[name] = 8000 * c["init_step_s"] + 1000 * t_recon + cycles * (2100 * t_ours + 1000 * c["rank_step_s"])
    for k, v in extrap.items():
        print(f"  EXTRAPOLATED default schedule {k:16s} {v / 3600:7.2f} h")
    print(
        f"  CLIP-LIT / RAVE (extrapolated) {extrap['clip_lit'] / extrap['rave']:.1f}x; "
        f"CLIP-LIT-Latent / RAVE {extrap['clip_lit_latent'] / extrap['rave']:.1f}x"
    )
    write_json(
        "bench_train.json" if dev.type == "cpu" else "bench_train_gpu.json",
        {
            "shapes": {
                "batch": batch,
                "size": size,
                "guidance_model": args.guidance_model,
                "identity_model": args.identity_model,
                "weights": "random init",
            },
            "device": str(dev),
            "reference_s_per_iter": t_ref,
            "embedlab_s_per_iter": t_ours,
            "ratio": t_ref / t_ours,
            "reconstruction_s_per_iter": t_recon,
            "guidance_steps": guidance_costs,
            "extrapolated_default_schedule_s": extrap,
            "extrapolation_note": "per-iteration cost measured here times the default schedule's iteration counts",
        },
        args.out,
    )


if __name__ == "__main__":
    main()
