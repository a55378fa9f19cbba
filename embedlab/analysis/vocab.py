"""Vocabularies and prompt templates for reading residuals in words, with cached text embeddings.

Vocabularies: `concepts` (embedlab's concept bank for bias studies, package data in embedlab/data/concepts/:
objects, scenes, attributes, photographic and lighting qualities, people-neutral descriptors; `concepts:CATEGORY,...`
takes some of its categories), `tokens` (every token of the model's tokenizer, as RAVE ranks: 49,408 for CLIP's
BPE), `words` (whole alphabetic words derived from those tokens), `model` (the model's own vocabulary where it ships
one, e.g. embedlab-demo), or a file with one concept or phrase per line. The default (`default_vocab`): the model's
own, else the concept bank for a real open_clip model, else `words` (embedlab's own small test configs).
Templates: `none` ("{}"), `photo` ("a photo of {}."), `ensemble` (several photo templates, averaged), or any string
containing "{}".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedlab._io import atomic_save_npy, atomic_write_json, cache_dir, load_npy, read_json, read_text
from embedlab.choices import CONCEPT_CATEGORIES
from embedlab.errors import ConfigError

log = logging.getLogger(__name__)

TEMPLATES = {
    "none": ["{}"],
    "photo": ["a photo of {}."],
    "ensemble": [
        "a photo of {}.",
        "a photo of the {}.",
        "a picture of {}.",
        "an image of {}.",
        "a close-up photo of {}.",
        "a bright photo of {}.",
        "a cropped photo of {}.",
    ],
}


@dataclass
class Vocabulary:
    name: str
    concepts: list[str]
    source: str


def tokenizer_tokens(tokenizer) -> list[str]:
    """Every token of the tokenizer decoded as a standalone string (ids 0..n-1, in id order)."""
    inner = getattr(tokenizer, "tokenizer", None)
    if hasattr(tokenizer, "decoder") and hasattr(tokenizer, "decode"):  # open_clip SimpleTokenizer
        n = len(tokenizer.decoder)
        return [tokenizer.decode([i]).strip() for i in range(n)]
    if inner is not None and hasattr(inner, "get_vocab"):  # HF tokenizers
        vocab = inner.get_vocab()
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        return [inner.convert_tokens_to_string([tok]).strip() for tok, _ in by_id]
    raise ConfigError(
        f"Cannot list the tokens of tokenizer {type(tokenizer).__name__}; pass a file (one concept "
        "per line) as 'vocab' instead."
    ).naming("vocab")


def tokenizer_record(lm) -> dict:
    """{'tokenizer': type name, 'context_length': n, 'tokens': decoded tokens} of a model's tokenizer, and the
    first two copied into lm.info (they are part of the text-cache key).

    For a model known only by name (a lazy `TextModelHandle`, as in a cached explain call) the record is
    cached per (open_clip model name, open_clip version): building a tokenizer imports all of open_clip (about
    4 s on two cores) and decoding 49,408 tokens takes a further 0.2 s, more than the rest of a cached call."""
    from importlib.metadata import PackageNotFoundError, version

    name = getattr(lm, "open_clip_name", None)
    try:
        open_clip_version = version("open_clip_torch")
    except PackageNotFoundError:  # a source checkout without metadata: no key to trust, no cache
        open_clip_version = None
    path = None
    if name is not None and open_clip_version is not None:
        key = hashlib.sha256(json.dumps({"model": name, "open_clip": open_clip_version}).encode()).hexdigest()[:24]
        path = cache_dir() / "tokenizers" / f"{key}.json"
        if path.exists():
            try:
                rec = read_json(path)
                if not isinstance(rec.get("tokens"), list):
                    raise ValueError("no token list")
                lm.info.update(tokenizer=rec["tokenizer"], context_length=rec["context_length"])
                return rec
            except (ValueError, KeyError, AttributeError, OSError) as exc:
                log.warning("Ignoring an unreadable tokenizer cache file %s (%s); rebuilding it.", path, exc)
    tok = lm.tokenizer
    rec = {
        "model": name or lm.info.get("model"),
        "tokenizer": type(tok).__name__,
        "context_length": int(getattr(tok, "context_length", 77)),
        "tokens": tokenizer_tokens(tok),
    }
    lm.info.update(tokenizer=rec["tokenizer"], context_length=rec["context_length"])
    if path is not None:
        atomic_write_json(path, rec)
    return rec


def words_from_tokens(tokens: list[str]) -> list[str]:
    """Whole alphabetic words (3+ letters, lower case) among the tokens, deduplicated, in token order."""
    seen, out = set(), []
    for t in tokens:
        if re.fullmatch(r"[a-z]{3,}", t) and t not in seen:
            seen.add(t)
            out.append(t)
    return out


VOCAB_WHAT = "a vocabulary file (text, one concept per line)"


def read_vocab_file(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(
            f"Vocabulary file {p} not found. Pass concepts, tokens, words, model, or a text file with one concept "
            "per line."
        )
    lines = [ln.strip() for ln in read_text(p, VOCAB_WHAT, "vocab").splitlines()]
    concepts = list(dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")))
    if not concepts:
        raise ConfigError(f"Vocabulary file {p} has no concepts (one per line; # starts a comment).")
    return concepts


def model_vocab_path(lm_info: dict) -> Path | None:
    """The vocabulary file shipped beside a model's checkpoint (<ckpt>.vocab.txt), if any."""
    pre = lm_info.get("pretrained") or ""
    if pre.startswith("cache:"):  # a checkpoint in embedlab's cache named as models.CACHE_PREFIX names it
        pre = str(cache_dir() / pre[len("cache:") :])
    if lm_info.get("pretrained_kind") == "file":
        cand = Path(pre).with_suffix(".vocab.txt")
        if cand.exists():
            return cand
    return None


