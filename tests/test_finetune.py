"""Finetune: the label-fraction rule, config resolution, and a 2-step finetune + evaluate on the synthetic world."""

import pytest

from occfeat.errors import OccfeatError
from occfeat.train.finetune import FRACTION_DEFAULTS, config_as_dict, config_from_dict, resolve_config, select_labelled

TOKENS = [f"tok{i:04d}" for i in range(1000)]


def test_subset_is_deterministic_nested_and_sized():
    one, ten, full = (select_labelled(TOKENS, f, seed=3) for f in (0.01, 0.1, 1.0))
    assert (len(one), len(ten), len(full)) == (10, 100, 1000)
    assert set(one) <= set(ten) <= set(full) == set(TOKENS)
    assert select_labelled(TOKENS, 0.1, seed=3) == ten  # same seed, same subset
    assert select_labelled(list(reversed(TOKENS)), 0.1, seed=3) == ten  # the split's order does not matter
    assert set(select_labelled(TOKENS, 0.1, seed=4)) != set(ten)  # another seed, another subset


def test_subset_rounds_up_and_keeps_at_least_one():
    assert len(select_labelled(TOKENS[:12], 0.01, seed=0)) == 1
    assert len(select_labelled(TOKENS[:12], 0.1, seed=0)) == 2  # ceil(1.2)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_out_of_range_fraction_is_a_one_line_error(bad):
    with pytest.raises(OccfeatError, match="--fraction must be in"):
        select_labelled(TOKENS, bad, seed=0)
    with pytest.raises(OccfeatError, match="--fraction must be in"):
        resolve_config(None, "vehicle", bad)


def test_paper_defaults_per_fraction_then_overrides():
    for fraction, row in FRACTION_DEFAULTS.items():
        train = resolve_config(None, "vehicle", fraction).train
        assert (train.epochs, train.lr, train.batch_size, train.grad_accum) == tuple(row.values())
        assert (train.optimizer, train.schedule, train.weight_decay) == ("adamw", "onecycle", 1e-7)
    cfg = resolve_config(None, "map", 0.1, ["train.lr=5e-4", "grid.shape=[50,50,8]"])
    assert cfg.train.lr == 5e-4 and cfg.train.epochs == 50 and cfg.grid.shape == (50, 50, 8)
    assert config_from_dict(config_as_dict(cfg)) == cfg
    with pytest.raises(OccfeatError, match="unknown task"):
        resolve_config(None, "lanes", 0.1)
