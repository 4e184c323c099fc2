"""The static list of CUDA-only lines (scripts/cuda_coverage.py): what the CPU suite cannot reach."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from cuda_coverage import cuda_only_lines  # noqa: E402

SOURCE = '''
def f(x, device, compile):
    if device == "cuda":
        a = 1
    if not torch.cuda.is_available():
        b = 2
    else:
        c = 3
    if x.is_cuda and x.dtype in (half, bf16) and not needs_grad:
        d = 4
    else:
        e = 5
    if compile and device != "cuda":
        g = 6
    torch.cuda.synchronize()
    n = torch.cuda.device_count()
    peak = torch.cuda.max_memory_allocated() if x.is_cuda else None
'''


def test_cuda_only_lines_are_the_branches_a_cpu_never_takes(tmp_path):
    path = tmp_path / "example.py"
    path.write_text(SOURCE)
    assert sorted(cuda_only_lines(path).values()) == ["a = 1", "c = 3", "d = 4", "torch.cuda.synchronize()"]
