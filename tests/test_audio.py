"""Audio features against the openai-whisper package (test dependency) and the spec §7.3 window formula."""
from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper  # openai-whisper, the reference: requirements-test-nodeps.txt
from whisper.model import AudioEncoder, ModelDimensions, Whisper

from echomimic2.audio import (
    WhisperFeatures,
    _mel_filterbank,
    check_whisper_checkpoint,
    frame_windows,
    log_mel_spectrogram,
    video_frame_count,
)
from echomimic2.weights_io import CheckpointError

TINY = ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
    n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4,
)


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Chirps and noise bursts; loud first half, quiet tail, so the whole-file max matters."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (200 + 300 * np.sin(0.7 * t)) * t) + 0.05 * rng.standard_normal(t.size)
    wave[t > seconds / 2] *= 1e-5
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def official_tiny(tmp_path_factory) -> tuple[Path, Whisper]:
    """A random openai-whisper tiny model saved in the official tiny.pt layout (fp16, as OpenAI ships it)."""
    torch.manual_seed(1234)
    model = Whisper(TINY)
    state = {k: v.half() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("whisper") / "tiny.pt"
    torch.save({"dims": dataclasses.asdict(TINY), "model_state_dict": state}, path)
    model.load_state_dict(state)  # the reference model holds the same fp16-rounded values
    return path, model.eval()


def _reference_features(model: Whisper, audio: np.ndarray) -> np.ndarray:
    """The official encoder-only loop (spec §7.2) built from openai-whisper's own pieces."""
    mel = whisper.log_mel_spectrogram(torch.from_numpy(audio))
    states: list[torch.Tensor] = []
    hooks = [model.encoder.blocks[0].register_forward_pre_hook(lambda _m, args: states.append(args[0]))]
    hooks += [b.register_forward_hook(lambda _m, _a, out: states.append(out)) for b in model.encoder.blocks]
    rows = []
    with torch.no_grad():
        for seek in range(0, mel.shape[1], 3000):
            segment = whisper.pad_or_trim(mel[:, seek:seek + 3000], 3000)[None]
            states.clear()
            model.encoder(segment)
            stacked = torch.stack(states, dim=2)[0]  # (1500, 5, 384)
            rows.append(stacked[: (min(seek + 3000, mel.shape[1]) - seek) // 2])
    for hook in hooks:
        hook.remove()
    return torch.cat(rows).numpy()


def test_mel_filterbank_is_whispers_exactly():
    path = Path(whisper.__file__).parent / "assets" / "mel_filters.npz"
    with np.load(path, allow_pickle=False) as filters:
        assert np.array_equal(_mel_filterbank(), filters["mel_80"])


def test_log_mel_matches_openai_whisper():
    audio = _speechlike(3.0)
    ours = log_mel_spectrogram(torch.from_numpy(audio)).numpy()
    theirs = whisper.log_mel_spectrogram(torch.from_numpy(audio)).numpy()
    assert ours.shape == theirs.shape == (80, len(audio) // 160)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # The quiet half sits on the floor that the loud half's max sets: (max - 8 + 4) / 4 = scaled max - 2.
    assert np.isclose(np.median(ours[:, -50:]), ours.max() - 2.0, atol=1e-6)


def test_features_equal_openai_whisper_encoder_over_two_slices(official_tiny):
    path, model = official_tiny
    audio = _speechlike(31.0)  # 3100 mel frames: one full slice and a 100-frame tail
    ours = WhisperFeatures.from_official(path)(audio)
    theirs = _reference_features(model, audio)
    assert ours.dtype == np.float32
    assert ours.shape == theirs.shape == (1500 + 50, 5, 384)
    scale = np.abs(theirs).max(axis=(0, 2), keepdims=True)  # per hidden state
    assert np.abs(ours - theirs).max() / scale.min() < 1e-5
    np.testing.assert_allclose(ours, theirs, atol=2e-5 * float(scale.max()))


def test_expected_keys_are_the_openai_encoder_keys(official_tiny):
    path, model = official_tiny
    report = check_whisper_checkpoint(path)
    assert report.ok, report.summary()
    encoder_keys = {k for k in model.state_dict() if k.startswith("encoder.")}
    assert set(report.found) == encoder_keys and len(encoder_keys) == 67
    assert len(model.state_dict()) - 67 == 100 and report.notes == ["100 decoder tensors ignored (only the encoder is used)"]


def _write_variant(tmp_path: Path, official: Path, edit) -> Path:
    checkpoint = torch.load(official, weights_only=True)
    edit(checkpoint)
    path = tmp_path / "tiny.pt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    ("edit", "field", "needle"),
    [
        (lambda c: c["model_state_dict"].pop("encoder.blocks.2.attn.key.weight"), "missing", "encoder.blocks.2.attn.key.weight"),
        (lambda c: c["model_state_dict"].__setitem__("encoder.blocks.0.attn.key.bias", torch.zeros(384)), "unexpected", "encoder.blocks.0.attn.key.bias"),
        (lambda c: c["model_state_dict"].__setitem__("encoder.conv1.weight", torch.zeros(384, 80, 5)), "wrong_shape", "encoder.conv1.weight"),
        (lambda c: c["dims"].__setitem__("n_audio_head", 8), "problems", "n_audio_head"),
    ],
)
def test_bad_checkpoints_are_named(tmp_path, official_tiny, edit, field, needle):
    path = _write_variant(tmp_path, official_tiny[0], edit)
    report = check_whisper_checkpoint(path)
    assert not report.ok and any(needle in entry for entry in getattr(report, field)), report.summary()
    with pytest.raises(CheckpointError, match=needle) as error:
        WhisperFeatures.from_official(path)
    assert str(path) in str(error.value)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "tiny.pt"
    torch.save({"dims": {}, "model_state_dict": {"x": _RunsCode(marker)}}, path, pickle_module=pickle)
    report = check_whisper_checkpoint(path)
    assert not report.ok and "refused" in report.problems[0]
    with pytest.raises(CheckpointError, match="tiny.pt"):
        WhisperFeatures.from_official(path)
    assert not marker.exists()


def test_tiny_is_seeded_and_in_the_official_layout():
    a, b, c = WhisperFeatures.tiny(0), WhisperFeatures.tiny(0), WhisperFeatures.tiny(1)
    sa, sb, sc = a.official_state_dict(), b.official_state_dict(), c.official_state_dict()
    encoder = AudioEncoder(TINY.n_mels, TINY.n_audio_ctx, TINY.n_audio_state, TINY.n_audio_head, TINY.n_audio_layer)
    reference = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert {k.removeprefix("encoder."): tuple(v.shape) for k, v in sa.items()} == reference
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["encoder.blocks.0.attn.query.weight"], sc["encoder.blocks.0.attn.query.weight"])


def test_short_and_bad_audio_is_refused():
    features = WhisperFeatures.tiny(0)
    with pytest.raises(ValueError, match="too short"):
        features(np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="mono"):
        features(np.zeros((2, 16000), np.float32))
    with pytest.raises(ValueError, match="finite"):
        features(np.full(16000, np.nan, np.float32))


# ---- per-frame windows (spec §7.3) -----------------------------------------------------------


def _reference_frame_rows(n_rows: int, fps: float) -> list[list[int]]:
    """feature2chunks as the reference loops it: rows of frame i, until the first i past the audio."""
    frames, i = [], 0
    while True:
        centre = int(i * 50.0 / fps)
        frames.append([min(max(r, 0), n_rows - 1) for r in range(centre - 4, centre + 6)])
        i += 1
        if centre > n_rows:
            return frames


def _row_tagged_features(n_rows: int) -> np.ndarray:
    """Feature value = row * 10 + hidden-state index, so a token tells where it came from."""
    values = np.arange(n_rows)[:, None, None] * 10 + np.arange(5)[None, :, None]
    return np.broadcast_to(values, (n_rows, 5, 384)).astype(np.float32)


def test_spec_window_examples_at_24_fps():
    features = _row_tagged_features(250)
    assert video_frame_count(250, 24) == 122
    tokens = frame_windows(features, 24, 0, 122)
    rows = tokens[:, ::5, 0] // 10  # every 5th token starts a new row
    assert rows[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    assert rows[3].tolist() == list(range(2, 12))
    assert rows[12].tolist() == list(range(21, 31))
    # token 5k+j = row c-4+k, hidden state j
    assert (tokens[12, :, 0] % 10).tolist() == [j for _ in range(10) for j in range(5)]


@pytest.mark.parametrize("fps", [24, 25, 30])
def test_windows_follow_the_reference_loop(fps):
    for n_rows in (1, 2, 7, 49, 50, 51, 250, 251, 1550):
        expected = _reference_frame_rows(n_rows, fps)
        assert video_frame_count(n_rows, fps) == len(expected)
        tokens = frame_windows(_row_tagged_features(n_rows), fps, 0, len(expected))
        assert tokens.shape == (len(expected), 50, 384)
        assert (tokens[:, ::5, 0] // 10).astype(int).tolist() == expected


def test_windows_of_a_segment_equal_the_slice_of_the_whole():
    features = np.random.default_rng(0).standard_normal((400, 5, 384)).astype(np.float32)
    total = video_frame_count(400, 25)
    whole = frame_windows(features, 25, 0, total)
    np.testing.assert_array_equal(frame_windows(features, 25, 37, 95), whole[37:95])
    assert frame_windows(features, 25, 10, 10).shape == (0, 50, 384)
    with pytest.raises(ValueError, match="outside"):
        frame_windows(features, 25, 0, total + 1)
    with pytest.raises(ValueError, match="fps"):
        video_frame_count(400, 0)
