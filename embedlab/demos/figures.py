"""The demo's figures: the held-out grid (backlit input | enhancers | original, each tile labelled with its corner
falloff), the embedding plots and the interactive map."""

from __future__ import annotations

from pathlib import Path

from embedlab.demos.page import _label
from embedlab.errors import ConfigError


def figures(out: Path, run_dir: Path, res_path: Path, test_inputs: Path, man) -> dict[str, str]:
    """The embedding plots, the before/after grid and the interactive map; returns their paths by artifact name."""
    from embedlab.reports.embedding_map import embedding_map
    from embedlab.reports.plot import plot

    arts = {
        f"plot_{k}": v for k, v in plot(run_dir, out / "plots", residual=str(res_path), progress=False)["files"].items()
    }
    raw = out / "enhanced_raw"
    arts["before_after"] = str(
        before_after_grid(test_inputs, out / "enhanced", man, out / "before_after.png", raw if raw.is_dir() else None)
    )
    arts["map"] = str(
        embedding_map(
            run_dir,
            out / "map.html",
            residual=str(res_path),
            nav=[("demo index", "index.html"), ("concept report", "report/report.html")],
        )["files"]["html"]
    )
    return arts


def before_after_grid(
    inputs: Path, enhanced: Path, man, path: Path, raw: Path | None = None, height: int = 256
) -> Path:
    """Rows of (backlit input | [enhanced, raw residual |] enhanced, corrected residual | original) for the held-out
    images, `height` px high; each tile is labelled, the enhancers' tiles with their corner falloff against the
    original (log2 of the corner-to-centre luma ratio over the original's: the planted vignette shows as < 0)."""
    import numpy as np
    from PIL import Image

    from embedlab.datasets.manifest import materialize
    from embedlab.datasets.synth import corner_centre_ratio

    gt_by_stem = {Path(materialize(man, e.path, e)).stem: materialize(man, e.gt) for e in man.entries if e.gt}
    columns = [("backlit input", None)]
    columns += [("raw residual", Path(raw))] if raw else []
    columns += [("corrected residual" if raw else "enhanced", Path(enhanced)), ("original", "gt")]
    rows = []
    for f in sorted(Path(inputs).iterdir()):
        if not (Path(enhanced) / f"{f.stem}.png").exists():
            continue
        gt = Image.open(gt_by_stem[f.stem]).convert("RGB") if f.stem in gt_by_stem else None
        ims = []
        for name, src in columns:
            if src == "gt":
                if gt is None:
                    continue
                im = gt
            else:
                im = Image.open(f if src is None else src / f"{f.stem}.png").convert("RGB")
            label = name
            if isinstance(src, Path) and gt is not None:
                stops = np.log2(corner_centre_ratio(np.asarray(im)) / corner_centre_ratio(np.asarray(gt)))
                label = f"{name}: corners {stops:+.2f} stops"
            ims.append(_label(im.resize((round(im.width * height / im.height), height)), label))
        row = Image.new("RGB", (sum(i.width for i in ims) + 8 * (len(ims) - 1), height), "white")
        x = 0
        for im in ims:
            row.paste(im, (x, 0))
            x += im.width + 8
        rows.append(row)
    if not rows:
        raise ConfigError("No enhanced image to put in the before/after grid.")
    grid = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows) + 8 * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height + 8
    grid.save(path)
    return path
