"""nuScenes-C camera corruptions (RoboBEV, Xie et al. 2023), applied on the fly at evaluation.

Each corruption maps one stored camera image (H, W, 3) uint8 — the full-resolution 1600x900 JPEG, as
nuScenes-C corrupts the stored files — to another of the same shape and dtype. Severity 1|2|3 is
RoboBEV's easy/mid/hard, which it passes as severity 1, 2, 3 to its corruption classes
(corruptions/project/mmdet3d_plugin/corruptions.py): levels 1-3 of the five-level ImageNet-C tables
for brightness, fog, snow and motion blur (Hendrycks & Dietterich 2019, the ``imagecorruptions``
package, which RoboBEV calls), and RoboBEV's own low light, colour quantisation, camera crash and frame
lost. Written with numpy/scipy/cv2 (no ImageMagick, no extra dependency).

Randomness never comes from global RNG state: every draw uses a generator seeded from a hash of
(corruption, sample token, camera name), so a frame is corrupted identically in every run, worker and
process. Severity only changes the parameters applied to the same draw, which makes the change grow
with severity frame by frame, not just on average.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from scipy import ndimage

from occfeat.data.index import CAMERAS
from occfeat.errors import OccfeatError

SEVERITIES: tuple[int, ...] = (1, 2, 3)

BRIGHTNESS = (0.1, 0.2, 0.3)
"""Added to HSV value (in [0, 1])."""
LOW_LIGHT = ((0.5, 120.0, 0.018), (0.4, 50.0, 0.026), (0.3, 30.0, 0.038))
"""(brightest output value, photons per unit intensity of the Poisson shot noise, Gaussian read-noise std):
RoboBEV's low light at its severities 1-3 (its tables are indexed one place on, so easy is their second entry)."""
FOG = (1.5, 2.0, 2.5)
"""Fog strength: ImageNet-C fog levels 1-3."""
FOG_DECAY = 2.0
"""Fractal roughness decay, ImageNet-C's levels 1-2 for every severity (its level 3 uses 1.7): a rougher
haze lowers the mean change on some frames, one haze at growing strength makes severity monotone per pixel."""
SNOW = ((0.1, 0.3, 3.0, 0.5, 10, 4, 0.8), (0.2, 0.3, 2.0, 0.5, 12, 4, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65))
"""(flake mean, flake std, flake zoom, threshold, streak length, streak sigma, image weight): ImageNet-C snow
levels 1, 2 and 4. Its level 3 changes a frame no more than level 2 (mean absolute change 68.1 vs 67.6 of
255 on the test frame), so hard takes level 4 (81.6) to keep severity meaningful."""
MOTION_BLUR = ((10, 3.0), (15, 5.0), (15, 8.0))
"""(kernel radius in pixels, Gaussian weight sigma along the streak): ImageNet-C motion blur levels 1-3."""
COLOR_QUANT_BITS = (4, 3, 2)
"""Bits kept per channel (PIL posterize): RoboBEV's ``5 - severity``."""
CRASHED_CAMERAS = (1, 2, 3)
"""How many of the six cameras camera_crash blacks out for the whole evaluation: RoboBEV's ``severity``
(it draws them with replacement, so sometimes fewer; here always that many)."""
FRAME_LOST_PROB = (1 / 6, 2 / 6, 3 / 6)
"""Probability that frame_lost drops each camera frame: RoboBEV's ``severity / 6``."""


@dataclass(frozen=True)
class Corruption:
    """One nuScenes-C corruption at one severity."""

    name: str
    severity: int

    def __post_init__(self) -> None:
        if self.name not in CORRUPTIONS:
            raise OccfeatError(f"unknown corruption {self.name!r}; use one of {', '.join(CORRUPTIONS)}")
        if self.severity not in SEVERITIES:
            raise OccfeatError(f"corruption severity {self.severity} is not one of {', '.join(map(str, SEVERITIES))}")

    def __call__(self, image: np.ndarray, token: str, camera: str) -> np.ndarray:
        """``image`` (H, W, 3) uint8 of ``camera`` in sample ``token``, corrupted; same shape and dtype."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        rng = np.random.default_rng(frame_seed(self.name, token, camera))
        out = CORRUPTIONS[self.name](image.astype(np.float32) / 255.0, self.severity - 1, rng, camera)
        return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)

    @property
    def label(self) -> str:
        """``<name>-s<severity>``, the suffix of the metrics file written under it."""
        return f"{self.name}-s{self.severity}"


def frame_seed(*parts: str) -> int:
    """A 64-bit seed from a stable hash of ``parts`` (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "little")


def brightness(x: np.ndarray, level: int, rng: np.random.Generator, camera: str) -> np.ndarray:
    """Raise HSV value by c keeping hue and saturation: every channel scales by clip(V + c) / V
    (a black pixel, of undefined hue, becomes grey c)."""
    v = x.max(axis=2, keepdims=True)
    c = BRIGHTNESS[level]
    lifted = np.minimum(v + c, 1.0)
    return np.where(v > 0, x * lifted / np.maximum(v, 1e-6), lifted)


def low_light(x: np.ndarray, level: int, rng: np.random.Generator, camera: str) -> np.ndarray:
    """RoboBEV's low light: stretch the frame's [min, max] to [0, c] with gamma 2 (dark tones crushed
    hardest), then the sensor noise a dark exposure brings: Poisson shot noise, then Gaussian read noise."""
    top, photons, read = LOW_LIGHT[level]
    lo, hi = float(x.min()), float(x.max())
    dark = ((x - lo) / max(hi - lo, 1e-6)) ** 2 * top
    shot = np.clip(rng.poisson(dark * photons) / photons, 0.0, 1.0).astype(np.float32)
    return shot + rng.standard_normal(x.shape, dtype=np.float32) * read


