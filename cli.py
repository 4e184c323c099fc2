"""Command line of the batch factory. Thin: every command calls into pipeline/ or echomimic2/."""
from __future__ import annotations

from pathlib import Path

import typer
import typer.core

# a plain table (no torch): the choices below come from it
from echomimic2.presets import DEFAULT_WITH_WEIGHTS, DEFAULT_WITHOUT_WEIGHTS, PRESETS

FULL_SIZE_PRESETS = [name for name, preset in PRESETS.items() if preset.full_size]
# The one project switch read from the environment: `run --eager`'s default, for clusters whose jobs are started with a
# runtime_env (cluster/runtime_env.yaml's env_vars) rather than a changed command line.
COMPILE_ENV = "ECHOMIMIC2_COMPILE"


def eager_by_default() -> bool:
    """`ECHOMIMIC2_COMPILE=0` in the environment: `run` renders eager, as with --eager."""
    import os

    return os.environ.get(COMPILE_ENV, "1") == "0"


def _value_name(parameter, ctx) -> str | None:
    """What help shows after an option that takes a value: its metavar (DIR, URI, N), else its name in capitals;
    nothing after a flag or an argument (its name is shown). Typer's default, the Python type (`--force <bool>`,
    `manifest <str>`), says nothing the help text does not."""
    if isinstance(parameter, typer.core.TyperArgument) or getattr(parameter, "is_flag", False):
        return None
    return parameter.metavar or parameter.name.upper()


typer.core.TyperArgument.display_type_rich = _value_name
typer.core.TyperOption.display_type_rich = _value_name

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
weights_app = typer.Typer(no_args_is_help=True, help="Inspect official EchoMimic V2 weight folders.")
app.add_typer(weights_app, name="weights")
poses_app = typer.Typer(no_args_is_help=True, help="Pose sequences from driving videos (MediaPipe, offline).")
app.add_typer(poses_app, name="poses")


