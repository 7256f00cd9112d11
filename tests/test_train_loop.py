"""The generic training loop, on a toy regression task (tests/fixtures/runs.py): run dir, exact resume,
gradient accumulation, NaN stop, config checks, schedules, and DDP over two gloo processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from occfeat.errors import OccfeatError
from occfeat.train.loop import fit, load_checkpoint
from tests.fixtures.runs import ToyTask, toy_train_config

REPO = Path(__file__).resolve().parents[1]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fit_writes_run_dir_and_learns(tmp_path):
    cfg = toy_train_config()
    out = fit(ToyTask(cfg), cfg, tmp_path / "run")
    run = tmp_path / "run"
    m = rows(run)
    # 24 samples / batch 4 = 6 steps per epoch, 3 epochs, a row per step.
    assert [r["step"] for r in m] == list(range(1, 19)) and out["step"] == 18
    assert sum(r["loss"] for r in m[-6:]) < 0.2 * sum(r["loss"] for r in m[:6])
    assert {"lr", "loss", "mae", "samples_per_s", "epoch"} <= set(m[0]) and m[5]["epoch"] == 1.0
    # train.keep_snapshots=1 (the default): the newest epoch's weights beside last.pt
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_003.pt", "last.pt"]
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["step"] == 18 and ck["config"]["train"]["lr"] == 0.3 and {"optimizer", "scheduler", "rng"} <= set(ck)
    assert "optimizer" not in load_checkpoint(run / "checkpoints" / "epoch_003.pt")
    assert "lr: 0.3" in (run / "config.yaml").read_text()


def test_keep_snapshots_keeps_only_the_newest_epochs_and_a_resume_still_works(tmp_path):
    import dataclasses

    cfg = dataclasses.replace(toy_train_config(), keep_snapshots=2)
    fit(ToyTask(cfg), dataclasses.replace(cfg, max_steps=8), tmp_path / "run")  # stops mid-epoch 2
    fit(ToyTask(cfg), cfg, tmp_path / "run", resume=True)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch_002.pt", "epoch_003.pt", "last.pt"]
    assert rows(tmp_path / "run")[-1]["step"] == 18
    with pytest.raises(OccfeatError, match="keep_snapshots must be >= 0"):
        fit(ToyTask(cfg), dataclasses.replace(cfg, keep_snapshots=-1), tmp_path / "bad")


@pytest.mark.parametrize("stop", [6, 8])  # at an epoch boundary and mid-epoch
def test_resume_reproduces_the_uninterrupted_run(tmp_path, stop):
    cfg = toy_train_config()
    full = ToyTask(cfg)
    fit(full, cfg, tmp_path / "a")
    part = toy_train_config(max_steps=stop)
    fit(ToyTask(part), part, tmp_path / "b")
    assert len(rows(tmp_path / "b")) == stop
    resumed = ToyTask(cfg)  # a fresh process would build the task again: weights come from the checkpoint
    torch.nn.init.zeros_(resumed.model.lin.weight)
    fit(resumed, cfg, tmp_path / "b", resume=True)
    key = lambda r: (r["step"], r["lr"], r["loss"], r["mae"])  # noqa: E731
    assert [key(r) for r in rows(tmp_path / "b")] == [key(r) for r in rows(tmp_path / "a")]
    assert torch.equal(resumed.model.lin.weight, full.model.lin.weight)


def test_grad_accum_matches_the_large_batch(tmp_path):
    big = toy_train_config(batch_size=4, epochs=1)
    acc = toy_train_config(batch_size=2, grad_accum=2, epochs=1)
    a, b = ToyTask(big), ToyTask(acc)
    fit(a, big, tmp_path / "a")
    fit(b, acc, tmp_path / "b")
    assert len(rows(tmp_path / "b")) == 6
    for ra, rb in zip(rows(tmp_path / "a"), rows(tmp_path / "b")):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
    torch.testing.assert_close(a.model.lin.weight, b.model.lin.weight)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = toy_train_config()
    run = tmp_path / "run"
    with pytest.raises(OccfeatError) as e:
        fit(ToyTask(cfg, poison_epoch=1), cfg, run)
    msg = str(e.value)
    assert "\n" not in msg and "became NaN" in msg and "(epoch 2)" in msg and str(run / "checkpoints" / "last.pt") in msg
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["step"] == 6 and all(torch.isfinite(v).all() for v in ck["task"]["model"].values())
    assert max(r["step"] for r in rows(run)) < 12
    with pytest.raises(OccfeatError, match="no checkpoint was written yet"):
        fit(ToyTask(cfg, poison_epoch=0), cfg, tmp_path / "early")


def test_run_dir_and_resume_config_checks(tmp_path):
    cfg = toy_train_config(epochs=1)
    fit(ToyTask(cfg), cfg, tmp_path / "run")
    with pytest.raises(OccfeatError, match="already exists; pass --resume"):
        fit(ToyTask(cfg), cfg, tmp_path / "run")
    other = toy_train_config(epochs=1, lr=0.01, optimizer="adamw")
    with pytest.raises(OccfeatError, match=r"train\.lr \(0\.3 → 0\.01\)") as e:
        fit(ToyTask(other), other, tmp_path / "run", resume=True)
    assert "train.optimizer" in str(e.value)
    with pytest.raises(OccfeatError, match="nothing to resume"):
        fit(ToyTask(cfg), cfg, tmp_path / "empty", resume=True)
    # Extending a constant-lr run is allowed (OccFeat† = 100 epochs); with onecycle it is not.
    longer = toy_train_config(epochs=2)
    assert fit(ToyTask(longer), longer, tmp_path / "run", resume=True)["step"] == 12
    oc1, oc2 = toy_train_config(epochs=1, schedule="onecycle"), toy_train_config(epochs=2, schedule="onecycle")
    fit(ToyTask(oc1), oc1, tmp_path / "oc")
    with pytest.raises(OccfeatError, match="train.epochs"):
        fit(ToyTask(oc2), oc2, tmp_path / "oc", resume=True)
    with pytest.raises(OccfeatError, match="fewer than one optimizer step"):
        big = toy_train_config(batch_size=32)
        fit(ToyTask(big), big, tmp_path / "big")
    with pytest.raises(OccfeatError, match="train.optimizer='sgd'"):
        bad = toy_train_config(optimizer="sgd")
        fit(ToyTask(bad), bad, tmp_path / "bad")


def test_onecycle_warms_up_then_anneals(tmp_path):
    cfg = toy_train_config(schedule="onecycle", epochs=5)
    fit(ToyTask(cfg), cfg, tmp_path / "run")
    lrs = [r["lr"] for r in rows(tmp_path / "run")]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(0.3, rel=0.05) and 0 < peak < 5
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :])) and lrs[-1] < 0.05


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    cfg = toy_train_config()
    fit(ToyTask(cfg), cfg, tmp_path / "single")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.fixtures.runs", str(tmp_path / "ddp")]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    ddp, single = rows(tmp_path / "ddp"), rows(tmp_path / "single")
    # Each rank takes 2 of the same 4 samples; the all-reduced mean loss equals the 1-process batch-4 loss.
    assert [r["step"] for r in ddp] == [r["step"] for r in single]  # rank 0 alone wrote: no duplicate rows
    assert len(list((tmp_path / "ddp" / "tensorboard").glob("events.out.tfevents.*"))) == 1  # nor event files
    for a, b in zip(ddp, single):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    w_ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["task"]["model"]
    w_one = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["task"]["model"]
    for k in w_one:
        torch.testing.assert_close(w_ddp[k], w_one[k], rtol=1e-4, atol=1e-5)
