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

    import occfeat.cli.main

    return CliRunner().invoke(occfeat.cli.main.app, [str(a) for a in args])


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
    from occfeat.train.finetune import run_evaluate
    from occfeat.train.init import build_model

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
    from occfeat.train.init import build_model
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
    prun, net = _fake_pretrain_run(tmp_path, objectives={"features": None})
    ckpts = prun / "checkpoints"
    atomic_save(load_checkpoint(ckpts / "last.pt"), ckpts / "epoch_001.pt")
    (ckpts / "last.pt").write_bytes(b"PK\x03\x04 torn")
    ft = resolve_config(TINY, "map", 0.01)
    with pytest.raises(OccfeatError) as e:
        build_model(ft, prun)
    assert f"pass one of {ckpts}/epoch_*.pt as --init instead" in one_line(e)
    model, stamp, _ = build_model(ft, ckpts / "epoch_001.pt")
    assert all(torch.equal(model.network.state_dict()[k], v) for k, v in net.state_dict().items())
    assert stamp.run.endswith("epoch_001.pt") and stamp.label == "Occ"


# ---------------------------------------------------------------- item 4: run dirs that always continue


class Killed(BaseException):
    """What a kill -9 does to the write in progress: it stops there (BaseException: no handler catches it)."""


def kill_when_writing(monkeypatch, prefix: str) -> None:
    """Open (and so truncate) the next file named ``prefix*`` for writing, then die before writing a byte."""
    import builtins
    import io

    real = builtins.open

    def opener(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        if "w" in mode and Path(str(file)).name.startswith(prefix):
            f.close()
            raise Killed(file)
        return f

    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)


@pytest.mark.parametrize("leftover", ["checkpoints-only", "empty-config"])
def test_run_killed_before_its_config_is_not_started_for_both_paths(tmp_path, leftover):
    cfg = toy_train_config(epochs=1)
    full = fit(ToyTask(cfg), cfg, tmp_path / "full")
    for resume in (False, True):
        run = tmp_path / f"{leftover}-{resume}"
        (run / "checkpoints").mkdir(parents=True)
        if leftover == "empty-config":
            (run / "config.yaml").write_text("")
        assert fit(ToyTask(cfg), cfg, run, resume=resume)["step"] == full["step"]
        assert [r["loss"] for r in rows(run)] == [r["loss"] for r in rows(tmp_path / "full")]


def test_config_yaml_is_not_rewritten_when_unchanged_and_a_kill_while_writing_it_loses_nothing(tmp_path, monkeypatch):
    cfg = toy_train_config(max_steps=8)
    run = tmp_path / "run"
    fit(ToyTask(cfg), cfg, run)
    conf = run / "config.yaml"
    before = (conf.read_text(), conf.stat().st_mtime_ns, conf.stat().st_ino)
    fit(ToyTask(cfg), cfg, run, resume=True)  # nothing left to do, same config
    assert (conf.read_text(), conf.stat().st_mtime_ns, conf.stat().st_ino) == before
    longer = toy_train_config()  # max_steps may change on resume: config.yaml is rewritten
    with monkeypatch.context() as m:
        kill_when_writing(m, "config.yaml")
        with pytest.raises(Killed):
            fit(ToyTask(longer), longer, run, resume=True)
    assert conf.read_text() == before[0]
    assert fit(ToyTask(longer), longer, run, resume=True)["step"] == 18
    assert "max_steps: 0" in conf.read_text()


def test_torn_metrics_line_is_dropped_and_a_kill_during_the_rewrite_keeps_the_history(tmp_path, monkeypatch):
    cfg = toy_train_config()
    fit(ToyTask(cfg), cfg, tmp_path / "full")
    part = toy_train_config(max_steps=8)
    run = tmp_path / "run"
    fit(ToyTask(part), part, run)
    metrics = run / "metrics.jsonl"
    # The killed run had logged two more steps than its checkpoint holds, the last one torn mid-line.
    logged = metrics.read_text() + '{"step": 9, "loss": 0.1}\n{"step": 10, "lo'
    metrics.write_text(logged)
    with monkeypatch.context() as m:
        kill_when_writing(m, "metrics.jsonl")
        with pytest.raises(Killed):
            fit(ToyTask(cfg), cfg, run, resume=True)
    assert metrics.read_text() == logged  # the kill during the rewrite cost no history
    fit(ToyTask(cfg), cfg, run, resume=True)
    assert [r["loss"] for r in rows(run)] == [r["loss"] for r in rows(tmp_path / "full")]


# ---------------------------------------------------------------- item 6: every failure one line


