"""Reading weights files without running pickled code, and the per-file report `weights check` prints.

Shared by the networks' loader (`checkpoints.py`) and the whisper encoder (`audio.py`).
"""
from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors

LISTED_KEYS = 10  # keys listed per problem kind in messages; the counts are always complete


class CheckpointError(RuntimeError):
    """A weights file is missing, unreadable, refused, or does not match the network."""


@dataclass
class FileReport:
    """What one weights file holds compared with what its network needs."""

    path: Path
    found: list[str] = field(default_factory=list)  # expected keys present with the expected shape
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong_shape: list[str] = field(default_factory=list)  # "key: expected (..), file has (..)"
    problems: list[str] = field(default_factory=list)  # file-level: absent, unreadable, refused
    notes: list[str] = field(default_factory=list)  # not errors (e.g. recomputed position tables)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape or self.problems)

    def summary(self) -> str:
        lines = [
            f"{self.path}: {'OK' if self.ok else 'FAILED'} - keys found {len(self.found)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape mismatches {len(self.wrong_shape)}"
        ]
        lines += [f"  problem: {problem}" for problem in self.problems]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("shape mismatch", self.wrong_shape)):
            lines += [f"  {label}: {key}" for key in keys[:LISTED_KEYS]]
            if len(keys) > LISTED_KEYS:
                lines.append(f"  ... and {len(keys) - LISTED_KEYS} more {label} keys")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def load_weights_only(path: Path) -> Any:
    """The object stored in a weights file, read without running any pickled code.

    `.safetensors` through safetensors; anything else through `torch.load(weights_only=True)`,
    memory-mapped when the file is in torch's zip format. Raises CheckpointError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        if path.suffix == ".safetensors":
            return load_safetensors(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        reason = f"asks for {refused.group(1)}" if refused else _first_line(error)
        raise CheckpointError(f"{path}: refused: the pickle {reason}, and a weights file may hold only tensors and containers") from error
    except Exception as error:  # truncated archives, not a weights file at all
        raise CheckpointError(f"{path}: unreadable as a weights file: {type(error).__name__}: {_first_line(error)}") from error


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from one weights file (see `load_weights_only`)."""
    state = load_weights_only(path)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: expected a flat dict of name -> tensor, found {type(state).__name__}")
    return state


def read_into(report: FileReport) -> dict[str, torch.Tensor] | None:
    """`read_state_dict(report.path)`, with a failure recorded as the report's problem (None returned)."""
    try:
        return read_state_dict(report.path)
    except CheckpointError as error:
        report.problems.append(str(error).removeprefix(f"{report.path}: "))
        return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
