"""The manifest: one row per clip (schema in manifests/SCHEMA.md). Reading, schema checks, and input
checks that read sizes and headers first, so `validate` refuses hostile rows (decompression bombs, hours
of audio, million-file pose folders) before anything decodes them; an image that passes them is then
decoded as the job decodes it, so `validate` passes only what `run` can read."""
from __future__ import annotations

import io
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline import storage
from pipeline.limits import Limits
from pipeline.params import DEFAULT_FPS, DEFAULT_GESTURE, DEFAULT_POSE_ALIGN, FIELD_CHECKS
from pipeline.storage import InputError

MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_CLIP_ID_LEN = 128
CHECK_THREADS = 8  # input checks are I/O-bound (object-store round trips)

REQUIRED_COLUMNS = ("clip_id", "image", "audio")
OPTIONAL_COLUMNS = ("pose", *FIELD_CHECKS)
_CLIP_ID = re.compile(r"^[A-Za-z0-9._-]+$")
# Names Windows file systems (NTFS, SMB shares) reserve for devices, with any extension: `con.mp4` is a device.
_RESERVED_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(10))})


@dataclass(frozen=True)
class ClipSpec:
    """A manifest row as `parse_manifest` checked it; None and the defaults are resolved per job
    (`params.RenderParams.resolve`, the preset's values)."""

    row: int  # 0-based position in the manifest
    clip_id: str
    image: str  # resolved URI
    audio: str
    pose: str | None = None  # folder of N.npy, one .npz, or a driving video; None = gestures from the audio
    seed: int | None = None  # None: the job's default
    steps: int | None = None  # None: the preset's
    guidance: float | None = None
    fps: float = DEFAULT_FPS
    width: int | None = None  # None: the preset's
    height: int | None = None
    pose_align: str = DEFAULT_POSE_ALIGN
    gesture: str = DEFAULT_GESTURE
    person: int | None = None  # which person of several in the reference (0 = leftmost face); None: largest, most central


@dataclass(frozen=True)
class Problem:
    row: int | None  # None: the manifest as a whole
    clip_id: str | None
    field: str
    reason: str

    def __str__(self) -> str:
        if self.row is None:
            return f"manifest: {self.field}: {self.reason}"
        clip = f" (clip {self.clip_id!r})" if self.clip_id is not None else ""
        return f"row {self.row}{clip}: {self.field}: {self.reason}"


# ---------------------------------------------------------------------------------------------------
# Reading and schema


def manifest_dir(uri: str) -> str:
    """The folder relative paths in a manifest resolve against."""
    if storage.is_local(uri):
        return str(storage.local_path(uri).expanduser().resolve().parent)
    return uri.rsplit("/", 1)[0]


def read_manifest(uri: str) -> pd.DataFrame:
    """The manifest as a DataFrame; ``df.attrs["base_uri"]`` is its folder (for relative paths)."""
    data = storage.read_bytes(uri, max_bytes=MAX_MANIFEST_BYTES)
    try:
        # Arrow-backed columns keep a null apart from a NaN value: null means "not set", NaN is refused.
        df = pd.read_parquet(io.BytesIO(data), dtype_backend="pyarrow")
    except Exception as exc:
        raise InputError(f"not a readable Parquet file: {storage.describe_error(exc)}") from None
    df.attrs["base_uri"] = manifest_dir(uri)
    return df


def check_clip_id(clip_id) -> str | None:
    """Why ``clip_id`` is not safe as a file name on every store, or None."""
    if not isinstance(clip_id, str):
        return f"must be a string, got {type(clip_id).__name__}"
    if not 1 <= len(clip_id) <= MAX_CLIP_ID_LEN:
        return f"must be 1..{MAX_CLIP_ID_LEN} characters, got {len(clip_id)}"
    if not _CLIP_ID.match(clip_id):
        bad = sorted({c for c in clip_id if not re.match(r"[A-Za-z0-9._-]", c)})
        return f"may contain only A-Z a-z 0-9 . _ - (found {', '.join(repr(c) for c in bad)})"
    if clip_id.startswith("."):
        return "must not start with '.'"
    if ".." in clip_id:
        return "must not contain '..'"
    if clip_id.endswith("."):
        return "must not end with '.' (Windows file systems drop it)"
    if clip_id.split(".", 1)[0].upper() in _RESERVED_NAMES:
        return (f"{clip_id.split('.', 1)[0]!r} is a device name reserved on Windows file systems "
                f"(CON, PRN, AUX, NUL, COM0-9, LPT0-9, with or without an extension)")
    return None


