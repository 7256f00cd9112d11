"""Draws docs/perspective_targets.png: the perspective head's vehicle and map targets on one synthetic val frame
(run from the repository root after `occfeat study recipes/studies/synthetic-perspective.yaml --out runs/study-perspective`)."""
import numpy as np, matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
from PIL import Image
from occfeat.data.index import SampleIndex
from occfeat.data.gt import GtConfig
from occfeat.data.gt_cache import segmentation_gt
from occfeat.data.voxelize import sweep_job
from occfeat.perspective import PerspectiveTargets
from occfeat.train.data import camera_rig
from occfeat.train.finetune import resolve_config
root = "runs/study-perspective/dataroot"
index = SampleIndex(root, "v1.0-mini", "synth_val")
tok = index.tokens[5]
rec = index.record(tok); rig = camera_rig(rec)
cfg = resolve_config("recipes/finetune/synthetic-tiny.yaml", "vehicle", 1.0)
vg = segmentation_gt(index, cfg.grid, "vehicle", cfg.gt, "/tmp/pvgt", progress=False)
mcfg = resolve_config("recipes/finetune/synthetic-tiny.yaml", "map", 1.0)
mg = segmentation_gt(index, mcfg.grid, "map", mcfg.gt, "/tmp/pvgt", progress=False)
H, W = rig.image_hw[0]
veh = PerspectiveTargets(cfg.grid, boxes=vg.source.boxes)(tok, rig.cam_T_ego, rig.K, (H, W), 8)
mp = PerspectiveTargets(mcfg.grid, map_gt=mg, lidar={tok: sweep_job(rec, 1)})(tok, rig.cam_T_ego, rig.K, (H, W), 8)
classes = list(mcfg.gt.map_layers)
cams = [0, 1, 4]
fig, axes = plt.subplots(2, 3, figsize=(15, 6.2))
colors = plt.cm.tab10(np.arange(len(classes)))[:, :3]
for col, s in enumerate(cams):
    img = np.asarray(Image.open(rig.paths[s]).convert("RGB").resize((W // 2, H // 2)))
    ax = axes[0, col]; ax.imshow(img)
    v = veh["pv_target"][s, 0] > 0
    ov = np.zeros((*v.shape, 4)); ov[v] = [1, 0, 0, 0.55]
    ax.imshow(ov, extent=(0, img.shape[1], img.shape[0], 0), interpolation="nearest"); ax.set_title(f"{rec.cameras[s].channel}: vehicle target (red)", fontsize=9); ax.axis("off")
    m = mp["pv_target"][s] > 0
    rgb = np.full((*m.shape[1:], 3), 0.85)
    for c in range(len(classes)):
        rgb[m[c]] = colors[c]
    rgb[~mp["pv_valid"][s]] = 0.15
    ax = axes[1, col]; ax.imshow(rgb); ax.set_title(f"{rec.cameras[s].channel}: map targets", fontsize=9); ax.axis("off")
handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in range(len(classes))] + [plt.Rectangle((0, 0), 1, 1, color=(0.85,) * 3), plt.Rectangle((0, 0), 1, 1, color=(0.15,) * 3)]
fig.legend(handles, classes + ["no map class (or occluded: LiDAR nearer than the ground)", "unknown (ground point outside the grid)"], loc="lower center", ncol=4, fontsize=9)
fig.suptitle("Perspective targets of one synthetic val frame, at stride 8 of the stored 480x270 images (training: stride 8 of 112x200). Top: boxes with >= 3 LiDAR points projected into the camera;\nbottom: each pixel's ray meets the ground, the BEV map class there; a later class is drawn over an earlier one", fontsize=10)
fig.tight_layout(rect=(0, 0.07, 1, 1)); fig.savefig("docs/perspective_targets.png", dpi=80)
print(classes)
