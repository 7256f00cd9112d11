"""``occfeat export``: the pretrained backbone as a timm state dict that loads strictly into the timm model of
the same name (the keys the run never trained named and filled from its initialisation), and the whole
BEV network as safetensors that :func:`occfeat.export.load_network` rebuilds with the same output."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

import occfeat.cli.main
from occfeat.config import load_config, merge, to_dict
from occfeat.errors import OccfeatError
from occfeat.export import INIT_SEED, covering_prefixes, export, load_network, read_export_metadata
from occfeat.models import build_network
from occfeat.train.rundir import CHECKPOINT_FORMAT, atomic_save
from tests.test_models import tiny_batch

TINY_NET = {"bev_channels": 8, "image_channels": 8, "fuse_channels": 16, "random_init": True}
TINY_KNOBS = {"bevformer": {"layers": 1, "heads": 2, "ffn_dim": 16}}
# The stages each backbone's feature extractor cuts (strides 8 and 16 kept): what the run never trained.
CUT = {"efficientnet_b0": ["blocks.5", "blocks.6", "conv_head", "bn2", "classifier"], "resnet18": ["layer4", "fc"],
       "resnet50": ["layer4", "fc"]}  # fmt: skip


def _trained(network: torch.nn.Module) -> None:
    """Move every weight off its initial value, as training would (so a test can tell trained from init)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))


def _checkpoint(run: Path, config: dict, task: dict) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(json.dumps(config))
    atomic_save({"format": CHECKPOINT_FORMAT, "step": 3, "epoch": 1, "config": config, "task": task}, run / "checkpoints" / "last.pt")
    return run


def pretrain_run(run: Path, provenance: dict | None = None, **network) -> tuple[Path, torch.nn.Module]:
    """A pretraining run dir in the loop's checkpoint format (what `occfeat pretrain` writes), trained by
    :func:`_trained` instead of an optimizer; ``provenance``: the backbone's to record (default: the network's)."""
    from occfeat.train.pretrain import PretrainConfig

    cfg = load_config(PretrainConfig, "recipes/pretrain/synthetic-tiny.yaml", {"network": {**TINY_NET, **network}})
    cfg = merge(cfg, {"network": TINY_KNOBS.get(cfg.network.arch, {})})
    torch.manual_seed(0)
    net = build_network(cfg.network, cfg.grid)
    _trained(net)
    prov = {"backbone": provenance or net.provenance.as_dict(), "teacher": {"pretrained": False}, "random_init": True}
    return _checkpoint(run, to_dict(cfg), {"network": net.state_dict(), "heads": {}, "provenance": prov}), net


def finetune_run(run: Path, recipe: str = "recipes/finetune/synthetic-tiny.yaml", **network) -> tuple[Path, torch.nn.Module]:
    """A finetune run dir as FinetuneTask.checkpoint_payload writes it: the segmentation model (network + head)."""
    from occfeat.train.finetune_config import config_as_dict, resolve_config
    from occfeat.train.init import SegmentationModel
    from occfeat.train.records import Provenance

    cfg = resolve_config(recipe, "vehicle", 0.5, {"network": {**TINY_NET, **network}})
    torch.manual_seed(0)
    model = SegmentationModel(build_network(cfg.network, cfg.grid), 1)
    _trained(model)
    prov = Provenance(backbone_random_init=True, backbone=model.network.provenance.as_dict()).to_dict()
    config = {**config_as_dict(cfg), "init": {"label": "None"}, "data": {}}
    task = {"model": model.state_dict(), "aux": {}, "objective": {}, "init": {"label": "None"}, "provenance": prov, "data": {}}
    return _checkpoint(run, config, task), model.network


