"""The synthetic world read back through the official nuscenes-devkit: tables, splits, geometry
(LiDAR vs boxes vs images vs map), determinism, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from occfeat.data.index import CAMERAS, EGO_BOX, SampleIndex, load_nuscenes, read_points
from occfeat.data.synth import SynthConfig, write_dataroot
from occfeat.data.synth.render import boxes_at, render_camera
from occfeat.data.synth.rig import LIDAR_MOUNT
from occfeat.data.synth.world import KIND_BUILDING, make_layout, make_scene
from occfeat.errors import OccfeatError
from occfeat.geometry import apply_4x4, invert_rigid, project_points, transform_from_pose

VERSION = "v1.0-mini"
TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
          "sample_annotation", "sample_data", "scene", "sensor", "visibility")


@pytest.fixture(scope="module")
def nusc(synth_root):
    return load_nuscenes(synth_root, VERSION)


def _pose(nusc, sd_token):
    sd = nusc.get("sample_data", sd_token)
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    ep = nusc.get("ego_pose", sd["ego_pose_token"])
    return sd, transform_from_pose(ep["rotation"], ep["translation"]), transform_from_pose(cs["rotation"], cs["translation"])


def test_tables_and_splits_resolve_through_the_devkit(synth_root, nusc):
    assert all((synth_root / VERSION / f"{t}.json").is_file() for t in TABLES)
    assert [s["name"] for s in nusc.scene] == ["scene-0061", "scene-0103"]
    splits = json.loads((synth_root / VERSION / "splits.json").read_text())
    assert splits == {"synth_train": ["scene-0061"], "synth_val": ["scene-0103"]}
    for split, name in (("mini_train", "scene-0061"), ("train", "scene-0061"), ("synth_train", "scene-0061"),
                        ("mini_val", "scene-0103"), ("val", "scene-0103"), ("synth_val", "scene-0103")):
        index = SampleIndex(synth_root, VERSION, split, nusc=nusc)
        assert [s["name"] for s in index.scenes] == [name] and len(index) == 6
    rec = SampleIndex(synth_root, VERSION, "synth_train", nusc=nusc)[0]
    assert rec.location == "singapore-onenorth"
    # 9 sweeps precede the first key frame, so 10-sweep accumulation works from the start
    sweeps = rec.sweeps(10)
    assert len(sweeps) == 10 and sum(s.is_key_frame for s in sweeps) == 1
    assert all("sweeps/LIDAR_TOP" in str(s.path) for s in sweeps[1:])
    assert np.all(np.diff([s.timestamp for s in sweeps]) == -50_000)
    # cameras fire after the LiDAR, at their own ego poses, intrinsics scaled to 480x270
    cams = {c.channel: c for c in rec.cameras}
    assert tuple(cams) == CAMERAS
    offsets = [c.timestamp - rec.timestamp for c in rec.cameras]
    assert all(0 < o <= 40_000 for o in offsets) and len(set(offsets)) == 6
    assert cams["CAM_FRONT"].K[0, 0] == pytest.approx(1266.4 * 480 / 1600)
    assert cams["CAM_BACK"].K[0, 0] < 0.7 * cams["CAM_FRONT"].K[0, 0]
    cam_pose = nusc.get("ego_pose", nusc.get("sample_data", cams["CAM_BACK"].token)["ego_pose_token"])
    assert not np.allclose(cam_pose["translation"], rec.global_T_ego[:3, 3])  # the ego moved meanwhile
    assert nusc.get("calibrated_sensor", nusc.get("sample_data", rec.lidar.token)["calibrated_sensor_token"])["rotation"] \
        == pytest.approx([0.7071068, 0, 0, -0.7071068], abs=1e-6)


def test_lidar_format_and_no_returns_from_the_ego_body(nusc, synth_root):
    lidar_sds = [sd for sd in nusc.sample_data if sd["filename"].endswith(".pcd.bin")]
    assert len(lidar_sds) == 2 * (9 + 5 * 10 + 1)
    for sd in lidar_sds[::7]:
        pts = read_points(synth_root / sd["filename"])
        assert pts.dtype == np.float32 and pts.shape[1] == 5 and len(pts) > 10_000
        assert set(np.unique(pts[:, 4])) <= set(range(LIDAR_MOUNT.beams))
        ego_T_lidar = transform_from_pose(LIDAR_MOUNT.rotation_wxyz, LIDAR_MOUNT.translation)
        e = apply_4x4(ego_T_lidar, pts[:, :3].astype(np.float64))
        inside = np.all([(e[:, a] >= lo) & (e[:, a] <= hi) for a, (lo, hi) in enumerate(EGO_BOX)], axis=0)
        assert not inside.any()
        assert (np.abs(e[:, 2]) < 1e-4).mean() > 0.3  # ground returns lie on z = 0 of the ego frame


def test_num_lidar_pts_agrees_with_devkit_points_in_box(nusc, synth_root):
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import points_in_box

    n = 0
    for sample in nusc.sample:
        path, boxes, _ = nusc.get_sample_data(sample["data"]["LIDAR_TOP"])
        pc = LidarPointCloud.from_file(path)
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            assert points_in_box(box, pc.points[:3]).sum() == ann["num_lidar_pts"], ann["token"]
            n += ann["num_lidar_pts"] > 0
    assert n > 100


def test_enough_vehicles_near_the_ego_for_bev_segmentation(nusc):
    frames_with_cars = 0
    for sample in nusc.sample:
        _, g_T_e, _ = _pose(nusc, sample["data"]["LIDAR_TOP"])
        near = [a for a in sample["anns"] if nusc.get("sample_annotation", a)["category_name"].startswith("vehicle")
                and np.abs(apply_4x4(invert_rigid(g_T_e), np.array([nusc.get("sample_annotation", a)["translation"]]))[0, :2]).max() < 25]
        frames_with_cars += len(near) >= 2
    assert frames_with_cars >= 0.8 * len(nusc.sample)
    assert {v["token"] for v in nusc.visibility} >= {a["visibility_token"] for a in nusc.sample_annotation}
    assert {"1", "4"} <= {a["visibility_token"] for a in nusc.sample_annotation}


def test_ego_on_drivable_area_and_every_map_layer_around_it(nusc, synth_root):
    from nuscenes.map_expansion.map_api import NuScenesMap

    nmap = NuScenesMap(str(synth_root), "singapore-onenorth")
    for pose in nusc.ego_pose:
        assert nmap.layers_on_point(*pose["translation"][:2], layer_names=["drivable_area"])["drivable_area"], pose["token"]
    polygon_layers = ["drivable_area", "road_segment", "lane", "ped_crossing", "walkway", "carpark_area", "stop_line"]
    seen = dict.fromkeys(polygon_layers + ["road_divider", "lane_divider"], False)
    for sample in nusc.sample:
        _, g_T_e, _ = _pose(nusc, sample["data"]["LIDAR_TOP"])
        patch = (g_T_e[0, 3], g_T_e[1, 3], 100.0, 100.0)
        masks = nmap.get_map_mask(patch, 0.0, polygon_layers, canvas_size=(200, 200))
        for name, m in zip(polygon_layers, masks):
            seen[name] |= bool(m.any())
        # car parks sit in some blocks only: within 100 m
        box = (g_T_e[0, 3] - 100.0, g_T_e[1, 3] - 100.0, g_T_e[0, 3] + 100.0, g_T_e[1, 3] + 100.0)
        seen["carpark_area"] |= bool(nmap.get_records_in_patch(box, ["carpark_area"])["carpark_area"])
        for name, geoms in nmap.get_map_geom(patch, 0.0, ["road_divider", "lane_divider"]):
            seen[name] |= any(not g.is_empty for g in geoms)
    assert all(seen.values()), seen


def test_boxes_project_onto_the_rendered_objects(nusc, synth_root):
    """Re-render a camera from the tables' poses: the pixel under each well-visible annotation's
    centre shows that agent, and the stored JPEG is that render."""
    from PIL import Image

    cfg = SynthConfig(scenes=2, samples_per_scene=6, image_size=(480, 270))
    layout = make_layout(cfg.seed, left_hand=True)
    checked = matched = 0
    for scene_index, scene_rec in enumerate(nusc.scene):
        scene = make_scene(layout, cfg.seed, scene_index, 2.5, 0.45)
        t0 = nusc.get("sample", scene_rec["first_sample_token"])["timestamp"]
        sample = nusc.get("sample", scene_rec["first_sample_token"])
        for channel in CAMERAS:
            sd, g_T_e, e_T_c = _pose(nusc, sample["data"][channel])
            t = (sd["timestamp"] - t0) / 1e6
            K = np.asarray(nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"])
            rgb, hit, _, bs, _, _ = render_camera(layout, boxes_at(layout, scene, t), g_T_e @ e_T_c, K, sd["width"],
                                                  sd["height"])
            stored = np.asarray(Image.open(synth_root / sd["filename"]), dtype=np.float64)
            assert np.abs(stored - rgb).mean() < 6.0
            c_T_g = invert_rigid(g_T_e @ e_T_c)
            agents_xy, _, _ = scene.agents.state(t)
            for ann_token in sample["anns"]:
                ann = nusc.get("sample_annotation", ann_token)
                if ann["visibility_token"] != "4" or not ann["category_name"].startswith("vehicle"):
                    continue
                uv, front = project_points(K, apply_4x4(c_T_g, np.array([ann["translation"]])))
                u, v = int(uv[0, 0]), int(uv[0, 1])
                if not (front[0] and 0 <= u < sd["width"] and 0 <= v < sd["height"]):
                    continue
                agent = bs.agent[hit[v, u]] if hit[v, u] >= 0 else -1
                # the agent drawn there is the annotated one (it may have moved <0.5 m in the camera delay)
                matched += agent >= 0 and np.linalg.norm(agents_xy[agent] - ann["translation"][:2]) < 0.5
                checked += 1
    # >= 80 % visible: a pole or another object may still hide the very centre now and then
    assert checked >= 5 and matched >= 0.85 * checked, (matched, checked)


def test_static_lidar_points_land_on_building_faces(nusc, synth_root):
    from occfeat.data.synth.render import KIND_INTENSITY

    layout = make_layout(0, left_hand=True)
    sd, g_T_e, e_T_l = _pose(nusc, nusc.sample[0]["data"]["LIDAR_TOP"])
    pts = read_points(synth_root / sd["filename"])
    bld = apply_4x4(g_T_e @ e_T_l, pts[pts[:, 3] == KIND_INTENSITY[KIND_BUILDING], :3].astype(np.float64))
    assert len(bld) > 50
    boxes = layout.static_boxes[layout.static_kinds == KIND_BUILDING]
    rel = np.abs(bld[:, None, :] - boxes[None, :, :3])  # buildings are axis-aligned (yaw 0)
    excess = rel - boxes[None, :, 3:6]  # <= 0 inside; on a face: max over axes == 0
    on_face = np.abs(excess.max(axis=2)) < 1e-3
    assert on_face.any(axis=1).all()


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    cfg = SynthConfig(scenes=1, samples_per_scene=2, image_size=(64, 36), seed=3)
    roots = [write_dataroot(tmp_path / n, cfg) for n in ("a", "b")]
    other = write_dataroot(tmp_path / "c", SynthConfig(scenes=1, samples_per_scene=2, image_size=(64, 36), seed=4))

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = files(roots[0]), files(roots[1]), files(other)
    assert a == b and len(a) > 20
    assert sum(name.startswith("occfeat_semantics/") for name in a) == 2 * 6  # the label PNGs are covered too
    assert a["v1.0-mini/sample_annotation.json"] != c.get("v1.0-mini/sample_annotation.json")
    assert not list(tmp_path.glob(".*synth-tmp"))


@pytest.mark.parametrize(
    "cfg, message",
    [
        (SynthConfig(scenes=0), "--scenes"),
        (SynthConfig(samples_per_scene=0), "--samples-per-scene"),
        (SynthConfig(map_name="boston"), "--map"),
        (SynthConfig(version="v1.0-test"), "--version"),
        (SynthConfig(image_size=(8, 8)), "--image-size"),
    ],
)
def test_bad_config_is_one_line_error_and_writes_nothing(tmp_path, cfg, message):
    with pytest.raises(OccfeatError, match=message) as e:
        write_dataroot(tmp_path / "out", cfg)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_non_empty_out_is_kept_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OccfeatError, match="--overwrite"):
        write_dataroot(out, SynthConfig(scenes=1, samples_per_scene=1, image_size=(32, 18)))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    write_dataroot(out, SynthConfig(scenes=1, samples_per_scene=1, image_size=(32, 18)), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / VERSION / "scene.json").is_file()


def test_cli_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from occfeat.cli.main import app

    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "o"), "--image-size", "1600by900"])
    assert res.exit_code == 2 and "error: --image-size" in res.output
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "o"), "--scenes", "0"])
    assert res.exit_code == 2 and "error: --scenes" in res.output
    assert not (tmp_path / "o").exists()


def test_dataroot_is_marked_synthetic(synth_root, tmp_path):
    from occfeat.data.index import is_synthetic

    assert is_synthetic(synth_root)
    assert not is_synthetic(tmp_path)


def test_ego_and_traffic_turn_at_intersections_and_stay_on_the_road():
    """The richer world: in most scenes the ego's yaw sweeps a quarter turn, and every turning vehicle
    (ego included) keeps its centre on the road surface (no sidewalk, grass or car park) all the way."""
    from occfeat.data.synth.render import _ground_args, ground_material
    from occfeat.data.synth.world import ASPHALT, WHITE_PAINT, YELLOW_PAINT, ZEBRA

    layout = make_layout(1, left_hand=True)
    road = {ASPHALT, WHITE_PAINT, YELLOW_PAINT, ZEBRA}
    times = np.arange(-0.45, 7.5 + 1e-9, 0.25)
    sweeps, turning_agents = [], 0
    for index in range(12):
        scene = make_scene(layout, 1, index, 7.5, 0.45)
        xy, yaw = scene.ego.state(times)
        sweeps.append(np.ptp(np.unwrap(yaw)))
        points = list(xy)
        turners = np.flatnonzero(np.asarray(scene.agents.turn_sign) != 0)
        turning_agents += len(turners)
        for t in times:
            points += list(scene.agents.state(t)[0][turners])
        off = [p for p in points if ground_material(p[0], p[1], *_ground_args(layout)) not in road]
        assert not off, (index, off[:3])
    sweeps = np.degrees(sweeps)
    assert np.sum(np.abs(sweeps - 90.0) < 1.0) >= 6, sweeps  # quarter turns in at least half the scenes
    assert np.all((sweeps < 20.0) | (np.abs(sweeps - 90.0) < 1.0)), sweeps  # the others change lanes at most
    assert turning_agents >= 24
