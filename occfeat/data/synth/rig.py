"""The nuScenes sensor rig, as the synthetic world mounts it on the ego car.

Frames follow nuScenes: ego x forward, y left, z up, origin at the rear axle on the ground; cameras
in the optical frame (x right, y down, z forward); LIDAR_TOP rotated -90 deg about z (x right,
y forward). Numbers are those of the real car (calibrated_sensor of v1.0-mini), rounded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from occfeat.geometry import make_transform, scale_intrinsics, yaw_matrix

# Intrinsics are given at the stored nuScenes image size and scaled to --image-size.
REFERENCE_SIZE: tuple[int, int] = (1600, 900)


@dataclass(frozen=True)
class CameraMount:
    channel: str
    translation: tuple[float, float, float]  # ego frame, metres
    yaw_deg: float  # viewing direction about ego z (0 = forward, + = left)
    fx: float  # at REFERENCE_SIZE (fy = fx)
    cx: float
    cy: float
    time_offset_us: int  # trigger time after the key-frame LiDAR timestamp

    def K(self, width: int, height: int) -> np.ndarray:
        """(3, 3) pix_T_cam at ``width`` x ``height``."""
        K = np.array([[self.fx, 0.0, self.cx], [0.0, self.fx, self.cy], [0.0, 0.0, 1.0]])
        return scale_intrinsics(K, width / REFERENCE_SIZE[0], height / REFERENCE_SIZE[1])

    def ego_T_cam(self) -> np.ndarray:
        """(4, 4): optical axes (x right, y down, z forward) expressed in the ego frame."""
        yaw = np.deg2rad(self.yaw_deg)
        forward = yaw_matrix(yaw) @ np.array([1.0, 0.0, 0.0])
        right = yaw_matrix(yaw) @ np.array([0.0, -1.0, 0.0])
        down = np.array([0.0, 0.0, -1.0])
        return make_transform(np.stack([right, down, forward], axis=1), np.array(self.translation))


# Camera offsets follow the LiDAR sweeping past each camera (about 8 ms per camera); CAM_BACK is wider.
CAMERA_MOUNTS: tuple[CameraMount, ...] = (
    CameraMount("CAM_FRONT", (1.70, 0.02, 1.51), 0.0, 1266.4, 816.3, 491.5, 2_000),
    CameraMount("CAM_FRONT_RIGHT", (1.55, -0.49, 1.50), -55.0, 1260.8, 807.9, 495.3, 9_500),
    CameraMount("CAM_BACK_RIGHT", (1.04, -0.48, 1.56), -110.0, 1256.7, 817.8, 451.9, 17_000),
    CameraMount("CAM_BACK", (0.03, 0.00, 1.57), 180.0, 809.2, 829.2, 481.8, 25_000),
    CameraMount("CAM_BACK_LEFT", (1.05, 0.48, 1.56), 110.0, 1256.7, 792.1, 492.8, 32_500),
    CameraMount("CAM_FRONT_LEFT", (1.52, 0.49, 1.51), 55.0, 1272.6, 826.6, 479.8, 40_000),
)


@dataclass(frozen=True)
class LidarMount:
    channel: str = "LIDAR_TOP"
    translation: tuple[float, float, float] = (0.94, 0.0, 1.84)
    rotation_wxyz: tuple[float, float, float, float] = (0.70710678, 0.0, 0.0, -0.70710678)
    beams: int = 32  # Velodyne HDL-32E
    elevation_deg: tuple[float, float] = (-30.67, 10.67)
    azimuth_steps: int = 1084  # per turn at 20 Hz
    max_range: float = 70.0
    sweep_hz: int = 20

    def ego_T_lidar(self) -> np.ndarray:
        from occfeat.geometry import transform_from_pose

        return transform_from_pose(self.rotation_wxyz, self.translation)

    def ray_directions(self) -> np.ndarray:
        """(beams, azimuth_steps, 3) unit directions in the sensor frame; ring = beam index (low to high)."""
        el = np.deg2rad(np.linspace(*self.elevation_deg, self.beams))[:, None]
        az = (2 * np.pi * np.arange(self.azimuth_steps) / self.azimuth_steps)[None, :]
        # Sensor frame: y forward, x right; azimuth measured clockwise from forward.
        return np.stack(
            [np.cos(el) * np.sin(az), np.cos(el) * np.cos(az), np.sin(el) * np.ones_like(az)], axis=-1
        )


LIDAR_MOUNT = LidarMount()
KEYFRAME_HZ = 2
