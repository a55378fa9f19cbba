"""layouts: split from manifests.py."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from embedlab._io import list_images, read_text
from embedlab._validate import check_param
from embedlab.datasets import photos
from embedlab.datasets.manifest import write_manifest
from embedlab.datasets.webdataset import WDS_HELP, iter_webdataset_records, webdataset_manifest
from embedlab.errors import ManifestError


# ---------------------------------------------------------------- generators
def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ManifestError(f"Folder {folder} does not exist. Fix: point ROOT at the dataset root.")
    return list_images(folder)


@dataclass(frozen=True)
class Layout:
    """A dataset layout: a generator of manifest records from a root folder, and the folder structure it expects."""

    name: str
    generate: Callable[..., tuple[list[dict], dict]]
    help: str


_LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, help: str):
    """Decorator: register a layout generator `fn(root: Path, **opts) -> (records, report)` under `name`."""

    def deco(fn):
        if name in _LAYOUTS:
            raise ValueError(f"Layout {name!r} is registered twice.")
        _LAYOUTS[name] = Layout(name, fn, help)
        return fn

    return deco


def list_layouts() -> tuple[str, ...]:
    """Names of the registered layouts, in registration order."""
    return tuple(_LAYOUTS)


def get_layout(name: str) -> Layout:
    if name not in _LAYOUTS:
        raise ManifestError(f"Unknown layout {name!r}. Available: {', '.join(sorted(_LAYOUTS))}.")
    return _LAYOUTS[name]


_DUP = re.compile(r"^(?P<stem>.*?)\((?P<k>\d+)\)$")


def baid_stem(stem: str) -> tuple[str, int]:
    """('name', k) for BAID's duplicate file names 'name(k)'; ('name', 1) for any other stem."""
    m = _DUP.match(stem)
    return (m.group("stem"), int(m.group("k"))) if m else (stem, 1)


def _pairs_by_stem(inputs: list[Path], gts: list[Path], dropped: list[str]) -> list[tuple[Path, Path | None, str]]:
    gt_by_stem = {baid_stem(p.stem)[0]: p for p in gts if baid_stem(p.stem)[1] == 1}
    out, taken = [], set()
    for p in inputs:
        stem, k = baid_stem(p.stem)
        if k > 1 or stem in taken:
            dropped.append(p.name)
            continue
        taken.add(stem)
        out.append((p, gt_by_stem.get(stem), stem))
    return out


def generate(layout: str, root: str | os.PathLike, **opts: Any) -> tuple[list[dict], dict]:
    """Records and a report (counts, dropped duplicates) for a dataset layout. See `list_layouts()`."""
    spec = get_layout(layout)
    root = Path(root)
    if layout not in (*ROOTLESS, "webdataset") and not root.is_dir():
        raise ManifestError(f"Dataset root {root} does not exist. Fix: pass the folder that holds the {layout} data.")
    records, report = spec.generate(root, **opts)
    if not records:
        raise ManifestError(
            f"Layout {layout!r} found zero images under {root}. Fix: check ROOT and the layout name "
            f"(expected structure: {spec.help})."
        )
    report.setdefault("count", len(records))
    return records, report


def _rel(p: Path, root: Path) -> str:
    return os.path.relpath(p, root)


@register_layout("flat", "ROOT/*.png|jpg (DIV2K, Backlit300, BAID_380); one role for all files")
def _gen_flat(root: Path, role: str = "welllit", split: str = "train", source: str | None = None, **_):
    recs = [
        {"path": _rel(p, root), "role": role, "split": split, "group": p.stem, "source": source or root.name}
        for p in _images_in(root)
    ]
    return recs, {}


