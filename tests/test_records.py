"""Typed finetune run records: metrics.json round trip, files of the old schema, damaged files, row labels."""

import json

import pytest

from occfeat.errors import OccfeatError
from occfeat.train.records import FinetuneMetrics, PretrainingStamp, Provenance, legacy_pretraining_stamp

OLD_METRICS = {  # what occfeat finetune wrote before the typed records
    "task": "vehicle", "classes": ["vehicle"], "fraction": 0.01, "seed": 2, "split": "val", "iou": {"vehicle": 0.25},
    "mean_iou": 0.25, "intersection": {"vehicle": 25}, "union": {"vehicle": 100}, "threshold": 0.5, "arch": "simplebev",
    "backbone": "efficientnet_b0", "input_size": [224, 400], "pretraining": {"mode": "occfeat", "lambda": 0.01, "epochs": 50},
    "init_run": "/runs/pretrain/occfeat", "provenance": {"synthetic_data": True, "backbone_random_init": True,
    "backbone": {"pretrained": False}, "teacher": {"pretrained": False}, "teacher_random_init": True},
    "dataroot": "/data", "version": "v1.0-mini", "labelled_samples": 3, "step": 2, "epoch": 0.5, "checkpoint": "/x/last.pt",
}  # fmt: skip


def _metrics(**changes) -> FinetuneMetrics:
    m = FinetuneMetrics(
        task="map", fraction=0.1, seed=1, labelled_samples=2813, arch="simplebev", backbone="resnet50", input_size=(224, 400),
        mean_iou=0.3, iou={"road": 0.5, "divider": 0.1}, intersection={"road": 5.0, "divider": 1.0}, union={"road": 10.0, "divider": 10.0},
        classes=["road", "divider"], pretraining=PretrainingStamp("Occ", {"occupancy": {"weight": 1}}, 100, "/runs/occ"),
        provenance=Provenance(teacher_random_init=None, backbone={"source": "hub", "pretrained": True}),
        split="val", dataroot="/data", version="v1.0-trainval", step=10, epoch=2.0, checkpoint="/r/checkpoints/last.pt",
    )
    for k, v in changes.items():
        setattr(m, k, v)
    return m


def test_round_trip_write_read(tmp_path):
    m = _metrics()
    path = m.write(tmp_path)
    assert path == tmp_path / "metrics.json"
    assert FinetuneMetrics.read(tmp_path) == m == FinetuneMetrics.read(path)
    on_disk = json.loads(path.read_text())
    assert on_disk["pretraining"] == {"label": "Occ", "objectives": {"occupancy": {"weight": 1}}, "epochs": 100, "run": "/runs/occ"}
    assert on_disk["input_size"] == [224, 400] and on_disk["labelled_samples"] == 2813
    m.write(tmp_path, "metrics-test.json")
    assert FinetuneMetrics.read(tmp_path / "metrics-test.json") == m


def test_old_metrics_json_is_read_through_the_legacy_reader(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(OLD_METRICS))
    m = FinetuneMetrics.read(tmp_path)
    assert m.pretraining == PretrainingStamp(
        "Occ+Feat", {"occupancy": {"weight": 1}, "features": {"weight": 0.01}}, epochs=50, run="/runs/pretrain/occfeat")
    assert m.pretraining.row_label() == "Occ+Feat (50 ep, λ=0.01)"
    assert m.provenance.synthetic_data and m.provenance.teacher_random_init and m.labelled_samples == 3
    assert m.input_size == (224, 400) and m.iou == {"vehicle": 0.25}
    none = FinetuneMetrics.read(_write(tmp_path / "none", {**OLD_METRICS, "pretraining": {"mode": "none"}, "init_run": None}))
    assert none.pretraining == PretrainingStamp() and none.pretraining.row_label() == "None"


def test_legacy_pretraining_stamps_map_to_labels_and_objectives():
    both = legacy_pretraining_stamp({"mode": "occfeat", "lambda": 0.5, "epochs": 6, "run": "/p"})
    assert (both.label, both.objectives, both.epochs, both.run) == (
        "Occ+Feat", {"occupancy": {"weight": 1}, "features": {"weight": 0.5}}, 6, "/p")
    assert legacy_pretraining_stamp({"mode": "occ", "lambda": 0.5, "epochs": 6}).objectives == {"occupancy": {"weight": 1}}
    feat = legacy_pretraining_stamp({"mode": "feat", "lambda": 0.5, "epochs": 6})
    assert (feat.label, feat.objectives, feat.row_label()) == ("Feat", {"features": {"weight": 1}}, "Feat (6 ep)")
    # an old checkpoint's init stamp ({"run", "pretraining": {...}}) reads the same way
    old_init = {"run": "/p", "pretraining": {"mode": "occ", "lambda": 0.01, "epochs": 2}}
    assert PretrainingStamp.from_dict(old_init) == PretrainingStamp("Occ", {"occupancy": {"weight": 1}}, 2, "/p")
    with pytest.raises(ValueError, match="unknown pretraining mode"):
        legacy_pretraining_stamp({"mode": "magic"})


def test_row_label_names_every_weight_that_is_not_one():
    stamp = PretrainingStamp("Img-ALSO+Feat", {"img_also": {"weight": 2, "radius": 1.0}, "features": {"weight": 0.01}}, 50)
    assert stamp.row_label() == "Img-ALSO+Feat (50 ep, img_also 2, λ=0.01)"
    assert PretrainingStamp("Occ", {"occupancy": {"weight": 1}}).row_label() == "Occ"


def _write(d, obj):
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return d


@pytest.mark.parametrize(
    "content, expected",
    [("{not json", "JSONDecodeError"), ({k: v for k, v in OLD_METRICS.items() if k != "mean_iou"}, "mean_iou"),
     ({**OLD_METRICS, "task": "lanes"}, "unknown task 'lanes'"), ({**OLD_METRICS, "fraction": "half"}, "half"),
     ({**OLD_METRICS, "pretraining": {"mode": "magic"}}, "unknown pretraining mode"), ("[1, 2]", "JSON object")],  # fmt: skip
)
def test_damaged_metrics_json_is_a_one_line_error_saying_what_to_do(tmp_path, content, expected):
    run = _write(tmp_path / "run", content)
    with pytest.raises(OccfeatError) as e:
        FinetuneMetrics.read(run)
    msg = str(e.value)
    assert "\n" not in msg and expected in msg and f"rerun occfeat evaluate on {run}" in msg and "not a valid finetune metrics.json" in msg


def test_missing_metrics_json_is_a_one_line_error(tmp_path):
    with pytest.raises(OccfeatError, match="has no metrics.json: not a finished finetune run"):
        FinetuneMetrics.read(tmp_path)
    with pytest.raises(OccfeatError, match="is not a directory"):
        FinetuneMetrics.read(tmp_path / "nope")
