"""The semantic label PNGs synth writes beside each camera JPEG: one per image, the image's size,
valid ids, and labels that agree with the geometry in the devkit tables."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from occfeat.data.index import CAMERAS, load_nuscenes
from occfeat.data.synth import SynthConfig, is_complete, write_dataroot
from occfeat.data.synth.render import boxes_at, render_camera
from occfeat.data.synth.semantics import SEMANTIC_CLASSES, SEMANTICS_DIR, semantics_path
from occfeat.data.synth.world import make_layout, make_scene
from occfeat.geometry import apply_4x4, invert_rigid, transform_from_pose

VERSION = "v1.0-mini"
CLASS = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}
# the annotation categories each agent class may be drawn from
AGENT_CATEGORIES = {"car": ("vehicle.car",), "large_vehicle": ("vehicle.truck", "vehicle.bus", "vehicle.trailer",
                    "vehicle.construction"), "two_wheeler": ("vehicle.motorcycle", "vehicle.bicycle"),
                    "pedestrian": ("human.pedestrian",)}


@pytest.fixture(scope="module")
def nusc(synth_root):
    return load_nuscenes(synth_root, VERSION)


def test_semantics_path_mirrors_the_camera_filename(tmp_path):
    assert semantics_path(tmp_path, "samples/CAM_FRONT/a__CAM_FRONT__1.jpg") == \
        tmp_path / SEMANTICS_DIR / "samples" / "CAM_FRONT" / "a__CAM_FRONT__1.png"
    assert len(SEMANTIC_CLASSES) == len(set(SEMANTIC_CLASSES)) == 14 and SEMANTIC_CLASSES[0] == "sky"


def test_every_camera_image_has_a_label_png_of_its_size(nusc, synth_root):
    cams = [sd for sd in nusc.sample_data if sd["fileformat"] == "jpg"]
    assert len(cams) == 2 * 6 * 6
    seen = np.zeros(len(SEMANTIC_CLASSES), dtype=np.int64)
    for sd in cams:
        png = Image.open(semantics_path(synth_root, sd["filename"]))
        assert png.format == "PNG" and png.mode == "L"
        assert png.size == Image.open(synth_root / sd["filename"]).size == (sd["width"], sd["height"])
        ids = np.asarray(png)
        assert ids.max() < len(SEMANTIC_CLASSES)
        seen += np.bincount(ids.ravel(), minlength=len(SEMANTIC_CLASSES))
    # the world shows nearly every class somewhere (two-wheelers are rare in a 2-scene world)
    assert {n for n, c in zip(SEMANTIC_CLASSES, seen) if c} >= set(SEMANTIC_CLASSES) - {"two_wheeler"}
    # only camera folders are mirrored: the devkit tables and the LiDAR are untouched
    assert {p.name for p in (synth_root / SEMANTICS_DIR / "samples").iterdir()} == set(CAMERAS)


def _box_at(nusc, ann: dict, t_us: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(box_T_global, size (w, l, h), slack in metres) of an annotation moved to time t_us by linear
    interpolation towards its next annotation (agents move straight at constant speed); without a next
    one, the box stays and the slack covers the <= 40 ms camera delay."""
    T = transform_from_pose(ann["rotation"], ann["translation"])
    slack = 0.5
    if ann["next"]:
        nxt = nusc.get("sample_annotation", ann["next"])
        t0, t1 = (nusc.get("sample", a["sample_token"])["timestamp"] for a in (ann, nxt))
        T[:3, 3] += (t_us - t0) / (t1 - t0) * (np.asarray(nxt["translation"]) - T[:3, 3])
        slack = 0.05
    return invert_rigid(T), np.asarray(ann["size"]), slack


def _inside(points: np.ndarray, box_T_global: np.ndarray, wlh: np.ndarray, slack: float) -> np.ndarray:
    local = apply_4x4(box_T_global, points)
    half = np.array([wlh[1] / 2 + slack, wlh[0] / 2 + slack, wlh[2] / 2 + 0.05])
    return np.all(np.abs(local) <= half, axis=1)


