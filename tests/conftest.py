"""Shared test setup: nothing may reach a model hub; numba caches stay inside the work tree."""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".tmp" / "numba"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import io
import logging
import struct
import uuid
import zlib

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image, ImageDraw

# Job tests render small clips: 128x128 at 12 fps.
FPS = 12.0
SIZE = 128

# A distinctive secret: tests assert its value never shows up in messages, results or logs.
S3_SECRET = "S3cr3t-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server on loopback (moto's server mode), with credentials in the environment the
    way a user supplies them. Environment stays set for the session (Ray workers inherit it)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
        mp.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket: ``s3://<name>``."""
    import fsspec

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("s3")
    fs.mkdir(name)
    yield f"s3://{name}"
    fs.rm(name, recursive=True)


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR for any canvas, with no pixel data: a few dozen bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_wav(path: Path, seconds: float, sr: int = 16000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, subtype="PCM_16")
    return path


def image_bytes(seed: int) -> bytes:
    """A drawn figure: head and shoulders on a plain background."""
    image = Image.new("RGB", (160, 200), (200 + seed % 50, 210, 230))
    draw = ImageDraw.Draw(image)
    draw.ellipse((55, 30, 105, 90), fill=(230, 190, 160))
    draw.rectangle((30, 100, 130, 200), fill=(40, 60 + 20 * seed % 200, 120))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(seconds: float, pitch: float = 220.0) -> bytes:
    t = np.arange(int(seconds * 16_000)) / 16_000
    voice = 0.3 * np.sin(2 * np.pi * pitch * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    buffer = io.BytesIO()
    sf.write(buffer, voice.astype(np.float32), 16_000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def encoded_audio(wav: bytes, codec: str, container: str) -> bytes:
    """``wav`` re-encoded by the real ffmpeg (e.g. "libmp3lame", "mp3"; "aac", "mp4"; "libopus", "webm"), written
    to a file as usual (an MP4's index at its end, a FLAC's length in its header)."""
    import subprocess
    import tempfile

    from pipeline.media import ffmpeg_exe

    with tempfile.NamedTemporaryFile() as out:
        subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "wav", "-i", "pipe:0", "-c:a", codec,
                        "-f", container, out.name], input=wav, capture_output=True, check=True)
        return Path(out.name).read_bytes()


def hls_playlist(target: Path, seconds: float) -> bytes:
    """An HLS playlist whose one segment is ``target``, by absolute path: ffmpeg's HLS reader opens it."""
    return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{int(seconds) + 1}\n"
            f"#EXTINF:{seconds:.3f},\n{target}\n#EXT-X-ENDLIST\n").encode()


def dash_manifest(target: Path, seconds: float) -> bytes:
    """A DASH MPD whose one representation is ``target`` (an MP4), by file:// URL: ffmpeg's DASH reader opens it."""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT{seconds:.3f}S"
     minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
 <Period><AdaptationSet mimeType="audio/mp4" contentType="audio">
  <Representation id="a" bandwidth="64000"><BaseURL>file://{target}</BaseURL></Representation>
 </AdaptationSet></Period>
</MPD>
""".encode()


def ffconcat_list(*names: str) -> bytes:
    """An ffconcat script naming other files: ffmpeg's concat reader opens them."""
    return ("ffconcat version 1.0\n" + "".join(f"file {name}\n" for name in names)).encode()


def write_manifest(root: str, rows: list[dict]) -> str:
    """rows as root/manifest.parquet (any fsspec URL), every clip at FPS and SIZE x SIZE; returns its URI."""
    from pipeline import storage

    frame = pd.DataFrame(rows)
    frame["fps"], frame["width"], frame["height"] = FPS, SIZE, SIZE
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    uri = storage.join(root, "manifest.parquet")
    storage.write_atomic(uri, buffer.getvalue())
    return uri


def check_video(uri: str, audio_seconds: float) -> None:
    """An H.264 + AAC MP4 of SIZE x SIZE at FPS, as long as the audio (within a frame)."""
    from pipeline.assemble import probe_video

    probe = probe_video(uri)
    assert (probe["vcodec"], probe["acodec"]) == ("h264", "aac")
    assert probe["fps"] == pytest.approx(FPS)
    assert (probe["width"], probe["height"]) == (SIZE, SIZE)
    assert abs(probe["duration"] - audio_seconds) <= 1 / FPS + 1e-3
    assert probe["frames"] == round(audio_seconds * FPS)
