"""A whole OccFeat experiment, end to end, as one resumable run:

    synth → voxelize → extract → pretrain (one run per pretraining) → finetune (task × fraction ×
    pretraining × seed) → robustness (nuScenes-C corruptions, when the study lists them) → report

The world is synthesised into ``OUT/dataroot`` unless the study names a ``dataroot`` (nuScenes, or any
nuScenes-format folder), which it only reads: then the synth stage is skipped and everything else is the
same code path. ``occfeat demo`` is this pipeline with the tiny preset (recipes/studies/demo.yaml); the synthetic
pretraining study is the same pipeline with recipes/studies/synthetic.yaml, Table 1 on nuScenes
recipes/studies/nuscenes-table1.yaml (docs/studies.md). Every stage is the
library call its own CLI command makes, so each shows its own progress, and every stage is
idempotent: rerunning the same command skips what is finished and resumes what was interrupted.

Output layout (``--out DIR``)::

    dataroot/                  the synthetic nuScenes-format world (absent when the study names a dataroot)
    grid.json                  the grid every cache and run uses (the recipes' one grid)
    caches/occupancy.h5        voxelize (caches/ is the study's ``caches`` folder when it names one)
    caches/features.h5         extract (the semantic stand-in teacher unless another is configured: stamped)
    pretrain/<name>[-p<seed>]/  one pretraining run per pretrain recipe (named after the recipe file; -p<seed> per pretrain_seeds)
    finetune/<task>-<name>-f<fraction>-s<seed>/   finetune runs (metrics.json each; <name>+<entry>[-t100] distilled,
                               lidar-teacher the LiDAR teachers of distillations)
    finetune/gt-cache/         ground truth, shared by the finetune runs
    finetune/<run>/metrics-<val split>-<corruption>-s<severity>.json   the robustness stage's evaluations
    report/                    table.md, table.csv, plots (robustness.* with corruptions), pretrain-<run>/ pictures
    pipeline.json              the resolved study config and the seconds each stage took
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from occfeat.config import find_recipe, load_config, merge, recipe_stem, to_dict
from occfeat.data.index import SYNTH_MARKER, VERSIONS
from occfeat.data.synth import SynthConfig
from occfeat.errors import OccfeatError
from occfeat.train.labels import fraction_defaults

# Labelled subsets smaller than this are loaded in the main process (see _finetune_schedule).
SMALL_SUBSET = 16
# The pretraining that is none: the backbone from ImageNet (or random-init) weights only, the paper's "None" row.
NONE = "none"
# A recipe's ``dataroot`` that the user must set on the command line (dataroot=PATH): the nuScenes recipes ship it.
DATAROOT_UNSET = "<PATH>"
# ``corruptions: [all]``: every nuScenes-C corruption of occfeat.data.corruptions.
ALL_CORRUPTIONS = "all"


@dataclass
class StudyConfig:
    """One experiment; study recipes in recipes/studies/ are deltas over these defaults."""

    recipe_kind = "studies"  # not a field: the folder of shipped recipes a bare name is looked up in (config.find_recipe)
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(scenes=6, samples_per_scene=10, image_size=(480, 270)))
    """The synthetic world (scenes are split ~80/20 into synth_train / synth_val); unused, and must stay
    unset, when ``dataroot`` is given."""
    dataroot: str | None = None
    """A nuScenes-format dataroot to run on (for nuScenes: the folder that holds v1.0-trainval/). None:
    synthesise the world ``synth`` describes into OUT/dataroot. The study only reads it (caches, runs and
    report go under OUT, or ``caches``); rows are stamped synthetic (§) only when it was written by occfeat
    synth (it holds its marker). The shipped nuScenes recipes write ``<PATH>``: set dataroot=PATH."""
    version: str | None = None
    """The devkit version under ``dataroot`` (v1.0-trainval, v1.0-mini), needed with a dataroot. With a
    synthesised world it is ``synth.version`` (set that instead; None or the same value)."""
    caches: str | None = None
    """Folder of the voxelize/extract caches (occupancy.h5, features.h5, features-random-teacher.h5). None:
    OUT/caches. On nuScenes keep them beside the data and share them between studies of the same dataroot,
    split and teacher: each cache records its grid and teacher spec and refuses a study with others."""
    train_split: str = "synth_train"
    """Split for pretraining and the labelled finetuning pool (nuScenes: train)."""
    val_split: str = "synth_val"
    """Split every finetune run is evaluated on (nuScenes: val)."""
    teacher: str = "semantic-standin"
    """The teacher whose features are distilled. Default: the semantic stand-in teacher (patch features
    from the synthetic world's per-pixel labels, ``occfeat/data/standin.py``; no weights can be downloaded
    on CPU demo machines), stamped ¶ everywhere. With DINOv2 weights: ``teacher=vit_small_patch14_dinov2.lvd142m
    teacher_weights=PATH`` (or ``random_teacher=true`` for the random-init control, stamped ‡)."""
    teacher_input: tuple[int, int] = (112, 196)
    """(H, W) of the teacher's input, multiples of 14."""
    teacher_weights: str | None = None
    """DINOv2 weights file; None with random_teacher=False means the HF cache."""
    random_teacher: bool = False
    """Random-init ViT teacher (a control: its features carry no semantics); stamped everywhere."""
    pretrainings: tuple[str, ...] = ("none", "pretrain/synthetic-tiny.yaml")
    """The rows to compare: "none" (no BEV pretraining) and pretrain recipes (relative to recipes/, or
    paths), e.g. pretrain/synthetic-tiny.yaml (OccFeat), pretrain/synthetic-occ.yaml (Table 3's L_occ
    only), pretrain/synthetic-img-also.yaml (Img-ALSO). Each recipe's objectives name its report row;
    run dirs are named after the recipe file. All must use one grid (the caches are built once)."""
    random_teacher_controls: tuple[str, ...] = ()
    """Pretrain recipes (entries of ``pretrainings``' kind) run once more on the features of a RANDOM-INIT
    ViT-S/14 teacher (``CONTROL_TEACHER``; run dirs "<name>-random-teacher", rows stamped ‡): the control
    that tells what the teacher's semantics add from what distilling any features adds."""
    pretrain_overrides: list[str] = field(default_factory=list)
    """key=value overrides applied to every pretrain recipe (e.g. train.epochs=4)."""
    pretrain_seeds: tuple[int, ...] = ()
    """Pretraining seeds (``train.seed``: initial weights and data order). Empty: one run per pretraining
    with its recipe's seed (run dir <name>). Several: each pretraining runs once per seed (run dirs
    <name>-p<seed>) and the k-th finetune seed starts from pretraining seed ``pretrain_seeds[k mod n]``,
    so a row's spread over seeds includes the pretraining run's variance, not only the labelled subset's
    and the finetune's."""
    finetune_recipe: str = "finetune/synthetic-tiny.yaml"
    finetune_overrides: list[str] = field(default_factory=list)
    distillations: tuple[str, ...] = ()
    """Cross-modal distillation rows (``occfeat.train.distill``): "bevdistill", "distillbev", the same on
    the unlabelled frames too ("bevdistill-semi", "distillbev-semi"), or "pseudo" (pseudo-labels from the
    teacher on the unlabelled frames). For every (task, fraction, seed) a LiDAR teacher is finetuned on
    exactly that labelled subset (``teacher_recipe``; run dirs <task>-lidar-teacher-f<fraction>-s<seed>, a
    row of their own), then every pretraining is finetuned once more per entry, distilling from that
    teacher (run dirs <task>-<pretraining>+<entry>-f<fraction>-s<seed>). Entries that use the unlabelled
    frames are skipped at fraction 1 (there are none)."""
    teacher_recipe: str = "finetune/synthetic-lidar.yaml"
    """The LiDAR teacher's finetune recipe (its grid must be the finetune recipe's)."""
    distill_overrides: list[str] = field(default_factory=list)
    """key=value overrides of the distilled runs (e.g. distill.weight=0.1, distill.sigma=2)."""
    privileged: tuple[str, ...] = ()
    """Distillation entries to run once more at every fraction below 1 from the LiDAR teacher of fraction
    1 (same seed): the privileged upper bound of the seeds' setting (their teachers saw 100 % of the
    boxes), marked † in the report, never a low-label result (run dirs <task>-<pretraining>+<entry>-t100-f…)."""
    extra_heads: tuple[str, ...] = ()
    """Finetuning rows with a head trained beside the BEV loss and dropped at test time
    (``occfeat.train.extra_heads``): "perspective" (BEVFormer v2's perspective supervision) and
    "second-bev" (v2's control: a second BEV head at the same weight). Every pretraining of
    ``extra_head_pretrainings`` is finetuned once more per entry (run dirs <task>-<pretraining>+<entry>-f…-s…)."""
    extra_head_pretrainings: tuple[str, ...] = ()
    """The ``pretrainings`` entries the extra-head rows start from; empty: all of them."""
    tasks: tuple[str, ...] = ("vehicle",)
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0,)
    finetune_epoch_scale: float = 0.15
    """The paper's finetuning epochs per label fraction (100 / 50 / 30 at 1 / 10 / 100 %,
    ``occfeat.train.labels.FRACTION_DEFAULTS``) times this factor, the same for every fraction: budgets
    follow the paper, so 100 % trains on more data and for more steps than 1 %. 0: the recipe's epochs."""
    corruptions: tuple[str, ...] = ()
    """nuScenes-C corruptions (``occfeat.data.corruptions``: brightness, low_light, fog, snow, motion_blur,
    color_quant, camera_crash, frame_lost; or [all]) under which the robustness stage re-evaluates every
    finished camera finetune run of ``corruption_tasks`` × ``corruption_fractions`` (the paper's Fig. 4),
    through ``occfeat evaluate --corruption``'s library call; each writes the run's
    metrics-<val_split>-<name>-s<severity>.json and is skipped when that file exists. Empty: no robustness stage."""
    corruption_severities: tuple[int, ...] = (1, 2, 3)
    """Severities of every corruption: RoboBEV's easy / mid / hard (Fig. 4 averages the three)."""
    corruption_fractions: tuple[float, ...] = (1.0,)
    """Label fractions whose finetune runs are evaluated under the corruptions (each one of ``fractions``)."""
    corruption_tasks: tuple[str, ...] = ("vehicle",)
    """Tasks whose finetune runs are evaluated under the corruptions (each one of ``tasks``)."""
    corruption_images: str | None = None
    """A downloaded nuScenes-C (RoboBEV) copy: the folder holding its ``<Corruption>/<easy|mid|hard>/``
    image folders (``Fog/hard/CAM_FRONT/...`` or ``Fog/hard/samples/CAM_FRONT/...``). The robustness stage
    then reads each corruption × severity from there (``occfeat evaluate --image-root``'s call; the file
    is metrics-<val_split>-<Corruption>-<level>.json, which the report counts as that corruption at that
    severity) instead of corrupting the images on the fly. None: on the fly."""