@pytest.fixture(scope="module")
def effb0_run(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    return pretrain_run(tmp_path_factory.mktemp("export") / "pretrain")


def _random_timm(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(INIT_SEED)
    return timm.create_model(name, pretrained=False).state_dict()


def _cli(*args) -> object:
    return CliRunner().invoke(occfeat.cli.main.app, ["export", *map(str, args)])


def test_covering_prefixes_name_whole_modules_only():
    keys = ["stem.w", "blocks.0.a.w", "blocks.0.b.w", "blocks.1.a.w", "blocks.1.b.w", "head.w", "head.b"]
    assert covering_prefixes(["blocks.1.a.w", "blocks.1.b.w", "head.w", "head.b"], keys) == ["blocks.1", "head"]
    assert covering_prefixes(["blocks.0.a.w", "head.b"], keys) == ["blocks.0.a", "head.b"]  # head.w was trained
    assert covering_prefixes([], keys) == []


@pytest.mark.parametrize("backbone, suffix", [
    ("efficientnet_b0", ".safetensors"), ("resnet18", ".pth"),
    pytest.param("resnet50", ".safetensors", marks=pytest.mark.slow),  # resnet18's code path, 5 s: `pytest -m slow`
])  # fmt: skip
def test_timm_export_loads_strictly_with_the_trained_weights(backbone, suffix, effb0_run, tmp_path):
    extra = {} if backbone == "efficientnet_b0" else {"backbone": backbone, "drop_path_rate": 0.0}
    run, net = effb0_run if not extra else pretrain_run(tmp_path / "run", **extra)
    out = tmp_path / f"backbone{suffix}"
    meta = export(run, "timm", out)
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(out)
    else:  # mmcv's layout, plain tensors and containers: weights_only loads it, and timm's loader picks state_dict
        state = torch.load(out, weights_only=True)["state_dict"]
        timm.models.load_checkpoint(timm.create_model(backbone, pretrained=False), str(out), strict=True)
    model = timm.create_model(backbone, pretrained=False)
    model.load_state_dict(state, strict=True)  # the review's finding: strict loading failed on the cut stages

    trained = net.encoder.backbone.state_dict()
    init = _random_timm(backbone)
    assert len(trained) + len(meta["untrained_keys"]) == len(state) == len(init)
    assert all(torch.equal(state[k], v) for k, v in trained.items())  # the run's weights, bit for bit
    assert all(torch.equal(state[k], init[k]) for k in meta["untrained_keys"])  # the rest: timm's init, seed 0
    assert not torch.equal(state["conv1.weight" if "resnet" in backbone else "conv_stem.weight"],
                           init["conv1.weight" if "resnet" in backbone else "conv_stem.weight"])  # fmt: skip
    assert meta["untrained_modules"] == CUT[backbone] and meta["untrained_random_keys"] == meta["untrained_keys"]
    assert meta["backbone_random_init"] is True and meta["timm_model"] == backbone
    assert read_export_metadata(out) == json.loads(json.dumps(meta))  # the file says it too, in either layout


def test_untrained_keys_come_from_the_runs_initial_weights_file(tmp_path):
    from safetensors.torch import save_file

    from occfeat.weights import sha256_file

    torch.manual_seed(7)
    imagenet = timm.create_model("efficientnet_b0", pretrained=False).state_dict()  # stands in for ImageNet weights
    path = tmp_path / "effb0.safetensors"
    save_file({k: v.contiguous() for k, v in imagenet.items()}, path)
    prov = {"model": "efficientnet_b0", "pretrained": True, "source": f"file:{path.resolve()}", "sha256": sha256_file(path)}
    run, _ = pretrain_run(tmp_path / "run", provenance=prov)
    meta = export(run, "timm", tmp_path / "a.safetensors")
    from safetensors.torch import load_file

    state = load_file(tmp_path / "a.safetensors")
    assert all(torch.equal(state[k], imagenet[k]) for k in meta["untrained_keys"])
    assert meta["untrained_random_keys"] == [] and meta["backbone_random_init"] is False
    assert str(path.resolve()) in meta["untrained_filled_from"]
    path.unlink()  # moved away since the run: timm's random init fills them, and the file says why
    meta = export(run, "timm", tmp_path / "b.safetensors")
    assert meta["untrained_random_keys"] == meta["untrained_keys"] and "not on disk" in meta["untrained_filled_from"]


@pytest.mark.parametrize("kind, arch", [("pretrain", "simplebev"), ("finetune", "bevformer"), ("finetune", "lidar")])
def test_network_export_reloads_with_the_same_output(kind, arch, tmp_path):
    if kind == "pretrain":
        run, net = pretrain_run(tmp_path / "run", arch=arch)
    else:
        recipe = "recipes/finetune/synthetic-lidar.yaml" if arch == "lidar" else "recipes/finetune/synthetic-tiny.yaml"
        run, net = finetune_run(tmp_path / "run", recipe, **({} if arch == "lidar" else {"arch": arch, **TINY_KNOBS[arch]}))
    out = tmp_path / "net.safetensors"
    meta = export(run / "checkpoints" / "last.pt", "safetensors", out)  # a checkpoint file works as RUN too
    assert meta["run_kind"] == kind and meta["grid"]["shape"] == [50, 50, 8]
    again = load_network(out)
    assert type(again) is type(net) and again.provenance == net.provenance
    batch = tiny_batch(S=2, H=32, W=56)
    batch["lidar"] = torch.rand(1, 50, 50, 8) > 0.9
    net.eval(), again.eval()
    with torch.no_grad():
        want, got = net.forward_bev(batch), again.forward_bev(batch)
    assert want.shape == (1, 8, 50, 50) and torch.equal(want, got)
    assert set(again.state_dict()) == set(net.state_dict())  # no heads in it, none missing


def test_cli_writes_one_line_and_refuses_bad_input_in_one_line(effb0_run, tmp_path):
    run, _ = effb0_run
    out = tmp_path / "effb0.pth"
    res = _cli(run, "--format", "timm", "--out", out)
    assert res.exit_code == 0, res.output
    line = res.output.strip()
    assert "\n" not in line and "timm 'efficientnet_b0' state dict of 360 tensors" in line
    assert "118 never trained (blocks.5, blocks.6, conv_head, bn2, classifier)" in line and "random weights" in line
    assert _cli(run, "--format", "timm", "--out", out, "--overwrite").exit_code == 0
    res = _cli(run, "--format", "safetensors", "--out", tmp_path / "net.safetensors")
    assert res.exit_code == 0 and "load_network" in res.output, res.output

    empty, started = tmp_path / "empty", tmp_path / "started"
    empty.mkdir()
    started.mkdir()
    (started / "config.yaml").write_text("train: {}\n")
    lidar, _ = finetune_run(tmp_path / "lidar", "recipes/finetune/synthetic-lidar.yaml")
    cases = {
        "exists; pass --overwrite": (run, "--format", "timm", "--out", out),
        "unknown --format 'onnx'; choose timm or safetensors": (run, "--format", "onnx", "--out", tmp_path / "x.onnx"),
        "name it *.safetensors": (run, "--format", "safetensors", "--out", tmp_path / "x.pth"),
        "is not a run dir": (empty, "--format", "timm", "--out", tmp_path / "x.pth"),
        "has no checkpoint (checkpoints/last.pt)": (started, "--format", "timm", "--out", tmp_path / "x.pth"),
        "not found": (tmp_path / "nowhere", "--format", "timm", "--out", tmp_path / "x.pth"),
        "network arch 'lidar' has no timm image backbone": (lidar, "--format", "timm", "--out", tmp_path / "x.pth"),
    }
    for message, args in cases.items():
        res = _cli(*args)
        assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1, res.output
        assert message in res.output, res.output
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "x.onnx").exists()


def test_load_network_refuses_a_backbone_file(effb0_run, tmp_path):
    export(effb0_run[0], "timm", tmp_path / "b.safetensors")
    with pytest.raises(OccfeatError, match="not an occfeat network export"):
        load_network(tmp_path / "b.safetensors")


def test_exported_backbone_starts_a_new_occfeat_run(effb0_run, tmp_path, test_grid):
    """The timm file is a backbone weights file like ImageNet's: network.backbone_weights takes it."""
    from occfeat.train.pretrain import PretrainConfig

    run, net = effb0_run
    export(run, "timm", tmp_path / "b.safetensors")
    cfg = load_config(PretrainConfig, "recipes/pretrain/synthetic-tiny.yaml", {"network": TINY_NET}).network
    cfg = dataclasses.replace(cfg, random_init=False, backbone_weights=str(tmp_path / "b.safetensors"))
    again = build_network(cfg, test_grid)
    assert again.provenance.pretrained and again.provenance.source.startswith("file:")
    for k, v in net.encoder.backbone.state_dict().items():
        assert torch.equal(again.encoder.backbone.state_dict()[k], v), k


def test_a_trained_pretrain_run_exports_both_ways(synth_root, occupancy_h5, features_h5, tmp_path):
    """One optimizer step of a real `occfeat pretrain` run (the fakes above mirror its checkpoint): both
    exports load back, and the backbone file holds what the step trained."""
    from tests.fixtures.synth import TINY_VERSION

    run = tmp_path / "run"
    res = CliRunner().invoke(occfeat.cli.main.app, [
        "pretrain", "--recipe", "recipes/pretrain/synthetic-tiny.yaml", "--dataroot", str(synth_root), "--version", TINY_VERSION,
        "--occupancy", str(occupancy_h5), "--features", str(features_h5), "--split", "mini_train", "--out", str(run),
        "input_size=[32,56]", "network.bev_channels=8", "network.image_channels=8", "network.fuse_channels=16",
        "train.num_workers=0", "train.max_steps=1", "train.batch_size=1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = export(run, "timm", tmp_path / "b.pth")
    state = torch.load(tmp_path / "b.pth", weights_only=True)["state_dict"]
    timm.create_model("efficientnet_b0", pretrained=False).load_state_dict(state, strict=True)
    assert meta["step"] == 1 and meta["untrained_modules"] == CUT["efficientnet_b0"] and meta["backbone_random_init"] is True
    export(run, "safetensors", tmp_path / "n.safetensors")
    network = load_network(tmp_path / "n.safetensors")
    assert all(torch.equal(state[k], v) for k, v in network.encoder.backbone.state_dict().items())
