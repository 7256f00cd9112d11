"""occfeat extract: teacher loading, stored tokens vs timm's forward, resume, refusals, bad inputs."""

import re
import shutil

import h5py
import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from typer.testing import CliRunner

from occfeat.data import extract as ex
from occfeat.data.extract import FeatureReader, build_teacher, extract_features
from occfeat.data.index import CAMERAS, SampleIndex
from occfeat.errors import OccfeatError
from tests.fixtures.features import FEATURE_INPUT_SIZE
from tests.fixtures.synth import TINY_VERSION

# Tests of the plumbing (resume, refusals, bad images, CLI) use the cheapest timm ViT at 2 x 3 patches of
# 16 px: "any timm ViT works", and it is ~4x faster to build and run than ViT-S on a shared 2-core CPU.
TINY = "vit_tiny_patch16_224"
SMALL = (32, 48)


def reference_tokens(model, path, input_size) -> np.ndarray:
    """Patch tokens of one image written out independently: PIL JPEG draft + resize, ImageNet mean/std,
    timm forward."""
    h, w = input_size
    im = Image.open(path)
    im.draft("RGB", (w, h))
    img = np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255
    x = torch.from_numpy((img - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)).float()
    with torch.no_grad():
        out = model.forward_features(x.permute(2, 0, 1)[None])  # (1, 1 + Hp*Wp, C): class token first
    return out[0, 1:].reshape(h // 14, w // 14, -1).numpy()


def test_features_file_schema(features_h5, synth_root):
    r = FeatureReader(features_h5, expect={"teacher": "vit_small_patch14_dinov2.lvd142m", "feature_dim": 384})
    index = SampleIndex(synth_root, TINY_VERSION, "all")
    assert r.tokens == index.tokens and len(r) == 12
    assert r.feature_hw == (4, 7) and r.feature_dim == 384 and r.pretrained is False
    assert r.spec["cameras"] == list(CAMERAS) and r.spec["input_size"] == list(FEATURE_INPUT_SIZE)
    assert len(r.spec["weights_sha256"]) == 64  # random teacher: hash of its seeded state dict
    f = r.get(index.tokens[3])
    assert f.shape == (6, 4, 7, 384) and f.dtype == np.float16
    assert np.isfinite(f).all() and f.std() > 0.1
    with h5py.File(features_h5) as h:  # one chunk per sample, uncompressed
        assert h["features"].chunks == (1, 6, 4, 7, 384) and h["features"].compression is None
        assert h.attrs["pretrained"] == False  # noqa: E712 - numpy bool from HDF5


def test_stored_tokens_equal_timm_forward(features_h5, synth_root):
    model, prov, _ = build_teacher(random_teacher=True, input_size=FEATURE_INPUT_SIZE)  # seeded: same weights
    r = FeatureReader(features_h5, expect={"weights_sha256": prov.sha256})
    index = SampleIndex(synth_root, TINY_VERSION, "all")
    for row, cam in [(0, 0), (7, 4)]:
        rec = index[row]
        ref = reference_tokens(model, rec.cameras[cam].path, FEATURE_INPUT_SIZE)
        np.testing.assert_allclose(r.get(rec.token)[cam].astype(np.float32), ref, rtol=2e-3, atol=2e-3)


def test_feature_reader_refuses_other_teacher(features_h5):
    with pytest.raises(OccfeatError, match="pretrained"):
        FeatureReader(features_h5, expect={"pretrained": True})


def test_resume_after_a_crash_finishes_the_rest(synth_root, tmp_path, monkeypatch):
    kw = dict(teacher=TINY, random_teacher=True, input_size=SMALL, batch_size=12, device="cpu", progress=False, block_samples=2)
    ref = extract_features(synth_root, TINY_VERSION, "mini_val", tmp_path / "ref.h5", **kw)
    assert ref.samples == 6 and ref.computed == 6

    calls = {"n": 0}
    real_write = ex.CacheWriter.write_block

    def crash_on_second_block(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_write(self, *a, **k)

    monkeypatch.setattr(ex.CacheWriter, "write_block", crash_on_second_block)
    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        extract_features(synth_root, TINY_VERSION, "mini_val", out, **kw)
    assert not out.exists() and len(list((tmp_path / "resumed.h5.parts").glob("*.h5"))) == 1
    monkeypatch.undo()
    s = extract_features(synth_root, TINY_VERSION, "mini_val", out, **kw)
    assert s.computed == 4  # the first block was kept
    with h5py.File(out) as a, h5py.File(tmp_path / "ref.h5") as b:
        np.testing.assert_array_equal(a["features"][()], b["features"][()])
        assert list(a["tokens"][()]) == list(b["tokens"][()])
    # idempotent: a complete cache is left alone
    assert extract_features(synth_root, TINY_VERSION, "mini_val", out, **kw).computed == 0
    # refuses to continue under another input size or teacher weights
    with pytest.raises(OccfeatError, match="input_size"):
        extract_features(synth_root, TINY_VERSION, "mini_val", out, **{**kw, "input_size": (32, 32)})
    weights = tmp_path / "w.safetensors"  # a timm-layout safetensors file: loads, but it is another teacher
    save_file(build_teacher(TINY, random_teacher=True, input_size=SMALL)[0].state_dict(), str(weights))
    with pytest.raises(OccfeatError, match="pretrained|weights"):
        extract_features(synth_root, TINY_VERSION, "mini_val", out, **{**kw, "random_teacher": False, "weights": weights})


def test_original_dinov2_checkpoint_loads(tmp_path):
    # The original DINOv2 layout = timm's keys + mask_token, position embedding for 518 x 518 (37 x 37 patches).
    original = timm.create_model("vit_small_patch14_dinov2", pretrained=False)
    sd = dict(original.state_dict(), mask_token=torch.zeros(1, 384))
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    torch.save(sd, tmp_path / "dinov2_vits14_pretrain.pth")
    model, prov, info = build_teacher(weights=tmp_path / "dinov2_vits14_pretrain.pth", input_size=FEATURE_INPUT_SIZE)
    assert prov.pretrained and len(prov.sha256) == 64 and info["feature_hw"] == (4, 7)
    torch.testing.assert_close(model.blocks[5].attn.qkv.weight, sd["blocks.5.attn.qkv.weight"])
    torch.testing.assert_close(model.norm.weight, sd["norm.weight"])
    # position embedding resampled like DINOv2's own interpolate_pos_encoding (bicubic, antialiased)
    grid = sd["pos_embed"][:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(4, 7), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(model.pos_embed[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 28, 384))
    torch.testing.assert_close(model.pos_embed[:, :1], sd["pos_embed"][:, :1])



def test_missing_weights_file_is_a_one_line_error(tmp_path):
    with pytest.raises(OccfeatError, match="--weights") as e:
        build_teacher(TINY, weights=tmp_path / "nope.pth", input_size=SMALL)
    assert "\n" not in str(e.value)


def test_offline_without_weights_names_every_way_out(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OccfeatError) as e:
        build_teacher(TINY, input_size=SMALL)
    msg = str(e.value)
    assert "--weights" in msg and "HF_HUB_OFFLINE=1" in msg and "--random-teacher" in msg and "\n" not in msg


def test_input_size_must_be_multiples_of_the_patch():
    with pytest.raises(OccfeatError, match="multiples of the teacher's patch size 14.*224x406"):
        build_teacher(random_teacher=True, input_size=(224, 400))


def test_corrupt_jpeg_is_named_and_skip_bad_marks_the_sample(synth_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns("sweeps"))  # LiDAR: not read here
    index = SampleIndex(root, TINY_VERSION, "mini_val")
    bad = index[2].cameras[3].path
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    kw = dict(teacher=TINY, random_teacher=True, input_size=SMALL, batch_size=12, device="cpu", progress=False)
    with pytest.raises(OccfeatError, match=re.escape(f"camera image {bad} is corrupt")) as e:
        extract_features(root, TINY_VERSION, "mini_val", tmp_path / "a.h5", **kw)
    assert "\n" not in str(e.value)
    s = extract_features(root, TINY_VERSION, "mini_val", tmp_path / "b.h5", skip_bad=True, **kw)
    assert s.skipped == [index.tokens[2]]
    r = FeatureReader(tmp_path / "b.h5")
    assert index.tokens[2] not in r and len(r) == 5
    bad.unlink()
    with pytest.raises(OccfeatError, match=re.escape(f"camera image {bad} is missing")):
        extract_features(root, TINY_VERSION, "mini_val", tmp_path / "c.h5", **kw)


def test_cli_extract_and_one_line_errors(synth_root, tmp_path):
    from occfeat.cli.main import app

    runner = CliRunner()
    base = ["extract", "--dataroot", str(synth_root), "--version", TINY_VERSION, "--split", "mini_train"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "f.h5"), "--teacher", TINY, "--input-size", "32x48", "--random-teacher", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert FeatureReader(tmp_path / "f.h5").feature_hw == (2, 3)
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "g.h5"), "--input-size", "224by406", "--random-teacher"])
    assert res.exit_code == 2 and "HEIGHTxWIDTH" in res.output
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "g.h5"), "--weights", str(tmp_path / "missing.pth")])
    assert res.exit_code == 2 and "error: weights file" in res.output and len(res.output.strip().splitlines()) == 1
