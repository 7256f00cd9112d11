"""Camera inputs for training: the six JPEGs of a key frame, resized to the network's input size, with
Simple-BEV's three augmentations drawn per sample; the pretraining and finetuning datasets add their
targets on top (occfeat.train.pretrain, occfeat.train.finetune).

Augmentations (simple_bev; training only, each a value of :class:`AugmentConfig`):

1. resize + crop (``nuscenesdataset.py`` ``sample_augmentation``; per camera): resize the image to
   ``s * input_size`` with s ~ U(resize_lim), then crop a window of ``input_size`` around the centre,
   jittered by up to ``input_H * (1 - resize_lim[0])`` pixels each way (zero padding where it leaves the
   image). The intrinsics follow the image (``scale_intrinsics`` then ``crop_intrinsics``).
2. flips (``nets/segnet.py`` ``rand_flip``): a horizontal flip per camera image and a flip of the 3D
   feature volume along X and along Y per sample. Only the flags are drawn here (``flip_image`` (S,),
   ``flip_bev`` (2,)); the networks apply and undo them (:mod:`occfeat.models.flips`), so intrinsics and
   targets do not change.
3. a random reference camera (``nuscenesdataset.py`` ``refcam_id`` / ``do_shuffle_cams``): the BEV grid
   and every target live in a frame R tied to a randomly drawn camera
   (:func:`occfeat.geometry.reference_frame`; R = ego for CAM_FRONT). The item carries ``ref_T_ego`` and
   ``cam_T_ego`` already composed as ``cam_T_ego_raw @ inv(ref_T_ego)``, so networks, the lift and the
   teacher-feature targets treat "ego" as R unchanged; :meth:`CameraDataset.targets` computes the
   targets exactly in R from the raw data.

Without augmentation (evaluation) images are resized straight to the input, nothing is flipped and
R = ego. Images are resized with ``AugmentConfig.resize_mode`` in both cases.

Randomness is a pure function of (seed, epoch, sample index): workers, DDP ranks and resumed runs all
draw the same augmentation for the same sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from occfeat.data.index import CAMERAS, SampleRecord
from occfeat.errors import OccfeatError
from occfeat.geometry import crop_intrinsics, invert_rigid, reference_frame, scale_intrinsics

if TYPE_CHECKING:  # cv2 and scipy load only when an evaluation corrupts images
    from occfeat.data.corruptions import Corruption


# simple_bev draws its reference camera with np.random.randint(1, 6) over LSS's camera order
# [FRONT_LEFT, FRONT, FRONT_RIGHT, BACK_LEFT, BACK, BACK_RIGHT] (train_nuscenes.py, nuscenesdataset.py
# __getitem__): slot 0, CAM_FRONT_LEFT, is never the reference during training.
SIMPLE_BEV_REF_CAMERAS: tuple[str, ...] = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
RESIZE_MODES = ("nearest", "draft-bilinear")


@dataclass(frozen=True)
class AugmentConfig:
    """Simple-BEV's training augmentations (module docstring) and the image resize mode."""

    enabled: bool = True
    """False: no augmentation at all (what evaluation always does): straight resize, no flips, R = ego."""
    resize_lim: tuple[float, float] = (0.8, 1.2)
    """Range of the random resize factor s, relative to the input size; the crop jitter is
    ``input_H * (1 - resize_lim[0])`` pixels, as in Simple-BEV (nuscenesdataset.py sample_augmentation,
    train_nuscenes.py ``resize_lim = [0.8, 1.2]``)."""
    image_flip_prob: float = 0.5
    """Probability of flipping each camera image horizontally (features flipped back after the encoder);
    Simple-BEV: ``rgb_flip_index = np.random.choice([0, 1], B*S)`` in nets/segnet.py, i.e. 0.5. 0 = off."""
    bev_flip_prob: float = 0.5
    """Probability of flipping the 3D feature volume along X, and independently along Y, before the BEV
    decoder (flipped back before the heads); Simple-BEV: ``bev_flip1_index`` / ``bev_flip2_index`` drawn
    with ``np.random.choice([0, 1], B)`` in nets/segnet.py, i.e. 0.5 each. 0 = off."""
    ref_cameras: tuple[str, ...] = SIMPLE_BEV_REF_CAMERAS
    """Cameras the random reference frame R is drawn from, uniformly (:func:`occfeat.geometry.reference_frame`).
    Default: Simple-BEV's draw, ``refcam_id = np.random.randint(1, len(cams))`` over LSS's order, which
    never picks CAM_FRONT_LEFT (nuscenesdataset.py ``__getitem__``). Empty = off (R = ego, CAM_FRONT)."""
    resize_mode: str = "nearest"
    """How images are resized, in training and evaluation: "nearest" = Simple-BEV's
    ``img.resize(resize_dims, Image.NEAREST)`` on the fully decoded image (nuscenesdataset.py img_transform);
    "draft-bilinear" = JPEG DCT-domain downscaling (``Image.draft``) then BILINEAR, cheaper to decode
    and antialiased, but not the image statistics Simple-BEV trained on (BENCHMARKS.md has both costs)."""

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise OccfeatError(f"augment.resize_mode={self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        for name in ("image_flip_prob", "bev_flip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise OccfeatError(f"augment.{name}={getattr(self, name)} must be a probability in [0, 1]")
        unknown = [c for c in self.ref_cameras if c not in CAMERAS]
        if unknown:
            raise OccfeatError(f"augment.ref_cameras has unknown camera(s) {unknown}; use names from {', '.join(CAMERAS)}")


@dataclass(frozen=True)
class Augmentation:
    """One sample's draw: per camera ``resized_wh`` and ``crop_lt`` (:func:`sample_augmentation`),
    ``flip_image`` (S,) bool, ``flip_bev`` (2,) bool (along X, along Y), ``ref_T_ego`` (4, 4) float64."""

    resized_wh: tuple[tuple[int, int], ...]
    crop_lt: tuple[tuple[int, int], ...]
    flip_image: np.ndarray
    flip_bev: np.ndarray
    ref_T_ego: np.ndarray


@dataclass(frozen=True)
class CameraRig:
    """What loading one key frame's cameras needs, as plain arrays (cheap to send to workers).
    S cameras in ``CAMERAS`` order; K and image_hw at the STORED image size."""

    token: str
    paths: tuple[str, ...]
    K: np.ndarray  # (S, 3, 3)
    cam_T_ego: np.ndarray  # (S, 4, 4)
    image_hw: np.ndarray  # (S, 2) stored (H, W)
    lidar_origin: np.ndarray | None = None  # (3,) the key-frame LiDAR sensor's position in the ego frame


def camera_rig(rec: SampleRecord) -> CameraRig:
    cams = rec.cameras
    return CameraRig(
        token=rec.token,
        paths=tuple(str(c.path) for c in cams),
        K=np.stack([c.K for c in cams]),
        cam_T_ego=np.stack([c.cam_T_ego for c in cams]),
        image_hw=np.array([[c.height, c.width] for c in cams], dtype=np.int64),
        lidar_origin=np.asarray(rec.lidar.ego_T_lidar, np.float64)[:3, 3].copy(),
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


def draw_augmentation(rig: CameraRig, input_hw: tuple[int, int], augment: AugmentConfig, rng: np.random.Generator) -> Augmentation:
    """Everything one sample's augmentation needs, drawn from ``rng`` in a fixed order: per camera the
    resize/crop, then the image flips, the two BEV flips and the reference camera."""
    S = len(rig.paths)
    crops = [sample_augmentation(input_hw, augment, rng) for _ in range(S)]
    if not augment.enabled:
        return Augmentation(tuple(c[0] for c in crops), tuple(c[1] for c in crops), np.zeros(S, bool), np.zeros(2, bool), np.eye(4))
    flip_image = rng.random(S) < augment.image_flip_prob
    flip_bev = rng.random(2) < augment.bev_flip_prob
    ref_T_ego = np.eye(4)
    if augment.ref_cameras:
        if S != len(CAMERAS):
            raise OccfeatError(f"sample {rig.token} has {S} cameras, the random reference camera needs the {len(CAMERAS)} of {CAMERAS}; set augment.ref_cameras=[]")
        ref = CAMERAS.index(augment.ref_cameras[rng.integers(len(augment.ref_cameras))])
        ref_T_ego = reference_frame(rig.cam_T_ego, ref, front=CAMERAS.index("CAM_FRONT"))
    return Augmentation(tuple(c[0] for c in crops), tuple(c[1] for c in crops), flip_image, flip_bev, ref_T_ego)


def load_camera(
    path: str,
    K: np.ndarray,
    input_hw: tuple[int, int],
    resized_wh: tuple[int, int],
    crop_lt: tuple[int, int],
    resize_mode: str = AugmentConfig.resize_mode,
    corrupt: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """One image resized to ``resized_wh`` (``resize_mode``, see :class:`AugmentConfig`) then cropped to
    ``input_hw`` at ``crop_lt``. ``corrupt`` (evaluation under a nuScenes-C corruption) maps the fully
    decoded stored image (H, W, 3) uint8 to its corrupted copy before the resize, as nuScenes-C corrupts
    the stored JPEGs.

    Returns (image (3, H, W) float32 in [0, 1], K (3, 3) of that image). Missing or unreadable file →
    one-line error naming it.
    """
    fH, fW = input_hw
    try:
        img = Image.open(path)
        W0, H0 = img.size
        if corrupt is not None:
            img = Image.fromarray(corrupt(np.asarray(img.convert("RGB"))))
        if resize_mode == "nearest":  # Simple-BEV: full decode, nearest-neighbour resize
            img = img.convert("RGB").resize(resized_wh, Image.NEAREST)
        else:
            # JPEG DCT-domain downscaling to the smallest power-of-two reduction still >= the target: decoding a
            # 1600x900 frame for a 400x224 input becomes ~4x cheaper, and the final resize fixes the size.
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
    rig: CameraRig, input_hw: tuple[int, int], aug: Augmentation, resize_mode: str = AugmentConfig.resize_mode,
    corruption: Corruption | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All cameras of a key frame: (images (S, 3, H, W) float32 in [0, 1], K (S, 3, 3) float32 of those images).
    ``corruption`` draws per (sample token, camera): the camera is named by the image's folder (samples/CAM_*)."""
    images, Ks = [], []
    for path, K, resized, crop in zip(rig.paths, rig.K, aug.resized_wh, aug.crop_lt):
        corrupt = None if corruption is None else partial(corruption, token=rig.token, camera=Path(path).parent.name)
        x, K_in = load_camera(path, K, input_hw, resized, crop, resize_mode, corrupt)
        images.append(x)
        Ks.append(K_in)
    return torch.stack(images), torch.from_numpy(np.stack(Ks)).float()


class CameraDataset(Dataset):
    """The camera part every training sample shares, one item per key frame: ``token``, ``images``
    (S, 3, H, W) float32 [0, 1], ``K`` (S, 3, 3) of the augmented inputs, ``cam_T_ego`` (S, 4, 4) from the
    grid's frame R (``cam_T_ego_raw @ inv(ref_T_ego)``), ``ref_T_ego`` (4, 4) float64, ``flip_image``
    (S,) bool and ``flip_bev`` (2,) bool. Augmentation draws from (seed, epoch, index) only, so resume
    and DDP see the same samples. Subclasses add their targets, exactly in R, in :meth:`targets`."""

    def __init__(self, rigs: list[CameraRig], input_hw: tuple[int, int], augment: AugmentConfig, seed: int = 0):
        self.rigs, self.input_hw, self.augment, self.seed = rigs, tuple(input_hw), augment, seed
        self.epoch = 0
        self.corruption: Corruption | None = None
        """Evaluation under a nuScenes-C corruption (:mod:`occfeat.data.corruptions`); None: clean images."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rigs)

    def targets(self, rig: CameraRig, ref_T_ego: np.ndarray) -> dict:
        """The sample's targets computed from raw data in the frame R given by ``ref_T_ego`` (4, 4)."""
        return {}

    def __getitem__(self, i: int) -> dict:
        rig = self.rigs[i]
        aug = draw_augmentation(rig, self.input_hw, self.augment, sample_rng(self.seed, self.epoch, i))
        images, K = load_cameras(rig, self.input_hw, aug, self.augment.resize_mode, self.corruption)
        cam_T_ref = rig.cam_T_ego @ invert_rigid(aug.ref_T_ego)
        item = {
            "token": rig.token,
            "images": images,
            "K": K,
            "cam_T_ego": torch.from_numpy(cam_T_ref).float(),
            "ref_T_ego": torch.from_numpy(aug.ref_T_ego),
            "flip_image": torch.from_numpy(aug.flip_image),
            "flip_bev": torch.from_numpy(aug.flip_bev),
        }
        return {**item, **self.targets(rig, aug.ref_T_ego)}
