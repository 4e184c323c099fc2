"""EchoMimicV2 with the tiny preset: determinism, segment noise, CFG, batching, input validation."""
import numpy as np
import pytest
import torch

from echomimic2 import PRESETS, EchoMimicV2, Preset
from echomimic2.sampler import segment_noise

SIZE = 64
FRAMES = 14  # > 12: two context windows per step


@pytest.fixture(scope="module")
def model():
    return EchoMimicV2.tiny(seed=0)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    audio = rng.standard_normal((FRAMES, 50, 384)).astype(np.float32)
    poses = rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    return reference, audio, poses


@pytest.fixture(scope="module")
def baseline(model, inputs):
    return model.render(*inputs, seed=5, first_frame=0, steps=2)


def test_presets():
    def settings(preset: Preset) -> tuple:
        return preset.name, preset.steps, preset.guidance, preset.width, preset.height, preset.variant

    assert settings(PRESETS["quality"]) == ("quality", 30, 2.5, 768, 768, "quality")
    assert settings(PRESETS["acc"]) == ("acc", 6, 1.0, 768, 768, "acc")
    assert settings(PRESETS["tiny"]) == ("tiny", 3, 1.0, 256, 256, "tiny")  # its cost: tests/test_presets.py


def test_tiny_weights_depend_on_the_seed_only(model):
    again = EchoMimicV2.tiny(seed=0).networks.denoising_unet.state_dict()
    other = EchoMimicV2.tiny(seed=1).networks.denoising_unet.state_dict()
    mine = model.networks.denoising_unet.state_dict()
    assert all(torch.equal(mine[key], again[key]) for key in mine)
    assert not all(torch.equal(mine[key], other[key]) for key in mine)
    assert model.identity == "tiny-seed0-v1" and model.preset is PRESETS["tiny"]


def test_same_seed_same_frames_other_seed_other_frames(model, inputs, baseline):
    assert baseline.shape == (FRAMES, SIZE, SIZE, 3) and baseline.dtype == np.uint8
    assert np.array_equal(baseline, model.render(*inputs, seed=5, first_frame=0, steps=2))
    assert not np.array_equal(baseline, model.render(*inputs, seed=6, first_frame=0, steps=2))


