"""BEV networks, the voxel lift and the unsplat head: shapes, gradients, geometry against hand-computed
projections, and the head's layers exactly as paper §3.2-3.3."""

import pytest
import torch
from torch import nn

from occfeat.errors import OccfeatError
from occfeat.grid import BevGrid
from occfeat.config import merge
from occfeat.models import (
    NetworkConfig, ReferenceUnsplatDecoder, SegmentationHead, UnsplatDecoder, build_network, camera_networks, pointwise, predict_at,
)
from occfeat.models.lift import VoxelLift

# camera axes (x right, y down, z forward) from ego axes (x forward, y left, z up)
FRONT = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
BACK = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])


def cam_T_ego(R: torch.Tensor) -> torch.Tensor:
    T = torch.eye(4)
    T[:3, :3] = R
    return T


def tiny_batch(B=1, S=2, H=64, W=112) -> dict:
    K = torch.tensor([[60.0, 0.0, W / 2], [0.0, 60.0, H / 2], [0.0, 0.0, 1.0]])
    poses = torch.stack([cam_T_ego(FRONT if s % 2 == 0 else BACK) for s in range(S)])
    return {"images": torch.rand(B, S, 3, H, W), "K": K.expand(B, S, 3, 3).clone(), "cam_T_ego": poses.expand(B, S, 4, 4).clone()}


# An arch's own knobs that shrink it to CPU-test size; a network not listed here is built with its defaults.
TINY_KNOBS = {"bevformer": {"layers": 1, "ffn_dim": 32}}


def tiny_cfg(arch: str = "simplebev", **kw) -> NetworkConfig:
    """The config of ``arch`` at test size, resolved as a recipe's ``network:`` delta would be."""
    shared = dict(random_init=True, bev_channels=16, image_channels=16, fuse_channels=16)
    return merge(NetworkConfig(), {"arch": arch, **shared, **TINY_KNOBS.get(arch, {}), **kw}, where="network")


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "resnet50"])
@pytest.mark.parametrize("arch", sorted(camera_networks()))
def test_network_forward_shape_and_encoder_gradients(arch, backbone, test_grid):
    net = build_network(tiny_cfg(arch=arch, backbone=backbone), test_grid)
    assert net.provenance.pretrained is False and net.provenance.source == "random-init"
    bev = net.forward_bev(tiny_batch())
    X, Y, _ = test_grid.shape
    assert bev.shape == (1, 16, X, Y) and torch.isfinite(bev).all()
    (bev**2).mean().backward()
    first = next(p for p in net.encoder.backbone.parameters() if p.ndim == 4)  # the stem conv
    assert first.grad is not None and first.grad.abs().sum() > 0
    # every trainable parameter takes part: DDP refuses a module with unused parameters, and unused
    # blocks (timm's EfficientNet feature extractor runs all of them) only cost time
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"


def test_encoder_normalises_with_backbone_stats(test_grid):
    net = build_network(tiny_cfg(), test_grid)
    mean = net.encoder.backbone.pretrained_cfg["mean"]
    assert torch.allclose(net.encoder.mean.flatten(), torch.tensor(mean))
    assert net.encoder.stride == 8


def test_lift_samples_expected_feature_and_masks():
    # 21 voxels along ego x (centres -10 .. 10 m) at y = -2, z = 1
    grid = BevGrid(bounds=((-10.5, 10.5), (-2.5, -1.5), (0.5, 1.5)), shape=(21, 1, 1))
    H, W, Hf, Wf = 16, 32, 8, 16  # features at half the image resolution: K must be scaled by 1/2
    K = torch.tensor([[8.0, 0.0, 16.0], [0.0, 8.0, 8.0], [0.0, 0.0, 1.0]])
    # camera 0 (front): features = their own pixel-centre coordinates (u, v), linear so bilinear is exact
    v, u = torch.meshgrid(torch.arange(Hf) + 0.5, torch.arange(Wf) + 0.5, indexing="ij")
    f0 = torch.stack([u, v])
    f1 = torch.stack([torch.full((Hf, Wf), 100.0), torch.full((Hf, Wf), 200.0)])  # front, constant
    f2 = torch.full((2, Hf, Wf), 7.0)  # back camera, constant
    feats = torch.stack([f0, f1, f2])[None]  # (1, 3, 2, Hf, Wf)
    poses = torch.stack([cam_T_ego(FRONT), cam_T_ego(FRONT), cam_T_ego(BACK)])[None]
    vol = VoxelLift(grid)(feats, K.expand(1, 3, 3, 3), poses, (H, W))
    assert vol.shape == (1, 2, 1, 21, 1)
    # voxel (10, -2, 1): camera (2, -1, 10) → image (8·2/10 + 16, 8·-1/10 + 8) = (17.6, 7.2) → features (8.8, 3.6);
    # front cameras 0 and 1 see it, the back camera does not → mean of the two
    assert torch.allclose(vol[0, :, 0, 20, 0], torch.tensor([(8.8 + 100) / 2, (3.6 + 200) / 2]), atol=1e-4)
    # voxel (-10, -2, 1): only the back camera sees it
    assert torch.allclose(vol[0, :, 0, 0, 0], torch.tensor([7.0, 7.0]))
    # voxel at x = 0: depth 0 for every camera → seen by none → 0
    assert torch.all(vol[0, :, 0, 10, 0] == 0)


