"""occfeat report on hand-made run records: table numbers, deltas, mean ± std, labelled counts, marks, errors."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from occfeat.errors import OccfeatError
from occfeat.report import write_report
from occfeat.train.records import FinetuneMetrics, PretrainingStamp, Provenance

OCCFEAT = PretrainingStamp("Occ+Feat", {"occupancy": {"weight": 1}, "features": {"weight": 0.01}}, epochs=50, run="/runs/pre")


def _run(tmp_path, name, iou, task="vehicle", fraction=0.01, pretraining=None, seed=0, synthetic=False, samples=False,
         labelled=None):
    d = tmp_path / name
    d.mkdir()
    FinetuneMetrics(
        task=task, fraction=fraction, seed=seed, labelled_samples=labelled or round(fraction * 28130),
        arch="simplebev", backbone="efficientnet_b0", input_size=(224, 400), mean_iou=iou, iou={task: iou},
        pretraining=pretraining or PretrainingStamp(),
        provenance=Provenance(synthetic_data=synthetic, backbone_random_init=synthetic,
                              teacher_random_init=synthetic if pretraining is not None else None),
    ).write(d)
    if samples:
        rng = np.random.default_rng(0)
        np.savez(d / "samples.npz", cameras=rng.integers(0, 255, (2, 6, 8, 12, 3), dtype=np.uint8),
                 target=rng.random((2, 1, 10, 10)) > 0.5, prob=rng.random((2, 1, 10, 10)).astype(np.float16),
                 valid=np.ones((2, 10, 10), bool), classes=np.array(["vehicle"]), tokens=np.array(["a", "b"]),
                 grid=np.array('{"bounds": [[-5, 5], [-5, 5], [-1, 1]], "shape": [10, 10, 1]}'))
    return d


def test_table_has_means_std_and_deltas_against_none(tmp_path):
    runs = [
        _run(tmp_path, "none-v1", 0.137),
        _run(tmp_path, "occfeat-v1-s0", 0.24, pretraining=OCCFEAT, seed=0),
        _run(tmp_path, "occfeat-v1-s1", 0.25, pretraining=OCCFEAT, seed=1),
        _run(tmp_path, "none-m10", 0.281, task="map", fraction=0.1),
        _run(tmp_path, "occfeat-m10", 0.337, task="map", fraction=0.1, pretraining=OCCFEAT, samples=True),
    ]
    out = write_report(runs, tmp_path / "report")
    s = out["summary"].set_index(["pretraining", "task", "fraction"])
    row = s.loc[("Occ+Feat (50 ep, λ=0.01)", "vehicle", 0.01)]
    assert row["n"] == 2 and math.isclose(row["mean"], 0.245)
    assert math.isclose(row["std"], np.std([0.24, 0.25], ddof=1))
    assert math.isclose(row["delta"], 0.245 - 0.137)
    assert math.isclose(s.loc[("Occ+Feat (50 ep, λ=0.01)", "map", 0.1)]["delta"], 0.337 - 0.281)
    table = out["table"]
    assert list(table.columns) == ["Vehicles 1% (281 labelled)", "Map 10% (2813 labelled)"]
    none_row, occ_row = table.index[0], table.index[1]
    assert none_row[3] == "None"
    assert table.loc[none_row, "Vehicles 1% (281 labelled)"] == "13.7"
    assert table.loc[occ_row, "Vehicles 1% (281 labelled)"] == "24.5 ± 0.7 (+10.8)"
    assert table.loc[occ_row, "Map 10% (2813 labelled)"] == "33.7 (+5.6)"
    md = (tmp_path / "report" / "table.md").read_text()
    assert "24.5 ± 0.7 (+10.8)" in md and "| Architecture |" in md and "labelled samples each run finetuned on" in md and "Labels before finetuning: none in any row" in md and "| Labels before finetuning |" not in md
    names = {p.name for p in out["files"]}
    assert {"table.csv", "summary.csv", "iou_vs_fraction.png", "samples-occfeat-m10.png"} <= names
    assert (tmp_path / "report" / "iou_vs_fraction.png").stat().st_size > 1000


def test_synthetic_rows_are_marked_and_not_compared_with_real_ones(tmp_path):
    runs = [
        _run(tmp_path, "none-real", 0.137),
        _run(tmp_path, "occfeat-synth", 0.5, pretraining=OCCFEAT, synthetic=True),
    ]
    out = write_report(runs, tmp_path / "r", plots=False)
    labels = [k[3] for k in out["table"].index]
    assert "Occ+Feat (50 ep, λ=0.01)§*‡" in labels
    synth = out["summary"][out["summary"]["synthetic_data"]].iloc[0]
    assert math.isnan(synth["delta"])  # no synthetic None row to compare with
    assert any(line.startswith("§") for line in out["legend"])


def test_bad_run_dirs_are_one_line_errors_naming_the_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OccfeatError, match="empty has no metrics.json"):
        write_report([empty], tmp_path / "r")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(OccfeatError, match="broken"):
        write_report([broken], tmp_path / "r")
    with pytest.raises(OccfeatError, match="not a directory"):
        write_report([tmp_path / "missing"], tmp_path / "r")


def test_runs_on_other_label_counts_get_their_own_column_and_no_delta(tmp_path):
    """Two datasets of other sizes at the same fraction: never one column, never a delta across them."""
    runs = [
        _run(tmp_path, "none-big", 0.13, labelled=281),
        _run(tmp_path, "occ-small", 0.30, labelled=3, pretraining=PretrainingStamp("Occ", {"occupancy": {"weight": 1}}, 10)),
    ]
    out = write_report(runs, tmp_path / "r", plots=False)
    assert list(out["table"].columns) == ["Vehicles 1% (3 labelled)", "Vehicles 1% (281 labelled)"]
    occ = out["summary"][out["summary"]["pretraining"] == "Occ (10 ep)"].iloc[0]
    assert occ["labelled"] == 3 and math.isnan(occ["delta"])


def test_old_metrics_json_still_reported(tmp_path):
    """A metrics.json written before the typed records (pretraining mode/lambda + init_run)."""
    d = tmp_path / "old"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({
        "task": "map", "classes": ["road"], "fraction": 0.1, "seed": 1, "split": "val", "iou": {"road": 0.4},
        "mean_iou": 0.4, "intersection": {"road": 4}, "union": {"road": 10}, "threshold": 0.5, "arch": "simplebev",
        "backbone": "efficientnet_b0", "input_size": [224, 400], "pretraining": {"mode": "occfeat", "lambda": 0.01, "epochs": 50},
        "init_run": "/runs/pre", "provenance": {"synthetic_data": False, "backbone_random_init": False, "teacher_random_init": False},
        "dataroot": "/data", "version": "v1.0-trainval", "labelled_samples": 2813, "step": 9, "epoch": 1.0, "checkpoint": "x"}))
    table = write_report([d], tmp_path / "r", plots=False)["table"]
    assert table.index[0][3] == "Occ+Feat (50 ep, λ=0.01)"
    assert table.iloc[0]["Map 10% (2813 labelled)"] == "40.0"


def test_cli_prints_the_table_and_fails_in_one_line(tmp_path):
    from occfeat.cli.main import app

    run = _run(tmp_path, "none", 0.137)
    res = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r"), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert "13.7" in res.output and (tmp_path / "r" / "table.md").is_file()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "error:" in res.output and len(res.output.strip().splitlines()) == 1


def _pretraining_dir(tmp_path, name):
    d = tmp_path / name
    (d / "checkpoints").mkdir(parents=True)
    (d / "checkpoints" / "last.pt").write_bytes(b"")
    (d / "provenance.json").write_text("{}")
    return d


def test_pretraining_runs_get_their_pictures_and_a_broken_one_a_skip_line(tmp_path, monkeypatch):
    calls = []

    def pictures(run, out, progress=False):
        calls.append((run.name, out))
        if run.name == "moved":
            raise OccfeatError(f"{run} recorded a dataroot that does not exist; pass --dataroot")
        out.mkdir(parents=True)
        (out / "loss.png").write_bytes(b"png")
        return [out / "loss.png"]

    monkeypatch.setattr("occfeat.feature_pictures.write_pretraining_pictures", pictures)
    good, moved = _pretraining_dir(tmp_path, "occfeat-p0"), _pretraining_dir(tmp_path, "moved")
    ft = _run(tmp_path, "none-v1", 0.137)
    res = write_report([ft, good, moved], tmp_path / "r")
    assert calls == [("occfeat-p0", tmp_path / "r" / "pretrain-occfeat-p0"), ("moved", tmp_path / "r" / "pretrain-moved")]
    assert res["pictures"] == {str(good): [tmp_path / "r" / "pretrain-occfeat-p0" / "loss.png"], str(moved): []}
    assert res["skipped"] == [f"{moved}: pictures not drawn: {moved} recorded a dataroot that does not exist; pass --dataroot"]
    assert res["table"] is not None and (tmp_path / "r" / "table.md").is_file()

    # only pretraining runs: pictures, no table; --no-plots draws none and says why
    res = CliRunner().invoke(__import__("occfeat.cli.main").cli.main.app, ["report", str(good), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert f"pictures of {good}: {tmp_path / 'p' / 'pretrain-occfeat-p0'}/ (loss.png)" in res.output
    assert not (tmp_path / "p" / "table.md").exists()
    res = write_report([good], tmp_path / "q", plots=False)
    assert res["skipped"] == [f"{good}: a pretraining run (its pictures are plots: drop --no-plots)"] and not res["files"]
