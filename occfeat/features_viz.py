"""Feature pictures of paper Fig. 5-6: a 3-component PCA of predicted features mapped to RGB, reusable on
another scene, and cosine-correlation maps against one selected voxel or pixel (issue 17).

Pure numpy functions; the caller turns tensors into arrays. Shapes follow what the network gives:
the unsplat head's predicted teacher features per sample are (C, Z, X, Y) (F_V's layout, see
:class:`occfeat.models.UnsplatDecoder`), occupancy is (X, Y, Z) bool (the grid's layout) and a teacher
map is (Hp, Wp, C) (the features cache's layout).

Fig. 5 shows the predicted 3D features of the occupied voxels seen from above, so a BEV picture here
shows, per column, the feature of the highest occupied voxel: what a top-down view of the coloured
voxels would show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from occfeat.errors import OccfeatError


@dataclass(frozen=True)
class PcaBasis:
    """A PCA fitted on one scene, with the colour stretch that goes with it, so a second scene projected
    with the same basis gets the same colours for the same features (Fig. 5 right)."""

    mean: np.ndarray
    """(C,) the fit features' mean."""
    components: np.ndarray
    """(k, C) unit principal directions, largest variance first."""
    lo: np.ndarray
    """(k,) per-component projection mapped to 0 (the fit's ``percentiles[0]`` percentile)."""
    hi: np.ndarray
    """(k,) per-component projection mapped to 1 (the fit's ``percentiles[1]`` percentile)."""


def fit_pca(
    features: np.ndarray, k: int = 3, mask: np.ndarray | None = None, percentiles: tuple[float, float] = (1.0, 99.0)
) -> PcaBasis:
    """Fit a k-component PCA on ``features`` (N, C), only the rows where ``mask`` (N,) is True.

    The stretch [lo, hi] per component is taken at ``percentiles`` of the fit rows' projections (not min/max,
    so a few outliers do not wash out the colours). Each component's sign is fixed so its largest-magnitude
    loading is positive: refitting the same data gives the same colours.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, C), got shape {x.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != x.shape[:1]:
            raise ValueError(f"mask must be ({x.shape[0]},), got shape {mask.shape}")
        x = x[mask]
    if x.shape[0] < 2:
        raise OccfeatError(f"PCA needs at least 2 feature vectors, got {x.shape[0]}; pick a sample with occupied voxels")
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k must be in [1, {x.shape[1]}], got {k}")
    mean = x.mean(axis=0)
    centred = x - mean
    # Eigenvectors of the C x C covariance: cheaper than an SVD of (N, C) when N is a whole scene's voxels.
    cov = centred.T @ centred / (x.shape[0] - 1)
    values, vectors = np.linalg.eigh(cov)
    components = vectors[:, np.argsort(values)[::-1][:k]].T
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    proj = centred @ components.T
    lo, hi = np.percentile(proj, percentiles, axis=0)
    hi = np.maximum(hi, lo + 1e-12)  # a constant component maps to 0 instead of dividing by zero
    return PcaBasis(mean=mean, components=components, lo=lo, hi=hi)


def pca_project(features: np.ndarray, basis: PcaBasis) -> np.ndarray:
    """``features`` (..., C) → (..., k) coordinates in the basis (before the colour stretch)."""
    x = np.asarray(features, dtype=np.float64)
    if x.shape[-1] != basis.mean.shape[0]:
        raise ValueError(f"features have {x.shape[-1]} channels, the basis {basis.mean.shape[0]}")
    return (x - basis.mean) @ basis.components.T


def pca_rgb(features: np.ndarray, basis: PcaBasis) -> np.ndarray:
    """``features`` (..., C) → (..., k) colours in [0, 1] (k=3: RGB), stretched by the basis' lo/hi and clipped."""
    proj = pca_project(features, basis)
    return np.clip((proj - basis.lo) / (basis.hi - basis.lo), 0.0, 1.0)