@register_layout(
    "baid",
    "ROOT/test/resize_input + ROOT/test/resize_gt (CLIP-LIT), ROOT/BAID_380/resize_input, "
    "or ROOT/train/backlit + ROOT/train/well-lit (RAVE)",
)
def _gen_baid(root: Path, split: str | None = None, **_):
    """BAID in the CLIP-LIT (resize_input/resize_gt, BAID_380/resize_input) or RAVE (train/backlit,
    train/well-lit) layout."""
    recs: list[dict] = []
    dropped: list[str] = []
    candidates = [
        ("test", "test/resize_input", "test/resize_gt"),
        ("test", "test/input", "test/gt"),
        ("train", "train/backlit", "train/well-lit"),
        ("train", "train/input", "train/gt"),
        ("train", "BAID_380/resize_input", None),
        ("train", "resize_input", "resize_gt"),
    ]
    for sp, inp, gt in candidates:
        if not (root / inp).is_dir():
            continue
        gts = _images_in(root / gt) if gt and (root / gt).is_dir() else []
        for src, gt_path, stem in _pairs_by_stem(_images_in(root / inp), gts, dropped):
            if gt and (root / gt).is_dir() and gt_path is None:
                raise ManifestError(
                    f"BAID: {src} has no ground truth with stem {stem!r} in {root / gt} (broken pair). "
                    "Fix: restore the GT file or remove the input."
                )
            recs.append(
                {
                    "path": _rel(src, root),
                    "role": "backlit",
                    "split": split or sp,
                    "group": stem,
                    "pair_id": f"baid:{stem}",
                    "gt": _rel(gt_path, root) if gt_path else None,
                    "source": "BAID",
                    "license": "research-only",
                }
            )
            if gt_path is not None and sp == "train":
                recs.append(
                    {
                        "path": _rel(gt_path, root),
                        "role": "welllit",
                        "split": split or sp,
                        "group": stem,
                        "pair_id": f"baid:{stem}",
                        "source": "BAID",
                        "license": "research-only",
                    }
                )
    return recs, {"dropped_duplicates": dropped}


@register_layout("lol", "ROOT/our485/{low,high}/N.png and ROOT/eval15/{low,high}/N.png")
def _gen_lol(root: Path, **_):
    recs = []
    for sub, sp in (("our485", "train"), ("eval15", "test")):
        if not (root / sub).is_dir():
            continue
        for low in _images_in(root / sub / "low"):
            high = root / sub / "high" / low.name
            if not high.exists():
                raise ManifestError(f"LOL: {low} has no partner {high} (broken pair).")
            recs += _low_high_pair(_rel(low, root), _rel(high, root), sp, f"lol:{sub}/{low.stem}", "LOL")
    return recs, {}


def _low_high_pair(low: str, high: str, split: str, pid: str, source: str) -> list[dict]:
    """The records of a low-light image and its well-lit partner (its ground truth): one group, one pair id."""
    return [
        {"path": low, "role": "lowlight", "split": split, "group": pid, "pair_id": pid, "gt": high, "source": source},
        {"path": high, "role": "welllit", "split": split, "group": pid, "pair_id": pid, "source": source},
    ]


@register_layout(
    "lolv2", "ROOT/{Real_captured,Synthetic}/{Train,Test}/{Low,Normal}/ (lowNNNNN.png <-> normalNNNNN.png)"
)
def _gen_lolv2(root: Path, **_):
    recs = []
    for subset in ("Real_captured", "Synthetic"):
        for sp in ("Train", "Test"):
            low_dir = root / subset / sp / "Low"
            if not low_dir.is_dir():
                continue
            for low in _images_in(low_dir):
                name = low.name.replace("low", "normal", 1) if subset == "Real_captured" else low.name
                high = root / subset / sp / "Normal" / name
                if not high.exists():
                    raise ManifestError(f"LOL-v2: {low} has no partner {high} (broken pair).")
                pid = f"lolv2:{subset}/{sp}/{low.stem}"
                recs += _low_high_pair(_rel(low, root), _rel(high, root), sp.lower(), pid, f"LOL-v2 {subset}")
    return recs, {}


