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
    return EchoMimicV2.tiny()


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


def test_tiny_loads_the_shipped_demo_weights_and_tiny_random_depends_on_the_seed_only(model):
    import hashlib

    from echomimic2.weights_layout import TINY_DEMO_WEIGHTS

    again = EchoMimicV2.tiny().networks.denoising_unet.state_dict()
    mine = model.networks.denoising_unet.state_dict()
    assert all(torch.equal(mine[key], again[key]) for key in mine)
    assert model.identity == "tiny-demo-" + hashlib.sha256(TINY_DEMO_WEIGHTS.read_bytes()).hexdigest()[:16]
    assert model.preset is PRESETS["tiny"]
    random0, random0_again, random1 = (EchoMimicV2.tiny_random(seed=s) for s in (0, 0, 1))
    first, second, other = (m.networks.denoising_unet.state_dict() for m in (random0, random0_again, random1))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)
    assert not all(torch.equal(first[key], mine[key]) for key in first)  # trained, not the seed-0 draw
    assert (random0.identity, random1.identity) == ("tiny-seed0-v1", "tiny-seed1-v1")


def test_a_weights_file_for_other_networks_is_refused_with_its_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    from echomimic2.checkpoints import CheckpointError, load_prefixed_networks
    from echomimic2.config import tiny_unet_config, tiny_vae_config
    from echomimic2.networks import build_networks
    from echomimic2.weights_layout import TINY_DEMO_WEIGHTS

    state = load_file(str(TINY_DEMO_WEIGHTS))
    key = next(k for k in state if k.startswith("pose_encoder."))
    state["extra.weight"] = state.pop(key)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"(?s)missing.*" + key.replace(".", r"\.")):
        load_prefixed_networks(build_networks(tiny_unet_config(), tiny_vae_config()), tmp_path / "bad.safetensors")


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
    from echomimic2.fast import compiled_regions
    from echomimic2.model import _gpu_settings

    networks = EchoMimicV2.tiny().networks
    decoder_forward = networks.vae.decoder.forward
    benchmark = torch.backends.cudnn.benchmark
    try:
        prepared = _gpu_settings(networks, compile=compile_networks, device_type="cuda")
        assert torch.backends.cudnn.benchmark is not compile_networks  # compiled workers skip cuDNN's timing (warm start)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    # torch.compile only wraps here (it compiles on the first call), so the CPU test stays fast.
    # The UNet by its repeated blocks: 22 resnets, 16 spatial transformers, 21 motion modules.
    assert compiled_regions(prepared.denoising_unet) == (59 if compile_networks else 0)
    assert (prepared.vae.decoder.forward != decoder_forward) is compile_networks
    untouched = EchoMimicV2.tiny().networks
    assert compiled_regions(_gpu_settings(untouched, compile=True).denoising_unet) == 0


def test_the_model_does_not_import_the_bench():
    """One network factory (echomimic2/networks.py) serves the model and the bench; the production class
    must not pull in benchmark code."""
    import subprocess
    import sys

    check = "import sys, echomimic2.model; print('echomimic2.bench' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.strip() == "False"
