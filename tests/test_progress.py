"""Progress while a segment renders: the engine reports every UNet call and decoded batch, and the frames do
not depend on whether anyone listens."""
import numpy as np
import pytest

from echomimic2 import EchoMimicV2
from echomimic2.pose import default_pose_sequence, render_pose

SIZE, FRAMES, STEPS = 64, 15, 3


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    audio = rng.standard_normal((FRAMES, 50, 384)).astype(np.float32)
    poses = np.stack([render_pose(pose, SIZE, SIZE) for pose in default_pose_sequence(FRAMES, 24.0)])
    return reference, audio, poses


def test_render_reports_every_call_and_batch_and_keeps_its_frames(inputs):
    model = EchoMimicV2.tiny_random(seed=0)
    reference, audio, poses = inputs
    silent = model.render(reference, audio, poses, seed=3, first_frame=5, steps=STEPS, windows_per_batch=1)
    reports = []
    frames = model.render(reference, audio, poses, seed=3, first_frame=5, steps=STEPS, windows_per_batch=1,
                          on_progress=reports.append)
    np.testing.assert_array_equal(frames, silent)

    calls = reports[-1].calls
    denoising = [r for r in reports if r.frames_decoded == 0]
    decoding = [r for r in reports if r.frames_decoded > 0]
    assert [r.calls_done for r in denoising] == list(range(1, calls + 1))  # one report per UNet call
    assert calls > STEPS  # one window per call: the bar moves within a step, not only between steps
    assert [r.steps_done for r in denoising] == sorted(r.steps_done for r in denoising)
    assert denoising[-1].steps_done == STEPS and denoising[0].steps_done == 0
    assert [r.frames_decoded for r in decoding] == [min(FRAMES, 8 * i) for i in range(1, len(decoding) + 1)]
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert 0 < denoising[-1].fraction < 1  # the decode is part of the work