def resolve_path(value: str, base_uri: str | None) -> str:
    """A manifest path: URLs and absolute paths as they are, relative paths against the manifest's
    folder (local ``..`` and symlinks are settled later by storage.check_uri). A value fsspec would
    not read as written (``simplecache::s3://…``) is refused as written, before it is joined to a folder."""
    storage.check_plain_url(value)
    if (storage.scheme_of(value) != "file" or value.startswith("file://") or base_uri is None
            or Path(value).expanduser().is_absolute()):
        return value
    if storage.is_local(base_uri):
        return str(Path(base_uri) / value)
    scheme, rest = base_uri.split("://", 1)
    joined = posixpath.normpath(f"{rest}/{value}")
    if joined.startswith(".."):
        raise InputError(f"{value!r} climbs above the top of {base_uri}")
    return f"{scheme}://{joined}"


def parse_manifest(df: pd.DataFrame, *, base_uri: str | None = None) -> tuple[list[ClipSpec], list[Problem]]:
    """Schema and per-row field checks. Returns the rows that passed and one Problem per issue.
    ``base_uri`` (default ``df.attrs["base_uri"]``, set by read_manifest) anchors relative paths.
    clip_ids are compared ignoring case; the first row keeps the id, later ones are refused."""
    base_uri = base_uri if base_uri is not None else df.attrs.get("base_uri")
    problems: list[Problem] = []
    for column in df.columns:
        if column not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            problems.append(Problem(None, None, f"column {column!r}",
                                    f"unknown column (allowed: {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})"))
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    for column in missing:
        problems.append(Problem(None, None, f"column {column!r}", "required column is missing"))
    if problems:
        return [], problems

    specs: list[ClipSpec] = []
    first_row_of: dict[str, tuple[int, str]] = {}
    # A cell is "not set" when pandas says it is null for its column's type: in a NumPy float column
    # (a DataFrame built in memory) NaN is pandas' null; in the Arrow-backed columns read_manifest
    # makes, NaN is a value, and refused like any other bad number.
    is_set = df.notna().to_dict("records")
    for row, record in enumerate(df.to_dict("records")):
        clip_id = record["clip_id"]
        shown_id = clip_id if isinstance(clip_id, str) else None
        row_problems = []

        reason = check_clip_id(clip_id)
        if reason is None:
            earlier = first_row_of.setdefault(clip_id.lower(), (row, clip_id))
            if earlier[0] != row:
                same = "" if earlier[1] == clip_id else f" {earlier[1]!r} (ids are compared ignoring case)"
                reason = f"duplicate of row {earlier[0]}{same}"
        if reason is not None:
            row_problems.append(Problem(row, shown_id, "clip_id", reason))

        paths = {}
        for field in ("image", "audio", "pose"):
            value = record.get(field)
            if field == "pose" and not is_set[row].get(field, False):
                paths[field] = None
            elif not isinstance(value, str) or not value.strip():
                got = "nothing" if not is_set[row].get(field, False) else f"{type(value).__name__} {value!r}"
                row_problems.append(Problem(row, shown_id, field, f"must be a path or URL, got {got}"))
            else:
                try:
                    paths[field] = resolve_path(value, base_uri)
                except InputError as exc:
                    row_problems.append(Problem(row, shown_id, field, str(exc)))

        overrides = {}
        for field, convert in FIELD_CHECKS.items():
            value = record.get(field)
            if not is_set[row].get(field, False):
                continue
            try:
                overrides[field] = convert(value)
            except ValueError as exc:
                row_problems.append(Problem(row, shown_id, field, str(exc)))

        if row_problems:
            problems += row_problems
        else:
            specs.append(ClipSpec(row=row, clip_id=clip_id, image=paths["image"], audio=paths["audio"],
                                  pose=paths["pose"], **overrides))
    return specs, problems


# ---------------------------------------------------------------------------------------------------
# Input checks (headers, sizes, counts)


