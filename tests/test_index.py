"""The devkit-backed sample index on the synthetic world, and LiDAR file checks."""

import numpy as np
import pytest

from occfeat.data.index import CAMERAS, SampleIndex, read_points
from occfeat.errors import OccfeatError
from occfeat.geometry import apply_4x4, invert_rigid


def test_read_points_rejects_partial_trailing_float(tmp_path):
    pts = np.arange(20, dtype=np.float32).reshape(4, 5)
    good = tmp_path / "a.pcd.bin"
    pts.tofile(good)
    np.testing.assert_array_equal(read_points(good), pts)
    bad = tmp_path / "b.pcd.bin"
    bad.write_bytes(good.read_bytes() + b"\x00")  # 81 bytes: np.fromfile alone would read 80
    with pytest.raises(OccfeatError, match="truncated \\(81 bytes"):
        read_points(bad)
    with pytest.raises(OccfeatError, match="missing"):
        read_points(tmp_path / "none.pcd.bin")


def test_index_orders_and_composes_through_each_sensors_pose(synth_root):
    idx = SampleIndex(synth_root, "v1.0-mini", "synth_train")
    assert len(idx) > 0 and len(set(idx.tokens)) == len(idx)
    stamps = [idx.nusc.get("sample", t)["timestamp"] for t in idx.tokens]
    assert stamps == sorted(stamps)  # one scene here: key frames in time order
    rec = idx[0]
    assert tuple(c.channel for c in rec.cameras) == CAMERAS
    # cam_T_ego composes camera extrinsics and the camera's own ego pose: recompute it from the tables
    nusc = idx.nusc
    from occfeat.geometry import transform_from_pose

    cam = rec.cameras[0]
    sd = nusc.get("sample_data", cam.token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    global_T_cam = transform_from_pose(pose["rotation"], pose["translation"]) @ transform_from_pose(cs["rotation"], cs["translation"])
    p_ego = np.array([[10.0, 1.0, 0.5]])
    np.testing.assert_allclose(apply_4x4(cam.cam_T_ego, p_ego), apply_4x4(invert_rigid(global_T_cam) @ rec.global_T_ego, p_ego), atol=1e-9)
    # the previous sweeps come back in time order, each with its own transform
    sweeps = rec.sweeps(3)
    assert sweeps[0].is_key_frame and [s.timestamp for s in sweeps] == sorted((s.timestamp for s in sweeps), reverse=True)
    with pytest.raises(OccfeatError, match="has no scenes"):
        SampleIndex(synth_root, "v1.0-mini", "test", nusc=nusc)
    with pytest.raises(OccfeatError, match="no 'v1.0-trainval' folder"):
        SampleIndex(synth_root, "v1.0-trainval", "train")
