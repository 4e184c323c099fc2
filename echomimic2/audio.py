"""Audio conditioning: whisper-tiny encoder states at 50 Hz and the 50x384 tokens of each video frame.

Spec §7. The official code runs openai-whisper's encoder only: log-mel of the whole file, 30 s slices
padded with zeros in mel space, and keeps five hidden states per 20 ms row (the stem after the
positional embedding and the outputs of the four blocks, without `ln_post`). The network here is
transformers' `WhisperEncoder`, which holds the openai `tiny.pt` encoder weights one to one under
other names (`OFFICIAL_TO_HF`).
"""
from __future__ import annotations

import math
import re
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .weights_io import CheckpointError, FileReport, load_weights_only

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
SLICE_MEL_FRAMES = 3000  # 30 s of mel frames: the encoder's fixed input length
FEATURE_RATE = 50  # encoder rows per second (conv2 has stride 2 over 100 mel frames/s)
N_HIDDEN_STATES = 5  # stem + 4 blocks
WIDTH = 384
WINDOW_ROWS = (-4, 6)  # rows c-4 .. c+5 around a frame's centre row (spec §7.3)
TOKENS_PER_FRAME = (WINDOW_ROWS[1] - WINDOW_ROWS[0]) * N_HIDDEN_STATES  # 50
MIN_SAMPLES = 2 * HOP_LENGTH  # two mel frames = one encoder row

# The openai-whisper tiny encoder; `dims` of an official tiny.pt must match these.
TINY_DIMS = {"n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 384, "n_audio_head": 6, "n_audio_layer": 4}

# Sub-module names inside one block: openai-whisper -> transformers.
_BLOCK_OFFICIAL_TO_HF = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}
_BLOCK_HF_TO_OFFICIAL = {hf: official for official, hf in _BLOCK_OFFICIAL_TO_HF.items()}
_HF_LAYER_KEY = re.compile(r"layers\.(\d+)\.(.+)\.(weight|bias)")


def hf_to_official_key(hf_key: str) -> str:
    """Name of a transformers `WhisperEncoder` parameter in an openai-whisper checkpoint."""
    if hf_key == "embed_positions.weight":
        return "encoder.positional_embedding"
    if hf_key.startswith("layer_norm."):
        return "encoder.ln_post." + hf_key.removeprefix("layer_norm.")
    match = _HF_LAYER_KEY.fullmatch(hf_key)
    if match:
        layer, module, param = match.groups()
        return f"encoder.blocks.{layer}.{_BLOCK_HF_TO_OFFICIAL[module]}.{param}"
    return "encoder." + hf_key  # conv1, conv2


def _tiny_encoder_config() -> WhisperConfig:
    return WhisperConfig(
        num_mel_bins=TINY_DIMS["n_mels"],
        max_source_positions=TINY_DIMS["n_audio_ctx"],
        d_model=TINY_DIMS["n_audio_state"],
        encoder_attention_heads=TINY_DIMS["n_audio_head"],
        encoder_layers=TINY_DIMS["n_audio_layer"],
        encoder_ffn_dim=4 * TINY_DIMS["n_audio_state"],
        activation_function="gelu",  # exact erf GELU, as openai-whisper's nn.GELU()
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )


@lru_cache(maxsize=1)
def _expected_official_shapes() -> dict[str, tuple[int, ...]]:
    """Every encoder tensor an official tiny.pt must hold, with its shape (built on `meta`, no memory)."""
    with torch.device("meta"):
        encoder = WhisperEncoder(_tiny_encoder_config())
    return {hf_to_official_key(k): tuple(v.shape) for k, v in encoder.state_dict().items()}