def test_bevformer_camera_visibility(test_grid):
    net = build_network(tiny_cfg(arch="bevformer"), test_grid)
    b = tiny_batch(S=1)  # one front camera
    views, count = net.camera_views(b["K"], b["cam_T_ego"], (64, 112), (8, 14))
    X, Y, _ = test_grid.shape
    count = count.view(X, Y)
    xs = torch.from_numpy(test_grid.axis_centers(0))
    assert torch.all(count[xs < 0] == 0)  # behind the only camera
    assert count[xs > 1].sum() > 0 and count.max() == 1
    assert views[0].keep.sum() == count.sum()


def test_unsplat_decoder_and_predictors_exactly_as_paper():
    from occfeat.objectives.features import Features, FeaturesConfig
    from occfeat.objectives.occupancy import Occupancy, OccupancyConfig

    nb, z, ny = 8, 4, 12
    head = UnsplatDecoder(nb, z)
    c1, norm, act, c2 = head.bev
    assert isinstance(c1, nn.Conv2d) and c1.kernel_size == (3, 3) and (c1.in_channels, c1.out_channels) == (nb, nb)
    assert isinstance(norm, nn.InstanceNorm2d) and isinstance(act, nn.ReLU)
    assert isinstance(c2, nn.Conv2d) and c2.kernel_size == (1, 1) and c2.out_channels == nb * z
    c3, soft, c4 = head.volume
    assert isinstance(c3, nn.Conv3d) and c3.kernel_size == (1, 1, 1) and (c3.in_channels, c3.out_channels) == (nb, 2 * nb)
    assert isinstance(soft, nn.Softplus)
    assert isinstance(c4, nn.Conv3d) and c4.kernel_size == (1, 1, 1) and (c4.in_channels, c4.out_channels) == (2 * nb, nb)
    occ = Occupancy(OccupancyConfig(), None, nb).predictor
    feat = Features(FeaturesConfig(feature_dim=ny), None, nb).predictor
    for conv, cout in ((occ, 1), (feat, ny)):
        assert isinstance(conv, nn.Conv3d) and conv.kernel_size == (1, 1, 1) and (conv.in_channels, conv.out_channels) == (nb, cout)
    assert head(torch.randn(2, nb, 5, 6)).shape == (2, nb, z, 5, 6)


def test_unsplat_reshape_groups_channels_per_height_bin():
    nb, z = 3, 4
    head = UnsplatDecoder(nb, z)
    conv = head.bev[3]
    with torch.no_grad():  # output channel k = k everywhere
        conv.weight.zero_()
        conv.bias.copy_(torch.arange(nb * z, dtype=torch.float32))
    vol = head.unsplat(torch.randn(1, nb, 2, 2))
    for zi in range(z):
        for c in range(nb):
            assert torch.all(vol[0, c, zi] == zi * nb + c)  # group zi holds channels zi·N_B .. zi·N_B + N_B - 1


def test_predict_at_equals_dense_conv():
    torch.manual_seed(0)
    predictor = nn.Conv3d(8, 12, kernel_size=1)
    volume = torch.randn(2, 8, 4, 5, 6)
    dense = predictor(volume)  # (B, N_y, Z, X, Y)
    idx = torch.stack([torch.randint(0, n, (30,)) for n in (2, 5, 6, 4)], 1)  # [b, x, y, z]
    b, x, y, zz = idx.unbind(1)
    channels_last = volume.permute(0, 3, 4, 2, 1).contiguous().permute(0, 4, 3, 1, 2)  # F_V's layout: a row gather
    for v in (volume, channels_last):
        got = predict_at(predictor, v, idx)
        assert got.shape == (30, 12)
        assert torch.allclose(got, dense[b, :, zz, x, y], atol=1e-5)
    # the row gather's gradient keeps F_V's layout and equals advanced indexing's
    grads = []
    for v in (volume, channels_last):
        v = v.clone().requires_grad_()
        predict_at(predictor, v, idx).square().sum().backward()
        grads.append(v.grad)
    assert grads[1].permute(0, 3, 4, 2, 1).is_contiguous()
    torch.testing.assert_close(grads[1], grads[0])


