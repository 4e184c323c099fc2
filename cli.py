"""Command line of the batch factory. Thin: every command calls into pipeline/ or echomimic2/."""
from __future__ import annotations

from pathlib import Path

import typer

from echomimic2.presets import PRESETS  # a plain table (no torch): the choices below come from it

FULL_SIZE_PRESETS = [name for name, preset in PRESETS.items() if preset.full_size]

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
weights_app = typer.Typer(no_args_is_help=True, help="Inspect official EchoMimic V2 weight folders.")
app.add_typer(weights_app, name="weights")


@app.command()
def run(
    manifest: str = typer.Argument(..., help="Parquet manifest: local path or fsspec URL."),
    output: str = typer.Option(..., "--output", "-o", help="Output root: local path or fsspec URL."),
    weights: Path | None = typer.Option(None, help="Official weights folder; without it the random tiny model runs."),
    preset: str | None = typer.Option(None, help=f"{' | '.join(PRESETS)} (default: acc with --weights, else tiny)."),
    address: str | None = typer.Option(
        None, help="Ray cluster to join: auto, or <head-ip>:6379 (default: RAY_ADDRESS if set, else start a local Ray)."),
    gpus: int | None = typer.Option(None, help="Render actors (GPUs) to use; default: all the cluster has."),
    cpus: int | None = typer.Option(None, help="Preprocessing actors; default: follow the cluster's CPUs."),
    force: bool = typer.Option(False, help="Redo every clip, ignoring the ledger."),
    segment_frames: int | None = typer.Option(None, help="Frames per segment (unit of GPU work)."),
    overlap_frames: int | None = typer.Option(None, help="Frames shared by neighbouring segments (cross-faded)."),
    allow_http: bool = typer.Option(False, help="Allow http(s):// inputs."),
    input_root: Path | None = typer.Option(None, help="Confine local inputs to this folder (symlinks may not leave it)."),
    shared_fs: bool = typer.Option(
        False, help="Local paths are one filesystem mounted alike on every node (NFS, EFS): allow them on a multi-node cluster."),
    random_weights: bool = typer.Option(
        False, hidden=True, help="Benchmarks only: full-size acc/quality networks with random weights, no --weights."),
) -> None:
    """Render one MP4 per manifest row into OUTPUT (resumable: finished clips are skipped)."""
    arguments = dict(locals())  # the parameters only, taken before the import adds a name
    from pipeline.commands import run_command

    raise typer.Exit(run_command(**arguments))


@app.command()
def validate(
    manifest: str = typer.Argument(..., help="Parquet manifest: local path or fsspec URL."),
    allow_http: bool = typer.Option(False, help="Allow http(s):// inputs."),
    input_root: Path | None = typer.Option(None, help="Confine local inputs to this folder."),
) -> None:
    """Check every row before any GPU time is spent; one line per problem; exit 1 if any."""
    arguments = dict(locals())  # the parameters only, taken before the import adds a name
    from pipeline.commands import validate_command

    raise typer.Exit(validate_command(**arguments))


@app.command()
def status(output: str = typer.Argument(..., help="Output root of a run.")) -> None:
    """Summarise an output root and list failures with their reasons."""
    from pipeline.commands import status_command

    raise typer.Exit(status_command(output))


@app.command()
def plan(
    manifest: str = typer.Argument(..., help="Parquet manifest: local path or fsspec URL."),
    segment_frames: int | None = typer.Option(None),
    overlap_frames: int | None = typer.Option(None),
) -> None:
    """Print frames, segments and estimated GPU time per preset, without rendering."""
    arguments = dict(locals())  # the parameters only, taken before the import adds a name
    from pipeline.commands import plan_command

    raise typer.Exit(plan_command(**arguments))


@app.command()
def bench(
    preset: str = typer.Option("acc", help=" | ".join(FULL_SIZE_PRESETS)),
    frames: int = typer.Option(120, help="Frames to render."),
    size: int = typer.Option(768, help="Square image side in pixels (multiple of 64)."),
    json_out: bool = typer.Option(False, "--json", help="Print one machine-readable JSON line."),
) -> None:
    """Measure the segment renderer with full-size random-weight networks (GPU; small CPU run otherwise)."""
    from echomimic2.bench import bench_command

    raise typer.Exit(bench_command(preset=preset, frames=frames, size=size, json_out=json_out))


@weights_app.command("check")
def weights_check(
    directory: Path = typer.Argument(..., help="Folder in the official layout (see README)."),
    variant: str = typer.Option("both", help="quality | acc | both"),
) -> None:
    """Per file: keys found / missing / unexpected; exit non-zero on any problem."""
    from echomimic2.checkpoints import weights_check_command

    raise typer.Exit(weights_check_command(directory, variant))


if __name__ == "__main__":
    app()
