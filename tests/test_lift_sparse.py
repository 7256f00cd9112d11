"""The sparse voxel lift (VoxelLift: valid (voxel, camera) pairs only, embedding_bag) equals the dense
grid_sample reference (DenseVoxelLift) in value and in gradient, on random rigs with every augmentation's
geometry, and inside the whole SimpleBEV network with its flips."""

import numpy as np
import pytest
import torch

from occfeat.geometry import crop_intrinsics, invert_rigid, make_transform, reference_frame, scale_intrinsics, yaw_matrix
from occfeat.grid import BevGrid
from occfeat.models import build_network
from occfeat.models.flips import flip_bev
from occfeat.models.lift import DenseVoxelLift, VoxelLift, lift_taps
from tests.test_models import tiny_batch, tiny_cfg

GRID = BevGrid(bounds=((-12.0, 12.0), (-12.0, 12.0), (-2.0, 4.0)), shape=(24, 20, 3))
IMAGE_HW, FEAT_HW = (48, 80), (6, 10)
# optical axes (x right, y down, z forward) of a camera looking along ego yaw 0, as columns in ego axes
FORWARD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera(yaw_deg: float, position, up: bool = False) -> np.ndarray:
    """cam_T_ego (4, 4) of a camera at ``position`` looking along ego yaw ``yaw_deg`` (or straight up)."""
    R = yaw_matrix(np.deg2rad(yaw_deg)) @ FORWARD
    if up:  # optical axis +z ego: every voxel below the camera is behind it
        R = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]).T
    return invert_rigid(make_transform(R, np.asarray(position, dtype=float)))


def random_rig(rng: np.random.Generator, B: int, ref: int | None = None, blind: bool = False):
    """(K (B, S, 3, 3), cam_T_ego (B, S, 4, 4)): 4 cameras at random yaws with overlapping views and
    random intrinsics resized + cropped to IMAGE_HW as the augmentation does; ``ref`` moves the grid into
    that camera's frame (the random reference camera); ``blind`` adds a camera that sees nothing."""
    Ks, Ts = [], []
    for _ in range(B):
        yaws = [0.0, 50.0, 180.0, -70.0] + rng.uniform(-20, 20, 4)
        T = np.stack([camera(y, (rng.uniform(-1, 1), rng.uniform(-1, 1), 1.5)) for y in yaws])
        if blind:
            T = np.concatenate([T, camera(0.0, (0.0, 0.0, 100.0), up=True)[None]])
        if ref is not None:
            T = T @ invert_rigid(reference_frame(T, ref))  # cam_T_ref = cam_T_ego · ego_T_ref
        K = []
        for _ in range(len(T)):
            f = rng.uniform(30, 60)
            k = np.array([[f, 0.0, 50.0], [0.0, f, 30.0], [0.0, 0.0, 1.0]])  # at a 100x60 "stored" image
            s = rng.uniform(0.8, 1.2)
            k = crop_intrinsics(scale_intrinsics(k, s, s), rng.uniform(0, 100 * s - 80), rng.uniform(0, 60 * s - 48))
            K.append(k)
        Ks.append(np.stack(K))
        Ts.append(T)
    as_t = lambda a: torch.tensor(np.stack(a), dtype=torch.float32)  # noqa: E731
    return as_t(Ks), as_t(Ts)


def both_lifts(feats, K, T, upstream):
    """(volume, d volume·upstream / d feats) of the sparse and the dense lift."""
    out = []
    for lift in (VoxelLift(GRID), DenseVoxelLift(GRID)):
        f = feats.clone().requires_grad_()
        volume = lift(f, K, T, IMAGE_HW)
        (volume * upstream).sum().backward()
        out.append((volume.detach(), f.grad))
    return out


@pytest.mark.parametrize("case", ["ego", "reference camera", "blind camera"])
def test_sparse_lift_equals_dense_in_value_and_gradient(case):
    rng = np.random.default_rng({"ego": 0, "reference camera": 1, "blind camera": 2}[case])
    K, T = random_rig(rng, B=2, ref=2 if case == "reference camera" else None, blind=case == "blind camera")
    B, S = K.shape[:2]
    X, Y, Z = GRID.shape
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(B, S, 5, *FEAT_HW, generator=gen)
    upstream = torch.randn(B, 5, Z, X, Y, generator=gen)
    (sparse, g_sparse), (dense, g_dense) = both_lifts(feats, K, T, upstream)
    assert sparse.shape == dense.shape == (B, 5, Z, X, Y)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-5, atol=1e-5)
    # the rig exercises what it should: voxels seen by 0, 1 and 2+ cameras, and gradients that are not 0
    taps = lift_taps(VoxelLift(GRID).centers, K, T, IMAGE_HW, FEAT_HW)
    seen_by = torch.bincount(taps.voxel, minlength=B * X * Y * Z)
    assert (seen_by == 0).any() and (seen_by == 1).any() and (seen_by >= 2).any()
    assert g_dense.abs().sum() > 0
    if case == "blind camera":
        assert torch.all(g_sparse[:, -1] == 0) and torch.all(g_dense[:, -1] == 0)