CONTROL_TEACHER = "vit_small_patch14_dinov2.lvd142m"  # the architecture of the random-teacher control
LIDAR_TEACHER = "lidar-teacher"  # the run-dir name of the distillation rows' LiDAR teachers
CONTROL_SUFFIX = "-random-teacher"


def recipe_path(name: str | Path, kind: str | None = None) -> Path:
    """A recipe a study names (``pretrain/synthetic-tiny.yaml``: relative to the shipped recipes, or a path)
    → its file, in the repository and from a wheel alike (:func:`occfeat.config.find_recipe`)."""
    return find_recipe(name, kind)


def load_study(recipe: str | Path | None, overrides: list[str] | None = None) -> StudyConfig:
    """A study recipe (a path or a shipped study's name, e.g. ``synthetic``) ← ``key=value`` overrides."""
    return load_config(StudyConfig, recipe, overrides)


def _stage(console, title: str):
    from rich.rule import Rule

    # at most 80 columns: piped to a log file the console is unbounded (it never wraps), a rule would fill it
    console.print(Rule(f"[bold]{title}"), width=min(console.width, 80))


def _ensure_dataroot(cfg: StudyConfig, root: Path, console, progress: bool = True) -> None:
    from occfeat.data.synth import write_dataroot

    marker = root / SYNTH_MARKER
    want = json.loads(json.dumps(dataclasses.asdict(cfg.synth)))
    if marker.is_file():
        have = json.loads(marker.read_text()).get("config")
        if have == want:
            console.print(f"dataroot {root} is complete (same synth config): skipped")
            return
        raise OccfeatError(f"{root} holds a synthetic world made with another config; use another --out or delete it")
    if root.exists() and any(root.iterdir()):
        raise OccfeatError(f"{root} exists and is not an occfeat synthetic world; use another --out")
    write_dataroot(root, cfg.synth, overwrite=root.exists(), progress=progress)


