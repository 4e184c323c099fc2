"""Train the tiny preset's networks on the synthetic talking figures (`training.talking_figures`).

    python -m training.train_tiny --tracks .tmp/talking/tracks.npz --out OUT --minutes 9 --device cuda

Two phases inside one wall-clock budget (the script saves its weights every minute and at the end, so a
run stopped early still leaves usable weights):

1. **VAE**: the tiny `AutoencoderKL` (`tiny_vae_config`) as an autoencoder of the frames (L1 + MSE on the
   decoded latent mean, with a little latent noise so the decoder tolerates imperfect latents). Afterwards
   its latent mean is rescaled inside the network (quant_conv ↔ post_quant_conv, which leaves decoding
   unchanged) so that latents × 0.18215 — the fixed factor the sampler uses — have unit spread.
2. **Reference UNet, denoising UNet (with its motion modules) and pose encoder** together, on 12-frame windows
   (one context window of the sampler), conditioned exactly as `EchoMimicV2.render` conditions them:
   reference latent (VAE mean × 0.18215) through the reference UNet at timestep 0, its banks projected by
   each block's attn1 (`DenoisingUNet3D.reference_kv`, here with gradients), audio tokens from
   `WhisperFeatures.tiny(seed=0)` cut per frame by `frame_windows`, pose images (official drawing) / 255
   through the pose encoder and added after conv_in; the official DDIM schedule (`official_scheduler`:
   linear betas 0.00085–0.012, zero terminal SNR, v-prediction), noise clamped at ±1.5 as the sampler's
   initial draw is. Timesteps: half uniform over the 1000, half the preset's own three (999, 666, 332), so
   the three-step sampler is trained where it samples. The loss is the MSE of v, weighted ×4 (`--mouth-weight`) on the mouth
   and ×2 on the hands. The saved weights are an exponential moving average.

Output in OUT: `tiny_demo.safetensors` (fp16, the four networks under `reference_unet.`, `denoising_unet.`,
`pose_encoder.`, `vae.`; training facts in its metadata), `loss.csv`, `loss.png`, `preview.png` (reference,
rendered frames, drawn truth of held-out clips) and `train.json`.

`--profile-steps N` trains no VAE and saves nothing: it times N UNet steps per phase (CUDA synchronised), prints
a torch.profiler table of 3 more and exits; run it first on a new machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from echomimic2.audio import FEATURE_RATE, WhisperFeatures, frame_windows, video_frame_count
from echomimic2.checkpoints import load_prefixed_networks
from echomimic2.config import VAE_SCALING_FACTOR, tiny_unet_config, tiny_vae_config
from echomimic2.networks import build_networks
from echomimic2.scheduler import official_scheduler
from echomimic2.weights_layout import NETWORK_PREFIXES
from training import talking_figures as tf

WINDOW = 12  # frames per training clip: one context window of the sampler
NOISE_CLAMP = 1.5
PRESET_STEPS = 3
MAX_ATTENTION_SEQUENCES = 65_535


# --------------------------------------------------------------------------------------------------
# Data


_TRACKS: list[np.ndarray] = []


SMALL = tf.SIZE // 2  # every third step trains at 128×128 (tests render small and fast)


def _clip_job(args: tuple[int, int, int]) -> tuple[int, tf.Clip, tuple[int, int, int, int], np.ndarray]:
    from echomimic2.pose import render_pose

    seed, track, frames = args
    figure = tf.random_figure(seed)
    clip = tf.make_clip(seed, _TRACKS[track], frames, figure)
    small = np.stack([render_pose(pose, SMALL, SMALL) for pose in clip.poses])
    return seed, clip, figure.mouth_box, small


def track_frame_counts(features: list[np.ndarray], tracks: list[np.ndarray]) -> list[int]:
    """Video frames of each track, as the job counts them (`pipeline.steps.audio_features`)."""
    return [min(round(len(t) / tf.SAMPLE_RATE * tf.FPS), video_frame_count(len(f), tf.FPS)) for f, t in zip(features, tracks)]


def audio_features(tracks: list[np.ndarray], mel_filters: np.ndarray, device: str) -> list[np.ndarray]:
    """WhisperFeatures.tiny(seed=0) states of each track, each encoded on its own as the job encodes a file."""
    import echomimic2.audio as audio

    try:
        import librosa  # noqa: F401
    except ImportError:  # the GPU machine has no librosa: the filterbank travels with the tracks
        audio._mel_filterbank = lambda: mel_filters
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the features should match the CPU's
    whisper = WhisperFeatures.tiny(seed=0, device=device)
    try:
        return [whisper(t) for t in tracks]
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def build_data(tracks_path: str, clips: int, max_frames: int, workers: int, device: str, log) -> dict:
    """Clips drawn in parallel (before CUDA starts), then whisper features and audio tokens per clip."""
    global _TRACKS
    tracks, mel_filters = tf.read_tracks(tracks_path)
    tracks = tracks[:clips]  # only the tracks some clip uses
    _TRACKS = tracks
    seconds_frames = [min(round(len(t) / tf.SAMPLE_RATE * tf.FPS), max_frames) for t in tracks]
    jobs = [(seed, seed % len(tracks), seconds_frames[seed % len(tracks)]) for seed in range(clips)]
    start = time.time()
    results = []
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(pool.imap(_clip_job, jobs, chunksize=2))
    else:
        results = [_clip_job(job) for job in jobs]
    log(f"drew {clips} clips, {sum(len(c.frames) for _, c, _, _ in results)} frames in {time.time() - start:.1f} s")
    start = time.time()
    features = audio_features(tracks, mel_filters, device)
    counts = track_frame_counts(features, tracks)
    log(f"whisper features of {len(tracks)} tracks in {time.time() - start:.1f} s")
    frames, poses, small_poses, tokens, references, mouth_boxes, offsets, lengths = [], [], [], [], [], [], [], []
    total = 0
    for seed, clip, mouth_box, small in results:
        track = seed % len(tracks)
        n = min(len(clip.frames), counts[track])
        frames.append(clip.frames[:n])
        poses.append(clip.pose_images[:n])
        small_poses.append(small[:n])
        tokens.append(frame_windows(features[track], tf.FPS, 0, n).astype(np.float16))
        references.append(clip.reference)
        mouth_boxes.append(mouth_box)
        offsets.append(total)
        lengths.append(n)
        total += n
    return dict(frames=np.concatenate(frames), poses=np.concatenate(poses), small_poses=np.concatenate(small_poses), tokens=np.concatenate(tokens),
                references=np.stack(references), mouth_boxes=np.array(mouth_boxes), offsets=np.array(offsets),
                lengths=np.array(lengths), tracks=tracks, features=features)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [-1, 1], as `sampler.encode_reference`."""
    return images.permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0


