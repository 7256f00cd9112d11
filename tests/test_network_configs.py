"""Per-architecture network configs: ``arch`` picks the config class, every network registers itself from
its own file, and network dicts saved before per-architecture configs still load."""

import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import occfeat.models
from occfeat.config import load_config, merge, to_dict
from occfeat.errors import OccfeatError
from occfeat.models import BevFormerConfig, NetworkConfig, SimpleBevConfig, build_network, registered_networks, upgrade_network_dict
from occfeat.models import base as models_base
from occfeat.train.finetune import FinetuneConfig
from occfeat.train.pretrain import PretrainConfig


def test_the_default_network_is_simplebev_with_the_paper_numbers():
    for cls in (PretrainConfig, FinetuneConfig):
        net = cls().network
        assert type(net) is SimpleBevConfig and net.arch == "simplebev"
        assert (net.backbone, net.bev_channels, net.image_channels, net.encoder_strides) == ("efficientnet_b0", 128, 128, (8, 16))
    b = BevFormerConfig()
    assert (b.layers, b.heads, b.self_points, b.points_per_height, b.ffn_dim, b.dropout) == (6, 4, 8, 1, 1028, 0.1)


def test_setting_arch_switches_the_config_and_carries_the_shared_fields():
    cfg = load_config(PretrainConfig, None, {"network": {"backbone": "resnet50", "bev_channels": 64, "encoder_strides": [4, 8]}})
    cfg = merge(cfg, {"network": {"arch": "bevformer", "layers": 2}})
    net = cfg.network
    assert type(net) is BevFormerConfig and net.arch == "bevformer" and net.layers == 2 and net.heads == 4
    assert (net.backbone, net.bev_channels, net.encoder_strides) == ("resnet50", 64, (4, 8))
    back = merge(cfg, {"network": {"arch": "simplebev"}}).network  # BEVFormer's knobs do not follow
    assert back == SimpleBevConfig(backbone="resnet50", bev_channels=64, encoder_strides=(4, 8))
    # the recipe that sets the arch on top of a SimpleBEV base recipe
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "pretrain" / "bevformer-effb0.yaml"
    assert type(load_config(PretrainConfig, recipe).network) is BevFormerConfig


def test_another_archs_knob_and_an_unknown_arch_are_one_line_errors():
    with pytest.raises(OccfeatError, match=r"^override\.network: unknown key 'layers' \(known: arch, backbone, ") as e:
        load_config(PretrainConfig, None, ["network.layers=2"])
    assert "\n" not in str(e.value)
    with pytest.raises(OccfeatError, match=r"^override\.network\.arch: unknown arch 'lss' \(known: bevformer, lidar, simplebev\)$"):
        load_config(PretrainConfig, None, ["network.arch=lss"])


@pytest.mark.parametrize("arch", sorted(registered_networks()))
def test_saved_network_config_reads_back_equal(arch):
    """to_dict → YAML (what config.yaml holds) → merge over today's defaults gives the same config."""
    cfg = load_config(FinetuneConfig, None, {"network": {"arch": arch, "bev_channels": 32, "fuse_channels": 64, "drop_path_rate": 0.1}})
    saved = yaml.safe_load(yaml.safe_dump(to_dict(cfg)))
    back = merge(FinetuneConfig(), saved)
    assert back == cfg and type(back.network) is type(cfg.network) is registered_networks()[arch].config_class
    assert merge(NetworkConfig(), saved["network"]) == cfg.network  # how a run dir's network is rebuilt


# config.yaml of a finetune run written before per-architecture configs (demo_out/finetune/*/config.yaml)
OLD_SIMPLEBEV = yaml.safe_load("""
arch: simplebev
backbone: efficientnet_b0
bev_channels: 32
backbone_weights: null
random_init: true
image_channels: 32
fuse_channels: 64
drop_path_rate: null
encoder_strides:
- 8
- 16
bevformer_layers: 6
bevformer_heads: 4
bevformer_self_points: 8
bevformer_points_per_height: 1
bevformer_ffn_dim: 1028
bevformer_dropout: 0.1
""")


