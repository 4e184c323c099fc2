"""Decoding the reference image and the audio of a row, with every limit checked from the header first.

Images: PIL reads the size from the header; anything over the pixel limit is refused before a pixel is
decoded. Audio: only the containers and codecs of an allow-list (`AUDIO_CONTAINERS`), told apart by the
file's first bytes, never by its name; libsndfile reads WAV/FLAC/Ogg/MP3 headers (duration without
decoding) and librosa decodes them; the others (M4A/MP4, AAC, WebM) go through the ffmpeg binary, told
which demuxer to use and kept to local input (`restricted_input`, also what the driving-video reader and
the assembler give it), whose header report gives the duration and whose decode is bounded by the limit.
"""
from __future__ import annotations

import functools
import io
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@functools.cache
def ffmpeg_exe() -> str:
    """ffmpeg on PATH, else imageio-ffmpeg's bundled binary; with neither, the bare name: the first ffmpeg call,
    or `cli.py doctor`, then says that ffmpeg is missing. Looked up on first use, once per process."""
    try:
        return shutil.which("ffmpeg") or imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # imageio-ffmpeg without its binary
        return "ffmpeg"


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


# ---------------------------------------------------------------------------------------------------
# Images


def _open_image(source: BinaryIO, limits: Limits) -> Image.Image:
    """The image with only its header read; refused when over the pixel limit or under the side limit."""
    try:
        with warnings.catch_warnings():
            # refused below with the row's reason when over our limit; PIL's own warning would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
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
# ffmpeg's inputs


def restricted_input(demuxers: tuple[str, ...], forced: str | None = None) -> list[str]:
    """ffmpeg input options that keep it to the file it is given: only local files and pipes (no network), and
    only the named demuxers, so a crafted file cannot be read as a playlist or list that opens other files or
    URLs (HLS, DASH, concat, image2 patterns); ``forced`` names the demuxer outright (nothing is guessed from
    the content or the name). The mov demuxer follows no data references unless asked to (`enable_drefs`)."""
    options = ["-protocol_whitelist", "file,pipe", "-format_whitelist", ",".join(demuxers)]
    return options + (["-f", forced] if forced else [])


# ---------------------------------------------------------------------------------------------------
# Audio


@dataclass(frozen=True)
class AudioContainer:
    label: str  # for messages
    demuxer: str  # ffmpeg's
    codecs: tuple[str, ...]  # allowed codec families (`_codec_family`)
    soundfile_format: str | None = None  # libsndfile's name, where it reads this container itself


# The allow-list, told apart by the file's first bytes (`audio_container`), never by its name.
AUDIO_CONTAINERS = {
    "wav": AudioContainer("WAV", "wav", ("pcm",), "WAV"),
    "flac": AudioContainer("FLAC", "flac", ("flac",), "FLAC"),
    "mp3": AudioContainer("MP3", "mp3", ("mp3",), "MP3"),
    "ogg": AudioContainer("Ogg (Vorbis, Opus, FLAC)", "ogg", ("vorbis", "opus", "flac"), "OGG"),
    "mp4": AudioContainer("M4A/MP4", "mov", ("aac", "alac", "mp3", "opus", "flac")),
    "aac": AudioContainer("AAC (ADTS)", "aac", ("aac",)),
    "webm": AudioContainer("WebM/Matroska", "matroska", ("opus", "vorbis", "aac", "flac", "mp3", "pcm")),
}
AUDIO_FORMATS = "WAV, MP3, FLAC, Ogg Vorbis/Opus, M4A/MP4/AAC, WebM audio"
AUDIO_DEMUXERS = tuple(container.demuxer for container in AUDIO_CONTAINERS.values())
_SOUNDFILE_CODECS = {"PCM_S8": "pcm", "PCM_U8": "pcm", "PCM_16": "pcm", "PCM_24": "pcm", "PCM_32": "pcm",
                     "FLOAT": "pcm", "DOUBLE": "pcm", "ULAW": "pcm", "ALAW": "pcm", "VORBIS": "vorbis",
                     "OPUS": "opus", "MPEG_LAYER_III": "mp3"}
_HEAD_BYTES = 512


def _codec_family(ffmpeg_codec: str) -> str:
    return "pcm" if ffmpeg_codec.startswith("pcm_") else {"mp3float": "mp3"}.get(ffmpeg_codec, ffmpeg_codec)