@app.command()
def run(
    manifest: str = typer.Argument(..., help="Parquet manifest: local path or fsspec URL."),
    output: str = typer.Option(..., "--output", "-o", help="Output root: local path or fsspec URL."),
    weights: str | None = typer.Option(
        None, help="Official weights: a folder, an fsspec URI (s3://bucket/EchoMimicV2/) or hf://BadToBest/EchoMimicV2, "
                   "copied once per node; without it the tiny demo model runs (trained on drawn figures)."),
    preset: str | None = typer.Option(None, help=f"{' | '.join(PRESETS)} (default: {DEFAULT_WITH_WEIGHTS} with --weights, else {DEFAULT_WITHOUT_WEIGHTS})."),
    address: str | None = typer.Option(
        None, help="Ray cluster to join: auto, or <head-ip>:6379 (default: RAY_ADDRESS if set, else start a local Ray)."),
    gpus: int | None = typer.Option(None, help="Render actors (GPUs) to use; default: all the cluster has."),
    cpus: int | None = typer.Option(None, help="Preprocessing actors; default: follow the cluster's CPUs."),
    force: bool = typer.Option(False, help="Redo every clip, ignoring the ledger."),
    segment_frames: int | None = typer.Option(None, help="Frames per segment (unit of GPU work); default 288."),
    overlap_frames: int | None = typer.Option(None, help="Frames shared by neighbouring segments (cross-faded); default 6."),
    allow_http: bool = typer.Option(False, help="Allow http(s):// inputs."),
    input_root: Path | None = typer.Option(None, help="Confine local inputs to this folder (symlinks may not leave it)."),
    shared_fs: bool = typer.Option(
        False, help="Local paths are one filesystem mounted alike on every node (NFS, EFS): allow them on a multi-node cluster."),
    random_weights: bool = typer.Option(
        False, hidden=True, help="Benchmarks only: full-size acc/quality networks with random weights, no --weights."),
    compile_cache: str | None = typer.Option(
        None, help="Folder or URI where GPU render workers share compiled kernels (default: OUTPUT/_cache/compile)."),
    fp8: bool = typer.Option(
        False, help="Opt-in fast mode: fp8 matmuls in the denoising UNet (Ada/Hopper or newer). Measured on an H200: "
                    "no faster, 1.3 GiB less memory, frames up to 21 levels from fp32 (BENCHMARKS.md). Part of each "
                    "clip's fingerprint."),
    eager: bool = typer.Option(
        False, "--eager", help=f"GPU render workers do not torch.compile their networks (default: they do; also "
                               f"{COMPILE_ENV}=0 in the environment, e.g. a cluster's runtime_env)."),
    saved_traces: bool = typer.Option(
        False, help="The compile cache keeps Dynamo's traces too, so warm workers neither compile nor trace (opt-in: "
                    "on torch 2.11 a worker that then meets a second shape fails inside Dynamo, BENCHMARKS.md)."),
    unsuitable: str = typer.Option(
        "warn", help="A reference that is not a half-body portrait (see `validate`): warn (render, results say why), "
                     "skip (not rendered, a result with the reason) or fail (the row fails)."),
    notify: str | None = typer.Option(
        None, help="POST the job's summary (JSON: counts, failures, the output root without credentials) to this URL "
                   "at the end; retried, waited for at most 15 s."),
    scratch_budget: str | None = typer.Option(
        None, metavar="SIZE", help="Storage the segments of the clips in flight may take together (500M, 20G, none): "
                                   "new clips wait until finished ones free theirs. Default: 80% of a local output "
                                   "volume's free space; none on object stores."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Also show the libraries' own log lines (Ray Data, MediaPipe's native logs; "
                                 "without it the native ones go to OUTPUT/_logs/native.log)."),
) -> None:
    """Render one MP4 per manifest row into OUTPUT (resumable: finished clips are skipped)."""
    arguments = dict(locals())  # the parameters only, taken before the import adds a name
    arguments["eager"] = eager or eager_by_default()
    import os

    if not (address or os.environ.get("RAY_ADDRESS")):
        # The job's own local Ray gets Ray's default, token authentication, said explicitly: left unset, Ray warns
        # that it chose it. Set before Ray is imported (it reads the mode once); a user's own choice is kept.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from pipeline.commands import end_process_if_interrupted, run_command

    code = run_command(**arguments)
    end_process_if_interrupted(code)
    raise typer.Exit(code)


@app.command()
def validate(
    manifest: str = typer.Argument(..., help="Parquet manifest: local path or fsspec URL."),
    allow_http: bool = typer.Option(False, help="Allow http(s):// inputs."),
    input_root: Path | None = typer.Option(None, help="Confine local inputs to this folder."),
    strict: bool = typer.Option(False, help="Reference warnings (not a half-body portrait) fail too."),
    preset: str | None = typer.Option(
        None, help=f"Output size the references are judged at, for rows without width/height (default: {DEFAULT_WITH_WEIGHTS})."),
    output: str | None = typer.Option(None, help="The job's output root: remember each reference's detection there for `run`."),
    triage: bool = typer.Option(True, help="Judge each reference (MediaPipe on CPU, ~0.1-0.3 s per new image)."),
) -> None:
    """Check every row before any GPU time is spent; one line per problem or reference warning; exit 1 on a
    problem (or a warning with --strict)."""
    arguments = dict(locals())  # the parameters only, taken before the import adds a name
    from pipeline.commands import validate_command

    raise typer.Exit(validate_command(**arguments))


@app.command()
def status(
    output: str = typer.Argument(..., help="Output root of a run."),
    watch: bool = typer.Option(False, help="Follow the running job live (its event stream) until it ends."),
    interval: float = typer.Option(2.0, help="--watch: seconds between looks."),
    timeout: float | None = typer.Option(None, help="--watch: give up (exit 2) after this many seconds."),
) -> None:
    """Summarise an output root and list failures with their reasons (--watch: live, until the job ends)."""
    from pipeline.commands import status_command

    raise typer.Exit(status_command(output, watch=watch, interval=interval, timeout=timeout))