def unsplat_pair(nb: int, z: int, seed: int):
    """An UnsplatDecoder, its ReferenceUnsplatDecoder with the same weights, an occupancy predictor and a
    (2, nb, 7, 9) F_B."""
    torch.manual_seed(seed)
    fast, ref = UnsplatDecoder(nb, z), ReferenceUnsplatDecoder(nb, z)
    ref.load_state_dict(fast.state_dict())
    return fast, ref, nn.Conv3d(nb, 1, kernel_size=1), torch.randn(2, nb, 7, 9)


def test_unsplat_decoder_equals_its_conv_reference_in_value_and_gradient():
    """UnsplatDecoder runs its 1x1/1x1x1 convs as matmuls on channels-last rows (pointwise); it must equal
    ReferenceUnsplatDecoder (the Conv2d/Conv3d modules themselves, channels first) with the same weights,
    F_V and the occupancy predictor's logits, and every gradient."""
    nb, z = 8, 4
    fast, ref, occ, bev = unsplat_pair(nb, z, seed=0)
    outs = []
    for head in (fast, ref):
        x = bev.clone().requires_grad_()
        volume = head(x)
        logits = pointwise(occ, volume)
        ((volume * torch.linspace(-1, 1, volume.numel()).view_as(volume)).sum() + logits.square().sum()).backward()
        outs.append((volume.detach(), logits.detach(), x.grad, [p.grad.clone() for p in head.parameters()], occ.weight.grad.clone()))
        head.zero_grad()
        occ.zero_grad()
    (v1, l1, g1, p1, o1), (v2, l2, g2, p2, o2) = outs
    assert v1.shape == v2.shape == (2, nb, z, 7, 9)
    assert v1.permute(0, 3, 4, 2, 1).is_contiguous() and v2.is_contiguous()  # (B, X, Y, Z, C) / channels first
    torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(o1, o2, rtol=1e-4, atol=1e-5)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_channels_last_paths_under_bf16_autocast_match_their_references():
    """The CUDA recipe trains under bf16 autocast: the channels-last unsplat decoder (+ occupancy predictor)
    and SimpleBEV's channels-last fold must give what their channels-first references give there too,
    to bf16 precision (run on the CPU's autocast, which casts the same ops)."""
    nb, z = 8, 4
    fast, ref, occ, bev = unsplat_pair(nb, z, seed=2)
    net = build_network(tiny_cfg(image_channels=4, bev_channels=nb), BevGrid(bounds=((-4.0, 4.0), (-4.0, 4.0), (-1.0, 2.0)), shape=(7, 9, 3)))
    volume = torch.randn(2, 7, 9, 3, 4).permute(0, 4, 3, 1, 2)  # (B, C, Z, X, Y) over (B, X, Y, Z, C) rows
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pointwise(occ, fast(bev)), net.compress_volume(volume)
        want = pointwise(occ, ref(bev)), net.compress_volume(volume.contiguous())
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w.float(), rtol=3e-2, atol=3e-2)