# --------------------------------------------------------------------------------------------------
# Networks


def fresh_networks(seed: int = 0):
    """The tiny preset's four networks, PyTorch's default initialisation from `seed` (pose encoder's
    conv_out included: zero-initialised it would pass no gradient to the rest of the encoder early on)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        networks = build_networks(tiny_unet_config(), tiny_vae_config())
        networks.pose_encoder.conv_out.reset_parameters()
    return networks


@torch.no_grad()
def normalise_vae_latents(vae, sample: torch.Tensor) -> float:
    """Rescale the VAE's latent mean so that mean × 0.18215 has unit standard deviation on `sample`
    (pixels in [-1, 1]); decoding of the mean is unchanged. Returns the factor applied."""
    mean = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in sample.split(64)])
    factor = 1.0 / (VAE_SCALING_FACTOR * mean.std().item())
    channels = vae.config.latent_channels
    vae.quant_conv.weight[:channels] *= factor
    vae.quant_conv.bias[:channels] *= factor
    vae.quant_conv.bias[channels:] += 2 * math.log(factor)  # logvar: the distribution scales with it
    vae.post_quant_conv.weight *= 1.0 / factor
    return factor


def reference_kv_with_grad(denoising_unet, banks: dict[str, torch.Tensor], frames: int) -> dict:
    """`DenoisingUNet3D.reference_kv` without its no_grad, one reference per batch row, repeated over
    the row's frames (the attention expands a (rows, L, C) bank as it does a (1, L, C) one)."""
    return {path: tuple(t.repeat_interleave(frames, dim=0) for t in block.attn1.project_kv(banks[path]))
            for path, block in denoising_unet.transformer_blocks().items()}


