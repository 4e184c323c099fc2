"""The CLI's commands (cli.py calls these; each returns the process exit code).

Exit codes of `run`:
    0  every row is done (rendered now or skipped as already finished)
    3  the job ran, but some rows failed (see <output>/results.parquet or `cli.py status OUTPUT`)
    2  the job could not run: unreadable manifest or one with missing columns, unreachable or
       unwritable output, bad or missing weights, an unknown preset, a Ray cluster that cannot be reached,
       node-local paths on a multi-node cluster (see cluster/README.md)
Exit codes of `validate`: 0 no problem, 1 one or more problems (one line each).
`status` and `plan`: 0, or 2 when the output root does not exist / holds no job, or the manifest
cannot be read or has a problem as a whole (a missing or unknown column).
"""
from __future__ import annotations

import functools
import math
import os
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline import storage
from pipeline.segments import DEFAULT_OVERLAP_FRAMES, DEFAULT_SEGMENT_FRAMES, plan_segments

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_JOB_FAILED = 2
EXIT_ROWS_FAILED = 3

# `plan`'s estimate: the spec §12 FLOPs of each row's segments, as `cli.py bench` counts them
# (echomimic2.bench.spec_flops), over the throughput each preset reached through the job on a GPU: its
# measured render time (echomimic2.presets, `Preset.cost`) over the FLOPs of the very clips it rendered.
RENDER_FLOP_PARTS = ("reference", "denoise", "decode")  # the render actor's work; whisper runs in preprocessing


console = Console(highlight=False, soft_wrap=True)  # soft wrap: one line per problem, even in logs


def run_command(manifest: str, output: str, weights: str | Path | None = None, preset: str | None = None,
                address: str | None = None, gpus: int | None = None, cpus: int | None = None, force: bool = False,
                segment_frames: int | None = None, overlap_frames: int | None = None, allow_http: bool = False,
                input_root: Path | None = None, shared_fs: bool = False, random_weights: bool = False,
                compile_cache: str | None = None, fp8: bool = False, eager: bool = False, saved_traces: bool = False,
                unsuitable: str = "warn", notify: str | None = None, verbose: bool = False,
                scratch_budget: str | None = None) -> int:
    """`cli.py run`: the options and the manifest are checked before anything slow starts; then the job runs
    under the project's signal handlers (installed before Ray starts) and its outcome becomes the exit code."""
    from pipeline.reference_triage import UNSUITABLE_POLICIES

    if unsuitable not in UNSUITABLE_POLICIES:
        console.print(f"[red]error[/red]: --unsuitable must be one of {', '.join(UNSUITABLE_POLICIES)}, got {escape(repr(unsuitable))}")
        return EXIT_JOB_FAILED
    preset, refused, note = _choose_preset(preset, weights, random_weights)
    weights_uri = None if weights is None else str(weights)  # a URI: what each worker resolves on its node
    weights, refused = (weights, refused) if refused else _weights_here(weights_uri, preset)
    refused = refused or refuse_before_starting(output, weights, input_root)
    budget, budget_refused = _scratch_budget(scratch_budget, output) if not refused else (None, None)
    refused = refused or budget_refused
    if refused:  # before the model note and before Ray or torch is imported: a refusal answers at once
        console.print(f"[red]error[/red]: {escape(refused)}")
        return EXIT_JOB_FAILED
    from pipeline.job_control import STOP, JobError, JobInterrupted, load_specs, record_start

    # From here a SIGINT / SIGTERM ends the job with its results (exit 130 / 143), also while Ray starts.
    STOP.clear()
    restore_signals = stop_on_signals()
    started_ray = interrupted = False
    try:
        # Everything that needs no Ray is checked first: a misspelt manifest or a finished rerun answers in
        # seconds, and the manifest before the model (a misspelt path must not wait for torch to import).
        specs, problems = load_specs(manifest, allow_http=allow_http)
        if note:  # once the manifest is read: a misspelt path gets its error alone
            console.print(note)
        from pipeline.job import pipeline_left_open, run_job  # Ray, Ray Data and their loggers from here
        from pipeline.logs import quiet_libraries

        quiet_libraries(output, verbose)
        settings = _job_settings(output, preset, weights, random_weights, fp8, segment_frames, overlap_frames, force,
                                 allow_http, input_root, compile_cache, unsuitable)
        settings = replace(settings, weights=weights_uri, compile=not eager, saved_traces=saved_traces,
                           scratch_budget=budget)
        specs, problems, finished, stamps = _skip_finished(specs, problems, settings)
        workers = WorkerCounts()
        needs_ray = len(finished) < len(specs)
        if needs_ray and not STOP.is_set():  # stopped: run_job writes the results without Ray
            address = address or os.environ.get("RAY_ADDRESS")  # set for the driver of a `ray job submit`
            started_ray = _start_ray(address, gpus)
        if needs_ray and not STOP.is_set():
            settings, workers = _size_workers(settings, address, gpus, cpus)
            refused_paths = _node_local_paths(specs, settings, address, shared_fs)
            for line in refused_paths:
                console.print(f"[red]error[/red]: {escape(storage.redact(line))}")
            if refused_paths:
                return EXIT_JOB_FAILED
            console.print(f"job: preset {preset}, model {settings.model_identity}, {workers.render} render actor(s), "
                          f"up to {workers.preprocess} preprocessing actor(s), output {escape(storage.redact(output))}, "
                          f"scratch budget {_size_text(settings.scratch_budget)}")
        # The job's first write, once nothing refuses it any more (a multi-node refusal leaves the root untouched).
        record_start(manifest, settings)
        report = run_job(manifest, specs, problems, settings, render_actors=workers.render,
                         render_gpus_per_actor=workers.gpus_per_render, preprocess_actors=workers.preprocess,
                         console=console, finished=finished, stamps=stamps, notify=notify)
    except JobInterrupted as stop:
        interrupted = True
        console.print(f"[yellow]interrupted[/yellow] (signal {stop.signal_number}): finished clips are kept, results "
                      f"written to {escape(storage.redact(storage.join(output, 'results.parquet')))}; rerun the same "
                      "command to finish the rest")
        return 128 + stop.signal_number
    except (JobError, ValueError) as exc:
        console.print(f"[red]error[/red]: {escape(storage.redact(str(exc)))}")
        return EXIT_JOB_FAILED
    finally:
        restore_signals()
        # Interrupted, or rows still being pulled from Ray Data: Ray is left to the process's end
        # (end_process_if_interrupted), never shut down under a thread inside it.
        if started_ray and not interrupted and not pipeline_left_open():
            import ray

            ray.shutdown()
    return _print_outcome(report, output)


