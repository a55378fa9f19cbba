"""Data manifests: one JSON Lines format for every dataset, validated, with generators for common layouts.

Format (see data_manifests/README.md): an optional header line ``{"embedlab_manifest": 1, "name": ...,
"root": ...}`` and one record per image::

    {"path": "BAID/test/input/0152.png", "role": "backlit", "split": "test", "group": "0152",
     "pair_id": "baid:0152", "gt": "BAID/test/gt/0152.png", "source": "BAID", "license": "research-only"}

`path` and `gt` are relative to `root` (itself relative to the manifest's folder), absolute, or virtual:
``pkg:skimage/astronaut`` (a photo shipped inside a package) or ``synth:<id>`` with a ``synth`` object
``{"recipe": "A", "source": "pkg:sklearn/china.jpg", "seed": 3}`` that is rendered deterministically into
the cache on first use.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import photos
from ._io import IMAGE_EXTENSIONS, atomic_write_bytes, cache_dir, display_path, hash_records, list_images
from .errors import ManifestError
from ._validate import check_param

FORMAT_VERSION = 1
RECORD_FIELDS = ("path", "role", "split", "group", "pair_id", "gt", "source", "license", "params", "synth", "tar", "meta")


@dataclass
class ManifestEntry:
    path: str
    role: str
    split: str = "train"
    group: str | None = None
    pair_id: str | None = None
    gt: str | None = None
    source: str | None = None
    license: str | None = None
    params: dict | None = None
    synth: dict | None = None
    tar: dict | None = None      # webdataset member: {"file": tar path (like `path`), "member", "offset", "size"}
    meta: dict | None = None     # per-image source metadata (img2dataset's url, caption, key, status, width, height)
    line: int = 0

    def to_record(self) -> dict:
        rec = {k: getattr(self, k) for k in RECORD_FIELDS}
        return {k: v for k, v in rec.items() if v is not None}


@dataclass
class Manifest:
    """A parsed manifest. `entries` keep their line numbers for error messages."""

    path: Path | None
    header: dict = field(default_factory=dict)
    entries: list[ManifestEntry] = field(default_factory=list)

    @property
    def root(self) -> Path:
        base = self.path.parent if self.path is not None else Path.cwd()
        return (base / self.header.get("root", ".")).resolve()   # an absolute root replaces the base

    @property
    def name(self) -> str:
        return str(self.header.get("name") or (self.path.stem if self.path else "manifest"))

    def where(self, entry: ManifestEntry) -> str:
        return f"{self.path or '<manifest>'} line {entry.line}"

    def resolve(self, path: str) -> str:
        """Absolute file-system path for a record path (virtual paths are returned unchanged)."""
        if is_virtual(path) or os.path.isabs(path):
            return path
        return os.path.join(str(self.root), path)

    def roles(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e.role] = counts.get(e.role, 0) + 1
        return counts

    def select(self, selector=None, *, role: str | None = None, split: str | None = None) -> list[ManifestEntry]:
        """Entries a selector picks (a `Selector`, or its text: 'backlit', 'role=backlit,split=test'), or those with
        the given role and/or split; an error names the manifest and the roles it has."""
        from .selector import Selector

        clauses = [f"role={role}"] * (role is not None) + [f"split={split}"] * (split is not None)
        if selector is None and not clauses:
            return list(self.entries)
        sel = Selector.parse(selector if selector is not None else ",".join(clauses))
        out = sel.filter(self.entries)
        if not out:
            splits = sorted({e.split for e in self.entries})
            wanted = " and ".join(f"{c}={v!r}" for c, v in sel.clauses)
            raise ManifestError(
                f"No image in {self.path} has {wanted}. Roles present: {self.roles()}; splits: {splits}. Fix: pass one "
                f"of those labels, or add records with those values (e.g. \"role\": \"{dict(sel.clauses).get('role', 'backlit')}\") "
                "to the manifest.")
        return out

    def fingerprint(self) -> str:
        return hash_records(e.to_record() for e in self.entries)


def is_virtual(path: str) -> bool:
    return path.startswith("pkg:") or path.startswith("synth:") or path.startswith(WDS_PREFIX)


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> Manifest:
    """Parse and validate a manifest. Raises ManifestError naming the line and the fix."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"Manifest {path} does not exist. Create one with `embedlab manifest LAYOUT ROOT --out {path}`.")
    manifest = Manifest(path=path)
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            item = parse_line(path, lineno, raw, after_entries=bool(manifest.entries))
            if item is None:
                continue
            if isinstance(item, dict):
                manifest.header = item
                continue
            entry = item
            if entry.path in seen:
                raise _duplicate(path, lineno, entry.path, seen[entry.path])
            seen[entry.path] = lineno
            manifest.entries.append(entry)
    if not manifest.entries:
        raise ManifestError(f"{path} lists zero images. Fix: add records, or regenerate it with `embedlab manifest`.")
    if check_files:
        validate_files(manifest)
    return manifest


