"""Feature pictures (paper Fig. 5-6, issue 17): a PCA basis fitted on one scene colours another the same
way, the correlation of a voxel with itself is 1, masks keep empty voxels out of the fit."""

import numpy as np
import pytest

from occfeat.errors import OccfeatError
from occfeat.features_viz import (bev_pca_image, bev_top_features, correlation_map, cosine_map, fit_pca, occupied_features, pca_rgb,
                                  pixel_to_patch, subsample, teacher_pca_image, top_height, top_occupied)


def _scene(seed: int, n: int = 500, c: int = 16) -> np.ndarray:
    """(n, c) features with three directions of decreasing spread, like a scene's few semantic classes."""
    rng = np.random.default_rng(seed)
    scales = np.array([10.0, 5.0, 2.0] + [0.1] * (c - 3))
    return rng.normal(size=(n, c)) * scales


def test_basis_applied_to_its_own_scene_reproduces_the_fit_colours():
    a = _scene(0)
    basis = fit_pca(a)
    rgb = pca_rgb(a, basis)
    assert rgb.shape == (500, 3) and rgb.min() >= 0 and rgb.max() <= 1
    # The stretch is the fit's 1st/99th percentile: 5 of 500 rows clip at each end of each component.
    assert (rgb == 0).sum(axis=0).tolist() == [5, 5, 5] and (rgb == 1).sum(axis=0).tolist() == [5, 5, 5]
    proj = (a - a.mean(axis=0)) @ basis.components.T
    inside = (rgb > 0) & (rgb < 1)
    assert np.allclose(rgb[inside], ((proj - basis.lo) / (basis.hi - basis.lo))[inside])
    assert np.array_equal(pca_rgb(a, fit_pca(a)), rgb)  # refitting gives the same colours, signs included


def test_basis_reuse_gives_a_second_scene_the_same_colours():
    a, b = _scene(0), _scene(1) + 3.0  # b is shifted: its own fit would recentre and recolour it
    basis = fit_pca(a)
    b[7] = a[42]  # one object seen in both scenes
    assert np.array_equal(pca_rgb(b, basis)[7], pca_rgb(a, basis)[42])
    assert not np.allclose(pca_rgb(b, fit_pca(b))[7], pca_rgb(a, basis)[42], atol=0.05)


def test_the_direction_of_largest_variance_is_the_first_component():
    rng = np.random.default_rng(2)
    direction = np.array([1.0, 2.0, -2.0, 0.0]) / 3.0
    x = rng.normal(size=(300, 1)) * 5.0 * direction + rng.normal(size=(300, 4)) * 0.05
    basis = fit_pca(x, k=3)
    assert abs(basis.components[0] @ direction) > 0.999
    assert np.allclose(basis.components @ basis.components.T, np.eye(3), atol=1e-9)


def test_the_mask_keeps_unoccupied_voxels_out_of_the_fit():
    a = _scene(3, n=200)
    junk = np.full((1000, 16), 100.0)  # empty voxels' features: would dominate mean and first component
    x = np.concatenate([a, junk])
    mask = np.arange(1200) < 200
    masked, clean = fit_pca(x, mask=mask), fit_pca(a)
    assert np.allclose(masked.mean, clean.mean) and np.allclose(masked.components, clean.components)
    assert np.allclose(masked.lo, clean.lo) and np.allclose(masked.hi, clean.hi)
    assert not np.allclose(fit_pca(x).mean, clean.mean)
    with pytest.raises(OccfeatError, match="at least 2"):
        fit_pca(x, mask=np.zeros(1200, dtype=bool))


def test_correlation_of_a_voxel_with_itself_is_one_and_the_map_is_a_cosine():
    rng = np.random.default_rng(4)
    vol = rng.normal(size=(8, 3, 5, 6))  # (C, Z, X, Y)
    idx = (1, 2, 4)
    corr = correlation_map(vol, idx)
    assert corr.shape == (3, 5, 6) and corr[idx] == 1.0
    assert np.nanmin(corr) >= -1 and np.nanmax(corr) <= 1 and (corr < 1).sum() == corr.size - 1
    other = (0, 3, 1)
    assert np.isclose(correlation_map(vol, other)[idx], corr[other])  # symmetric
    expected = vol[:, 0, 3, 1] @ vol[:, 1, 2, 4] / np.linalg.norm(vol[:, 0, 3, 1]) / np.linalg.norm(vol[:, 1, 2, 4])
    assert np.isclose(corr[other], expected)
    vol[:, 2, 0, 0] = -2 * vol[:, 1, 2, 4]
    assert np.isclose(correlation_map(vol, idx)[2, 0, 0], -1.0)


def test_correlation_mask_blanks_empty_voxels_and_a_zero_reference_is_an_error():
    vol = np.random.default_rng(5).normal(size=(4, 2, 3, 3))
    mask = np.ones((2, 3, 3), dtype=bool)
    mask[0, 0, 0] = False
    corr = correlation_map(vol, (1, 1, 1), mask=mask)
    assert np.isnan(corr[0, 0, 0]) and np.isfinite(corr[mask]).all()
    vol[:, 1, 1, 1] = 0
    with pytest.raises(OccfeatError, match="all zeros"):
        correlation_map(vol, (1, 1, 1))