@pytest.mark.parametrize("lift_class", [VoxelLift, DenseVoxelLift])
def test_lift_with_bev_flips_equals_flip_bev_of_the_lift(lift_class):
    """flips inside the lift (VoxelLift: mirrored voxel centres) = flip_bev of the unflipped volume, in value
    and in the features' gradient; every flag combination in one batch, and a volume not symmetric in X/Y."""
    K, T = random_rig(np.random.default_rng(5), B=4, ref=1)
    X, Y, Z = GRID.shape
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(4, 4, 3, *FEAT_HW, generator=gen)
    upstream = torch.randn(4, 3, Z, X, Y, generator=gen)
    flips = torch.tensor([[False, False], [True, False], [False, True], [True, True]])
    out = []
    for inside in (True, False):
        f = feats.clone().requires_grad_()
        lift = lift_class(GRID)
        volume = lift(f, K, T, IMAGE_HW, flips) if inside else flip_bev(lift(f, K, T, IMAGE_HW), flips)
        (volume * upstream).sum().backward()
        out.append((volume.detach(), f.grad))
    (inside, g_inside), (after, g_after) = out
    assert inside.shape == (4, 3, Z, X, Y)
    torch.testing.assert_close(inside, after, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_inside, g_after, rtol=1e-5, atol=1e-5)
    unflipped = out[1][0]
    for b in range(1, 4):  # the flips change each flipped sample's volume: the test can fail
        assert not torch.allclose(flip_bev(unflipped, flips)[b], flip_bev(unflipped, None)[b], atol=1e-3)


def test_sparse_lift_when_no_camera_sees_anything():
    K, T = random_rig(np.random.default_rng(3), B=1)
    T = torch.tensor(camera(0.0, (0.0, 0.0, 100.0), up=True), dtype=torch.float32).expand(1, 4, 4, 4).contiguous()
    feats = torch.randn(1, 4, 3, *FEAT_HW, requires_grad=True)
    volume = VoxelLift(GRID)(feats, K, T, IMAGE_HW)
    volume.sum().backward()
    assert torch.all(volume == 0) and torch.all(feats.grad == 0)


def test_sparse_lift_under_bf16_autocast_keeps_float32_geometry():
    K, T = random_rig(np.random.default_rng(4), B=1)
    feats = torch.randn(1, 4, 5, *FEAT_HW).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sparse = VoxelLift(GRID)(feats, K, T, IMAGE_HW)
        dense = DenseVoxelLift(GRID)(feats, K, T, IMAGE_HW)
    assert sparse.dtype == dense.dtype == torch.bfloat16
    torch.testing.assert_close(sparse.float(), dense.float(), rtol=1e-2, atol=1e-2)


def test_simplebev_with_sparse_lift_equals_dense_with_flips_and_reference_camera(test_grid):
    """The whole network, forward and gradients, with image + BEV flips and a non-ego frame."""
    torch.manual_seed(0)
    net = build_network(tiny_cfg(), test_grid).eval()
    batch = tiny_batch(B=2, S=2, H=32, W=64)  # small images: the encoder's cost is not what is tested
    ref_T_ego = torch.tensor(make_transform(yaw_matrix(0.7), np.array([1.0, -2.0, 0.0])), dtype=torch.float32)
    batch["cam_T_ego"] = batch["cam_T_ego"] @ torch.linalg.inv(ref_T_ego)
    batch["K"][1] = torch.tensor(crop_intrinsics(scale_intrinsics(batch["K"][1].numpy(), 1.1, 1.1), 4.0, 3.0))
    batch["flip_image"] = torch.tensor([[True, False], [False, True]])
    batch["flip_bev"] = torch.tensor([[True, False], [True, True]])
    results = []
    for lift in (net.lift, DenseVoxelLift(test_grid)):
        net.lift = lift
        net.zero_grad(set_to_none=True)
        bev = net.forward_bev(batch)
        (bev * torch.linspace(-1, 1, bev.numel()).view_as(bev)).sum().backward()
        results.append((bev.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    (bev_s, grads_s), (bev_d, grads_d) = results
    torch.testing.assert_close(bev_s, bev_d, rtol=1e-4, atol=1e-4)
    assert grads_s.keys() == grads_d.keys() and len(grads_s) > 10
    for name in grads_s:  # relative to each gradient's size: deep encoder gradients are sums of cancelling terms
        err = (grads_s[name] - grads_d[name]).norm() / grads_d[name].norm().clamp(min=1e-12)
        assert err < 1e-3, f"{name}: relative gradient error {err:.1e}"


def test_sparse_volume_is_channels_last_and_the_compressor_folds_it_as_simple_bev():
    """VoxelLift's volume is a view of (B, X, Y, Z, C) rows; SimpleBEV's compressor folds it in that memory
    order with its weight's input channels permuted, which must equal Simple-BEV's fold (channel c·Z + z)
    of the same volume made contiguous, in value and in every gradient."""
    K, T = random_rig(np.random.default_rng(6), B=2, ref=None)
    feats = torch.randn(2, 4, 3, *FEAT_HW, generator=torch.Generator().manual_seed(2))
    volume = VoxelLift(GRID)(feats, K, T, IMAGE_HW)
    assert volume.permute(0, 3, 4, 2, 1).is_contiguous() and not volume.is_contiguous()
    net = build_network(tiny_cfg(image_channels=3, bev_channels=8), GRID)
    grads = []
    for v in (volume.detach().clone(), volume.detach().contiguous()):  # channels last, channels first
        v.requires_grad_()
        net.zero_grad()
        out = net.compress_volume(v)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), v.grad, net.compress[0].weight.grad.clone()))
    (out_cl, g_cl, w_cl), (out_cf, g_cf, w_cf) = grads
    torch.testing.assert_close(out_cl, out_cf, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_cl, g_cf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_cl, w_cf, rtol=1e-4, atol=1e-5)
    # the permutation matters: folding in memory order with the unpermuted weight gives another answer
    conv = net.compress[0]
    wrong = torch.nn.functional.conv2d(volume.detach().permute(0, 3, 4, 2, 1).flatten(3).permute(0, 3, 1, 2), conv.weight, padding=1)
    assert not torch.allclose(net.compress[1:](wrong), out_cf, atol=1e-3)