def top_occupied(occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``occupied`` (X, Y, Z) bool → (z_top (X, Y) int, the highest occupied height index, 0 where none;
    has (X, Y) bool, the columns with any occupied voxel). Index z grows with height (:meth:`BevGrid.axis_centers`)."""
    occ = np.asarray(occupied, dtype=bool)
    if occ.ndim != 3:
        raise ValueError(f"occupied must be (X, Y, Z), got shape {occ.shape}")
    Z = occ.shape[2]
    has = occ.any(axis=2)
    z_top = Z - 1 - occ[:, :, ::-1].argmax(axis=2)  # first True from the top
    return np.where(has, z_top, 0), has


def bev_top_features(volume: np.ndarray, occupied: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fig. 5's top-down view: ``volume`` (C, Z, X, Y) predicted features, ``occupied`` (X, Y, Z) bool →
    (features (X, Y, C) of each column's highest occupied voxel, zeros where none; has (X, Y) bool)."""
    vol = np.asarray(volume)
    if vol.ndim != 4 or vol.shape[1:] != (occupied.shape[2], occupied.shape[0], occupied.shape[1]):
        raise ValueError(f"volume must be (C, Z, X, Y) matching occupied (X, Y, Z) {tuple(occupied.shape)}, got {vol.shape}")
    z_top, has = top_occupied(occupied)
    X, Y = z_top.shape
    xs, ys = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    feats = vol[:, z_top, xs, ys]  # (C, X, Y)
    return np.where(has[..., None], np.moveaxis(feats, 0, -1), 0), has


def occupied_features(volume: np.ndarray, occupied: np.ndarray) -> np.ndarray:
    """``volume`` (C, Z, X, Y), ``occupied`` (X, Y, Z) bool → (N, C) the features of the occupied voxels:
    the rows a scene's PCA is fitted on (empty space is not what the student was taught)."""
    vol = np.asarray(volume)
    occ_zxy = np.moveaxis(np.asarray(occupied, dtype=bool), 2, 0)  # (Z, X, Y)
    if vol.ndim != 4 or vol.shape[1:] != occ_zxy.shape:
        raise ValueError(f"volume must be (C, Z, X, Y) matching occupied (X, Y, Z) {tuple(occupied.shape)}, got {vol.shape}")
    return vol[:, occ_zxy].T


def bev_pca_image(volume: np.ndarray, occupied: np.ndarray, basis: PcaBasis, background: float = 1.0) -> np.ndarray:
    """``volume`` (C, Z, X, Y), ``occupied`` (X, Y, Z) → (X, Y, 3) RGB in [0, 1] of the top occupied voxel
    per column through ``basis``; columns with nothing occupied get ``background`` (white by default)."""
    feats, has = bev_top_features(volume, occupied)
    rgb = pca_rgb(feats, basis)
    return np.where(has[..., None], rgb, background)


def correlation_map(features: np.ndarray, index: tuple[int, ...], mask: np.ndarray | None = None) -> np.ndarray:
    """Fig. 6: cosine similarity of every feature in ``features`` (C, ...) with the one at ``index`` (a
    position in ``...``) → (...) in [-1, 1], exactly 1 at ``index``. ``mask`` (...) bool: NaN where False
    (unoccupied voxels, drawn blank)."""
    x = np.asarray(features, dtype=np.float64)
    if len(index) != x.ndim - 1:
        raise ValueError(f"index {index} must have {x.ndim - 1} coordinates for features of shape {x.shape}")
    if np.linalg.norm(x[(slice(None), *index)]) == 0:
        raise OccfeatError(f"the feature at {index} is all zeros, so it correlates with nothing; pick an occupied voxel")
    corr = cosine_map(x, x[(slice(None), *index)])
    corr[index] = 1.0  # a vector with itself; rounding would leave 1 - 1e-16
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != corr.shape:
            raise ValueError(f"mask must be {corr.shape}, got shape {mask.shape}")
        corr = np.where(mask, corr, np.nan)
    return corr


def cosine_map(features: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Cosine similarity of every feature in ``features`` (C, ...) with the vector ``ref`` (C,) → (...) in
    [-1, 1]. ``ref`` may come from another map or scene (the teacher's patch of one sample against a second
    sample's map); a zero feature gets 0."""
    x = np.asarray(features, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ref.shape != x.shape[:1]:
        raise ValueError(f"ref must be ({x.shape[0]},) for features of shape {x.shape}, got {ref.shape}")
    norms = np.linalg.norm(x, axis=0) * np.linalg.norm(ref)
    return np.clip(np.tensordot(ref, x, axes=(0, 0)) / np.maximum(norms, 1e-12), -1.0, 1.0)


def top_height(occupied: np.ndarray, z_centers: np.ndarray) -> np.ndarray:
    """``occupied`` (X, Y, Z) bool, ``z_centers`` (Z,) metres → (X, Y) height (m) of each column's highest
    occupied voxel, NaN where none: the occupancy target seen from above, coloured by how tall it is."""
    z_top, has = top_occupied(occupied)
    return np.where(has, np.asarray(z_centers, dtype=np.float64)[z_top], np.nan)


def subsample(n: int, at_most: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``at_most`` of ``n`` items, drawn without replacement by a seeded generator:
    a 3D scatter of a paper-size scene's ~10^5 voxels would take minutes to draw and show no more."""
    if n <= at_most:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=at_most, replace=False))


def teacher_pca_image(feature_map: np.ndarray, basis: PcaBasis, image_hw: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """A teacher map ``feature_map`` (Hp, Wp, C) → (H, W, 3) RGB in [0, 1] at the camera image size
    ``image_hw``, for laying beside or over the image. The colours are upsampled, not the features: the
    same picture at a fraction of the cost of projecting H·W vectors."""
    fmap = np.asarray(feature_map, dtype=np.float64)
    if fmap.ndim != 3:
        raise ValueError(f"feature_map must be (Hp, Wp, C), got shape {fmap.shape}")
    return upsample_hw(pca_rgb(fmap, basis), image_hw, mode)


def upsample_hw(image: np.ndarray, image_hw: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """``image`` (h, w, K) → (H, W, K) resized to ``image_hw`` (``mode``: "bilinear" or "nearest", to see the patches)."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64)).permute(2, 0, 1)[None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(t, size=tuple(int(s) for s in image_hw), mode=mode, **kwargs)
    return out[0].permute(1, 2, 0).numpy()


def pixel_to_patch(uv: tuple[float, float], image_hw: tuple[int, int], map_hw: tuple[int, int]) -> tuple[int, int]:
    """The (row, col) of the teacher map cell (map_hw (Hp, Wp)) that covers pixel ``uv`` (u right, v down, in
    continuous pixels of an image of ``image_hw`` (H, W)): the map covers the whole image resized, so a cell
    is (H/Hp) x (W/Wp) pixels. Clamped to the map, for points on its last edge."""
    (H, W), (Hp, Wp) = image_hw, map_hw
    row = min(max(int(np.floor(uv[1] * Hp / H)), 0), Hp - 1)
    col = min(max(int(np.floor(uv[0] * Wp / W)), 0), Wp - 1)
    return row, col