def _scratch_budget(option: str | None, output: str) -> tuple[int | None, str | None]:
    """(the job's scratch budget in bytes or None for no bound, why the option is refused or None)."""
    from pipeline.admission import default_scratch_budget, parse_size

    try:
        return (default_scratch_budget(output) if option is None else parse_size(option)), None
    except (ValueError, OSError) as exc:
        return None, str(exc)


def _size_text(nbytes: int | None) -> str:
    return "none" if nbytes is None else f"{nbytes / (1 << 20):.1f} MiB"


def _weights_here(weights: str | None, preset: str) -> tuple[Path | None, str | None]:
    """(a local weights folder on this node, or why there is none): a URI is copied to this node's cache and
    checked like `weights check` before any worker starts (pipeline.weights_source)."""
    from echomimic2 import PRESETS
    from pipeline.weights_source import WeightsSourceError, is_remote, local_weights

    if not is_remote(weights):
        return (None if weights is None else Path(weights)), None
    try:
        return local_weights(weights, PRESETS[preset].variant), None
    except WeightsSourceError as exc:
        return None, storage.redact(str(exc))


def _choose_preset(preset: str | None, weights: Path | None, random_weights: bool) -> tuple[str | None, str | None, str]:
    """(the preset the job runs, why the options cannot go together or None, a note on the model to print once
    nothing refuses the job)."""
    from echomimic2 import PRESETS
    from echomimic2.presets import default_preset

    preset = preset or default_preset(with_weights=bool(weights or random_weights))
    if preset not in PRESETS:
        return preset, f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})", ""
    if random_weights:
        if weights is not None or not PRESETS[preset].full_size:
            return preset, ("--random-weights builds the full-size acc/quality networks with random weights: use it "
                            "with --preset acc or quality and without --weights"), ""
        return preset, None, ("[yellow]note[/yellow]: --random-weights: full-size networks with RANDOM weights, for "
                              "benchmarks only (the videos are noise)")
    elif PRESETS[preset].full_size == (weights is None):
        return preset, f"preset {preset!r} " + (
            "needs --weights (the official checkpoints)" if weights is None else "runs the built-in demo model; drop --weights"), ""
    elif weights is None:
        return preset, None, ("[yellow]note[/yellow]: no --weights: the tiny DEMO model runs, trained on drawn figures, "
                              "not people: blurry figures whose mouths follow the speech and hands the poses. See README "
                              "for the official weights.")
    return preset, None, ""