def noised_and_velocity(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """(x_t, v) of latents (B, 4, f, h, w) at per-sample timesteps t: what the scheduler's `add_noise` and
    `get_velocity` give, batched over 5-D latents."""
    a = alphas_cumprod[t].sqrt().view(-1, 1, 1, 1, 1)
    b = (1 - alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1, 1)
    return a * x0 + b * noise, a * noise - b * x0


class EMA:
    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.decay = decay
        self.shadow = {name: copy.deepcopy(module).requires_grad_(False) for name, module in modules.items()}
        self.modules = modules
        self.updates = 0
        # One fused call for all ~1,800 tensors (a Python loop of lerp_ was ~1,800 kernel launches per step).
        self._shadow = [s for name in modules for s in self.shadow[name].parameters()]
        self._params = [p for module in modules.values() for p in module.parameters()]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._shadow, self._params, 1 - decay)


def save_weights(path: Path, networks: dict[str, torch.nn.Module], metadata: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"{name}.{key}": value.detach().to("cpu", torch.float16).contiguous()
               for name in NETWORK_PREFIXES for key, value in networks[name].state_dict().items()}
    temporary = path.with_suffix(".tmp")
    save_file(tensors, str(temporary), metadata={"training": json.dumps(metadata)})
    os.replace(temporary, path)


# --------------------------------------------------------------------------------------------------
# Training


