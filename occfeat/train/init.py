"""The segmentation model a finetuning run starts from: the BEV network + a new segmentation head, the
network from ImageNet weights (or random, the paper's "None" row) or from a pretraining run's checkpoint
(:func:`build_model`), with the stamp of what it was built from."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import torch
from torch import nn

from occfeat.config import to_dict
from occfeat.data.gt import task_classes
from occfeat.errors import OccfeatError
from occfeat.models import BevNetwork, SegmentationHead, build_network
from occfeat.train.records import PretrainingStamp, Provenance

from occfeat.train.finetune_config import FinetuneConfig


class SegmentationModel(nn.Module):
    """BEV network + :class:`SegmentationHead`: batch → logits (B, n_classes, X, Y). What evaluation,
    ``occfeat evaluate`` and the report use."""

    def __init__(self, network: BevNetwork, n_classes: int):
        super().__init__()
        self.network = network
        self.head = SegmentationHead(network.bev_channels, n_classes)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.network.forward_bev(batch))


# Network settings that may differ between the pretraining run and the finetuning run: where the
# backbone's weights come from (the pretrained state replaces them).
WEIGHT_KEYS = ("backbone_weights", "random_init")


def build_model(cfg: FinetuneConfig, init: str | Path | None) -> tuple[SegmentationModel, PretrainingStamp, Provenance]:
    """The segmentation model, the stamp of the pretraining it starts from and the provenance of its
    weights (``synthetic_data`` is the caller's to set: it depends on the dataroot, not the model).

    ``init`` None: the backbone from ImageNet weights (``network.backbone_weights`` / HF cache), or random
    when ``network.random_init`` (the paper's "None" row). Otherwise the pretraining run's network
    (head dropped) from its ``checkpoints/last.pt``, or from the checkpoint file ``init`` names (e.g.
    ``RUN/checkpoints/epoch_010.pt``); a run with another grid or network is refused.
    """
    n_classes = len(task_classes(cfg.task, cfg.gt))
    torch.manual_seed(cfg.train.seed)  # same recipe and seed → same head (and random backbone) weights
    if init is None:
        network = build_network(cfg.network, cfg.grid)
        backbone = network.provenance.as_dict()
        # a network without an image backbone (the LiDAR teacher) has no ImageNet weights to miss: no * mark
        provenance = Provenance(backbone_random_init=not backbone["pretrained"] and "images" in network.inputs, backbone=backbone)
        return SegmentationModel(network, n_classes), PretrainingStamp(), provenance

    from occfeat.train.pretrain import read_pretrain_run  # the pretraining stack loads only when asked for

    run = read_pretrain_run(init)  # configs of earlier versions come back in today's schema
    if run.config.grid != cfg.grid:
        raise OccfeatError(f"pretraining run {init} used grid {run.config.grid.spec()}, this finetune uses {cfg.grid.spec()}; use the same grid")
    ours = {k: v for k, v in to_dict(cfg.network).items() if k not in WEIGHT_KEYS}
    theirs = {k: v for k, v in to_dict(run.config.network).items() if k not in WEIGHT_KEYS}
    diff = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if diff:
        shown = ", ".join(f"{k}: {theirs.get(k)!r} vs {ours.get(k)!r}" for k in diff[:3])
        raise OccfeatError(f"pretraining run {init} built another network ({shown}); finetune with its recipe's network settings")
    # The pretrained state replaces every backbone weight, so no ImageNet file is needed here.
    network = build_network(dataclasses.replace(cfg.network, random_init=True, backbone_weights=None), cfg.grid)
    network.load_state_dict(run.network_state)
    provenance = Provenance.of_pretraining(run.provenance)
    return SegmentationModel(network, n_classes), PretrainingStamp.from_dict(run.stamp()), provenance
