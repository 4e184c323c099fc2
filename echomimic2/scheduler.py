"""The official noise schedule (spec §9): diffusers' DDIM, v-prediction, zero terminal SNR."""
from __future__ import annotations

from diffusers import DDIMScheduler

# `configs/inference/inference_v2.yaml` noise_scheduler_kwargs. Note "linear", not SD's "scaled_linear".
OFFICIAL_SCHEDULER_SETTINGS = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    rescale_betas_zero_snr=True,
    prediction_type="v_prediction",
    timestep_spacing="trailing",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=True,
)


def official_scheduler() -> DDIMScheduler:
    """A fresh DDIM scheduler with the official settings (call `set_timesteps(steps)` before use)."""
    return DDIMScheduler(**OFFICIAL_SCHEDULER_SETTINGS)