def _what_else(head: bytes) -> str:
    """What a refused file looks like, in a few words (never its content)."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"#EXTM3U"):
        return "it is an HLS playlist"
    if b"<MPD" in head:
        return "it is a DASH manifest"
    if text.startswith(b"ffconcat"):
        return "it is an ffconcat list"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8")) or head[8:12] == b"WEBP":
        return "it is an image"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "it is text"
    return "its first bytes match none of them"


def audio_container(source: BinaryIO) -> AudioContainer:
    """The allowed container the file's first bytes announce; InputError for anything else. Leaves the
    stream at its start."""
    try:
        head = source.read(_HEAD_BYTES)
        offset = 0
        if head[:3] == b"ID3" and len(head) >= 10:  # an ID3v2 tag before MP3 (or FLAC) data: skip it
            offset = 10 + ((head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | head[9] & 0x7F)
            offset += 10 if head[5] & 0x10 else 0  # footer
            source.seek(offset)
            data = source.read(_HEAD_BYTES)
        else:
            data = head
    finally:
        source.seek(0)
    if not head:
        raise InputError("file is empty")
    found = None
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE" and not offset:
        found = "wav"
    elif data[:4] == b"fLaC":
        found = "flac"
    elif data[:4] == b"OggS" and not offset and len(data) > 27:
        packet = data[27 + data[26]:]
        if packet.startswith((b"\x01vorbis", b"OpusHead", b"\x7fFLAC")):
            found = "ogg"
    elif data[4:8] == b"ftyp" and not offset:
        found = "mp4"
    elif data[:4] == b"\x1a\x45\xdf\xa3" and not offset:
        found = "webm"
    elif len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0:  # an MPEG audio frame's sync word
        found = "aac" if data[1] & 0x06 == 0 else "mp3"  # layer bits 00: ADTS AAC
    elif offset and data:
        found = "mp3"  # an ID3 tag says MP3; ffmpeg's MP3 reader finds the first frame
    if found is None:
        raise InputError(f"not an allowed audio format ({AUDIO_FORMATS}): {_what_else(head)}")
    return AUDIO_CONTAINERS[found]


@dataclass(frozen=True)
class AudioInfo:
    container: AudioContainer
    codec: str  # its family: pcm, mp3, flac, vorbis, opus, aac, alac
    seconds: float
    soundfile: bool  # libsndfile reads it (else ffmpeg decodes it)


def ffmpeg_report(path: str, input_options: list[str] = ()) -> str:
    """ffmpeg's description of a media file from its header (``ffmpeg -i``; stderr, file path hidden)."""
    report = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *input_options, "-i", path], capture_output=True,
                            text=True, errors="replace", timeout=60).stderr
    return report.replace(path, "<file>")


def report_duration(report: str) -> float | None:
    match = _DURATION.search(report)
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


_AUDIO_STREAM = re.compile(r"Stream #\S+: Audio: (\w+)")
_STREAM = re.compile(r"Stream #\S+: (\w+: [\w-]+)")
_FFMPEG_LOG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\] ")


def _ffmpeg_probe(path: str, container: AudioContainer) -> tuple[str, float]:
    """(codec, duration) from ffmpeg's header report, read with the container's own demuxer only."""
    report = ffmpeg_report(path, restricted_input(AUDIO_DEMUXERS, container.demuxer))
    codec, seconds = _AUDIO_STREAM.search(report), report_duration(report)
    if codec and seconds is not None:
        return codec.group(1), seconds
    streams = _STREAM.findall(report)
    if codec:
        reason = "ffmpeg cannot tell the duration of its audio from the header"
    elif streams:  # e.g. a video without sound
        reason = f"it holds no audio stream (found {', '.join(streams)})"
    else:
        # `ffmpeg -i` without an output always ends with "At least one output file must be specified":
        # the reason about the input is the line before it, if any.
        lines = [_FFMPEG_LOG_PREFIX.sub("", line.strip()) for line in report.splitlines()
                 if line.strip() and "output file must be specified" not in line]
        reason = lines[-1] if lines else "ffmpeg finds no audio stream"
    raise InputError(f"not a decodable audio file ({container.label}): {reason}")


@contextmanager
def _local_copy(source: BinaryIO, max_bytes: int) -> Iterator[str]:
    """The stream in a temporary file without a suffix (ffmpeg is told the demuxer, never guesses it from a
    name), at most ``max_bytes``."""
    with tempfile.NamedTemporaryFile(prefix="audio-") as tmp:
        copied = 0
        while chunk := source.read(min(1 << 20, max_bytes + 1 - copied)):
            tmp.write(chunk)
            copied += len(chunk)
            if copied > max_bytes:
                raise InputError(f"file is over the limit of {max_bytes} bytes")
        tmp.flush()
        source.seek(0)
        yield tmp.name