def parse_line(path, lineno: int, raw: str, after_entries: bool = False):
    """One manifest line: None (blank or comment), the header (a dict) or a validated ManifestEntry."""
    text = raw.strip()
    if not text or text.startswith("#"):
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} line {lineno}: not valid JSON ({exc.msg}). Fix: one JSON object per line.") from None
    if not isinstance(rec, dict):
        raise ManifestError(f"{path} line {lineno}: expected a JSON object, got {type(rec).__name__}.")
    if "embedlab_manifest" in rec:
        if after_entries:
            raise ManifestError(f"{path} line {lineno}: the header must be the first record.")
        if rec["embedlab_manifest"] != FORMAT_VERSION:
            raise ManifestError(f"{path} line {lineno}: unsupported manifest version {rec['embedlab_manifest']!r} (expected {FORMAT_VERSION}).")
        return rec
    unknown = set(rec) - set(RECORD_FIELDS)
    if unknown:
        raise ManifestError(f"{path} line {lineno}: unknown field(s) {sorted(unknown)}. Allowed: {list(RECORD_FIELDS)}.")
    for key in ("path", "role"):
        if not isinstance(rec.get(key), str) or not rec[key]:
            raise ManifestError(f"{path} line {lineno}: missing \"{key}\" (a non-empty string). Every record needs path and role.")
    entry = ManifestEntry(line=lineno, **{k: rec[k] for k in rec})
    entry.split = entry.split or "train"
    if entry.path.startswith("synth:") and not isinstance(entry.synth, dict):
        raise ManifestError(f"{path} line {lineno}: virtual path {entry.path!r} needs a \"synth\" object "
                            "like {\"recipe\": \"A\", \"source\": \"pkg:skimage/astronaut\", \"seed\": 0}.")
    return entry


def _duplicate(path, lineno: int, value: str, first: int) -> ManifestError:
    return ManifestError(f"{path} line {lineno}: duplicate path {value!r} (first on line {first}). "
                         "Fix: list each image once; use \"group\" to tie variants of one scene together.")


def validate_files(manifest: Manifest) -> None:
    """Check that the root exists and that every plain path and ground truth exists."""
    if not all(is_virtual(e.path) or os.path.isabs(e.path) for e in manifest.entries) and not manifest.root.is_dir():
        raise ManifestError(f"{manifest.path}: root folder {manifest.root} does not exist. Fix: set \"root\" in the header "
                            "line to the dataset folder (relative to the manifest's folder), or move the manifest.")
    missing = []
    for e in manifest.entries:
        for key in ("path", "gt"):
            value = getattr(e, key)
            if value is None or is_virtual(value):
                continue
            full = manifest.resolve(value)
            if not os.path.lexists(full):
                what = "image" if key == "path" else "paired ground truth (broken pair)"
                missing.append(f"{manifest.where(e)}: {what} {display_path(full)} not found")
    for tar in sorted({e.tar["file"] for e in manifest.entries if e.tar}):
        if not os.path.isfile(manifest.resolve(tar)):
            missing.append(f"{manifest.path}: webdataset shard {display_path(manifest.resolve(tar))} not found")
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ManifestError("; ".join(missing[:5]) + more + ". Fix: correct the paths or the header's \"root\", "
                            "or drop those records.")


