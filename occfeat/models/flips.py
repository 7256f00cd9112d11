"""Simple-BEV's flip augmentations as pure, self-inverse tensor functions (applied inside the networks).

- Image flips (simple_bev ``nets/segnet.py`` ``rand_flip``, lines 401-407): a camera's image is flipped
  horizontally before the encoder and its feature map flipped back after it, so the features line up
  with the UNflipped image again and the intrinsics need no change. The encoder thus sees mirrored
  images while the geometry downstream is untouched.
- BEV flips (simple_bev ``segnet.py:430-434`` and the decoder's ``137-140``; ``bevformernet.py:489-495,
  550-557``): the 3D feature volume is flipped along X and/or Y per sample before the BEV compressor /
  decoder and flipped back before the heads, so the decoder sees mirrored scenes while the output and
  every target stay in the grid's frame.

Flags come from the dataset (``batch["flip_image"]`` (B, S) bool, ``batch["flip_bev"]`` (B, 2) bool, drawn
from (seed, epoch, index) in :mod:`occfeat.train.data`); a missing key means no flip.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def flip_per_camera(x: torch.Tensor, flags: torch.Tensor | None) -> torch.Tensor:
    """Flip the last (width) axis of x (B, S, ..., W) for the cameras where flags (B, S) is True.

    Self-inverse: ``flip_per_camera(flip_per_camera(x, f), f) == x``.
    """
    if flags is None:
        return x
    flags = flags.to(device=x.device, dtype=torch.bool)
    assert flags.shape == x.shape[:2], f"flip flags {tuple(flags.shape)} do not fit (B, S) of {tuple(x.shape)}"
    if not bool(flags.any()):
        return x
    mask = flags.view(*flags.shape, *([1] * (x.ndim - 2)))
    return torch.where(mask, x.flip(-1), x)


def flip_bev(x: torch.Tensor, flags: torch.Tensor | None) -> torch.Tensor:
    """Flip x (B, ..., X, Y) along X where flags[:, 0] and along Y where flags[:, 1] (flags (B, 2) bool).

    Works on 3D volumes (B, C, Z, X, Y) and BEV maps (B, C, X, Y) alike. Self-inverse.
    """
    if flags is None:
        return x
    flags = flags.to(device=x.device, dtype=torch.bool)
    assert flags.shape == (x.shape[0], 2), f"BEV flip flags {tuple(flags.shape)} must be (B, 2) for {tuple(x.shape)}"
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    for axis, dim in ((0, -2), (1, -1)):
        f = flags[:, axis]
        if bool(f.any()):
            x = torch.where(f.view(shape), x.flip(dim), x)
    return x


def encode_with_flips(
    encoder: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, flags: torch.Tensor | None
) -> torch.Tensor:
    """encoder(images (B, S, 3, H, W)) → (B, S, C, Hf, Wf), with the flagged cameras' images flipped before
    the encoder and their features flipped back after it (features aligned with the unflipped image)."""
    return flip_per_camera(encoder(flip_per_camera(images, flags)), flags)