def test_labels_agree_with_the_geometry_of_the_tables(nusc, synth_root):
    """Re-render the first key frame of each scene from the tables' K and poses: the stored PNG is that
    render's labels; back-projected at the rendered distance, each drawn agent's pixels land in one
    annotated box of their class's categories (or in none: synth annotates only agents with LiDAR
    points, so a far or LiDAR-occluded agent is drawn but has no box), road pixels land on z = 0 of
    the ego frame inside the map's drivable area (sidewalk and grass outside it), and sky rays point
    above the horizon."""
    cfg = SynthConfig(scenes=2, samples_per_scene=6, image_size=(480, 270))
    layout = make_layout(cfg.seed, left_hand=True)
    matched = {name: [0, 0] for name in AGENT_CATEGORIES}  # agents, pixels in their annotated box
    drawn_pixels = dict.fromkeys(AGENT_CATEGORIES, 0)
    drivable = nusc.map[0]["mask"]  # the devkit's drivable-area raster (0.1 m)
    wrong_side = dict.fromkeys(("road", "sidewalk", "terrain"), 0)
    road = sky = 0
    for scene_index, scene_rec in enumerate(nusc.scene):
        scene = make_scene(layout, cfg.seed, scene_index, 2.5, 0.45)
        sample = nusc.get("sample", scene_rec["first_sample_token"])
        anns = [nusc.get("sample_annotation", a) for a in sample["anns"]]
        for channel in CAMERAS:
            sd = nusc.get("sample_data", sample["data"][channel])
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            pose = nusc.get("ego_pose", sd["ego_pose_token"])
            g_T_e = transform_from_pose(pose["rotation"], pose["translation"])
            e_T_c = transform_from_pose(cs["rotation"], cs["translation"])
            K = np.asarray(cs["camera_intrinsic"])
            t = (sd["timestamp"] - sample["timestamp"]) / 1e6
            img = render_camera(layout, boxes_at(layout, scene, t), g_T_e @ e_T_c, K, sd["width"], sd["height"])
            stored = np.asarray(Image.open(semantics_path(synth_root, sd["filename"])))
            assert np.array_equal(stored, img.label)
            # pixel-centre rays in the ego frame, unit length
            v, u = np.mgrid[: sd["height"], : sd["width"]]
            rays = np.stack([u + 0.5, v + 0.5, np.ones_like(u, dtype=np.float64)], -1).reshape(-1, 3) @ np.linalg.inv(K).T
            rays = rays @ e_T_c[:3, :3].T
            rays /= np.linalg.norm(rays, axis=1, keepdims=True)
            label, dist = stored.ravel(), img.distance.ravel().astype(np.float64)
            hit = np.isfinite(dist)
            points_ego = e_T_c[:3, 3] + rays * np.where(hit, dist, 0.0)[:, None]
            points_global = apply_4x4(g_T_e, points_ego)

            is_sky = label == CLASS["sky"]
            assert np.array_equal(is_sky, ~hit)
            assert np.all(rays[is_sky, 2] >= 0.0)  # above the horizon: the ray never meets the ground
            sky += is_sky.sum()
            is_road = label == CLASS["road"]
            assert np.abs(points_ego[is_road, 2]).max(initial=0.0) < 1e-3  # a truck behind can hide all road
            road += is_road.sum()
            for name in wrong_side:
                xy = points_global[label == CLASS[name], :2]
                xy = xy[np.all((xy > 1.0) & (xy < layout.spec.extent - 1.0), axis=1)]  # the map ends there, the roads don't
                # on the drivable area (road) or off it, at least 0.2 m from its edge in x and y
                on = np.stack([drivable.is_on_mask(xy[:, 0] + dx, xy[:, 1] + dy)
                               for dx, dy in ((0.2, 0), (-0.2, 0), (0, 0.2), (0, -0.2))])
                wrong_side[name] += (~on).all(0).sum() if name == "road" else on.all(0).sum()
            # the renderer's agent per pixel groups the pixels into objects
            box = img.hit.ravel()
            agent = np.where(box >= 0, img.boxes.agent[np.maximum(box, 0)], -1)
            boxes = [(ann["category_name"], _box_at(nusc, ann, sd["timestamp"])) for ann in anns]
            for name, prefixes in AGENT_CATEGORIES.items():
                mine = label == CLASS[name]
                assert np.all(agent[mine] >= 0), f"{name} pixels on a static box or the ground"
                drawn_pixels[name] += mine.sum()
                for a in np.unique(agent[mine]):
                    pts = points_global[mine & (agent == a)]
                    inside = [(cat, _inside(pts, *b).mean()) for cat, b in boxes]
                    same = max((f for cat, f in inside if cat.startswith(prefixes)), default=0.0)
                    if same >= 0.98:
                        matched[name][0] += 1
                        matched[name][1] += len(pts)
                    else:  # not annotated: then it lies in no annotated box at all
                        assert max((f for _, f in inside), default=0.0) < 0.02, (name, channel, inside)
    assert sky > 10_000 and road > 10_000
    # road lies on the map's drivable area, sidewalk and grass off it (up to the 0.1 m raster's edges)
    assert not any(wrong_side.values()), wrong_side
    assert matched["car"][0] >= 10 and matched["large_vehicle"][0] >= 2 and matched["pedestrian"][0] >= 2, matched
    # most agent pixels belong to annotated agents (the unannotated ones are far or hidden from the LiDAR)
    assert sum(p for _, p in matched.values()) >= 0.9 * sum(drawn_pixels.values()), (matched, drawn_pixels)


def test_same_seed_same_label_bytes_and_old_worlds_are_not_complete(tmp_path):
    cfg = SynthConfig(scenes=1, samples_per_scene=1, image_size=(64, 36), seed=5)
    roots = [write_dataroot(tmp_path / n, cfg) for n in ("a", "b")]
    files = [sorted((r / SEMANTICS_DIR).rglob("*.png")) for r in roots]
    assert len(files[0]) == 6
    assert [p.relative_to(roots[0]) for p in files[0]] == [p.relative_to(roots[1]) for p in files[1]]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(*files))
    # a world written before the sidecar existed is not taken as finished: synth must rewrite it
    assert is_complete(roots[0], cfg)
    shutil.rmtree(roots[0] / SEMANTICS_DIR)
    assert not is_complete(roots[0], cfg)
