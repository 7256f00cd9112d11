"""Draws docs/perspective_targets.png: the perspective head's vehicle and map targets
(:class:`occfeat.perspective.PerspectiveTargets`) on one synthetic val frame, at stride 8 of the stored
images, to check by eye that projected boxes sit on the vehicles and map classes on the ground.

    python tools/draw_perspective_targets.py runs/study-perspective/dataroot --out docs/perspective_targets.png
"""

from __future__ import annotations

import argparse
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from occfeat.data.gt_cache import segmentation_gt  # noqa: E402
from occfeat.data.index import SampleIndex  # noqa: E402
from occfeat.data.voxelize import sweep_job  # noqa: E402
from occfeat.perspective import PerspectiveTargets  # noqa: E402
from occfeat.train.data import camera_rig  # noqa: E402
from occfeat.train.finetune import resolve_config  # noqa: E402

RECIPE = "recipes/finetune/synthetic-tiny.yaml"
STRIDE = 8
CAMERAS = (0, 1, 4)  # CAM_FRONT, CAM_FRONT_RIGHT, CAM_BACK_LEFT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataroot")
    ap.add_argument("--version", default="v1.0-mini")
    ap.add_argument("--split", default="synth_val")
    ap.add_argument("--sample", type=int, default=5)
    ap.add_argument("--out", default="docs/perspective_targets.png")
    args = ap.parse_args()

    index = SampleIndex(args.dataroot, args.version, args.split)
    token = index.tokens[args.sample]
    rec = index.record(token)
    rig = camera_rig(rec)
    H, W = rig.image_hw[0]
    vcfg, mcfg = (resolve_config(RECIPE, task, 1.0) for task in ("vehicle", "map"))
    with tempfile.TemporaryDirectory() as gt_folder:
        vgt = segmentation_gt(index, vcfg.grid, "vehicle", vcfg.gt, gt_folder, progress=False)
        mgt = segmentation_gt(index, mcfg.grid, "map", mcfg.gt, gt_folder, progress=False)
        vehicle = PerspectiveTargets(vcfg.grid, boxes=vgt.source.boxes)(token, rig.cam_T_ego, rig.K, (H, W), STRIDE)
        ground = PerspectiveTargets(mcfg.grid, map_gt=mgt, lidar={token: sweep_job(rec, 1)})(token, rig.cam_T_ego, rig.K, (H, W), STRIDE)

    classes = list(mcfg.gt.map_layers)
    colors = plt.cm.tab10(np.arange(len(classes)))[:, :3]
    fig, axes = plt.subplots(2, len(CAMERAS), figsize=(15, 6.2))
    for col, s in enumerate(CAMERAS):
        name = rec.cameras[s].channel
        img = np.asarray(Image.open(rig.paths[s]).convert("RGB").resize((W // 2, H // 2)))
        ax = axes[0, col]
        ax.imshow(img)
        overlay = np.zeros((*vehicle["pv_target"].shape[-2:], 4))
        overlay[vehicle["pv_target"][s, 0] > 0] = [1, 0, 0, 0.55]
        ax.imshow(overlay, extent=(0, img.shape[1], img.shape[0], 0), interpolation="nearest")
        ax.set_title(f"{name}: vehicle target (red)", fontsize=9)
        ax.axis("off")
        m = ground["pv_target"][s] > 0
        rgb = np.full((*m.shape[1:], 3), 0.85)
        for c in range(len(classes)):
            rgb[m[c]] = colors[c]
        rgb[~ground["pv_valid"][s]] = 0.15
        axes[1, col].imshow(rgb)
        axes[1, col].set_title(f"{name}: map targets", fontsize=9)
        axes[1, col].axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in range(len(classes))]
    handles += [plt.Rectangle((0, 0), 1, 1, color=(0.85,) * 3), plt.Rectangle((0, 0), 1, 1, color=(0.15,) * 3)]
    fig.legend(handles, classes + ["no map class (or occluded: LiDAR nearer than the ground)", "unknown (ground point outside the grid)"],
               loc="lower center", ncol=4, fontsize=9)
    fig.suptitle(f"Perspective targets of one synthetic val frame, at stride {STRIDE} of the stored {W}x{H} images (training: stride 8 of "
                 "the input). Top: boxes with >= 3 LiDAR points projected into the camera;\nbottom: each pixel's ray meets the ground, "
                 "the BEV map class there; a later class is drawn over an earlier one", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
