"""Render one segment of a clip: initial noise, context windows, CFG, DDIM steps, batched VAE decode.

Two window schedules exist (`echomimic2.windows`, torch-free so that `plan` can count them):

* **segment** (default): frames [0, n) of the segment are denoised in 12-frame windows overlapping by 3
  (stride 9) *without* wrap-around, so a segment never mixes its last frames into its first. The
  official per-step rotation (+3 frames per step) is kept by shifting the window grid: at step s the
  grid starts at offset o = (3·s) mod 9, i.e. candidate starts o−9, o, o+9, … (while < n). Each start
  is clamped into [0, n−12], so every window holds exactly 12 consecutive frames inside the segment;
  duplicates produced by clamping are dropped. Consecutive starts differ by ≤ 9 < 12, the first is 0
  and the last is n−12, so every frame is covered at every step. A segment of n ≤ 12 frames is one
  window [0, n) at every step.
* **reference-compatible**: the official schedule over the whole clip (spec §10.2.5–6): windows start at
  0, 9, 18, … while start < n, each holds 12 indices mod n (the last wraps round), and at step s every
  index is shifted by 3·s mod n. For n ≤ 12 one window [0..n−1], shifted (i.e. rotated) likewise.

Predictions of overlapping windows are averaged (accumulator / per-frame counter) with and without
CFG, as the official acc pipeline does; a frame takes its DDIM step as soon as its average is final,
so the accumulator is a few windows long instead of the whole segment, and a UNet call may hold the
last windows of one step and the first of the next (`denoising_calls`). With CFG the batch is
[uncond windows…, cond windows…]; the unconditional rows get zero audio, zero pose features and no
reference attention.
"""
from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import VAE_SCALING_FACTOR
from .scheduler import official_scheduler
from .windows import CONTEXT_FRAMES, official_windows, segment_windows

NOISE_CLAMP = 1.5  # spec §10.2.4: the official pipeline clamps its initial Gaussian draw
LATENT_CHANNELS = 4
VAE_DOWNSCALE = 8
# (UNet rows per call, frames per VAE decode call) by device type; a window is one row, two with CFG.
# On a GPU two of each keep peak memory within the 8 GiB goal at 768² and get almost all of the batching gain;
# the CPU has memory to spare.
DEFAULT_BATCHES = {"cuda": (2, 2), "cpu": (4, 8)}


@dataclass(frozen=True)
class RenderProgress:
    """Where one segment's render stands: `render_segment` hands one to its `on_progress` after every UNet call
    and every decoded batch (on a GPU when the work is queued, which runs at most a call ahead of the GPU)."""

    calls_done: int  # UNet calls made, of `calls` (a call holds a few context windows, maybe of two steps)
    calls: int
    steps_done: int  # denoising steps that every frame has taken, of `steps`
    steps: int
    frames_decoded: int  # of `frames`
    frames: int
    decode_share: float  # the VAE decode's part of the segment's work (spec FLOPs, `echomimic2.flops`)

    @property
    def fraction(self) -> float:
        """Work done, 0..1: UNet calls and decoded frames weighed by their FLOPs."""
        denoised = self.calls_done / self.calls if self.calls else 1.0
        decoded = self.frames_decoded / self.frames if self.frames else 1.0
        return (1.0 - self.decode_share) * denoised + self.decode_share * decoded


def decode_share(size: int, frames: int, steps: int, guidance: float) -> float:
    """The decode's share of a segment's denoise + decode FLOPs (spec §12), for `RenderProgress.fraction`."""
    from .flops import spec_flops

    counts = spec_flops(size, frames, steps, guidance)
    return counts["decode"] / (counts["decode"] + counts["denoise"])


