"""Reliability of run dirs (issue 15, the training side): no code runs from a checkpoint, a run dir
always continues after a kill at any write, and every failure is one line. Faults are injected by
monkeypatching the write between two steps; the toy task of tests/fixtures/runs.py keeps it fast."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from occfeat.errors import OccfeatError
from occfeat.train.loop import CHECKPOINT_FORMAT, fit, load_checkpoint
from tests.fixtures.runs import ToyTask, toy_train_config


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def cli(*args):
    from typer.testing import CliRunner

    import cli.main

    return CliRunner().invoke(cli.main.app, [str(a) for a in args])


# ---------------------------------------------------------------- item 1: no code execution from a checkpoint


class Payload:
    """Unpickling this runs a shell command that creates ``marker`` (what a hostile last.pt would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _plant(path: Path, marker: Path, fmt: str = CHECKPOINT_FORMAT) -> None:
    """A checkpoint that looks like ours (format, step, config) but carries the payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": fmt, "step": 1, "epoch": 1, "config": {}, "task": {"model": {}, "x": Payload(marker)}}, path)


def test_crafted_checkpoint_runs_nothing_on_resume_init_or_evaluate(tmp_path):
    from tests.test_finetune import TINY, resolve_config
    from occfeat.train.finetune import build_model, run_evaluate

    marker = tmp_path / "pwned"
    cfg = toy_train_config(epochs=1)
    run = tmp_path / "run"
    fit(ToyTask(cfg), cfg, run)
    _plant(run / "checkpoints" / "last.pt", marker)
    with pytest.raises(OccfeatError) as e:  # pretrain/finetune --resume
        fit(ToyTask(cfg), cfg, run, resume=True)
    assert "not loaded" in one_line(e) and "could run code" in str(e.value)
    with pytest.raises(OccfeatError) as e:  # finetune --init
        build_model(resolve_config(TINY, "vehicle", 0.1), run)
    assert "not loaded" in one_line(e)
    with pytest.raises(OccfeatError) as e:  # occfeat evaluate
        run_evaluate(run)
    assert "not loaded" in one_line(e)
    res = cli("evaluate", run, "--no-progress")
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
    assert not marker.exists()
    # Sanity: the same file loaded the old way would have run the command.
    torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert marker.exists()


def test_old_format_checkpoint_is_refused_with_what_to_do(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "old" / "checkpoints" / "last.pt"
    _plant(path, marker, fmt="occfeat-checkpoint/1")
    with pytest.raises(OccfeatError) as e:
        load_checkpoint(path)
    assert "older occfeat format (occfeat-checkpoint/1)" in one_line(e) and "rerun the stage" in str(e.value)
    # What format /1 really held: numpy RNG state as an ndarray, refused by weights_only too.
    torch.save({"format": "occfeat-checkpoint/1", "rng": {"numpy": np.random.get_state()}}, path)
    with pytest.raises(OccfeatError, match="older occfeat format"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoints_hold_only_weights_only_types_and_resume_exactly(tmp_path):
    """The RNG states are stored as plain values; python/numpy/torch draws continue identically after a restore."""
    from occfeat.train.loop import _rng_state, _set_rng_state

    cfg = toy_train_config(epochs=1)
    fit(ToyTask(cfg), cfg, tmp_path / "run")
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)  # raises if anything else is in it
    assert ck["format"] == CHECKPOINT_FORMAT and {"python", "numpy", "torch"} <= set(ck["rng"])
    import random

    np.random.seed(5), random.seed(5), np.random.standard_normal()  # noqa: B018 - leaves a cached gaussian
    state = _rng_state()
    first = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(2).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    _set_rng_state(state)
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(2).tolist()) == first


def test_damaged_last_pt_advice_works_for_resume_and_init(tmp_path):
    from tests.test_finetune import TINY, _fake_pretrain_run, resolve_config
    from occfeat.train.finetune import build_model
    from occfeat.train.loop import atomic_save

    cfg = toy_train_config()
    fit(ToyTask(cfg), cfg, tmp_path / "full")
    part = toy_train_config(max_steps=8)
    run = tmp_path / "run"
    fit(ToyTask(part), part, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])
    with pytest.raises(OccfeatError) as e:
        fit(ToyTask(cfg), cfg, run, resume=True)
    assert "damaged; move it aside and rerun with --resume" in one_line(e)
    last.rename(last.with_name("last.pt.bad"))  # follow the advice
    fit(ToyTask(cfg), cfg, run, resume=True)
    assert [r["loss"] for r in rows(run)] == [r["loss"] for r in rows(tmp_path / "full")]

    # finetune --init: the advice names the epoch checkpoints, and --init accepts one.
    prun, net = _fake_pretrain_run(tmp_path, loss="occ")
    ckpts = prun / "checkpoints"
    atomic_save(load_checkpoint(ckpts / "last.pt"), ckpts / "epoch_001.pt")
    (ckpts / "last.pt").write_bytes(b"PK\x03\x04 torn")
    ft = resolve_config(TINY, "map", 0.01)
    with pytest.raises(OccfeatError) as e:
        build_model(ft, prun)
    assert f"pass one of {ckpts}/epoch_*.pt as --init instead" in one_line(e)
    model, stamp = build_model(ft, ckpts / "epoch_001.pt")
    assert all(torch.equal(model.network.state_dict()[k], v) for k, v in net.state_dict().items())
    assert stamp["init"]["run"].endswith("epoch_001.pt") and stamp["init"]["pretraining"]["mode"] == "occ"
