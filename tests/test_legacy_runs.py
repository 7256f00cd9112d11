"""Runs written before the objectives layer (occfeat 0.1.0 at commit e6ca5a5: string loss modes, one
``head`` in the checkpoint, a flat network config) still resume exactly and still ``finetune --init``.

``tests/fixtures/legacy/pretrain-config.yaml`` and ``pretrain-provenance.json`` are verbatim from such a
run (`occfeat pretrain --recipe recipes/pretrain/synthetic-tiny.yaml ... input_size=[32,56]
network.bev_channels=8 network.image_channels=8 network.fuse_channels=16 train.num_workers=0
train.max_steps=2 train.batch_size=2`); its 45 MB checkpoint is not kept in the repo, so the test trains
the same two steps and writes them in that run's checkpoint layout (``task`` = {network, head,
provenance}, head keys bev.* / volume.* / occupancy.* / features.*, listed from the real file)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from occfeat.config import load_config
from occfeat.train.loop import CHECKPOINT_FORMAT, atomic_save
from occfeat.train.pretrain import PretrainConfig, pretrain, read_pretrain_run
from tests.fixtures.synth import TINY_VERSION

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "fixtures" / "legacy"
OVERRIDES = ["input_size=[32,56]", "network.bev_channels=8", "network.image_channels=8", "network.fuse_channels=16",
             "train.num_workers=0", "train.batch_size=2", "train.device=cpu"]  # fmt: skip


def _config(max_steps: int) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "recipes" / "pretrain" / "synthetic-tiny.yaml", [*OVERRIDES, f"train.max_steps={max_steps}"])


def _legacy_head(heads: dict) -> dict:
    """Today's heads state in the 0.1.0 layout: one UnsplatHead holding D_V and both predictors."""
    renames = {"decoder.": "", "objectives.occupancy.predictor.": "occupancy.", "objectives.features.predictor.": "features."}
    out = {}
    for k, v in heads.items():
        prefix = next(p for p in renames if k.startswith(p))
        out[renames[prefix] + k[len(prefix):]] = v
    return out


@pytest.fixture(scope="module")
def legacy_run(tmp_path_factory, synth_root, occupancy_h5, features_h5):
    """A 2-step run dir in the 0.1.0 layout on the test world, and an uninterrupted 4-step run."""
    tmp = tmp_path_factory.mktemp("legacy")
    args = (synth_root, TINY_VERSION, occupancy_h5, features_h5)
    pretrain(_config(2), *args, tmp / "run", split="mini_train")
    pretrain(_config(4), *args, tmp / "full", split="mini_train")
    old = yaml.safe_load((LEGACY / "pretrain-config.yaml").read_text())
    old["data"] = {"version": TINY_VERSION, "split": "mini_train", "samples": 6}
    old["train"]["device"] = "cpu"
    assert "loss" in old and "bevformer_layers" in old["network"] and "objectives" not in old  # the old schema indeed
    run = tmp / "run"
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    shutil.copy(LEGACY / "pretrain-provenance.json", run / "provenance.json")
    for path in (run / "checkpoints").glob("*.pt"):
        ckpt = torch.load(path, weights_only=True)
        task = ckpt["task"]
        ckpt["config"] = old
        ckpt["task"] = {"network": task["network"], "head": _legacy_head(task["heads"]), "provenance": task["provenance"]}
        atomic_save(ckpt, path)
        assert ckpt["format"] == CHECKPOINT_FORMAT
    return tmp, args


def test_a_run_written_before_the_objectives_layer_resumes_exactly(legacy_run):
    tmp, args = legacy_run
    pretrain(_config(4), *args, tmp / "run", split="mini_train", resume=True)  # the same recipe, today's schema
    read = lambda d: [json.loads(r) for r in (tmp / d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    key = lambda r: (r["step"], r["loss"])  # noqa: E731
    assert [key(r) for r in read("run")] == [key(r) for r in read("full")] and [r["step"] for r in read("run")] == [1, 2, 3, 4]


def test_a_run_written_before_the_objectives_layer_still_inits_a_finetune(legacy_run):
    from occfeat.train.finetune import resolve_config
    from occfeat.train.init import build_model

    tmp, _ = legacy_run
    run = read_pretrain_run(tmp / "run")
    assert run.label == "Occ+Feat" and run.config.objectives["features"].weight == 0.01
    cfg = resolve_config(REPO / "recipes" / "finetune" / "synthetic-tiny.yaml", "vehicle", 0.1, OVERRIDES[:4])
    model, stamp, provenance = build_model(cfg, tmp / "run")
    steps = torch.load(tmp / "run" / "checkpoints" / "last.pt", weights_only=True)["step"]  # 2, or 4 once resumed
    assert stamp.label == "Occ+Feat" and stamp.row_label() == f"Occ+Feat ({round(steps / 3, 2):g} ep, λ=0.01)"  # 3 steps per epoch
    assert stamp.objectives["features"] == {"weight": 0.01, "feature_dim": 384}
    assert provenance.teacher_random_init is True
    for k, v in run.network_state.items():
        assert torch.equal(model.network.state_dict()[k], v), k


def test_a_finetune_run_written_before_the_objectives_layer_resolves_to_todays_config(legacy_run):
    """``finetune-config.yaml`` is verbatim from a 0.1.0 finetune run (`occfeat finetune --recipe
    recipes/finetune/synthetic-tiny.yaml --task vehicle --fraction 0.5 --init PRETRAIN_RUN ...` with the
    overrides above and train.max_steps=1): --resume compares it, re-read through today's dataclasses and
    with its old init stamp, to what the same command builds today."""
    from occfeat.train.finetune import FinetuneTask, resolve_config
    from occfeat.train.init import build_model
    from occfeat.train.rundir import RESUME_FREE_KEYS, config_diff

    tmp, _ = legacy_run
    old = yaml.safe_load((LEGACY / "finetune-config.yaml").read_text())
    assert "pretraining" in old["init"] and "bevformer_layers" in old["network"]  # the old schema indeed
    cfg = resolve_config(REPO / "recipes" / "finetune" / "synthetic-tiny.yaml", "vehicle", 0.5, OVERRIDES[:4])
    model, pretraining, provenance = build_model(cfg, tmp / "run")
    task = FinetuneTask(cfg, model, None, {"init": pretraining.to_dict(), "provenance": provenance.to_dict(), "data": old["data"]})
    old["init"]["run"] = str((tmp / "run").resolve())
    assert [k for k in config_diff(task.resolve_saved(old), task.config_dict()) if k not in RESUME_FREE_KEYS] == []
    old["init"]["pretraining"]["lambda"] = 0.1  # another pretraining than the one it names now: still a difference
    assert "init.objectives.features.weight" in config_diff(task.resolve_saved(old), task.config_dict())
