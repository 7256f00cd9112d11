"""Evaluation of a finetuned segmentation model on a split: IoU accumulated over the whole split
(:class:`occfeat.metrics.IoUAccumulator`) and a few samples for the report's figure. The IoU goes into
the run's ``metrics.json`` (:class:`occfeat.train.records.FinetuneMetrics`).

``samples.npz``: ``tokens`` (n,), ``cameras`` (n, S, H, W, 3) uint8 at the network's input size,
``camera_names`` (S,) (CAMERAS order), ``target`` (n, C, X, Y) bool, ``prob`` (n, C, X, Y) float16 (the
sigmoid, not thresholded), ``valid`` (n, X, Y) bool, ``classes`` (C,), ``grid`` (the BevGrid as JSON, so the
figure's axes are in metres). Files written before camera_names/grid (with 1/4-size thumbnails) still plot
(:func:`occfeat.bev_plots.load_samples`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from occfeat.data.index import CAMERAS
from occfeat.files import writing
from occfeat.grid import BevGrid
from occfeat.metrics import IoUAccumulator
from occfeat.progress import progress_bar


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
            imgs = batch["images"][:n]  # (n, S, 3, H, W) in [0, 1], at the input size: the figure names each tile
            keep["tokens"] += list(tokens[:n])
            keep["cameras"].append((imgs.permute(0, 1, 3, 4, 2) * 255).round().byte().cpu().numpy())
            keep["target"].append(batch["target"][:n].bool().cpu().numpy())
            keep["prob"].append(torch.sigmoid(logits[:n]).half().cpu().numpy())
            keep["valid"].append(batch["valid"][:n].bool().cpu().numpy())
    model.train(was_training)
    samples = {k: np.array(v) if k == "tokens" else np.concatenate(v) for k, v in keep.items() if v}
    samples["classes"] = np.array(classes)
    samples["camera_names"] = np.array(CAMERAS)
    return acc.summary(), samples


def write_samples(run_dir: Path, samples: dict[str, np.ndarray] | None, grid: BevGrid) -> None:
    """Write ``samples.npz`` atomically into ``run_dir`` (nothing when no sample was kept), with the
    ``grid`` its BEV arrays live on."""
    if samples is not None and "tokens" in samples:
        tmp = run_dir / "samples.tmp.npz"
        with writing(run_dir / "samples.npz"):
            try:
                np.savez_compressed(tmp, **samples, grid=np.array(grid.to_json()))
                tmp.replace(run_dir / "samples.npz")
            finally:
                tmp.unlink(missing_ok=True)


def log_evaluation(run_dir: Path, step: int, result: dict, split: str, grid: BevGrid | None = None) -> None:
    """The evaluation in the run's TensorBoard view (:mod:`occfeat.train.tblog`): ``eval/<split>/mean_iou``
    and one scalar per class at ``step``, and, when ``samples.npz`` was just written (``grid`` given), each
    kept sample's BEV panels (ground truth, predicted probability, TP / FP / FN) as ``eval/<split>/sample_i``
    — the figure ``occfeat report`` draws, without the camera tiles."""
    import matplotlib.pyplot as plt

    from occfeat.bev_plots import bev_sample_figure, load_samples
    from occfeat.train.tblog import log_scalars, open_writer

    writer = open_writer(run_dir, suffix=".eval")
    try:
        log_scalars(writer, {"mean_iou": result["mean_iou"], "iou": result["iou"]}, step, prefix=f"eval/{split}")
        if grid is not None and (run_dir / "samples.npz").is_file():
            for i, s in enumerate(load_samples(run_dir / "samples.npz", grid)):
                s.cameras = None
                fig = bev_sample_figure(s, title=f"{run_dir.name}, step {step}: sample {s.token}")
                writer.add_figure(f"eval/{split}/sample_{i}", fig, step, close=True)
                plt.close(fig)
    finally:
        writer.close()
