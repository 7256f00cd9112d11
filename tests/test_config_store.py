"""Recipe loading and the crash-safe cache writer."""

import dataclasses
import json

import h5py
import numpy as np
import pytest

from occfeat.config import load_config, parse_overrides
from occfeat.data.store import CacheReader, CacheWriter, Payload
from occfeat.errors import OccfeatError


@dataclasses.dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclasses.dataclass
class Cfg:
    name: str = "x"
    epochs: int = 50
    optim: Optim = dataclasses.field(default_factory=Optim)


def test_recipe_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 10\noptim:\n  lr: 1\n")
    (tmp_path / "r.yaml").write_text("base: base.yaml\nname: r\noptim:\n  betas: [0.5, 0.6]\n")
    cfg = load_config(Cfg, tmp_path / "r.yaml", ["epochs=3", "optim.lr=2e-4"])
    assert cfg == Cfg(name="r", epochs=3, optim=Optim(lr=2e-4, betas=(0.5, 0.6)))
    assert isinstance(cfg.optim.lr, float)
    with pytest.raises(OccfeatError, match="unknown key 'epoch'"):
        load_config(Cfg, None, ["epoch=3"])
    with pytest.raises(OccfeatError, match="not key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(OccfeatError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")


def _writer(tmp_path, spec=None, tokens=None):
    tokens = tokens or [f"t{i}" for i in range(5)]
    return CacheWriter(tmp_path / "c.h5", tokens, spec or {"grid": {"shape": [2, 2]}, "sweeps": 1},
                       {"x": Payload((2, 2), "uint8")}, block_size=2)


def test_cache_writer_resumes_after_interruption_and_refuses_other_spec(tmp_path):
    w = _writer(tmp_path)
    assert w.pending() == [(0, 2), (2, 4), (4, 5)]
    w.write_block(0, 2, {"x": np.ones((2, 2, 2))})
    # simulate kill -9 mid-block: a stray .tmp file is ignored and the block is redone
    (w.parts / "00000002-00000004.tmp").write_bytes(b"garbage")
    w2 = _writer(tmp_path)
    assert w2.pending() == [(2, 4), (4, 5)]
    with pytest.raises(OccfeatError, match="sweeps"):
        _writer(tmp_path, spec={"grid": {"shape": [2, 2]}, "sweeps": 3})
    w2.write_block(2, 4, {"x": np.full((2, 2, 2), 2)}, valid=[True, False])
    w2.write_block(4, 5, {"x": np.full((1, 2, 2), 4)})
    assert w2.finalize() == ["t3"]
    assert not w2.parts.exists()
    with h5py.File(tmp_path / "c.h5") as f:
        assert f["x"].chunks == (1, 2, 2)
        assert json.loads(f.attrs["grid"]) == {"shape": [2, 2]} and f.attrs["sweeps"] == 1
        assert f["x"][4, 0, 0] == 4 and f["valid"][()].tolist() == [True, True, True, False, True]
    # idempotent: a finished cache is complete and left alone; another spec is refused
    assert _writer(tmp_path).pending() == []
    with pytest.raises(OccfeatError, match="another setting"):
        _writer(tmp_path, spec={"grid": {"shape": [3, 3]}, "sweeps": 1})
    # descriptive keys (toolkit version, where the weights file lay) never invalidate a cache
    assert _writer(tmp_path, spec={"grid": {"shape": [2, 2]}, "sweeps": 1, "occfeat_version": "9.9"}).complete
    r = CacheReader(tmp_path / "c.h5", expect={"sweeps": 1})
    assert r.get("x", "t1")[0, 0] == 1 and "t3" not in r
    with pytest.raises(OccfeatError, match="skipped"):
        r.get("x", "t3")
    with pytest.raises(OccfeatError, match="another setting"):
        CacheReader(tmp_path / "c.h5", expect={"sweeps": 10})


def test_corrupt_cache_is_a_clear_error(tmp_path):
    (tmp_path / "c.h5").write_bytes(b"not hdf5")
    with pytest.raises(OccfeatError, match="not a readable occfeat cache"):
        _writer(tmp_path)
    with pytest.raises(OccfeatError, match="not found"):
        CacheReader(tmp_path / "missing.h5")