def _job_settings(output, preset, weights, random_weights, fp8, segment_frames, overlap_frames, force, allow_http,
                  input_root, compile_cache, unsuitable):
    """The job's settings, the weights' identity included (JobError if the weights cannot be read)."""
    from pipeline.job_control import JobError
    from pipeline.render import model_identity
    from pipeline.rows import JobSettings

    try:
        identity = model_identity(preset, None if weights is None else str(weights), random_weights, fp8)
    except Exception as exc:
        raise JobError(f"weights {weights}: {storage.describe_error(exc)}") from None
    return JobSettings(
        output=output, preset=preset, weights=None if weights is None else str(weights), model_identity=identity,
        segment_frames=segment_frames or DEFAULT_SEGMENT_FRAMES,
        overlap_frames=DEFAULT_OVERLAP_FRAMES if overlap_frames is None else overlap_frames,
        force=force, allow_http=allow_http, input_root=None if input_root is None else str(input_root),
        random_weights=random_weights, compile_cache=compile_cache, fp8=fp8, unsuitable=unsuitable)


def _skip_finished(specs, problems, settings):
    """(specs to run, problems, plans finished earlier with unchanged inputs, the rerun stamps); rows whose
    inputs the workers could not read become problems."""
    from pipeline.manifest import process_local_problems
    from pipeline.rerun import RerunStamps

    plan_segments(settings.segment_frames + 1, settings.segment_frames, settings.overlap_frames)  # checks the numbers
    unreadable_by_workers = process_local_problems(specs)
    problems = problems + unreadable_by_workers
    refused_rows = {p.row for p in unreadable_by_workers}
    specs = [spec for spec in specs if spec.row not in refused_rows]
    stamps = RerunStamps(settings, specs)
    finished = stamps.finished(specs)
    if finished:
        console.print(f"{len(finished)} of {len(specs)} clip(s) finished earlier with unchanged inputs: skipped")
    for reason, clip_ids in stamps.rendered_again.items():  # e.g. a release that changed the segment plan
        shown = ", ".join(clip_ids[:3]) + (f" and {len(clip_ids) - 3} more" if len(clip_ids) > 3 else "")
        console.print(f"[yellow]note[/yellow]: {len(clip_ids)} finished clip(s) will be rendered again: "
                      f"{escape(reason)}: {escape(shown)}")
    return specs, problems, finished, stamps


def _start_ray(address: str | None, gpus: int | None) -> bool:
    """Start a local Ray (or join `address`); True when this process started it. A start that times out (a
    loaded machine) is tried once more. JobError when Ray cannot be started or reached."""
    import ray

    from pipeline.job_control import JobError, request_stop

    if ray.is_initialized():
        return False
    for attempt in (1, 2):
        try:
            # ray.init replaces the SIGTERM handler with one that raises SystemExit(15): a SIGTERM while Ray
            # starts becomes the job's stop request, so the job still ends with its results (exit 143).
            _init_ray(address, gpus)
            return True
        except SystemExit as exit_request:
            if exit_request.code != signal.SIGTERM:
                raise
            request_stop(signal.SIGTERM)
            return True
        except Exception as exc:  # noqa: BLE001 - reported below with its cause
            ray.shutdown()
            if attempt == 1 and ray_start_timed_out(exc):
                console.print(f"[yellow]note[/yellow]: Ray start timed out ({escape(storage.describe_error(exc))}); "
                              "trying once more")
                continue
            where = f" at {address}" if address else ""
            raise JobError(f"cannot start or reach Ray{where}: {storage.describe_error(exc)}") from None
        finally:
            stop_on_signals()  # again: Ray's own SIGTERM handler dumps stacks and aborts
    raise AssertionError("unreachable")


