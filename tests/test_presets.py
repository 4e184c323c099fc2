"""The presets table (echomimic2/presets.py) is the one home of per-preset facts: the CLI's choices, README's
table, the fingerprinted parameters and `plan`'s cost model all read it."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_wav
from typer.testing import CliRunner

from echomimic2.presets import DEFAULT_WITH_WEIGHTS, DEFAULT_WITHOUT_WEIGHTS, PRESETS, full_size_preset
from pipeline.commands import clip_render_flops, measured_throughput, plan_command
from pipeline.fingerprint import clip_fingerprint
from pipeline.params import RenderParams

README = Path(__file__).resolve().parent.parent / "README.md"


def _help(*command: str) -> str:
    from cli import app

    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", result.output))


def test_cli_choices_are_the_table():
    run_help, bench_help = _help("run"), _help("bench")
    assert " | ".join(PRESETS) in run_help
    assert f"default: {DEFAULT_WITH_WEIGHTS} with --weights, else {DEFAULT_WITHOUT_WEIGHTS}" in run_help
    assert " | ".join(name for name, preset in PRESETS.items() if preset.full_size) in bench_help
    assert PRESETS[DEFAULT_WITH_WEIGHTS].full_size and not PRESETS[DEFAULT_WITHOUT_WEIGHTS].full_size
    with pytest.raises(ValueError, match="preset must be one of 'quality', 'acc', got 'tiny'"):
        full_size_preset("tiny")


def test_readme_table_agrees_with_the_table():
    rows = re.findall(r"^\| `(\w+)`[^|]*\| (\d+) \| ([\d.]+) \| (\d+)×(\d+) \|", README.read_text(), re.M)
    documented = {name: (int(steps), float(guidance), int(width), int(height)) for name, steps, guidance, width, height in rows}
    assert documented == {name: (p.steps, p.guidance, p.width, p.height) for name, p in PRESETS.items()}


# Pinned from the release before parameters became `params.RenderParams` (person and poses_version 2 included):
# a change here re-renders every finished clip.
PINNED_PARAMS = {
    "quality": ('{"preset": "quality", "seed": 0, "steps": 30, "guidance": 2.5, "fps": 24.0, "width": 768, "height": 768, '
                '"segment_frames": 288, "overlap_frames": 6, "pose_align": "auto", "gesture": "calm", "person": null, '
                '"poses_version": 2}', "d97dbb7e2854f298"),
    "acc": ('{"preset": "acc", "seed": 0, "steps": 6, "guidance": 1.0, "fps": 24.0, "width": 768, "height": 768, '
            '"segment_frames": 288, "overlap_frames": 6, "pose_align": "auto", "gesture": "calm", "person": null, '
            '"poses_version": 2}', "d3c63d38b1e34bab"),
    "tiny": ('{"preset": "tiny", "seed": 0, "steps": 3, "guidance": 1.0, "fps": 24.0, "width": 256, "height": 256, '
             '"segment_frames": 288, "overlap_frames": 6, "pose_align": "auto", "gesture": "calm", "person": null, '
             '"poses_version": 2}', "f08d35940e0ad97a"),
}


@pytest.mark.parametrize("name", list(PINNED_PARAMS))
def test_fingerprinted_parameters_stay_byte_identical(name):
    params = RenderParams.resolve(name, fps=24.0, segment_frames=288, overlap_frames=6).fingerprint_fields()
    document, fingerprint = PINNED_PARAMS[name]
    assert json.dumps(params) == document
    assert clip_fingerprint(image_sha="i", audio_sha="a", pose_shas=[("0.npy", "p")], params=params,
                            model_identity="m") == fingerprint


@pytest.mark.parametrize("name", [name for name, preset in PRESETS.items() if preset.cost is not None])
def test_plan_cost_model_gives_back_the_measured_run(name):
    """The throughput is derived from the measured job run, so planning that run's clips gives its time back;
    a longer segment plan of the same frames costs less (fewer reference passes and shared frames)."""
    preset = PRESETS[name]
    cost = preset.cost

    def seconds(segment_frames: int) -> float:
        flops = sum(clip_render_flops(frames, segment_frames, cost.overlap_frames, cost.size, cost.size, preset.steps,
                                      preset.guidance) for frames in cost.clip_frames)
        return flops / measured_throughput(preset)

    assert seconds(cost.segment_frames) == pytest.approx(cost.seconds_per_120_frames * sum(cost.clip_frames) / 120)
    assert seconds(12) > seconds(cost.segment_frames)


def test_plan_prints_each_measured_preset(tmp_path, capsys):
    audio = write_wav(tmp_path / "a.wav", 10.0)
    manifest = tmp_path / "manifest.parquet"
    pd.DataFrame([dict(clip_id="a", image=str(audio), audio=str(audio), width=None, height=None),
                  dict(clip_id="b", image=str(audio), audio=str(audio), width=384, height=384)]).to_parquet(manifest)
    assert plan_command(str(manifest)) == 0
    out = capsys.readouterr().out
    estimates = dict(re.findall(r"preset (\w+): [\d.,]+ PFLOP ≈ [\d.,]+ H200-hours \(([\d,]+) GPU-s\)", out))
    assert set(estimates) == {name for name, preset in PRESETS.items() if preset.cost is not None and preset.full_size}
    # the demo model (the one preset a user without weights can run) gets its CPU estimate
    assert re.search(r"preset tiny: ≈ [\d.,]+ minutes of render on one 2-core CPU", out)
    # row a at 768², row b at 384² (a quarter of the pixels, so a bit under a quarter of the time: attention)
    acc = PRESETS["acc"]
    expected = sum(clip_render_flops(240, 288, 6, size, size, acc.steps, acc.guidance) for size in (768, 384))
    assert int(estimates["acc"].replace(",", "")) == round(expected / measured_throughput(acc))
    assert 2.0 * 24.04 < expected / measured_throughput(acc) < 1.25 * 2.0 * 24.04


def test_full_size_presets_carry_the_official_codes_figure_and_the_goal():
    """The figure both benches print beside theirs comes from the table (issue 10: H200, acc 22.3 s, quality 175 s)."""
    for preset in PRESETS.values():
        assert (preset.official is not None) is preset.full_size
    acc, quality = PRESETS["acc"].official, PRESETS["quality"].official
    assert (acc.seconds_per_120_frames, quality.seconds_per_120_frames, acc.device) == (22.3, 175.0, "NVIDIA H200")
    assert (acc.target_seconds_per_120_frames, quality.target_seconds_per_120_frames) == (12.0, 80.0)
    assert "22.3 s per 120 frames" in acc.describe() and "≤ 12.0 s" in acc.describe()
