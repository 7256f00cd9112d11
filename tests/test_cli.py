"""The command line as a user meets it: -h / --version, fixed choices, one size convention,
--print-config, results on stdout and the rest on stderr, --json, `occfeat report runs/*`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from occfeat.cli.common import parse_size
from occfeat.cli.main import app
from occfeat.errors import OccfeatError
from tests.test_report import _run

REPO = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = str(REPO / "recipes/pretrain/synthetic-tiny.yaml")
TINY_FINETUNE = str(REPO / "recipes/finetune/synthetic-tiny.yaml")


def flat(text: str) -> str:
    """Output as one line of words: typer draws usage errors and help in boxes that wrap anywhere."""
    return " ".join(text.replace("│", " ").split())


def occfeat(*args, cwd=None) -> subprocess.CompletedProcess:
    """The real command in a subprocess (stdout and stderr apart, neither a terminal)."""
    return subprocess.run([sys.executable, "-m", "occfeat", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_short_help_and_version():
    from occfeat import __version__

    for args in (["-h"], ["pretrain", "-h"], ["finetune", "-h"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0 and "Usage:" in res.output, (args, res.output)
    for flag in ("--version", "-V"):
        res = CliRunner().invoke(app, [flag])
        assert res.exit_code == 0 and res.output.strip() == __version__
    assert "--install-completion" in CliRunner().invoke(app, ["-h"]).output


@pytest.mark.parametrize(
    "args, bad",
    [
        (["finetune", "--recipe", TINY_FINETUNE, "--task", "car", "--fraction", "0.1"], "'car' is not one of 'vehicle', 'map'"),
        (["finetune", "--recipe", TINY_FINETUNE, "--task", "map", "--fraction", "0.1", "--device", "gpu"], "'gpu' is not one of auto, cpu, cuda"),
        (["pretrain", "--recipe", TINY_PRETRAIN, "--device", "tpu"], "'tpu' is not one of auto, cpu, cuda"),
        (["evaluate", "somewhere", "--device", "cuda:x"], "'cuda:x' is not one of auto, cpu, cuda"),
    ],
)
def test_fixed_choices_are_refused_before_anything_runs(args, bad):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and bad in flat(res.output), res.output


def test_every_size_is_height_by_width():
    assert parse_size("224x400", "--input-size", "224x406") == (224, 400)
    with pytest.raises(OccfeatError, match="did you mean 900x1600"):
        parse_size("1600x900", "--image-size", "900x1600")  # WIDTHxHEIGHT by habit
    with pytest.raises(OccfeatError, match="HEIGHTxWIDTH"):
        parse_size("abc", "--image-size", "900x1600")
    for cmd in (["synth", "-h"], ["extract", "-h"]):
        assert "HEIGHTxWIDTH" in flat(CliRunner().invoke(app, cmd).output)


def test_print_config_shows_the_resolved_config_without_running(tmp_path):
    from occfeat.config import load_config, parse_overrides
    from occfeat.train.finetune import resolve_config
    from occfeat.train.pretrain import PretrainConfig

    res = CliRunner().invoke(app, ["pretrain", "--recipe", TINY_PRETRAIN, "--print-config", "--epochs", "7", "--device", "cpu", "train.lr=0.002"])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output)
    assert shown["train"]["epochs"] == 7 and shown["train"]["device"] == "cpu" and shown["train"]["lr"] == 0.002
    cfg = load_config(PretrainConfig, TINY_PRETRAIN, {"train": {"epochs": 7, "device": "cpu", "lr": 0.002}})
    from occfeat.config import to_dict

    assert shown == to_dict(cfg)
    res = CliRunner().invoke(app, ["finetune", "--recipe", TINY_FINETUNE, "--task", "map", "--fraction", "0.01", "--print-config"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output) == to_dict(resolve_config(TINY_FINETUNE, "map", 0.01, parse_overrides([])))
    assert not list(tmp_path.iterdir())  # nothing was written
    # without --print-config, what a run needs is still required, in one line
    res = CliRunner().invoke(app, ["pretrain", "--recipe", TINY_PRETRAIN])
    assert res.exit_code == 2 and res.output.strip() == "error: missing option --dataroot (see --help)"
    res = CliRunner().invoke(app, ["pretrain", "--recipe", TINY_PRETRAIN, "train.epochs=abc"])
    assert res.exit_code == 2 and "train.epochs: expected an integer" in res.output


def test_results_on_stdout_and_whole_when_piped(tmp_path):
    runs = tmp_path / ("runs-with-a-long-folder-name-that-a-narrow-terminal-would-split-" + "x" * 60)
    runs.mkdir()
    _run(runs, "vehicle-none-f0.01-s0", 0.137)
    _run(runs, "vehicle-none-f0.01-s1", 0.141, seed=1)
    (runs / "gt-cache").mkdir()  # what occfeat finetune puts beside its runs
    pre = runs / "pretrain-run"
    pre.mkdir()
    (pre / "provenance.json").write_text("{}")
    out = tmp_path / "report"
    res = occfeat("report", *sorted(runs.iterdir()), "--out", out, "--no-plots")
    assert res.returncode == 0, res.stderr
    assert "13.9 ± 0.3" in res.stdout and "wrote" not in res.stdout  # the table on stdout, unwrapped
    assert f"wrote {out / 'table.md'}" in res.stderr  # a long path stays on one line
    assert f"skipped {runs / 'gt-cache'}: the shared ground-truth cache" in res.stderr
    assert f"skipped {pre}: a pretraining run" in res.stderr
    res = occfeat("report", *sorted(runs.iterdir()), "--out", out, "--no-plots", "--json")
    rows = json.loads(res.stdout)  # strict JSON: the std of one seed would be NaN
    assert [(r["pretraining"], r["n"], round(r["mean"], 3)) for r in rows] == [("None", 2, 0.139)]


def test_report_of_no_finished_run_is_one_line(tmp_path):
    (tmp_path / "gt-cache").mkdir()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "gt-cache"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "gt-cache has no metrics.json" in res.output


def test_synth_writes_the_sweeps_asked_for(tmp_path):
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "w"), "--scenes", "1", "--samples-per-scene", "2",
                                   "--image-size", "36x64", "--sweeps", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "w" / "sweeps" / "LIDAR_TOP").iterdir())) == 2  # one sweep before each key frame
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--sweeps", "11"])
    assert res.exit_code == 2 and res.output.startswith("error: --sweeps must be in 1..10")


def test_evaluation_device_resolves_like_training():
    import dataclasses

    import torch

    from occfeat.train.finetune import _device
    from occfeat.train.finetune_config import FinetuneConfig

    cfg = FinetuneConfig()
    assert _device(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cpu"))).type == "cpu"
    if not torch.cuda.is_available():  # `occfeat evaluate --device cuda` here: one line, not a torch traceback later
        with pytest.raises(OccfeatError, match="no CUDA device"):
            _device(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cuda")))
