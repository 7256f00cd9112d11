"""SynthConfig.sweeps (how many LiDAR sweeps per key frame the synthetic world writes), the refusal of
``voxelize --sweeps N`` on a world with fewer, and the progress lines of synth and of the devkit load."""

import dataclasses
import json
from pathlib import Path

import pytest

from occfeat.data.index import SYNTH_MARKER, SampleIndex
from occfeat.data.synth import SynthConfig, is_complete, write_dataroot
from occfeat.data.voxelize import build_occupancy
from occfeat.errors import OccfeatError
from tests.conftest import TEST_GRID

TINY = dict(scenes=1, samples_per_scene=2, image_size=(32, 18), seed=5)


def lidar_files(root: Path, folder: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / folder / "LIDAR_TOP").glob("*.pcd.bin"))}


def test_fewer_sweeps_write_only_those_before_each_key_frame_of_the_same_world(tmp_path, capsys):
    full = write_dataroot(tmp_path / "full", SynthConfig(**TINY), progress=False)
    assert capsys.readouterr().err == ""  # progress=False: not a line
    three = write_dataroot(tmp_path / "three", SynthConfig(**TINY, sweeps=3))
    err = capsys.readouterr().err  # not a terminal: whole lines, the last one the finished count
    assert "\r" not in err and err.splitlines()[-1].startswith("synth: 100% 2/2")

    assert len(lidar_files(full, "sweeps")) == 2 * 9  # nuScenes: 9 between key frames (and before the first)
    assert len(lidar_files(three, "sweeps")) == 2 * 2
    assert lidar_files(three, "samples") == lidar_files(full, "samples")  # the same world at the key frames
    # The devkit's chain gives each key frame its own previous sweeps, 50 ms apart (none from an earlier key frame).
    rec = SampleIndex(three, "v1.0-mini", "all", progress=False)[1]
    sweeps = rec.sweeps(3)
    assert [s.is_key_frame for s in sweeps] == [True, False, False]
    assert [rec.lidar.timestamp - s.timestamp for s in sweeps] == [0, 50_000, 100_000]
    assert json.loads((three / SYNTH_MARKER).read_text())["config"]["sweeps"] == 3

    # voxelize reads what is there, and refuses more sweeps than the world holds in one line.
    build_occupancy(three, "v1.0-mini", "all", tmp_path / "occ3.h5", TEST_GRID, sweeps=3, progress=False)
    with pytest.raises(OccfeatError) as e:
        build_occupancy(three, "v1.0-mini", "all", tmp_path / "occ4.h5", TEST_GRID, sweeps=4, progress=False)
    assert "\n" not in str(e.value) and "holds 3 LiDAR sweep(s) per key frame; use --sweeps 3 or less" in str(e.value)
    assert not (tmp_path / "occ4.h5").exists()


@pytest.mark.parametrize("sweeps", [0, 11])
def test_sweeps_out_of_range_is_one_line_error(tmp_path, sweeps):
    with pytest.raises(OccfeatError, match=r"--sweeps must be in 1\.\.10") as e:
        write_dataroot(tmp_path / "out", SynthConfig(**TINY, sweeps=sweeps))
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_a_world_written_before_the_sweeps_field_is_still_complete(tmp_path):
    root = write_dataroot(tmp_path / "w", SynthConfig(**{**TINY, "samples_per_scene": 1}), progress=False)
    marker = json.loads((root / SYNTH_MARKER).read_text())
    del marker["config"]["sweeps"]  # what synth wrote before the field existed: every sweep
    (root / SYNTH_MARKER).write_text(json.dumps(marker))
    cfg = SynthConfig(**{**TINY, "samples_per_scene": 1})
    assert is_complete(root, cfg) and not is_complete(root, dataclasses.replace(cfg, sweeps=1))


def test_the_devkit_load_shows_progress_only_when_it_is_slow_and_never_when_off(tmp_path, monkeypatch, capsys):
    from occfeat.data import index

    root = write_dataroot(tmp_path / "w", SynthConfig(**{**TINY, "samples_per_scene": 1, "sweeps": 1}), progress=False)
    index.load_nuscenes(root, "v1.0-mini")
    assert capsys.readouterr().err == ""  # a tiny world loads well within the delay: no bar at all
    monkeypatch.setattr(index, "DEVKIT_BAR_DELAY_S", 0.0)  # as if it were v1.0-trainval
    index.load_nuscenes(root, "v1.0-mini")
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("nuScenes tables v1.0-mini") for line in lines) and " 100% " in lines[-1]
    index.load_nuscenes(root, "v1.0-mini", progress=False)
    assert capsys.readouterr().err == ""