def fractal_noise(shape: tuple[int, int], decay: float, rng: np.random.Generator) -> np.ndarray:
    """Cloud-like noise in [0, 1] of ``shape``: octaves of random grids upsampled bilinearly, each octave
    ``1 / decay`` the amplitude of the coarser one (the role of ImageNet-C's plasma fractal wibble decay)."""
    H, W = shape
    out = np.zeros(shape, np.float32)
    amplitude, cells = 1.0, 2
    while cells <= max(H, W) // 2:
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        out += amplitude * cv2.resize(grid, (W, H), interpolation=cv2.INTER_LINEAR)
        amplitude /= decay
        cells *= 2
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


def fog(x: np.ndarray, level: int, rng: np.random.Generator, camera: str) -> np.ndarray:
    """ImageNet-C fog: add a fractal haze of strength c, then rescale so the brightest pixel keeps its value
    (each pixel moves toward ``peak * haze`` by the share c / (peak + c), which grows with c)."""
    strength = FOG[level]
    peak = x.max()
    x = x + strength * fractal_noise(x.shape[:2], FOG_DECAY, rng)[..., None]
    return x * peak / (peak + strength)


def line_kernel(radius: int, sigma: float, angle_deg: float) -> np.ndarray:
    """A one-sided streak of length ``radius`` at ``angle_deg`` with Gaussian weights (sum 1)."""
    size = 2 * radius + 1
    kernel = np.zeros((size, size), np.float32)
    t = np.arange(radius + 1)
    weights = np.exp(-(t ** 2) / (2 * sigma ** 2))
    a = np.deg2rad(angle_deg)
    cols = np.rint(radius + t * np.cos(a)).astype(int)
    rows = np.rint(radius - t * np.sin(a)).astype(int)
    np.add.at(kernel, (rows, cols), weights)
    return kernel / kernel.sum()


def motion_blur(x: np.ndarray, level: int, rng: np.random.Generator, camera: str) -> np.ndarray:
    """ImageNet-C motion blur: a Gaussian-weighted streak at a random angle in [-45, 45] degrees."""
    radius, sigma = MOTION_BLUR[level]
    return cv2.filter2D(x, -1, line_kernel(radius, sigma, rng.uniform(-45, 45)), borderType=cv2.BORDER_REFLECT)


def snow(x: np.ndarray, level: int, rng: np.random.Generator, camera: str) -> np.ndarray:
    """ImageNet-C snow: thresholded Gaussian flakes, zoomed and streaked by motion blur, screened over a
    greyed, brightened image."""
    loc, scale, zoom, threshold, radius, sigma, keep = SNOW[level]
    H, W = x.shape[:2]
    small = rng.normal(loc, scale, (int(np.ceil(H / zoom)), int(np.ceil(W / zoom)))).astype(np.float32)
    flakes = ndimage.zoom(small, zoom, order=1)[:H, :W]
    flakes = np.pad(flakes, ((0, H - flakes.shape[0]), (0, W - flakes.shape[1])), mode="edge")
    flakes[flakes < threshold] = 0.0
    flakes = cv2.filter2D(flakes, -1, line_kernel(radius, sigma, rng.uniform(-135, -45)), borderType=cv2.BORDER_REFLECT)
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = keep * x + (1 - keep) * np.maximum(x, grey[..., None] * 1.5 + 0.5)
    return x + flakes[..., None] + np.rot90(flakes, 2)[..., None]


def color_quant(x: np.ndarray, level: int, rng: np.random.Generator, camera: str) -> np.ndarray:
    """Keep the top ``COLOR_QUANT_BITS`` bits of each 8-bit channel and zero the rest (PIL's posterize)."""
    step = 2 ** (8 - COLOR_QUANT_BITS[level])
    return np.floor(np.rint(x * 255.0) / step) * step / 255.0


def crashed_cameras(level: int) -> frozenset[str]:
    """The cameras camera_crash blacks out at ``level``: the first ``CRASHED_CAMERAS[level]`` of one fixed
    shuffle of ``CAMERAS``, so a harder severity crashes a superset and the set never depends on the frame."""
    order = np.random.default_rng(frame_seed("camera_crash")).permutation(len(CAMERAS))
    return frozenset(CAMERAS[i] for i in order[: CRASHED_CAMERAS[level]])


def camera_crash(x: np.ndarray, level: int, rng: np.random.Generator, camera: str) -> np.ndarray:
    """Black frames from the fixed crashed cameras (:func:`crashed_cameras`), the others untouched."""
    return np.zeros_like(x) if camera in crashed_cameras(level) else x


def frame_lost(x: np.ndarray, level: int, rng: np.random.Generator, camera: str) -> np.ndarray:
    """Black frame with probability ``FRAME_LOST_PROB``; the draw is the frame's own (its seed), so a frame
    lost at one severity is lost at every harder one."""
    return np.zeros_like(x) if rng.random() < FRAME_LOST_PROB[level] else x


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator, str], np.ndarray]] = {
    "brightness": brightness,
    "low_light": low_light,
    "fog": fog,
    "snow": snow,
    "motion_blur": motion_blur,
    "color_quant": color_quant,
    "camera_crash": camera_crash,
    "frame_lost": frame_lost,
}
"""nuScenes-C's eight corruptions by name: (image (H, W, 3) float in [0, 1], level 0..2, frame RNG, camera) → image."""
