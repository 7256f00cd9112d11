"""Simple-BEV's flip augmentations: the pure flip helpers are self-inverse, and inside the networks the
flips only change what the encoder / decoder see, never the frame of the output."""

import pytest
import torch
from torch import nn

from occfeat.models import build_network, camera_networks
from occfeat.models.flips import encode_with_flips, flip_bev, flip_per_camera
from tests.test_models import tiny_batch, tiny_cfg


def test_flip_per_camera_is_self_inverse_and_flips_only_flagged_cameras():
    x = torch.rand(2, 3, 4, 5, 7)
    flags = torch.tensor([[True, False, False], [False, False, True]])
    y = flip_per_camera(x, flags)
    assert torch.equal(flip_per_camera(y, flags), x)
    assert torch.equal(y[0, 0], x[0, 0].flip(-1)) and torch.equal(y[1, 2], x[1, 2].flip(-1))
    assert torch.equal(y[0, 1:], x[0, 1:]) and torch.equal(y[1, :2], x[1, :2])
    assert flip_per_camera(x, None) is x


@pytest.mark.parametrize("shape", [(3, 2, 4, 6, 5), (3, 2, 6, 5)])  # volume (B, C, Z, X, Y) and BEV (B, C, X, Y)
def test_flip_bev_is_self_inverse_and_flips_the_right_axes(shape):
    x = torch.rand(*shape)
    flags = torch.tensor([[True, False], [False, True], [True, True]])
    y = flip_bev(x, flags)
    assert torch.equal(flip_bev(y, flags), x)
    assert torch.equal(y[0], x[0].flip(-2))  # along X
    assert torch.equal(y[1], x[1].flip(-1))  # along Y
    assert torch.equal(y[2], x[2].flip(-2, -1))
    assert torch.equal(flip_bev(x, torch.zeros(3, 2, dtype=torch.bool)), x)


class PointwiseEncoder(nn.Module):
    """A flip-equivariant stand-in for the image encoder: 8x8 average pooling (stride 8) + 1x1 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.AvgPool2d(8), nn.Conv2d(3, channels, 1))

    def forward(self, images):
        return self.net(images.flatten(0, 1)).unflatten(0, images.shape[:2])


def test_image_flip_and_flip_back_is_the_identity_on_the_encoder_path():
    enc = PointwiseEncoder(5)
    images = torch.rand(2, 3, 3, 32, 48)
    flags = torch.tensor([[True, False, True], [False, True, True]])
    assert torch.allclose(encode_with_flips(enc, images, flags), enc(images), atol=1e-6)
    # a real (not flip-equivariant) encoder sees the mirrored image: the flags are used
    conv = nn.Conv2d(3, 4, 3, stride=2)
    real = lambda x: conv(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # noqa: E731
    assert not torch.allclose(encode_with_flips(real, images, flags), real(images))


@pytest.mark.parametrize("arch", sorted(camera_networks()))
def test_network_output_with_flips_equals_output_without_up_to_equivariance(arch, test_grid):
    """With a flip-equivariant encoder, compressor and decoder, the flips leave the network's output
    unchanged: every flip is undone before the heads, and the intrinsics need no change."""
    torch.manual_seed(0)
    net = build_network(tiny_cfg(arch=arch), test_grid).eval()
    C, N_B = net.encoder.out_channels, net.bev_channels
    net.encoder = PointwiseEncoder(C)
    net.decoder = nn.Conv2d(N_B, N_B, 1)
    if arch == "simplebev":
        net.compress = nn.Conv2d(C * test_grid.shape[2], N_B, 1)
    batch = tiny_batch(B=2, S=2)
    plain = net.forward_bev(batch)
    flipped = {**batch, "flip_image": torch.tensor([[True, False], [True, True]]), "flip_bev": torch.tensor([[True, False], [True, True]])}
    with torch.no_grad():
        assert torch.allclose(net.forward_bev(flipped), plain, atol=1e-5)


def test_real_network_sees_the_flips(test_grid):
    torch.manual_seed(0)
    net = build_network(tiny_cfg(), test_grid).eval()
    batch = tiny_batch(B=1, S=2)
    with torch.no_grad():
        plain = net.forward_bev(batch)
        same = net.forward_bev({**batch, "flip_image": torch.zeros(1, 2, dtype=torch.bool), "flip_bev": torch.zeros(1, 2, dtype=torch.bool)})
        flipped = net.forward_bev({**batch, "flip_bev": torch.tensor([[True, False]])})
    assert torch.equal(same, plain)
    assert torch.isfinite(flipped).all() and not torch.allclose(flipped, plain)