@pytest.mark.parametrize("torch_says", ["OSError", "RuntimeError"])
def test_full_disk_during_checkpoint_save_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, torch_says):
    import errno

    cfg = toy_train_config()
    fit(ToyTask(cfg), cfg, tmp_path / "full")
    run = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # epoch 1 saves epoch_001.pt and last.pt; the disk fills during epoch_002.pt
        calls.append(f)
        if len(calls) == 3:
            f.write(b"partial")
            if torch_says == "RuntimeError":  # what torch 2's zip writer raised on a full disk here
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 32091584 vs 32091472")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save)
        with pytest.raises(OccfeatError) as e:
            fit(ToyTask(cfg), cfg, run)
    msg = one_line(e)
    assert f"cannot write {run / 'checkpoints' / 'epoch_002.pt'}: No space left on device" in msg
    assert "free space" in msg and "rerun with --resume (it continues from step 6)" in msg
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
    assert not list((run / "checkpoints").glob("*.tmp"))
    fit(ToyTask(cfg), cfg, run, resume=True)
    assert [r["loss"] for r in rows(run)] == [r["loss"] for r in rows(tmp_path / "full")]


def _deny(monkeypatch, target: Path, errno_: int) -> None:
    """Creating ``target`` fails as on a read-only folder (the tests run as root, where chmod denies nothing)."""
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == target:
            raise OSError(errno_, os.strerror(errno_), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_read_only_run_dir_and_report_folder_are_one_line(tmp_path, monkeypatch):
    import errno

    from occfeat.report import write_report
    from tests.test_report import _run

    cfg = toy_train_config(epochs=1)
    _deny(monkeypatch, tmp_path / "run", errno.EROFS)
    with pytest.raises(OccfeatError) as e:
        fit(ToyTask(cfg), cfg, tmp_path / "run")
    assert f"cannot write {tmp_path / 'run'}: Read-only file system; make {tmp_path} writable" in one_line(e)
    runs = [_run(tmp_path, "a", 0.3)]
    _deny(monkeypatch, tmp_path / "report", errno.EACCES)
    with pytest.raises(OccfeatError) as e:
        write_report(runs, tmp_path / "report", plots=False)
    assert f"cannot write {tmp_path / 'report'}: Permission denied" in one_line(e)


PRETRAIN = ["pretrain", "--recipe", "recipes/pretrain/synthetic-tiny.yaml", "--dataroot", "nowhere", "--version", "v1.0-mini",
            "--occupancy", "occ.h5", "--features", "feat.h5"]  # fmt: skip
FINETUNE = ["finetune", "--recipe", "recipes/finetune/synthetic-tiny.yaml", "--dataroot", "nowhere", "--version", "v1.0-mini",
            "--task", "vehicle", "--fraction", "0.1"]  # fmt: skip


@pytest.mark.parametrize(
    "override, expected",
    [("train.lr=abc", "train.lr: expected a number"), ("train.epochs=2.5", "train.epochs: expected an integer"),
     ("train.lr=[1e-4,", "is not valid YAML"), ("input_size=big", "input_size: expected a list")],  # fmt: skip
)
def test_bad_overrides_are_one_line_before_any_run_dir_exists(tmp_path, override, expected):
    for command in (PRETRAIN, FINETUNE):
        res = cli(*command, "--out", tmp_path / "run", override)
        assert res.exit_code == 2 and res.output.count("\n") == 1 and expected in res.output, res.output
        assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- item 8: the right advice after Ctrl-C


def test_ctrl_c_says_how_to_continue(tmp_path, monkeypatch):
    import occfeat.train.finetune
    import occfeat.train.pretrain

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(occfeat.train.pretrain, "pretrain", interrupted)
    monkeypatch.setattr(occfeat.train.finetune, "run_finetune", interrupted)
    cfg = toy_train_config(max_steps=2)
    fit(ToyTask(cfg), cfg, tmp_path / "started")
    for command in (PRETRAIN, FINETUNE):
        res = cli(*command, "--out", tmp_path / "started")
        assert res.exit_code == 130 and "rerun the same command with --resume added" in res.output, res.output
        res = cli(*command, "--out", tmp_path / "started", "--resume")
        assert res.exit_code == 130 and "rerun the same command (it has --resume)" in res.output, res.output
        res = cli(*command, "--out", tmp_path / "new")
        assert res.exit_code == 130 and "rerun the same command to start again" in res.output, res.output
    monkeypatch.setattr("occfeat.report.write_report", interrupted)
    res = cli("report", tmp_path / "started", "--out", tmp_path / "r")
    assert res.exit_code == 130 and "interrupted: rerun the same command to continue" in res.output


@pytest.mark.parametrize("raised", [OccfeatError("the disk is full; free space"), KeyboardInterrupt()])
def test_error_line_stands_alone_after_a_progress_bar(raised, capsys):
    """A failure in the middle of a progress bar: the message starts its own line, and the bar is not
    drawn again below it (it used to be, when the unclosed bar was garbage-collected at exit)."""
    import sys

    import typer
    from tqdm import tqdm

    from occfeat.cli.common import one_line_errors

    @one_line_errors
    def command():
        bar = tqdm(total=10, file=sys.stderr, ascii=True, mininterval=0)
        bar.update(3)
        raise raised

    with pytest.raises(typer.Exit):
        command()
    err = capsys.readouterr().err
    lines = err.replace("\r", "\n").splitlines()
    message = [i for i, line in enumerate(lines) if line.startswith(("error: ", "interrupted: "))]
    assert message, err
    assert message[-1] == len(lines) - 1, f"something was drawn after the message: {err!r}"