def write_manifest(path: str | os.PathLike, records: Iterable[dict], header: dict | None = None) -> Path:
    path = Path(path)
    lines = [json.dumps({"embedlab_manifest": FORMAT_VERSION, **(header or {})})]
    lines += [json.dumps({k: v for k, v in r.items() if v is not None}) for r in records]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    return path


# ---------------------------------------------------------------- virtual images
def materialize(manifest: Manifest, value: str, entry: ManifestEntry | None = None) -> str:
    """A real file path for a record path, rendering `pkg:` and `synth:` images into the cache once."""
    if value.startswith("pkg:"):
        return _cached_png(f"pkg/{value[4:].replace('/', '_')}.png", lambda: photos.load_photo(value))
    if value.startswith("synth:"):
        spec = entry.synth if entry is not None else None
        if not spec:
            raise ManifestError(f"{value!r} has no synth spec")
        key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
        return _cached_png(f"synth/{value[6:].replace('/', '_')}_{key}.png", lambda: render_synth(manifest, spec))
    return manifest.resolve(value)


def render_synth(manifest: Manifest, spec: dict) -> np.ndarray:
    """Render a synth spec: recipe A/B/C, or 'crop' (a seeded crop + flip, for well-lit variants)."""
    from . import synth
    from .images import load_rgb

    src = spec["source"]
    base = photos.load_photo(src) if src.startswith("pkg:") else load_rgb(manifest.resolve(src))
    recipe = str(spec.get("recipe", "A")).upper()
    if spec.get("crop_seed") is not None:
        base = seeded_crop(base, int(spec["crop_seed"]))
    if recipe == "NONE":
        return base
    return synth.render(base, recipe, int(spec.get("seed", 0)), spec.get("ev")).image


