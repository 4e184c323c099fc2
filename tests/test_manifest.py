"""pipeline.manifest: schema, clip_id safety, header-only input checks, limits, relative paths, S3."""
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import S3_SECRET, png_declaring, write_wav
from PIL import Image

from pipeline import storage
from pipeline.manifest import ClipSpec, Limits, Problem, check_clip_inputs, parse_manifest, validate_manifest
from pipeline.pose_sources import NpzSequence, list_pose_files, source_for
from pipeline.storage import InputError


@pytest.fixture
def assets(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.new("RGB", (96, 128), (200, 150, 100)).save(folder / "face.png")
    write_wav(folder / "speech.wav", 1.0)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    (folder / "empty.wav").write_bytes(b"")
    sf.write(folder / "silent0.wav", np.zeros(0, np.float32), 16000)  # a valid header, 0 samples
    Image.new("RGB", (32, 32)).save(folder / "tiny.png")
    (folder / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    return folder


def write_manifest(path: Path, rows: list[dict]) -> str:
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def problems_by_row(problems):
    out = {}
    for p in problems:
        out.setdefault(p.row, []).append(p)
    return out


def test_mixed_manifest_one_clear_problem_per_bad_row(assets, tmp_path, monkeypatch):
    good = dict(image="inputs/face.png", audio="inputs/speech.wav")
    rows = [
        dict(clip_id="good-1", **good),
        dict(clip_id="corrupt", image="inputs/face.png", audio="inputs/corrupt.wav"),
        dict(clip_id="no-image", image="inputs/missing.png", audio="inputs/speech.wav"),
        dict(clip_id="empty", image="inputs/face.png", audio="inputs/empty.wav"),
        dict(clip_id="zero-samples", image="inputs/face.png", audio="inputs/silent0.wav"),
        dict(clip_id="good-1", **good),  # duplicate
        dict(clip_id="GOOD-1", **good),  # duplicate ignoring case
        dict(clip_id="../x", **good),
        dict(clip_id="/abs", **good),
        dict(clip_id="a/b", **good),
        dict(clip_id="x\0y", **good),
        dict(clip_id="c" * 300, **good),
        dict(clip_id=".hidden", **good),
        dict(clip_id="tiny", image="inputs/tiny.png", audio="inputs/speech.wav"),
        dict(clip_id="bomb", image="inputs/bomb.png", audio="inputs/speech.wav"),
        dict(clip_id="good_2.v1", **good),
    ]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    monkeypatch.chdir("/")  # relative paths resolve against the manifest's folder, not the cwd

    specs, problems = validate_manifest(manifest)

    assert [s.clip_id for s in specs] == ["good-1", "good_2.v1"]
    assert specs[0].image == str(tmp_path / "inputs" / "face.png") and specs[0].fps == 24.0
    by_row = problems_by_row(problems)
    assert sorted(by_row) == list(range(1, 15))
    assert all(len(found) == 1 for found in by_row.values()), problems
    expected = {
        1: ("audio", "not a decodable audio file"), 2: ("image", "not found"), 3: ("audio", "file is empty"),
        4: ("audio", "no samples"), 5: ("clip_id", "duplicate of row 0"), 6: ("clip_id", "ignoring case"),
        7: ("clip_id", "'/'"), 8: ("clip_id", "'/'"), 9: ("clip_id", "'/'"), 10: ("clip_id", "'\\x00'"),
        11: ("clip_id", "1..128 characters"), 12: ("clip_id", "must not start with '.'"),
        13: ("image", "under the minimum of 64"), 14: ("image", "decompression bomb"),
    }
    for row, (field, reason) in expected.items():
        problem = by_row[row][0]
        assert problem.field == field and reason in problem.reason, str(problem)
    assert str(by_row[3][0]) == "row 3 (clip 'empty'): audio: file is empty"


def test_schema_problems(tmp_path):
    df = pd.DataFrame([dict(clip_id="a", image="i.png", extra=1)])
    _, problems = parse_manifest(df)
    assert {str(p) for p in problems} == {
        "manifest: column 'extra': unknown column (allowed: clip_id, image, audio, pose, seed, steps, "
        "guidance, fps, width, height, pose_align, gesture, person)",
        "manifest: column 'audio': required column is missing"}


def test_override_types_and_ranges():
    base = dict(image="/i.png", audio="/a.wav")
    df = pd.DataFrame([
        dict(clip_id="ok", seed=7, steps=4.0, guidance=2.5, fps=25, width=512, height=768, **base),
        dict(clip_id="defaults", seed=None, steps=None, guidance=None, fps=None, width=None, height=None, **base),
        dict(clip_id="bad", seed=-1, steps=3.5, guidance=float("inf"), fps=120, width=500, height=4096, **base),
    ])
    specs, problems = parse_manifest(df)
    assert specs == [
        ClipSpec(0, "ok", "/i.png", "/a.wav", None, 7, 4, 2.5, 25.0, 512, 768),
        ClipSpec(1, "defaults", "/i.png", "/a.wav"),
    ]
    assert {p.field: p.reason for p in problems} == {
        "seed": "must be in 0..9223372036854775807, got -1", "steps": "must be an integer, got 3.5",
        "guidance": "must be a finite number, got inf", "fps": "must be in 1..60, got 120",
        "width": "must be a multiple of 64, got 500", "height": "must be in 64..2048, got 4096"}
    _, problems = parse_manifest(pd.DataFrame([dict(clip_id="s", seed="3", image=5, audio=None)]))
    assert sorted((p.field, p.reason) for p in problems) == [
        ("audio", "must be a path or URL, got nothing"), ("image", "must be a path or URL, got int 5"),
        ("seed", "must be an integer, got str '3'")]


def test_nan_in_a_manifest_is_refused_but_null_means_not_set(tmp_path):
    """A Parquet file keeps a null apart from NaN: null leaves the preset's value, NaN (or inf) is a bad
    value naming the row and field, never silently "not set"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "clip_id": ["unset", "nan_guidance", "inf_fps", "nan_seed"],
        "image": ["/i.png"] * 4, "audio": ["/a.wav"] * 4,
        "guidance": pa.array([None, float("nan"), 1.0, None], pa.float64()),
        "fps": pa.array([None, None, float("inf"), None], pa.float64()),
        "seed": pa.array([None, None, None, float("nan")], pa.float64()),
    })
    pq.write_table(table, tmp_path / "m.parquet")
    from pipeline.manifest import read_manifest

    specs, problems = parse_manifest(read_manifest(str(tmp_path / "m.parquet")))
    assert specs == [ClipSpec(0, "unset", "/i.png", "/a.wav")]
    assert [str(p) for p in problems] == [
        "row 1 (clip 'nan_guidance'): guidance: must be a finite number, got nan",
        "row 2 (clip 'inf_fps'): fps: must be a finite number, got inf",
        "row 3 (clip 'nan_seed'): seed: must be an integer, got nan"]


def test_validate_refuses_what_the_job_cannot_decode(tmp_path):
    """Issue 12 #5 and #8: a PNG cut in half has a valid header (validate passed it, the job failed);
    an image given as audio, and a file that is no image, get messages that say what they are."""
    import io

    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.new("RGB", (80, 80)).save(tmp_path / "photo.jpg")
    (tmp_path / "junk.png").write_bytes(b"no image here" * 10)
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    write_wav(tmp_path / "ok.wav", 0.5)

    def problems(image, audio):
        return [str(p) for p in check_clip_inputs(ClipSpec(0, "c", str(tmp_path / image), str(tmp_path / audio)))]

    assert problems("ok.png", "ok.wav") == []
    (cut,) = problems("cut.png", "ok.wav")
    assert cut.startswith("row 0 (clip 'c'): image: cannot decode image: ") and "truncated" in cut, cut
    assert problems("ok.png", "photo.jpg") == [
        "row 0 (clip 'c'): audio: not a decodable audio file: it holds no audio stream (found Video: mjpeg)"]
    assert problems("junk.png", "ok.wav") == [
        "row 0 (clip 'c'): image: not a readable image (not a PNG, JPEG, WEBP, BMP, TIFF, GIF file)"]


def test_wav_declaring_hours_is_refused_by_header(tmp_path):
    """2 hours of 8 kHz 8-bit audio: a sparse 57 MB file, refused from its header without decoding."""
    sr, seconds = 8000, 7200
    n = sr * seconds
    header = (b"RIFF" + struct.pack("<I", 36 + n) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sr, sr, 1, 8)
              + b"data" + struct.pack("<I", n))
    long_wav = tmp_path / "long.wav"
    with open(long_wav, "wb") as f:
        f.write(header)
        f.truncate(len(header) + n)
    Image.new("RGB", (64, 64)).save(tmp_path / "i.png")
    spec = ClipSpec(0, "long", str(tmp_path / "i.png"), str(long_wav))
    assert [p.reason for p in check_clip_inputs(spec)] == ["audio is 7200.0 s long, over the limit of 600 s"]
    assert check_clip_inputs(spec, Limits(max_audio_seconds=8000)) == []


def test_pose_folder_refused_by_count_without_reading(tmp_path, monkeypatch):
    folder = tmp_path / "pose"
    folder.mkdir()
    for i in range(101):
        (folder / f"{i}.npy").write_bytes(b"")
    read_bytes = storage.read_bytes

    def read_anything_but_poses(uri, **kwargs):
        if uri.endswith(".npy"):
            pytest.fail("a pose file was read")
        return read_bytes(uri, **kwargs)

    monkeypatch.setattr(storage, "read_bytes", read_anything_but_poses)
    with pytest.raises(InputError, match="more than 100 entries"):
        list_pose_files(str(folder), Limits(max_pose_frames=100))
    Image.new("RGB", (64, 64)).save(tmp_path / "i.png")
    write_wav(tmp_path / "a.wav", 0.2)
    spec = ClipSpec(0, "p", str(tmp_path / "i.png"), str(tmp_path / "a.wav"), pose=str(folder))
    assert [str(p) for p in check_clip_inputs(spec, Limits(max_pose_frames=100))] == [
        "row 0 (clip 'p'): pose: folder holds more than 100 entries"]


def test_pose_folder_naming(tmp_path):
    folder = tmp_path / "pose"
    folder.mkdir()
    with pytest.raises(InputError, match="no frames"):
        list_pose_files(str(folder), Limits())
    for i in (0, 1, 2, 10):
        (folder / f"{i}.npy").write_bytes(b"")
    (folder / ".DS_Store").write_bytes(b"")
    with pytest.raises(InputError, match="3.npy is missing"):
        list_pose_files(str(folder), Limits())
    (folder / "10.npy").unlink()
    assert [Path(p).name for p in list_pose_files(str(folder), Limits())] == ["0.npy", "1.npy", "2.npy"]
    (folder / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unexpected file 'notes.txt'"):
        list_pose_files(str(folder), Limits())
    assert isinstance(source_for("s3://b/clip.NPZ"), NpzSequence)  # one file, not a folder to list


def test_uri_policy_per_row(assets, tmp_path):
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (64, 64)).save(outside)
    (assets / "sneaky.png").symlink_to(outside)
    rows = [
        ClipSpec(0, "http", "https://example.com/x.png", str(assets / "speech.wav")),
        ClipSpec(1, "ftp", "ftp://host/x.png", str(assets / "speech.wav")),
        ClipSpec(2, "link", str(assets / "sneaky.png"), str(assets / "speech.wav")),
    ]
    reasons = [check_clip_inputs(spec, input_root=assets)[0].reason for spec in rows]
    assert "allow-http" in reasons[0] and "scheme 'ftp'" in reasons[1] and "outside the input root" in reasons[2]
    assert check_clip_inputs(ClipSpec(3, "ok", str(assets / "face.png"), str(assets / "speech.wav")),
                             input_root=assets) == []


def test_manifest_on_s3_with_relative_paths_and_no_secret_in_problems(s3_bucket, assets):
    base = f"{s3_bucket}/jobs/today"
    storage.write_atomic(f"{base}/media/face.png", (assets / "face.png").read_bytes())
    storage.write_atomic(f"{base}/media/speech.wav", (assets / "speech.wav").read_bytes())
    storage.write_atomic(f"{s3_bucket}/shared/corrupt.wav", (assets / "corrupt.wav").read_bytes())
    rows = [
        dict(clip_id="s3-good", image="media/face.png", audio="./media/speech.wav"),
        dict(clip_id="s3-updir", image="media/face.png", audio="../../shared/corrupt.wav"),
        dict(clip_id="s3-missing", image=f"{s3_bucket}/{S3_SECRET}/face.png", audio="media/speech.wav"),
        dict(clip_id="s3-creds", image="media/face.png", audio=f"s3://user:{S3_SECRET}@bucket/a.wav"),
    ]
    local = assets / "m.parquet"
    write_manifest(local, rows)
    storage.write_atomic(f"{base}/manifest.parquet", local)

    specs, problems = validate_manifest(f"{base}/manifest.parquet")

    assert [(s.clip_id, s.audio) for s in specs] == [("s3-good", f"{base}/media/speech.wav")]
    assert [(p.row, p.field) for p in problems] == [(1, "audio"), (2, "image"), (3, "audio")]
    assert "not a decodable audio file" in problems[0].reason
    text = "\n".join(str(p) for p in problems)
    assert S3_SECRET not in text and "***" in text


def test_problem_str_for_the_whole_manifest(tmp_path):
    _, problems = validate_manifest(str(tmp_path / "nope.parquet"))
    assert [str(p) for p in problems] == [f"manifest: file: not found: {tmp_path / 'nope.parquet'}"]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    _, problems = validate_manifest(str(tmp_path / "bad.parquet"))
    assert problems[0].field == "file" and "not a readable Parquet file" in problems[0].reason
    assert str(Problem(2, None, "clip_id", "x")) == "row 2: clip_id: x"


class MarkerPayload:
    """Pickles to a call that would create ``path`` if anything executed it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pose_folder_and_npz_are_parsed_safely(tmp_path):
    from echomimic2.pose import default_pose_sequence, save_pose_npz

    Image.new("RGB", (64, 64)).save(tmp_path / "i.png")
    write_wav(tmp_path / "a.wav", 0.5)
    poses = default_pose_sequence(4, 24)
    good = tmp_path / "good"
    good.mkdir()
    for i, pose in enumerate(poses):
        np.save(good / f"{i}.npy", pose, allow_pickle=True)  # the official per-frame format
    save_pose_npz(poses, tmp_path / "poses.npz")
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    np.save(hostile / "0.npy", poses[0], allow_pickle=True)
    marker = tmp_path / "executed"
    np.save(hostile / "1.npy", np.array({"hands": MarkerPayload(marker)}, dtype=object), allow_pickle=True)
    oversized = tmp_path / "oversized"
    oversized.mkdir()
    np.save(oversized / "0.npy", poses[0], allow_pickle=True)

    def check(pose, limits=Limits()):
        return [str(p) for p in check_clip_inputs(ClipSpec(0, "c", str(tmp_path / "i.png"), str(tmp_path / "a.wav"),
                                                           pose=str(pose)), limits)]

    assert check(good) == [] and check(tmp_path / "poses.npz") == []
    (problem,) = check(hostile)
    assert problem.startswith("row 0 (clip 'c'): pose: 1.npy") and "refused" in problem
    assert not marker.exists()
    (problem,) = check(oversized, Limits(max_pose_file_bytes=100))
    assert "0.npy: file is" in problem and "over the limit of 100" in problem
    (problem,) = check(tmp_path / "poses.npz", Limits(max_pose_frames=3))
    assert "poses.npz holds 4 frames, over the limit of 3" in problem


def test_demo_manifest_is_valid_from_any_cwd(monkeypatch):
    demo = Path(__file__).resolve().parent.parent / "manifests" / "demo.parquet"
    monkeypatch.chdir("/")
    specs, problems = validate_manifest(str(demo), input_root=demo.parent)
    assert problems == []
    assert [s.clip_id for s in specs] == ["demo-hello", "demo-welcome"]
    assert specs[1].pose == str(demo.parent / "assets" / "pose_gesture") and specs[0].pose is None
    total = sum(p.stat().st_size for p in (demo.parent / "assets").rglob("*") if p.is_file())
    assert total < 1_000_000


def test_rewritten_paths_are_refused_as_written_not_joined_to_the_manifest_folder(tmp_path):
    rows = [dict(clip_id="chain", image="simplecache::s3://b/a.png", audio="a.wav"),
            dict(clip_id="data", image="i.png", audio="data:audio/wav;base64,UklGRg==")]
    specs, problems = parse_manifest(pd.DataFrame(rows), base_uri=str(tmp_path))
    assert specs == []
    assert [(p.row, p.field, p.reason.split(": ")[0]) for p in problems] == [
        (0, "image", "simplecache::s3://b/a.png"), (1, "audio", "data:audio/wav;base64,UklGRg==")]
