"""Offline-first weights: a local file, a pre-filled HF cache (the real hub code path), or a clear error."""

import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from safetensors.torch import save_file

from occfeat.errors import OccfeatError
from occfeat.weights import create_timm_model

NAME = "resnet18.a1_in1k"


def _fill_hf_cache(root, model):
    """Lay out the HF hub cache exactly as huggingface_hub writes it, holding model.safetensors."""
    repo = root / "hub" / "models--timm--resnet18.a1_in1k"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(model.state_dict(), str(snap / "model.safetensors"))


def _run(code, env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300)


def test_local_file_loads_every_tensor_and_records_sha(tmp_path):
    src = timm.create_model(NAME, pretrained=False)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    model, prov = create_timm_model(NAME, weights=path)
    assert prov.pretrained and prov.source.startswith("file:") and len(prov.sha256) == 64
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    with pytest.raises(OccfeatError, match="not found"):
        create_timm_model(NAME, weights=tmp_path / "missing.pth")
    _, prov = create_timm_model(NAME, random_init=True)
    assert not prov.pretrained and prov.source == "random-init"


def test_hf_cache_offline_and_missing_weights_error(tmp_path):
    src = timm.create_model(NAME, pretrained=False)
    _fill_hf_cache(tmp_path / "hf", src)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    code = f"""
        import torch
        from occfeat.weights import create_timm_model
        m, prov = create_timm_model("{NAME}")
        print(prov.source, float(m.state_dict()["conv1.weight"].sum()))
    """
    out = _run(code, env)
    assert out.returncode == 0, out.stderr[-2000:]
    source, total = out.stdout.split()
    assert source == "hub" and abs(float(total) - float(src.state_dict()["conv1.weight"].sum())) < 1e-4
    # An empty cache, offline: one line that says how to provide weights.
    env["HF_HOME"] = str(tmp_path / "empty")
    out = _run(code, env)
    assert out.returncode != 0 and "--weights PATH" in out.stderr and "HF_HUB_OFFLINE=1" in out.stderr


# ---- MoCo v2 (the paper's RN-50 initialisation) ----
class _NotATensor:
    pass


def _moco_v2_checkpoint(path, encoder):
    """A file with the official moco_v2_800ep_pretrain.pth.tar layout (main_moco.py's save_checkpoint):
    the query encoder's torchvision keys under module.encoder_q., an MLP head fc.0/fc.2 (2048→2048→128),
    the momentum encoder (a few keys here), the queue, and an SGD optimizer state."""
    sd = {f"module.encoder_q.{k}": v for k, v in encoder.state_dict().items() if not k.startswith("fc.")}
    sd.update({
        "module.encoder_q.fc.0.weight": torch.randn(2048, 2048), "module.encoder_q.fc.0.bias": torch.randn(2048),
        "module.encoder_q.fc.2.weight": torch.randn(128, 2048), "module.encoder_q.fc.2.bias": torch.randn(128),
        "module.encoder_k.conv1.weight": torch.randn(64, 3, 7, 7), "module.encoder_k.bn1.weight": torch.randn(64),
        "module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    })  # fmt: skip
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.SGD([p], lr=0.03, momentum=0.9, weight_decay=1e-4)
    p.sum().backward()
    opt.step()
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": sd, "optimizer": opt.state_dict()}, path)
    return sd


def test_moco_v2_checkpoint_loads_into_the_rn50_encoder(tmp_path):
    from occfeat.models.encoder import ImageEncoder
    from occfeat.weights import sha256_file

    src = timm.create_model("resnet50", pretrained=False)
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    sd = _moco_v2_checkpoint(path, src)
    enc = ImageEncoder("resnet50", 16, fuse_channels=16, weights=str(path))
    assert enc.provenance.pretrained and enc.provenance.source == f"moco_v2:{path.resolve()}"
    assert enc.provenance.sha256 == sha256_file(path)
    got = enc.backbone.state_dict()
    # no missing key: every weight of the layers the encoder uses (stem, layer1-3) comes from encoder_q
    assert got and all(torch.equal(v, sd[f"module.encoder_q.{k}"]) for k, v in got.items())
    assert any(k.startswith("layer3.") for k in got) and not any(k.startswith("fc.") for k in got)
    # the whole classifier network too (layer4 included), the head dropped
    full, prov = create_timm_model("resnet50", weights=path, num_classes=0)
    assert prov.source.startswith("moco_v2:") and torch.equal(full.layer4[2].conv3.weight, sd["module.encoder_q.layer4.2.conv3.weight"])
    # a MoCo ResNet does not fit another architecture: one line, no silent partial load
    with pytest.raises(OccfeatError, match="MoCo v2 checkpoint .* timm model 'efficientnet_b0'") as e:
        create_timm_model("efficientnet_b0", weights=path)
    assert "\n" not in str(e.value)


def test_pickles_beyond_tensors_are_refused_in_one_line(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"module.encoder_q.conv1.weight": torch.zeros(1)}, "extra": _NotATensor()}, path)
    with pytest.raises(OccfeatError, match="will not unpickle") as e:
        create_timm_model(NAME, weights=path)
    assert "\n" not in str(e.value)


def test_rn50_recipes_require_the_moco_v2_file(tmp_path, monkeypatch, test_grid):
    from pathlib import Path

    from occfeat.config import load_config
    from occfeat.models import build_network
    from occfeat.train.finetune import resolve_config
    from occfeat.train.pretrain import PretrainConfig

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    monkeypatch.chdir(tmp_path)  # no moco_v2_800ep_pretrain.pth.tar here
    nets = [load_config(PretrainConfig, recipes / "pretrain" / "simplebev-rn50.yaml").network,
            resolve_config(recipes / "finetune" / "simplebev-rn50.yaml", "vehicle", 0.01).network]  # fmt: skip
    for net in nets:
        assert net.backbone == "resnet50" and not net.random_init
        with pytest.raises(OccfeatError, match=r"moco_v2_800ep_pretrain\.pth\.tar not found.*network\.backbone_weights"):
            build_network(net, test_grid)
