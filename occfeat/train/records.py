"""Typed records of a finetune run, written by the stage that owns them and read by everything after it.

- :class:`FinetuneMetrics` is a run dir's ``metrics.json`` (written by ``occfeat finetune`` / ``evaluate``,
  read by ``occfeat report`` and the CLI): what was trained on how many labels, from which pretraining,
  on what data, and the IoU it reached.
- :class:`PretrainingStamp` says which pretraining a finetune run started from (the report's row label);
  :class:`Provenance` says which of its numbers rest on random-init weights or synthetic data.

``metrics.json`` schema::

    task, fraction, seed, labelled_samples, arch, backbone, input_size [H, W],
    mean_iou, iou {class: IoU}, intersection / union {class: cells}, threshold, classes, split,
    pretraining {label, objectives {name: {weight, ...}}, epochs, run},
    provenance {synthetic_data, backbone_random_init, teacher_random_init, teacher_standin, backbone, teacher},
    dataroot, version, step, epoch, checkpoint,
    distillation {method, label, teacher_run, teacher_fraction, teacher_seed, teacher_labelled, privileged},
    extra_head {kind, label, weight}

Files written before these records (``pretraining {mode, lambda, epochs}`` + ``init_run``) are still
read, through :func:`legacy_pretraining_stamp`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from occfeat.data.standin import STANDIN_LEGEND
from occfeat.errors import OccfeatError
from occfeat.files import write_text_atomic
from occfeat.tasks import TASKS

METRICS_FILE = "metrics.json"
# The report's footnote markers, (provenance flag, marker, legend text): every table row and figure that
# depends on synthetic data, random-init or stand-in weights, or a privileged teacher says so with these.
MARKS = (
    ("synthetic_data", "§", "synthetic data (occfeat synth): not comparable to nuScenes numbers"),
    ("backbone_random_init", "*", "image backbone started from random weights, not ImageNet"),
    ("teacher_random_init", "‡", "pretrained with a random-init teacher (no DINOv2 weights)"),
    ("teacher_standin", "¶", STANDIN_LEGEND),
    ("privileged_teacher", "†", "distilled from a teacher trained on labelled frames this row did not see: privileged, not a low-label result"),
)
NONE_LABEL = "None"


@dataclass
class PretrainingStamp:
    """The pretraining a finetune run's network started from; the default is the paper's "None" row
    (ImageNet or random backbone, no BEV pretraining)."""

    label: str = NONE_LABEL
    """The pretraining's name in tables, e.g. "Occ+Feat"; "None" without BEV pretraining."""
    objectives: dict[str, dict] = field(default_factory=dict)
    """Objective name → its settings, at least {"weight": w}; {} for None."""
    epochs: float | None = None
    """Pretraining epochs the network was trained for (fractional when a run stopped mid-epoch); None for None."""
    run: str | None = None
    """The pretraining run dir or checkpoint the network was loaded from; None for None."""

    @property
    def is_none(self) -> bool:
        return self.label == NONE_LABEL

    def row_label(self) -> str:
        """The report's row label: "None", or the label with the epochs and every objective weight that
        is not 1, e.g. "Occ+Feat (50 ep, λ=0.01)" (λ: the teacher-features weight, as in the paper)."""
        if self.is_none:
            return NONE_LABEL
        parts = [f"{self.epochs:g} ep"] if self.epochs is not None else []
        for name, settings in self.objectives.items():
            w = settings.get("weight", 1)
            if w != 1:
                parts.append(f"λ={w:g}" if name == "features" else f"{name} {w:g}")
        return f"{self.label} ({', '.join(parts)})" if parts else self.label

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> PretrainingStamp:
        """Today's form, or a stamp of the old schema (see :func:`legacy_pretraining_stamp`)."""
        if not d:
            return cls()
        if "label" not in d:
            return legacy_pretraining_stamp(d)
        epochs = d.get("epochs")
        objectives = d.get("objectives") or {}
        if not isinstance(objectives, dict) or not all(isinstance(v, dict) for v in objectives.values()):
            raise ValueError(f"pretraining.objectives must map names to settings, got {objectives!r}")
        return cls(label=str(d["label"]), objectives=objectives, epochs=None if epochs is None else epochs_value(epochs),
                   run=None if d.get("run") is None else str(d["run"]))


# LEGACY: the pretraining schema before objectives, where a string loss mode ("both" in pretraining
# configs, "occfeat" in old metrics.json) and one weight λ said what was pretrained. Read here only.
_LEGACY_MODES = {"both": "occfeat", "occfeat": "occfeat", "occ": "occ", "feat": "feat"}


