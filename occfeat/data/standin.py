"""The semantic stand-in teacher: patch features made from the per-pixel labels of a synthetic world.

An instrument, not a model. ``occfeat synth`` knows each pixel's class and writes it beside the camera
JPEG (:mod:`occfeat.data.synth.semantics`); this teacher gives every class a fixed, seeded unit vector in
R^C and every 14-px patch the pixel-weighted mean of its pixels' class vectors, so a patch on a boundary
mixes its classes as a ViT token would. Optional Gaussian noise makes it imperfect. The output has the
shape a DINOv2 ViT-S/14 gives for the same input size, (Hp, Wp, 384) by default, and goes into the same
cache (``occfeat.data.extract``), stamped ``teacher = "semantic-standin"``: every run and report row
built on it carries the mark :data:`STANDIN_LEGEND`. Only ``occfeat synth`` worlds have the labels.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from occfeat.errors import OccfeatError
from occfeat.progress import progress_bar

# The report reads this module's stamp and must not pay for torch/timm/the devkit, which the data
# modules import (occfeat.data.synth's package imports the writer): those are imported where used.
if TYPE_CHECKING:
    from occfeat.data.index import SampleIndex
    from occfeat.weights import Provenance

STANDIN_TEACHER = "semantic-standin"
"""The ``--teacher`` name that selects the stand-in, and its ``teacher`` stamp in caches and runs."""
STANDIN_LEGEND = "semantic stand-in teacher (synthetic labels), not DINOv2"


@dataclass(frozen=True)
class StandinConfig:
    """Knobs of the stand-in teacher (all stamped into the cache spec)."""

    feature_dim: int = 384
    """C, the width of a feature: ViT-S/14's, so recipes' objectives.features.feature_dim still fits."""
    noise: float = 0.0
    """Gaussian noise added to each patch feature, as the expected norm of the noise vector relative to a
    class vector's (unit) norm: per-component std = noise / sqrt(C). 0: exact class mixtures. Seeded per
    camera image (its sample_data token), so the cache is deterministic."""
    seed: int = 0
    """Seed of the class vectors and the noise."""
    patch_size: int = 14
    """Pixels per token side at the teacher input, as DINOv2 ViT-S/14."""


def is_standin(teacher_stamp: dict) -> bool:
    """Whether a teacher stamp (a features cache spec or a run's provenance ``teacher``) is the stand-in."""
    return teacher_stamp.get("teacher") == STANDIN_TEACHER


def class_vectors(n_classes: int, dim: int, seed: int = 0) -> np.ndarray:
    """(n_classes, dim) float32 unit vectors, class k's drawn from ``default_rng([seed, k])``: fixed per
    class, independent of how many classes there are."""
    out = np.stack([np.random.default_rng([seed, k]).standard_normal(dim) for k in range(n_classes)])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def patch_features(labels: np.ndarray, vectors: np.ndarray, patch: int) -> np.ndarray:
    """Per-pixel class ids (H, W), H and W multiples of ``patch`` → (H/patch, W/patch, C) float32: each
    patch the mean of its pixels' class vectors (``vectors`` (K, C)), i.e. class fractions @ vectors."""
    h, w = labels.shape
    k = len(vectors)
    assert h % patch == 0 and w % patch == 0, f"label map {h}x{w} is not a multiple of the patch size {patch}"
    hp, wp = h // patch, w // patch
    patch_id = (np.arange(h)[:, None] // patch) * wp + np.arange(w)[None, :] // patch
    counts = np.bincount((patch_id * k + labels).ravel(), minlength=hp * wp * k).reshape(hp * wp, k)
    return ((counts / (patch * patch)).astype(np.float32) @ vectors).reshape(hp, wp, -1)


def load_labels(path: Path, input_size: tuple[int, int]) -> np.ndarray:
    """A label PNG resized whole to ``input_size`` (H, W) with NEAREST (a resized id is still an id):
    uint8 (H, W). One-line error naming the file if it is missing or unreadable."""
    h, w = input_size
    try:
        with Image.open(path) as im:
            if im.mode != "L":
                raise OccfeatError(f"semantic label image {path} has mode {im.mode}, expected L (one uint8 class id per pixel); rerun occfeat synth")
            return np.asarray(im.resize((w, h), Image.Resampling.NEAREST))
    except FileNotFoundError:
        raise OccfeatError(f"semantic label image {path} is missing; rerun occfeat synth on this dataroot or use --skip-bad") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise OccfeatError(f"semantic label image {path} is corrupt ({str(e).splitlines()[0][:80]}); rerun occfeat synth") from None


def image_seed(seed: int, token: str) -> list[int]:
    """Seed sequence of one camera image's noise: stable across runs and machines (no Python hash())."""
    return [seed, int.from_bytes(hashlib.sha256(token.encode()).digest()[:8], "little")]


class StandinTeacher:
    """Label PNG of one camera image → its (Hp, Wp, C) patch features."""

    def __init__(self, cfg: StandinConfig, input_size: tuple[int, int]):
        from occfeat.data.synth.semantics import SEMANTIC_CLASSES

        self.cfg, self.input_size = cfg, tuple(input_size)
        self.vectors = class_vectors(len(SEMANTIC_CLASSES), cfg.feature_dim, cfg.seed)

    def features(self, label_path: Path, image_token: str) -> np.ndarray:
        labels = load_labels(label_path, self.input_size)
        if labels.max(initial=0) >= len(self.vectors):
            raise OccfeatError(f"semantic label image {label_path} has class id {labels.max()}, but there are {len(self.vectors)} classes; rerun occfeat synth")
        f = patch_features(labels, self.vectors, self.cfg.patch_size)
        if self.cfg.noise > 0:
            rng = np.random.default_rng(image_seed(self.cfg.seed, image_token))
            f += rng.standard_normal(f.shape, dtype=np.float32) * np.float32(self.cfg.noise / np.sqrt(self.cfg.feature_dim))
        return f


def build_standin(dataroot: str | Path, cfg: StandinConfig, input_size: tuple[int, int]) -> tuple[StandinTeacher, Provenance, dict]:
    """The stand-in, its provenance (pretrained=False, source "semantic-standin") and the info
    ``extract_features`` stamps (the keys :func:`occfeat.data.extract.build_teacher` returns, plus
    ``standin``: the knobs). ``input_size`` (H, W): multiples of ``cfg.patch_size``, checked by the caller
    (``occfeat.data.extract.check_input_size``). One-line error when the dataroot has no labels at all."""
    from occfeat.data.synth.semantics import SEMANTIC_CLASSES, SEMANTICS_DIR
    from occfeat.weights import Provenance

    if cfg.feature_dim < 1 or cfg.noise < 0:
        raise OccfeatError(f"the stand-in teacher needs feature_dim >= 1 and noise >= 0 (got {cfg.feature_dim}, {cfg.noise})")
    h, w = input_size
    assert h % cfg.patch_size == 0 and w % cfg.patch_size == 0, f"input size {h}x{w} is not a multiple of {cfg.patch_size}"
    if not (Path(dataroot) / SEMANTICS_DIR).is_dir():
        raise OccfeatError(
            f"{dataroot} has no semantic labels ({SEMANTICS_DIR}/): only occfeat synth worlds have them; "
            "extract with DINOv2 weights instead (--weights FILE)"
        )
    teacher = StandinTeacher(cfg, (h, w))
    prov = Provenance(model=STANDIN_TEACHER, pretrained=False, source=STANDIN_TEACHER, sha256=hashlib.sha256(teacher.vectors.tobytes()).hexdigest())
    info = dict(mean=None, std=None, patch_size=cfg.patch_size, feature_dim=cfg.feature_dim, num_prefix_tokens=0,
                feature_hw=(h // cfg.patch_size, w // cfg.patch_size), input_size=(h, w),
                standin={**asdict(cfg), "classes": list(SEMANTIC_CLASSES), "legend": STANDIN_LEGEND})  # fmt: skip
    return teacher, prov, info


def run_standin_blocks(writer, index: SampleIndex, pending, teacher: StandinTeacher, skip_bad: bool, progress: bool) -> int:
    """Compute and write the pending blocks (:class:`occfeat.data.store.CacheWriter`); returns the number
    of images. A sample with a missing/corrupt label image stops the run, or with ``skip_bad`` is
    written invalid (all zeros)."""
    from occfeat.data.index import CAMERAS
    from occfeat.data.synth.semantics import semantics_path

    n_cam, (hp, wp), c = len(CAMERAS), (teacher.input_size[0] // teacher.cfg.patch_size, teacher.input_size[1] // teacher.cfg.patch_size), teacher.cfg.feature_dim
    n_images = 0
    with progress_bar(total=sum(b - a for a, b in pending) * n_cam, unit="img", desc="extract", enabled=progress) as bar:
        for start, stop in pending:
            feats = np.zeros((stop - start, n_cam, hp, wp, c), np.float16)
            valid = np.ones(stop - start, bool)
            for row in range(start, stop):
                for cam, frame in enumerate(index.record(index.tokens[row]).cameras):
                    path = semantics_path(index.dataroot, str(Path(frame.path).relative_to(index.dataroot)))
                    try:
                        feats[row - start, cam] = teacher.features(path, frame.token)
                    except OccfeatError:
                        if not skip_bad:
                            raise
                        valid[row - start] = False
                    n_images += 1
                    bar.update(1)
            feats[~valid] = 0  # skipped samples are all zeros (store.py convention)
            writer.write_block(start, stop, {"features": feats}, valid=valid)
    return n_images
