"""Where segmentation ground truth comes from during finetuning and evaluation.

:func:`segmentation_gt` gives the picklable source a ``SegmentationDataset`` calls per sample:
``gt(token, ref_T_ego)`` → ``{"target", "valid"}`` (+ ``"center"``, ``"offset"`` for vehicles), exact in the
reference frame R (see ``occfeat/data/gt.py``). Vehicles are always drawn on the fly from the split's box
table (a few ms per sample). Map masks in the identity frame (evaluation, training without the random
reference camera) are read from a dense cache, computed once per split; in any other frame they are
tested on the fly against the map geometry each worker loaded once.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from occfeat.data.gt import GT_FORMAT, GtConfig, VehicleGt, box_table, check_task, task_classes
from occfeat.data.gt_map import MapGt
from occfeat.data.store import CacheReader, CacheWriter, Payload
from occfeat.grid import BevGrid
from occfeat.progress import progress_bar


def gt_spec(index, grid: BevGrid, task: str, cfg: GtConfig) -> dict:
    """What makes two GT caches incompatible."""
    return {
        "kind": "occfeat-gt",
        "format": GT_FORMAT,
        "task": task,
        "classes": list(task_classes(task, cfg)),
        "grid": grid.spec(),
        "dataroot": str(Path(index.dataroot).resolve()),
        "version": index.version,
        "split": index.split,
        "vehicle_rule": cfg.vehicle_rule,
        "map_layers": {k: list(v) for k, v in cfg.map_layers.items()},
        "divider_width": cfg.divider_width,
        "invisible": list(cfg.invisible),
        "packed_axis": -1,
    }


def default_gt_path(folder: str | Path, index, grid: BevGrid, task: str, cfg: GtConfig) -> Path:
    """``<folder>/gt-<version>-<split>-<task>-<hash of the spec>.h5``: one file per setting."""
    digest = hashlib.sha1(json.dumps(gt_spec(index, grid, task, cfg), sort_keys=True).encode()).hexdigest()[:10]
    return Path(folder) / f"gt-{index.version}-{index.split}-{task}-{digest}.h5"


class GtCache:
    """Ground truth read from a finished cache: ``cache[token] -> (target (C,X,Y) bool, valid (X,Y) bool)``.

    Rows are bit-packed along Y (``np.packbits``); a 200x200 map sample takes 25 KB instead of 200 KB.
    """

    def __init__(self, path: str | Path, expect: dict):
        self.reader = CacheReader(path, expect=expect)
        self.shape = tuple(expect["grid"]["shape"][:2])

    def __getitem__(self, token: str) -> tuple[np.ndarray, np.ndarray]:
        y = self.shape[1]
        target = np.unpackbits(self.reader.get("target", token), axis=-1, count=y).astype(bool)
        valid = np.unpackbits(self.reader.get("mask", token), axis=-1, count=y).astype(bool)
        return target, valid


def gt_source(index, grid: BevGrid, task: str, cfg: GtConfig = GtConfig(), folder: str | Path | None = None):
    """The on-the-fly source of ``task``: ``source(token, ref_T_ego)`` → dict of arrays."""
    if check_task(task) == "vehicle":
        return VehicleGt(box_table(index, folder), grid, cfg)
    return MapGt.from_index(index, grid, cfg)


GT_LOCK_WAIT_S = 3600.0  # another finetune run building the same split's ground truth


def build_gt_cache(index, grid: BevGrid, task: str, path: str | Path, cfg: GtConfig = GtConfig(), block_size: int = 64,
                   progress: bool = True, source=None) -> GtCache:
    """Compute the split's identity-frame ground truth once into ``path`` (resumable; a finished cache is reused)."""
    classes = task_classes(task, cfg)
    spec = gt_spec(index, grid, task, cfg)
    X, Y = grid.shape[:2]
    packed_y = (Y + 7) // 8
    payloads = {"target": Payload((len(classes), X, packed_y), "uint8"), "mask": Payload((X, packed_y), "uint8")}
    # Finetune runs side by side share this cache: wait for the one building it, then reuse its file.
    with CacheWriter(path, index.tokens, spec, payloads, block_size, lock_wait_s=GT_LOCK_WAIT_S) as writer:
        pending = writer.pending()
        if pending:
            source = source or gt_source(index, grid, task, cfg)
            with progress_bar(total=sum(b - a for a, b in pending), desc=f"ground truth ({task}, {index.split})", enabled=progress) as bar:
                for start, stop in pending:
                    targets, masks = [], []
                    for token in index.tokens[start:stop]:
                        gt = source(token)
                        targets.append(np.packbits(gt["target"], axis=-1))
                        masks.append(np.packbits(gt["valid"], axis=-1))
                        bar.update(1)
                    writer.write_block(start, stop, {"target": np.stack(targets), "mask": np.stack(masks)})
        writer.finalize()
    return GtCache(path, spec)


def _is_identity(T: np.ndarray | None) -> bool:
    return T is None or np.allclose(T, np.eye(4), rtol=0.0, atol=1e-9)


class SegmentationGt:
    """What ``SegmentationDataset.targets`` calls: ``gt(token, ref_T_ego=None)`` → dict of arrays. In the
    identity frame reads ``cache`` (when given); in any other frame draws with ``source``."""

    def __init__(self, source, cache: GtCache | None = None):
        self.source, self.cache = source, cache

    def __call__(self, token: str, ref_T_ego: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if self.cache is not None and _is_identity(ref_T_ego):
            target, valid = self.cache[token]
            return {"target": target, "valid": valid}
        return self.source(token, ref_T_ego)


def segmentation_gt(index, grid: BevGrid, task: str, cfg: GtConfig, folder: str | Path, progress: bool = True) -> SegmentationGt:
    """The split's ground-truth source; map masks in the identity frame are cached in ``folder`` (built
    on first use), the vehicle box table too."""
    source = gt_source(index, grid, task, cfg, folder)
    if task == "vehicle":
        return SegmentationGt(source)
    path = default_gt_path(folder, index, grid, task, cfg)
    return SegmentationGt(source, build_gt_cache(index, grid, task, path, cfg, progress=progress, source=source))


def time_gt(index, grid: BevGrid, task: str, n: int = 5, cfg: GtConfig = GtConfig(), ref_T_ego: np.ndarray | None = None) -> float:
    """Mean seconds per sample to draw ground truth on the fly in frame ``ref_T_ego`` (the first,
    map-loading call excluded)."""
    source = gt_source(index, grid, task, cfg)
    source(index.tokens[0], ref_T_ego)
    m = max(1, min(n, len(index)))
    t0 = time.perf_counter()
    for token in index.tokens[:m]:
        source(token, ref_T_ego)
    return (time.perf_counter() - t0) / m
