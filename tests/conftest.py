"""Shared test setup: nothing may reach a model hub; numba caches stay inside the work tree."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".tmp" / "numba"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