def ray_start_timed_out(exc: BaseException) -> bool:
    """Ray's start-up timeouts come as TimeoutError or as a plain Exception whose message says so."""
    return isinstance(exc, TimeoutError) or "timed out" in str(exc).lower()


@dataclass(frozen=True)
class WorkerCounts:
    render: int = 0
    gpus_per_render: float = 0.0
    preprocess: int = 0


def _size_workers(settings, address: str | None, gpus: int | None, cpus: int | None):
    """(settings with the render threads, WorkerCounts) for the connected cluster."""
    import ray

    render_actors, gpus_per_actor, preprocess_actors, render_threads = _worker_counts(
        ray.cluster_resources(), address, gpus, cpus)
    return (replace(settings, render_threads=render_threads),
            WorkerCounts(render_actors, gpus_per_actor, preprocess_actors))


def _node_local_paths(specs, settings, address: str | None, shared_fs: bool) -> list[str]:
    """The paths other nodes cannot see, when the joined cluster runs work off this node."""
    from pipeline.multinode import refuse_node_local_paths, work_runs_off_this_node

    if not (address and work_runs_off_this_node()):
        return []
    return refuse_node_local_paths(specs, settings, shared_fs=shared_fs)


def _print_outcome(report, output: str) -> int:
    counts = {status: sum(r["status"] == status for r in report.results) for status in ("done", "skipped", "failed")}
    unsuitable = sum(r["status"] == "skipped" and r.get("error") is not None for r in report.results)
    console.print(f"finished: {counts['done']} rendered, {counts['skipped'] - unsuitable} already done, "
                  f"{unsuitable} skipped as unsuitable, {counts['failed']} failed; "
                  f"results in {escape(storage.redact(storage.join(output, 'results.parquet')))}")
    return EXIT_ROWS_FAILED if counts["failed"] else EXIT_OK