def default_batches(device: torch.device, guided: bool = False) -> tuple[int, int]:
    """(windows_per_batch, decode_batch) that `render_segment` uses on `device` unless told otherwise."""
    rows, decode = DEFAULT_BATCHES.get(device.type, DEFAULT_BATCHES["cpu"])
    return max(1, rows // 2) if guided else rows, decode


# --------------------------------------------------------------------------------------------------
# Initial noise


def frame_noise_seed(seed: int, frame: int) -> int:
    """A 63-bit generator seed that depends on (seed, global frame index) only, stable across runs."""
    digest = hashlib.sha256(f"echomimic2-noise:{seed}:{frame}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def frame_noise(seed: int, frame: int, latent_height: int, latent_width: int) -> torch.Tensor:
    """Clamped standard-normal noise (4, h, w), float32 on the CPU, for one global frame."""
    generator = torch.Generator(device="cpu").manual_seed(frame_noise_seed(seed, frame))
    noise = torch.randn((LATENT_CHANNELS, latent_height, latent_width), generator=generator, dtype=torch.float32)
    return noise.clamp_(-NOISE_CLAMP, NOISE_CLAMP)


def segment_noise(seed: int, first_frame: int, frames: int, latent_height: int, latent_width: int) -> torch.Tensor:
    """Initial latents (1, 4, n, h, w) of global frames [first_frame, first_frame + n), float32 CPU."""
    per_frame = [frame_noise(seed, first_frame + i, latent_height, latent_width) for i in range(frames)]
    return torch.stack(per_frame, dim=1).unsqueeze(0)


def official_noise(seed: int, frames: int, latent_height: int, latent_width: int, dtype: torch.dtype) -> torch.Tensor:
    """The official whole-clip draw (spec §10.2.4): one CPU randn after seeding, in the model dtype, clamped."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((1, LATENT_CHANNELS, frames, latent_height, latent_width), generator=generator, dtype=dtype)
    return noise.clamp(-NOISE_CLAMP, NOISE_CLAMP).float()


# --------------------------------------------------------------------------------------------------
# Context windows


# --------------------------------------------------------------------------------------------------
# VAE and pose helpers


@torch.no_grad()
def encode_reference(vae, reference_image: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (H, W, 3) → scaled VAE latent mean (1, 4, H/8, W/8), as the official pipeline does."""
    pixels = torch.from_numpy(np.ascontiguousarray(reference_image)).to(device).permute(2, 0, 1).unsqueeze(0)
    pixels = (pixels.float() / 255.0 * 2.0 - 1.0).to(dtype)
    return vae.encode(pixels).latent_dist.mean * VAE_SCALING_FACTOR


def device_indices(values: Sequence, device: torch.device) -> torch.Tensor:
    """A long tensor of `values` on `device`, queued without waiting for the GPU.

    `torch.tensor(values, device="cuda")` (and indexing a CUDA tensor with a Python list) copies from pageable
    memory and then synchronises the stream, so the host could not launch the next UNet call until the GPU
    had finished the previous one; a page-locked copy is queued on the stream like any kernel.
    """
    host = torch.tensor(values, dtype=torch.long)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host


def host_pose_images(pose_images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (n, H, W, 3) → a host tensor, page-locked when the device is a GPU so window uploads overlap compute."""
    images = torch.from_numpy(np.ascontiguousarray(pose_images))
    return images.pin_memory() if device.type == "cuda" else images


@torch.no_grad()
def encode_window_poses(pose_encoder, pose_images: torch.Tensor, group: Sequence[Sequence[int]], dtype: torch.dtype) -> torch.Tensor:
    """Pose features of a batch of windows, (k, C0, f, h, w), from host uint8 pose images (n, H, W, 3).

    Encoded per window batch (each distinct frame once) rather than for the whole segment, so
    memory does not grow with the segment's length; the encoder is ~0.1% of the denoiser's work.
    """
    device = next(pose_encoder.parameters()).device
    frames = sorted({index for window in group for index in window})
    if frames[-1] - frames[0] + 1 == len(frames):  # consecutive: upload a view, no host gather
        images = pose_images[frames[0] : frames[-1] + 1]
    else:
        images = pose_images[torch.tensor(frames)]
    images = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
    features = pose_encoder((images.float() / 255.0).to(dtype))  # (distinct frames, C0, h, w)
    position = {index: slot for slot, index in enumerate(frames)}
    gather = device_indices([[position[index] for index in window] for window in group], device)
    return features[gather].permute(0, 2, 1, 3, 4)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, dtype: torch.dtype, batch: int,
                   on_frames: Callable[[np.ndarray], None] | None = None,
                   on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Latents (1, 4, n, h, w) → uint8 frames (n, H, W, 3), `batch` frames per VAE call.

    Pixel conversion follows the official code: (x/2 + 0.5).clamp(0, 1) in the model dtype, then
    float32 × 255 truncated to uint8. `on_frames`, when given, receives the frames in order, in chunks, each as
    soon as it is on the host: on a GPU while the later batches are still being decoded (so the caller can
    write them meanwhile). A chunk is a view of the returned array. `on_batch`, when given, receives the count of
    frames decoded so far after each VAE call (for progress; it waits for nothing).
    """
    per_frame = latents[0].permute(1, 0, 2, 3)  # (n, 4, h, w)
    frame_count = per_frame.shape[0]
    # Every call gets exactly `batch` frames (a short last batch is padded with copies of its last frame): a
    # compiled decoder (static shapes) would otherwise compile again inside the first segment whose length
    # leaves a remainder, e.g. the job's balanced plan cuts 312 frames into 2 × 159. The decoder treats frames
    # independently, so the padding changes no frame.
    if frame_count % batch:
        padding = per_frame[-1:].expand(batch - frame_count % batch, *per_frame.shape[1:])
        per_frame = torch.cat([per_frame, padding])
    # Each batch's frames are queued into one page-locked host buffer and the host never waits for one batch:
    # a `.cpu()` per batch would leave the GPU idle while the next decode call is launched. Finished batches
    # are found by their events, without waiting.
    on_gpu = latents.device.type == "cuda"
    frames = None
    pending: list[tuple[int, int, torch.cuda.Event | None]] = []  # (first frame, count, copied) not yet handed over

    def hand_over(wait: bool) -> None:
        while pending and (wait or pending[0][2] is None or pending[0][2].query()):
            begin, count, copied = pending.pop(0)
            if copied is not None:
                copied.synchronize()
            on_frames(frames[begin : begin + count].numpy())

    for begin in range(0, per_frame.shape[0], batch):
        z = (per_frame[begin : begin + batch] / VAE_SCALING_FACTOR).to(dtype)
        images = (vae.decode(z).sample / 2 + 0.5).clamp(0, 1)
        images = (images.float() * 255).to(torch.uint8).permute(0, 2, 3, 1)
        images = images[: frame_count - begin]
        if frames is None:
            frames = torch.empty((frame_count, *images.shape[1:]), dtype=torch.uint8, pin_memory=on_gpu)
        frames[begin : begin + len(images)].copy_(images, non_blocking=on_gpu)
        if on_frames is not None:
            copied = None
            if on_gpu:
                copied = torch.cuda.Event()
                copied.record()
            pending.append((begin, len(images), copied))
            hand_over(wait=False)
        if on_batch is not None:
            on_batch(begin + len(images))
    if on_gpu:
        torch.cuda.current_stream(latents.device).synchronize()
    if on_frames is not None:
        hand_over(wait=True)
    return frames.numpy()


# --------------------------------------------------------------------------------------------------
# Denoising


@dataclass(frozen=True)
class StepFrames:
    """Frames of one denoising step and the accumulator slots that hold their running averages."""

    step: int
    frames: tuple[int, ...]
    slots: tuple[int, ...]


@dataclass(frozen=True)
class DenoisingCall:
    windows: tuple[StepFrames, ...]  # the context windows this UNet call denoises
    updates: tuple[StepFrames, ...]  # frames whose average for `step` is final after it: they take that DDIM update


def denoising_calls(step_windows: Sequence[Sequence[Sequence[int]]], windows_per_call: int) -> tuple[list[DenoisingCall], int]:
    """The UNet calls of a whole DDIM loop, and how many accumulator slots they need.

    Calls are filled across step boundaries: a window of step s+1 may share a call with the last windows of
    step s as soon as every frame it reads has taken its step-s update. So every call but the very last is
    full (one batch shape for the compiled UNet instead of two, and no half-empty calls), while each window
    still sees exactly the latents of the step-by-step loop, and each frame sums its windows in the same order.
    Windows of one step run in their order; among ready windows the oldest step goes first, which keeps few
    frames in progress. A frame holds a slot (from a free list) from its first window of a step to its update,
    so the accumulator is a few windows long whatever the segment's length."""
    steps = len(step_windows)
    frames = sorted({f for windows in step_windows for window in windows for f in window})
    for step, windows in enumerate(step_windows):
        if {f for window in windows for f in window} != set(frames):
            raise ValueError(f"step {step}'s windows do not cover every frame: a frame would never be updated")
    unread = [Counter(f for window in windows for f in window) for windows in step_windows]  # per step, per frame
    steps_done = dict.fromkeys(frames, 0)
    next_window = [0] * steps
    slot_of: dict[int, int] = {}
    free_slots: list[int] = []
    slot_count = 0
    calls: list[DenoisingCall] = []
    total = sum(len(windows) for windows in step_windows)
    while sum(next_window) < total:
        chosen: list[tuple[int, Sequence[int]]] = []
        for step in range(steps):
            windows = step_windows[step]
            while len(chosen) < windows_per_call and next_window[step] < len(windows):
                window = windows[next_window[step]]
                if any(steps_done[f] != step for f in window):
                    break
                chosen.append((step, window))
                next_window[step] += 1
        if not chosen:  # cannot happen while every step covers every frame (checked above)
            raise RuntimeError("no context window is ready: the denoising order is stuck")
        rows = []
        for step, window in chosen:
            for f in window:
                if f not in slot_of:
                    if free_slots:
                        slot_of[f] = heapq.heappop(free_slots)
                    else:
                        slot_of[f], slot_count = slot_count, slot_count + 1
            rows.append(StepFrames(step, tuple(window), tuple(slot_of[f] for f in window)))
        completed: dict[int, list[int]] = {}
        for step, window in chosen:
            for f in window:
                unread[step][f] -= 1
                if unread[step][f] == 0:
                    steps_done[f] = step + 1
                    completed.setdefault(step, []).append(f)
        updates = []
        for step, done in sorted(completed.items()):
            done.sort()
            updates.append(StepFrames(step, tuple(done), tuple(slot_of[f] for f in done)))
            for f in done:
                heapq.heappush(free_slots, slot_of.pop(f))
        calls.append(DenoisingCall(tuple(rows), tuple(updates)))
    return calls, slot_count


@torch.no_grad()
def denoise(
    denoising_unet,
    reference_kv,
    latents: torch.Tensor,
    frame_audio: torch.Tensor,
    pose_encoder,
    pose_images: torch.Tensor,
    steps: int,
    guidance: float,
    reference_compatible: bool,
    windows_per_batch: int,
    on_call: Callable[[int, int, int], None] | None = None,
) -> torch.Tensor:
    """Run the DDIM loop on float32 latents (1, 4, n, h, w), updated in place and returned; audio
    (n, 50, 384) is in the model dtype, pose images are host uint8 (n, H, W, 3).

    The UNet calls follow `denoising_calls` (filled across step boundaries). Memory does not grow with n
    beyond the latents themselves: the overlap average of a frame is accumulated in one of a few slots,
    and the frame takes its DDIM step (diffusers' own `step`, on a few frames at a time) as soon as no
    later window of the step reads it. Each frame sees exactly the operations of the step-by-step
    whole-tensor update (sum over its windows in order, / count, CFG, step).
    `on_call(calls_done, calls, steps_done)`, when given, runs after each UNet call's work is queued.
    """
    dtype = frame_audio.dtype
    frames = latents.shape[2]
    use_cfg = guidance > 1.0
    branches = 2 if use_cfg else 1
    scheduler = official_scheduler()
    scheduler.set_timesteps(steps)  # on the host: its own device copy is a pageable, synchronising one
    # The scheduler takes each step's value as an int (indexing its CPU alphas with a device tensor would
    # synchronise with the GPU); the UNet a device tensor of one value per row.
    step_values = scheduler.timesteps.tolist()
    schedule = official_windows if reference_compatible else segment_windows
    calls, slot_count = denoising_calls([schedule(frames, step) for step in range(len(step_values))], windows_per_batch)
    accumulated = torch.zeros((branches, LATENT_CHANNELS, slot_count, *latents.shape[3:]), device=latents.device, dtype=torch.float32)
    counter = torch.zeros((1, 1, slot_count, 1, 1), device=latents.device, dtype=torch.float32)
    frames_updated = [0] * len(step_values)  # per step: frames that took it (progress only)

    for call_number, call in enumerate(calls, 1):
        group = [row.frames for row in call.windows]
        index = device_indices(group, latents.device)  # (k, f)
        sample = latents[0][:, index].permute(1, 0, 2, 3, 4).to(dtype)  # (k, 4, f, h, w)
        audio = frame_audio[index]  # (k, f, 50, 384)
        pose = encode_window_poses(pose_encoder, pose_images, group, dtype)  # (k, C0, f, h, w)
        timesteps = [step_values[row.step] for row in call.windows]
        if use_cfg:
            sample = torch.cat([sample, sample])
            audio = torch.cat([torch.zeros_like(audio), audio])
            pose = torch.cat([torch.zeros_like(pose), pose])
            timesteps = timesteps + timesteps
        v = denoising_unet(sample, device_indices(timesteps, latents.device), audio, pose, reference_kv,
                           uncond_batch=len(group) if use_cfg else 0)
        v = v.float().unflatten(0, (branches, len(group)))  # (branches, k, 4, f, h, w)
        for row_number, row in enumerate(call.windows):
            slots = device_indices(row.slots, latents.device)
            accumulated[:, :, slots] += v[:, row_number]
            counter[:, :, slots] += 1
        del sample, audio, pose, v
        for update in call.updates:
            for begin in range(0, len(update.frames), CONTEXT_FRAMES):
                slots = device_indices(update.slots[begin : begin + CONTEXT_FRAMES], latents.device)
                chunk = device_indices(update.frames[begin : begin + CONTEXT_FRAMES], latents.device)
                v = accumulated[:, :, slots] / counter[:, :, slots]
                if use_cfg:
                    v_uncond, v_cond = v.chunk(2)
                    v = v_uncond + guidance * (v_cond - v_uncond)
                latents[:, :, chunk] = scheduler.step(v, step_values[update.step], latents[:, :, chunk]).prev_sample
                # index_fill_ passes the 0 to the kernel; `x[:, :, slots] = 0` first copies it to the GPU from
                # pageable memory, which synchronises.
                accumulated.index_fill_(2, slots, 0)
                counter.index_fill_(2, slots, 0)
        if on_call is not None:
            for update in call.updates:
                frames_updated[update.step] += len(update.frames)
            on_call(call_number, len(calls), sum(count == frames for count in frames_updated))
    return latents


@torch.no_grad()
def render_segment(
    networks,
    reference_image: np.ndarray,
    frame_audio: np.ndarray,
    pose_images: np.ndarray,
    seed: int,
    first_frame: int,
    steps: int,
    guidance: float,
    *,
    reference_compatible: bool = False,
    initial_latents: torch.Tensor | None = None,
    windows_per_batch: int | None = None,
    decode_batch: int | None = None,
    on_frames: Callable[[np.ndarray], None] | None = None,
    on_progress: Callable[[RenderProgress], None] | None = None,
) -> np.ndarray:
    """Frames [first_frame, first_frame + n) → uint8 (n, H, W, 3). Inputs are assumed validated.
    `on_frames` receives them in order as they are decoded (`decode_latents`); `on_progress` a `RenderProgress`
    after every UNet call and every decoded batch (it reads counters only: the frames do not depend on it).

    `networks` has `reference_unet`, `denoising_unet`, `pose_encoder` and `vae` on one device and
    dtype. `initial_latents` (1, 4, n, H/8, W/8) replaces the drawn noise (for comparison runs).
    Batch sizes left as None take the device's `default_batches`.
    Nothing here sees the rest of the clip; of the GPU memory only the latents (16 B per latent pixel
    and frame) grow with n.
    """
    parameter = next(networks.denoising_unet.parameters())
    device, dtype = parameter.device, parameter.dtype
    default_windows, default_decode = default_batches(device, guided=guidance > 1.0)
    windows_per_batch = default_windows if windows_per_batch is None else windows_per_batch
    decode_batch = default_decode if decode_batch is None else decode_batch
    frames = len(frame_audio)
    latent_height, latent_width = reference_image.shape[0] // VAE_DOWNSCALE, reference_image.shape[1] // VAE_DOWNSCALE

    if initial_latents is not None:  # copied: the DDIM loop updates its latents in place
        latents = initial_latents.to(device=device, dtype=torch.float32, copy=True)
    elif reference_compatible:
        latents = official_noise(seed, frames, latent_height, latent_width, dtype).to(device)
    else:
        latents = segment_noise(seed, first_frame, frames, latent_height, latent_width).to(device)

    reference_latent = encode_reference(networks.vae, reference_image, device, dtype)
    reference_kv = networks.denoising_unet.reference_kv(networks.reference_unet(reference_latent))
    poses = host_pose_images(pose_images, device)
    audio = torch.from_numpy(np.ascontiguousarray(frame_audio)).to(device=device, dtype=dtype)

    on_call = on_batch = None
    if on_progress is not None:
        share = decode_share(round((reference_image.shape[0] * reference_image.shape[1]) ** 0.5), frames, steps, guidance)
        state = dict(calls_done=0, calls=1, steps_done=0, steps=steps, frames_decoded=0, frames=frames, decode_share=share)

        def on_call(calls_done: int, calls: int, steps_done: int) -> None:
            state.update(calls_done=calls_done, calls=calls, steps_done=steps_done)
            on_progress(RenderProgress(**state))

        def on_batch(frames_decoded: int) -> None:
            state.update(frames_decoded=frames_decoded)
            on_progress(RenderProgress(**state))

    latents = denoise(
        networks.denoising_unet, reference_kv, latents, audio, networks.pose_encoder, poses,
        steps, guidance, reference_compatible, windows_per_batch, on_call=on_call,
    )
    del reference_kv, audio
    return decode_latents(networks.vae, latents, dtype, decode_batch, on_frames, on_batch=on_batch)