def train_vae(vae, frames: torch.Tensor, deadline: float, batch: int, lr: float, log, losses: list,
              decoder_only: bool = False) -> int:
    """The VAE as an autoencoder until `deadline`; `decoder_only`: the encoder (and so every latent the UNets
    were trained on) stays as it is, only post_quant_conv and the decoder learn."""
    trained = [vae.post_quant_conv, vae.decoder] if decoder_only else [vae]
    params = [p for module in trained for p in module.parameters()]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=frames.device.type == "cuda")
    vae.train()
    for module in trained:
        module.requires_grad_(True)
    device = frames.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    step, start = 0, time.time()
    total = deadline - start
    while time.time() < deadline:
        for group in optimiser.param_groups:  # cosine to 10 % over the phase's time
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (time.time() - start) / total))))
        x = frames[torch.randint(len(frames), (batch,), device=device)]
        x = to_pixels(tf.halve(x) if step % 3 == 2 else x)
        with autocast:
            with torch.set_grad_enabled(not decoder_only):
                mean = vae.encode(x).latent_dist.mean
            noisy = mean + 0.05 * mean.detach().std() * torch.randn_like(mean)
            decoded = vae.decode(noisy).sample
        error = decoded.float() - x
        loss = error.abs().mean() + (error ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        step += 1
        if step % 25 == 0 or step == 1:
            losses.append(("vae", step, round(time.time() - start, 1), loss.item()))
        if step % 250 == 0:
            log(f"vae step {step} loss {loss.item():.4f}")
    vae.eval().requires_grad_(False)
    return step


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    out = [vae.encode(to_pixels(images[i : i + batch])).latent_dist.mean * VAE_SCALING_FACTOR for i in range(0, len(images), batch)]
    return torch.cat(out).float()


class LazyLatents:
    """Latents (VAE mean × 0.18215) of uint8 frames (N, H, W, 3), encoded on first use in no_grad batches
    (`halved`: of the 2×2 box-filtered frames). Indexing gives what `encode_all(...)[index]` gives; on the
    CPU this saves encoding every frame of every clip before the first step."""

    def __init__(self, vae, frames: torch.Tensor, halved: bool = False, batch: int = 256):
        self.vae, self.frames, self.halved, self.batch = vae, frames, halved, batch
        side = frames.shape[1] // (2 if halved else 1) // 8
        self.latents = torch.zeros((len(frames), vae.config.latent_channels, side, side), device=frames.device)
        self.done = torch.zeros(len(frames), dtype=torch.bool)

    @property
    def shape(self) -> torch.Size:
        return self.latents.shape

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        wanted = index.flatten().cpu()
        missing = wanted[~self.done[wanted]].unique()
        if len(missing):
            images = self.frames[missing.to(self.frames.device)]
            self.latents[missing.to(self.latents.device)] = encode_all(self.vae, tf.halve(images) if self.halved else images, self.batch)
            self.done[missing] = True
        return self.latents[index]


class PhaseTimer:
    """Wall time per named phase (synchronising CUDA at each boundary when enabled; off: no cost)."""

    def __init__(self, device: torch.device, enabled: bool):
        self.sync = enabled and device.type == "cuda"
        self.enabled = enabled
        self.totals: dict[str, float] = {}
        self.last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        if not self.enabled:
            return
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - self.last
        self.last = now

    def start(self) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.last = time.perf_counter()


def train_unets(nets, data: dict, sizes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]],
                tokens: torch.Tensor, deadline: float, batch: int, lr: float, log, losses: list, save,
                profile_steps: int = 0, mouth_weight: float = 4.0) -> int:
    """The UNet phase until `deadline` (the loss weighted ×`mouth_weight` in the mouth box, ×2 on drawn hands);
    with `profile_steps` N: 3 warm-up steps, then N timed steps (per phase, per resolution, CUDA synchronised at
    each phase boundary) and a torch.profiler table of 3 more; no saving."""
    device = tokens.device
    trained = {name: getattr(nets, name) for name in ("reference_unet", "denoising_unet", "pose_encoder")}
    params = [p for module in trained.values() for p in module.parameters()]
    for module in trained.values():
        module.train().requires_grad_(True)
    # fused: one kernel for all ~1,800 tensors (the per-tensor AdamW was 38 ms of GPU time per step on an H200)
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=device.type == "cuda")
    ema = EMA(trained, decay=0.999)
    scheduler = official_scheduler()
    alphas = scheduler.alphas_cumprod.to(device)
    preset = official_scheduler()
    preset.set_timesteps(PRESET_STEPS)
    preset_timesteps = preset.timesteps.to(device)
    lengths = torch.as_tensor(data["lengths"], device=device)
    offsets = torch.as_tensor(data["offsets"], device=device)
    usable = torch.nonzero(lengths >= WINDOW).flatten()
    boxes = torch.as_tensor(data["mouth_boxes"], device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    step, start, last_save = 0, time.time(), time.time()
    total = max(deadline - start, 1.0)
    warmup = 3
    timers = {size: PhaseTimer(device, profile_steps > 0) for size in (0, 1)}
    counted = {0: 0, 1: 0}
    profiler = None
    while time.time() < deadline or profile_steps:
        if profile_steps and step == warmup + profile_steps:
            report_profile(timers, counted, batch, log)
            from torch.profiler import ProfilerActivity, profile
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            profiler = profile(activities=activities, record_shapes=True)
            profiler.__enter__()
        if profile_steps and step == warmup + profile_steps + 3:
            if device.type == "cuda":
                torch.cuda.synchronize()
            profiler.__exit__(None, None, None)
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            log("profile of 3 steps (2 full size, 1 small):\n" + profiler.key_averages(group_by_input_shape=True).table(
                sort_by=key, row_limit=25, max_name_column_width=60, max_shapes_column_width=80))
            for module in trained.values():
                module.eval().requires_grad_(False)
            return step
        elapsed = time.time() - start
        size = 1 if step % 3 == 2 else 0
        timer = timers[size]
        timer.start()
        latents, reference_latents, poses, cell = sizes[size]  # cell: pixels per latent cell of the mouth box
        h, w = latents.shape[-2:]
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        for group in optimiser.param_groups:  # warm-up, then cosine to 10 % over the phase's time
            group["lr"] = lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / total))))
        clip = usable[torch.randint(len(usable), (batch,), device=device)]
        first = (torch.rand(batch, device=device) * (lengths[clip] - WINDOW + 1)).long()
        index = (offsets[clip] + first)[:, None] + torch.arange(WINDOW, device=device)[None, :]  # (B, f)
        x0 = latents[index].permute(0, 2, 1, 3, 4)  # (B, 4, f, h, w)
        uniform = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        chosen = preset_timesteps[torch.randint(PRESET_STEPS, (batch,), device=device)]
        t = torch.where(torch.rand(batch, device=device) < 0.5, uniform, chosen)
        noise = torch.randn_like(x0).clamp_(-NOISE_CLAMP, NOISE_CLAMP)
        x_t, target = noised_and_velocity(alphas, x0, noise, t)
        pose_pixels = poses[index.flatten()]  # (B·f, H, W, 3) uint8
        # weights: ×mouth_weight in the mouth box (latent cells), ×2 where a hand is drawn
        box = boxes[clip] // cell
        mouth = ((rows >= box[:, 1, None, None] - 1) & (rows <= box[:, 3, None, None] + 1)
                 & (cols >= box[:, 0, None, None] - 1) & (cols <= box[:, 2, None, None] + 1)).float()  # (B, h, w)
        hands = F.max_pool2d(pose_pixels.amax(dim=3, keepdim=True).permute(0, 3, 1, 2).float(), 8) > 0  # (B·f, 1, h, w)
        hands = F.max_pool2d(hands.float(), 3, stride=1, padding=1).view(batch, WINDOW, h, w).transpose(0, 1)
        weight = (1 + (mouth_weight - 1) * mouth[None] + hands).transpose(0, 1).unsqueeze(1)  # (B, 1, f, h, w)
        audio = tokens[index]
        timer("data (+ lazy encoding)" if isinstance(latents, LazyLatents) else "data")
        with autocast:
            banks = nets.reference_unet(reference_latents[clip])
            kv = reference_kv_with_grad(nets.denoising_unet, banks, WINDOW)
            timer("reference unet fwd")
            pose_features = nets.pose_encoder(pose_pixels.permute(0, 3, 1, 2).float() / 255.0)
            pose_features = pose_features.view(batch, WINDOW, *pose_features.shape[1:]).transpose(1, 2)
            timer("pose encoder fwd")
            v = nets.denoising_unet(x_t, t, audio, pose_features, kv)
            timer("denoising unet fwd")
        loss = (weight * (v.float() - target) ** 2).mean() / weight.mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        timer("backward (all)")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        timer("clip + AdamW")
        ema.update()
        timer("EMA")
        if step >= warmup:
            counted[size] += 1
        else:
            timer.totals.clear()
        step += 1
        if profile_steps:
            continue
        if step % 10 == 0 or step == 1:
            losses.append(("unet", step, round(time.time() - start, 1), loss.item()))
        if step % 100 == 0:
            log(f"unet step {step} loss {loss.item():.4f} ({(time.time() - start) / step:.3f} s/step)")
        if time.time() - last_save > 60:
            save(ema.shadow, step)
            last_save = time.time()
    for module in trained.values():
        module.eval().requires_grad_(False)
    save(ema.shadow, step)
    return step