@app.command()
def report(
    output: str = typer.Argument(..., help="Output root of a run: local path or fsspec URL."),
    to: str | None = typer.Option(None, help="Folder for the page (default: OUTPUT/_report)."),
    link_expiry: str = typer.Option("24h", help="How long presigned MP4 links stay valid (e.g. 3600, 30m, 24h; at most 7d)."),
) -> None:
    """Write a static review page (index.html + pictures): every clip's frames, reference, framing and poses,
    verdict, warnings, status, QC flags and errors; a click plays the clip."""
    from pipeline.report import report_command

    raise typer.Exit(report_command(output, to, link_expiry))


@app.command()
def proof(
    manifest: str = typer.Argument(..., help="Parquet manifest: local path or fsspec URL."),
    to: str = typer.Option(..., help="Folder (or storage URI) for the proof sheet."),
    preset: str = typer.Option(DEFAULT_WITH_WEIGHTS, help=f"The preset the run will use (its output size): {' | '.join(PRESETS)}."),
    allow_http: bool = typer.Option(False, help="Allow http(s):// inputs."),
    input_root: Path | None = typer.Option(None, help="Confine local inputs to this folder."),
    workers: int | None = typer.Option(None, help="Processes sharing the rows (default: one per CPU)."),
    output: str | None = typer.Option(None, "--output", "-o", help="The run's output root: detections are remembered "
                                                                  "there, so the run does not detect again."),
) -> None:
    """Before any GPU time: a static page with each row's reference, the framed reference with its poses drawn
    over it, the verdict and warnings (CPU only, no model). Exit 1 when some row is refused or warned about."""
    from pipeline.proof import proof_command

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}: {' | '.join(PRESETS)}", param_hint="--preset")
    raise typer.Exit(proof_command(manifest, to, preset, allow_http, None if input_root is None else str(input_root),
                                   workers, output))


