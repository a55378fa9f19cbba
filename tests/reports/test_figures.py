"""In a notebook, `plot` and `embedding_map` without `out` write nothing and return matplotlib Figures (one panel
per map); the CLI keeps writing RUN/plots and RUN/map.html."""

import shutil

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from typer.testing import CliRunner

import embedlab


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_plot_and_embedding_map_return_figures_and_write_nothing(tiny_run, tmp_path):
    res = tmp_path / "r.npy"
    embedlab.residual(tiny_run, "role=backlit", "role=welllit", out=res, bootstrap=0, progress=False)
    before, backend = _tree(tiny_run), matplotlib.get_backend()
    fig = embedlab.plot(tiny_run, residual=str(res), methods=("pca", "umap"), progress=False)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    pca, umap = fig.axes
    assert pca.get_title().startswith("PCA of image embeddings") and "all " in pca.get_title()
    assert pca.get_xlabel().startswith("PC1 (") and umap.get_xlabel().startswith("UMAP 1")
    labels = [t.get_text() for t in pca.get_legend().get_texts()]
    assert any(t.startswith("backlit (") for t in labels) and "residual (from set -> to set)" in labels
    only = embedlab.plot(tiny_run, methods=("pca",), max_points=20, progress=False)
    n = len(embedlab.Run(tiny_run))
    assert len(only.axes) == 1 and f"of {n} images, stratified sample" in only.axes[0].get_title()

    page = embedlab.embedding_map(tiny_run, residual=str(res), methods=("pca",))
    assert isinstance(page, Figure) and len(page.axes) == 1
    ax = page.axes[0]
    assert ax.get_xlabel().startswith("PC1 (") and "by role" in ax.get_title()
    assert len(ax.texts) == 1  # the residual's arrow (an annotation)
    assert sum(len(c.get_offsets()) for c in ax.collections) == n
    luma = embedlab.embedding_map(tiny_run, color_by="mean_luma", methods=("pca",))
    assert len(luma.axes) == 2  # the map and its colour bar (a numeric column)
    assert np.isfinite(luma.axes[0].collections[0].get_array()).all()
    assert _tree(tiny_run) == before and matplotlib.get_backend() == backend  # nothing written, backend kept
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_the_cli_still_writes_run_plots_and_run_map_html(tiny_run, tmp_path):
    from embedlab.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    env = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    r = CliRunner().invoke(app, ["plot", str(run), "--no-umap", "--no-projector", "--no-progress"], env=env)
    assert r.exit_code == 0, r.output
    assert (run / "plots" / "map_pca.png").is_file() and (run / "plots" / "sample.json").is_file()
    r = CliRunner().invoke(app, ["embedding-map", str(run), "--no-umap"], env=env)
    assert r.exit_code == 0, r.output
    assert (run / "map.html").is_file() and r.stdout.strip() == str(run / "map.html")