@register_layout("sice", "ROOT/Dataset_PartN/<seq>/<k>.JPG with ROOT/Dataset_PartN/Label/<seq>.JPG")
def _gen_sice(root: Path, split: str = "train", **_):
    recs = []
    parts = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("Dataset_Part"))
    for part in parts:
        if (part / part.name).is_dir():  # some mirrors nest Dataset_Part1/Dataset_Part1
            part = part / part.name
        labels = {p.stem: p for p in _images_in(part / "Label")} if (part / "Label").is_dir() else {}
        for seq in sorted(p for p in part.iterdir() if p.is_dir() and p.name != "Label"):
            gt = labels.get(seq.name)
            if gt is None:
                raise ManifestError(f"SICE: sequence {seq} has no label in {part / 'Label'} (broken pair).")
            pid = f"sice:{part.name}/{seq.name}"
            for frame in _images_in(seq):
                recs.append(
                    {
                        "path": _rel(frame, root),
                        "role": "exposure-bracket",
                        "split": split,
                        "group": pid,
                        "pair_id": pid,
                        "gt": _rel(gt, root),
                        "source": "SICE",
                    }
                )
    return recs, {}


@register_layout("fivek480", "ROOT/{train,test}.txt, ROOT/input/JPG/480p/<name>.jpg, ROOT/expertC/JPG/480p/<name>.jpg")
def _gen_fivek480(root: Path, expert: str = "C", **_):
    recs = []
    for sp in ("train", "test"):
        listing = root / f"{sp}.txt"
        if not listing.exists():
            listing = root / f"{sp}_input.txt"
        if not listing.exists():
            continue
        for name in read_text(listing, "a FiveK split listing (one image name per line)").split():
            stem = Path(name).stem
            inp = root / "input" / "JPG" / "480p" / f"{stem}.jpg"
            gt = root / f"expert{expert}" / "JPG" / "480p" / f"{stem}.jpg"
            if not gt.exists():
                raise ManifestError(f"FiveK: {gt} (expert {expert} GT of {stem}) not found (broken pair).")
            recs.append(
                {
                    "path": _rel(inp, root),
                    "role": "input",
                    "split": sp,
                    "group": stem,
                    "pair_id": f"fivek:{stem}",
                    "gt": _rel(gt, root),
                    "source": "MIT-Adobe FiveK 480p",
                    "license": "research-only",
                }
            )
    return recs, {}


_AFIFI = re.compile(r"^(?P<name>.+)_(?P<ev>N1\.5|N1|0|P1|P1\.5)$")


@register_layout(
    "afifi", "ROOT/{training,validation,testing}/INPUT_IMAGES/<name>_{N1.5,N1,0,P1,P1.5}.JPG with GT_IMAGES/<name>.jpg"
)
def _gen_afifi(root: Path, **_):
    recs = []
    for split_dir, sp in (("training", "train"), ("validation", "val"), ("testing", "test")):
        inp_dir = root / split_dir / "INPUT_IMAGES"
        if not inp_dir.is_dir():
            continue
        gt_dir = root / split_dir / "GT_IMAGES"
        if not gt_dir.is_dir():
            gt_dir = root / split_dir / "expert_c_testing_set"
        for p in _images_in(inp_dir):
            m = _AFIFI.match(p.stem)
            if not m:
                continue
            gt = gt_dir / f"{m.group('name')}.jpg"
            if not gt.exists():
                raise ManifestError(f"Afifi: {p} has no GT {gt} (broken pair).")
            ev = m.group("ev")
            role = "underexposed" if ev.startswith("N") else "overexposed" if ev.startswith("P") else "exposure-0"
            recs.append(
                {
                    "path": _rel(p, root),
                    "role": role,
                    "split": sp,
                    "group": m.group("name"),
                    "pair_id": f"afifi:{m.group('name')}",
                    "gt": _rel(gt, root),
                    "source": "Afifi exposure",
                    "params": {"ev": ev},
                }
            )
    return recs, {}


DEMO_TEST_PHOTOS = ("coffee", "china.jpg")
DEMO_BIAS_CONCEPT = "vignetted"  # the planted bias: the well-lit training set is vignetted (a word the demo CLIP knows)
DEMO_VIGNETTE_EV = 2.0  # stops lost at the corners of every well-lit training image