def end_process_if_interrupted(code: int) -> None:
    """After an interrupted job (its results written), or one whose row-pulling thread may still be inside Ray
    Data (workers gave up), end the process at once. Its Ray is left running: `ray.shutdown()` or the
    interpreter's exit around that thread once crashed the driver (SIGSEGV instead of exit 143, on a loaded
    machine). The processes of a local Ray share the driver's fate, and a cluster drops a dead driver's actors."""
    job = sys.modules.get("pipeline.job")  # not imported: no job ran (a refusal), nothing is left open
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM) or (job is not None and job.pipeline_left_open()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _worker_counts(cluster: dict, address: str | None, gpus: int | None, cpus: int | None) -> tuple[int, float, int, int]:
    """(render actors, GPUs per render actor, preprocessing actors, CPU threads per render actor) for the
    connected cluster's resources and the --gpus / --cpus options; notes where the cluster differs from them."""
    cluster_gpus, cluster_cpus = int(cluster.get("GPU", 0)), int(cluster.get("CPU", 1))
    if address and gpus and gpus > cluster_gpus:
        # A joined cluster may autoscale: pending GPU actors are what makes it add GPU nodes.
        render_actors, gpus_per_actor = gpus, 1.0
        console.print(f"[yellow]note[/yellow]: --gpus {gpus} but the cluster has {cluster_gpus} GPU(s) now; "
                      "rendering starts as its autoscaler adds GPU nodes")
    elif cluster_gpus:
        render_actors, gpus_per_actor = min(gpus or cluster_gpus, cluster_gpus), 1.0
        if gpus and gpus > cluster_gpus:
            console.print(f"[yellow]note[/yellow]: --gpus {gpus} but the cluster has {cluster_gpus}; using {cluster_gpus}")
    else:
        render_actors, gpus_per_actor = 1, 0.0
        console.print("[yellow]note[/yellow]: the cluster has no GPU: one render actor runs on CPU")
    # Leave one CPU for the assembly tasks, or no MP4 would be written before preprocessing ends.
    preprocess_actors = cpus or max(1, cluster_cpus - 1)
    return render_actors, gpus_per_actor, preprocess_actors, 0 if cluster_gpus else max(1, cluster_cpus // 2)


def refuse_before_starting(output: str, weights: Path | None, input_root: Path | None) -> str | None:
    """Why a job cannot run, found before Ray starts and any GPU time is spent, or None: an output root
    the workers cannot share or write (refused credentials included), option paths fsspec would rewrite."""
    for option, path in (("--weights", weights), ("--input-root", input_root)):
        if path is None:
            continue
        try:
            scheme = storage.check_plain_url(str(path))
        except storage.InputError as exc:
            return f"{option}: {exc}"
        if scheme != "file":
            return f"{option} {storage.redact(str(path))}: must be a local folder"
        if not Path(path).exists():
            return f"{option} {path}: folder not found"
        if not Path(path).is_dir():
            return f"{option} {path}: is a file, not a folder"
    try:
        storage.check_output_root(output)
    except storage.InputError as exc:
        return f"--output: {exc}"
    if storage.check_plain_url(output) == "file" and Path(output.removeprefix("file://")).is_file():
        return f"--output {output}: is a file; the output root is a folder (it is created if missing)"
    try:
        storage.probe_writable(output)
    except storage.InputError as exc:
        return str(exc)
    return None


def stop_on_signals():
    """SIGINT and SIGTERM ask the job to stop (a flag its driver loop reads every half second: an exception
    raised inside Ray's own calls would be swallowed there), so it writes its results and exits 130 / 143;
    returns what puts the previous handlers back."""
    from pipeline.job_control import request_stop

    def interrupt(signal_number, _frame):
        request_stop(signal_number)

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(number, handler) for number, handler in previous.items()]


def _init_ray(address: str | None, gpus: int | None) -> None:
    import ray

    if address:
        ray.init(address=address, logging_level="WARNING")
        return
    import torch

    real_gpus = torch.cuda.device_count()
    # On a machine without GPUs, --gpus N gives Ray N logical GPUs (render actors then run on CPU).
    num_gpus = real_gpus if real_gpus else (gpus or 0)
    total_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # address="local": a Ray of this job's own, even where an earlier `ray start` left its address in
    # <temp>/ray_current_cluster (without it, ray.init would try to join that cluster and refuse num_cpus).
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=num_gpus, include_dashboard=False,
             logging_level="WARNING", object_store_memory=int(min(2e9, 0.2 * total_memory)),
             _temp_dir=ray_temp_dir())
    _agents_end_with_this_process()


# Run by a small process of its own: it waits for the driver's end (its stdin closes, however the driver ended,
# SIGKILL included), then kills the given processes that are still the same ones (pid and start time).
_REAPER = """
import sys, psutil
sys.stdin.read()
for pid, started in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        process = psutil.Process(int(pid))
        if abs(process.create_time() - float(started)) < 0.01:
            process.kill()
    except psutil.Error:
        pass
"""
_reaper: list = []  # the reaper's Popen: its stdin stays open as long as this process lives


def _agents_end_with_this_process() -> None:
    """The local Ray's processes die with the driver (Ray ties them to it), except the raylet's two agents: they
    see their raylet gone within a second, then report its death to the GCS, which died too, waiting up to 60 s
    (Ray's timeout) before they exit. A killed driver would leave them running that long; a reaper process ends
    them with the driver instead."""
    import subprocess

    import psutil
    import ray

    try:
        node = ray._private.worker._global_node
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        agents = [child for child in raylet.children() if "agent" in " ".join([child.name(), *child.cmdline()]).lower()]
        arguments = [str(value) for agent in agents for value in (agent.pid, agent.create_time())]
    except (AttributeError, LookupError, psutil.Error):  # a Ray whose layout differs: its agents end by themselves
        return
    if arguments:
        _reaper.append(subprocess.Popen([sys.executable, "-c", _REAPER, *arguments], stdin=subprocess.PIPE,
                                        start_new_session=True))


def ray_temp_dir() -> str:
    """Ray's folder for a local run: <RAY_TMPDIR or /tmp>/ray, as Ray's own default, kept short because Ray's
    socket paths must fit the AF_UNIX limit."""
    return os.path.join(os.environ.get("RAY_TMPDIR") or "/tmp", "ray")


