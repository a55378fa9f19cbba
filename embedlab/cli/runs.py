"""Commands of the runs stage: extract, search, index, runs merge."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import List, Optional

import typer

from embedlab.choices import DECODERS, ENGINES, VECTOR_DTYPES
from embedlab.cli import app as cli
from embedlab.cli.app import app, handle_errors
from embedlab.cli.defaults import FROM_API
from embedlab.runs.index_kinds import KINDS as _INDEX_KINDS

INDEX_KINDS = tuple(_INDEX_KINDS)
SearchIndex = enum.Enum("SearchIndex", {k: k for k in ("run", *INDEX_KINDS)}, type=str)  # real cli.choices
IndexKindChoice = enum.Enum("IndexKindChoice", {k: k for k in ("auto", *INDEX_KINDS)}, type=str)
DecodeChoice = cli.choices("DecodeChoice", DECODERS)
DtypeChoice = cli.choices("DtypeChoice", VECTOR_DTYPES)
EngineChoice = cli.choices("EngineChoice", ENGINES)


# extract's help of its options whose text is longer than a line
_EXTRACT_HELP = {
    "manifest": "The images: a data manifest (.jsonl), a folder of images (recursive; role: the folder's name), a "
    "CSV/TSV/parquet table of image paths (other columns become metadata), a Hugging Face dataset saved to disk "
    "or its parquet files, or webdataset tars.",
    "workers": "DataLoader worker processes (default: on a GPU up to 8; on the CPU all cores for small towers, 1 for "
    "large ones; 0 = in-process). With --engine ray: CPUs (decode threads) per actor.",
    "decode": "auto (torchvision on CUDA, pil elsewhere), pil (PIL decode + open_clip preprocess) or torchvision "
    "(batched torchvision.io.decode_jpeg on the device, nvJPEG on CUDA; a different, recorded preprocessing).",
    "max_aspect": "Refuse images whose long side exceeds this many times the short side (recorded as extreme-aspect; "
    "bounds the memory of the short-side resize).",
    "engine": "local (this process and its decode workers) or ray (Ray actors: one per GPU, or per CPU share; pip "
    "install 'embedlab[ray]').",
    "address": "--engine ray: address of a running Ray cluster (e.g. auto, or HEAD:6379); default: start a local "
    "instance. The run folder must be on storage every node mounts at the same path.",
    "break_lock": "Take over the run folder's lock from a process that is gone (e.g. killed on another machine).",
}


@app.command("extract")
@handle_errors
def extract_cmd(
    manifest: Path = typer.Option(..., "--manifest", "-m", "--input", "-i", help=_EXTRACT_HELP["manifest"]),
    path_column: Optional[str] = cli.api_option("A table input: the column of image paths (default: path)."),
    image_column: Optional[str] = cli.api_option(
        "A Hugging Face dataset input: the image column (default: its Image feature)."
    ),
    model: str = typer.Option(..., help=cli.MODEL_HELP),
    pretrained: str = typer.Option(..., help=cli.PRETRAINED_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to create or resume."),
    device: str = cli.device_option(),
    batch_size: int = cli.api_option("Images per forward pass."),
    workers: Optional[int] = cli.api_option(_EXTRACT_HELP["workers"]),
    shard_size: int = cli.api_option("Images per shard (the unit of resume)."),
    decode: DecodeChoice = cli.api_option(_EXTRACT_HELP["decode"]),
    dtype: DtypeChoice = cli.api_option("Stored vector dtype."),
    role: Optional[List[str]] = cli.api_option("Only embed images with this set label (repeatable)."),
    overwrite: bool = cli.api_option("Replace a run folder made with another configuration."),
    max_aspect: float = cli.api_option(_EXTRACT_HELP["max_aspect"]),
    engine: EngineChoice = cli.api_option(_EXTRACT_HELP["engine"]),
    address: Optional[str] = cli.api_option(_EXTRACT_HELP["address"]),
    gpus_per_worker: Optional[float] = cli.api_option(
        "--engine ray: GPUs per actor (default 1 when the cluster has GPUs)."
    ),
    break_lock: bool = cli.api_option(_EXTRACT_HELP["break_lock"]),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """Embed images (a manifest, a folder, a table of paths, a Hugging Face dataset, webdataset tars) into a resumable
    run folder (vectors, metadata, FAISS index)."""
    summary = cli.call_api("runs.extract.pipeline:extract", locals())
    if as_json:
        cli.print_json(summary)
    else:
        typer.echo(_extract_line(summary, out))
    failed = (summary.get("this_call") or {}).get("failed_shards")
    if failed:
        typer.echo(
            f"{len(failed)} shard(s) failed and were left undone (rerun the command to retry them): "
            + "; ".join(f"shard {k}: {v}" for k, v in list(failed.items())[:3]),
            err=True,
        )
        raise typer.Exit(1)


def _extract_line(summary: dict, out: Path) -> str:
    """extract's summary in one line: embedded, skipped (by reason), and this call's speed."""
    return (
        f"run {out}: {summary['embedded']} embedded, {summary['skipped']} skipped"
        + (
            f" ({', '.join(f'{k}: {v}' for k, v in summary['skipped_by_reason'].items())}; see {out}/errors.csv)"
            if summary["skipped"]
            else ""
        )
        + (f"; {summary['this_call']['images_per_second']} img/s" if summary.get("this_call") else "")
    )


@app.command("search")
@handle_errors
def search_cmd(
    run: Path = typer.Argument(..., help="Run folder made by `embedlab extract`."),
    text: Optional[str] = cli.api_option("Text query."),
    image: Optional[Path] = cli.api_option("Image query (a file)."),
    top: int = typer.Option(FROM_API, "--top", "-k", help="How many results (the top k)."),
    index: SearchIndex = cli.api_option(
        "run: the run's own index (built by extract or `embedlab index`; default). "
        "A kind (" + ", ".join(INDEX_KINDS) + "): build that index in memory for this "
        "query. An approximate index's recall against exact search is printed."
    ),
    device: str = cli.device_option(),
    as_json: bool = cli.json_option("Print JSON instead of a table."),
):
    """Top-k nearest images of a run to a text or image query, with scores."""
    from embedlab.runs.search import search

    info = search(run, text=text, image=image, k=top, index=index.value, device=device)
    table = info.pop("table")
    if as_json:
        cli.print_json({"info": info, "results": table.to_dict(orient="records")})
        return
    typer.echo(table.to_string(index=False))
    extra = ""
    if not info["exact"]:
        rec = ", ".join(f"@{kk} {v:.3f}" for kk, v in info.get("recall", {}).items())
        extra = f"; recall vs exact search: {rec or 'not measured'} ({info.get('search_params') or 'default search'})"
    typer.echo(f"[answered by {info['index']} index, {info['ntotal']} vectors{extra}]")


# index's help of its options whose text is longer than a line
_INDEX_HELP = {
    "memory_budget": "Memory the finished index may take (e.g. 4G, 512M); auto picks by it, an explicit kind over it "
    "is refused.",
    "train_size": "Vectors sampled to train IVF kinds (default 50 per list, at least 10,000).",
    "queries": "Held-out queries for tuning, and as many again for the recall@1/10/100 measured against exact search.",
}


@app.command("index")
@handle_errors
def index_cmd(
    run: Path = typer.Argument(..., help="Run folder made by `embedlab extract` (or `embedlab runs merge`)."),
    kind: IndexKindChoice = cli.api_option(
        "auto: by size (exact below 1M vectors when they fit the budget, HNSW when its "
        "graph fits, else IVF with 4-bit fast-scan PQ codes re-ranked from the stored "
        "vectors, or 8-bit PQ when only those fit). Or: "
        + "; ".join(f"{k.name}: {k.help}" for k in _INDEX_KINDS.values())
        + "."
    ),
    memory_budget: str = cli.api_option(_INDEX_HELP["memory_budget"]),
    nlist: Optional[int] = cli.api_option("Inverted lists for IVF kinds (default 2^round(log2(4 sqrt(N))))."),
    train_size: Optional[int] = cli.api_option(_INDEX_HELP["train_size"]),
    queries: int = cli.api_option(_INDEX_HELP["queries"]),
    recall_target: float = cli.api_option("recall@10 the search setting (nprobe / efSearch) is tuned to reach."),
    seed: int = cli.api_option("Seed for the training sample and the queries."),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option("Print the index record as JSON."),
):
    """Build the run's FAISS index out of core (trained on a sample, filled shard by shard, written atomically; on
    the GPU with a GPU build of FAISS) and record its recall and latency in the run manifest."""
    info = cli.call_api("runs.index:index_run", locals())
    if as_json:
        cli.print_json(info)
        return
    typer.echo(
        f"wrote {run / info['file']}: {info['kind']} ({info['factory']}; {info['why']}), {info['ntotal']:,} vectors, "
        f"{info['size_bytes'] / 2**20:.1f} MiB, built in {info['build_seconds']:.1f} s"
    )
    if not info["exact"]:
        rec = ", ".join(f"@{k} {v:.3f}" for k, v in info["recall"].items())
        typer.echo(
            f"recall vs exact search ({info['recall_queries']} held-out queries): {rec}; search {info['search_params']}"
        )
    typer.echo(
        f"single-query latency: median {info['latency']['median_ms']:.3f} ms, p95 {info['latency']['p95_ms']:.3f} ms"
    )


runs_app = cli.StageTyper(
    prefix="runs ",
    no_args_is_help=True,
    help="Work with run folders as wholes (merge; import embeddings made elsewhere).",
)
app.add_typer(runs_app, name="runs")


@runs_app.command("merge")
@handle_errors
def runs_merge_cmd(
    runs: List[Path] = typer.Argument(
        ..., help="Two or more finished run folders of the same model and preprocessing."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The merged run folder to write."),
    overwrite: bool = cli.api_option("Replace --out if it exists."),
    index_budget: str = cli.api_option(
        "Build the exact index while its float32 vectors fit this "
        "memory; beyond, run `embedlab index` on the merged run."
    ),
    progress: bool = cli.progress_option(),
    as_json: bool = cli.json_option(),
):
    """Merge runs extracted separately (several machines, days) into one run; refuses mixed models or preprocessing.
    Row ids are renumbered; the column merged_from names each image's source run."""
    summary = cli.call_api("runs.merge:merge_runs", locals())
    if as_json:
        return cli.print_json(summary)
    typer.echo(
        f"merged {summary['merged']} runs into {out}: {summary['embedded']} images, {summary['skipped']} skipped"
        + (f"; {summary['index'].get('note')}" if summary.get("index", {}).get("note") else "")
    )