def legacy_pretraining_stamp(old: dict) -> PretrainingStamp:
    """LEGACY reader of the old pretraining schema, in one place. Accepts

    - an old metrics.json stamp: {"mode": "none" | "occ" | "feat" | "occfeat", "lambda", "epochs"}
      (+ "run", from the old ``init_run`` field),
    - an old checkpoint's init stamp: {"run", "pretraining": {"mode", ...}}.

    "both"/"occfeat" → "Occ+Feat" with objectives occupancy (weight 1) and features (weight λ); "occ" →
    "Occ" (occupancy); "feat" → "Feat" (features, weight 1); "none" → None.
    """
    if "pretraining" in old and "mode" not in old:
        return legacy_pretraining_stamp({**(old["pretraining"] or {}), "run": old.get("run")})
    if "mode" in old:
        mode, lam, epochs = old["mode"], old.get("lambda"), old.get("epochs")
    else:
        raise ValueError(f"no pretraining mode in {sorted(old)}")
    if mode in (None, "none"):
        return PretrainingStamp()
    if mode not in _LEGACY_MODES:
        raise ValueError(f"unknown pretraining mode {mode!r} (expected none, occ, feat, occfeat or both)")
    objectives = legacy_objectives(mode, lam)
    label = {"occfeat": "Occ+Feat", "occ": "Occ", "feat": "Feat"}[_LEGACY_MODES[mode]]
    run = old.get("run")
    return PretrainingStamp(label, objectives, None if epochs is None else epochs_value(epochs), None if run is None else str(run))


def legacy_objectives(mode: str, lam: float | None) -> dict[str, dict]:
    """The objectives an old string loss mode meant, with their weights: "both"/"occfeat" → occupancy (1)
    + features (λ), "occ" → occupancy, "feat" → features (1). The one home of that mapping (configs and
    stamps of the old schema both read it)."""
    mode = _LEGACY_MODES[mode]
    return {
        "occfeat": {"occupancy": {"weight": 1}, "features": {"weight": 1 if lam is None else float(lam)}},
        "occ": {"occupancy": {"weight": 1}},
        "feat": {"features": {"weight": 1}},
    }[mode]


def epochs_value(value) -> float | int:
    """Whole epochs as an int (as they were written), a run stopped mid-epoch to 2 decimals."""
    v = float(value)
    return int(v) if v.is_integer() else round(v, 2)


