"""Which lines of echomimic2/ and pipeline/ only a CUDA device reaches, and did a GPU run execute them?

    python scripts/cuda_coverage.py                      # list the CUDA-only lines (static)
    python scripts/cuda_coverage.py --coverage a.json --coverage b.json  # ... and whether GPU runs executed each

CUDA-only lines are found statically: the body of an `if` whose test compares a device (type) to
"cuda", asks `torch.cuda.is_available()` or reads `tensor.is_cuda` (the `else` side for a negated test;
a conjunction counts when one of its terms does, so `compile and device != "cuda"` does not), and every
statement that calls into `torch.cuda` beyond the two queries a CPU run also makes
(`is_available`, `device_count`). The CPU suite never runs them (no CUDA there); the GPU end-to-end
check (scripts/gpu_e2e.py) and the CUDA tests (tests/test_gpu.py) are what must.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("echomimic2", "pipeline")
CPU_SAFE_CALLS = ("torch.cuda.is_available", "torch.cuda.device_count")


def _mentions_cuda(node: ast.AST, source: str) -> bool:
    text = ast.get_source_segment(source, node) or ""
    return '"cuda"' in text or "'cuda'" in text or "torch.cuda.is_available()" in text or ".is_cuda" in text


def _cuda_side(test: ast.expr, source: str) -> str | None:
    """'body' when the test is true only with CUDA, 'orelse' when false only with CUDA, else None."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        # A conjunction is true only with CUDA when one of its terms is (`x.is_cuda and x.dtype == ...`).
        return "body" if any(_cuda_side(term, source) == "body" for term in test.values) else None
    text = ast.get_source_segment(source, test) or ""
    if not _mentions_cuda(test, source) or " and " in text or " or " in text:
        return None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) or "!=" in text:
        return "orelse"
    return "body"


def _statement_lines(statements: list[ast.stmt]) -> set[int]:
    lines: set[int] = set()
    for statement in statements:
        for node in ast.walk(statement):
            if isinstance(node, ast.stmt):
                lines.add(node.lineno)
    return lines


def cuda_only_lines(path: Path) -> dict[int, str]:
    source = path.read_text()
    tree = ast.parse(source)
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            side = _cuda_side(node.test, source)
            if side:
                lines |= _statement_lines(getattr(node, side))
        elif isinstance(node, ast.stmt) and not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.If, ast.For, ast.With)):
            # A call inside a conditional expression (`torch.cuda.x() if cuda else None`) does not make its statement
            # CUDA-only: the statement runs on the CPU too.
            conditional = {id(c) for e in ast.walk(node) if isinstance(e, ast.IfExp) for c in ast.walk(e)}
            for call in (c for c in ast.walk(node) if isinstance(c, ast.Call) and id(c) not in conditional):
                name = ast.get_source_segment(source, call.func) or ""
                if name.startswith("torch.cuda.") and name not in CPU_SAFE_CALLS:
                    lines.add(node.lineno)
    source_lines = source.splitlines()
    return {line: source_lines[line - 1].strip() for line in sorted(lines)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coverage", type=Path, action="append",
                        help="coverage.py JSON report (coverage json -o FILE) of a GPU run; repeat to combine runs")
    args = parser.parse_args()
    executed: dict[str, set[int]] = {}
    if args.coverage:
        for report_path in args.coverage:
            for name, data in json.loads(report_path.read_text())["files"].items():
                relative = Path(name).as_posix().split("/", Path(name).as_posix().count("/") - 1)[-1]
                executed.setdefault(relative, set()).update(data["executed_lines"])
    missed = total = 0
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            for line, text in cuda_only_lines(path).items():
                total += 1
                if args.coverage:
                    ran = line in executed.get(relative, set())
                    missed += not ran
                    print(f"{'ran   ' if ran else 'NOT RUN'} {relative}:{line}: {text}")
                else:
                    print(f"{relative}:{line}: {text}")
    if args.coverage:
        print(f"{total - missed} of {total} CUDA-only lines executed; {missed} not")
    else:
        print(f"{total} CUDA-only lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
