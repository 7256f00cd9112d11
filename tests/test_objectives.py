"""The objectives layer: the registry finds every objective, recipes list objectives by name, the total
loss is the weighted sum of their terms, and saved configs resolve to today's dataclasses."""

import pytest
import torch
from torch import nn

from occfeat.config import load_config, resolve_saved, to_dict
from occfeat.errors import OccfeatError
from occfeat.objectives import registry
from occfeat.objectives.base import Context, Objective, ObjectiveConfig
from occfeat.train.pretrain import PretrainConfig, PretrainModel, config_from_saved, objectives_label


def test_registry_finds_the_objectives_in_their_own_files():
    reg = registry()
    assert {"occupancy", "features", "img_also"} <= set(reg)
    for name, cls in reg.items():
        assert cls.name == name and cls.label and issubclass(cls.Config, ObjectiveConfig)
        assert cls.__module__ == f"occfeat.objectives.{cls.__module__.rsplit('.', 1)[1]}"
        assert cls.Config.__doc__ and "weight" in {f for f in cls.Config.__dataclass_fields__}


def test_default_is_occfeat_and_recipes_list_objectives():
    cfg = PretrainConfig()
    assert {n: c.weight for n, c in cfg.objectives.items()} == {"occupancy": 1.0, "features": 0.01}  # paper eq. 1, λ = 0.01
    assert objectives_label(cfg) == "Occ+Feat"
    occ = load_config(PretrainConfig, "recipes/pretrain/occ-only.yaml")
    assert list(occ.objectives) == ["occupancy"] and objectives_label(occ) == "Occ"
    lam = load_config(PretrainConfig, "recipes/pretrain/lambda-0.1.yaml", ["objectives.features.feature_dim=384"])
    assert lam.objectives["features"].weight == 0.1 and lam.objectives["features"].feature_dim == 384
    also = load_config(PretrainConfig, "recipes/pretrain/img-also.yaml")
    assert list(also.objectives) == ["img_also"] and objectives_label(also) == "Img-ALSO"
    c = also.objectives["img_also"]
    assert (c.decimation, c.max_query_dist, c.radius) == (0.10, 0.10, 1.0)  # paper §4.2: ALSO's 10 cm, 10 cm, 1 m
    with pytest.raises(OccfeatError, match=r"unknown name 'depth' \(known: .*img_also.*\)"):
        load_config(PretrainConfig, None, ["objectives.depth.weight=1"])
    with pytest.raises(OccfeatError, match="unknown key 'lam'"):
        load_config(PretrainConfig, None, ["objectives.features.lam=1"])


def test_a_saved_config_is_whole_not_a_delta():
    occ = load_config(PretrainConfig, "recipes/pretrain/occ-only.yaml")
    assert config_from_saved(to_dict(occ), "saved") == occ  # features stays removed, not back at its default
    assert resolve_saved(PretrainConfig, to_dict(PretrainConfig()), "saved") == PretrainConfig()


def test_old_string_loss_modes_read_as_objectives():
    base = to_dict(PretrainConfig())
    del base["objectives"]
    for loss, want in [("both", {"occupancy": 1.0, "features": 0.5}), ("occ", {"occupancy": 1.0}), ("feat", {"features": 1.0})]:
        cfg = config_from_saved({**base, "loss": loss, "lam": 0.5, "feature_dim": 384}, "old")
        assert {n: c.weight for n, c in cfg.objectives.items()} == want


class _Const(Objective):
    """A stand-in objective whose loss is the mean of F_B times a constant (not in the package: not registered)."""

    def __init__(self, value: float):
        super().__init__(ObjectiveConfig(), None, 2)
        self.value = value

    def forward(self, ctx: Context, batch: dict) -> dict:
        return {"loss_const": self.value * ctx.bev.mean(), "loss_extra": torch.tensor(123.0)}


def test_total_is_the_weighted_sum_of_each_objectives_first_term():
    net = nn.Conv2d(1, 2, 1)
    torch.nn.init.constant_(net.weight, 1.0)
    torch.nn.init.zeros_(net.bias)
    model = PretrainModel(lambda_net(net), None, {"a": _Const(2.0), "b": _Const(3.0)}, {"a": 1.0, "b": 0.01})
    total, terms = model({"x": torch.ones(1, 1, 2, 2)})
    assert total.item() == pytest.approx(1.0 * 2.0 + 0.01 * 3.0)  # mean(F_B) = 1
    assert terms["loss"].item() == pytest.approx(total.item()) and not terms["loss"].requires_grad
    assert "network" not in " ".join(model.heads_state())
    assert "_Const" not in [c.__name__ for c in registry().values()]


def lambda_net(conv):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, batch):
            return self.conv(batch["x"])

    return Net()
