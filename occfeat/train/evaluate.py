"""Evaluation of a finetuned segmentation model on a split: IoU accumulated over the whole split
(:class:`occfeat.metrics.IoUAccumulator`) and a few samples for the report's figure. The IoU goes into
the run's ``metrics.json`` (:class:`occfeat.train.records.FinetuneMetrics`).

``samples.npz``: ``tokens`` (n,), ``cameras`` (n, S, h, w, 3) uint8 thumbnails in CAMERAS order,
``target`` (n, C, X, Y) bool, ``prob`` (n, C, X, Y) float16, ``valid`` (n, X, Y) bool, ``classes`` (C,).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from occfeat.metrics import IoUAccumulator
from occfeat.progress import progress_bar
from occfeat.files import writing

THUMB_SCALE = 4  # camera thumbnails in samples.npz at 1/4 of the input size


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset,
    classes: tuple[str, ...],
    device: torch.device,
    batch_size: int = 4,
    num_workers: int = 0,
    n_samples: int = 3,
    progress: bool = True,
) -> tuple[dict, dict[str, np.ndarray]]:
    """(IoU summary of :meth:`IoUAccumulator.summary`, samples for samples.npz) over ``dataset``.

    ``dataset`` items as :class:`occfeat.train.finetune.SegmentationDataset`; ``model(batch)`` → logits
    (B, C, X, Y). The first ``n_samples`` samples of the split are kept for the figure.
    """
    was_training = model.training
    model.eval()
    acc = IoUAccumulator(classes)
    keep: dict[str, list] = {"tokens": [], "cameras": [], "target": [], "prob": [], "valid": []}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=default_collate)
    for batch in progress_bar(loader, desc="evaluate", enabled=progress, unit="batch"):
        tokens = batch.pop("token")
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch).float()
        acc.update(logits, batch["target"], batch["valid"])
        n = min(n_samples - len(keep["tokens"]), len(tokens))
        if n > 0:
            imgs = batch["images"][:n]  # (n, S, 3, H, W)
            thumbs = F.avg_pool2d(imgs.flatten(0, 1), THUMB_SCALE).unflatten(0, imgs.shape[:2])
            keep["tokens"] += list(tokens[:n])
            keep["cameras"].append((thumbs.permute(0, 1, 3, 4, 2) * 255).round().byte().cpu().numpy())
            keep["target"].append(batch["target"][:n].bool().cpu().numpy())
            keep["prob"].append(torch.sigmoid(logits[:n]).half().cpu().numpy())
            keep["valid"].append(batch["valid"][:n].bool().cpu().numpy())
    model.train(was_training)
    samples = {k: np.array(v) if k == "tokens" else np.concatenate(v) for k, v in keep.items() if v}
    samples["classes"] = np.array(classes)
    return acc.summary(), samples


def write_samples(run_dir: Path, samples: dict[str, np.ndarray] | None) -> None:
    """Write ``samples.npz`` atomically into ``run_dir`` (nothing when no sample was kept)."""
    if samples is not None and "tokens" in samples:
        tmp = run_dir / "samples.tmp.npz"
        with writing(run_dir / "samples.npz"):
            try:
                np.savez_compressed(tmp, **samples)
                tmp.replace(run_dir / "samples.npz")
            finally:
                tmp.unlink(missing_ok=True)
