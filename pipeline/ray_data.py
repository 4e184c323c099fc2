"""The stages on Ray Data: a `Stage` as a pool of Ray Data actors (`on_ray_data`), rows in and out as batches
of one (`rows.to_batch`), an actor that stages call like a local object (`RemoteObject`), the thread that pulls
the pipeline's rows for the driver (`RowPuller`), and how often a pool's workers died (`worker_restarts`)."""
from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator

import ray

from pipeline import metrics
from pipeline.rows import from_batch, to_batch
from pipeline.stages import Stage

END = object()  # RowPuller: the pipeline has no more rows


def configure_ray_data() -> None:
    context = ray.data.DataContext.get_current()
    # Each work row is its own block: segments of one clip spread over every render actor, and a
    # finished segment reaches the driver at once instead of waiting for a block to fill up.
    context.target_max_block_size = 1
    # A block lost for good (a task out of retries) fails only its clip, found missing by the driver.
    context.max_errored_blocks = -1
    context.enable_progress_bars = False  # the job draws its own progress


def pool_name(stage: Stage) -> str:
    """What Ray calls `stage`'s pool of actors (their class is `MapWorker(MapBatches(<pool name>))`)."""
    return f"{stage.name.title()}Workers"


def on_ray_data(dataset, stage: Stage, row_type, *, workers: tuple[int, int], **ray_args):
    """`stage` as a pool of Ray Data actors over `dataset` (rows of `row_type`), with its resources."""
    runner = type(pool_name(stage), (StageRunner,), {})
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing Ray options through **ray_remote_args in favour of named parameters, but has
        # none for max_restarts / max_task_retries: the job's bounds on worker deaths can only go this way.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(
            runner, fn_constructor_kwargs=dict(stage=stage, row_type=row_type), batch_size=stage.batch_size,
            compute=ray.data.ActorPoolStrategy(min_size=workers[0], max_size=workers[1]),
            **stage.resources.ray_args(), **ray_args)  # num_cpus, num_gpus, memory: named parameters


def worker_restarts(stage: Stage) -> int:
    """How often the workers of `stage`'s pool in this job have been restarted, as Ray's control store
    counts it: every death from the moment a worker is scheduled (while it imports, loads its model or
    renders), which the worker itself cannot report."""
    from ray._private import state  # the actor table without the dashboard (the job runs without one)

    job_id = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    name = f"({pool_name(stage)})"
    return sum(actor["NumRestarts"] for actor in state.actors(job_id=job_id).values()
               if actor["ActorClassName"].endswith(name + ")"))


class StageRunner:
    """A stage inside a Ray Data actor: rows in and out as batches of one (`rows.to_batch`)."""

    def __init__(self, stage: Stage, row_type):
        context = ray.get_runtime_context()
        with warnings.catch_warnings():  # Ray 2.60 warns about its own internal call in this property
            warnings.simplefilter("ignore")
            restarted = context.was_current_actor_reconstructed
        stage.on_worker_start(restarted=restarted, node_id=context.get_node_id())
        metrics.worker_started(stage.name, restarted)
        stage.setup()
        self.stage, self.row_type = stage, row_type

    def __call__(self, batch: dict) -> Iterator[dict]:
        out = self.stage(from_batch(self.row_type, batch))
        for item in out if isinstance(out, Iterator) else [out]:
            yield to_batch(item)


class RemoteObject:
    """An actor that stages call like a local object: ``board.post_plan(plan)`` waits for the actor's answer;
    methods named in `one_way` (progress reports) are sent without waiting (calls from one caller still run in
    their order)."""

    def __init__(self, handle, one_way: tuple[str, ...] = ()):
        self.handle, self.one_way = handle, one_way

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("handle", "one_way"):  # pickling probes attributes before they exist
            raise AttributeError(name)
        method = getattr(self.handle, name)
        if name in self.one_way:
            def send(*args, **kwargs) -> None:
                method.remote(*args, **kwargs)

            return send
        return lambda *args, **kwargs: ray.get(method.remote(*args, **kwargs))


class RowPuller:
    """Pulls the pipeline's rows on a helper thread into a queue, so the driver's loop stays free to look at
    signals and the board while a segment renders for minutes. `next_row` gives a row (a dict), END, or None
    after `timeout` s without one; an exception from Ray Data is raised there."""

    def __init__(self, dataset):
        self.feed: queue.Queue = queue.Queue(maxsize=64)
        self.quit = threading.Event()
        self.thread = threading.Thread(target=self._pull, args=(dataset,), daemon=True, name="job-results")
        self.thread.start()

    def _pull(self, dataset) -> None:
        # Without prefetching: `iter_rows` holds each row back until the next one has arrived, so a finished
        # clip waited for the next segment to render (with one render worker: the first MP4 came only at the end).
        batches = iter(dataset.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy"))
        try:  # a generator: closing it stops the pipeline
            for batch in batches:
                for index in range(len(next(iter(batch.values())))):
                    self.feed.put({name: column[index] for name, column in batch.items()})
                if self.quit.is_set():
                    break
            self.feed.put(END)
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's loop, which raises it
            self.feed.put(exc)
        finally:
            batches.close()

    def next_row(self, timeout: float):
        try:
            item = self.feed.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self, wait: float) -> bool:
        """Ask the thread to close the pipeline; True if it ended within `wait` s. It is blocked inside Ray Data
        until the next row comes, which may be never (workers that keep dying): then the process must not shut
        Ray down under it."""
        self.quit.set()
        self.thread.join(timeout=wait)
        return not self.thread.is_alive()


def row_of(item) -> dict:
    return {name: column[0].item() if hasattr(column[0], "item") else column[0] for name, column in to_batch(item).items()}


def item_of(row_type, row: dict):
    return from_batch(row_type, {name: [value] for name, value in row.items()})
