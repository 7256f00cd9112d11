"""`occfeat demo` end to end on the CI preset, through the CLI, and its resume."""

import json

import pandas as pd
from typer.testing import CliRunner

from occfeat.cli.main import app
from occfeat.pipeline import _finetune_schedule, load_study


def test_demo_ci_preset_runs_every_stage_and_reruns_as_a_no_op(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--preset", "ci", "--out", str(out)])
    assert res.exit_code == 0, res.output[-3000:]
    cfg = load_study("studies/ci.yaml")
    for path in ["dataroot/occfeat_synth.json", "caches/occupancy.h5", "caches/features.h5",
                 "pretrain/synthetic-tiny/checkpoints/last.pt", "report/table.md", "report/iou_vs_fraction.png", "pipeline.json",
                 # every pretraining's pictures: Fig. 5-6 for the one that distils features, the loss curves for each
                 "report/pretrain-synthetic-tiny/features_bev.png", "report/pretrain-synthetic-tiny/teacher.png",
                 "report/pretrain-synthetic-img-also/loss.png", "report/pretrain-synthetic-tiny-random-teacher/correlation.png"]:
        assert (out / path).is_file(), path
    runs = sorted(p.name for p in (out / "finetune").iterdir() if (p / "metrics.json").is_file())
    rows = len(cfg.pretrainings) + len(cfg.random_teacher_controls)
    assert len(runs) == len(cfg.fractions) * rows * len(cfg.tasks) * len(cfg.seeds)
    table = pd.read_csv(out / "report" / "summary.csv", keep_default_na=False)
    assert set(table["pretraining"].str.split().str[0]) == {"None", "Occ+Feat", "Img-ALSO"}
    assert table["mean"].between(0, 1).all() and len(table) == len(runs)
    # the random-teacher control: its own cache from a random-init ViT, its own row, stamped ‡ and not ¶
    control = out / "pretrain" / "synthetic-tiny-random-teacher"
    assert (out / "caches" / "features-random-teacher.h5").is_file() and (control / "checkpoints" / "last.pt").is_file()
    occfeat = table[table["pretraining"].str.startswith("Occ+Feat")]
    assert sorted(occfeat["marks"].str.contains("‡")) == [False] * len(cfg.fractions) + [True] * len(cfg.fractions)
    assert not occfeat[occfeat["marks"].str.contains("‡")]["marks"].str.contains("¶").any()
    assert occfeat[~occfeat["marks"].str.contains("‡")]["marks"].str.contains("¶").all()
    md = (out / "report" / "table.md").read_text()
    assert "random" in md and "synthetic" in md  # random-init teacher/backbone and synthetic data are stamped
    # every finetune run records what it stands on
    m = json.loads((out / "finetune" / runs[0] / "metrics.json").read_text())
    assert m["provenance"]["synthetic_data"] is True
    # a rerun skips every finished stage and leaves the results untouched
    before = (out / "report" / "summary.csv").read_text()
    res2 = CliRunner().invoke(app, ["demo", "--preset", "ci", "--out", str(out)])
    assert res2.exit_code == 0, res2.output[-3000:]
    assert "skipped" in res2.output
    assert (out / "report" / "summary.csv").read_text() == before
    # killed during pretraining before its first checkpoint: the run dir exists without one; rerun resumes
    import shutil

    shutil.rmtree(out / "pretrain" / "synthetic-tiny" / "checkpoints")
    for run in (out / "finetune").glob("*-synthetic-tiny-*"):
        shutil.rmtree(run)
    res_k = CliRunner().invoke(app, ["demo", "--preset", "ci", "--out", str(out)])
    assert res_k.exit_code == 0, res_k.output[-3000:]
    assert (out / "pretrain" / "synthetic-tiny" / "checkpoints" / "last.pt").is_file()
    assert sorted(p.name for p in (out / "finetune").iterdir() if (p / "metrics.json").is_file()) == runs
    # a bad preset is one line
    res3 = CliRunner().invoke(app, ["demo", "--preset", "huge", "--out", str(out)])
    assert res3.exit_code == 2 and "'huge' is not one of 'demo', 'ci'" in " ".join(res3.output.replace("│", " ").split())


def test_finetune_schedule_fits_small_subsets_and_follows_the_papers_epochs():
    # 1 % of 40 samples is one sample: the batch shrinks to it; the epochs are the paper's (100 / 50 / 30) scaled
    assert _finetune_schedule(40, 0.01, 6, 1, 0.2) == {"batch_size": 1, "grad_accum": 1, "num_workers": 0, "epochs": 20}
    assert _finetune_schedule(40, 1.0, 8, 5, 0) == {"batch_size": 8, "grad_accum": 5}
    assert _finetune_schedule(400, 0.1, 2, 1, 0.2) == {"batch_size": 2, "grad_accum": 1, "epochs": 10}
    # 100 % trains on more data AND for more optimizer steps than 1 %
    steps = {f: _finetune_schedule(400, f, 2, 1, 0.2)["epochs"] * (max(1, round(f * 400)) // min(2, max(1, round(f * 400))))
             for f in (0.01, 0.1, 1.0)}
    assert steps[0.01] < steps[0.1] < steps[1.0]


def test_random_teacher_controls_are_refused_where_they_mean_nothing():
    import pytest

    from occfeat.errors import OccfeatError
    from occfeat.pipeline import CONTROL_SUFFIX, load_pretrainings, recipe_path
    from occfeat.train.finetune import resolve_config

    grid = resolve_config(recipe_path("finetune/synthetic-tiny.yaml"), "vehicle", 1.0, []).grid
    names = load_pretrainings(load_study("studies/ci.yaml"), grid)
    assert list(names) == ["none", "synthetic-tiny", "synthetic-img-also", "synthetic-tiny" + CONTROL_SUFFIX]
    with pytest.raises(OccfeatError, match="random-init already"):
        load_pretrainings(load_study("studies/ci.yaml", ["random_teacher=true"]), grid)
    with pytest.raises(OccfeatError, match="distils no teacher features"):
        load_pretrainings(load_study("studies/ci.yaml", ["random_teacher_controls=[pretrain/synthetic-occ.yaml]"]), grid)
    with pytest.raises(OccfeatError, match="lists 'none'"):
        load_pretrainings(load_study("studies/ci.yaml", ["random_teacher_controls=[none]"]), grid)


def test_pretrain_seeds_run_each_pretraining_per_seed_and_pair_them_with_the_finetune_seeds(tmp_path):
    import pytest
    import torch

    from occfeat.errors import OccfeatError
    from occfeat.pipeline import pretrain_seed_for, run_study
    from occfeat.train.pretrain import read_pretrain_run

    over = ["pretrainings=[pretrain/synthetic-occ.yaml]", "random_teacher_controls=[]", "fractions=[1.0]",
            "seeds=[0,1,2]", "pretrain_seeds=[5,7]"]
    cfg = load_study("studies/ci.yaml", over)
    assert [pretrain_seed_for(cfg, s) for s in cfg.seeds] == [5, 7, 5]  # paired in order, cycling
    assert pretrain_seed_for(load_study("studies/ci.yaml"), 0) is None  # none given: the recipe's seed
    for bad, match in [("pretrain_seeds=[1,1]", "repeats"), ("pretrain_seeds=[0,1,2,3]", "at least as many")]:
        with pytest.raises(OccfeatError, match=match):
            run_study(load_study("studies/ci.yaml", [*over, bad]), tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()  # refused before anything is written

    out = tmp_path / "study"
    run_study(load_study("studies/ci.yaml", [*over, "seeds=[0,1]"]), out, progress=False)
    weights = {}
    for pseed in (5, 7):
        run = out / "pretrain" / f"synthetic-occ-p{pseed}"
        record = read_pretrain_run(run)
        assert record.config.train.seed == pseed
        weights[pseed] = next(v for v in record.network_state.values() if v.ndim == 4)  # the first conv
    assert not torch.equal(weights[5], weights[7])  # other seeds, other initial weights
    for seed, pseed in [(0, 5), (1, 7)]:
        m = json.loads((out / "finetune" / f"vehicle-synthetic-occ-f1-s{seed}" / "metrics.json").read_text())
        assert m["pretraining"]["run"].endswith(f"synthetic-occ-p{pseed}")


def test_distillation_rows_train_a_lidar_teacher_per_labelled_subset_then_distil_from_it(tmp_path):
    import pytest

    from occfeat.errors import OccfeatError
    from occfeat.pipeline import run_study
    from occfeat.train.records import FinetuneMetrics

    over = ["pretrainings=[none]", "random_teacher_controls=[]", "fractions=[0.5,1.0]", "distillations=[bevdistill,pseudo]",
            "privileged=[bevdistill]"]
    with pytest.raises(OccfeatError, match="each must be one of"):
        run_study(load_study("studies/ci.yaml", [*over[:-2], "distillations=[fitnet]"]), tmp_path / "refused", progress=False)
    with pytest.raises(OccfeatError, match="must also be in distillations"):
        run_study(load_study("studies/ci.yaml", [*over[:-1], "privileged=[distillbev]"]), tmp_path / "refused", progress=False)
    out = tmp_path / "study"
    report = run_study(load_study("studies/ci.yaml", over), out, progress=False)
    ft = out / "finetune"
    assert sorted(p.name for p in ft.iterdir() if p.name != "gt-cache") == [
        "vehicle-lidar-teacher-f0.5-s0", "vehicle-lidar-teacher-f1-s0",  # pseudo-labels need unlabelled frames: none at 100 %
        "vehicle-none+bevdistill-f0.5-s0", "vehicle-none+bevdistill-f1-s0", "vehicle-none+bevdistill-t100-f0.5-s0",
        "vehicle-none+pseudo-f0.5-s0", "vehicle-none-f0.5-s0", "vehicle-none-f1-s0"]
    for run, teacher, privileged in [("vehicle-none+bevdistill-f1-s0", "vehicle-lidar-teacher-f1-s0", False),
                                     ("vehicle-none+bevdistill-f0.5-s0", "vehicle-lidar-teacher-f0.5-s0", False),
                                     ("vehicle-none+pseudo-f0.5-s0", "vehicle-lidar-teacher-f0.5-s0", False),
                                     ("vehicle-none+bevdistill-t100-f0.5-s0", "vehicle-lidar-teacher-f1-s0", True)]:
        distilled = FinetuneMetrics.read(ft / run)
        assert distilled.distillation["teacher_run"] == str((ft / teacher).resolve())
        assert distilled.distillation["privileged"] == privileged
        same = (ft / teacher / "labelled_tokens.txt").read_text() == (ft / run / "labelled_tokens.txt").read_text()
        assert same != privileged  # a same-labels teacher saw exactly the student's labelled frames
    pseudo = FinetuneMetrics.read(ft / "vehicle-none+pseudo-f0.5-s0")
    assert pseudo.distillation["unlabelled"] > 0  # the rest of the split, used without its labels
    assert pseudo.labelled_samples + pseudo.distillation["unlabelled"] == FinetuneMetrics.read(ft / "vehicle-none-f1-s0").labelled_samples
    s = report["summary"]
    assert list(report["runs"]["run"]).count(str(ft / "vehicle-lidar-teacher-f1-s0")) == 1  # one row, though it serves twice
    rows = {(r.pretraining, r.prior, r.marks) for r in s.itertuples()}
    assert rows == {("None", "0", "§*"), ("None", "0", "§"), ("None + BEVDistill", "p % (LiDAR teacher)", "§*"),
                    ("None + BEVDistill", "100 % (LiDAR teacher)", "§*†"),
                    ("None + pseudo-labels on unlabelled frames", "p % (LiDAR teacher)", "§*")}
