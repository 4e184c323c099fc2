"""`cli.py bench` on the CPU: the stage clock with UNet calls filled across step boundaries (as the GPU's batch
sizes fill them), and which errors are the user's (exit 2) and which the program's (a traceback)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from echomimic2.bench import BenchArgumentError, _denoise_step_label, _StageClock, bench_command, check_bench_arguments
from echomimic2.config import tiny_unet_config, tiny_vae_config
from echomimic2.networks import random_networks
from echomimic2.sampler import denoising_calls, render_segment
from echomimic2.scheduler import official_scheduler
from echomimic2.windows import segment_windows
from pipeline.schedule_bench import schedule_command

SIZE = 64


@pytest.fixture(scope="module")
def networks():
    return random_networks(tiny_unet_config(), tiny_vae_config(), torch.device("cpu"), torch.float32)


def _timed_render(networks, frames: int, steps: int, guidance: float, windows_per_batch: int) -> _StageClock:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    audio = rng.standard_normal((frames, 50, 384), dtype=np.float32)
    poses = rng.integers(0, 256, (frames, SIZE, SIZE, 3), dtype=np.uint8)
    clock = _StageClock(torch.device("cpu"))
    with clock.instrument(networks.denoising_unet, "forward", _denoise_step_label):
        render_segment(networks, reference, audio, poses, seed=0, first_frame=0, steps=steps, guidance=guidance,
                       windows_per_batch=windows_per_batch)
    return clock


def _step_values(steps: int) -> list[int]:
    scheduler = official_scheduler()
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.tolist()


def test_a_call_that_spans_two_steps_is_shared_between_them(networks):
    # 24 frames, two windows per call: the middle call holds step 0's last window and step 1's first (the
    # layout the GPU's default batch gives every long segment).
    frames, steps, windows_per_batch = 24, 2, 2
    calls, _ = denoising_calls([segment_windows(frames, step) for step in range(steps)], windows_per_batch)
    assert [[row.step for row in call.windows] for call in calls] == [[0, 0], [0, 1], [1, 1]]
    clock = _timed_render(networks, frames, steps, 1.0, windows_per_batch)
    elapsed = [end - start for _, start, end in clock.intervals]
    assert len(elapsed) == 3
    first, second = _step_values(steps)
    assert clock.seconds() == pytest.approx({f"step t={first}": elapsed[0] + elapsed[1] / 2,
                                             f"step t={second}": elapsed[1] / 2 + elapsed[2]})
    assert list(clock.seconds()) == [f"step t={first}", f"step t={second}"]  # in step order


def test_a_guided_call_names_its_step_once(networks):
    # With classifier-free guidance every call has two rows (unconditional, conditional) of the same step.
    clock = _timed_render(networks, 12, 2, 2.5, 1)
    assert all(label.numel() == 2 for label, _, _ in clock.intervals)
    elapsed = [end - start for _, start, end in clock.intervals]
    assert clock.seconds() == pytest.approx({f"step t={t}": seconds for t, seconds in zip(_step_values(2), elapsed)})


def test_the_users_mistakes_exit_2_with_a_message(capsys):
    for preset, frames, size, expected in (("tiny", 12, 768, "preset must be one of 'quality', 'acc'"),
                                           ("acc", 12, 100, "size must be a positive multiple of 64"),
                                           ("acc", 0, 768, "frames must be at least 1")):
        assert bench_command(preset, frames, size) == 2
        assert expected in capsys.readouterr().out
    assert schedule_command("acc", "5,x", 768, None, False, None) == 2
    assert "--schedule takes clip lengths in seconds" in capsys.readouterr().out
    assert schedule_command("nope", "5", 768, None, False, None) == 2
    assert "preset must be one of" in capsys.readouterr().out
    assert schedule_command("acc", "5", 768, 0, False, None) == 2
    assert "steps must be at least 1" in capsys.readouterr().out
    assert check_bench_arguments("acc", 768, 120, 6).name == "acc"


def test_a_fault_of_the_program_keeps_its_traceback(monkeypatch):
    # A ValueError from inside the renderer is not the user's: it must not come back as "bench: ..." and exit 2.
    def broken_renderer(*args, **kwargs):
        raise ValueError("an internal fault")

    monkeypatch.setattr("echomimic2.bench.render_segment", broken_renderer)
    with pytest.raises(ValueError, match="an internal fault") as raised:
        bench_command("acc", 12, 768)
    assert not isinstance(raised.value, BenchArgumentError)
