"""What a job prints: its own lines (progress, each clip, each problem with its row) and nothing of the
libraries' chatter that says nothing about the user's input. Each source is quieted where it starts:
MediaPipe's native TFLite/absl lines go to `<output>/_logs/native.log` (`echomimic2.pose_detect.native_log`),
Ray Data's INFO lines and its note that the job draws its own progress stay out; `--verbose` keeps them all."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from pipeline import storage

LOG_FOLDER = "_logs"
NATIVE_LOG = "native.log"


def native_log_path(output: str) -> str:
    """Where the job's workers append the native libraries' lines: under a local output root, else (an object
    store cannot be appended to) in the machine's temporary folder."""
    if storage.check_plain_url(output) == "file":
        return str(Path(output.removeprefix("file://")).resolve() / LOG_FOLDER / NATIVE_LOG)
    return str(Path(tempfile.gettempdir()) / "echomimic2" / LOG_FOLDER / NATIVE_LOG)


def quiet_libraries(output: str, verbose: bool) -> None:
    """Before Ray starts (its local workers inherit the environment): route the chatter, unless `verbose`."""
    if verbose:
        return
    import ray.data  # noqa: F401 - its import configures Ray Data's loggers (console and file), adjusted below

    from echomimic2.pose_detect import NATIVE_LOG_ENV

    os.environ.setdefault(NATIVE_LOG_ENV, native_log_path(output))
    # "Starting execution of Dataset …", "Execution plan …", "… execution finished": Ray Data's INFO lines stay in
    # its own log file (in Ray's session folder), off the console.
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.WARNING)
    # "Progress bars disabled": the job draws its own bars (ray_data.configure_ray_data turns Ray Data's off).
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