def _inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies under it (both resolved: symlinks and .. cannot hide it)."""
    return path.resolve().is_relative_to(folder.resolve())


def study_data(cfg: StudyConfig, out: Path) -> tuple[Path, str, bool]:
    """(dataroot, version, synthesise it?) of the study, checked before anything is written: a given
    dataroot must exist and hold its version folder, synth settings must not sit beside it (they would
    be silently ignored), and neither OUT nor the caches may lie inside it (the study only reads it)."""
    if cfg.dataroot is None:
        if cfg.version not in (None, cfg.synth.version):
            raise OccfeatError(f"version={cfg.version}, but the study synthesises its world with synth.version={cfg.synth.version}; "
                               "set synth.version instead, or dataroot=PATH to run on an existing dataroot")
        return out / "dataroot", cfg.synth.version, True
    if cfg.dataroot == DATAROOT_UNSET:
        raise OccfeatError(f"this study runs on a dataroot it does not name; set dataroot=PATH (the folder that holds "
                           f"{cfg.version or 'v1.0-trainval'}/)")
    root = Path(cfg.dataroot).expanduser()
    if cfg.synth != StudyConfig().synth:
        raise OccfeatError(f"the study sets synth (a world to synthesise) and dataroot={cfg.dataroot} (an existing one); "
                           "drop the synth settings (a study recipe without them), or dataroot to synthesise")
    if not root.is_dir():
        raise OccfeatError(f"dataroot {root} does not exist; set dataroot=PATH, the folder that holds {cfg.version or 'v1.0-trainval'}/")
    held = [v for v in VERSIONS if (root / v).is_dir()]
    if cfg.version is None or not (root / cfg.version).is_dir():
        have = f"it holds {', '.join(held)}" if held else "it holds no nuScenes version folder"
        what = "needs version=" if cfg.version is None else f"has no {cfg.version}/ folder"
        raise OccfeatError(f"dataroot {root} {what} ({have}); set version= to the folder with the devkit tables")
    for name, path in (("--out", out), ("caches", Path(cfg.caches).expanduser() if cfg.caches else None)):
        if path is not None and _inside(path, root):
            raise OccfeatError(f"{name} {path} lies inside dataroot {root}, which a study only reads; put it beside the data")
    return root, cfg.version, False


def check_teacher(cfg: StudyConfig, root: Path, synthesised: bool) -> None:
    """The semantic stand-in teacher reads the synthetic world's label images: refuse it up front on a
    dataroot without them (nuScenes), not hours later at the extract stage after voxelize."""
    from occfeat.data.standin import STANDIN_TEACHER
    from occfeat.data.synth.semantics import SEMANTICS_DIR

    if cfg.teacher == STANDIN_TEACHER and not cfg.random_teacher and not synthesised and not (root / SEMANTICS_DIR).is_dir():
        raise OccfeatError(f"teacher={STANDIN_TEACHER} needs the label images of an occfeat synth world, which dataroot {root} lacks; "
                           "set teacher=vit_small_patch14_dinov2.lvd142m (with teacher_weights=FILE or a filled HF cache)")


def corruption_grid(cfg: StudyConfig) -> list:
    """The robustness stage's evaluations as Corruption(name, severity) pairs: ``corruptions`` ("all":
    every nuScenes-C corruption) × ``corruption_severities``, checked before anything runs."""
    from occfeat.data.corruptions import CORRUPTIONS, Corruption

    if not cfg.corruptions:
        return []
    if ALL_CORRUPTIONS in cfg.corruptions and len(cfg.corruptions) > 1:
        raise OccfeatError(f"corruptions {list(cfg.corruptions)}: '{ALL_CORRUPTIONS}' stands alone; list names or [all]")
    stray = [f for f in cfg.corruption_fractions if f not in cfg.fractions] + [t for t in cfg.corruption_tasks if t not in cfg.tasks]
    if stray or not cfg.corruption_severities:
        raise OccfeatError(f"corruption_fractions/corruption_tasks {stray}: each must also be in fractions {list(cfg.fractions)} / "
                           f"tasks {list(cfg.tasks)}" if stray else "corruptions are listed but corruption_severities is empty; list 1, 2 and/or 3")
    names = list(CORRUPTIONS) if cfg.corruptions == (ALL_CORRUPTIONS,) else list(cfg.corruptions)
    return [Corruption(name, severity) for name in names for severity in cfg.corruption_severities]


def _finetune_schedule(n_train: int, fraction: float, batch: int, accum: int, epoch_scale: float) -> dict:
    """Train settings for a labelled subset of ceil(f·N) samples: the batch shrinks to the subset when
    it is smaller (1 % of a small world can be one sample), and with ``epoch_scale`` > 0 the epochs are
    the paper's for the fraction times ``epoch_scale`` (at least 1)."""
    n = max(1, math.ceil(fraction * n_train - 1e-9))
    batch = min(batch, n)
    accum = max(1, min(accum, n // batch))
    out = {"batch_size": batch, "grad_accum": accum}
    if n < SMALL_SUBSET:
        out["num_workers"] = 0  # forking loader workers every epoch costs more than loading a few samples
    if epoch_scale > 0:
        out["epochs"] = max(1, round(fraction_defaults(fraction)["epochs"] * epoch_scale))
    return out


def _started(run: Path) -> bool:
    """A run dir an earlier invocation began: resume it (the loop restarts one killed before its first
    checkpoint, and continues one after)."""
    return run.is_dir() and any(run.iterdir())


def pretrain_run_name(name: str, seed: int | None) -> str:
    """The pretrain/ run dir of pretraining ``name`` at pretraining seed ``seed`` (None: the recipe's)."""
    return name if seed is None else f"{name}-p{seed}"


def pretrain_seed_for(cfg: StudyConfig, finetune_seed: int) -> int | None:
    """The pretraining seed the finetune seed starts from: pretrain_seeds paired with seeds in order."""
    if not cfg.pretrain_seeds:
        return None
    return cfg.pretrain_seeds[list(cfg.seeds).index(finetune_seed) % len(cfg.pretrain_seeds)]


def run_name(task: str, pretraining: str, fraction: float, seed: int) -> str:
    return f"{task}-{pretraining}-f{fraction:g}-s{seed}"


def pretraining_name(entry: str) -> str:
    """The run-dir name of a study's pretraining: "none", or its recipe's file name without .yaml."""
    return NONE if entry == NONE else recipe_stem(entry)


def load_pretrainings(cfg: StudyConfig, finetune_grid):
    """{name: resolved PretrainConfig or None}, and the one grid every cache and run uses."""
    from occfeat.objectives import registry
    from occfeat.train.pretrain import PretrainConfig

    if cfg.random_teacher_controls and cfg.random_teacher:
        raise OccfeatError("random_teacher_controls repeat pretrainings on a random-init teacher, but the study's teacher "
                           "is random-init already (random_teacher=true); drop one of them")
    if len(set(cfg.pretrain_seeds)) != len(cfg.pretrain_seeds):
        raise OccfeatError(f"pretrain_seeds {list(cfg.pretrain_seeds)} repeats a seed; list each once")
    if len(cfg.pretrain_seeds) > len(cfg.seeds):
        raise OccfeatError(f"pretrain_seeds lists {len(cfg.pretrain_seeds)} seeds but there are {len(cfg.seeds)} finetune seeds, "
                           "and each finetune seed starts from one pretraining: list at least as many seeds")
    configs = {}
    entries = [(entry, pretraining_name(entry)) for entry in cfg.pretrainings]
    control_names = {pretraining_name(entry) + CONTROL_SUFFIX for entry in cfg.random_teacher_controls}
    entries += [(entry, pretraining_name(entry) + CONTROL_SUFFIX) for entry in cfg.random_teacher_controls]
    for entry, name in entries:
        if name in configs:
            raise OccfeatError(f"the study lists two pretrainings named '{name}'; give the recipes distinct file names")
        if entry == NONE and name != NONE:
            raise OccfeatError("random_teacher_controls lists 'none'; name pretrain recipes there")
        configs[name] = None if entry == NONE else load_config(PretrainConfig, recipe_path(entry, "pretrain"), cfg.pretrain_overrides)
    for name, pcfg in configs.items():
        if name in control_names and "features" not in {s for o in pcfg.objectives for s in registry()[o].sources}:
            raise OccfeatError(f"random_teacher_controls: '{name.removesuffix(CONTROL_SUFFIX)}' distils no teacher features, "
                               "so a random teacher changes nothing; list recipes with the features objective")
        if pcfg is not None and pcfg.grid != finetune_grid:
            raise OccfeatError(f"pretraining '{name}' uses grid {pcfg.grid.spec()} but the finetune recipe uses {finetune_grid.spec()}; "
                               "a study builds one set of caches: use one grid")  # fmt: skip
    return configs


def same_study(saved: dict, cfg: StudyConfig) -> bool:
    """Whether pipeline.json's saved config is ``cfg``: re-resolved through today's StudyConfig first, so
    a field added since the study began (at its default) does not refuse its resume."""
    from occfeat.config import resolve_saved

    try:
        return resolve_saved(StudyConfig, saved, "pipeline.json") == cfg
    except OccfeatError:  # a field that no longer exists: another config
        return False


def corruption_folders(cfg: StudyConfig, corruptions: list) -> dict:
    """{Corruption: its folder in ``corruption_images``} (nuScenes-C's ``Fog/hard`` for fog at severity 3),
    every folder checked before anything runs; {} when the study corrupts on the fly."""
    from occfeat.robustness import NUSCENES_C_FOLDERS, NUSCENES_C_LEVELS

    if cfg.corruption_images is None:
        return {}
    root = Path(cfg.corruption_images).expanduser()
    folder_of = {name: folder for folder, name in NUSCENES_C_FOLDERS.items()}
    level_of = {severity: level for level, severity in NUSCENES_C_LEVELS.items()}
    folders = {c: root / folder_of[c.name] / level_of[c.severity] for c in corruptions}
    missing = [str(f.relative_to(root)) for f in folders.values() if not f.is_dir()]
    if missing:
        raise OccfeatError(f"corruption_images {root}: no {', '.join(missing)} folder; point it at the nuScenes-C folder "
                           "that holds Brightness/, Fog/, ... (each with easy/, mid/, hard/), or drop it to corrupt on the fly")
    return folders


def _evaluate_corrupted(run: Path, corruption, split: str, root: Path, console, timed, progress: bool,
                        folder: Path | None = None) -> None:
    """One finished finetune run re-evaluated under one corruption (``occfeat evaluate --corruption``'s
    library call, or ``--image-root folder``'s for a downloaded nuScenes-C copy), unless its metrics file is
    there already."""
    from occfeat.train.finetune import run_evaluate

    label = corruption.label if folder is None else f"{folder.parent.name}-{folder.name}"
    if (run / f"metrics-{split}-{label}.json").is_file():
        console.print(f"{run.name} under {label}: finished, skipped")
        return
    how = {"corruption": corruption} if folder is None else {"image_root": folder}
    metrics = timed(f"robustness/{run.name}/{label}", lambda: run_evaluate(run, split=split, dataroot=root, progress=progress, **how))
    console.print(f"{run.name} under {label}: mean IoU {100 * metrics.mean_iou:.1f}")


def run_study(cfg: StudyConfig, out: str | Path, console=None, progress: bool = True) -> dict:
    """Run (or resume) the whole study into ``out``; returns the report dict of occfeat.report."""
    from rich.console import Console

    from occfeat.data.extract import extract_features
    from occfeat.data.index import SampleIndex
    from occfeat.data.voxelize import build_occupancy
    from occfeat.report import write_report
    from occfeat.train.finetune import resolve_config, run_finetune
    from occfeat.train.pretrain import pretrain

    from occfeat.objectives import registry

    console = console or Console(stderr=True)
    out = Path(out)
    root, version, synthesise = study_data(cfg, out)
    corruptions = corruption_grid(cfg)
    folders = corruption_folders(cfg, corruptions)
    ft_recipe = recipe_path(cfg.finetune_recipe, "finetune")
    grid = resolve_config(ft_recipe, cfg.tasks[0] if cfg.tasks else "vehicle", 1.0, cfg.finetune_overrides).grid
    pretrainings = load_pretrainings(cfg, grid)
    teacher_recipe = recipe_path(cfg.teacher_recipe, "finetune") if cfg.distillations else None
    entry_overrides: dict[str, list[str]] = {}
    if teacher_recipe is not None:
        from occfeat.train.distill_config import UNLABELLED, study_overrides

        entry_overrides = {e: study_overrides(e) for e in cfg.distillations}
        stray = [e for e in cfg.privileged if e not in cfg.distillations]
        if stray:
            raise OccfeatError(f"privileged {stray}: each must also be in distillations {list(cfg.distillations)}")
        tgrid = resolve_config(teacher_recipe, cfg.tasks[0] if cfg.tasks else "vehicle", 1.0, cfg.finetune_overrides).grid
        if tgrid != grid:
            raise OccfeatError(f"teacher_recipe {cfg.teacher_recipe} uses grid {tgrid.spec()}, the finetune recipe {grid.spec()}; "
                               "teacher and student must share the grid")
    from occfeat.train.extra_heads import EXTRA_HEADS

    bad = [e for e in cfg.extra_heads if e not in EXTRA_HEADS or e == "none"]
    stray = [e for e in cfg.extra_head_pretrainings if e not in cfg.pretrainings]
    if bad or stray:
        raise OccfeatError(f"extra_heads {bad} must be among {', '.join(EXTRA_HEADS[1:])}" if bad else
                           f"extra_head_pretrainings {stray}: each must also be in pretrainings {list(cfg.pretrainings)}")
    with_extra = {pretraining_name(e) for e in (cfg.extra_head_pretrainings or cfg.pretrainings)}
    controls = {pretraining_name(entry) + CONTROL_SUFFIX for entry in cfg.random_teacher_controls}
    sources = {s for p in pretrainings.values() if p is not None for name in p.objectives for s in registry()[name].sources}
    if "features" in sources:
        check_teacher(cfg, root, synthesise)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "pipeline.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    if log.get("config") is not None and not same_study(log["config"], cfg):
        raise OccfeatError(f"{out} holds a study run with another config; use another --out or delete it")
    log["config"] = to_dict(cfg)
    seconds: dict = log.setdefault("seconds", {})

    def timed(key: str, fn):
        t0 = time.perf_counter()
        result = fn()
        seconds[key] = round(seconds.get(key, 0.0) + time.perf_counter() - t0, 2)
        log_path.write_text(json.dumps(log, indent=1))
        return result

    caches = Path(cfg.caches).expanduser() if cfg.caches else out / "caches"
    _stage(console, "1/7 synth: a nuScenes-format world")
    if synthesise:
        timed("synth", lambda: _ensure_dataroot(cfg, root, console, progress))
    else:
        console.print(f"skipped: the study reads dataroot {root} ({version}), and writes nothing into it")

    (out / "grid.json").write_text(grid.to_json())
    index = SampleIndex(root, version, cfg.train_split, progress=progress)

    _stage(console, "2/7 voxelize: LiDAR → occupancy")
    occ = caches / "occupancy.h5" if "occupancy" in sources else None
    if occ is None:
        console.print("no pretraining reads LiDAR: skipped")
    else:
        timed("voxelize", lambda: build_occupancy(root, version, cfg.train_split, occ, grid, index=index, progress=progress))

    which = " (RANDOM-INIT teacher)" if cfg.random_teacher else " (semantic stand-in teacher, not DINOv2)" if cfg.teacher == "semantic-standin" else ""
    _stage(console, "3/7 extract: teacher features" + which)
    feats = caches / "features.h5" if "features" in sources else None
    if feats is None:
        console.print("no pretraining reads teacher features: skipped")
    else:
        timed("extract", lambda: extract_features(
            root, version, cfg.train_split, feats, teacher=cfg.teacher, weights=cfg.teacher_weights,
            random_teacher=cfg.random_teacher, input_size=cfg.teacher_input, batch_size=12, index=index, progress=progress))
    control_feats = None
    if cfg.random_teacher_controls:
        control_feats = caches / "features-random-teacher.h5"
        console.print(f"the random-teacher control's features (RANDOM-INIT {CONTROL_TEACHER}) → {control_feats}")
        timed("extract-random-teacher", lambda: extract_features(
            root, version, cfg.train_split, control_feats, teacher=CONTROL_TEACHER, random_teacher=True,
            input_size=cfg.teacher_input, batch_size=12, index=index, progress=progress))

    _stage(console, "4/7 pretrain: BEV network + the objectives' heads")
    inits: dict[tuple[str, int | None], Path | None] = {}
    for name, pcfg in pretrainings.items():
        for pseed in cfg.pretrain_seeds or (None,):
            if pcfg is None:
                inits[name, pseed] = None
                continue
            seeded = pcfg if pseed is None else merge(pcfg, {"train": {"seed": pseed}})
            run = out / "pretrain" / pretrain_run_name(name, pseed)
            console.print(f"pretraining '{name}' (objectives: {', '.join(f'{n} x{c.weight:g}' for n, c in seeded.objectives.items())}, "
                          f"seed {seeded.train.seed}) → {run}")
            features = control_feats if name in controls else feats
            timed(f"pretrain/{run.name}", lambda: pretrain(seeded, root, version, occ, features, run, split=cfg.train_split,
                                                           resume=_started(run), progress=progress))
            inits[name, pseed] = run

    _stage(console, "5/7 finetune: BEV segmentation with few labels")
    n_train = len(index)
    runs = []
    camera_runs: dict[Path, tuple[str, float]] = {}  # {run: (task, fraction)} of the camera networks (not the LiDAR teachers)

    def finetune(run: Path, recipe: Path, task: str, fraction: float, seed: int, init, overrides: list[str]) -> None:
        if run in runs:  # a 100 % teacher serves its own column and the privileged rows: one row, trained once
            return
        runs.append(run)
        if recipe == ft_recipe:
            camera_runs[run] = task, fraction
        if (run / "metrics.json").is_file():
            console.print(f"{run.name}: finished, skipped")
            return
        fcfg = resolve_config(recipe, task, fraction, [*cfg.finetune_overrides, f"train.seed={seed}", *overrides])
        fcfg = merge(fcfg, {"train": _finetune_schedule(
            n_train, fraction, fcfg.train.batch_size, fcfg.train.grad_accum, cfg.finetune_epoch_scale)})
        console.print(f"{run.name}: {fcfg.train.epochs} epochs, init={init or 'none'}")
        timed(f"finetune/{run.name}", lambda: run_finetune(
            fcfg, root, version, run, init=init, split=cfg.train_split, val_split=cfg.val_split,
            resume=_started(run), progress=progress))

    for task in cfg.tasks:
        for fraction in cfg.fractions:
            for seed in cfg.seeds:
                teachers = {}
                if cfg.distillations:  # the LiDAR teacher of this labelled subset first (and the 100 % one for privileged rows)
                    teachers[""] = out / "finetune" / run_name(task, LIDAR_TEACHER, fraction, seed)
                    finetune(teachers[""], teacher_recipe, task, fraction, seed, None, [])
                    if cfg.privileged and fraction < 1:
                        teachers["-t100"] = out / "finetune" / run_name(task, LIDAR_TEACHER, 1.0, seed)
                        finetune(teachers["-t100"], teacher_recipe, task, 1.0, seed, None, [])
                for name in pretrainings:
                    init = inits[name, pretrain_seed_for(cfg, seed)]
                    finetune(out / "finetune" / run_name(task, name, fraction, seed), ft_recipe, task, fraction, seed, init, [])
                    for entry in cfg.extra_heads if name in with_extra else ():
                        finetune(out / "finetune" / run_name(task, f"{name}+{entry}", fraction, seed), ft_recipe, task, fraction,
                                 seed, init, [f"extra_head.kind={entry}"])
                    for entry, overrides in entry_overrides.items():
                        if fraction >= 1 and UNLABELLED in overrides:
                            continue  # every frame is labelled: nothing to add
                        for tag, teacher in teachers.items():
                            if tag and entry not in cfg.privileged:
                                continue
                            finetune(out / "finetune" / run_name(task, f"{name}+{entry}{tag}", fraction, seed), ft_recipe, task,
                                     fraction, seed, init, [*overrides, f"distill.teacher={teacher.resolve()}", *cfg.distill_overrides])

    _stage(console, "6/7 robustness: nuScenes-C corruptions")
    if not corruptions:
        console.print("no corruptions in the study: skipped")
    robust = [run for run, (task, fraction) in camera_runs.items() if task in cfg.corruption_tasks and fraction in cfg.corruption_fractions]
    for run in robust:
        for corruption in corruptions:
            _evaluate_corrupted(run, corruption, cfg.val_split, root, console, timed, progress, folders.get(corruption))

    _stage(console, "7/7 report")
    # the pictures of each pretraining (loss curves, occupancy, Fig. 5-6 features) from its first seed's run:
    # the other seeds' look alike, and each set costs a data load and a forward pass
    first = (cfg.pretrain_seeds or (None,))[0]
    pictured = [inits[name, first] for name in pretrainings if inits[name, first] is not None]
    report = timed("report", lambda: write_report([*runs, *pictured], out / "report", progress=progress))
    log["seconds_total"] = round(sum(v for k, v in seconds.items()), 1)
    log_path.write_text(json.dumps(log, indent=1))
    return report

