"""What travels between the job's stages: the job's settings and one dataclass per kind of row.

    ClipSpec (manifest.py) ─► PreprocessStage ─► ClipPlan ──────────────────► driver (by the plan board, never
                                              └► SegmentWork ─► RenderStage ─► SegmentResult ─► driver     through a GPU actor)

A clip's refusal or skip is a field of its `ClipPlan` (`error`, `finished`), a segment's failure a field of
its `SegmentResult` (`error`): there is no separate protocol for errors. Inside Ray Data a row is a batch of
one with flat columns (`to_batch` / `from_batch`); arrays travel as one pickle-free `.npz` bytes column,
image stacks that are mostly black (rendered poses: ~1% of their pixels drawn) as a packed mask and the drawn
pixels only, ~20x smaller (a 288-frame segment's poses at 768²: 510 MB → ~26 MB in the object store).
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import types
import typing
from dataclasses import dataclass, field

import numpy as np

from pipeline.manifest import ClipSpec, Limits
from pipeline.params import RenderParams


@dataclass(frozen=True)
class JobSettings:
    """Everything a worker needs to know about the job (sent to every actor)."""

    output: str
    preset: str
    weights: str | None
    model_identity: str
    segment_frames: int  # the job's segment plan, part of every row's RenderParams (the stages read it there)
    overlap_frames: int
    force: bool = False
    allow_http: bool = False
    input_root: str | None = None
    limits: Limits = field(default_factory=Limits)
    render_threads: int = 0  # torch CPU threads per render actor when there is no GPU (0: torch's default)
    random_weights: bool = False  # benchmarks only: full-size networks with random weights (EchoMimicV2.random)
    compile_cache: str | None = None  # folder or URI of the render workers' compiled kernels (None: under output)
    fp8: bool = False  # the opt-in fast mode (EchoMimicV2.from_official's fp8): fp8 matmuls in the denoising UNet
    unsuitable: str = "warn"  # a reference that is not half-body: warn (render), skip (a result with the reason) or fail
    compile: bool = True  # GPU render workers torch.compile their networks (same math, faster; False: --eager)
    saved_traces: bool = False  # opt-in (run --saved-traces): the compile cache also keeps Dynamo's traces
    # Bytes that the segments of the clips admitted to rendering may take together (admission.py); None: no
    # bound (`run`'s default: admission.default_scratch_budget).
    scratch_budget: int | None = None


def row_label(spec_or_row: ClipSpec | int, clip_id: str | None = None) -> str:
    """How every message names a row: ``row 3 (clip 'intro')``."""
    if isinstance(spec_or_row, ClipSpec):
        spec_or_row, clip_id = spec_or_row.row, spec_or_row.clip_id
    return f"row {spec_or_row} (clip {clip_id!r})"


@dataclass
class ClipPlan:
    """A clip as preprocessing left it: refused (`error`), already finished (`finished`: its ledger record),
    or planned (its segments, and the ones still to render in `pending`)."""

    row: int
    clip_id: str
    fingerprint: str = ""
    error: str | None = None
    finished: dict | None = None
    frames: int = 0
    fps: float = 0.0
    seconds: float = 0.0
    width: int = 0
    height: int = 0
    audio: str = ""  # the clip's audio copy beside its segments (preprocess stored it), which the assembler muxes
    audio_sha: str = ""
    params: RenderParams | None = None  # None: refused or skipped before its parameters mattered
    segments: list[tuple[int, int]] = field(default_factory=list)
    pending: list[tuple[int, int]] = field(default_factory=list)
    preprocess_seconds: float = 0.0
    poses_info: dict = field(default_factory=dict)  # framing, pose source and alignment (steps.reference_and_poses)
    skip_reason: str | None = None  # not rendered: its reference is unsuitable and the job's policy is skip

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def skipped(self) -> bool:
        return self.error is None and self.finished is not None


@dataclass
class SegmentWork:
    """One segment to render: frames [start, stop) of a clip and only their inputs."""

    row: int
    clip_id: str
    fingerprint: str
    start: int
    stop: int
    params: RenderParams
    reference: np.ndarray  # uint8 (H, W, 3)
    audio: np.ndarray  # float32 (stop - start, 50, 384)
    poses: np.ndarray  # uint8 (stop - start, H, W, 3)
    preprocess_seconds: float = 0.0

    @property
    def label(self) -> str:
        return f"{row_label(self.row, self.clip_id)}: segment {self.start}-{self.stop}"


@dataclass
class SegmentResult:
    """A segment back from the render stage: its frames are in storage, or `error` says why not."""

    row: int
    clip_id: str
    fingerprint: str
    start: int
    stop: int
    seconds: float = 0.0
    attempts: int = 0
    error: str | None = None
    give_up: bool = False  # render workers kept dying: the job stops rendering (job.py)


_ARRAYS = "arrays"
_SCALARS = (int, float, bool, str)  # plain columns; np.ndarray fields go in the .npz, the rest as JSON


@functools.cache
def _field_types(cls) -> dict[str, type]:
    """Each field's type as a class: `np.ndarray`, a scalar type, a dataclass (optional ones too: a field
    `RenderParams | None` is RenderParams), or `object` for the other annotations (lists, dicts, optionals)."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for item_field in dataclasses.fields(cls):
        hint = hints[item_field.name]
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            present = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            hint = present[0] if len(present) == 1 and dataclasses.is_dataclass(present[0]) else object
        kinds[item_field.name] = hint if hint is np.ndarray or hint in _SCALARS or dataclasses.is_dataclass(hint) else object
    return kinds