def validate_command(manifest: str, allow_http: bool = False, input_root: Path | None = None, strict: bool = False,
                     preset: str | None = None, output: str | None = None, triage: bool = True) -> int:
    """Problems fail a row; reference warnings (echomimic2.triage: not a half-body portrait at the row's size)
    are listed and fail only with `strict`. `output`: the job's output root, where detections are remembered
    for `run` (nothing is written there otherwise)."""
    from pipeline.manifest import validate_manifest

    if input_root is not None:
        try:
            storage.check_plain_url(str(input_root))
        except storage.InputError as exc:
            console.print(f"--input-root: {exc}", markup=False)
            return EXIT_PROBLEMS
    from echomimic2 import PRESETS

    if preset is not None and preset not in PRESETS:
        console.print(f"--preset: unknown preset {preset!r} (choose from {', '.join(PRESETS)})", markup=False)
        return EXIT_PROBLEMS
    specs, problems = validate_manifest(manifest, allow_http=allow_http, input_root=input_root)
    warnings = []
    if triage and specs:
        found, problems_found = _triage_specs(specs, preset, output, allow_http, input_root)
        warnings = [f"row {row} (clip {clip_id!r}): image: warning: {kind}: {message}" for row, clip_id, kind, message in found]
        problems = sorted(problems + problems_found, key=lambda p: -1 if p.row is None else p.row)
        specs = [spec for spec in specs if spec.row not in {p.row for p in problems_found}]
    for problem in problems:
        console.print(str(problem), markup=False)
    for warning in warnings:
        console.print(warning, markup=False)
    rows = {p.row for p in problems}
    warned_rows = len({line.split(":", 1)[0] for line in warnings})
    console.print(f"{len(specs)} row(s) OK, {len(rows)} with problems ({len(problems)} problem(s))"
                  + (f", {warned_rows} with reference warnings ({len(warnings)} warning(s)"
                     f"{'' if strict else '; --strict fails on them'})" if warnings else ""))
    return EXIT_PROBLEMS if problems or (strict and warnings) else EXIT_OK


def _triage_specs(specs, preset: str | None, output: str | None, allow_http: bool = False, input_root=None):
    """([(row, clip_id, warning kind, message)], [Problem]) of each row's reference at its output size (the
    row's width/height, else `preset`'s, default the full-size default's), one detector for all rows."""
    from echomimic2 import PRESETS
    from echomimic2.presets import DEFAULT_WITH_WEIGHTS
    from pipeline.manifest import Limits, Problem
    from pipeline.reference_triage import DetectionCache, people_detector, triage_spec

    chosen = PRESETS[preset or DEFAULT_WITH_WEIGHTS]
    cache, detector, limits = DetectionCache(output), people_detector(), Limits()
    warnings, problems = [], []
    try:
        for spec in specs:
            try:
                judged = triage_spec(spec, spec.width or chosen.width, spec.height or chosen.height, cache, detector, limits,
                                     allow_http, input_root)
            except Exception as exc:  # noqa: BLE001 - one row's reference, named; the others go on
                field = "person" if spec.person is not None and str(exc).startswith(f"person {spec.person} ") else "image"
                problems.append(Problem(spec.row, spec.clip_id, field, storage.describe_error(exc)))
                continue
            warnings += [(spec.row, spec.clip_id, w.kind, w.message) for w in judged.warnings]
    finally:
        if detector is not None:
            detector.close()
    return warnings, problems


