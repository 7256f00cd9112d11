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
