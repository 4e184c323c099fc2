"""Safe, strict loading of the official EchoMimic V2 checkpoints (spec §1, §11).

The layout of a weights folder is `echomimic2.weights_layout`.

Every file is read without executing pickled code (`torch.load(weights_only=True)` or safetensors).
Every parameter of every network must come from the files: the denoising UNet from
denoising_unet*.pth ∪ motion_module*.pth (the later file wins, as upstream; the motion modules'
`pos_encoder.pe` tables are recomputed when absent). Missing, unexpected and mis-shaped keys are
errors naming the file and the keys — never a silent `strict=False`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import nn

from .config import official_unet_config, official_vae_config
from .denoising_unet import DenoisingUNet3D
from .motion_module import sinusoidal_position_table
from .networks import OfficialNetworks, build_networks
from .weights_io import CheckpointError, FileReport, read_into, read_state_dict  # noqa: F401 - read_state_dict: part of this module's API
from .weights_layout import (  # noqa: F401 - the layout's names are part of this module's API
    NETWORK_PREFIXES,
    POSE_ENCODER_FILE,
    REFERENCE_UNET_FILE,
    VAE_DIR,
    VARIANTS,
    WHISPER_FILE,
    denoising_files,
    official_weight_files,
    vae_weight_file,
)

POSITION_TABLE_SUFFIX = ".pos_encoder.pe"
# AutoencoderKL arguments that fix the architecture; the folder's config.json must agree.
VAE_ARCHITECTURE_FIELDS = (
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "latent_channels", "norm_num_groups",
)


def _meta_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


def _compare(report: FileReport, state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], allowed: set[str]) -> None:
    """Count `expected` keys found in `state`; keys outside `allowed` are unexpected."""
    for key, tensor in state.items():
        if key not in allowed:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != expected[key]:
            report.wrong_shape.append(f"{key}: expected {expected[key]}, file has {tuple(tensor.shape)}")
        else:
            report.found.append(key)


def _check_single(path: Path, module: nn.Module) -> tuple[list[FileReport], dict[str, torch.Tensor] | None]:
    """A network whose whole state dict lives in one file (reference UNet, pose encoder)."""
    report = FileReport(path)
    state = read_into(report)
    if state is not None:
        expected = _meta_shapes(module)
        _compare(report, state, expected, set(expected))
        report.missing = [key for key in expected if key not in state]
    return [report], state


def _check_denoising(weights_dir: Path, variant: str, unet: DenoisingUNet3D) -> tuple[list[FileReport], dict[str, torch.Tensor] | None]:
    """denoising_unet*.pth (2D part, may hold anything of the UNet) ∪ motion_module*.pth (motion modules only)."""
    unet_name, motion_name = denoising_files(variant)
    unet_report, motion_report = FileReport(weights_dir / unet_name), FileReport(weights_dir / motion_name)
    expected = _meta_shapes(unet)
    motion_keys = {key for key in expected if ".motion_modules." in key}
    tables = {key for key in motion_keys if key.endswith(POSITION_TABLE_SUFFIX)}
    unet_state, motion_state = read_into(unet_report), read_into(motion_report)
    if unet_state is not None:
        _compare(unet_report, unet_state, expected, set(expected))
    if motion_state is not None:
        _compare(motion_report, motion_state, expected, motion_keys)
    if unet_state is None or motion_state is None:
        return [unet_report, motion_report], None
    merged = {**motion_state, **unet_state}  # upstream loads motion_module.pth first, denoising_unet.pth over it
    unet_report.missing = [key for key in expected if key not in motion_keys and key not in merged]
    motion_report.missing = [key for key in expected if key in motion_keys - tables and key not in merged]
    absent_tables = [key for key in tables if key not in merged]
    if absent_tables:
        motion_report.notes.append(f"{len(absent_tables)} position tables (*{POSITION_TABLE_SUFFIX}) absent: recomputed")
    return [unet_report, motion_report], merged


def _check_vae(weights_dir: Path, vae: AutoencoderKL) -> tuple[list[FileReport], dict[str, torch.Tensor] | None]:
    """The diffusers sd-vae-ft-mse folder: config.json must describe the official architecture."""
    vae_dir = weights_dir / VAE_DIR
    config_report = FileReport(vae_dir / "config.json")
    try:
        config = json.loads(config_report.path.read_text())
        official = official_vae_config()
        for name in VAE_ARCHITECTURE_FIELDS:
            value = config.get(name)
            value = tuple(value) if isinstance(value, list) else value
            if value != official[name]:
                config_report.problems.append(f"{name} is {config.get(name)!r}, sd-vae-ft-mse has {official[name]!r}")
            else:
                config_report.found.append(name)
    except (OSError, ValueError) as error:
        config_report.problems.append(f"unreadable: {type(error).__name__}: {error}")
    report = FileReport(vae_weight_file(vae_dir))
    state = read_into(report)
    if state is not None:
        # diffusers' own renaming of pre-0.14 attention names (query/key/value/proj_attn -> to_q/to_k/to_v/to_out.0).
        state = vae._fix_state_dict_keys_on_load(dict(state))
        expected = _meta_shapes(vae)
        _compare(report, state, expected, set(expected))
        report.missing = [key for key in expected if key not in state]
    return [config_report, report], state


def _meta_networks() -> OfficialNetworks:
    with torch.device("meta"):
        return build_networks(official_unet_config(), official_vae_config())


def check_official_files(weights_dir: Path, variant: str, networks: OfficialNetworks | None = None):
    """Reports for every file the networks of `variant` load, and their state dicts by network."""
    weights_dir = Path(weights_dir)
    networks = networks or _meta_networks()
    checks = {
        "reference_unet": _check_single(weights_dir / REFERENCE_UNET_FILE, networks.reference_unet),
        "denoising_unet": _check_denoising(weights_dir, variant, networks.denoising_unet),
        "pose_encoder": _check_single(weights_dir / POSE_ENCODER_FILE, networks.pose_encoder),
        "vae": _check_vae(weights_dir, networks.vae),
    }
    reports = [report for file_reports, _ in checks.values() for report in file_reports]
    return reports, {name: state for name, (_, state) in checks.items()}


def _materialise(module: nn.Module, state: dict[str, torch.Tensor], device, dtype: torch.dtype) -> None:
    """Replace the meta tensors by the file's, cast once to (device, dtype); position tables recomputed if absent."""
    ready = {}
    for key, meta in module.state_dict().items():
        tensor = state.get(key)
        if tensor is None and key.endswith(POSITION_TABLE_SUFFIX):
            tensor = sinusoidal_position_table(meta.shape[1], meta.shape[2])
        ready[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    module.load_state_dict(ready, strict=True, assign=True)
    module.eval().requires_grad_(False)


def load_official_networks(
    weights_dir: str | Path, variant: str = "quality", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> OfficialNetworks:
    """Build the official networks on `meta` and give every tensor its value from the files (nothing initialised twice).

    Raises CheckpointError listing every problem of every file before anything is loaded.
    """
    denoising_files(variant)  # validates the name
    networks = _meta_networks()
    reports, states = check_official_files(Path(weights_dir), variant, networks)
    failed = [report for report in reports if not report.ok]
    if failed:
        raise CheckpointError(
            f"official weights in {weights_dir} (variant {variant!r}) do not match the networks:\n"
            + "\n".join(report.summary() for report in failed)
        )
    for name, module in zip(("reference_unet", "denoising_unet", "pose_encoder", "vae"), networks):
        _materialise(module, states[name], device, dtype)
    return networks


def load_prefixed_networks(networks: OfficialNetworks, path: str | Path, device=None, dtype: torch.dtype | None = None) -> OfficialNetworks:
    """Give `networks` (built on `meta`, or real ones) every tensor from one safetensors file holding all four state
    dicts, each key prefixed with its network's name (`NETWORK_PREFIXES`): the tiny preset's shipped weights and what
    `training/train_tiny.py` writes. Cast to (device, dtype), by default each network's own. Raises CheckpointError
    listing any key that does not match, before anything is loaded."""
    path = Path(path)
    state = read_state_dict(path)
    report = FileReport(path)
    expected = {f"{name}.{key}": shape for name, module in zip(NETWORK_PREFIXES, networks) for key, shape in _meta_shapes(module).items()}
    _compare(report, state, expected, set(expected))
    report.missing = [key for key in expected if key not in state]
    if not report.ok:
        raise CheckpointError(f"{path} does not match the networks:\n{report.summary()}")
    for name, module in zip(NETWORK_PREFIXES, networks):
        own = next(module.parameters())
        _materialise(module, {key.removeprefix(name + "."): tensor for key, tensor in state.items() if key.startswith(name + ".")},
                     own.device if device is None else device, own.dtype if dtype is None else dtype)
    return networks
