"""Warm starts: compiled kernels saved by one process are found by the next (a cache hit, not a second
compilation), and a corrupt cache is ignored. Real torch.compile on the CPU (inductor's C++ backend):
minutes on 2 cores, so `slow`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
SCRIPT = """
import json, sys, torch
from torch._dynamo.utils import counters
from echomimic2.fast import compile_artifacts, load_compile_artifacts
cache = sys.argv[1]
loaded = load_compile_artifacts(open(cache, "rb").read()) if sys.argv[2] == "load" else None
f = torch.compile(lambda x: torch.sin(x) * 2 + x.cos(), dynamic=False)
f(torch.randn(16))
if sys.argv[2] == "save":
    open(cache, "wb").write(compile_artifacts())
print(json.dumps(dict(loaded=loaded, **counters["inductor"])))
"""


def compile_in_fresh_process(tmp_path: Path, name: str, cache: Path, mode: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / f"inductor-{name}"), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(cache), mode], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_hits_the_saved_cache_and_a_corrupt_one_is_ignored(tmp_path):
    cache = tmp_path / "compile.bin"
    cold = compile_in_fresh_process(tmp_path, "a", cache, "save")
    assert cold.get("fxgraph_cache_miss", 0) >= 1 and cache.stat().st_size > 0
    warm = compile_in_fresh_process(tmp_path, "b", cache, "load")  # its own, empty inductor folder
    assert warm["loaded"] is True and warm.get("fxgraph_cache_hit", 0) >= 1 and not warm.get("fxgraph_cache_miss")
    cache.write_bytes(b"not a cache" * 10)
    corrupt = compile_in_fresh_process(tmp_path, "c", cache, "load")
    assert corrupt["loaded"] is False and corrupt.get("fxgraph_cache_miss", 0) >= 1
