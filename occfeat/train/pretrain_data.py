"""The pretraining dataset: the camera item (:class:`occfeat.train.data.CameraDataset`) plus the
per-sample inputs the run's objectives ask for (:class:`occfeat.objectives.SampleInput`), each computed
once per sample in the DataLoader worker, in the sample's reference frame R, and its collate, which pads
the ragged inputs (e.g. Img-ALSO's query points)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import default_collate

from occfeat.objectives.base import SampleInput, Sources
from occfeat.train.data import AugmentConfig, CameraDataset, CameraRig


def input_rng(seed: int, epoch: int, index: int, which: int) -> np.random.Generator:
    """The generator of the ``which``-th input of one sample in one epoch (independent of the
    augmentation's, and of the worker, rank and resume point: a pure function of its arguments)."""
    return np.random.default_rng((seed, epoch, index, 1 + which))


class PretrainDataset(CameraDataset):
    """One pretraining sample per key frame: the camera item plus ``inputs``' keys (e.g. ``occupancy``
    (X, Y, Z) bool in R, ``features`` (S, Hp, Wp, C) float16 with ``K_orig`` / ``image_hw_orig``).
    The readers in ``sources`` open their HDF5 files lazily, so each worker gets its own handle."""

    def __init__(self, rigs: list[CameraRig], sources: Sources, inputs: list[SampleInput], input_hw: tuple[int, int],
                 augment: AugmentConfig, seed: int = 0):  # fmt: skip
        super().__init__(rigs, input_hw, augment, seed)
        self.sources = sources
        self.inputs = list(dict.fromkeys(inputs))  # an input two objectives share is computed once

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        ref_T_ego = item["ref_T_ego"].numpy()
        for which, inp in enumerate(self.inputs):
            item.update(inp(self.sources, self.rigs[i], ref_T_ego, input_rng(self.seed, self.epoch, i, which)))
        return item

    @property
    def ragged(self) -> tuple[str, ...]:
        return tuple(k for inp in self.inputs for k in inp.ragged)


def pad_ragged(values: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample tensors (M_i, ...) → (B, max M_i, ...) zero-padded, and the (B, max M_i) bool mask of real rows."""
    m = max((len(v) for v in values), default=0)
    out = values[0].new_zeros((len(values), m, *values[0].shape[1:]))
    mask = torch.zeros(len(values), m, dtype=torch.bool)
    for b, v in enumerate(values):
        out[b, : len(v)] = v
        mask[b, : len(v)] = True
    return out, mask


class PretrainCollate:
    """default_collate, except the ragged keys: padded, with ``<key>_mask``. Picklable (workers)."""

    def __init__(self, ragged: tuple[str, ...]):
        self.ragged = ragged

    def __call__(self, items: list[dict]) -> dict:
        ragged = {k: [it.pop(k) for it in items] for k in self.ragged}
        batch = default_collate(items)
        for k, values in ragged.items():
            batch[k], batch[f"{k}_mask"] = pad_ragged(values)
        return batch
