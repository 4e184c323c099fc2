"""pipeline/pose_sources.py: the registry picks a source per `pose` input, each file is read once, refusals
name the file, and a new source is one class plus one entry that validate, the job and the one-clip API use."""
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import write_wav
from PIL import Image

from echomimic2.pose import default_pose_sequence, save_pose_npz
from pipeline import pose_sources, storage
from pipeline.fingerprint import content_hash
from pipeline.limits import Limits
from pipeline.manifest import ClipSpec, check_clip_inputs
from pipeline.pose_sources import DrivingVideo, NpyFolder, NpzSequence, PoseInput, read_pose_input, source_for
from pipeline.storage import InputError


def npy_folder(folder: Path, poses: list[dict]) -> Path:
    folder.mkdir()
    for i, pose in enumerate(poses):
        buffer = io.BytesIO()
        np.save(buffer, np.array(pose, dtype=object), allow_pickle=True)
        (folder / f"{i}.npy").write_bytes(buffer.getvalue())
    return folder


def test_each_input_finds_its_source():
    assert isinstance(source_for("s3://b/talk.MP4?versionId=3"), DrivingVideo)
    assert isinstance(source_for("/data/clip.webm"), DrivingVideo)
    assert isinstance(source_for("gs://b/poses.npz"), NpzSequence)
    assert isinstance(source_for("/data/poses/"), NpyFolder)
    assert isinstance(pose_sources.POSE_SOURCES[-1], NpyFolder)  # the fallback comes last


def test_a_folder_is_read_once_and_fingerprinted_per_file(tmp_path, monkeypatch):
    poses = default_pose_sequence(4, 24)
    folder = npy_folder(tmp_path / "poses", poses)
    reads = []
    read_bytes = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda uri, **kw: reads.append(uri) or read_bytes(uri, **kw))
    given = read_pose_input(str(folder), Limits())
    assert sorted(Path(uri).name for uri in reads) == ["0.npy", "1.npy", "2.npy", "3.npy"]
    assert given.hashes == [(f"{i}.npy", content_hash((folder / f"{i}.npy").read_bytes())) for i in range(4)]
    sequence, info = given.sequence(24.0, 100, Limits())
    assert info == {} and len(sequence) == 4
    np.testing.assert_allclose(sequence[2]["hands"], poses[2]["hands"])
    assert len(reads) == 4  # the sequence comes from what was read


def test_refusals_name_the_file(tmp_path):
    poses = default_pose_sequence(4, 24)
    save_pose_npz(poses, tmp_path / "p.npz")
    with pytest.raises(InputError, match="^p.npz holds 4 frames, over the limit of 3$"):
        read_pose_input(str(tmp_path / "p.npz"), Limits(max_pose_frames=3))
    with pytest.raises(InputError, match="^p.npz: file is .* over the limit of 10"):
        read_pose_input(str(tmp_path / "p.npz"), Limits(max_pose_npz_bytes=10))
    folder = npy_folder(tmp_path / "f", poses)
    (folder / "2.npy").write_bytes(b"not a pose")
    with pytest.raises(InputError, match="^2.npy: "):
        read_pose_input(str(folder), Limits())


class TextPoses:
    """A made-up source for the test: `.poses` text files of "x y" per line, one hand point per frame."""

    def matches(self, uri):
        return uri.endswith(".poses")

    def read(self, uri, limits, input_root=None):
        data = storage.read_bytes(uri, max_bytes=1000, input_root=input_root)
        if not data.strip():
            raise InputError(f"{uri.rsplit('/', 1)[-1]}: no frames")
        return PoseInput(self, uri.rsplit("/", 1)[-1], [("x.poses", content_hash(data))], data=data)

    def sequence(self, given, fps, frames, limits):
        template = default_pose_sequence(1, fps)[0]
        poses = []
        for line in given.data.decode().split("\n")[:frames]:
            x, y = map(float, line.split())
            hands = np.array(template["hands"], dtype=np.float64)
            hands[0, 0] = (x, y)
            poses.append(dict(template, hands=hands))
        return poses, dict(pose_source="text")

    def check(self, uri, limits, input_root=None):
        self.read(uri, limits, input_root)


def test_a_new_source_is_one_class_and_one_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(pose_sources, "POSE_SOURCES", [TextPoses(), *pose_sources.POSE_SOURCES])
    Image.new("RGB", (64, 64)).save(tmp_path / "i.png")
    write_wav(tmp_path / "a.wav", 0.2)
    (tmp_path / "x.poses").write_text("0.5 0.5\n0.4 0.6")
    (tmp_path / "empty.poses").write_text("")

    def problems(pose):
        spec = ClipSpec(0, "c", str(tmp_path / "i.png"), str(tmp_path / "a.wav"), pose=str(tmp_path / pose))
        return [str(p) for p in check_clip_inputs(spec)]

    assert problems("x.poses") == []
    assert problems("empty.poses") == ["row 0 (clip 'c'): pose: empty.poses: no frames"]
    poses, info = read_pose_input(str(tmp_path / "x.poses"), Limits()).sequence(24.0, 10, Limits())
    assert info == {"pose_source": "text"} and [tuple(p["hands"][0, 0]) for p in poses] == [(0.5, 0.5), (0.4, 0.6)]
