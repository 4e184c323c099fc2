"""pipeline.media: reference image decoding (EXIF, alpha, bomb guard; framing is echomimic2.clip_poses) and audio decoding to
16 kHz mono from several formats, with limits checked from headers."""
import io
import subprocess

import numpy as np
import pytest
import soundfile as sf
from conftest import dash_manifest, encoded_audio, ffconcat_list, hls_playlist, png_declaring, wav_bytes
from PIL import Image

from pipeline.manifest import Limits
from pipeline.media import (
    SAMPLE_RATE,
    audio_duration_seconds,
    audio_input_options,
    check_audio,
    decode_audio,
    decode_image,
    decode_reference,
    ffmpeg_exe,
)
from pipeline.storage import InputError


def png_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=save_args.pop("format", "PNG"), **save_args)
    return buffer.getvalue()


def test_the_whole_reference_is_kept():
    """Nothing is cropped here: framing around the person (or the centre-crop fallback) is a later step
    (echomimic2.clip_poses), with the poses."""
    image = Image.new("RGB", (300, 100), (255, 0, 0))
    image.paste((0, 255, 0), (100, 0, 200, 100))
    out = decode_reference(png_bytes(image), Limits(), "wide.png")
    assert out.shape == (100, 300, 3) and out.dtype == np.uint8
    assert tuple(out[50, 0]) == (255, 0, 0) and tuple(out[50, 150]) == (0, 255, 0)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (128, 64), (255, 0, 0))  # stored: left red, right blue
    image.paste((0, 0, 255), (64, 0, 128, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: left half on top
    out = decode_reference(png_bytes(image, format="JPEG", exif=exif, quality=95), Limits(), "r.jpg")
    assert out.shape == (128, 64, 3)
    assert out[10, 32, 0] > 200 and out[10, 32, 2] < 50  # top red
    assert out[118, 32, 2] > 200 and out[118, 32, 0] < 50  # bottom blue


def test_transparency_goes_over_white():
    out = decode_reference(png_bytes(Image.new("RGBA", (64, 64), (0, 0, 0, 0))), Limits(), "a.png")
    assert (out == 255).all()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_refusals(monkeypatch):
    Image.init()  # plugin registration draws small images of its own
    icon = png_bytes(Image.new("RGB", (64, 64)), format="ICO")
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels decoded"))
    with pytest.raises(InputError, match="bomb.png: image is over the limit of 40000000 pixels"):
        decode_reference(png_declaring(100_000, 100_000), Limits(), "bomb.png")
    with pytest.raises(InputError, match=r"big.png: image is 1200x1000 = 1200000 pixels, over the limit of 1000000"):
        decode_reference(png_declaring(1200, 1000), Limits(max_image_pixels=1_000_000), "big.png")
    with pytest.raises(InputError, match=r"thin.png: image is 4000x40, under the minimum of 64 pixels on a side"):
        decode_reference(png_declaring(4000, 40), Limits(), "thin.png")
    with pytest.raises(InputError, match="junk.png: not a readable image"):
        decode_reference(b"not an image", Limits(), "junk.png")
    with pytest.raises(InputError, match="x.ico: not a readable image"):  # formats outside IMAGE_FORMATS
        decode_reference(icon, Limits(), "x.ico")


def test_truncated_image_is_a_clear_error():
    data = png_bytes(Image.effect_noise((128, 128), 50).convert("RGB"))
    with pytest.raises(InputError, match="cut.png: cannot decode image"):
        decode_reference(data[: len(data) // 2], Limits(), "cut.png")
    with pytest.raises(InputError, match="^cannot decode image: .*truncated"):  # what validate runs
        decode_image(data[: len(data) // 2], Limits())


def test_image_given_as_audio_is_refused_by_its_bytes():
    jpeg = png_bytes(Image.new("RGB", (80, 80)), format="JPEG")
    with pytest.raises(InputError, match=r"^face.jpg: not an allowed audio format \(WAV, MP3, FLAC, Ogg Vorbis/Opus, "
                                         r"M4A/MP4/AAC, WebM audio\): it is an image$"):
        decode_audio(jpeg, Limits(), "face.jpg")


def tone(seconds: float, sr: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1)


def dominant_frequency(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(wave))


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_decode_soundfile_formats_to_16k_mono(fmt):
    buffer = io.BytesIO()
    sf.write(buffer, tone(1.0, 44100, channels=2), 44100, format=fmt)
    data = buffer.getvalue()
    assert audio_duration_seconds(data, f"a.{fmt.lower()}") == pytest.approx(1.0, abs=1e-3)
    wave = decode_audio(data, Limits(), f"a.{fmt.lower()}")
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == pytest.approx(SAMPLE_RATE, abs=20)
    assert dominant_frequency(wave) == pytest.approx(440, abs=2)


def test_decode_container_formats_through_ffmpeg(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1.5, 22050), 22050)
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-i", str(tmp_path / "a.wav"), "-c:a", "aac", str(tmp_path / "a.m4a")],
                   check=True)
    data = (tmp_path / "a.m4a").read_bytes()
    assert audio_duration_seconds(data, "a.m4a") == pytest.approx(1.5, abs=0.05)
    wave = decode_audio(data, Limits(), "a.m4a")
    assert len(wave) == pytest.approx(1.5 * SAMPLE_RATE, abs=0.05 * SAMPLE_RATE)
    assert dominant_frequency(wave) == pytest.approx(440, abs=2)
    with pytest.raises(InputError, match="a.m4a: audio is 1.5 s long, over the limit of 1 s"):
        decode_audio(data, Limits(max_audio_seconds=1), "a.m4a")


def test_audio_refusals():
    buffer = io.BytesIO()
    sf.write(buffer, tone(2.0, 16000), 16000, format="WAV")
    with pytest.raises(InputError, match="long.wav: audio is 2.0 s long, over the limit of 1.5 s"):
        decode_audio(buffer.getvalue(), Limits(max_audio_seconds=1.5), "long.wav")
    with pytest.raises(InputError, match="empty.wav: file is empty"):
        decode_audio(b"", Limits(), "empty.wav")
    with pytest.raises(InputError, match=r"junk.wav: not a decodable audio file \(WAV\)"):
        decode_audio(b"RIFF....WAVEjunk" * 50, Limits(), "junk.wav")
    silent = io.BytesIO()
    sf.write(silent, np.zeros((0, 1), np.float32), 16000, format="WAV")
    with pytest.raises(InputError, match="silent.wav: audio has no samples"):
        decode_audio(silent.getvalue(), Limits(), "silent.wav")


@pytest.mark.parametrize(("codec", "container", "kind"), [
    ("libmp3lame", "mp3", "mp3"), ("libvorbis", "ogg", "vorbis"), ("libopus", "ogg", "opus"), ("flac", "flac", "flac"),
    ("aac", "mp4", "aac"), ("alac", "ipod", "alac"), ("aac", "adts", "aac"), ("libopus", "webm", "opus")])
def test_every_allowed_audio_format_is_read(codec, container, kind):
    data = encoded_audio(wav_bytes(1.0), codec, container)
    info = check_audio(data, 24.0, Limits())
    assert info.codec == kind and info.seconds == pytest.approx(1.0, abs=0.1)
    assert len(decode_audio(data, Limits(), "voice")) == pytest.approx(SAMPLE_RATE, rel=0.1)


def test_audio_that_makes_ffmpeg_open_other_files_is_refused(tmp_path):
    """Files that ffmpeg reads as lists of other files or URLs (given the name or content it guesses from): an
    HLS playlist and a DASH manifest pointing at a file elsewhere, an ffconcat list; refused from their bytes
    by every reader of a row's audio: the header check, the decoder and the assembler's input."""
    mp3 = tmp_path / "elsewhere.mp3"
    mp3.write_bytes(encoded_audio(wav_bytes(1.5), "libmp3lame", "mp3"))
    mp4 = tmp_path / "elsewhere.m4a"
    mp4.write_bytes(encoded_audio(wav_bytes(1.5), "aac", "mp4"))
    cases = {"voice.m3u8": (hls_playlist(mp3, 1.5), "it is an HLS playlist"),
             "voice.wav": (dash_manifest(mp4, 1.5), "it is a DASH manifest"),
             "list.ffconcat": (ffconcat_list(str(mp3)), "it is an ffconcat list")}
    allowed = "not an allowed audio format (WAV, MP3, FLAC, Ogg Vorbis/Opus, M4A/MP4/AAC, WebM audio)"
    for name, (data, what) in cases.items():
        for read in (lambda audio: check_audio(audio, 24.0, Limits()), audio_input_options):
            with pytest.raises(InputError) as refused:
                read(data)
            assert str(refused.value) == f"{allowed}: {what}", name
        with pytest.raises(InputError, match=f"^{name}: not an allowed audio format"):
            decode_audio(data, Limits(), name)
        with pytest.raises(InputError, match=f"^{name}: not an allowed audio format"):
            audio_duration_seconds(data, name)


def test_audio_too_short_for_one_frame_is_refused():
    assert check_audio(wav_bytes(0.05), 24.0, Limits()).seconds == pytest.approx(0.05)  # rounds to one frame
    with pytest.raises(InputError, match=r"^audio is 0.020 s long: too short for one frame at 24 fps \(at least 0.021 s\)$"):
        check_audio(wav_bytes(0.02), 24.0, Limits())
    with pytest.raises(InputError, match="too short for one frame at 60 fps"):  # the audio encoder's minimum
        check_audio(wav_bytes(0.015), 60.0, Limits())


def test_the_audio_minimum_is_the_encoders():
    from echomimic2.audio import MIN_SAMPLES

    assert Limits().min_audio_seconds == MIN_SAMPLES / SAMPLE_RATE


def test_media_leaves_process_wide_settings_alone():
    """Importing the media modules finds no ffmpeg and sets no warnings filter; decoding an image under a pixel
    limit leaves PIL's own global limit and the warnings filters as they were (issue 35)."""
    import sys
    import warnings

    from conftest import image_bytes

    script = ("import warnings, ffmpeg, imageio_ffmpeg, librosa, numpy, soundfile, PIL.Image  # their own filters\n"
              "before = list(warnings.filters)\n"
              "import pipeline.assemble, pipeline.media\n"
              "assert warnings.filters == before, 'a warnings filter set on import'\n"
              "assert pipeline.media.ffmpeg_exe.cache_info().currsize == 0, 'ffmpeg looked up on import'\n"
              "assert pipeline.assemble.ffprobe_exe.cache_info().currsize == 0, 'ffprobe looked up on import'\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pixel_limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    decode_reference(image_bytes(0), Limits(max_image_pixels=1_000_000), "a.png")
    assert Image.MAX_IMAGE_PIXELS == pixel_limit and warnings.filters == filters
