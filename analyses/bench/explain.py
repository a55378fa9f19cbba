"""Text-side speed of explain-residual: the first encode of all 49,408 tokenizer tokens (batched, context cut to
the longest prompt of each batch) vs one token per forward at full context (RAVE's loop; timed on a sample and
extrapolated, labelled as such), and a cached explain call in-process (imports excluded) beside the CLI's wall time.

    python -m analyses.bench.explain [--models embedlab-tiny ViT-B-32] [--sample 500] [--threads 2]
    python -m analyses.bench.explain --cached-only --models ViT-B-32     # the cached call only (fills a cache first)

Writes analyses/results/bench_explain.json (bench_explain_cached.json with --cached-only).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def one_at_a_time(lm, texts) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        for t in texts:
            lm.model.encode_text(lm.tokenizer([t]).to(lm.device))
    return time.perf_counter() - t0


def main() -> None:
    import torch

    from analyses._common import parse_args, write_json
    from embedlab import models
    from embedlab.analysis import vocab

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["embedlab-tiny", "ViT-B-32"])
    ap.add_argument("--sample", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--cached-only", action="store_true", help="Skip the encode comparison; time the cached call only.")
    ap.add_argument("--repeats", type=int, default=5, help="Cached calls timed in-process (the median is reported).")
    ap.add_argument("--many", type=int, default=2000, help="Images per set for the synthetic many-image timing.")
    ap.add_argument("--out", default=None)
    args = parse_args(ap)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in [] if args.cached_only else args.models:
        lm = models.load_model(name, "none", args.device)
        tokens = vocab.tokenizer_tokens(lm.tokenizer)
        t0 = time.perf_counter()
        models.encode_texts(lm, tokens, batch_size=args.batch_size)
        batched = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        sample = [tokens[i] for i in rng.choice(len(tokens), args.sample, replace=False)]
        one_at_a_time(lm, sample[:5])
        slow = one_at_a_time(lm, sample) * len(tokens) / len(sample)
        row = {
            "model": name,
            "tokens": len(tokens),
            "batched_cut_context_s": round(batched, 2),
            "one_per_forward_full_context_s_extrapolated": round(slow, 1),
            "sample_for_extrapolation": args.sample,
            "ratio": round(slow / batched, 1),
            "device": str(lm.device),
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
        }
        print(
            f"{name:14s} all {len(tokens)} tokens: batched {batched:7.1f} s   one-at-a-time {slow:8.1f} s "
            f"(extrapolated from {args.sample})   ratio {slow / batched:6.1f}x"
        )
        rows.append(row)
    # A cached explain call: the demo run, the full token vocabulary, K = 1000 shuffles.
    from embedlab.analysis.explain import explain_vectors
    from embedlab.analysis.residual import residual
    from embedlab.datasets.layouts import manifest
    from embedlab.reports.explain import explain_residual
    from embedlab.runs.extract.pipeline import extract

    tmp = Path(tempfile.mkdtemp(prefix="bench_explain_"))
    os.environ.setdefault("EMBEDLAB_CACHE", str(tmp / "cache"))  # set it to reuse an already filled text cache
    man = manifest("demo", ".", tmp / "demo.jsonl")["files"]["manifest"]
    model = args.models[-1]
    extract(man, model, "none", tmp / "run", device=args.device, workers=0, progress=False)
    residual(tmp / "run", "role=backlit,split=train", "role=welllit,split=train", tmp / "r.npy", bootstrap=0)
    explain_residual(tmp / "r.npy", tmp / "rep", vocab="tokens", device=args.device, progress=False)  # fills the cache
    times = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        rep = explain_residual(tmp / "r.npy", tmp / f"rep{i}", vocab="tokens", device=args.device, progress=False)
        times.append(time.perf_counter() - t0)
    cached = float(np.median(times))
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "embedlab",
            "-q",
            "explain-residual",
            str(tmp / "r.npy"),
            "--vocab",
            "tokens",
            "--out",
            str(tmp / "rep_cli"),
            "--device",
            args.device,
        ],
        check=True,
        env=dict(os.environ),
        capture_output=True,
    )
    cli = time.perf_counter() - t0
    info = rep["info"]
    print(
        f"cached explain call ({model}, {info['vocabulary_size']} tokens, {info['n_from']} + {info['n_to']} images, "
        f"K=1000): in-process median {cached:.2f} s over {args.repeats} (min {min(times):.2f}, max {max(times):.2f}; "
        f"permutation test {info['permutation']['seconds']:.2f} s), CLI wall {cli:.2f} s"
    )
    # The same scoring with many images (the pure function; synthetic unit vectors, no I/O, no figures): the
    # permutation test's cost is shuffles x vocabulary x dimension, nearly independent of the number of images.
    from embedlab.analysis.residual_file import load_residual
    from embedlab.analysis.vocab import embed_concepts, resolve_templates, resolve_vocab
    from embedlab.models import TextModelHandle

    res = load_residual(tmp / "r.npy")
    mi = res.info["model"]
    lm = TextModelHandle(mi["model"], mi["pretrained"], mi["weights_sha256"], len(res.vector), args.device)
    V = resolve_vocab("tokens", lm)
    E, _ = embed_concepts(lm, V.concepts, resolve_templates(None))
    rng = np.random.default_rng(0)
    d = E.shape[1]
    base = rng.normal(size=d)
    x_from = base + rng.normal(size=(args.many, d))
    x_to = base + rng.normal(size=(args.many, d)) + 0.3 * rng.normal(size=d)
    explain_vectors(res.vector, E, V.concepts, x_from, x_to)
    t0 = time.perf_counter()
    explain_vectors(res.vector, E, V.concepts, x_from, x_to)
    many = time.perf_counter() - t0
    print(
        f"explain_vectors with {args.many} + {args.many} synthetic image vectors, same vocabulary, K=1000: {many:.2f} s"
    )
    write_json(
        "bench_explain_cached.json" if args.cached_only else "bench_explain.json",
        {
            "encode": rows,
            "cached_explain": {
                "model": model,
                "vocabulary": "tokens",
                "vocabulary_size": info["vocabulary_size"],
                "permutations": 1000,
                "images": [info["n_from"], info["n_to"]],
                "repeats": args.repeats,
                "in_process_s": round(cached, 3),
                "in_process_all_s": [round(t, 3) for t in times],
                "permutation_test_s": info["permutation"]["seconds"],
                "cli_wall_s": round(cli, 3),
                "text_cache": info["text_cache"],
                "explain_vectors_many_images_s": round(many, 3),
                "many_images": [args.many, args.many],
                "target_in_process_s": 2.0,
            },
        },
        args.out,
    )


if __name__ == "__main__":
    main()
