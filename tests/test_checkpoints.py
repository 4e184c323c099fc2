"""Official-checkpoint loading: strict keys/shapes, safe unpickling, `weights check`.

Files carry exactly the keys, shapes and dtypes of spec/checkpoint_keys with random values. To keep
them small, every tensor is a view into one shared random pool: torch.save stores the pool once per
file, so a "3 GB" checkpoint takes ~50 MB. The full-size variant is marked slow.
"""
import json
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from echomimic2.checkpoints import (
    CheckpointError,
    check_official_files,
    load_official_networks,
    read_state_dict,
)
from echomimic2.config import official_vae_config
from echomimic2.motion_module import sinusoidal_position_table
from echomimic2.weights_check import weights_check_command

REPO = Path(__file__).resolve().parent.parent
KEYS_DIR = Path(__file__).resolve().parent / "data" / "checkpoint_keys"
WHISPER_DIMS = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
    n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4,
)


def spec(name: str) -> dict[str, dict]:
    return json.loads((KEYS_DIR / f"{name}.json").read_text())


def random_state(name: str, seed: int, small: bool, keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors with the manifest's keys/shapes/dtypes and random values.

    small: every tensor is a view into one random pool as large as the biggest tensor, at an offset
    that differs per key, so the file stores the pool once.
    """
    entries = {k: e for k, e in spec(name).items() if keys is None or k in keys}
    generator = torch.Generator().manual_seed(seed)
    largest = max(torch.Size(e["shape"]).numel() for e in entries.values())
    pool = torch.randn(largest + 10_007, generator=generator) if small else None
    state = {}
    for index, (key, entry) in enumerate(entries.items()):
        shape, dtype = entry["shape"], getattr(torch, entry["dtype"])
        if pool is None:
            state[key] = torch.randn(shape, generator=generator).to(dtype)
        else:
            numel = torch.Size(shape).numel()
            offset = (index * 7919) % (len(pool) - numel + 1)
            state[key] = pool[offset : offset + numel].view(shape).to(dtype)
    return state


def write_official_layout(root: Path, small: bool, vae_format: str = "bin") -> dict[str, dict[str, torch.Tensor]]:
    """The official folder (spec §1/§11) with random weights; returns what each file holds."""
    root.mkdir(parents=True, exist_ok=True)
    motion_keys = set(spec("motion_module"))
    two_d_keys = set(spec("denoising_unet")) - motion_keys
    files = {
        "reference_unet.pth": random_state("reference_unet", 1, small),
        "denoising_unet.pth": random_state("denoising_unet", 2, small, two_d_keys),
        "motion_module.pth": random_state("motion_module", 3, small),
        "denoising_unet_acc.pth": random_state("denoising_unet", 4, small, two_d_keys),
        "motion_module_acc.pth": random_state("motion_module", 5, small),
        "pose_encoder.pth": random_state("pose_encoder", 6, small),
    }
    for name, state in files.items():
        torch.save(state, root / name)
    vae_dir = root / "sd-vae-ft-mse"
    vae_dir.mkdir(exist_ok=True)
    config = {"_class_name": "AutoencoderKL", **official_vae_config()}
    (vae_dir / "config.json").write_text(json.dumps(config))
    vae = random_state("vae_sd_vae_ft_mse", 7, small)
    if vae_format == "safetensors":
        save_file({k: v.clone() for k, v in vae.items()}, vae_dir / "diffusion_pytorch_model.safetensors")
    else:
        torch.save(vae, vae_dir / "diffusion_pytorch_model.bin")
    files["sd-vae-ft-mse"] = vae
    (root / "audio_processor").mkdir(exist_ok=True)
    torch.save({"dims": WHISPER_DIMS, "model_state_dict": random_state("whisper_tiny", 8, small)}, root / "audio_processor" / "tiny.pt")
    return files


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights") / "EchoMimicV2"
    return root, write_official_layout(root, small=True)


def linked_copy(source: Path, target: Path) -> Path:
    """A folder whose files link to `source`'s, so one file can be replaced cheaply."""
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).symlink_to(path)
    return target


def replace_file(folder: Path, name: str, state) -> None:
    (folder / name).unlink()
    torch.save(state, folder / name)


def assert_loaded_equal(networks, files, variant="quality") -> None:
    """Every saved tensor landed in its parameter (checked on a strided sample, which pins the pool offset)."""
    denoising, motion = ("denoising_unet.pth", "motion_module.pth") if variant == "quality" else ("denoising_unet_acc.pth", "motion_module_acc.pth")
    expected = {
        "reference_unet": files["reference_unet.pth"],
        "denoising_unet": {**files[motion], **files[denoising]},
        "pose_encoder": files["pose_encoder.pth"],
        "vae": files["sd-vae-ft-mse"],
    }
    for (name, saved), module in zip(expected.items(), networks):
        loaded = module.state_dict()
        assert set(loaded) == set(saved), name
        for key, tensor in saved.items():
            assert loaded[key].shape == tensor.shape and loaded[key].dtype == torch.float32, key
            sample = slice(None, None, 997)
            assert torch.equal(loaded[key].flatten()[sample], tensor.flatten()[sample]), key


