"""What a training run leaves beside its checkpoints and prints while it runs, on the toy task
(tests/fixtures/runs.py): TensorBoard events equal to metrics.jsonl (also across a resume), the
checkpoint retention rule, and progress that reads cleanly in a log file and is silent when turned off."""

import io
import json
from pathlib import Path

import pytest
import torch

from occfeat.progress import LOG_STEPS, progress_bar
from occfeat.train.loop import fit, load_checkpoint
from occfeat.train.tblog import open_writer, tb_dir
from tests.fixtures.runs import ToyTask, toy_train_config


def rows(run: Path) -> list[dict]:
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def tb_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard reads the run's event files (orphaned steps purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir(run)), purge_orphaned_data=True)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for r in rows(run):
        for k, v in r.items():
            if k != "step":
                out.setdefault(f"train/{k}", []).append((r["step"], v))
    return out


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag  # every step once, in order
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6), tag  # float32 events


def test_tensorboard_holds_every_metrics_row_also_after_a_killed_run_resumes(tmp_path):
    cfg = toy_train_config()
    run = tmp_path / "run"
    fit(ToyTask(cfg), toy_train_config(max_steps=8), run)  # a checkpoint at step 8, mid-epoch 2
    # What a kill after step 10 leaves: rows and events past the checkpoint, which the resume retrains.
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 9, "loss": 999.0}) + "\n" + json.dumps({"step": 10, "loss": 999.0}) + "\n")
    stale = open_writer(run)
    stale.add_scalar("train/loss", 999.0, 9), stale.add_scalar("train/loss", 999.0, 10)
    stale.close()
    fit(ToyTask(cfg), cfg, run, resume=True)
    got = tb_scalars(run)
    assert_same(got, expected_scalars(run))
    assert [s for s, _ in got["train/loss"]] == list(range(1, 19)) and 999.0 not in [v for _, v in got["train/loss"]]
    assert {"train/lr", "train/mae", "train/epoch", "train/samples_per_s"} <= set(got)


def test_retention_keeps_last_pt_and_the_newest_k_snapshots(tmp_path):
    def files(run: Path) -> list[str]:
        return sorted(p.name for p in (run / "checkpoints").iterdir())

    # k = 0: last.pt alone, also after a resume that runs more epochs (a constant lr extends).
    none = toy_train_config(keep_snapshots=0, epochs=2)
    fit(ToyTask(none), none, tmp_path / "none")
    assert files(tmp_path / "none") == ["last.pt"]
    # k = 2 on resume (retention may change on --resume): the newest two of the epochs written from then on.
    more = toy_train_config(keep_snapshots=2, epochs=4)
    fit(ToyTask(more), more, tmp_path / "none", resume=True)
    assert files(tmp_path / "none") == ["epoch_003.pt", "epoch_004.pt", "last.pt"]
    last = load_checkpoint(tmp_path / "none" / "checkpoints" / "last.pt")
    assert last["step"] == 24 and "optimizer" in last  # constant lr: a later --resume may extend it again

    # A finished onecycle run can never step again: last.pt keeps the weights alone (a third of the size),
    # while a stop before the end (max_steps) keeps everything a resume needs.
    oc = toy_train_config(schedule="onecycle", epochs=2)
    fit(ToyTask(oc), toy_train_config(schedule="onecycle", epochs=2, max_steps=7), tmp_path / "oc")
    assert "optimizer" in load_checkpoint(tmp_path / "oc" / "checkpoints" / "last.pt")
    task = ToyTask(oc)
    fit(task, oc, tmp_path / "oc", resume=True)
    last = load_checkpoint(tmp_path / "oc" / "checkpoints" / "last.pt")
    assert last["step"] == 12 and not {"optimizer", "scheduler", "rng"} & set(last)
    assert files(tmp_path / "oc") == ["epoch_002.pt", "last.pt"]
    assert torch.equal(last["task"]["model"]["lin.weight"], task.model.lin.weight)
    # Resuming the finished run again (a rerun of the same command) does nothing and fails nothing.
    assert fit(ToyTask(oc), oc, tmp_path / "oc", resume=True)["step"] == 12


class ToyTaskWithFiles(ToyTask):
    def run_files(self) -> dict[str, str]:  # as pretraining's provenance.json
        return {"notes.txt": "toy"}


def test_progress_in_a_log_file_is_whole_lines_with_the_epoch_and_silent_when_off(tmp_path, capsys):
    cfg = toy_train_config()  # 3 epochs of 6 steps
    fit(ToyTaskWithFiles(cfg), cfg, tmp_path / "toy-run")
    err = capsys.readouterr().err  # pytest's capture is not a terminal: the log-file form
    lines = err.splitlines()
    assert "\r" not in err and lines
    assert all(line.startswith("toy-run epoch ") for line in lines)
    assert {"toy-run epoch 1/3", "toy-run epoch 3/3"} <= {line.split(":")[0] for line in lines}
    assert lines[-1].startswith("toy-run epoch 3/3: 100% 18/18") and len(lines) <= LOG_STEPS + 2

    fit(ToyTask(cfg), cfg, tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""


def test_log_lines_are_rate_limited_and_a_short_delayed_bar_prints_nothing():
    buf = io.StringIO()
    with progress_bar(total=1000, desc="work", file=buf) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = buf.getvalue().splitlines()
    assert "\r" not in buf.getvalue() and len(lines) == LOG_STEPS + 1  # 0 %, then every tenth
    assert lines[0].startswith("work:   0% 0/1000") and lines[-1].startswith("work: 100% 1000/1000")
    quiet = io.StringIO()
    with progress_bar(total=3, desc="fast", delay=60, file=quiet) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""