@register_layout(
    "demo",
    "(no ROOT needed) the photos inside scikit-image and scikit-learn (colour and grayscale), Recipe-A backlit "
    "versions and a vignetted well-lit set",
)
def _gen_demo(
    root: Path,
    backlit_seeds: int = 4,
    welllit_crops: int = 3,
    test_seeds: int = 2,
    vignette_ev: float = DEMO_VIGNETTE_EV,
    **_,
):
    """The bundled demo: package photos (photos.demo_photos(), one group each), Recipe-A backlit versions, a planted
    lens bias.

    Split by source photo: the test photos' backlit versions are held out for enhancement and evaluation and appear
    in no training or residual set; their originals (the ground truth) are not vignetted. Every training photo gives
    `backlit_seeds` Recipe-A backlit images and `welllit_crops` well-lit ones (the photo and seeded crops of it), and
    every well-lit training image carries a lens vignette of `vignette_ev` stops at the corners: the backlit ->
    well-lit residual carries 'vignetted' on purpose, in every group, so a within-group test can find it.
    """
    recs = []
    for photo in photos.demo_photos():
        name = photo.uri.split("/", 1)[1]
        group = name.split(".")[0]
        base = {"group": group, "source": photo.source, "license": photo.license}
        if name in DEMO_TEST_PHOTOS:
            recs += [_demo_backlit(photo.uri, seed, "test", base) for seed in range(100, 100 + test_seeds)]
            recs.append({"path": photo.uri, "role": "welllit", "split": "test", **base})
            continue
        for c in range(welllit_crops):
            synth_spec = {"recipe": "V", "source": photo.uri, "ev": float(vignette_ev)}
            if c:
                synth_spec["crop_seed"] = c
            recs.append(
                {"path": f"synth:V/{group}/c{c}", "role": "welllit", "split": "train", "synth": synth_spec, **base}
            )
        recs += [_demo_backlit(photo.uri, seed, "train", base) for seed in range(backlit_seeds)]
    train_groups = sorted({r["group"] for r in recs if r["split"] == "train"})
    return recs, {
        "bias": {"concept": DEMO_BIAS_CONCEPT, "vignette_ev": float(vignette_ev), "on": "role=welllit,split=train"},
        "train_groups": len(train_groups),
        "test_photos": list(DEMO_TEST_PHOTOS),
    }


def _demo_backlit(uri: str, seed: int, split: str, base: dict) -> dict:
    """The record of a Recipe-A backlit version (seed `seed`) of a demo photo, paired with the photo as its GT."""
    group = base["group"]
    return {
        "path": f"synth:A/{group}/s{seed}",
        "role": "backlit",
        "split": split,
        "gt": uri,
        "pair_id": f"{group}:s{seed}",
        "synth": {"recipe": "A", "source": uri, "seed": seed},
        **base,
    }


@register_layout(
    "audit-demo",
    "(no ROOT needed) the slice audit's planted world: package photos as groups of 3 crops, with columns light "
    "(backlit: Recipe A, planted), edit (blur/jpeg/none: no lighting change) and camera (no effect); 5 groups "
    "under-exposed with no column naming them (for --discover)",
)
def _gen_audit_demo(root: Path, **_):
    from embedlab.datasets.audit_world import audit_world_records

    recs, truth = audit_world_records()
    return recs, {"planted": truth, "meta_columns": ["light", "edit", "camera"]}


ROOTLESS = ("demo", "audit-demo")


@register_layout("webdataset", WDS_HELP)
def _gen_webdataset(root: Path, **opts):
    return list(iter_webdataset_records(root, **opts)[1]), {}


def manifest(layout: str, root: str | os.PathLike, out: str | os.PathLike, **opts: Any) -> dict:
    """Generate a manifest file for a dataset layout (a name of `list_layouts()`).

    Returns the report: `files` ({"manifest": Path}), `count` and the layout's notes (e.g. dropped_duplicates)."""
    check_param("layout", layout, list_layouts(), "manifest")
    out = Path(out)
    if layout == "webdataset":  # streams: millions of members never sit in memory as records
        out, report = webdataset_manifest(root, out, **opts)
    else:
        records, report = generate(layout, root, **opts)
        root_rel = os.path.relpath(Path(root).resolve(), out.resolve().parent) if layout not in ROOTLESS else "."
        header = {"name": out.stem, "layout": layout, "root": root_rel}
        if report.get("meta_columns"):  # the records' `meta` keys that become run metadata columns
            header["meta_columns"] = list(report["meta_columns"])
        write_manifest(out, records, header)
    return {"files": {"manifest": out}, **report}