def test_noise_comes_from_seed_and_global_frame(model, inputs, baseline):
    """The render starts from segment_noise(seed, first_frame, ...): passing it explicitly changes nothing,
    and a later first_frame means other noise."""
    noise = segment_noise(5, 0, FRAMES, SIZE // 8, SIZE // 8)
    assert np.array_equal(baseline, model.render(*inputs, seed=5, first_frame=0, steps=2, initial_latents=noise))
    assert not np.array_equal(baseline, model.render(*inputs, seed=5, first_frame=3, steps=2))


def test_every_condition_reaches_the_frames(model, inputs, baseline):
    reference, audio, poses = inputs
    changed = [
        (reference[::-1].copy(), audio, poses),
        (reference, audio[::-1].copy(), poses),
        (reference, audio, poses[::-1].copy()),
    ]
    for variant in changed:
        assert not np.array_equal(baseline, model.render(*variant, seed=5, first_frame=0, steps=2))


def test_guidance_on_and_off_differ(model, inputs, baseline):
    guided = model.render(*inputs, seed=5, first_frame=0, steps=2, guidance=2.5)
    assert guided.shape == baseline.shape
    assert not np.array_equal(guided, baseline)


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_windows_per_batch_does_not_change_the_math(model, inputs, guidance):
    one = model.render(*inputs, seed=5, first_frame=0, steps=2, guidance=guidance, windows_per_batch=1)
    four = model.render(*inputs, seed=5, first_frame=0, steps=2, guidance=guidance, windows_per_batch=4)
    assert np.abs(one.astype(int) - four.astype(int)).max() <= 1  # fp rounding may flip a truncation


def test_reference_compatible_runs_the_wrap_around_schedule(model, inputs, baseline):
    noise = segment_noise(5, 0, FRAMES, SIZE // 8, SIZE // 8)
    official = model.render(*inputs, seed=5, first_frame=0, steps=2, reference_compatible=True, initial_latents=noise)
    assert official.shape == baseline.shape
    assert not np.array_equal(official, baseline)  # same start, other windows
    with pytest.raises(ValueError, match="first_frame"):
        model.render(*inputs, seed=5, first_frame=4, steps=2, reference_compatible=True)


def test_bad_inputs_are_named(model, inputs):
    reference, audio, poses = inputs
    cases = [
        (dict(reference_image=reference[:60]), "reference_image.*multiples of 64"),
        (dict(reference_image=reference.astype(np.float32)), "reference_image.*uint8"),
        (dict(frame_audio=audio[:, :49]), r"frame_audio.*\(n, 50, 384\)"),
        (dict(frame_audio=audio[:0], pose_images=poses[:0]), "frame_audio.*at least one frame"),
        (dict(pose_images=poses[:-1]), "pose_images.*one pose image per audio frame"),
        (dict(seed=1.5), "seed"),
        (dict(first_frame=-1), "first_frame"),
        (dict(steps=0), "steps"),
        (dict(guidance=float("nan")), "guidance"),
    ]
    for change, message in cases:
        arguments = dict(reference_image=reference, frame_audio=audio, pose_images=poses, seed=0, first_frame=0)
        arguments.update(change)
        with pytest.raises(ValueError, match=message):
            model.render(**arguments)


def test_from_official_names_the_missing_files(tmp_path):
    with pytest.raises(Exception, match=r"denoising_unet_acc\.pth.*\n.*file not found"):
        EchoMimicV2.from_official(tmp_path, variant="acc", device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="variant"):
        EchoMimicV2.from_official(tmp_path, variant="tiny", device="cpu")


def test_weights_identity_follows_file_content(tmp_path):
    from echomimic2.identity import _files_digest

    files = [tmp_path / "a.pth", tmp_path / "sub" / "b.pth"]
    files[1].parent.mkdir()
    files[0].write_bytes(b"x" * 10)
    files[1].write_bytes(bytes(range(256)) * 40_000)  # 10 MB: larger than the hashed head + tail
    first = _files_digest(files, tmp_path)
    assert first == _files_digest(list(reversed(files)), tmp_path)
    data = bytearray(files[1].read_bytes())
    data[-1] ^= 1  # a change in the tail
    files[1].write_bytes(bytes(data))
    assert _files_digest(files, tmp_path) != first


@pytest.mark.parametrize("compile_networks", [False, True])
def test_cuda_settings_branch_runs_on_cpu_networks(compile_networks):
    """The CUDA-only branch of model loading (`_gpu_settings`) on CPU networks: a NameError or any other
    fault on those lines fails here instead of in a user's first GPU job (issue 16)."""
    from echomimic2.model import _gpu_settings

    networks = EchoMimicV2.tiny(seed=0).networks
    unet_forward, decoder_forward = networks.denoising_unet.forward, networks.vae.decoder.forward
    benchmark = torch.backends.cudnn.benchmark
    try:
        prepared = _gpu_settings(networks, compile=compile_networks, device_type="cuda")
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = benchmark
    # torch.compile only wraps here (it compiles on the first call), so the CPU test stays fast.
    assert (prepared.denoising_unet.forward != unet_forward) is compile_networks
    assert (prepared.vae.decoder.forward != decoder_forward) is compile_networks
    untouched = EchoMimicV2.tiny(seed=0).networks
    assert _gpu_settings(untouched, compile=True).denoising_unet.forward == untouched.denoising_unet.forward


def test_the_model_does_not_import_the_bench():
    """One network factory (echomimic2/networks.py) serves the model and the bench; the production class
    must not pull in benchmark code."""
    import subprocess
    import sys

    check = "import sys, echomimic2.model; print('echomimic2.bench' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.strip() == "False"
