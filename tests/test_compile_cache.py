"""Warm starts: compiled kernels saved by one process are found by the next (a cache hit, not a second
compilation), and a corrupt cache is ignored. Real torch.compile on the CPU (inductor's C++ backend):
minutes on 2 cores, so those are `slow`; what needs no compiler (the render workers' `CompileCache` with a
missing or corrupt cache) runs in the default suite."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_second_process_hits_the_saved_cache_and_a_corrupt_one_is_ignored(tmp_path):
    cache = tmp_path / "compile.bin"
    cold = compile_in_fresh_process(tmp_path, "a", cache, "save")
    assert cold.get("fxgraph_cache_miss", 0) >= 1 and cache.stat().st_size > 0
    warm = compile_in_fresh_process(tmp_path, "b", cache, "load")  # its own, empty inductor folder
    assert warm["loaded"] is True and warm.get("fxgraph_cache_hit", 0) >= 1 and not warm.get("fxgraph_cache_miss")
    cache.write_bytes(b"not a cache" * 10)
    corrupt = compile_in_fresh_process(tmp_path, "c", cache, "load")
    assert corrupt["loaded"] is False and corrupt.get("fxgraph_cache_miss", 0) >= 1


WORKER_SCRIPT = """
import json, sys, torch
from torch._dynamo.utils import counters
from pipeline.render import CompileCache
cache = CompileCache(sys.argv[1], "acc", saved_traces=True)  # the opt-in (`run --saved-traces`): traces saved too
loaded = cache.load()
f = torch.compile(lambda x: torch.sin(x) * 2 + x.cos(), dynamic=False)
f(torch.randn(16))
saved = cache.save_if_new()
print(json.dumps(dict(loaded=loaded, saved=saved, traces_found=counters["dynamo_cache"].get("dynamo_cache_hit", 0),
                      **counters["inductor"])))
"""


def worker_in_fresh_process(tmp_path: Path, name: str, script: str, *args: str) -> dict:
    """Run a render worker's script in a new process with its own inductor folder (another node), sharing the
    cache folder `tmp_path/cache`; its last stdout line is JSON."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / f"inductor-{name}"), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache"), *args], env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_render_workers_share_kernels_through_the_cache_folder(tmp_path):
    """What a render worker does (load before compiling, save when it generated kernels), in two processes
    with their own inductor folders (two nodes) sharing one cache folder."""
    cold = worker_in_fresh_process(tmp_path, "a", WORKER_SCRIPT)
    assert (cold["loaded"], cold["saved"]) == (False, True) and cold["fxgraph_cache_miss"] >= 1
    warm = worker_in_fresh_process(tmp_path, "b", WORKER_SCRIPT)
    assert (warm["loaded"], warm["saved"]) == (True, False)  # a hit generates nothing new: nothing rewritten
    assert warm["traces_found"] >= 1 and not warm.get("fxgraph_cache_miss")  # traced and compiled code: both saved


def test_a_missing_or_corrupt_cache_never_fails_a_worker(tmp_path, caplog):
    from pipeline.render import CompileCache

    cache = CompileCache(str(tmp_path / "cache"), "acc")
    assert cache.load() is False and not caplog.records  # none yet: a cold start, nothing to say
    assert 0 < cache.load_seconds < 5  # timed for the first segment's record
    assert cache.save_if_new() is False  # nothing compiled in this process: nothing written
    assert not (tmp_path / "cache").exists()

    Path(cache.uri).parent.mkdir(parents=True)
    Path(cache.uri).write_bytes(b"\x00not a cache" * 100)
    assert CompileCache(str(tmp_path / "cache"), "acc").load() is False
    assert "not usable here" in caplog.text
    assert Path(cache.uri).name.endswith("-acc.bin") and "cpu" in Path(cache.uri).name  # keyed by torch/device


BLOCKS_SCRIPT = """
import json, sys, torch
from diffusers.models.resnet import ResnetBlock2D
from torch._dynamo.utils import counters
from echomimic2.fast import compile_regions
from pipeline.render import CompileCache

class TwoBlocks(torch.nn.Module):  # two blocks of one class: one compiled function, one graph per shape
    _repeated_blocks = ("ResnetBlock2D",)

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(ResnetBlock2D(in_channels=8, out_channels=8, temb_channels=None, groups=4)
                                          for _ in range(2))
    def forward(self, x):
        for block in self.blocks:
            x = block(x, None)
        return x

torch.manual_seed(0)
net = TwoBlocks().eval()
cache = CompileCache(sys.argv[1], "acc", saved_traces=sys.argv[2:] == ["saved-traces"])
loaded = cache.load()
compile_regions(net)
with torch.no_grad():
    out = net(torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(1)))
saved = cache.save_if_new()
print(json.dumps(dict(loaded=loaded, saved=saved, traced=counters["stats"].get("unique_graphs", 0),
                      out=out.flatten()[:64].tolist(), **counters["inductor"])))
"""


@pytest.mark.slow
def test_a_warm_worker_traces_nothing_with_saved_traces(tmp_path):
    """With the networks compiled by block class (fast.compile_regions), the cache a worker saves holds Dynamo's
    traces too: the next worker (another node: its own inductor folder) neither traces nor compiles, and
    computes the same numbers. With saved traces off it finds the kernels but traces every graph again."""
    def worker(name: str, *args: str) -> dict:
        return worker_in_fresh_process(tmp_path, name, BLOCKS_SCRIPT, *args)

    cold = worker("a", "saved-traces")  # a job run with --saved-traces
    assert (cold["loaded"], cold["saved"]) == (False, True) and cold["traced"] >= 1 and cold["fxgraph_cache_miss"] >= 1
    warm = worker("b", "saved-traces")
    assert (warm["loaded"], warm["saved"]) == (True, False)
    assert warm["traced"] == 0 and not warm.get("fxgraph_cache_miss")
    assert warm["out"] == cold["out"]
    kernels_only = worker("c")  # the default: kernels only
    assert kernels_only["loaded"] is True and kernels_only["traced"] >= 1 and not kernels_only.get("fxgraph_cache_miss")
    assert kernels_only["saved"] is False  # found every kernel: nothing new to write
