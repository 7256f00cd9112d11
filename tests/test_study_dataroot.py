"""``occfeat study`` on a dataroot it does not synthesise (nuScenes' path): the tiny synthetic world passed
as if it were real goes through the same code path end to end, robustness stage included, and is only read."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from occfeat.errors import OccfeatError
from occfeat.pipeline import corruption_grid, load_study, run_study
from tests.fixtures.synth import TINY_VERSION

# The smallest study that still has every stage: None and a tiny OccFeat pretraining (the semantic stand-in
# teacher works: the dataroot is a synthetic world), one task, fraction and seed, one corruption at one severity.
TINY = ["teacher_input=[56,98]", "pretrainings=[none,pretrain/synthetic-tiny.yaml]", "tasks=[vehicle]", "fractions=[1.0]",
        "finetune_epoch_scale=0.02", "pretrain_overrides=[train.epochs=1,train.max_steps=1,train.num_workers=0,train.keep_snapshots=0]",
        "finetune_overrides=[train.max_steps=1,train.num_workers=0,train.keep_snapshots=0]", "corruptions=[fog]", "corruption_severities=[2]"]


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: {relative path: (size, mtime_ns)}; equal before and after = untouched."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def run(cfg, out: Path) -> tuple[dict, str]:
    buf = io.StringIO()
    report = run_study(cfg, out, console=Console(file=buf, width=200), progress=False)
    return report, buf.getvalue()


def test_a_study_on_a_given_dataroot_reads_it_only_and_evaluates_under_corruptions(synth_root, tmp_path):
    before = listing(synth_root)
    out, caches = tmp_path / "study", tmp_path / "shared-caches"
    cfg = load_study(None, [f"dataroot={synth_root}", f"version={TINY_VERSION}", f"caches={caches}", *TINY])
    _, log = run(cfg, out)
    assert "skipped: the study reads dataroot" in log and "6/7 robustness" in log
    assert not (out / "dataroot").exists() and not (out / "caches").exists()  # nothing synthesised, caches where asked
    assert (caches / "occupancy.h5").is_file() and (caches / "features.h5").is_file()
    assert listing(synth_root) == before  # the dataroot is byte-for-byte and file-for-file what it was
    summary = pd.read_csv(out / "report" / "summary.csv", keep_default_na=False)
    assert sorted(summary["pretraining"].str.split().str[0]) == ["None", "Occ+Feat"]
    assert set(summary["task"]) == {"vehicle"} and set(summary["fraction"]) == {1.0}
    assert summary["marks"].str.contains("§").all()  # a synthetic world passed as real keeps its marker: stamped synthetic
    runs = sorted(p for p in (out / "finetune").iterdir() if (p / "metrics.json").is_file())
    assert [p.name for p in runs] == ["vehicle-none-f1-s0", "vehicle-synthetic-tiny-f1-s0"]
    for r in runs:
        corrupted = json.loads((r / "metrics-synth_val-fog-s2.json").read_text())
        assert (corrupted["corruption"], corrupted["severity"], corrupted["split"]) == ("fog", 2, "synth_val")
        assert json.loads((r / "metrics.json").read_text())["dataroot"] == str(synth_root.resolve())
    # a rerun is a no-op: every stage skips, no result file is rewritten
    results = {p: p.stat().st_mtime_ns for p in [*out.glob("finetune/*/metrics*.json"), *caches.iterdir()]}
    _, again = run(load_study(None, [f"dataroot={synth_root}", f"version={TINY_VERSION}", f"caches={caches}", *TINY]), out)
    assert again.count("finished, skipped") == 2 * len(runs), again  # finetune and robustness of each run
    assert {p: p.stat().st_mtime_ns for p in results} == results
    assert listing(synth_root) == before


def test_a_study_reads_the_corruptions_from_a_downloaded_nuscenes_c_copy(synth_root, tmp_path):
    """corruption_images: fog at severity 2 is read from the copy's Fog/mid (here the dataroot's own images,
    so the IoU must equal the clean one exactly), into metrics-<split>-Fog-mid.json, which the report counts
    as fog s2; nothing is corrupted on the fly. A copy without the folder is refused before anything runs."""
    import shutil

    from occfeat.train.records import FinetuneMetrics

    copy = tmp_path / "nuScenes-C"
    shutil.copytree(synth_root / "samples", copy / "Fog" / "mid")  # CAM_*/... as nuScenes-C ships them
    over = [f"dataroot={synth_root}", f"version={TINY_VERSION}", f"caches={tmp_path / 'caches'}", *TINY, "pretrainings=[none]"]
    with pytest.raises(OccfeatError, match=r"corruption_images .*: no Fog/mid folder; point it at the nuScenes-C folder") as e:
        run_study(load_study(None, [*over, f"corruption_images={tmp_path}"]), tmp_path / "refused", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "refused").exists()

    out = tmp_path / "study"
    _, log = run(load_study(None, [*over, f"corruption_images={copy}"]), out)
    assert "under Fog-mid: mean IoU" in log
    run_dir = out / "finetune" / "vehicle-none-f1-s0"
    assert not (run_dir / "metrics-synth_val-fog-s2.json").exists()
    read = FinetuneMetrics.read(run_dir / "metrics-synth_val-Fog-mid.json")
    clean = FinetuneMetrics.read(run_dir)
    assert read.image_root == str((copy / "Fog" / "mid").resolve()) and read.corruption == ""
    assert read.intersection == clean.intersection and read.union == clean.union
    robust = pd.read_csv(out / "report" / "robustness.csv")
    fog = robust[robust.corruption == "fog"]
    assert len(fog) == 1 and str(fog.severities.iloc[0]) == "2" and fog["mean"].iloc[0] == pytest.approx(clean.mean_iou)
    _, again = run(load_study(None, [*over, f"corruption_images={copy}"]), out)
    assert "under Fog-mid: finished, skipped" in again


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["dataroot={tmp}/nope", "version=v1.0-mini"], r"dataroot .*nope does not exist; set dataroot=PATH"),
        (["dataroot={root}"], r"needs version= \(it holds v1.0-mini\)"),
        (["dataroot={root}", "version=v1.0-trainval"], r"has no v1.0-trainval/ folder \(it holds v1.0-mini\)"),
        (["dataroot={root}", "version=v1.0-mini", "synth.scenes=3"], "drop the synth settings"),
        (["dataroot={root}", "version=v1.0-mini", "caches={root}/caches"], "inside dataroot .* only reads"),
        (["version=v1.0-trainval"], "set synth.version instead"),  # a synthesised world has synth's version
    ],
)
def test_a_bad_dataroot_setting_is_one_line_before_anything_is_written(synth_root, tmp_path, overrides, match):
    over = [o.format(tmp=tmp_path, root=synth_root) for o in overrides]
    with pytest.raises(OccfeatError, match=match) as e:
        run_study(load_study(None, over), tmp_path / "out", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_the_shipped_nuscenes_recipes_need_a_dataroot_and_name_the_papers_rows(tmp_path):
    from occfeat.pipeline import load_pretrainings, recipe_path
    from occfeat.train.finetune import resolve_config

    with pytest.raises(OccfeatError, match=r"set dataroot=PATH \(the folder that holds v1.0-trainval/\)"):
        run_study(load_study("nuscenes-table1"), tmp_path / "out", progress=False)
    table1 = load_study("nuscenes-table1", ["dataroot=/data/nuscenes"])
    grid = resolve_config(recipe_path(table1.finetune_recipe, "finetune"), "vehicle", 1.0).grid
    epochs = {name: p and p.train.epochs for name, p in load_pretrainings(table1, grid).items()}
    assert epochs == {"none": None, "simplebev-effb0": 50, "epochs-100": 100}  # None, OccFeat, OccFeat† (rows differ by epochs)
    assert (table1.tasks, table1.fractions, table1.finetune_epoch_scale) == (("vehicle", "map"), (0.01, 0.1, 1.0), 0)
    robustness = load_study("nuscenes-robustness", ["dataroot=/data/nuscenes"])
    assert len(corruption_grid(robustness)) == 8 * 3  # every nuScenes-C corruption at easy / mid / hard


def test_the_standin_teacher_is_refused_on_a_dataroot_without_its_labels(tmp_path):
    root = tmp_path / "nuscenes"
    (root / "v1.0-mini").mkdir(parents=True)
    cfg = load_study(None, [f"dataroot={root}", "version=v1.0-mini", "pretrainings=[none,pretrain/synthetic-tiny.yaml]"])
    with pytest.raises(OccfeatError, match="needs the label images .* set teacher=vit_small_patch14_dinov2.lvd142m"):
        run_study(cfg, tmp_path / "out", progress=False)
    assert list(listing(root)) == ["v1.0-mini"] and not (tmp_path / "out").exists()  # refused before voxelize, nothing written


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["corruptions=[haze]"], "unknown corruption 'haze'"),
        (["corruptions=[all,fog]"], "'all' stands alone"),
        (["corruptions=[fog]", "corruption_fractions=[0.5]"], r"each must also be in fractions"),
        (["corruptions=[fog]", "corruption_severities=[4]"], "severity 4 is not one of 1, 2, 3"),
    ],
)
def test_bad_corruption_settings_are_one_line(overrides, match):
    with pytest.raises(OccfeatError, match=match):
        corruption_grid(load_study("ci", overrides))


def test_a_study_begun_before_these_fields_existed_still_resumes():
    from occfeat.config import to_dict
    from occfeat.pipeline import same_study

    cfg = load_study("ci")
    old = {k: v for k, v in to_dict(cfg).items() if k not in ("dataroot", "version", "caches", "corruptions", "corruption_severities",
                                                              "corruption_fractions", "corruption_tasks", "corruption_images")}
    assert same_study(old, cfg)  # pipeline.json of an older occfeat: the new fields at their defaults
    assert not same_study({**old, "seeds": [5]}, cfg) and not same_study({**old, "gone": 1}, cfg)