BANK = "concepts"  # the concept bank's vocabulary name (`--vocab concepts`, `--vocab concepts:photographic`)
BANK_SOURCE = "embedlab's concept bank (embedlab/data/concepts, written for embedlab, MIT licence)"


def concept_bank(categories: tuple[str, ...] | list[str] | None = None) -> dict[str, list[str]]:
    """{category: concepts} of the concept bank shipped with embedlab (embedlab/data/concepts/<category>.txt), in
    the order of `choices.CONCEPT_CATEGORIES` or of `categories`; a concept listed in an earlier category is not
    repeated in a later one."""
    from importlib import resources

    wanted = list(categories or CONCEPT_CATEGORIES)
    unknown = [c for c in wanted if c not in CONCEPT_CATEGORIES]
    if unknown:
        raise ConfigError(
            f"The concept bank has no category {unknown[0]!r}. Fix: use concepts:CATEGORY[,CATEGORY] with "
            f"categories from {', '.join(CONCEPT_CATEGORIES)}."
        ).naming("vocab")
    folder = resources.files("embedlab") / "data" / "concepts"
    seen: set[str] = set()
    out = {}
    for cat in wanted:
        lines = (ln.strip() for ln in (folder / f"{cat}.txt").read_text(encoding="utf-8").splitlines())
        out[cat] = [c for c in dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")) if c not in seen]
        seen.update(out[cat])
    return out


def bank_vocabulary(spec: str = BANK) -> Vocabulary:
    """The concept bank as a Vocabulary: `concepts` (every category) or `concepts:CAT,CAT` (some of them)."""
    cats = [c.strip() for c in spec.partition(":")[2].split(",") if c.strip()] or None
    bank = concept_bank(cats)
    concepts = [c for cs in bank.values() for c in cs]
    sizes = ", ".join(f"{k} {len(v)}" for k, v in bank.items())
    return Vocabulary(spec, concepts, f"{len(concepts)} concepts of {BANK_SOURCE}: {sizes}")


def default_vocab(lm_info: dict) -> str:
    """The vocabulary a model gets when none is named: its own (`model`) when it ships one (the demo CLIP), the
    concept bank for a real open_clip model, `words` for embedlab's own small configs (embedlab-tiny, tests)."""
    if model_vocab_path(lm_info) is not None:
        return "model"
    return "words" if str(lm_info.get("model", "")).startswith("embedlab-") else BANK


def resolve_vocab(spec: str | None, lm) -> Vocabulary:
    """`spec` None picks `default_vocab`: the model's own vocabulary when it ships one, else the concept bank for a
    real open_clip model, else `words`."""
    own = model_vocab_path(lm.info)
    if spec in (None, "", "default"):
        spec = default_vocab(lm.info)
    if spec == BANK or spec.startswith(BANK + ":"):
        return bank_vocabulary(spec)
    if spec == "model":
        if own is None:
            raise ConfigError(
                f"{lm.info['model']}/{lm.info['pretrained']} ships no vocabulary; use concepts, tokens, words or a "
                "file."
            )
        return Vocabulary("model", read_vocab_file(own), f"the model's own vocabulary ({own.name})")
    if spec in ("tokens", "words"):
        tokens = tokenizer_record(lm)["tokens"]
        if spec == "tokens":
            uniq = list(dict.fromkeys(t for t in tokens if t))
            return Vocabulary("tokens", uniq, f"all {len(tokens)} tokenizer tokens ({len(uniq)} distinct strings)")
        words = words_from_tokens(tokens)
        return Vocabulary("words", words, f"{len(words)} whole alphabetic words from the tokenizer")
    if Path(spec).is_dir():  # a folder where the vocabulary file goes
        raise ConfigError(
            f"The 'vocab' {spec} is a folder; a vocabulary is a text file with one concept per line (or concepts, "
            "tokens, words, model). Fix: pass such a file, e.g. one written with "
            "`printf 'sky\\nface\\n' > concepts.txt`."
        ).naming("vocab")
    return Vocabulary(Path(spec).stem, read_vocab_file(spec), f"file {spec}")


def resolve_templates(spec: str | None) -> list[str]:
    spec = spec or "none"
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if "{}" not in spec:
        raise ConfigError(
            f"Template {spec!r} must be one of {sorted(TEMPLATES)} or contain '{{}}' (e.g. 'a photo of {{}}.')."
        )
    return [spec]


def embed_concepts(
    lm,
    concepts: list[str],
    templates: list[str],
    batch_size: int = 1024,
    cache: bool = True,
    progress: bool = False,
    normalize: bool = True,
) -> tuple[np.ndarray, dict]:
    """Unit text embeddings (n, d) float32 of each concept (template ensemble averaged, then renormalised).

    Cached per (weights sha256, tokenizer, concept list, templates): the second call reads one .npy."""
    from embedlab import models

    if "tokenizer" not in lm.info:
        tokenizer_record(lm)  # the tokenizer's identity, in lm.info, is part of the key
    key_src = json.dumps(
        {
            "w": lm.info["weights_sha256"],
            "tok": lm.info.get("tokenizer"),
            "ctx": lm.info.get("context_length"),
            "concepts": hashlib.sha256("\n".join(concepts).encode("utf-8", "surrogateescape")).hexdigest(),
            "templates": templates,
            "normalize": normalize,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    path = cache_dir() / "text" / f"{key}.npy"
    if cache and path.exists():
        emb = load_npy(path)
        if emb.shape == (len(concepts), lm.dim):
            return emb, {"cache": "hit", "cache_file": str(path)}
    if hasattr(lm, "loaded"):
        lm = lm.loaded()
    acc = np.zeros((len(concepts), lm.dim), np.float64)
    for tpl in templates:
        acc += models.encode_texts(
            lm, [tpl.format(c) for c in concepts], batch_size=batch_size, progress=progress, normalize=normalize
        )
    if normalize:
        emb = (acc / np.linalg.norm(acc, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
    else:
        emb = (acc / len(templates)).astype(np.float32)
    if cache:
        atomic_save_npy(path, emb)
        atomic_write_json(path.with_suffix(".json"), json.loads(key_src) | {"n": len(concepts)})
    return emb, {"cache": "miss", "cache_file": str(path) if cache else None}