def _volume_and_occupancy():
    """A (C=2, Z=4, X=2, Y=3) volume whose feature at (z, x, y) is [z, 10x + y], and its (X, Y, Z) occupancy."""
    Z, X, Y = 4, 2, 3
    z, x, y = np.meshgrid(np.arange(Z), np.arange(X), np.arange(Y), indexing="ij")
    vol = np.stack([z, 10 * x + y]).astype(float)
    occ = np.zeros((X, Y, Z), dtype=bool)
    occ[0, 0, [0, 2]] = True  # two voxels: the top one (z=2) is what a top-down view sees
    occ[1, 2, 3] = True
    occ[0, 1, 0] = True
    return vol, occ


def test_the_top_down_view_takes_each_columns_highest_occupied_voxel():
    vol, occ = _volume_and_occupancy()
    z_top, has = top_occupied(occ)
    assert has.tolist() == [[True, True, False], [False, False, True]]
    assert z_top[0, 0] == 2 and z_top[1, 2] == 3 and z_top[0, 1] == 0
    feats, has = bev_top_features(vol, occ)
    assert feats.shape == (2, 3, 2)
    assert feats[0, 0].tolist() == [2, 0] and feats[1, 2].tolist() == [3, 12] and feats[0, 1].tolist() == [0, 1]
    assert feats[0, 2].tolist() == [0, 0]
    assert occupied_features(vol, occ).shape == (4, 2)
    assert sorted(map(tuple, occupied_features(vol, occ).tolist())) == [(0, 0), (0, 1), (2, 0), (3, 12)]


def test_bev_and_teacher_images_are_rgb_in_range_with_a_background():
    vol, occ = _volume_and_occupancy()
    basis = fit_pca(occupied_features(vol, occ), k=2)
    img = bev_pca_image(np.concatenate([vol, vol[:1]]), occ, fit_pca(occupied_features(np.concatenate([vol, vol[:1]]), occ)))
    assert img.shape == (2, 3, 3) and (img[0, 2] == 1.0).all() and img.min() >= 0 and img.max() <= 1
    assert basis.components.shape == (2, 2)
    fmap = np.random.default_rng(6).normal(size=(4, 7, 16))
    t_basis = fit_pca(fmap.reshape(-1, 16))
    up = teacher_pca_image(fmap, t_basis, (8, 14), mode="nearest")
    assert up.shape == (8, 14, 3)
    assert np.allclose(up[::2, ::2], pca_rgb(fmap, t_basis))  # nearest ×2: each patch colour in a 2x2 block
    smooth = teacher_pca_image(fmap, t_basis, (28, 49))
    assert smooth.shape == (28, 49, 3) and smooth.min() >= 0 and smooth.max() <= 1


def test_a_pixel_falls_in_the_teacher_patch_that_covers_it():
    # 900x1600 image, 16x28 map (DINOv2 /14 at 224x392): a cell is 56.25 x 57.14 px
    assert pixel_to_patch((0.0, 0.0), (900, 1600), (16, 28)) == (0, 0)
    assert pixel_to_patch((57.2, 56.2), (900, 1600), (16, 28)) == (0, 1)
    assert pixel_to_patch((57.1, 56.3), (900, 1600), (16, 28)) == (1, 0)
    assert pixel_to_patch((1600.0, 900.0), (900, 1600), (16, 28)) == (15, 27)  # the far edge stays on the map


def test_a_reference_from_another_map_correlates_by_cosine():
    rng = np.random.default_rng(7)
    fmap = rng.normal(size=(5, 3, 4))  # (C, Hp, Wp)
    ref = fmap[:, 1, 2].copy()
    assert np.allclose(cosine_map(fmap, ref), correlation_map(fmap, (1, 2)))  # the same as a reference inside the map
    fmap[:, 0, 0] = -3 * ref
    fmap[:, 2, 3] = 0  # an empty feature: 0, not NaN
    out = cosine_map(fmap, ref)
    assert np.isclose(out[0, 0], -1.0) and out[2, 3] == 0.0 and out.shape == (3, 4)
    with pytest.raises(ValueError, match="ref must be"):
        cosine_map(fmap, ref[:3])


def test_top_height_is_the_centre_of_each_columns_highest_voxel():
    _, occ = _volume_and_occupancy()
    z_centers = np.array([-4.0, -2.0, 0.0, 2.0])
    h = top_height(occ, z_centers)
    assert h[0, 0] == 0.0 and h[1, 2] == 2.0 and h[0, 1] == -4.0  # z index 2, 3, 0
    assert np.isnan(h[0, 2]) and np.isnan(h[1, 0]) and np.isfinite(h).sum() == 3


def test_subsample_keeps_everything_when_small_and_is_seeded_when_not():
    assert subsample(5, 10).tolist() == [0, 1, 2, 3, 4]
    a, b = subsample(1000, 50), subsample(1000, 50)
    assert len(a) == 50 == len(np.unique(a)) and np.array_equal(a, b) and (np.diff(a) > 0).all() and a.max() < 1000
    assert not np.array_equal(a, subsample(1000, 50, seed=1))