def to_batch(item) -> dict[str, np.ndarray]:
    """A row dataclass as a Ray Data batch of one: scalar fields as columns, array fields packed into one
    `.npz` bytes column, the others (optional, lists, dicts, dataclasses) as JSON strings, so every row of a
    type has the same columns and column types whatever its values."""
    batch, arrays = {}, {}
    for name, kind in _field_types(type(item)).items():
        value = getattr(item, name)
        if kind is np.ndarray:
            arrays[name] = value
        elif kind in _SCALARS:  # coerced: a 1 in a float field must not make an int column
            batch[name] = np.array([kind(value)])
        else:
            plain = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
            batch[name] = np.array([json.dumps(plain)])
    if arrays:
        buffer = io.BytesIO()
        np.savez(buffer, **{key: array for name, value in arrays.items() for key, array in _packed(name, value)})
        batch[_ARRAYS] = np.array([buffer.getvalue()], dtype=object)
    return batch


def from_batch(cls, batch: dict[str, np.ndarray], index: int = 0):
    """Row `index` of a batch written by `to_batch`, as the dataclass `cls`."""
    arrays = {}
    if _ARRAYS in batch:
        with np.load(io.BytesIO(batch[_ARRAYS][index]), allow_pickle=False) as archive:
            arrays = _unpacked({name: archive[name] for name in archive.files})
    values = {}
    for name, kind in _field_types(cls).items():
        if kind is np.ndarray:
            values[name] = arrays[name]
            continue
        value = batch[name][index]
        value = value.item() if isinstance(value, np.generic) else value
        if kind in _SCALARS:
            values[name] = value
        elif dataclasses.is_dataclass(kind):
            plain = json.loads(value)
            values[name] = None if plain is None else kind(**plain)
        else:
            values[name] = _from_json(json.loads(value))
    return cls(**values)


# An image stack (n, H, W, 3) uint8 with at most this share of non-black pixels travels sparse.
SPARSE_IMAGES_MAX_DENSITY = 0.25
_MASK, _VALUES, _SHAPE = ".mask", ".values", ".shape"


def _packed(name: str, array: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(archive name, array) pairs for one array field: itself, or a sparse image stack's three parts."""
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or not array.size:
        return [(name, array)]
    drawn = array.any(axis=-1)
    if drawn.mean() > SPARSE_IMAGES_MAX_DENSITY:
        return [(name, array)]
    return [(name + _MASK, np.packbits(drawn)), (name + _VALUES, array[drawn]),
            (name + _SHAPE, np.array(array.shape, dtype=np.int64))]


def _unpacked(archive: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    arrays = {name: array for name, array in archive.items() if not name.endswith((_MASK, _VALUES, _SHAPE))}
    for mask_name in (name for name in archive if name.endswith(_MASK)):
        name = mask_name[: -len(_MASK)]
        shape = tuple(int(side) for side in archive[name + _SHAPE])
        drawn = np.unpackbits(archive[mask_name], count=int(np.prod(shape[:-1]))).reshape(shape[:-1]).astype(bool)
        images = np.zeros(shape, dtype=np.uint8)
        images[drawn] = archive[name + _VALUES]
        arrays[name] = images
    return arrays


def _from_json(value):
    # JSON has no tuples: segment ranges come back as lists.
    if isinstance(value, list) and value and isinstance(value[0], list):
        return [tuple(item) for item in value]
    return value
