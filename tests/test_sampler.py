"""Scheduler settings, initial noise and context-window schedules (no networks needed)."""
import pytest
import torch

from echomimic2.sampler import NOISE_CLAMP, frame_noise, official_noise, segment_noise
from echomimic2.scheduler import official_scheduler
from echomimic2.windows import CONTEXT_FRAMES, official_windows, segment_windows

TIMESTEPS_30 = [999, 966, 932, 899, 866, 832, 799, 766, 732, 699, 666, 632, 599, 566, 532,
                499, 466, 432, 399, 366, 332, 299, 266, 232, 199, 166, 132, 99, 66, 32]
TIMESTEPS_6 = [999, 832, 666, 499, 332, 166]


@pytest.mark.parametrize("steps,expected", [(30, TIMESTEPS_30), (6, TIMESTEPS_6)])
def test_timesteps_match_the_official_lists(steps, expected):
    scheduler = official_scheduler()
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == expected


def test_zero_terminal_snr_alphas():
    alphas = official_scheduler().alphas_cumprod
    assert alphas[0].item() == pytest.approx(0.99915, abs=1e-5)
    assert alphas[500].item() == pytest.approx(0.14151, abs=1e-5)
    assert alphas[998].item() == pytest.approx(6.28e-8, rel=1e-2)
    assert alphas[999].item() == 0.0


def _ddim_v_step(alpha_t, alpha_prev, x, v):
    x0 = alpha_t**0.5 * x - (1 - alpha_t) ** 0.5 * v
    eps = alpha_t**0.5 * v + (1 - alpha_t) ** 0.5 * x
    return alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps


@pytest.mark.parametrize("steps,timestep,previous", [(30, 966, 933), (6, 832, 666), (6, 166, 0), (30, 32, None)])
def test_ddim_step_goes_to_t_minus_1000_over_n(steps, timestep, previous):
    """prev = t − 1000//N (966 → 933, not the list's 932); ᾱ_prev = 1 below zero."""
    scheduler = official_scheduler()
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 4, 3, 5, 5, generator=generator).unbind(0)
    alphas = scheduler.alphas_cumprod
    alpha_prev = 1.0 if previous is None else alphas[previous]
    expected = _ddim_v_step(alphas[timestep], alpha_prev, x, v)
    got = scheduler.step(v, timestep, x).prev_sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if previous == 933:
        wrong = _ddim_v_step(alphas[timestep], alphas[932], x, v)
        assert not torch.allclose(got, wrong, rtol=1e-5, atol=1e-6)


def test_frame_noise_depends_on_seed_and_frame_only():
    a = frame_noise(7, 40, 6, 5)
    assert a.shape == (4, 6, 5) and a.dtype == torch.float32
    torch.testing.assert_close(a, frame_noise(7, 40, 6, 5), rtol=0, atol=0)
    assert not torch.equal(a, frame_noise(8, 40, 6, 5))
    assert not torch.equal(a, frame_noise(7, 41, 6, 5))
    big = frame_noise(0, 0, 64, 64)
    assert big.abs().max().item() == NOISE_CLAMP  # the draw is clamped, and clamping happens
    assert 0.86 < big.std().item() < 0.91  # std of N(0,1) clamped to ±1.5 is 0.884


def test_overlapping_segments_share_initial_noise():
    first = segment_noise(3, 0, 20, 4, 4)  # global frames 0..19
    second = segment_noise(3, 12, 20, 4, 4)  # global frames 12..31
    assert first.shape == (1, 4, 20, 4, 4)
    assert torch.equal(first[:, :, 12:20], second[:, :, 0:8])
    assert not torch.equal(first[:, :, 0:8], second[:, :, 0:8])


@pytest.mark.parametrize("frames", list(range(1, 50)) + [72, 121, 240])
def test_segment_windows_cover_every_frame_inside_the_segment(frames):
    for step in range(7):
        windows = segment_windows(frames, step)
        covered = [0] * frames
        for window in windows:
            assert len(window) == min(frames, CONTEXT_FRAMES)
            assert window == list(range(window[0], window[0] + len(window)))  # consecutive, no wrap
            assert 0 <= window[0] and window[-1] < frames
            for index in window:
                covered[index] += 1
        assert min(covered) >= 1
        assert len({tuple(w) for w in windows}) == len(windows)


def test_segment_windows_follow_the_official_shift():
    starts = lambda step: [w[0] for w in segment_windows(40, step)]  # noqa: E731
    assert starts(0) == [0, 9, 18, 27, 28]
    assert starts(1) == [0, 3, 12, 21, 28]  # grid shifted by 3
    assert starts(2) == [0, 6, 15, 24, 28]
    assert starts(3) == starts(0)  # (3·s) mod 9 repeats every 3 steps
    assert segment_windows(12, 1) == [list(range(12))]
    assert segment_windows(5, 2) == [list(range(5))]


def test_official_windows_wrap_around_and_rotate():
    assert official_windows(30, 0) == [
        list(range(0, 12)),
        list(range(9, 21)),
        list(range(18, 30)),
        [27, 28, 29] + list(range(0, 9)),
    ]
    for step in range(1, 12):
        shifted = [[(i + 3 * step) % 30 for i in window] for window in official_windows(30, 0)]
        assert official_windows(30, step) == shifted
    assert len(official_windows(240, 0)) == 27
    # A short clip is one window, rotated every step as the official code does.
    assert official_windows(10, 1) == [[3, 4, 5, 6, 7, 8, 9, 0, 1, 2]]


def test_reference_compatible_noise_is_the_official_global_draw():
    """infer.py seeds the global CPU generator and draws the whole clip at once in the model dtype."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(420)
        expected = torch.randn((1, 4, 7, 6, 6), dtype=torch.float16).clamp(-1.5, 1.5).float()
    assert torch.equal(official_noise(420, 7, 6, 6, torch.float16), expected)