def _check_image(uri: str, spec: ClipSpec, limits: Limits, input_root: Path | str | None) -> None:
    from pipeline.media import decode_image

    # Decoded as the job decodes it (a PNG cut in half has a valid header); the header is checked
    # against the pixel limits first, so this is bounded like the job's own read.
    decode_image(storage.read_bytes(uri, max_bytes=limits.max_image_bytes, input_root=input_root), limits)


def _check_audio(uri: str, spec: ClipSpec, limits: Limits, input_root: Path | str | None) -> None:
    from pipeline.media import check_audio

    n = storage.size(uri)
    if n > limits.max_audio_bytes:
        raise InputError(f"file is {n} bytes, over the limit of {limits.max_audio_bytes}")
    with storage.open_input(uri, input_root=input_root) as f:  # only the header is read for most formats
        check_audio(f, spec.fps, limits)  # as the job's preprocessing


def _check_pose(uri: str, spec: ClipSpec, limits: Limits, input_root: Path | str | None) -> None:
    from pipeline.pose_sources import source_for

    # each source's own check: files parsed, a driving video sampled; folder members confined too
    source_for(uri).check(uri, limits, input_root)


def check_clip_inputs(spec: ClipSpec, limits: Limits = Limits(), *, allow_http: bool = False,
                      input_root: Path | str | None = None) -> list[Problem]:
    """`validate`'s check of one row: one Problem per input of ``spec`` that is refused: bad URI,
    missing/unreadable file or not a regular one, over a limit (checked from sizes and headers, before any
    decoding), an image that does not decode, audio that `media.check_audio` refuses, bad pose frames. The job
    does not run it: its preprocessing reads each input once and applies the same checks, limits and decoders
    as it reads (`preprocess.read_clip_inputs`, `media.check_audio` / `decode_reference` / `decode_audio`,
    `pose_sources`)."""
    problems = []
    checks = [("image", spec.image, _check_image), ("audio", spec.audio, _check_audio), ("pose", spec.pose, _check_pose)]
    for field, uri, check in checks:
        if uri is None:
            continue
        try:
            check(storage.check_uri(uri, allow_http=allow_http, input_root=input_root), spec, limits, input_root)
        except FileNotFoundError:
            problems.append(Problem(spec.row, spec.clip_id, field, f"not found: {storage.redact(uri)}"))
        except InputError as exc:
            problems.append(Problem(spec.row, spec.clip_id, field, storage.redact(str(exc))))
        except Exception as exc:  # any reader failure on a hostile file is this row's problem, nothing more
            problems.append(Problem(spec.row, spec.clip_id, field,
                                    f"cannot read {storage.redact(uri)}: {storage.describe_error(exc)}"))
    return problems


def process_local_problems(specs: list[ClipSpec]) -> list[Problem]:
    """One Problem per input a job cannot read because it lives inside one process (memory://): the
    job's workers are other processes. `validate` refuses them too, as the job will."""
    problems = []
    for spec in specs:
        for field, uri in (("image", spec.image), ("audio", spec.audio), ("pose", spec.pose)):
            try:
                if uri is not None:
                    storage.refuse_process_local(uri)
            except InputError as exc:
                problems.append(Problem(spec.row, spec.clip_id, field, str(exc)))
    return problems


def validate_manifest(uri: str, limits: Limits = Limits(), *, allow_http: bool = False,
                      input_root: Path | str | None = None) -> tuple[list[ClipSpec], list[Problem]]:
    """Every check the job makes before rendering: schema, fields, ids, then each row's inputs (in threads).
    Returns the rows with no problem, and all problems in row order (manifest-level ones first)."""
    try:
        df = read_manifest(storage.check_uri(uri, allow_http=allow_http))
    except FileNotFoundError:
        return [], [Problem(None, None, "file", f"not found: {storage.redact(uri)}")]
    except InputError as exc:
        return [], [Problem(None, None, "file", storage.redact(str(exc)))]
    specs, problems = parse_manifest(df)
    problems += process_local_problems(specs)
    refused_rows = {p.row for p in problems}
    specs = [s for s in specs if s.row not in refused_rows]
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        input_problems = list(pool.map(
            lambda spec: check_clip_inputs(spec, limits, allow_http=allow_http, input_root=input_root), specs))
    bad_rows = set()
    for found in input_problems:
        problems += found
        bad_rows.update(p.row for p in found)
    problems.sort(key=lambda p: -1 if p.row is None else p.row)
    return [s for s in specs if s.row not in bad_rows], problems
