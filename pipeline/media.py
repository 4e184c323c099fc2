"""Decoding the reference image and the audio of a row, with every limit checked from the header first.

Images: PIL reads the size from the header; anything over the pixel limit is refused before a pixel is
decoded. Audio: soundfile reads WAV/FLAC/OGG/MP3 headers (duration without decoding) and librosa decodes
and resamples them; other containers (m4a, aac, wma, ...) go through the ffmpeg binary, whose header
report gives the duration and whose decode is bounded by the duration limit.
"""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO

import imageio_ffmpeg
import librosa
import numpy as np
import soundfile as sf
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.limits import Limits
from pipeline.storage import InputError, describe_error

SAMPLE_RATE = 16_000
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")  # fewer parsers exposed to untrusted files


def _find_ffmpeg() -> str:
    """ffmpeg on PATH, else imageio-ffmpeg's bundled binary; with neither, the bare name: importing the pipeline
    (e.g. `cli.py bench --schedule`, which encodes nothing) must not fail, and the first ffmpeg call, or
    `cli.py doctor`, then says that ffmpeg is missing."""
    try:
        return shutil.which("ffmpeg") or imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # imageio-ffmpeg without its binary
        return "ffmpeg"


FFMPEG = _find_ffmpeg()
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
# _open_image refuses over-limit sizes itself, with the row's reason; PIL's warning would only be noise.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


# ---------------------------------------------------------------------------------------------------
# Images


def _open_image(source: BinaryIO, limits: Limits) -> Image.Image:
    """The image with only its header read; refused when over the pixel limit or under the side limit."""
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels  # PIL's own bomb guard, at our limit
    try:
        image = Image.open(source, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InputError(f"image is over the limit of {limits.max_image_pixels} pixels "
                         f"(decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:  # PIL's message is only the repr of the file object
        raise InputError(f"not a readable image (not a {', '.join(IMAGE_FORMATS)} file)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"not a readable image: {describe_error(exc)}") from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise InputError(f"image is {width}x{height} = {width * height} pixels, "
                         f"over the limit of {limits.max_image_pixels}")
    if min(width, height) < limits.min_image_side:
        raise InputError(f"image is {width}x{height}, under the minimum of {limits.min_image_side} "
                         f"pixels on a side")
    return image


def decode_image(data: bytes, limits: Limits) -> Image.Image:
    """The image with every pixel decoded and EXIF orientation applied, after the header checks; the
    one decode that both `validate` and the job run, so a file validate passes the job can read.
    InputError for a truncated or corrupt file."""
    image = _open_image(io.BytesIO(data), limits)
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt pixel data
        raise InputError(f"cannot decode image: {describe_error(exc)}") from None


def decode_reference(data: bytes, limits: Limits, name: str) -> np.ndarray:
    """The whole reference as uint8 (H, W, 3) RGB: EXIF orientation applied, transparency over white,
    nothing cropped (framing around the person is a later step)."""
    try:
        image = decode_image(data, limits)
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # a mode conversion that fails on odd pixel data
        raise InputError(f"{name}: cannot decode image: {describe_error(exc)}") from None


# ---------------------------------------------------------------------------------------------------
# Audio


def ffmpeg_report(path: str) -> str:
    """ffmpeg's description of a media file from its header (``ffmpeg -i``; stderr, file path hidden)."""
    report = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-i", path], capture_output=True,
                            text=True, errors="replace", timeout=60).stderr
    return report.replace(path, "<file>")


def report_duration(report: str) -> float | None:
    match = _DURATION.search(report)
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


_STREAM = re.compile(r"Stream #\S+: (\w+: [\w-]+)")
_FFMPEG_LOG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\] ")


