"""IoU of small, medium and large vehicles for finished vehicle finetune runs (DistillBEV's claim that
balancing helps small objects is about them; the split's IoU mixes every size into one number).

Each run's last checkpoint is evaluated again on its val split (the segmentation model alone, as
`occfeat evaluate`, sigmoid >= 0.5); every cell goes to the size bin of its nearest ground-truth vehicle
(box footprint, ``occfeat.metrics.SIZE_BINS``; :func:`occfeat.metrics.iou_by_size`), intersections and
unions are summed over the split. Prints one line per run, the mean and std per row (run-dir name
without the seed) and fraction, and writes the counts with ``--csv``.

    python tools/size_iou.py runs/study-perspective/finetune/vehicle-*-f0.1-s* --csv size_iou.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from occfeat.data.gt import task_classes
from occfeat.data.index import SampleIndex
from occfeat.metrics import THRESHOLD, iou_by_size
from occfeat.models import build_network
from occfeat.train.distill import BoxMaps
from occfeat.train.finetune import config_from_dict, segmentation_set
from occfeat.train.init import SegmentationModel
from occfeat.train.loop import load_checkpoint


def run_counts(run_dir: Path) -> dict[str, tuple[int, int]]:
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt", if_damaged="rerun it")
    payload = ckpt["task"]
    cfg = config_from_dict({k: v for k, v in ckpt["config"].items() if k not in ("init", "data")})
    if cfg.task != "vehicle":
        raise SystemExit(f"{run_dir} segments '{cfg.task}'; object sizes exist for vehicles only")
    data = payload["data"]
    network = build_network(dataclasses.replace(cfg.network, random_init=True, backbone_weights=None), cfg.grid)
    model = SegmentationModel(network, len(task_classes(cfg.task, cfg.gt)))
    model.load_state_dict(payload["model"])
    model.eval()
    index = SampleIndex(data["dataroot"], data["version"], data["val_split"])
    dataset = segmentation_set(index, index.tokens, cfg, Path(data["gt_cache"]), train=False, progress=False)
    boxes = BoxMaps(dataset.gt.source, None)
    cell_m2 = float(np.prod(cfg.grid.voxel_size[:2]))
    total: dict[str, list[int]] = {}
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            batch = {k: v[None] for k, v in item.items() if isinstance(v, torch.Tensor)}
            pred = (torch.sigmoid(model(batch)[0, 0]) >= THRESHOLD).numpy()
            area = boxes(item["token"])["box_area"] * cell_m2
            for name, (inter, union) in iou_by_size(pred, item["target"][0].numpy(), item["valid"].numpy(), area).items():
                t = total.setdefault(name, [0, 0])
                t[0] += inter
                t[1] += union
    return {k: (v[0], v[1]) for k, v in total.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--csv", type=Path)
    args = ap.parse_args()
    rows = []
    for run in args.runs:
        counts = run_counts(run)
        m = re.fullmatch(r"vehicle-(.+)-f([0-9.e-]+)-s(\d+)", run.name)
        row = {"run": str(run), "row": m.group(1) if m else run.name, "fraction": float(m.group(2)) if m else None,
               "seed": int(m.group(3)) if m else None}
        for name, (inter, union) in counts.items():
            row[f"{name} intersection"], row[f"{name} union"] = inter, union
            row[f"{name} IoU"] = inter / union if union else float("nan")
        rows.append(row)
        print(run.name, "  ".join(f"{k}: IoU {100 * i / u:.1f} (union {u})" if u else f"{k}: -" for k, (i, u) in counts.items()), flush=True)
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    iou = [c for c in table.columns if c.endswith("IoU")]
    print((table.groupby(["fraction", "row"])[iou].agg(["mean", "std"]) * 100).round(1).to_string())


if __name__ == "__main__":
    main()
