"""`embedlab synth-backlit`: writes paired synthetic sets (Recipe A, B or C; the recipes themselves are in
synth.py) with recorded seeds and a manifest."""

from __future__ import annotations

import os
from pathlib import Path

from embedlab._io import IMAGE_EXTENSIONS, atomic_write_json, check_output_dir, progress_bar
from embedlab._validate import check_param
from embedlab.datasets import photos, synth
from embedlab.errors import ConfigError


def synth_backlit(
    src: list[str] | str,
    out: str | os.PathLike,
    *,
    recipe: str = "A",
    seeds: int = 1,
    first_seed: int = 0,
    evs: tuple[float, ...] = (-1.5, -1.0, 1.0, 1.5),
    split: str = "train",
    progress: bool = True,
) -> dict:
    """Render synthetic versions of photos (image files, 'pkg' for the package photos, or any input form of
    embedlab.datasets.inputs: a folder, a manifest, a table of paths, ...) into `out`, with
    `out/manifest.jsonl` pairing each rendered image (role backlit / underexposed / overexposed) with its original
    (role welllit) and `out/params.json` recording every seed and drawn parameter."""
    from PIL import Image

    from embedlab.datasets.images import load_rgb
    from embedlab.datasets.manifest import write_manifest

    sources = _sources([src] if isinstance(src, (str, os.PathLike)) else list(src))
    recipe = check_param(
        "recipe", recipe.upper() if isinstance(recipe, str) else recipe, tuple(synth.RECIPES), "synth_backlit"
    )
    check_output_dir(out)  # a file where the folder goes: one line, before any work
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "originals").mkdir(parents=True, exist_ok=True)
    records, params = [], []
    for uri, stem in progress_bar(progress, sources, desc="synth-backlit", unit="photo"):
        base = photos.load_photo(uri) if uri.startswith("pkg:") else load_rgb(uri)
        orig = out / "originals" / f"{stem}.png"
        Image.fromarray(base).save(orig)
        records.append(
            {"path": f"originals/{stem}.png", "role": "welllit", "split": split, "group": stem, "source": uri}
        )
        for rec, seed, ev in _variants(recipe, first_seed, seeds, evs):
            result = synth.render(base, rec, seed, ev)
            name = f"{stem}_{rec}{seed}.png" if rec != "C" else f"{stem}_{synth.afifi_suffix(ev)}.png"
            Image.fromarray(result.image).save(out / "images" / name)
            records.append(_rendered_record(name, stem, rec, ev, split, result.params))
            params.append({"file": name, "source": uri, **result.params})
    write_manifest(out / "manifest.jsonl", records, {"name": "synth-" + recipe, "root": "."})
    atomic_write_json(out / "params.json", params)
    return {
        "out": str(out),
        "images": len(params),
        "files": {"manifest": str(out / "manifest.jsonl"), "params": str(out / "params.json")},
    }


def _rendered_record(name: str, stem: str, rec: str, ev: float, split: str, params: dict) -> dict:
    """The manifest record of rendered image `name` (recipe `rec`, exposure `ev`), paired with the original of
    `stem` as its ground truth."""
    return {
        "path": f"images/{name}",
        "role": "backlit" if rec != "C" else ("underexposed" if ev < 0 else "overexposed"),
        "split": split,
        "group": stem,
        "pair_id": f"{stem}:{Path(name).stem}",
        "gt": f"originals/{stem}.png",
        "source": f"synthetic-{rec}",
        "params": params,
    }


def _sources(specs: list) -> list[tuple[str, str]]:
    """(uri, stem) of every source image: image files, 'pkg' (the package photos) or 'pkg:NAME', and any input
    form of embedlab.datasets.inputs (a folder, recursively; a manifest; a table of paths; ...)."""
    from embedlab.datasets.inputs import INPUT_HELP, input_images

    sources: list[tuple[str, str]] = []
    for s in specs:
        s = str(s)
        if s == "pkg":
            sources += [(p.uri, p.uri.split("/", 1)[1].split(".")[0]) for p in photos.package_photos()]
        elif s.startswith("pkg:"):
            sources.append((s, s.split("/")[-1].split(".")[0]))
        elif Path(s).is_file() and Path(s).suffix.lower() in IMAGE_EXTENSIONS:
            sources.append((str(Path(s).resolve()), Path(s).stem))
        elif not Path(s).exists() and not any(ch in s for ch in "*?["):
            raise ConfigError(
                f"Source {s} not found. Fix: pass image files, 'pkg' (the package photos) or {INPUT_HELP}."
            )
        else:  # a wrong form (vectors, one run, ...): one line naming the forms accepted
            sources += [(str(Path(f).resolve()), Path(f).stem) for f in input_images(s)]
    if not sources:
        raise ConfigError("synth-backlit found no source images.")
    _check_stems(sources)
    return sources


def _check_stems(sources: list[tuple[str, str]]) -> None:
    """Refuse, before any work, two sources that would be written under the same name (originals/<stem>.png)."""
    seen: dict[str, str] = {}
    for uri, stem in sources:
        if seen.get(stem, uri) != uri:
            raise ConfigError(
                f"Sources {seen[stem]} and {uri} would both be written as originals/{stem}.png. Fix: rename one, or "
                "render them into separate 'out' folders."
            )
        seen[stem] = uri


def _variants(recipe: str, first_seed: int, seeds: int, evs: tuple) -> list[tuple[str, int, float | None]]:
    """(recipe, seed, ev) of each rendered version of one photo: seeded A or B versions, or C's exposures."""
    if recipe == "C":
        return [("C", 0, ev) for ev in evs]
    return [("A" if recipe == "A" else "B", s, None) for s in range(first_seed, first_seed + seeds)]