def seeded_crop(u8: np.ndarray, seed: int, min_frac: float = 0.75) -> np.ndarray:
    """A deterministic random crop (75-100% per side) with a random horizontal flip."""
    rng = np.random.default_rng(seed)
    h, w, _ = u8.shape
    fh, fw = rng.uniform(min_frac, 1.0), rng.uniform(min_frac, 1.0)
    ch, cw = max(8, int(h * fh)), max(8, int(w * fw))
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    out = u8[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _cached_png(rel: str, make) -> str:
    from PIL import Image

    target = cache_dir() / "images" / rel
    if not target.exists():
        import io

        buf = io.BytesIO()
        Image.fromarray(make()).save(buf, format="PNG")
        atomic_write_bytes(target, buf.getvalue())
    return str(target)


# ---------------------------------------------------------------- generators
def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ManifestError(f"Folder {folder} does not exist. Fix: point ROOT at the dataset root.")
    return list_images(folder)


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
    """Records and a report (counts, dropped duplicates) for a dataset layout. See `LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ManifestError(f"Unknown layout {layout!r}. Available: {', '.join(sorted(LAYOUTS))}.")
    root = Path(root)
    if layout not in ("demo", "webdataset") and not root.is_dir():
        raise ManifestError(f"Dataset root {root} does not exist. Fix: pass the folder that holds the {layout} data.")
    records, report = LAYOUTS[layout](root, **opts)
    if not records:
        raise ManifestError(f"Layout {layout!r} found zero images under {root}. Fix: check ROOT and the layout name "
                            f"(expected structure: {LAYOUT_HELP[layout]}).")
    report.setdefault("count", len(records))
    return records, report


def _rel(p: Path, root: Path) -> str:
    return os.path.relpath(p, root)


def _gen_flat(root: Path, role: str = "welllit", split: str = "train", source: str | None = None, **_):
    recs = [{"path": _rel(p, root), "role": role, "split": split, "group": p.stem, "source": source or root.name}
            for p in _images_in(root)]
    return recs, {}


def _gen_baid(root: Path, split: str | None = None, **_):
    """BAID in the CLIP-LIT (resize_input/resize_gt, BAID_380/resize_input) or RAVE (train/backlit, train/well-lit) layout."""
    recs: list[dict] = []
    dropped: list[str] = []
    candidates = [("test", "test/resize_input", "test/resize_gt"), ("test", "test/input", "test/gt"),
                  ("train", "train/backlit", "train/well-lit"), ("train", "train/input", "train/gt"),
                  ("train", "BAID_380/resize_input", None), ("train", "resize_input", "resize_gt")]
    for sp, inp, gt in candidates:
        if not (root / inp).is_dir():
            continue
        gts = _images_in(root / gt) if gt and (root / gt).is_dir() else []
        for src, gt_path, stem in _pairs_by_stem(_images_in(root / inp), gts, dropped):
            if gt and (root / gt).is_dir() and gt_path is None:
                raise ManifestError(f"BAID: {src} has no ground truth with stem {stem!r} in {root / gt} (broken pair). "
                                    "Fix: restore the GT file or remove the input.")
            recs.append({"path": _rel(src, root), "role": "backlit", "split": split or sp, "group": stem,
                         "pair_id": f"baid:{stem}", "gt": _rel(gt_path, root) if gt_path else None,
                         "source": "BAID", "license": "research-only"})
            if gt_path is not None and sp == "train":
                recs.append({"path": _rel(gt_path, root), "role": "welllit", "split": split or sp, "group": stem,
                             "pair_id": f"baid:{stem}", "source": "BAID", "license": "research-only"})
    return recs, {"dropped_duplicates": dropped}


def _gen_lol(root: Path, **_):
    recs = []
    for sub, sp in (("our485", "train"), ("eval15", "test")):
        if not (root / sub).is_dir():
            continue
        for low in _images_in(root / sub / "low"):
            high = root / sub / "high" / low.name
            if not high.exists():
                raise ManifestError(f"LOL: {low} has no partner {high} (broken pair).")
            pid = f"lol:{sub}/{low.stem}"
            recs.append({"path": _rel(low, root), "role": "lowlight", "split": sp, "group": pid, "pair_id": pid,
                         "gt": _rel(high, root), "source": "LOL"})
            recs.append({"path": _rel(high, root), "role": "welllit", "split": sp, "group": pid, "pair_id": pid, "source": "LOL"})
    return recs, {}


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
                recs.append({"path": _rel(low, root), "role": "lowlight", "split": sp.lower(), "group": pid, "pair_id": pid,
                             "gt": _rel(high, root), "source": f"LOL-v2 {subset}"})
                recs.append({"path": _rel(high, root), "role": "welllit", "split": sp.lower(), "group": pid, "pair_id": pid,
                             "source": f"LOL-v2 {subset}"})
    return recs, {}


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
                recs.append({"path": _rel(frame, root), "role": "exposure-bracket", "split": split, "group": pid,
                             "pair_id": pid, "gt": _rel(gt, root), "source": "SICE"})
    return recs, {}


def _gen_fivek480(root: Path, expert: str = "C", **_):
    recs = []
    for sp in ("train", "test"):
        listing = root / f"{sp}.txt"
        if not listing.exists():
            listing = root / f"{sp}_input.txt"
        if not listing.exists():
            continue
        for name in listing.read_text().split():
            stem = Path(name).stem
            inp = root / "input" / "JPG" / "480p" / f"{stem}.jpg"
            gt = root / f"expert{expert}" / "JPG" / "480p" / f"{stem}.jpg"
            if not gt.exists():
                raise ManifestError(f"FiveK: {gt} (expert {expert} GT of {stem}) not found (broken pair).")
            recs.append({"path": _rel(inp, root), "role": "input", "split": sp, "group": stem, "pair_id": f"fivek:{stem}",
                         "gt": _rel(gt, root), "source": "MIT-Adobe FiveK 480p", "license": "research-only"})
    return recs, {}


_AFIFI = re.compile(r"^(?P<name>.+)_(?P<ev>N1\.5|N1|0|P1|P1\.5)$")


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
            recs.append({"path": _rel(p, root), "role": role, "split": sp, "group": m.group("name"),
                         "pair_id": f"afifi:{m.group('name')}", "gt": _rel(gt, root), "source": "Afifi exposure",
                         "params": {"ev": ev}})
    return recs, {}


DEMO_TEST_PHOTOS = ("coffee", "china.jpg")
DEMO_BIAS_PHOTO = "chelsea"


def _gen_demo(root: Path, backlit_seeds: int = 4, bias_copies: int = 8, test_seeds: int = 2, **_):
    """The bundled demo: package photos, Recipe-A backlit versions, a planted content bias.

    Split by source photo: the test photos' backlit versions are held out for enhancement and evaluation
    and appear in no training or residual set. The well-lit training set over-represents the cat photo
    (several seeded crops of it), so the backlit -> well-lit residual carries a 'cat' direction on purpose.
    """
    recs = []
    for photo in photos.package_photos():
        name = photo.uri.split("/", 1)[1]
        group = name.split(".")[0]
        base = {"group": group, "source": photo.source, "license": photo.license}
        if name in DEMO_TEST_PHOTOS:
            for seed in range(100, 100 + test_seeds):
                recs.append({"path": f"synth:A/{group}/s{seed}", "role": "backlit", "split": "test", "gt": photo.uri,
                             "pair_id": f"{group}:s{seed}", "synth": {"recipe": "A", "source": photo.uri, "seed": seed}, **base})
            recs.append({"path": photo.uri, "role": "welllit", "split": "test", **base})
            continue
        recs.append({"path": photo.uri, "role": "welllit", "split": "train", **base})
        copies = bias_copies if group == DEMO_BIAS_PHOTO else 1
        for c in range(1, copies):
            recs.append({"path": f"synth:crop/{group}/c{c}", "role": "welllit", "split": "train",
                         "synth": {"recipe": "none", "source": photo.uri, "crop_seed": c}, **base})
        for seed in range(backlit_seeds):
            recs.append({"path": f"synth:A/{group}/s{seed}", "role": "backlit", "split": "train", "gt": photo.uri,
                         "pair_id": f"{group}:s{seed}", "synth": {"recipe": "A", "source": photo.uri, "seed": seed}, **base})
    return recs, {"bias_photo": DEMO_BIAS_PHOTO, "test_photos": list(DEMO_TEST_PHOTOS)}


LAYOUTS = {"flat": _gen_flat, "baid": _gen_baid, "lol": _gen_lol, "lolv2": _gen_lolv2, "sice": _gen_sice,
           "fivek480": _gen_fivek480, "afifi": _gen_afifi, "demo": _gen_demo,
           "webdataset": lambda root, **o: (list(iter_webdataset_records(root, **o)[1]), {})}
LAYOUT_HELP = {
    "flat": "ROOT/*.png|jpg (DIV2K, Backlit300, BAID_380); one role for all files",
    "baid": "ROOT/test/resize_input + ROOT/test/resize_gt (CLIP-LIT), ROOT/BAID_380/resize_input, or ROOT/train/backlit + ROOT/train/well-lit (RAVE)",
    "lol": "ROOT/our485/{low,high}/N.png and ROOT/eval15/{low,high}/N.png",
    "lolv2": "ROOT/{Real_captured,Synthetic}/{Train,Test}/{Low,Normal}/ (lowNNNNN.png <-> normalNNNNN.png)",
    "sice": "ROOT/Dataset_PartN/<seq>/<k>.JPG with ROOT/Dataset_PartN/Label/<seq>.JPG",
    "fivek480": "ROOT/{train,test}.txt, ROOT/input/JPG/480p/<name>.jpg, ROOT/expertC/JPG/480p/<name>.jpg",
    "afifi": "ROOT/{training,validation,testing}/INPUT_IMAGES/<name>_{N1.5,N1,0,P1,P1.5}.JPG with GT_IMAGES/<name>.jpg",
    "demo": "(no ROOT needed) the photos inside scikit-image and scikit-learn, plus Recipe-A backlit versions",
    "webdataset": "ROOT/*.tar or a glob (img2dataset output: KEY.jpg with KEY.json / KEY.txt per sample); read in place",
}


def manifest(layout: str, root: str | os.PathLike, out: str | os.PathLike, **opts: Any) -> dict:
    """Generate a manifest file for a dataset layout (a name of `LAYOUTS`).

    Returns the report: `files` ({"manifest": Path}), `count` and the layout's notes (e.g. dropped_duplicates)."""
    check_param("layout", layout, tuple(LAYOUTS), "manifest")
    out = Path(out)
    if layout == "webdataset":     # streams: millions of members never sit in memory as records
        out, report = webdataset_manifest(root, out, **opts)
    else:
        records, report = generate(layout, root, **opts)
        root_rel = os.path.relpath(Path(root).resolve(), out.resolve().parent) if layout != "demo" else "."
        write_manifest(out, records, {"name": out.stem, "layout": layout, "root": root_rel})
    return {"files": {"manifest": out}, **report}


# ---------------------------------------------------------------- webdataset (tar shards, as img2dataset writes)
WDS_PREFIX = "wds:"
WDS_SEP = "::"
WDS_META_FIELDS = ("url", "caption", "key", "status", "width", "height")
_SIDECAR_MAX_BYTES = 1 << 20


def webdataset_tars(spec: str | os.PathLike) -> tuple[Path, list[Path]]:
    """The root folder and the sorted tar shards named by a folder (its *.tar) or a glob."""
    import glob

    text = os.fspath(spec)
    if os.path.isdir(text):
        root, tars = Path(text), sorted(Path(text).glob("*.tar"))
    else:
        tars = sorted(Path(p) for p in glob.glob(text) if p.endswith(".tar") and os.path.isfile(p))
        root = Path(os.path.commonpath([str(p.parent) for p in tars])) if tars else Path(os.path.dirname(text) or ".")
    if not tars:
        raise ManifestError(f"No .tar shard found at {display_path(text)}. Fix: pass the folder that holds the "
                            "webdataset shards (00000.tar, ...) or a glob such as 'shards/*.tar'.")
    return root, tars


def wds_key(member: str) -> tuple[str, str]:
    """(sample key, extension) of a webdataset member: the key is the name up to the first dot of its basename."""
    folder, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def scan_tar(tar_path: Path, notes: list[str]):
    """Yield (key, {ext: (member, offset, size, sidecar bytes or None)}) per sample, streaming through the tar.

    Members of one sample are contiguous (the webdataset convention). A damaged tar ends the scan with a note;
    samples read before the damage are kept."""
    import tarfile

    current, parts = None, {}
    try:
        with tarfile.open(tar_path, mode="r|", encoding="utf-8", errors="surrogateescape") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                key, ext = wds_key(info.name)
                if key != current and parts:
                    yield current, parts
                    parts = {}
                current = key
                side = None
                if ext in ("json", "txt") and info.size <= _SIDECAR_MAX_BYTES:
                    side = tf.extractfile(info).read()
                parts[ext] = (info.name, info.offset_data, info.size, side)
                tf.members = []          # tarfile keeps every member it has seen; a stream must not
    except (tarfile.TarError, OSError, EOFError) as exc:
        notes.append(f"{display_path(str(tar_path))}: damaged after the samples read so far ({exc})")
    if parts:
        yield current, parts


def _wds_meta(parts: dict) -> dict | None:
    meta: dict = {}
    if parts.get("json") and parts["json"][3]:
        try:
            js = json.loads(parts["json"][3].decode("utf-8", "surrogateescape"))
            meta = {k: js[k] for k in WDS_META_FIELDS if isinstance(js, dict) and js.get(k) is not None}
        except ValueError:
            meta = {"status": "unreadable-json"}
    if "caption" not in meta and parts.get("txt") and parts["txt"][3] is not None:
        meta["caption"] = parts["txt"][3].decode("utf-8", "surrogateescape")
    return meta or None


def iter_webdataset_records(spec, role: str = "welllit", split: str = "train", source: str | None = None, **_):
    """(root, record iterator, notes) for the tar shards of `spec`: one record per sample with an image member."""
    root, tars = webdataset_tars(spec)
    notes: list[str] = []
    exts = {e.lstrip(".") for e in IMAGE_EXTENSIONS}

    def records():
        for tar in tars:
            rel = os.path.relpath(tar, root)
            for key, parts in scan_tar(tar, notes):
                image_ext = next((e for e in parts if e in exts), None)
                if image_ext is None:
                    notes.append(f"{display_path(rel)}: sample {display_path(key)!r} has no image member")
                    continue
                member, offset, size, _ = parts[image_ext]
                yield {"path": f"{WDS_PREFIX}{rel}{WDS_SEP}{member}", "role": role, "split": split, "group": key,
                       "source": source or root.name, "meta": _wds_meta(parts),
                       "tar": {"file": rel, "member": member, "offset": offset, "size": size}}
    return root, records(), notes


def webdataset_manifest(spec, out: Path, role: str = "welllit", split: str | None = None, source: str | None = None,
                        **_) -> tuple[Path, dict]:
    """Write a manifest for webdataset tar shards, one line at a time (the records are never all in memory)."""
    root, records, notes = iter_webdataset_records(spec, role=role, split=split or "train", source=source)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {"embedlab_manifest": FORMAT_VERSION, "name": out.stem, "layout": "webdataset",
              "root": os.path.relpath(root.resolve(), out.resolve().parent)}
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    count = 0
    with open(tmp, "w", encoding="ascii") as fh:            # json.dumps escapes every non-ASCII character
        fh.write(json.dumps(header) + "\n")
        for rec in records:
            fh.write(json.dumps({k: v for k, v in rec.items() if v is not None}) + "\n")
            count += 1
    if not count:
        tmp.unlink()
        raise ManifestError(f"No image member in the tar shards at {display_path(os.fspath(spec))}. "
                            f"Fix: check the shards ({LAYOUT_HELP['webdataset']}).")
    os.replace(tmp, out)
    return out, {"count": count, "notes": notes}


# ---------------------------------------------------------------- streaming manifests (millions of lines)
class LazyEntries:
    """A read-only sequence of manifest entries kept as byte offsets into the manifest file (12 bytes per entry):
    an entry is parsed when it is asked for, so a manifest of millions of lines never sits in memory as objects.
    Safe across fork (each process opens its own handle) and threads (one lock per process)."""

    def __init__(self, path: Path, offsets: np.ndarray, lines: np.ndarray, stat: tuple | None = None):
        self.path, self.offsets, self.lines = Path(path), offsets, lines
        self.stat = stat            # (host, st_dev, st_ino, st_size, st_mtime_ns) at scan time: offsets are only valid then
        self._fh = self._lock = self._pid = None

    def __len__(self) -> int:
        return len(self.offsets)

    def _handle(self):
        import threading

        if self._fh is None or self._pid != os.getpid():
            fh = open(self.path, "rb")
            if self.stat is not None and not stamp_matches(self.stat, fh.fileno()):
                fh.close()
                raise ManifestError(f"Manifest {self.path} changed (or was replaced) after it was read; its line offsets "
                                    "no longer hold. Fix: do not edit a manifest while an extract uses it; rerun.")
            self._fh, self._lock, self._pid = fh, threading.Lock(), os.getpid()
        return self._fh, self._lock

    def __getitem__(self, i: int) -> ManifestEntry:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        fh, lock = self._handle()
        with lock:
            fh.seek(int(self.offsets[i]))
            raw = fh.readline()
        return parse_line(self.path, int(self.lines[i]), raw.decode("utf-8"))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self):
        return {"path": self.path, "offsets": self.offsets, "lines": self.lines, "stat": self.stat, "_fh": None,
                "_lock": None, "_pid": None}


