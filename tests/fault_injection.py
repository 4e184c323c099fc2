"""Render workers that kill themselves, for the fault tests, injected from outside the production code through
Ray's own hooks: `RAY_RUNTIME_ENV_HOOK` (read by `ray.init` in the job's driver) adds a
`worker_process_setup_hook` to the job's runtime_env, and every worker of the job runs it when it starts. It
wraps `RenderStage.setup` in that worker so that the stage's board kills the process with SIGKILL (as the OOM
killer or a lost node would) when it hands out the attempt named by KILL_ENV:
"<clip_id>:<start>" (any attempt), "<clip_id>:<start>@<n>" (attempt n only) or "*" (every segment).

    env = dict(os.environ, **fault_injection.kill_render_env("a:5@1"))   # for the `cli.py run` subprocess
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

KILL_ENV = "ECHOMIMIC2_TEST_KILL_RENDER"
TESTS = Path(__file__).resolve().parent


def kill_render_env(target: str) -> dict[str, str]:
    """The environment a `cli.py run` subprocess needs for its render workers to kill themselves at `target`
    (the hook runs before Ray gives a worker the driver's code path: this module and the repository on its path)."""
    path = os.pathsep.join(filter(None, [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH")]))
    return {KILL_ENV: target, "RAY_RUNTIME_ENV_HOOK": f"{__name__}.add_setup_hook", "PYTHONPATH": path}


def add_setup_hook(runtime_env: dict | None) -> dict:
    """RAY_RUNTIME_ENV_HOOK: the job's runtime_env with `install` run by each of its workers."""
    return dict(runtime_env or {}, worker_process_setup_hook=f"{__name__}.install")


def install() -> None:
    """In a worker process: its render stages get a board that kills the process at the target attempt."""
    target = os.environ.get(KILL_ENV)
    if not target:
        return
    from pipeline.stages import RenderStage

    setup = RenderStage.setup

    def setup_then_arm(stage: RenderStage) -> None:
        setup(stage)
        stage.board = KillingBoard(stage.board, target)

    RenderStage.setup = setup_then_arm


class KillingBoard:
    """The job's board (`stages.JobBoard`) as the render stage sees it, except that `begin` kills the process
    instead of returning the target attempt."""

    def __init__(self, board, target: str):
        self.board = board
        self.segment, _, attempt = target.partition("@")
        self.attempt = int(attempt) if attempt else None

    def begin(self, label: str, key: tuple):
        attempt = self.board.begin(label, key)
        clip_id, _, start, _ = key
        if (attempt.error is None and self.segment in ("*", f"{clip_id}:{start}")
                and self.attempt in (None, attempt.number)):
            os.kill(os.getpid(), signal.SIGKILL)
        return attempt

    def __getattr__(self, name: str):
        return getattr(self.board, name)