def _read_whisper_file(path: Path, report: FileReport) -> dict[str, torch.Tensor] | None:
    """Load tiny.pt without running pickled code; file-level problems go into the report."""
    try:
        checkpoint = load_weights_only(path)
    except CheckpointError as error:  # refused globals, truncated zip, not a torch file at all
        report.problems.append(str(error).removeprefix(f"{path}: "))
        return None
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint or "dims" not in checkpoint:
        report.problems.append('not an openai-whisper checkpoint: expected a dict with "dims" and "model_state_dict"')
        return None
    dims = checkpoint["dims"]
    if not isinstance(dims, dict):
        report.problems.append(f'"dims" is {type(dims).__name__}, expected a dict')
    else:
        for name, value in TINY_DIMS.items():
            if dims.get(name) != value:
                report.problems.append(f'dims["{name}"] is {dims.get(name)!r}, whisper-tiny needs {value}')
    state = checkpoint["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        report.problems.append('"model_state_dict" is not a dict of tensors')
        return None
    return state


def check_whisper_checkpoint(path: str | Path) -> FileReport:
    """Check an openai-whisper `tiny.pt` against what the audio encoder needs, without loading a model.

    Every `encoder.*` tensor of whisper-tiny must be present with its shape (`missing`, `wrong_shape`);
    `decoder.*` tensors are allowed and ignored (official files carry them); anything else is
    `unexpected`. `dims` must describe the tiny encoder. Used by `weights check`.
    """
    return _inspect_whisper_checkpoint(Path(path))[0]


def _inspect_whisper_checkpoint(path: Path) -> tuple[FileReport, dict[str, torch.Tensor] | None]:
    report = FileReport(path)
    state = _read_whisper_file(path, report)
    if state is None:
        return report, None
    expected = _expected_official_shapes()
    ignored_decoder = 0
    for key, tensor in state.items():
        if key in expected:
            if tuple(tensor.shape) == expected[key]:
                report.found.append(key)
            else:
                report.wrong_shape.append(f"{key}: expected {expected[key]}, found {tuple(tensor.shape)}")
        elif key.startswith("decoder."):
            ignored_decoder += 1
        else:
            report.unexpected.append(key)
    report.missing = sorted(set(expected) - set(state))
    if ignored_decoder:
        report.notes.append(f"{ignored_decoder} decoder tensors ignored (only the encoder is used)")
    return report, state


@cache
def _mel_filterbank() -> np.ndarray:
    # Identical (bit for bit) to openai-whisper's assets/mel_filters.npz "mel_80"; tested.
    import librosa  # here, not at the top: GPU render workers and the bench use the encoder without librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)


def log_mel_spectrogram(waveform: torch.Tensor) -> torch.Tensor:
    """Whisper's log-mel (spec §7.2): (80, floor(samples / 160)), clamped at the whole input's max - 8."""
    window = torch.hann_window(N_FFT, periodic=True, device=waveform.device)
    stft = torch.stft(waveform, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = stft[:, :-1].abs() ** 2
    filters = torch.from_numpy(_mel_filterbank()).to(waveform.device)
    log_spec = torch.clamp(filters @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


class WhisperFeatures:
    """The whisper-tiny encoder as EchoMimic V2 uses it: waveform -> (N, 5, 384) float32 at 50 rows/s."""

    # Slices (30 s each) per encoder call: bounds memory on long files; one call covers 4 minutes.
    slices_per_call = 8

    def __init__(self, encoder: WhisperEncoder, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        self.encoder = encoder.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def from_official(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> WhisperFeatures:
        """Load the encoder half of an openai-whisper `tiny.pt` (weights-only unpickling, strict keys)."""
        report, state = _inspect_whisper_checkpoint(Path(path))
        if not report.ok:
            raise CheckpointError(f"whisper checkpoint rejected:\n{report.summary()}")
        encoder = WhisperEncoder(_tiny_encoder_config())
        hf_state = {hf_key: state[hf_to_official_key(hf_key)].float() for hf_key in encoder.state_dict()}
        encoder.load_state_dict(hf_state, strict=True)
        return cls(encoder, device, dtype)

    @classmethod
    def tiny(cls, seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> WhisperFeatures:
        """The same whisper-tiny encoder, randomly initialised from `seed` (tests and the demo)."""
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            encoder = WhisperEncoder(_tiny_encoder_config())
        finally:
            torch.random.set_rng_state(generator_state)
        return cls(encoder, device, dtype)

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under openai-whisper's names (for writing a tiny.pt-style file)."""
        return {hf_to_official_key(k): v.detach().cpu() for k, v in self.encoder.state_dict().items()}

    @torch.inference_mode()
    def _encode(self, mel_slices: torch.Tensor) -> torch.Tensor:
        """(B, 80, 3000) -> (B, 1500, 5, 384): stem (input of block 1) and each block's output.

        Recorded with hooks because the encoder's own outputs put `ln_post` on the last state, and
        the reference keeps block 4's output without it.
        """
        states: list[torch.Tensor] = []
        layers = self.encoder.layers
        hooks = [layers[0].register_forward_pre_hook(lambda _m, args, kwargs: states.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True)]
        hooks += [layer.register_forward_hook(lambda _m, _args, output: states.append(output)) for layer in layers]
        try:
            self.encoder(mel_slices)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack(states, dim=2)

    def __call__(self, waveform_16k: np.ndarray) -> np.ndarray:
        """Encoder states of a 16 kHz mono waveform: float32 (N, 5, 384), N = sum of floor(slice mel frames / 2)."""
        waveform = np.asarray(waveform_16k)
        if waveform.ndim != 1:
            raise ValueError(f"audio must be mono 1-D samples at 16 kHz, got shape {waveform.shape}")
        if len(waveform) < MIN_SAMPLES:
            raise ValueError(f"audio is too short: {len(waveform)} samples, need at least {MIN_SAMPLES} (20 ms at 16 kHz)")
        if not np.issubdtype(waveform.dtype, np.floating) or not np.isfinite(waveform).all():
            raise ValueError("audio samples must be finite floating-point values")
        mel = log_mel_spectrogram(torch.from_numpy(waveform.astype(np.float32)).to(self.device))
        n_mel = mel.shape[1]
        starts = range(0, n_mel, SLICE_MEL_FRAMES)
        valid_rows = [min(SLICE_MEL_FRAMES, n_mel - start) // 2 for start in starts]
        # Zero padding in mel space (not in the waveform), as the reference does.
        slices = torch.nn.functional.pad(mel, (0, len(starts) * SLICE_MEL_FRAMES - n_mel)).reshape(N_MELS, len(starts), SLICE_MEL_FRAMES)
        slices = slices.permute(1, 0, 2).to(self.dtype)
        encoded = torch.cat([self._encode(batch) for batch in slices.split(self.slices_per_call)])
        rows = [encoded[i, :n] for i, n in enumerate(valid_rows)]
        return torch.cat(rows).float().cpu().numpy()


def _centre_rows(frame_indices: np.ndarray, fps: float) -> np.ndarray:
    """floor(i * 50 / fps): the feature row at the centre of video frame i."""
    return np.floor(frame_indices * FEATURE_RATE / fps).astype(np.int64)


def _check_fps(fps: float) -> None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")


def video_frame_count(n_feature_rows: int, fps: float) -> int:
    """Frames the reference makes from N feature rows (spec §7.3): 1 + the first i with floor(i*50/fps) > N."""
    _check_fps(fps)
    if n_feature_rows < 1:
        raise ValueError(f"need at least one audio feature row, got {n_feature_rows}")
    first_past = math.ceil((n_feature_rows + 1) * fps / FEATURE_RATE)
    # Settle float rounding at exact boundaries with the same floor used for the windows.
    while first_past > 0 and _centre_rows(np.array([first_past - 1]), fps)[0] > n_feature_rows:
        first_past -= 1
    while _centre_rows(np.array([first_past]), fps)[0] <= n_feature_rows:
        first_past += 1
    return first_past + 1


def frame_windows(features: np.ndarray, fps: float, start: int, stop: int) -> np.ndarray:
    """Audio tokens of video frames [start, stop): float32 (stop - start, 50, 384).

    Frame i takes rows c-4 .. c+5 (c = floor(i*50/fps)), each clamped to [0, N-1]; token 5k+j is
    row c-4+k, hidden state j.
    """
    if features.ndim != 3 or features.shape[1:] != (N_HIDDEN_STATES, WIDTH):
        raise ValueError(f"features must have shape (N, {N_HIDDEN_STATES}, {WIDTH}), got {features.shape}")
    n_frames = video_frame_count(len(features), fps)
    if not (0 <= start <= stop <= n_frames):
        raise ValueError(f"frame range [{start}, {stop}) is outside the audio's {n_frames} frames at {fps} fps")
    centres = _centre_rows(np.arange(start, stop), fps)
    rows = np.clip(centres[:, None] + np.arange(*WINDOW_ROWS)[None, :], 0, len(features) - 1)
    return features[rows].reshape(stop - start, TOKENS_PER_FRAME, WIDTH).astype(np.float32, copy=False)