def file_stamp(fd: int) -> tuple:
    """(host, st_dev, st_ino, st_size, st_mtime_ns) of an open file."""
    import socket

    st = os.fstat(fd)
    return (socket.gethostname(), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def stamp_matches(stamp: tuple, fd: int) -> bool:
    """The open file is the one `stamp` describes. st_dev is compared on the host that took the stamp only (a shared
    file system has another device number on each node of a cluster)."""
    now = file_stamp(fd)
    return now[2:] == tuple(stamp[2:]) and (now[0] != stamp[0] or now[1] == stamp[1])


@dataclass
class ManifestScan:
    """What one streaming pass over a manifest yields (see `scan_manifest`)."""

    manifest: Manifest            # entries: a LazyEntries of the selected records
    fingerprint: str              # Manifest.fingerprint() of the whole manifest
    input_hash: str               # the same hash over the selected records only
    roles: dict
    with_meta: int                # selected records that carry source metadata (webdataset .json)


def scan_manifest(path: str | os.PathLike, roles: list[str] | None = None, check_files: bool = True,
                  chunk: int = 4096) -> ManifestScan:
    """Validate a manifest like `read_manifest` in one streaming pass, keeping only the byte offsets of the records
    whose role is in `roles` (all when None), and the hashes a run's identity needs."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"Manifest {path} does not exist. Create one with `embedlab manifest LAYOUT ROOT --out {path}`.")
    from array import array

    man = Manifest(path=path)
    offsets, lines, keys = array("q"), array("i"), array("q")       # 20 bytes per line while scanning
    whole, chosen, counts, pending, with_meta = hashlib.sha256(), hashlib.sha256(), {}, [], 0
    with open(path, "rb") as fh:
        stamp = file_stamp(fh.fileno())
        at, lineno = 0, 0
        for raw in fh:
            lineno += 1
            item = parse_line(path, lineno, raw.decode("utf-8"), after_entries=bool(counts))
            if isinstance(item, dict):
                man.header = item
            elif item is not None:
                blob = json.dumps(item.to_record(), sort_keys=True).encode("utf-8", "surrogateescape")
                whole.update(blob)
                counts[item.role] = counts.get(item.role, 0) + 1
                keys.append(hash(item.path))                          # 64-bit, per process
                if not roles or item.role in roles:
                    chosen.update(blob)
                    offsets.append(at)
                    lines.append(lineno)
                    with_meta += item.meta is not None
                    if check_files:
                        pending.append(item)
                if check_files and len(pending) >= chunk:
                    validate_files(Manifest(path, man.header, pending))
                    pending = []
            at += len(raw)
    if not counts:
        raise ManifestError(f"{path} lists zero images. Fix: add records, or regenerate it with `embedlab manifest`.")
    if check_files and pending:
        validate_files(Manifest(path, man.header, pending))
    _check_duplicates(path, np.frombuffer(keys, dtype=np.int64))
    man.entries = LazyEntries(path, np.frombuffer(offsets, dtype=np.int64).copy(), np.frombuffer(lines, dtype=np.int32).copy(),
                              stamp)
    return ManifestScan(man, whole.hexdigest(), chosen.hexdigest(), counts, with_meta)


def _check_duplicates(path: Path, keys: np.ndarray) -> None:
    """Duplicate paths, found from 64-bit hashes (sorted); a hash collision is confirmed on the paths themselves."""
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if not len(same):
        return
    suspects = set(order[same].tolist()) | set(order[same + 1].tolist())
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as fh:
        k = -1
        for lineno, raw in enumerate(fh, 1):
            item = parse_line(path, lineno, raw)
            if isinstance(item, ManifestEntry):
                k += 1
                if k in suspects:
                    if item.path in seen:
                        raise _duplicate(path, lineno, item.path, seen[item.path])
                    seen[item.path] = lineno
