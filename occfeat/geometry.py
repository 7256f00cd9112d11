"""Pure geometry helpers. Transforms are named ``a_T_b``: 4x4 matrices mapping points in frame b to
frame a, so composition reads right to left: ``pix_T_ego = pix_T_cam @ cam_T_ego``.

Every function works on numpy arrays and on torch tensors (batched over leading dims) unless it says
otherwise. Quaternions follow nuScenes: (w, x, y, z).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from pyquaternion import Quaternion

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _swap_last2(x: Array) -> Array:
    return x.transpose(-1, -2) if isinstance(x, torch.Tensor) else np.swapaxes(x, -1, -2)


def make_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """4x4 from a (3,3) rotation matrix and a (3,) translation."""
    T = np.eye(4)
    T[:3, :3] = rotation
    T[:3, 3] = translation
    return T


def transform_from_pose(rotation_wxyz, translation) -> np.ndarray:
    """4x4 ``parent_T_child`` from a nuScenes record's quaternion (w, x, y, z) and translation.

    For ``calibrated_sensor`` this is ``ego_T_sensor``; for ``ego_pose`` it is ``global_T_ego``.
    """
    return make_transform(Quaternion(rotation_wxyz).rotation_matrix, np.asarray(translation, dtype=np.float64))


def pose_from_transform(T: np.ndarray) -> tuple[list[float], list[float]]:
    """Inverse of :func:`transform_from_pose`: (rotation wxyz, translation) lists for JSON tables."""
    q = Quaternion(matrix=np.asarray(T[:3, :3], dtype=np.float64), atol=1e-6)
    return [float(v) for v in q.elements], [float(v) for v in T[:3, 3]]


def yaw_matrix(yaw: float) -> np.ndarray:
    """(3,3) rotation about +z by ``yaw`` radians."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def invert_rigid(T: Array) -> Array:
    """Inverse of rigid 4x4 transform(s) (..., 4, 4) without a general matrix inverse."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    Rt = _swap_last2(R)
    out = T.clone() if isinstance(T, torch.Tensor) else T.copy()
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -(Rt @ t)
    return out


def apply_4x4(T: Array, points: Array) -> Array:
    """Apply 4x4 transform(s) (..., 4, 4) to points (..., N, 3) → (..., N, 3)."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    return points @ _swap_last2(R) + t[..., None, :]


def intrinsics_4x4(K: np.ndarray) -> np.ndarray:
    """Embed a (3,3) camera matrix into a 4x4 ``pix_T_cam``."""
    P = np.eye(4)
    P[:3, :3] = K
    return P


def scale_intrinsics(K: Array, sx: float, sy: float) -> Array:
    """Intrinsics (..., 3|4, 3|4) after resizing the image by (sx, sy) (new = old * s).

    Pixel coordinates are continuous with pixel *centres* at i + 0.5 (the convention of
    ``torch.nn.functional.grid_sample(align_corners=False)`` and of PIL resizing), so
    u' = sx * u exactly.
    """
    K = K.clone() if isinstance(K, torch.Tensor) else np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 0] *= sx
    K[..., 0, 2] *= sx
    K[..., 1, 1] *= sy
    K[..., 1, 2] *= sy
    return K


def crop_intrinsics(K: Array, left: float, top: float) -> Array:
    """Intrinsics after cropping ``left`` columns and ``top`` rows off the image."""
    K = K.clone() if isinstance(K, torch.Tensor) else np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 2] -= left
    K[..., 1, 2] -= top
    return K


def project_points(K: Array, points_cam: Array, min_depth: float = 1e-3) -> tuple[Array, Array]:
    """Pinhole projection of camera-frame points (..., N, 3) with intrinsics (..., 3, 3).

    Returns (uv (..., N, 2) in continuous pixel coordinates, in_front (..., N) bool: depth > min_depth).
    Points behind the camera get finite but meaningless uv; use the mask.
    """
    z = points_cam[..., 2]
    in_front = z > min_depth
    if isinstance(points_cam, torch.Tensor):
        zs = torch.where(in_front, z, torch.ones_like(z))
    else:
        zs = np.where(in_front, z, 1.0)
    proj = points_cam @ _swap_last2(K[..., :3, :3])
    uv = proj[..., :2] / zs[..., None]
    return uv, in_front


def pixels_to_grid_sample(uv: Array, image_wh: Array) -> Array:
    """Continuous pixel coordinates (..., 2) as (u, v) in an image of size ``image_wh`` (..., 2) as
    (W, H) → ``torch.nn.functional.grid_sample`` coordinates in [-1, 1] for ``align_corners=False``,
    where -1 / +1 are the outer edges of the first / last pixel: x = 2u/W - 1."""
    return 2.0 * uv / image_wh - 1.0


def in_image(uv: Array, width: int, height: int) -> Array:
    """(..., N) bool: continuous pixel coordinate inside [0, width) x [0, height)."""
    u, v = uv[..., 0], uv[..., 1]
    return (u >= 0) & (u < width) & (v >= 0) & (v < height)


def flat_camera_frame(cam_T_ego: np.ndarray) -> np.ndarray:
    """``ego_T_flat`` (4, 4) of a camera: its gravity-aligned frame. Origin: the camera centre dropped to
    z = 0 of the ego frame; x: the optical axis projected on the ground plane; z: ego up."""
    ego_T_cam = invert_rigid(np.asarray(cam_T_ego, dtype=np.float64))
    axis = ego_T_cam[:3, 2]  # the optical axis (camera +z) in ego coordinates
    centre = ego_T_cam[:3, 3]
    return make_transform(yaw_matrix(np.arctan2(axis[1], axis[0])), np.array([centre[0], centre[1], 0.0]))


def reference_frame(cam_T_ego: np.ndarray, ref: int, front: int = 0) -> np.ndarray:
    """``ref_T_ego`` (4, 4) of the frame R in which camera ``ref`` sits as camera ``front`` sits in ego.

    cam_T_ego: (S, 4, 4) of the key frame's cameras. ``ego_T_ref = ego_T_flat[ref] @ inv(ego_T_flat[front])``,
    so R = ego for ``ref == front``, and otherwise the grid is yawed (about 0/±55/±110/180° on nuScenes)
    and shifted with the camera: Simple-BEV's random reference camera (its grid lives in the frame of a
    randomly drawn camera, nuscenesdataset.py refcam_id; CAM_FRONT at evaluation).
    """
    ego_T_ref = flat_camera_frame(cam_T_ego[ref]) @ invert_rigid(flat_camera_frame(cam_T_ego[front]))
    return invert_rigid(ego_T_ref)