def report_profile(timers: dict, counted: dict, batch: int, log) -> None:
    for size, timer in timers.items():
        n = counted[size]
        if not n:
            continue
        total = sum(timer.totals.values()) / n
        phases = ", ".join(f"{name} {seconds / n:.3f}" for name, seconds in timer.totals.items())
        log(f"profile, {'small (128²)' if size else 'full (256²)'} steps: {n} timed, {total:.3f} s/step "
            f"(batch {batch} × {WINDOW} frames): {phases}")


def plot_losses(losses: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for axis, phase, title in zip(axes, ("vae", "unet"), ("VAE (L1 + MSE, pixels)", "UNets + pose encoder (weighted v MSE)")):
        points = [(step, loss) for p, step, _, loss in losses if p == phase]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, lw=0.6, alpha=0.4, color="tab:blue")
            if len(values) > 15:  # centred 15-point mean
                axis.plot(steps[7 : len(steps) - 7], np.convolve(values, np.ones(15) / 15, mode="valid"), lw=1.4, color="tab:blue")
            axis.set_yscale("log")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


@torch.no_grad()
def evaluate_networks(nets, device: str) -> dict:
    """`training.evaluate.report` of the trained networks: likeness, mouth and hands on held-out figures."""
    from echomimic2.model import EchoMimicV2
    from echomimic2.presets import PRESETS
    from training.evaluate import report

    return report(EchoMimicV2(nets, PRESETS["tiny"], "training"), WhisperFeatures.tiny(seed=0, device=device))