def test_pointwise_is_the_conv_in_any_layout():
    torch.manual_seed(1)
    conv3, conv2 = nn.Conv3d(6, 5, kernel_size=1), nn.Conv2d(6, 5, kernel_size=1)
    vol = torch.randn(2, 6, 3, 4, 5)
    layouts = [vol, vol.permute(0, 3, 4, 2, 1).contiguous().permute(0, 4, 3, 1, 2), vol.transpose(3, 4).contiguous().transpose(3, 4)]
    for v in layouts:
        torch.testing.assert_close(pointwise(conv3, v), conv3(vol), rtol=1e-5, atol=1e-6)
    img = torch.randn(2, 6, 4, 5)
    for v in (img, img.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(pointwise(conv2, v), conv2(img), rtol=1e-5, atol=1e-6)
    assert pointwise(conv2, img.contiguous(memory_format=torch.channels_last)).is_contiguous(memory_format=torch.channels_last)


def test_segmentation_head_shape():
    assert SegmentationHead(16, 3)(torch.randn(2, 16, 7, 9)).shape == (2, 3, 7, 9)


def test_bad_inputs_are_one_line_errors(test_grid):
    with pytest.raises(OccfeatError, match=r"network.arch: unknown arch 'lss' \(known: bevformer, lidar, simplebev\)"):
        tiny_cfg(arch="lss")
    with pytest.raises(OccfeatError, match="divisible"):
        build_network(tiny_cfg(arch="bevformer", bev_channels=10), test_grid)
    net = build_network(tiny_cfg(), test_grid)
    b = tiny_batch()
    with pytest.raises(OccfeatError, match="lacks key"):
        net.forward_bev({"images": b["images"]})
    with pytest.raises(OccfeatError, match="do not fit"):
        net.forward_bev({**b, "K": b["K"][:, :1]})


@pytest.mark.parametrize("arch", sorted(camera_networks()))
def test_bf16_autocast_forward_backward_is_finite(arch):
    small = BevGrid(bounds=((-16.0, 16.0), (-16.0, 16.0), (-3.5, 6.5)), shape=(16, 16, 4))  # bf16 is slow on CPU
    net = build_network(tiny_cfg(arch=arch), small)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bev = net.forward_bev(tiny_batch(S=1, H=32, W=56))
    assert torch.isfinite(bev.float()).all()
    bev.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_bevformer_self_attention_reference_is_the_cell_itself(test_grid):
    from occfeat.models.bevformer import deformable_sample

    net = build_network(tiny_cfg(arch="bevformer"), test_grid)
    X, Y, _ = test_grid.shape
    ix, iy = torch.meshgrid(torch.arange(X), torch.arange(Y), indexing="ij")
    value = (ix * 100 + iy).float()[None, None]  # (1, 1, X, Y): cell (x, y) holds 100x + y
    got = deformable_sample(value, net.ref[None, :, None, :], torch.ones(1, X * Y, 1))
    assert torch.allclose(got.flatten(), value.flatten(), atol=1e-3)


def test_spatial_cross_attention_zero_offsets_samples_anchor_mean():
    from occfeat.models.bevformer import CameraView, SpatialCrossAttention

    C, Hf, Wf = 2, 4, 6
    sca = SpatialCrossAttention(C, C, heads=1, heights=2, points_per_height=1, dropout=0.0)
    with torch.no_grad():
        for lin in (sca.value, sca.out):
            lin.weight.copy_(torch.eye(C))
            lin.bias.zero_()
        sca.offsets.bias.zero_()  # weights are zero-initialised → uniform attention, zero offsets
    v, u = torch.meshgrid(torch.arange(Hf) + 0.5, torch.arange(Wf) + 0.5, indexing="ij")
    feats = torch.stack([u, v])[None, None]  # (1, 1, 2, Hf, Wf): pixel-centre coordinates
    # query 1 of 2 is seen; its two anchors at pixels (2.5, 1.5) and (4.0, 2.5); query 0 is not seen
    uv = torch.tensor([[2.5, 1.5], [4.0, 2.5]])
    anchors = (uv / torch.tensor([Wf, Hf]) * 2 - 1)[None, None]
    view = CameraView(order=torch.tensor([[1]]), keep=torch.tensor([[True]]), anchors=anchors, anchor_ok=torch.ones(1, 1, 2, dtype=torch.bool))
    q = torch.zeros(1, 2, C)
    out = sca(q, torch.zeros_like(q), feats, [view], count=torch.tensor([[0.0, 1.0]]))
    assert torch.allclose(out[0, 1], uv.mean(0), atol=1e-5)
    assert torch.all(out[0, 0] == 0)
    # an anchor behind the camera / off the map is left out of the softmax: all weight on the other one
    view.anchor_ok[0, 0, 1] = False
    out = sca(q, torch.zeros_like(q), feats, [view], count=torch.tensor([[0.0, 1.0]]))
    assert torch.allclose(out[0, 1], uv[0], atol=1e-5)


def test_backbone_weights_from_file_reach_the_encoder(tmp_path, test_grid):
    import timm

    ref = timm.create_model("efficientnet_b0", pretrained=False)
    path = tmp_path / "effb0.pth"
    torch.save(ref.state_dict(), path)
    net = build_network(tiny_cfg(random_init=False, backbone_weights=str(path)), test_grid)
    assert net.provenance.pretrained and net.provenance.source.startswith("file:") and net.provenance.sha256
    sd = ref.state_dict()
    enc = net.encoder.backbone.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in enc.items())
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "rn18.pth")
    with pytest.raises(OccfeatError, match="does not fit"):
        build_network(tiny_cfg(random_init=False, backbone_weights=str(tmp_path / "rn18.pth")), test_grid)
