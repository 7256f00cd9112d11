"""The semantic stand-in teacher: class mixtures per patch, the teacher's shape, determinism, and its
stamp from the cache through a pretraining run and a finetune record to the report's legend."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from occfeat.data.extract import FeatureReader, build_teacher, extract_features
from occfeat.data.index import SampleIndex
from occfeat.data.standin import STANDIN_LEGEND, StandinConfig, class_vectors, load_labels, patch_features
from occfeat.data.synth.semantics import SEMANTIC_CLASSES, semantics_path
from occfeat.errors import OccfeatError
from tests.fixtures.synth import TINY_VERSION

SIZE = (42, 70)  # 3 x 5 tokens of 14 px: not the features fixture's size, so the shape is not a coincidence
K = len(SEMANTIC_CLASSES)


def hand_labels(h: int, w: int, cam: int) -> np.ndarray:
    """A label map of 3 x 4 blocks of classes, shifted per camera so that the cameras differ."""
    y, x = np.mgrid[:h, :w]
    return ((y * 3 // h) * 4 + x * 4 // w + cam) % K


@pytest.fixture(scope="module")
def labelled_root(synth_root, tmp_path_factory) -> Path:
    """A copy of the tiny world with hand-made label PNGs beside every camera JPEG (the synth contract)."""
    root = tmp_path_factory.mktemp("standin") / "dataroot"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns("occfeat_semantics"))
    index = SampleIndex(root, TINY_VERSION, "all")
    for rec in index:
        for cam, frame in enumerate(rec.cameras):
            w, h = Image.open(frame.path).size
            out = semantics_path(root, str(frame.path.relative_to(root)))
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(hand_labels(h, w, cam).astype(np.uint8), mode="L").save(out)
    return root


def _extract(root, out, **kw):
    return extract_features(root, TINY_VERSION, "all", out, teacher="semantic-standin", input_size=SIZE, progress=False, **kw)


def test_class_vectors_are_fixed_seeded_unit_vectors():
    v = class_vectors(K, 384)
    assert v.shape == (K, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)
    assert np.array_equal(v, class_vectors(K, 384)) and np.array_equal(v[:3], class_vectors(3, 384))
    assert not np.allclose(v, class_vectors(K, 384, seed=1))
    assert np.abs(v @ v.T - np.eye(K)).max() < 0.3  # distinct classes point elsewhere


def test_a_patch_inside_one_class_is_its_vector_and_a_boundary_patch_the_pixel_weighted_mean():
    v = class_vectors(K, 16)
    labels = np.full((14, 28), 3, np.uint8)
    labels[:, 14:18] = 1  # right patch: 4 of 14 columns class 1, the rest class 2
    labels[:, 18:] = 2
    labels[0, 27] = 5  # and one pixel of class 5
    f = patch_features(labels, v, 14)
    assert f.shape == (1, 2, 16)
    np.testing.assert_allclose(f[0, 0], v[3], atol=1e-6)
    np.testing.assert_allclose(f[0, 1], (56 * v[1] + 139 * v[2] + 1 * v[5]) / 196, atol=1e-6)


def test_cache_has_the_dinov2_shape_matches_a_slow_reference_and_is_stamped(labelled_root, tmp_path):
    s = _extract(labelled_root, tmp_path / "a.h5")
    _, _, info = build_teacher(random_teacher=True, input_size=SIZE)  # the DINOv2 ViT-S/14 at the same input
    assert s.feature_shape == (6, *info["feature_hw"], info["feature_dim"]) == (6, 3, 5, 384)
    r = FeatureReader(tmp_path / "a.h5", expect={"teacher": "semantic-standin", "feature_dim": 384})
    assert r.standin and not r.pretrained and r.spec["weights_source"] == "semantic-standin"
    assert r.spec["standin"]["noise"] == 0 and r.spec["standin"]["legend"] == STANDIN_LEGEND
    assert len(r.spec["weights_sha256"]) == 64
    # slow reference: NEAREST-resized labels, then each token the mean of its 196 pixels' class vectors
    index = SampleIndex(labelled_root, TINY_VERSION, "all")
    v = class_vectors(K, 384)
    for token in index.tokens[:2]:
        got = r.get(token).astype(np.float32)
        for cam, frame in enumerate(index.record(token).cameras):
            lab = load_labels(semantics_path(labelled_root, str(frame.path.relative_to(labelled_root))), SIZE)
            for i in range(3):
                for j in range(5):
                    want = v[lab[14 * i : 14 * i + 14, 14 * j : 14 * j + 14].ravel()].mean(0)
                    np.testing.assert_allclose(got[cam, i, j], want, atol=2e-3)
        assert not np.allclose(got[0], got[1])  # the cameras' labels differ


def test_two_extractions_with_noise_are_identical_and_noise_is_per_image(labelled_root, tmp_path):
    s = _extract(labelled_root, tmp_path / "n1.h5", standin=StandinConfig(noise=0.5))
    _extract(labelled_root, tmp_path / "n2.h5", standin=StandinConfig(noise=0.5))
    _extract(labelled_root, tmp_path / "clean.h5")
    a, b, clean = (FeatureReader(tmp_path / f) for f in ("n1.h5", "n2.h5", "clean.h5"))
    assert a.spec["standin"]["noise"] == 0.5
    for t in a.tokens:
        assert np.array_equal(a.get(t), b.get(t))
    t = a.tokens[0]
    noise = a.get(t).astype(np.float32) - clean.get(t).astype(np.float32)
    assert 0.4 < np.linalg.norm(noise, axis=-1).mean() < 0.6  # the knob is the noise vector's norm
    assert not np.allclose(noise[0], noise[1])  # seeded per image, not one pattern for all
    assert s.images_per_s > 0


def test_missing_labels_are_one_line_errors(labelled_root, synth_root, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(synth_root, bare, ignore=shutil.ignore_patterns("occfeat_semantics", "samples", "sweeps"))
    with pytest.raises(OccfeatError, match="has no semantic labels .* only occfeat synth worlds have them.*DINOv2") as e:
        _extract(bare, tmp_path / "x.h5")
    assert "\n" not in str(e.value)
    with pytest.raises(OccfeatError, match="takes no weights"):
        _extract(labelled_root, tmp_path / "x.h5", random_teacher=True)
    one = tmp_path / "one"
    shutil.copytree(labelled_root, one)
    victim = next((one / "occfeat_semantics").rglob("*.png"))
    victim.unlink()
    with pytest.raises(OccfeatError, match=re.escape(f"semantic label image {victim} is missing")) as e:
        _extract(one, tmp_path / "y.h5")
    assert "\n" not in str(e.value)
    s = _extract(one, tmp_path / "y.h5", skip_bad=True)
    assert len(s.skipped) == 1


def test_cli_extracts_without_weights(labelled_root, tmp_path):
    from typer.testing import CliRunner

    from occfeat.cli.main import app

    res = CliRunner().invoke(app, ["extract", "--dataroot", str(labelled_root), "--version", TINY_VERSION, "--split", "mini_train",
                                   "--out", str(tmp_path / "f.h5"), "--teacher", "semantic-standin", "--input-size", "42x70",
                                   "--standin-noise", "0.1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "semantic stand-in teacher" in res.output and "images/s" in res.output
    assert FeatureReader(tmp_path / "f.h5").spec["standin"]["noise"] == 0.1


def test_stamp_reaches_pretraining_finetune_record_and_report(labelled_root, test_grid, tmp_path):
    from occfeat.config import load_config
    from occfeat.data.voxelize import build_occupancy
    from occfeat.report import write_report
    from occfeat.train.finetune import finetune_metrics, resolve_config
    from occfeat.train.init import build_model
    from occfeat.train.pretrain import PretrainConfig, pretrain
    from occfeat.train.records import FinetuneMetrics
    from tests.fixtures.pretrain import shrink, tiny

    occ, feats = tmp_path / "occ.h5", tmp_path / "feats.h5"
    build_occupancy(labelled_root, TINY_VERSION, "all", occ, test_grid, progress=False)
    _extract(labelled_root, feats)
    cfg = shrink(load_config(PretrainConfig, "recipes/pretrain/synthetic-tiny.yaml", tiny(test_grid, train={"max_steps": 1})))
    summary = pretrain(cfg, labelled_root, TINY_VERSION, occ, feats, tmp_path / "pre", split="mini_train")
    prov = json.loads((tmp_path / "pre" / "provenance.json").read_text())
    assert prov == summary["provenance"] and prov["teacher_standin"] is True
    assert prov["teacher"]["teacher"] == "semantic-standin" and prov["teacher"]["standin"]["legend"] == STANDIN_LEGEND

    ft = resolve_config("recipes/finetune/synthetic-tiny.yaml", "vehicle", 0.5, {k: tiny(test_grid)[k] for k in ("grid", "network")})
    _, stamp, provenance = build_model(ft, tmp_path / "pre")
    assert provenance.teacher_standin is True and provenance.teacher_random_init is False  # not random: its own mark
    result = {"mean_iou": 0.5, "iou": {"vehicle": 0.5}}
    (tmp_path / "ft").mkdir()
    finetune_metrics(ft, stamp, provenance, 3, result, split="mini_val").write(tmp_path / "ft")
    m = FinetuneMetrics.read(tmp_path / "ft")
    assert m.provenance.teacher_standin and not m.provenance.teacher_random_init
    report = write_report([tmp_path / "ft"], tmp_path / "report", plots=False)
    assert f"¶ {STANDIN_LEGEND}" in report["legend"] and report["table"].index[0][3].endswith("¶")
    assert not any("‡" in line for line in report["legend"])