def _ffmpeg_duration(path: str) -> float:
    """Duration from ffmpeg's header report; InputError saying what the file is when it holds no audio."""
    report = ffmpeg_report(path)
    seconds = report_duration(report)
    if " Audio: " in report and seconds is not None:
        return seconds
    streams = _STREAM.findall(report)
    if " Audio: " in report:
        reason = "ffmpeg cannot tell the duration of its audio from the header"
    elif streams:  # e.g. an image given as audio: ffmpeg reads it fine, as video
        reason = f"it holds no audio stream (found {', '.join(streams)})"
    else:
        # `ffmpeg -i` without an output always ends with "At least one output file must be specified":
        # the reason about the input is the line before it, if any.
        lines = [_FFMPEG_LOG_PREFIX.sub("", line.strip()) for line in report.splitlines()
                 if line.strip() and "output file must be specified" not in line]
        reason = lines[-1] if lines else "ffmpeg finds no audio stream"
    raise InputError(f"not a decodable audio file: {reason}")


def _temp_copy(data: bytes, name: str) -> tempfile._TemporaryFileWrapper:
    suffix = Path(name).suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", Path(name).suffix) else ""
    tmp = tempfile.NamedTemporaryFile(suffix=suffix)
    tmp.write(data)
    tmp.flush()
    return tmp


def _soundfile_duration(source: BinaryIO) -> float | None:
    """Duration from a soundfile-readable header, or None when soundfile does not know the format."""
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError):
        return None
    finally:
        source.seek(0)
    return info.frames / info.samplerate if info.samplerate else 0.0


def audio_duration_seconds(source: bytes | BinaryIO, name: str) -> float:
    """Duration in seconds from the file's header (soundfile formats), else from ffmpeg's header report.
    ``source`` may be bytes or a seekable binary file (only the header is read for soundfile formats)."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    seconds = _soundfile_duration(stream)
    if seconds is not None:
        return seconds
    with _temp_copy(stream.read(), name) as tmp:
        return _ffmpeg_duration(tmp.name)


def refuse_too_long(seconds: float, limits: Limits) -> None:
    """InputError when the audio is over the duration limit (one message for validate and preprocess)."""
    if seconds > limits.max_audio_seconds:
        raise InputError(f"audio is {seconds:.1f} s long, over the limit of {limits.max_audio_seconds:g} s")


def decode_audio(data: bytes, limits: Limits, name: str) -> np.ndarray:
    """float32 mono at 16 kHz. The duration limit is checked from the header before decoding, and the
    decode itself stops just past the limit, so a lying header cannot make it run long."""
    try:
        if not data:
            raise InputError("file is empty")
        bound = limits.max_audio_seconds + 1.0
        seconds = _soundfile_duration(io.BytesIO(data))
        if seconds is not None:
            refuse_too_long(seconds, limits)
            wave, _ = librosa.load(io.BytesIO(data), sr=SAMPLE_RATE, mono=True, duration=bound)
        else:
            # librosa's own fallback (audioread) needs an `ffmpeg` on PATH; the resolved binary also
            # covers pip-only installs.
            with _temp_copy(data, name) as tmp:
                refuse_too_long(_ffmpeg_duration(tmp.name), limits)
                decoded = subprocess.run(
                    [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-t", f"{bound}", "-i", tmp.name,
                     "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"],
                    capture_output=True, timeout=600)
            if decoded.returncode != 0:
                raise InputError(f"cannot decode audio: {decoded.stderr.decode(errors='replace').strip()[-300:]}")
            wave = np.frombuffer(decoded.stdout, dtype=np.float32)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    except Exception as exc:  # a hostile file fails its own row, with the decoder's reason
        raise InputError(f"{name}: cannot decode audio: {describe_error(exc)}") from None
    if wave.size == 0:
        raise InputError(f"{name}: audio has no samples")
    if wave.size > limits.max_audio_seconds * SAMPLE_RATE:
        raise InputError(f"{name}: audio is over the limit of {limits.max_audio_seconds:g} s")
    return np.ascontiguousarray(wave, dtype=np.float32)