def test_official_layout_loads_with_every_key_from_the_files(official_dir):
    root, files = official_dir
    reports, _ = check_official_files(root, "quality")
    assert [r.summary() for r in reports if not r.ok] == []
    assert {r.path.name: len(r.found) for r in reports} == {
        "reference_unet.pth": 570, "denoising_unet.pth": 686, "motion_module.pth": 588,
        "pose_encoder.pth": 16, "config.json": 8, "diffusion_pytorch_model.bin": 248,
    }
    networks = load_official_networks(root, "quality", "cpu", torch.float32)
    assert_loaded_equal(networks, files)
    assert not any(p.requires_grad for module in networks for p in module.parameters())
    acc = load_official_networks(root, "acc", "cpu", torch.float32)
    assert_loaded_equal(acc, files, "acc")


def test_absent_position_tables_are_recomputed(official_dir, tmp_path):
    root, files = official_dir
    folder = linked_copy(root, tmp_path / "w")
    motion = {k: v for k, v in files["motion_module.pth"].items() if not k.endswith(".pos_encoder.pe")}
    replace_file(folder, "motion_module.pth", motion)
    unet = load_official_networks(folder, "quality").denoising_unet
    key = "up_blocks.3.motion_modules.2.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
    assert torch.equal(unet.state_dict()[key], sinusoidal_position_table(32, 320))


def _bad(files, name, change):
    state = dict(files[name])
    change(state)
    return state