def status_command(output: str, watch: bool = False, interval: float = 2.0, timeout: float | None = None) -> int:
    if watch:  # live, from the job's event stream (pipeline/watch.py)
        from pipeline.watch import watch_command

        return watch_command(output, interval=interval, timeout=timeout, console=console)
    shown = escape(storage.redact(output))
    try:
        storage.check_plain_url(output)
        if not storage.exists(output):
            console.print(f"[red]error[/red]: output root {shown} does not exist")
            return EXIT_JOB_FAILED
        if not storage.exists(storage.join(output, "_ledger")):
            console.print(f"[red]error[/red]: {shown} is not the output root of a job (no _ledger/ in it)")
            return EXIT_JOB_FAILED
    except Exception as exc:
        console.print(f"[red]error[/red]: {shown}: {escape(storage.describe_error(exc))}")
        return EXIT_JOB_FAILED
    from pipeline.ledger import Ledger
    from pipeline.results import read_results  # pandas: only once the root holds a job

    try:
        results = read_results(output)
    except FileNotFoundError:
        console.print(f"{escape(storage.redact(output))}: no results.parquet (no job has finished here yet)")
        results = None
    except Exception as exc:
        console.print(f"[red]error[/red]: {escape(storage.redact(output) + ': ' + storage.describe_error(exc))}")
        return EXIT_JOB_FAILED
    ledger = Ledger(output)
    clip_records = ledger.clip_records()
    console.print(f"{escape(storage.redact(output))}: {len(clip_records)} finished clip(s) in the ledger, "
                  f"{len(ledger.segment_records())} segment render(s) recorded")
    if results is None:
        return EXIT_OK
    counts = results["status"].value_counts().to_dict()
    console.print(f"last run: {len(results)} row(s): " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "skipped", "failed")))
    done = results[results["status"] != "failed"]
    if len(done):
        console.print(f"video: {done['frames'].sum():.0f} frames, {done['seconds'].sum():.1f} s of audio; "
                      f"render {results['render_seconds'].sum():.1f} s, assemble {results['assemble_seconds'].sum():.1f} s")
    failed = results[results["status"] == "failed"]
    for _, row in failed.iterrows():
        console.print(f"[red]failed[/red] {escape(row['error'])}")
    if "warnings" in results:
        from pipeline.reference_triage import warning_counts

        unsuitable = results[(results["status"] == "skipped") & results["error"].notna()]
        for _, row in unsuitable.iterrows():  # run --unsuitable skip
            console.print(f"[yellow]skipped[/yellow] {escape(row['error'])}")
        counts = warning_counts(results["warnings"])
        if counts:
            console.print("warnings (rows): " + ", ".join(f"{kind} {count}" for kind, count in counts.items()))
    from pipeline.report import flagged_lines

    for line in flagged_lines(results):  # done, but a QC check is over its threshold
        console.print(f"[yellow]flagged[/yellow] {escape(line)}")
    return EXIT_OK


