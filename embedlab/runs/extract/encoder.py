"""encoder: split from extract.py."""

from __future__ import annotations

import logging

import numpy as np

from embedlab.runs.extract.device import DEVICE_BATCH_BYTES, decode_on_device

log = logging.getLogger(__name__)


class BatchEncoder:
    """Encodes collated batches on the model's device without a host sync per image.

    Host-to-device copies are issued non_blocking (from pinned memory on CUDA); the results of batch k are
    copied back asynchronously and collected when batch k+1 has been queued, so the host keeps the loader
    busy while the device computes. On the CPU this is the same code with no-op events."""

    def __init__(self, lm, decode: str, budget: int = DEVICE_BATCH_BYTES):
        self.lm, self.decode, self.budget = lm, decode, budget
        self.pending: dict | None = None

    def push(self, batch: dict) -> dict | None:
        current = self._launch(batch)
        previous, self.pending = self.pending, current
        return self._collect(previous)

    def flush(self) -> dict | None:
        previous, self.pending = self.pending, None
        return self._collect(previous)

    def _launch(self, batch: dict) -> dict:
        import torch
        import torch.nn.functional as F

        from embedlab import models

        lm, good = self.lm, batch["good"]
        out = {"good": good, "errs": batch["errors"], "vecs": None, "luma": None, "event": None}
        if not good:
            return out
        with torch.inference_mode():
            if self.decode == "torchvision":
                pixels, luma, failed = decode_on_device(good, lm, self.budget)
                if failed:
                    out["errs"] = list(out["errs"]) + [(good[i]["row_id"], failed[i]) for i in sorted(failed)]
                    good = out["good"] = [b for i, b in enumerate(good) if i not in failed]
                    if not good:
                        return out
            else:
                pixels, luma = batch["pixels"].to(lm.device, non_blocking=True), None
            with models.autocast_context(lm.device):
                feats = lm.model.encode_image(pixels)
            vecs = F.normalize(feats.float(), dim=-1)
        if lm.device.type == "cuda":
            out["vecs"] = vecs.to("cpu", non_blocking=True)
            out["luma"] = luma.to("cpu", non_blocking=True) if luma is not None else None
            out["event"] = torch.cuda.Event()
            out["event"].record()
        else:
            out["vecs"], out["luma"] = vecs, luma
        return out

    @staticmethod
    def _collect(p: dict | None) -> dict | None:
        if p is None:
            return None
        if p["event"] is not None:
            p["event"].synchronize()
        good = p["good"]
        if p["luma"] is not None:
            for b, v in zip(good, p["luma"].tolist()):
                b["meta"]["mean_luma"] = v
        vecs = p["vecs"].numpy() if p["vecs"] is not None else np.zeros((0, 0), np.float32)
        return {"vecs": vecs, "metas": [(b["row_id"], b["meta"]) for b in good], "errs": p["errs"]}