@app.command()
def preview(
    weights: Path | None = typer.Option(None, help="Official weights folder (acc/quality presets); without it: tiny."),
    manifest: str | None = typer.Option(None, help="Manifest the 'Add to manifest' button appends to."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on."),
    port: int = typer.Option(7860, help="Port to serve on."),
) -> None:
    """Open a Gradio page to render one clip (same steps as the job) and add it to a manifest."""
    from pipeline.preview import preview_command

    raise typer.Exit(preview_command(None if weights is None else str(weights), manifest, host, port))


@app.command()
def plan(
    manifest: str = typer.Argument(..., help="Parquet manifest: local path or fsspec URL."),
    segment_frames: int | None = typer.Option(None, help="Frames per segment (unit of GPU work), as `run` takes it."),
    overlap_frames: int | None = typer.Option(None, help="Frames shared by neighbouring segments, as `run` takes it."),
    triage: bool = typer.Option(True, help="Judge each reference (its verdict in the table)."),
    output: str | None = typer.Option(None, help="The job's output root: remember each reference's detection there."),
) -> None:
    """Print frames, segments, each reference's verdict and estimated GPU time per preset, without rendering."""
    arguments = dict(locals())  # the parameters only, taken before the import adds a name
    from pipeline.commands import plan_command

    raise typer.Exit(plan_command(**arguments))


@app.command()
def bench(
    preset: str = typer.Option(DEFAULT_WITH_WEIGHTS, help=" | ".join(FULL_SIZE_PRESETS)),
    frames: int = typer.Option(120, help="Frames to render."),
    size: int = typer.Option(768, help="Square image side in pixels (multiple of 64)."),
    json_out: bool = typer.Option(False, "--json", help="Print one machine-readable JSON line."),
    schedule: str | None = typer.Option(
        None, help="Clip lengths in seconds, e.g. 5,20,120: time each clip as the job renders it (its planned "
                   "segments) beside one whole-clip render, and print the ratio."),
    steps: int | None = typer.Option(None, help="--schedule only: denoising steps instead of the preset's."),
    compile_cache: str | None = typer.Option(None, help="Compiled-kernel cache folder to load (a run's --compile-cache)."),
    compile_networks: bool = typer.Option(True, "--compile/--eager", help="torch.compile the networks (GPU)."),
    fp8: bool = typer.Option(False, help="The opt-in fast mode (fp8 matmuls in the denoising UNet); not with --schedule."),
) -> None:
    """Measure the segment renderer with full-size random-weight networks (GPU; small CPU run otherwise)."""
    from echomimic2.presets import full_size_preset

    try:  # before torch is imported: a misspelt preset answers at once
        full_size_preset(preset)
    except ValueError as exc:
        typer.echo(f"bench: {exc}")
        raise typer.Exit(2) from None
    if schedule is not None:
        from pipeline.schedule_bench import schedule_command

        raise typer.Exit(schedule_command(preset, schedule, size, steps, json_out, compile_cache, compile_networks))
    from echomimic2.bench import bench_command
    from pipeline.schedule_bench import load_compile_cache

    raise typer.Exit(bench_command(preset=preset, frames=frames, size=size, json_out=json_out, fp8=fp8,
                                   compile_networks=compile_networks,
                                   before_compile=lambda: load_compile_cache(preset, compile_cache, compile_networks, fp8)))


@app.command()
def doctor(
    weights: str | None = typer.Option(
        None, help="Official weights to check (layout, then a short render): a folder, an fsspec URI or hf://org/name."),
    output: str | None = typer.Option(None, "--output", "-o", help="Output root whose storage and credentials to check."),
    preset: str | None = typer.Option(None, help="Preset whose weights to check and render (default: every file of both "
                                                 "variants, then an acc render with --weights; tiny without)."),
    render: bool = typer.Option(True, help="Also render one short segment."),
) -> None:
    """Self-check: CUDA and GPU memory, ffmpeg, the weights folder, storage credentials, one short render."""
    from pipeline.doctor import doctor_command
    from pipeline.weights_source import WeightsSourceError, local_weights

    try:
        folder = None if weights is None else local_weights(weights)  # a URI: this node's copy, downloaded once
    except WeightsSourceError as exc:
        typer.echo(str(exc))
        raise typer.Exit(2) from None
    raise typer.Exit(doctor_command(weights=folder, output=output, preset=preset, render=render))


@weights_app.command("check")
def weights_check(
    directory: str = typer.Argument(..., help="Folder in the official layout (see README), an fsspec URI or hf://org/name."),
    variant: str = typer.Option("both", help="quality | acc | both"),
) -> None:
    """Per file: keys found / missing / unexpected; exit non-zero on any problem."""
    from echomimic2.weights_check import weights_check_command
    from pipeline.weights_source import WeightsSourceError, local_weights

    try:
        folder = local_weights(directory)  # a URI: this node's copy, downloaded once
    except WeightsSourceError as exc:
        typer.echo(str(exc))
        raise typer.Exit(2) from None
    raise typer.Exit(weights_check_command(folder, variant))


@poses_app.command("extract")
def poses_extract(
    video: Path = typer.Argument(..., help="Driving video (mp4/mov/webm/mkv) with a person's upper body and hands."),
    out: Path = typer.Argument(..., help="OUT.npz: one pickle-free sequence; any other name: a folder of official <i>.npy."),
    fps: float = typer.Option(24.0, help="Frames per second of the poses (the clip's fps)."),
    max_frames: int | None = typer.Option(None, help="Stop after this many poses."),
    preview: bool = typer.Option(False, help="Also write the drawn poses as <OUT>_preview.mp4 beside OUT."),
    preview_size: int = typer.Option(512, help="Side of the preview video in pixels."),
) -> None:
    """One official pose per frame at --fps; exit 1 when the video is unreadable, too long or has no hands."""
    from pipeline.driving_video import extract_poses_command

    raise typer.Exit(extract_poses_command(video, out, fps, max_frames, preview, preview_size))


if __name__ == "__main__":
    app()