BAD_CASES = {
    # case: (file to replace, how, key the error must name)
    "removed key": ("reference_unet.pth", lambda s: s.pop("mid_block.attentions.0.proj_in.weight"), "mid_block.attentions.0.proj_in.weight"),
    "extra key": ("pose_encoder.pth", lambda s: s.update({"blocks.6.weight": torch.zeros(3)}), "blocks.6.weight"),
    "wrong shape": (
        "motion_module.pth",
        lambda s: s.update({"down_blocks.1.motion_modules.0.temporal_transformer.proj_in.bias": torch.zeros(320)}),
        "down_blocks.1.motion_modules.0.temporal_transformer.proj_in.bias",
    ),
    "key in neither denoising file": (
        "denoising_unet.pth",
        lambda s: s.pop("up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight"),
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight",
    ),
    "2D key in the motion module file": (
        "motion_module.pth",
        lambda s: s.update({"conv_in.bias": torch.zeros(320)}),
        "conv_in.bias",
    ),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_file_is_an_error_naming_file_and_key(official_dir, tmp_path, case, capsys):
    root, files = official_dir
    name, change, key = BAD_CASES[case]
    folder = linked_copy(root, tmp_path / "w")
    replace_file(folder, name, _bad(files, name, change))
    with pytest.raises(CheckpointError) as error:
        load_official_networks(folder, "quality")
    assert str(folder / name) in str(error.value) and key in str(error.value)
    assert weights_check_command(folder, "quality") != 0
    if name in ("denoising_unet.pth", "motion_module.pth"):
        assert weights_check_command(folder, "acc") == 0  # quality-only files are not read for acc
    out = capsys.readouterr().out
    assert f"{folder / name}: FAILED" in out and key in out


def test_missing_file_and_bad_vae_config_are_errors(official_dir, tmp_path):
    root, _ = official_dir
    folder = linked_copy(root, tmp_path / "w")
    (folder / "motion_module_acc.pth").unlink()
    with pytest.raises(CheckpointError, match=r"motion_module_acc\.pth: FAILED.*\n  problem: .*file not found"):
        load_official_networks(folder, "acc")
    config = json.loads((folder / "sd-vae-ft-mse" / "config.json").read_text())
    (folder / "sd-vae-ft-mse" / "config.json").unlink()
    (folder / "sd-vae-ft-mse" / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    with pytest.raises(CheckpointError, match=r"config\.json: FAILED.*\n  problem: latent_channels is 8"):
        load_official_networks(folder, "quality")


def test_legacy_vae_attention_names_are_mapped(official_dir, tmp_path):
    root, files = official_dir
    folder = linked_copy(root, tmp_path / "w")
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    legacy = {}
    for key, tensor in files["sd-vae-ft-mse"].items():
        for new, old in renames.items():
            key = key.replace(new, old) if ".mid_block.attentions." in key else key
        legacy[key] = tensor
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in legacy
    replace_file(folder, "sd-vae-ft-mse/diffusion_pytorch_model.bin", legacy)
    vae = load_official_networks(folder, "quality").vae
    torch.testing.assert_close(
        vae.state_dict()["decoder.mid_block.attentions.0.to_out.0.weight"],
        files["sd-vae-ft-mse"]["decoder.mid_block.attentions.0.to_out.0.weight"],
        rtol=0, atol=0,
    )


class WritesMarker:
    """Unpickling this runs `Path(marker).touch()`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_pickle_that_runs_code_is_refused_and_never_runs(official_dir, tmp_path):
    root, files = official_dir
    # The payload is real: an unrestricted load does create its marker.
    proof = tmp_path / "proof"
    torch.save({"x": WritesMarker(proof)}, tmp_path / "proof.pth")
    torch.load(tmp_path / "proof.pth", weights_only=False)
    assert proof.exists()

    marker = tmp_path / "pwned"
    folder = linked_copy(root, tmp_path / "w")
    replace_file(folder, "pose_encoder.pth", {**files["pose_encoder.pth"], "conv_in.bias": WritesMarker(marker)})
    with pytest.raises(CheckpointError, match="pose_encoder.pth: refused: the pickle asks for getattr"):
        read_state_dict(folder / "pose_encoder.pth")
    with pytest.raises(CheckpointError, match="pose_encoder.pth: FAILED"):
        load_official_networks(folder, "acc")
    result = subprocess.run(
        [sys.executable, "cli.py", "weights", "check", str(folder)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert f"{folder / 'pose_encoder.pth'}: FAILED" in result.stdout and "refused: the pickle asks for" in result.stdout
    assert not marker.exists()


def test_weights_check_cli_accepts_the_good_folder(official_dir):
    root, _ = official_dir
    result = subprocess.run(
        [sys.executable, "cli.py", "weights", "check", str(root)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "9 of 9 files OK" in result.stdout
    assert "tiny.pt: OK" in result.stdout


def test_safetensors_and_legacy_torch_files_are_read(tmp_path):
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(4)}
    save_file(tensors, tmp_path / "x.safetensors")
    torch.save(tensors, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("x.safetensors", "legacy.pth"):
        loaded = read_state_dict(tmp_path / name)
        assert set(loaded) == {"a", "b"} and torch.equal(loaded["a"], tensors["a"])
    torch.save({"state_dict": tensors}, tmp_path / "nested.pth")
    with pytest.raises(CheckpointError, match="nested.pth: expected a flat dict"):
        read_state_dict(tmp_path / "nested.pth")


@pytest.mark.slow
def test_full_size_random_checkpoints_round_trip(tmp_path):
    files = write_official_layout(tmp_path / "EchoMimicV2", small=False, vae_format="safetensors")
    networks = load_official_networks(tmp_path / "EchoMimicV2", "quality", "cpu", torch.float16)
    for (name, saved), module in zip(
        (("reference_unet.pth", files["reference_unet.pth"]),
         ("denoising", {**files["motion_module.pth"], **files["denoising_unet.pth"]}),
         ("pose_encoder.pth", files["pose_encoder.pth"]),
         ("vae", files["sd-vae-ft-mse"])),
        networks,
    ):
        loaded = module.state_dict()
        assert set(loaded) == set(saved), name
        for key, tensor in saved.items():
            assert loaded[key].dtype == torch.float16 and torch.equal(loaded[key], tensor.to(torch.float16)), key


def test_weights_check_of_a_folder_that_does_not_exist_says_so_first_and_imports_no_torch(tmp_path):
    script = ("import sys; from pathlib import Path; from echomimic2.weights_check import weights_check_command; "
              f"code = weights_check_command(Path({str(tmp_path / 'nope')!r})); "
              "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 1 and lines[0] == f"{tmp_path / 'nope'}: folder not found"
    assert len([line for line in lines if line.endswith(": FAILED - file not found")]) == 9  # every file, worded alike
    assert lines[-2] == "0 of 9 files OK, 9 with problems (9 not found)" and lines[-1] == "no torch"


def test_weights_check_words_a_missing_file_as_the_others_beside_files_it_reads(official_dir, tmp_path, capsys):
    root, _ = official_dir
    folder = linked_copy(root, tmp_path / "w")
    (folder / "sd-vae-ft-mse" / "config.json").unlink()
    (folder / "motion_module_acc.pth").unlink()
    assert weights_check_command(folder, "acc") == 1
    out = capsys.readouterr().out
    assert f"{folder / 'sd-vae-ft-mse' / 'config.json'}: FAILED - file not found" in out
    assert f"{folder / 'motion_module_acc.pth'}: FAILED - file not found" in out
    assert f"{folder / 'reference_unet.pth'}: OK" in out and out.strip().endswith("5 of 7 files OK, 2 with problems (2 not found)")