@dataclass
class Provenance:
    """Where the weights and data behind a result came from. The four flags become the report's marks:
    such rows must never pass for paper-comparable results."""

    synthetic_data: bool = False
    """Trained and evaluated on a synthetic dataroot (``occfeat synth``)."""
    backbone_random_init: bool = False
    """The image backbone started from random weights, not ImageNet (here or in the pretraining run)."""
    teacher_random_init: bool | None = None
    """The pretraining distilled a random-init teacher; None when no teacher was involved."""
    teacher_standin: bool = False
    """The pretraining distilled the semantic stand-in teacher (features made from a synthetic world's
    labels, :mod:`occfeat.data.standin`): an instrument, not DINOv2 (and not random-init either)."""
    backbone: dict = field(default_factory=dict)
    """Where the backbone weights came from (``occfeat.weights`` provenance: source, file, pretrained)."""
    teacher: dict = field(default_factory=dict)
    """The pretraining teacher's provenance ({} without one)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def of_pretraining(cls, provenance: dict, synthetic_data: bool = False) -> Provenance:
        """The flags of a pretraining run's ``provenance.json`` (its backbone and teacher stamps), as every
        run started from it carries them; ``synthetic_data``: its dataroot was written by ``occfeat synth``."""
        from occfeat.data.standin import is_standin

        backbone, teacher = provenance.get("backbone") or {}, provenance.get("teacher") or {}
        standin = bool(provenance.get("teacher_standin")) or is_standin(teacher)  # not pretrained, not random: its own mark
        return cls(
            synthetic_data=synthetic_data,
            backbone_random_init=not backbone.get("pretrained", True),
            teacher_random_init=(not teacher["pretrained"] and not standin) if "pretrained" in teacher else None,
            teacher_standin=standin,
            backbone=backbone,
            teacher=teacher,
        )

    @classmethod
    def from_dict(cls, d: dict | None) -> Provenance:
        d = d or {}
        teacher_random = d.get("teacher_random_init")
        return cls(synthetic_data=bool(d.get("synthetic_data", False)),
                   backbone_random_init=bool(d.get("backbone_random_init", False)),
                   teacher_random_init=None if teacher_random is None else bool(teacher_random),
                   teacher_standin=bool(d.get("teacher_standin", False)),
                   backbone=dict(d.get("backbone") or {}), teacher=dict(d.get("teacher") or {}))


@dataclass
class FinetuneMetrics:
    """A finetune run's ``metrics.json``: the evaluation of its last checkpoint on one split."""

    task: str
    """"vehicle" or "map"."""
    fraction: float
    """Share of the training split's key frames that were labelled."""
    seed: int
    """The run's seed (it picks the labelled subset)."""
    labelled_samples: int
    """How many labelled samples finetuning saw (``labelled_tokens.txt``)."""
    arch: str
    backbone: str
    input_size: tuple[int, int]
    """(H, W) of the camera images."""
    mean_iou: float
    """IoU of the task (map: mean over its classes), in [0, 1]."""
    iou: dict[str, float]
    """IoU per class."""
    pretraining: PretrainingStamp = field(default_factory=PretrainingStamp)
    provenance: Provenance = field(default_factory=Provenance)
    intersection: dict[str, float] = field(default_factory=dict)
    """Cells predicted and true per class, summed over the split."""
    union: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.5
    """Probability at or above which a cell counts as predicted."""
    classes: list[str] = field(default_factory=list)
    split: str = ""
    """The split evaluated on."""
    dataroot: str = ""
    version: str = ""
    step: int = 0
    """Optimizer steps of the evaluated checkpoint."""
    epoch: float = 0.0
    checkpoint: str = ""
    """The evaluated checkpoint file."""
    distillation: dict = field(default_factory=dict)
    """Cross-modal distillation while finetuning ({} without): method, label, teacher_run, teacher_fraction,
    teacher_seed, teacher_labelled (frames the teacher was trained on), privileged (it saw labelled
    frames this run did not)."""
    extra_head: dict = field(default_factory=dict)
    """The head trained beside the BEV loss and dropped at test time ({} without): kind, label, weight
    (:mod:`occfeat.train.extra_heads`)."""
    corruption: str = ""
    """The nuScenes-C corruption the camera images were evaluated under ("" = clean; occfeat.data.corruptions)."""
    severity: int = 0
    """Its severity, 1 to 3 (0 when clean)."""
    image_root: str = ""
    """The folder the camera images were read from instead of the dataroot's samples/ ("" = the dataroot)."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneMetrics:
        """Parse and check a metrics dict (today's or the old schema); ValueError/KeyError/TypeError on a bad one."""
        if not isinstance(d, dict):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        pretraining = d.get("pretraining")
        if pretraining and "label" not in pretraining and "init_run" in d:  # old schema: the run stood apart
            pretraining = {**pretraining, "run": d["init_run"]}
        names = {f.name for f in dataclasses.fields(cls)} - {"pretraining", "provenance"}
        m = cls(**{k: v for k, v in d.items() if k in names}, pretraining=PretrainingStamp.from_dict(pretraining),
                provenance=Provenance.from_dict(d.get("provenance")))
        m.task, m.arch, m.backbone = str(m.task), str(m.arch), str(m.backbone)
        m.fraction, m.seed, m.labelled_samples = float(m.fraction), int(m.seed), int(m.labelled_samples)
        m.input_size = tuple(int(v) for v in m.input_size)
        m.mean_iou, m.iou = float(m.mean_iou), {str(k): float(v) for k, v in m.iou.items()}
        m.step, m.epoch, m.threshold = int(m.step), float(m.epoch), float(m.threshold)
        m.corruption, m.severity, m.image_root = str(m.corruption), int(m.severity), str(m.image_root)
        m.distillation = dict(m.distillation or {})
        m.extra_head = dict(m.extra_head or {})
        if m.task not in TASKS:
            raise ValueError(f"unknown task '{m.task}' (expected {', '.join(TASKS)})")
        if len(m.input_size) != 2 or not 0 < m.fraction <= 1 or not (0 <= m.mean_iou <= 1 or math.isnan(m.mean_iou)):
            raise ValueError(f"input_size {list(m.input_size)}, fraction {m.fraction} or mean_iou {m.mean_iou} out of range")
        return m

    def write(self, run_dir: str | Path, name: str = METRICS_FILE) -> Path:
        """Write atomically into ``run_dir`` (``name``: e.g. metrics-test.json for another split)."""
        path = Path(run_dir) / name
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2), then=f"rerun occfeat evaluate on {run_dir}")
        return path

    @classmethod
    def read(cls, path: str | Path) -> FinetuneMetrics:
        """From a finetune run dir (its metrics.json) or a metrics file; a one-line :class:`OccfeatError`
        naming the path and what to do when it is missing or not a valid record."""
        path = Path(path)
        if path.is_dir():
            run_dir, path = path, path / METRICS_FILE
            if not path.is_file():
                raise OccfeatError(f"{run_dir} has no {METRICS_FILE}: not a finished finetune run (run occfeat finetune or occfeat evaluate on it)")
        elif not path.is_file():
            raise OccfeatError(f"{path} is not a directory; pass finetune run dirs (occfeat finetune --out)")
        else:
            run_dir = path.parent
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            detail = f"missing {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
            raise OccfeatError(f"{path} is not a valid finetune metrics.json ({type(e).__name__}: {detail}); rerun occfeat evaluate on {run_dir}") from e
        except OSError as e:
            raise OccfeatError(f"cannot read {path}: {e.strerror or e}; check its permissions") from e
