"""Zero-shot lighting classification with the demo CLIP (analyses/demo/eval_clip.py scores it on unseen variants)."""

from __future__ import annotations

import numpy as np

from embedlab.demos.clip import CLASSES, LIGHT_ONLY, SYNONYMS, _to_tensor


def zero_shot_lighting(lm, images: list[np.ndarray]) -> np.ndarray:
    """Predicted class index (into CLASSES) per image, from prompt ensembles of the lighting synonyms."""
    from embedlab import models

    protos = []
    for cls in CLASSES:
        e = models.encode_texts(lm, [t.format(L=s) for s in SYNONYMS[cls] for t in LIGHT_ONLY])
        v = e.mean(0)
        protos.append(v / np.linalg.norm(v))
    P = np.stack(protos)
    feats = []
    for s in range(0, len(images), 256):
        batch = [np.asarray(_center_resize(im, lm.image_size)) for im in images[s : s + 256]]
        feats.append(models.encode_image_batch(lm, _to_tensor(batch, lm.info["mean"], lm.info["std"])))
    return (np.concatenate(feats) @ P.T).argmax(1)


def _center_resize(img: np.ndarray, size: int):
    from PIL import Image

    im = Image.fromarray(img)
    scale = size / min(im.size)
    im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return im.crop((left, top, left + size, top + size))