def probe_audio(source: bytes | BinaryIO, limits: Limits = Limits()) -> AudioInfo:
    """Container, codec and duration from the header, for a file of the allow-list only: libsndfile reads
    the headers it knows (nothing decoded), ffmpeg the others (told the demuxer, restricted to local input).
    ``source`` may be bytes or a seekable binary file. InputError saying why a file is refused."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    container = audio_container(stream)
    if container.soundfile_format:
        try:
            info = sf.info(stream)
        except (sf.LibsndfileError, RuntimeError):
            info = None
        finally:
            stream.seek(0)
        if info is not None and info.format == container.soundfile_format:
            codec = "flac" if info.format == "FLAC" or info.subtype == "FLAC" else _SOUNDFILE_CODECS.get(info.subtype)
            if codec not in container.codecs:
                raise InputError(f"{container.label} audio coded as {info.subtype} is not allowed "
                                 f"(allowed: {', '.join(container.codecs)})")
            return AudioInfo(container, codec, info.frames / info.samplerate if info.samplerate else 0.0, True)
    with _local_copy(stream, limits.max_audio_bytes) as path:
        codec, seconds = _ffmpeg_probe(path, container)
    if _codec_family(codec) not in container.codecs:
        raise InputError(f"{container.label} audio coded as {codec} is not allowed "
                         f"(allowed: {', '.join(container.codecs)})")
    return AudioInfo(container, _codec_family(codec), seconds, False)


def audio_duration_seconds(source: bytes | BinaryIO, name: str) -> float:
    """Duration in seconds from the header of an allowed audio file (`probe_audio`)."""
    try:
        return probe_audio(source).seconds
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None


def refuse_too_long(seconds: float, limits: Limits) -> None:
    """InputError when the audio is over the duration limit."""
    if seconds > limits.max_audio_seconds:
        raise InputError(f"audio is {seconds:.1f} s long, over the limit of {limits.max_audio_seconds:g} s")


def check_audio(source: bytes | BinaryIO, fps: float, limits: Limits) -> AudioInfo:
    """Whether a row's audio is usable, from its header: an allowed format, not empty, not over the duration
    limit, and long enough for at least one video frame at the row's fps (and for the audio encoder). The one
    check `validate` (`manifest.check_clip_inputs`) and the job's preprocessing (`preprocess.read_clip_inputs`)
    both make, so they accept and refuse the same files with the same words."""
    info = probe_audio(source, limits)
    if info.seconds <= 0:
        raise InputError("audio has no samples")
    refuse_too_long(info.seconds, limits)
    shortest = max(limits.min_audio_seconds, 0.5 / fps)  # the frame count rounds seconds * fps
    if info.seconds < shortest or round(info.seconds * fps) < 1:
        raise InputError(f"audio is {info.seconds:.3f} s long: too short for one frame at {fps:g} fps "
                         f"(at least {shortest:.3f} s)")
    return info


def decode_audio(data: bytes, limits: Limits, name: str) -> np.ndarray:
    """float32 mono at 16 kHz, for a file of the allow-list only. The duration limit is checked from the
    header before decoding, and the decode itself stops just past the limit, so a lying header cannot make
    it run long."""
    try:
        if not data:
            raise InputError("file is empty")
        bound = limits.max_audio_seconds + 1.0
        info = probe_audio(data, limits)
        refuse_too_long(info.seconds, limits)
        if info.soundfile:
            wave, _ = librosa.load(io.BytesIO(data), sr=SAMPLE_RATE, mono=True, duration=bound)
        else:
            # librosa's own fallback (audioread) would let ffmpeg guess the format: the restricted ffmpeg does it.
            with _local_copy(io.BytesIO(data), limits.max_audio_bytes) as path:
                decoded = subprocess.run(
                    [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
                     *restricted_input(AUDIO_DEMUXERS, info.container.demuxer), "-t", f"{bound}", "-i", path,
                     "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "pipe:1"],
                    capture_output=True, timeout=600)
            if decoded.returncode != 0:
                message = decoded.stderr.decode(errors="replace").replace(path, "<file>").strip()[-300:]
                raise InputError(f"cannot decode audio: {message}")
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


def audio_input_options(data: bytes) -> dict[str, str]:
    """`restricted_input` for an audio file as ffmpeg-python's input keywords (the assembler's audio input):
    its own demuxer only, local input only."""
    options = restricted_input(AUDIO_DEMUXERS, audio_container(io.BytesIO(data)).demuxer)
    return {name.lstrip("-"): value for name, value in zip(options[::2], options[1::2])}
