"""The layout's rule: the model package knows nothing of Ray, storage or the batch system."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_ENGINE = {"ray", "fsspec", "s3fs", "gcsfs", "pipeline", "pandas", "pyarrow"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_engine_imports_no_ray_storage_or_pipeline_code():
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_modules(path) & FORBIDDEN_IN_ENGINE)
        for path in (REPO / "echomimic2").glob("*.py")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import ray.data\n    from pipeline import storage\n")
    assert imported_modules(sample) == {"ray", "pipeline"}
