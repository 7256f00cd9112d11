"""Camera inputs for training: the six JPEGs of a key frame, resized to the network's input size with
Simple-BEV's augmentations, and the OccFeat pretraining dataset built on them.

Augmentation (Simple-BEV, ``sample_augmentation``; per camera, training only): resize the image to
``s * input_size`` with s ~ U(resize_lim), then crop a window of ``input_size`` around the centre,
jittered by up to ``input_H * (1 - resize_lim[0])`` pixels each way (zero padding where it leaves the
image). The intrinsics follow the image (``scale_intrinsics`` then ``crop_intrinsics``); targets stay in
the ego frame, so nothing else changes. Without augmentation the image is resized straight to the input.

Randomness is a pure function of (seed, epoch, sample index): workers, DDP ranks and resumed runs all
draw the same augmentation for the same sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from occfeat.data.index import SampleRecord
from occfeat.errors import OccfeatError
from occfeat.geometry import crop_intrinsics, scale_intrinsics


@dataclass(frozen=True)
class AugmentConfig:
    """Simple-BEV's image augmentations (random resize + crop jitter), used while training."""

    enabled: bool = True
    """False: resize each image straight to the input size (what evaluation always does)."""
    resize_lim: tuple[float, float] = (0.8, 1.2)
    """Range of the random resize factor s, relative to the input size; the crop jitter is
    ``input_H * (1 - resize_lim[0])`` pixels, as in Simple-BEV."""


@dataclass(frozen=True)
class CameraRig:
    """What loading one key frame's cameras needs, as plain arrays (cheap to send to workers).
    S cameras in ``CAMERAS`` order; K and image_hw at the STORED image size."""

    token: str
    paths: tuple[str, ...]
    K: np.ndarray  # (S, 3, 3)
    cam_T_ego: np.ndarray  # (S, 4, 4)
    image_hw: np.ndarray  # (S, 2) stored (H, W)


def camera_rig(rec: SampleRecord) -> CameraRig:
    cams = rec.cameras
    return CameraRig(
        token=rec.token,
        paths=tuple(str(c.path) for c in cams),
        K=np.stack([c.K for c in cams]),
        cam_T_ego=np.stack([c.cam_T_ego for c in cams]),
        image_hw=np.array([[c.height, c.width] for c in cams], dtype=np.int64),
    )


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation RNG of one sample in one epoch."""
    return np.random.default_rng((seed, epoch, index))


def sample_augmentation(
    input_hw: tuple[int, int], augment: AugmentConfig, rng: np.random.Generator
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized (W, H), crop top-left (left, top)) for one camera, as Simple-BEV draws them."""
    fH, fW = input_hw
    if not augment.enabled:
        return (fW, fH), (0, 0)
    s = rng.uniform(*augment.resize_lim)
    newW, newH = int(fW * s), int(fH * s)
    jitter = int(fH * (1.0 - augment.resize_lim[0]))
    left = (newW - fW) // 2 + int(rng.uniform(-jitter, jitter))
    top = (newH - fH) // 2 + int(rng.uniform(-jitter, jitter))
    return (newW, newH), (left, top)


def load_camera(
    path: str, K: np.ndarray, input_hw: tuple[int, int], resized_wh: tuple[int, int], crop_lt: tuple[int, int]
) -> tuple[torch.Tensor, np.ndarray]:
    """One image resized to ``resized_wh`` then cropped to ``input_hw`` at ``crop_lt``.

    Returns (image (3, H, W) float32 in [0, 1], K (3, 3) of that image). Missing or unreadable file →
    one-line error naming it.
    """
    fH, fW = input_hw
    try:
        img = Image.open(path)
        W0, H0 = img.size
        # JPEG DCT-domain downscaling to the smallest power-of-two reduction still >= the target: decoding a
        # 1600x900 frame for a 400x224 input becomes ~4x cheaper, and the final resize below fixes the size.
        img.draft("RGB", resized_wh)
        img = img.convert("RGB").resize(resized_wh, Image.BILINEAR)
    except FileNotFoundError:
        raise OccfeatError(f"camera image {path} is missing; restore the dataroot's samples/ folder") from None
    except (UnidentifiedImageError, OSError) as e:
        raise OccfeatError(f"camera image {path} cannot be decoded ({type(e).__name__}); restore the file") from None
    left, top = crop_lt
    img = img.crop((left, top, left + fW, top + fH))  # PIL pads with zeros outside the image
    K = crop_intrinsics(scale_intrinsics(K, resized_wh[0] / W0, resized_wh[1] / H0), left, top)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    return x, K


def load_cameras(
    rig: CameraRig, input_hw: tuple[int, int], augment: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """All cameras of a key frame: (images (S, 3, H, W) float32 in [0, 1], K (S, 3, 3) float32 of those images)."""
    images, Ks = [], []
    for path, K in zip(rig.paths, rig.K):
        resized, crop = sample_augmentation(input_hw, augment, rng)
        x, K_in = load_camera(path, K, input_hw, resized, crop)
        images.append(x)
        Ks.append(K_in)
    return torch.stack(images), torch.from_numpy(np.stack(Ks)).float()


class CameraDataset(Dataset):
    """The camera part every training sample shares, one item per key frame: ``token``, ``images``
    (S, 3, H, W) float32 [0, 1], ``K`` (S, 3, 3) of the augmented inputs, ``cam_T_ego`` (S, 4, 4).
    Augmentation draws from (seed, epoch, index) only, so resume and DDP see the same samples.
    Subclasses add their targets in :meth:`targets`."""

    def __init__(self, rigs: list[CameraRig], input_hw: tuple[int, int], augment: AugmentConfig, seed: int = 0):
        self.rigs, self.input_hw, self.augment, self.seed = rigs, tuple(input_hw), augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rigs)

    def targets(self, rig: CameraRig) -> dict:
        return {}

    def __getitem__(self, i: int) -> dict:
        rig = self.rigs[i]
        images, K = load_cameras(rig, self.input_hw, self.augment, sample_rng(self.seed, self.epoch, i))
        item = {"token": rig.token, "images": images, "K": K, "cam_T_ego": torch.from_numpy(rig.cam_T_ego).float()}
        return {**item, **self.targets(rig)}


class PretrainDataset(CameraDataset):
    """One OccFeat pretraining sample per key frame: the camera item plus, for the targets,
    ``occupancy`` (X, Y, Z) bool, ``features`` (S, Hp, Wp, C) float16 (absent when ``features`` is None:
    occupancy-only pretraining), ``K_orig`` (S, 3, 3) and
    ``image_hw_orig`` (S, 2) at the stored image size. The readers open their HDF5 files lazily, so
    each DataLoader worker gets its own handle.
    """

    def __init__(self, rigs: list[CameraRig], occupancy, features, input_hw: tuple[int, int], augment: AugmentConfig, seed: int = 0):
        super().__init__(rigs, input_hw, augment, seed)
        self.occupancy, self.features = occupancy, features

    def targets(self, rig: CameraRig) -> dict:
        item = {
            "occupancy": torch.from_numpy(self.occupancy.get(rig.token)),
            "K_orig": torch.from_numpy(rig.K).float(),
            "image_hw_orig": torch.from_numpy(rig.image_hw),
        }
        if self.features is not None:  # None: occupancy-only pretraining
            item["features"] = torch.from_numpy(self.features.get(rig.token))
        return item