def test_old_flat_network_dicts_upgrade_to_todays_schema():
    with pytest.raises(OccfeatError, match="unknown key 'bevformer_layers'"):  # why the upgrade exists
        merge(NetworkConfig(), OLD_SIMPLEBEV)
    new = upgrade_network_dict(OLD_SIMPLEBEV)
    assert not any(k.startswith("bevformer") for k in new) and OLD_SIMPLEBEV["bevformer_layers"] == 6  # input untouched
    assert merge(NetworkConfig(), new) == SimpleBevConfig(bev_channels=32, image_channels=32, fuse_channels=64, random_init=True)

    old_bf = {**OLD_SIMPLEBEV, "arch": "bevformer", "bevformer_layers": 2, "bevformer_heads": 8, "bevformer_self_points": 4,
              "bevformer_points_per_height": 2, "bevformer_ffn_dim": 64, "bevformer_dropout": 0.0}  # fmt: skip
    got = merge(NetworkConfig(), upgrade_network_dict(old_bf))
    assert got == BevFormerConfig(bev_channels=32, image_channels=32, fuse_channels=64, random_init=True,
                                  layers=2, heads=8, self_points=4, points_per_height=2, ffn_dim=64, dropout=0.0)  # fmt: skip
    today = to_dict(got)
    assert upgrade_network_dict(today) == today  # today's dicts pass unchanged
    with pytest.raises(OccfeatError, match="sets both 'bevformer_layers' \\(2\\) and 'layers' \\(3\\)"):
        upgrade_network_dict({**old_bf, "layers": 3})


def test_build_network_needs_the_config_class_of_its_arch(test_grid):
    with pytest.raises(OccfeatError, match="network arch 'bevformer' needs a BevFormerConfig, got a SimpleBevConfig"):
        build_network(SimpleBevConfig(arch="bevformer", random_init=True), test_grid)


TOY_NETWORK = textwrap.dedent('''
    from dataclasses import dataclass

    import torch

    from occfeat.models.base import BevNetwork, NetworkConfig, unpack_batch
    from occfeat.weights import Provenance


    @dataclass
    class ToyConfig(NetworkConfig):
        arch: str = "toy"
        """The toy network."""
        scale: float = 1.0
        """Its one knob."""


    class Toy(BevNetwork):
        config_class = ToyConfig

        def __init__(self, cfg, grid):
            super().__init__()
            self.grid, self.bev_channels, self.scale = grid, cfg.bev_channels, cfg.scale

        def forward_bev(self, batch):
            images, _, _ = unpack_batch(batch)
            X, Y, _ = self.grid.shape
            return self.scale * images.mean() * torch.ones(images.shape[0], self.bev_channels, X, Y)
''')


def test_a_network_in_a_new_file_registers_itself(tmp_path, monkeypatch, test_grid):
    """A new network is one file (config + class): nothing else lists it, yet the registry, the config
    switch and build_network all find it."""
    (tmp_path / "toynet.py").write_text(TOY_NETWORK)
    monkeypatch.setattr(occfeat.models, "__path__", [*occfeat.models.__path__, str(tmp_path)])
    monkeypatch.setattr(models_base, "_NETWORKS", dict(models_base._NETWORKS))  # the toy leaves no trace
    try:
        assert "toy" in registered_networks() and {"simplebev", "bevformer"} <= set(NetworkConfig.variants())
        cfg = load_config(PretrainConfig, None, {"network": {"arch": "toy", "scale": 2.0, "bev_channels": 3}})
        assert type(cfg.network).__name__ == "ToyConfig" and cfg.network.backbone == "efficientnet_b0"
        assert build_network(cfg.network, test_grid).bev_channels == 3
        with pytest.raises(TypeError, match=r"arch 'toy' of Toy is already taken by occfeat\.models\.toynet\.Toy"):
            exec(compile(TOY_NETWORK, "elsewhere.py", "exec"), {"__name__": "elsewhere"})  # noqa: S102 - test source
    finally:
        sys.modules.pop("occfeat.models.toynet", None)
