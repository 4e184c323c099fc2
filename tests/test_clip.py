"""The one-clip API: its frames are what the Ray job encodes for the same row and seed, its inputs are
checked naming the argument, and every accepted input form gives the same clip."""
from __future__ import annotations

import io

import imageio_ffmpeg
import numpy as np
import pytest
from conftest import FPS, SIZE, check_video, image_bytes, wav_bytes, write_manifest
from PIL import Image

from echomimic2.pose import default_pose_sequence, save_pose_npz
from pipeline.commands import EXIT_OK, run_command
from pipeline.results import read_results


@pytest.fixture(scope="module")
def pipe():
    from pipeline import EchoMimicV2Pipeline

    return EchoMimicV2Pipeline.tiny()


def decoded(path: str) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(path)
    meta = reader.__next__()
    width, height = meta["size"]
    return np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader])


def test_one_clip_frames_equal_what_the_ray_job_encodes(pipe, tmp_path):
    import ray
    import torch

    (tmp_path / "a.png").write_bytes(image_bytes(3))
    (tmp_path / "a.wav").write_bytes(wav_bytes(2.0, pitch=260))
    poses = default_pose_sequence(7, FPS)[::-1]  # not the built-in loop, and shorter than the audio
    save_pose_npz(poses, tmp_path / "a.npz")
    manifest = write_manifest(str(tmp_path), [dict(clip_id="a", image="a.png", audio="a.wav", pose="a.npz", seed=11)])
    output = tmp_path / "out"
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=500_000_000,
             _temp_dir="/tmp/ray", logging_level="WARNING")
    try:
        assert run_command(manifest, str(output), gpus=1, segment_frames=16, overlap_frames=4) == EXIT_OK
    finally:
        ray.shutdown()
    [row] = read_results(str(output)).to_dict("records")
    assert row["status"] == "done" and row["frames"] == 24

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the job's render actor (Ray gives a 0-CPU actor one thread): same float sums
    try:
        out = pipe(str(tmp_path / "a.png"), str(tmp_path / "a.wav"), str(tmp_path / "a.npz"), width=SIZE, height=SIZE,
                   fps=FPS, seed=11, segment_frames=16, overlap_frames=4, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert out.segments == [(0, 14), (10, 24)] and out.frames.shape == (24, SIZE, SIZE, 3)
    out.save(str(tmp_path / "one.mp4"))
    check_video(str(tmp_path / "one.mp4"), 2.0)
    # Equal input frames give the same H.264 stream: any pixel that differs before encoding shows here.
    np.testing.assert_array_equal(decoded(str(tmp_path / "one.mp4")), decoded(str(output / "a.mp4")))
    assert not np.array_equal(decoded(str(tmp_path / "one.mp4"))[0], decoded(str(output / "a.mp4"))[1])


def test_check_inputs_names_the_argument(pipe, tmp_path):
    image, audio = image_bytes(0), wav_bytes(1.0)
    with pytest.raises(ValueError, match="^width: must be a multiple of 64, got 100"):
        pipe.check_inputs(image, audio, width=100)
    with pytest.raises(ValueError, match="^guidance: "):
        pipe.check_inputs(image, audio, guidance=float("nan"))
    with pytest.raises(ValueError, match="^image: expected a uint8"):
        pipe.check_inputs(np.zeros((64, 64), np.uint8), audio)
    with pytest.raises(ValueError, match="^audio: expected finite float mono"):
        pipe.check_inputs(image, np.zeros((2, 16000), np.float32))
    with pytest.raises(ValueError, match="overlap_frames"):
        pipe.check_inputs(image, audio, segment_frames=8, overlap_frames=8)
    with pytest.raises(ValueError, match="^poses: the list is empty"):
        pipe.check_inputs(image, audio, [])


def test_every_input_form_gives_the_same_clip_inputs(pipe, tmp_path):
    import soundfile as sf

    png = image_bytes(1)
    (tmp_path / "a.png").write_bytes(png)
    wav = wav_bytes(1.0)
    (tmp_path / "a.wav").write_bytes(wav)
    pixels = np.array(Image.open(io.BytesIO(png)).convert("RGB"))
    waveform, _ = sf.read(io.BytesIO(wav), dtype="float32")
    reference = pipe.check_inputs(str(tmp_path / "a.png"), wav, width=SIZE, height=SIZE).reference
    for image in (png, pixels, Image.open(io.BytesIO(png))):
        np.testing.assert_array_equal(pipe.check_inputs(image, wav, width=SIZE, height=SIZE).reference, reference)
    from_file = pipe.check_inputs(png, str(tmp_path / "a.wav"))
    from_array = pipe.check_inputs(png, waveform)
    np.testing.assert_allclose(from_array.waveform, from_file.waveform, atol=1e-6)
    assert sf.info(io.BytesIO(from_array.audio_file)).frames == len(waveform)  # what save() muxes
    assert from_file.audio_file == wav

    poses = default_pose_sequence(5, FPS)
    folder = tmp_path / "poses"
    folder.mkdir()
    for i, pose in enumerate(poses):
        buffer = io.BytesIO()
        np.save(buffer, np.array(pose, dtype=object), allow_pickle=True)
        (folder / f"{i}.npy").write_bytes(buffer.getvalue())
    save_pose_npz(poses, tmp_path / "p.npz")
    read = [pipe.check_inputs(png, wav, source).poses for source in (poses, str(folder), tmp_path / "p.npz")]
    for other in read[1:]:
        assert len(other) == len(read[0])
        for a, b in zip(read[0], other):
            np.testing.assert_allclose(a["hands"], b["hands"])


def test_the_reference_is_judged_before_rendering(pipe):
    """The one-clip API triages as the job does: an unsuitable reference warns, or with unsuitable="fail"
    raises before anything renders; `person` beyond the faces found is named."""
    from tests.synthetic_person import astronaut

    audio = wav_bytes(0.5)
    collar = np.ascontiguousarray(astronaut()[:230])
    with pytest.raises(ValueError, match=r"^image: unsuitable reference \(head_only\): head-and-shoulders only"):
        pipe.check_inputs(collar, audio, width=SIZE, height=SIZE, unsuitable="fail")
    with pytest.warns(UserWarning, match=r"unsuitable reference \(head_only\)"):
        clip = pipe.check_inputs(collar, audio, width=SIZE, height=SIZE)
    assert clip.triage.verdict == "head_only" and clip.detection.landmarks is not None
    with pytest.raises(ValueError, match=r"^person: person 2 asked for, but 1 face\(s\) found"):
        pipe.check_inputs(astronaut(), audio, width=SIZE, height=SIZE, person=2)
    with pytest.raises(ValueError, match="^unsuitable: expected warn or fail"):
        pipe.check_inputs(astronaut(), audio, unsuitable="skip")
    assert pipe.check_inputs(astronaut(), audio, width=256, height=256).triage.ok
