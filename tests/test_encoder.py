"""The image encoder's per-backbone Simple-BEV defaults: fusion width and drop-connect."""

import pytest
import torch

from occfeat.errors import OccfeatError
from occfeat.models.encoder import BACKBONE_DEFAULTS, ImageEncoder


def _drop_probs(encoder: ImageEncoder) -> list[float]:
    """drop_prob of every EfficientNet block in order (0 where the block has no stochastic depth)."""
    out = []
    for stage in encoder.backbone.blocks:
        for block in stage:
            out.append(float(getattr(block.drop_path, "drop_prob", 0.0)))
    return out


@pytest.mark.parametrize("backbone, width", [("efficientnet_b0", 128), ("resnet50", 512)])
def test_fusion_width_follows_the_backbone_unless_set(backbone, width):
    enc = ImageEncoder(backbone, 16, random_init=True)
    assert enc.fuse_channels == width == enc.fusion.out.in_channels  # Simple-BEV segnet.py:187, 221
    assert ImageEncoder(backbone, 16, fuse_channels=24, random_init=True).fusion.out.in_channels == 24


def test_efficientnet_drop_connect_is_scaled_per_block_as_efficientnet_pytorch():
    enc = ImageEncoder("efficientnet_b0", 16, fuse_channels=16, random_init=True)
    assert enc.drop_path_rate == BACKBONE_DEFAULTS["efficientnet_b0"].drop_path_rate == 0.2
    probs = _drop_probs(enc)
    # efficientnet_pytorch: rate * idx / len(_blocks) over all 16 EN-B0 blocks; the encoder keeps the blocks
    # up to the stride-16 level (the first 11). Both apply it only on residual blocks (stride 1, same width):
    # timm's blocks run drop_path only `if self.has_skip`.
    assert probs == pytest.approx([0.2 * i / 16 for i in range(11)])
    has_skip = [bool(b.has_skip) for stage in enc.backbone.blocks for b in stage]
    assert has_skip == [False, False, True, False, True, False, True, True, False, True, True]
    # active only while training: eval mode is deterministic
    x = torch.rand(1, 1, 3, 64, 96)
    enc.eval()
    assert torch.equal(enc(x), enc(x))
    off = ImageEncoder("efficientnet_b0", 16, fuse_channels=16, random_init=True, drop_path_rate=0.0)
    assert set(_drop_probs(off)) == {0.0}


def test_unknown_backbone_needs_explicit_encoder_settings():
    with pytest.raises(OccfeatError, match="network.fuse_channels"):
        ImageEncoder("resnet18", 16, random_init=True)
    enc = ImageEncoder("resnet18", 16, fuse_channels=32, drop_path_rate=0.0, random_init=True)
    assert enc.fusion.out.in_channels == 32
    with pytest.raises(OccfeatError, match="drop_path_rate"):
        ImageEncoder("resnet18", 16, fuse_channels=32, drop_path_rate=1.5, random_init=True)