def plan_command(manifest: str, segment_frames: int | None = None, overlap_frames: int | None = None,
                 triage: bool = True, output: str | None = None) -> int:
    """Frames and segments per row (from audio headers: no audio is decoded), each reference's verdict
    (`triage`; detections remembered under `output` when given), and GPU time per preset."""
    from echomimic2 import PRESETS
    from pipeline.manifest import Limits, Problem, parse_manifest, read_manifest
    from pipeline.media import audio_duration_seconds, refuse_too_long
    from pipeline.params import RenderParams

    segment_frames = segment_frames or DEFAULT_SEGMENT_FRAMES
    overlap_frames = DEFAULT_OVERLAP_FRAMES if overlap_frames is None else overlap_frames
    try:
        specs, problems = parse_manifest(read_manifest(storage.check_uri(manifest)))
    except Exception as exc:
        console.print(f"[red]error[/red]: {escape(f'manifest {storage.redact(manifest)}: {storage.describe_error(exc)}')}")
        return EXIT_JOB_FAILED
    whole_manifest = [p for p in problems if p.row is None]  # e.g. a missing column: `run` refuses it too
    for problem in whole_manifest:
        console.print(f"[red]error[/red]: {escape(str(problem))}")
    if whole_manifest:
        return EXIT_JOB_FAILED
    limits = Limits()
    measured = [preset for preset in PRESETS.values() if preset.cost is not None]
    verdicts: dict[int, str] = {}
    if triage:
        found, triage_problems = _triage_specs(specs, None, output)
        problems += triage_problems
        verdicts = {spec.row: "half_body" for spec in specs}
        for row, _clip_id, kind, _message in found:
            verdicts[row] = kind if verdicts[row] == "half_body" else f"{verdicts[row]}, {kind}"
    table = Table("row", "clip_id", "seconds", "fps", "frames", "segments", "size", *(["reference"] if triage else []))
    total_frames = total_segments = 0
    per_preset = {preset.name: 0.0 for preset in measured}
    for spec in specs:
        try:
            with storage.open_input(storage.check_uri(spec.audio)) as f:
                seconds = audio_duration_seconds(f, spec.audio.rsplit("/", 1)[-1])
            refuse_too_long(seconds, limits)
        except Exception as exc:
            problems.append(Problem(spec.row, spec.clip_id, "audio", storage.describe_error(exc)))
            continue
        frames = round(seconds * spec.fps)
        segments = plan_segments(frames, segment_frames, overlap_frames)
        total_frames += frames
        total_segments += len(segments)
        for preset in measured:  # a row's own size, steps and guidance, else the preset's
            params = RenderParams.for_row(spec, preset.name, segment_frames=segment_frames, overlap_frames=overlap_frames)
            per_preset[preset.name] += clip_render_flops(frames, params.segment_frames, params.overlap_frames,
                                                         params.width, params.height, params.steps, params.guidance)
        # the row's own size, else each preset's (the row renders at the size of the preset `run` is given)
        sizes: dict[str, list[str]] = {}
        for preset in PRESETS.values():
            sizes.setdefault(f"{spec.width or preset.width}x{spec.height or preset.height}", []).append(preset.name)
        size = "; ".join(f"{wh} ({', '.join(names)})" if len(sizes) > 1 else wh for wh, names in sizes.items())
        table.add_row(str(spec.row), spec.clip_id, f"{seconds:.2f}", f"{spec.fps:g}", str(frames), str(len(segments)), size,
                      *([verdicts.get(spec.row, "unreadable")] if triage else []))
    console.print(table)
    console.print(f"total: {len(specs)} row(s), {total_frames} frames, {total_segments} segments "
                  f"({segment_frames} frames, overlap {overlap_frames})")
    for preset in measured:
        flops, device = per_preset[preset.name], preset.cost.device.removeprefix("NVIDIA ")
        seconds = flops / measured_throughput(preset)
        if preset.full_size:
            console.print(f"preset {preset.name}: {flops / 1e15:,.1f} PFLOP ≈ {seconds / 3600:,.2f} {device}-hours "
                          f"({seconds:,.0f} GPU-s)")
        else:  # a smaller network: the spec's FLOPs only scale its measured time to these clips
            console.print(f"preset {preset.name}: ≈ {seconds / 60:,.1f} minutes of render on one {device}")
    for preset in measured:
        cost = preset.cost
        rate = f"{measured_throughput(preset) / 1e12:.0f} TFLOP/s, " if preset.full_size else ""
        console.print(f"assumption ({preset.name}): {rate}the job's measured "
                      f"render time on one {cost.device}, {'compiled' if cost.compiled else 'eager'}, "
                      f"{cost.seconds_per_120_frames:g} s per 120 frames at {cost.size}² ({cost.source})")
    console.print("FLOPs from spec §12 as `cli.py bench` counts them, per segment (other sizes scale by pixel count)")
    for problem in problems:
        console.print(f"[yellow]not planned[/yellow]: {escape(str(problem))}")
    return EXIT_OK


def clip_render_flops(frames: int, segment_frames: int, overlap_frames: int, width: int, height: int, steps: int,
                      guidance: float) -> float:
    """Spec FLOPs the render actors spend on a clip of `frames` frames cut into the job's segments (each
    segment pays its own reference pass, window grid and shared frames)."""
    return sum(_segment_render_flops(stop - start, round(math.sqrt(width * height)), steps, guidance)
               for start, stop in plan_segments(frames, segment_frames, overlap_frames))


@functools.lru_cache(maxsize=4096)  # a manifest's segments come in a few lengths
def _segment_render_flops(frames: int, size: int, steps: int, guidance: float) -> float:
    from echomimic2.flops import spec_flops

    counts = spec_flops(size, frames, steps, guidance)
    return sum(counts[part] for part in RENDER_FLOP_PARTS)


def measured_throughput(preset) -> float:
    """Spec FLOP/s the render actors sustained in the preset's measured job run (`Preset.cost`)."""
    cost = preset.cost
    flops = sum(clip_render_flops(frames, cost.segment_frames, cost.overlap_frames, cost.size, cost.size, preset.steps,
                                  preset.guidance) for frames in cost.clip_frames)
    return flops / (cost.seconds_per_120_frames * sum(cost.clip_frames) / 120)