@torch.no_grad()
def preview(nets, data: dict, path: Path, clips: list[int], device: str) -> None:
    """For a few clips: reference | rendered frames 0, 6, 12, 18 | drawn truth of those frames."""
    from PIL import Image

    from echomimic2.model import EchoMimicV2
    from echomimic2.presets import PRESETS

    model = EchoMimicV2(nets, PRESETS["tiny"], "preview")
    rows = []
    for clip in clips:
        n = min(24, int(data["lengths"][clip]))
        begin = int(data["offsets"][clip])
        frames = model.render(data["references"][clip], data["tokens"][begin : begin + n].astype(np.float32),
                              data["poses"][begin : begin + n], seed=0, first_frame=0)
        picks = list(range(0, n, 6))[:4]
        rows.append(np.concatenate([data["references"][clip], *frames[picks], *data["frames"][begin + np.array(picks)]], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def unet_phase(args, nets, data: dict, frames: torch.Tensor, references: torch.Tensor, facts: dict, out: Path,
               deadline: float, started: float, log, losses: list) -> None:
    """Encode the frames with the (trained or --init) VAE, then `train_unets` until `deadline`, saving as it goes."""
    device = frames.device
    encoding = time.time()
    reference_latents = encode_all(nets.vae, references)
    small_reference_latents = encode_all(nets.vae, tf.halve(references))
    lazy = args.lazy_latents == "yes" or (args.lazy_latents == "auto" and device.type == "cpu")
    if lazy:
        latents, small_latents = LazyLatents(nets.vae, frames), LazyLatents(nets.vae, frames, halved=True)
        spread = f"reference latents std {reference_latents.std().item():.3f} mean {reference_latents.mean().item():.3f}"
    else:
        latents = encode_all(nets.vae, frames)
        small_latents = encode_all(nets.vae, tf.halve(frames))
        spread = f"latents std {latents.std().item():.3f} mean {latents.mean().item():.3f}"
    log(f"vae: {facts['vae_steps']} steps, loss {facts['vae_loss']}; {spread} (factor {facts['latent_factor']:.3f}); "
        f"encoded {'references (frames lazily)' if lazy else 'all frames'} in {time.time() - encoding:.1f} s")
    poses = torch.from_numpy(data["poses"]).to(device)
    small_poses = torch.from_numpy(data["small_poses"]).to(device)
    tokens = torch.from_numpy(data["tokens"]).to(device)

    def save(shadow: dict, step: int) -> None:
        networks = {**shadow, "vae": nets.vae}
        save_weights(out / "tiny_demo.safetensors", networks, {**facts, "unet_steps": step,
                     "seconds": round(time.time() - started, 1)})

    sizes = [(latents, reference_latents, poses, 8), (small_latents, small_reference_latents, small_poses, 16)]
    if args.profile_steps:
        train_unets(nets, data, sizes, tokens, deadline, args.batch, args.lr, log, losses, save, args.profile_steps)
        return
    facts["unet_steps"] = train_unets(nets, data, sizes, tokens, deadline, args.batch,
                                      args.lr, log, losses, save, mouth_weight=args.mouth_weight)
    unet_losses = [loss for p, _, _, loss in losses if p == "unet"]
    facts["unet_loss"] = float(np.mean(unet_losses[-20:])) if unet_losses else None
    facts["seconds"] = round(time.time() - started, 1)
    log(f"unets: {facts['unet_steps']} steps, loss {facts['unet_loss']}")
    del latents, poses, tokens, sizes, small_latents, small_poses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", default=".tmp/talking/tracks.npz", help="speech tracks (python -m training.talking_figures)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of the whole run")
    parser.add_argument("--vae-minutes", type=float, default=2.5)
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--max-frames", type=int, default=240, help="frames per clip at most")
    parser.add_argument("--batch", type=int, default=24, help="12-frame windows per UNet step")
    parser.add_argument("--vae-batch", type=int, default=48)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--mouth-weight", type=float, default=4.0, help="loss weight in the mouth box (1 elsewhere)")
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--init", help="start from this tiny_demo.safetensors (e.g. an earlier run) instead of fresh weights")
    parser.add_argument("--vae-init", help="then take the VAE from this tiny_demo.safetensors (e.g. a --vae-decoder-only run)")
    parser.add_argument("--vae-decoder-only", action="store_true",
                        help="train only the VAE's decoder (needs --init; its latents, and so its UNets, stay valid)")
    parser.add_argument("--no-unets", action="store_true", help="train the VAE only; the UNets stay as --init has them")
    parser.add_argument("--reserve", type=float, default=45.0, help="seconds kept for saving, the preview and the held-out evaluation")
    parser.add_argument("--profile-steps", type=int, default=0, metavar="N",
                        help="no VAE training: time N UNet steps per phase (after 3 warm-up steps), print a "
                             "torch.profiler table of 3 more, and exit without saving")
    parser.add_argument("--lazy-latents", choices=("auto", "yes", "no"), default="auto",
                        help="encode frames to latents on first use (auto: on the CPU)")
    args = parser.parse_args(argv)
    if args.vae_decoder_only and not args.init:
        parser.error("--vae-decoder-only fine-tunes an existing VAE: give --init")
    if args.no_unets and args.vae_minutes <= 0:
        parser.error("--no-unets trains the VAE alone: give --vae-minutes > 0")
    sequences = args.batch * (tf.SIZE // 8) ** 2  # the motion modules attend over frames, one sequence per latent cell
    if sequences > MAX_ATTENTION_SEQUENCES:
        parser.error(f"--batch {args.batch} gives the motion modules {sequences:,} attention sequences; at 65,536 (batch 64) "
                     f"cuDNN's attention backward failed on an H200 (CUDA grids take ≤ {MAX_ATTENTION_SEQUENCES:,} blocks "
                     f"per axis): use --batch ≤ {MAX_ATTENTION_SEQUENCES // (tf.SIZE // 8) ** 2}")
    if args.profile_steps:
        args.vae_minutes = 0.0
    started = time.time()
    deadline = started + 60 * args.minutes - args.reserve
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "train.log").open("a")

    def log(message: str) -> None:
        line = f"[{time.time() - started:6.1f} s] {message}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    torch.manual_seed(0)
    np.random.seed(0)
    data = build_data(args.tracks, args.clips, args.max_frames, args.workers, args.device, log)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    held_out = [c for c in (0, 1, 2) if c < args.clips]  # previewed clips (also trained on: the preview shows fit, the tests show generalisation)
    frames = torch.from_numpy(data["frames"]).to(device)
    references = torch.from_numpy(data["references"]).to(device)
    log(f"data: {len(frames)} frames of {len(data['lengths'])} clips on {device}")
    nets = fresh_networks(0)
    if args.init:
        load_prefixed_networks(nets, args.init)
        log(f"networks initialised from {args.init}")
    if args.vae_init:
        nets.vae.load_state_dict(load_prefixed_networks(fresh_networks(0), args.vae_init).vae.state_dict())
        log(f"VAE taken from {args.vae_init}")
    for module in nets:
        module.to(device)
    losses: list = []
    facts = dict(device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", clips=args.clips,
                 frames=int(len(frames)), tracks=len(data["tracks"]), window=WINDOW, batch=args.batch,
                 vae_batch=args.vae_batch, lr=args.lr, mouth_weight=args.mouth_weight, vae_lr=args.vae_lr, fps=tf.FPS,
                 whisper="WhisperFeatures.tiny(seed=0)", feature_rate=FEATURE_RATE)

    facts.update(init=args.init, vae_init=args.vae_init, vae_decoder_only=args.vae_decoder_only)
    if args.vae_minutes > 0:
        vae_deadline = deadline if args.no_unets else min(deadline, time.time() + 60 * args.vae_minutes)
        facts["vae_steps"] = train_vae(nets.vae, torch.cat([frames, references]), vae_deadline, args.vae_batch, args.vae_lr, log,
                                       losses, decoder_only=args.vae_decoder_only)
        facts["vae_loss"] = float(np.mean([loss for p, _, _, loss in losses[-8:] if p == "vae"]))
        facts["latent_factor"] = 1.0 if args.vae_decoder_only else normalise_vae_latents(
            nets.vae, to_pixels(frames[torch.randperm(len(frames), device=device)[:512]]))
        save_weights(out / "tiny_demo.safetensors", {name: getattr(nets, name) for name in NETWORK_PREFIXES},
                     {**facts, "unet_steps": 0})  # a failure in the UNet phase keeps the trained VAE
    else:  # the VAE of --init, already normalised
        facts.update(vae_steps=0, vae_loss=None, latent_factor=1.0)
    if args.no_unets:  # the weights were saved after the VAE phase
        facts.update(unet_steps=0, unet_loss=None)
        log(f"vae: {facts['vae_steps']} steps, loss {facts['vae_loss']}; no UNet phase")
    else:
        unet_phase(args, nets, data, frames, references, facts, out, deadline, started, log, losses)
        if args.profile_steps:
            return
    del frames
    load_prefixed_networks(nets, out / "tiny_demo.safetensors")  # the saved weights are the EMA: preview those
    with (out / "loss.csv").open("w") as handle:
        handle.write("phase,step,seconds,loss\n")
        handle.writelines(f"{p},{s},{t},{loss:.6f}\n" for p, s, t, loss in losses)
    plot_losses(losses, out / "loss.png")
    preview(nets, data, out / "preview.png", held_out, args.device)
    facts["evaluation"] = evaluate_networks(nets, args.device)
    (out / "train.json").write_text(json.dumps(facts, indent=2) + "\n")
    log(f"preview written; held-out figures (training.evaluate): {json.dumps(facts['evaluation'])}; "
        f"done in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
