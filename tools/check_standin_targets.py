"""Do the feature targets L_feat regresses say what is really in each voxel? A check through the exact
pretraining data path, on a synthetic world with the semantic stand-in teacher.

For sampled train key frames, the pretraining dataset (augmentation as in the recipe: random reference
camera, BEV flips) gives the occupied voxels of the frame R and their targets (the cameras' stand-in
features sampled at the voxel's projection, ``occfeat.data.targets.voxel_feature_targets``). Each target
is named by its nearest class vector; the truth comes from the annotations: a voxel whose centre lies in
an annotated vehicle box is a vehicle, a voxel of the layer that holds z = 0 outside every box is ground. With the
cameras' features shuffled (a wrong camera order) the agreement must collapse, which shows the check can
fail. This is a diagnostic for the study (REPORT.md), not a test: it needs a study's dataroot and caches.

With the study's random-teacher control cache (``caches/features-random-teacher.h5``) present, it also
asks how much of the same distinction a RANDOM-INIT ViT's features carry: a nearest-centroid probe
(cosine, two folds over the sampled frames) tells vehicle voxels from ground voxels with each teacher's
targets. A random teacher is a control without semantics only if that probe is near chance.

    python tools/check_standin_targets.py runs/study-synthetic   [--samples 24]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from nuscenes.utils.geometry_utils import points_in_box

    from occfeat.config import load_config
    from occfeat.data.index import load_nuscenes
    from occfeat.data.standin import class_vectors
    from occfeat.data.synth.semantics import SEMANTIC_CLASSES
    from occfeat.data.targets import occupied_voxel_centers, voxel_feature_targets
    from occfeat.geometry import apply_4x4, invert_rigid, transform_from_pose
    from occfeat.pipeline import recipe_path
    from occfeat.train.pretrain import PretrainConfig, PretrainTask

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="an `occfeat study` --out folder (dataroot/, caches/)")
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--recipe", default="pretrain/synthetic-tiny.yaml")
    args = ap.parse_args()

    if not (args.study / "pipeline.json").is_file():
        raise SystemExit(f"{args.study} holds no pipeline.json: pass the --out folder of a finished `occfeat study`")
    study = json.loads((args.study / "pipeline.json").read_text())["config"]
    root, version, split = args.study / "dataroot", study["synth"]["version"], study["train_split"]
    cfg = load_config(PretrainConfig, recipe_path(args.recipe), [])
    occ = args.study / "caches" / "occupancy.h5"
    task = PretrainTask(cfg, root, version, occ, args.study / "caches" / "features.h5", split)
    random_cache = args.study / "caches" / "features-random-teacher.h5"
    random_task = PretrainTask(cfg, root, version, occ, random_cache, split) if random_cache.is_file() else None
    probe = {"semantic stand-in": ([], []), "random-init ViT-S/14": ([], [])}  # per teacher: (features, is_vehicle) per frame
    spec = task.train_set.sources.features.spec
    if not spec.get("standin"):
        raise SystemExit(f"{args.study}/caches/features.h5 was not made by the semantic stand-in teacher")
    vectors = torch.from_numpy(class_vectors(len(SEMANTIC_CLASSES), spec["feature_dim"], spec["standin"]["seed"]))
    vehicle = [SEMANTIC_CLASSES.index(n) for n in ("car", "large_vehicle", "two_wheeler")]
    ground = [SEMANTIC_CLASSES.index(n) for n in ("road", "lane_marking", "crosswalk", "sidewalk", "parking", "terrain")]
    nusc = load_nuscenes(root, version)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(task.train_set), size=min(args.samples, len(task.train_set)), replace=False)
    counts = {"vehicle voxels": [0, 0, 0], "vehicle voxels above the ground layer": [0, 0, 0], "ground voxels": [0, 0, 0]}  # total, right, right with cameras shuffled
    named = {name: np.zeros(len(SEMANTIC_CLASSES), np.int64) for name in counts}  # what the targets say instead
    for i in picks:
        item = task.train_set[int(i)]
        batch = task.collate([item])
        feats = batch["features"].float()
        results = []
        for shuffled in (False, True):
            f = feats.roll(1, dims=1) if shuffled else feats  # every camera gets its neighbour's features
            idx, target, valid = voxel_feature_targets(batch["occupancy"], f, batch["K_orig"], batch["cam_T_ego"],
                                                       batch["image_hw_orig"], cfg.grid)
            results.append((idx[valid], (target[valid] @ vectors.T).argmax(1).numpy()))
        idx = results[0][0]
        centres_R = occupied_voxel_centers(idx, cfg.grid).numpy().astype(np.float64)
        # the truth: annotated boxes of this key frame, global → ego (LiDAR's pose) → R
        token = task.train_set.rigs[int(i)].token
        sd = nusc.get("sample_data", nusc.get("sample", token)["data"]["LIDAR_TOP"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        R_T_global = item["ref_T_ego"].numpy().astype(np.float64) @ invert_rigid(transform_from_pose(pose["rotation"], pose["translation"]))
        centres_global = apply_4x4(invert_rigid(R_T_global), centres_R)
        in_vehicle = np.zeros(len(idx), bool)
        in_any = np.zeros(len(idx), bool)
        for ann in nusc.get("sample", token)["anns"]:
            box = nusc.get_box(ann)
            box.wlh = box.wlh + 0.5  # cameras fire up to ~40 ms after the LiDAR: moving agents move a little
            inside = points_in_box(box, centres_global.T)
            in_any |= inside
            if nusc.get("sample_annotation", ann)["category_name"].startswith("vehicle"):
                in_vehicle |= inside
        # the ground (z = 0 of the ego frame, which R shares) lies in the layer whose cell holds z = 0
        dz = (cfg.grid.bounds[2][1] - cfg.grid.bounds[2][0]) / cfg.grid.shape[2]
        on_ground = np.abs(centres_R[:, 2]) < dz / 2
        vehicle_above, ground_only = in_vehicle & ~on_ground, on_ground & ~in_any
        teachers = [("semantic stand-in", item)] + ([("random-init ViT-S/14", random_task.train_set[int(i)])] if random_task else [])
        for teacher, it in teachers:
            b = task.collate([it])
            _, t, v = voxel_feature_targets(b["occupancy"], b["features"].float(), b["K_orig"], b["cam_T_ego"], b["image_hw_orig"], cfg.grid)
            t = torch.nn.functional.normalize(t[v], dim=1)
            keep = vehicle_above | ground_only
            probe[teacher][0].append(t[torch.from_numpy(keep)])
            probe[teacher][1].append(torch.from_numpy(vehicle_above[keep]))
        for name, mask, classes in (("vehicle voxels", in_vehicle, vehicle),
                                    ("vehicle voxels above the ground layer", in_vehicle & ~on_ground, vehicle),
                                    ("ground voxels", on_ground & ~in_any, ground)):
            counts[name][0] += int(mask.sum())
            counts[name][1] += int(np.isin(results[0][1][mask], classes).sum())
            counts[name][2] += int(np.isin(results[1][1][mask], classes).sum())
            named[name] += np.bincount(results[0][1][mask], minlength=len(SEMANTIC_CLASSES))
    print(f"{len(picks)} train key frames of {args.study}, recipe {args.recipe} (augmentation {'on' if cfg.augment.enabled else 'off'})")
    for name, (n, right, shuffled) in counts.items():
        print(f"{name}: {n}; target names the right kind: {100 * right / max(n, 1):.1f} % "
              f"(cameras' features shuffled: {100 * shuffled / max(n, 1):.1f} %); named: "
              + ", ".join(f"{SEMANTIC_CLASSES[k]} {100 * named[name][k] / max(n, 1):.0f} %" for k in np.argsort(-named[name])[:5]))

    for teacher, (feats, labels) in probe.items():
        if not feats:
            continue
        half = len(feats) // 2
        right = total = 0
        for train, test in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
            x, y = torch.cat(feats[train]), torch.cat(labels[train])
            centroids = torch.nn.functional.normalize(torch.stack([x[~y].mean(0), x[y].mean(0)]), dim=1)
            xt, yt = torch.cat(feats[test]), torch.cat(labels[test])
            pred = (xt @ centroids.T).argmax(1).bool()
            # balanced accuracy: vehicles are the rarer class
            right += 0.5 * ((pred[yt]).float().mean() + (~pred[~yt]).float().mean()).item()
            total += 1
        print(f"vehicle vs ground from the {teacher} teacher's targets (nearest centroid, 2 folds): "
              f"balanced accuracy {100 * right / total:.1f} % (chance 50 %)")


if __name__ == "__main__":
    main()
