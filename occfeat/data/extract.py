"""Teacher features: every key-frame camera image through a frozen timm ViT (DINOv2 ViT-S/14 by
default, paper §4.1), patch tokens after the final norm, stored per sample as (6, Hp, Wp, C) float16.
On a synthetic world, ``teacher="semantic-standin"`` makes the same maps from the world's per-pixel labels
instead (:mod:`occfeat.data.standin`; an instrument, stamped as such).

The teacher is frozen, so its 2D maps are computed once here; the voxel targets are derived from them
on the training device (``occfeat.data.targets``). Each image is resized WHOLE (no crop, no pad) to the
input size, a multiple of the patch size, so a stored-image pixel maps to the feature map by a pure
scale — the property ``voxel_feature_targets`` relies on.

Pipeline: DataLoader workers decode and resize JPEGs (uint8, 4x less to copy than float) → pinned,
non-blocking copy → normalise on the device → forward (bf16 autocast on CUDA) → float16 → crash-safe
blocks through :class:`occfeat.data.store.CacheWriter`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import timm.data
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.utils.data import DataLoader, Dataset

from occfeat import __version__
from occfeat.data.index import CAMERAS, SampleIndex
from occfeat.data.standin import STANDIN_TEACHER, StandinConfig, build_standin, is_standin, run_standin_blocks
from occfeat.data.store import CacheReader, CacheWriter, Payload
from occfeat.errors import OccfeatError
from occfeat.procs import die_with_parent
from occfeat.progress import progress_bar
from occfeat.weights import Provenance, create_timm_model

KIND = "teacher_features"
RANDOM_TEACHER_SEED = 0


@dataclass(frozen=True)
class ExtractConfig:
    """Defaults of ``occfeat extract`` (the one home of these numbers)."""

    teacher: str = "vit_small_patch14_dinov2.lvd142m"
    """timm model name of the frozen teacher; any timm ViT works. Paper: DINOv2 ViT-S/14. On an ``occfeat
    synth`` world, "semantic-standin" selects the semantic stand-in teacher (:mod:`occfeat.data.standin`)."""
    input_size: tuple[int, int] = (224, 406)
    """Teacher input (H, W), multiples of the patch size (14). The paper does not state it; 224x406 is the
    student's 224x400 with W rounded up to /14 (the 1600x900 image is resized whole, 2 % anisotropic, which
    the targets handle exactly). Token grid: 224/14 x 406/14 = 16 x 29 tokens per camera, one token
    ≈ 56 x 55 original pixels, so a car (1.8 m wide) 30 m ahead of CAM_FRONT (f ≈ 1266 px) is ≈ 76 px
    ≈ 1.4 tokens wide. 448x812 gives 32 x 58 tokens (4x the tokens, ≥ 4x the ViT compute, 4x the cache:
    ≈ 290 GB instead of ≈ 73 GB for trainval). Measured on the synthetic world with a random-init
    teacher (BENCHMARKS.md, "Teacher resolution"); the default stays at the paper's input size."""
    batch_size: int = 64
    """Images per forward pass."""
    device: str = "auto"
    """"auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:N"."""
    workers: int = 0
    """DataLoader worker processes decoding JPEGs (0: in the main process)."""
    block_samples: int = 32
    """Samples per crash-safe block (a killed run loses at most one block)."""


DEFAULTS = ExtractConfig()


@dataclass(frozen=True)
class ExtractSummary:
    """What one ``extract_features`` call did."""

    out: Path
    samples: int
    computed: int  # samples computed by this call (0 when the cache was already complete)
    skipped: list[str]
    feature_shape: tuple[int, int, int, int]  # (6, Hp, Wp, C)
    provenance: Provenance
    seconds: float
    images_per_s: float


# ---- teacher ----
def check_input_size(input_size: tuple[int, int], patch: int) -> tuple[int, int]:
    """Validate (H, W): positive multiples of the teacher's patch size."""
    h, w = (int(v) for v in input_size)
    if h <= 0 or w <= 0 or h % patch or w % patch:
        raise OccfeatError(
            f"--input-size {h}x{w} must be positive multiples of the teacher's patch size {patch} "
            f"(e.g. {max(1, round(h / patch)) * patch}x{max(1, round(w / patch)) * patch})"
        )
    return h, w


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over a model's state dict (names and raw bytes, sorted by name)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def build_teacher(
    name: str = DEFAULTS.teacher,
    weights: str | Path | None = None,
    random_teacher: bool = False,
    input_size: tuple[int, int] = DEFAULTS.input_size,
) -> tuple[nn.Module, Provenance, dict]:
    """The frozen teacher in eval mode, its weight provenance, and its data info.

    Weights: ``weights`` file (safetensors/.pth, original DINOv2 checkpoints included: timm's ViT
    checkpoint filter converts them and resamples the position embedding to ``input_size``), else the HF
    cache/hub, else ``random_teacher`` only when asked. Returns info = {mean, std (3,) lists, patch_size,
    feature_dim, num_prefix_tokens, feature_hw (Hp, Wp), input_size (H, W)}.
    """
    # A random teacher is seeded (without touching the global RNG) so that a resumed run continues with
    # the same weights; its state-dict hash stands in for the weights file's sha256.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_TEACHER_SEED)
        model, prov = create_timm_model(
            name, weights=weights, random_init=random_teacher, weights_flag="--weights", random_flag="--random-teacher",
            img_size=tuple(input_size),
        )
    if random_teacher:
        prov = replace(prov, sha256=state_dict_sha256(model))
    if not hasattr(model, "patch_embed") or not hasattr(model, "num_prefix_tokens"):
        raise OccfeatError(f"teacher '{name}' is not a timm ViT (no patch_embed/num_prefix_tokens); pick a ViT, e.g. {DEFAULTS.teacher}")
    ph, pw = model.patch_embed.patch_size
    if ph != pw:
        raise OccfeatError(f"teacher '{name}' has non-square patches {ph}x{pw}; occfeat needs square patches")
    h, w = check_input_size(input_size, ph)
    cfg = timm.data.resolve_model_data_config(model)
    info = dict(
        mean=[float(v) for v in cfg["mean"]],
        std=[float(v) for v in cfg["std"]],
        patch_size=int(ph),
        feature_dim=int(model.num_features),
        num_prefix_tokens=int(model.num_prefix_tokens),
        feature_hw=(h // ph, w // ph),
        input_size=(h, w),
    )
    model.eval().requires_grad_(False)
    return model, prov, info


def patch_tokens(model: nn.Module, x: torch.Tensor, info: dict) -> torch.Tensor:
    """Normalised images (B, 3, H, W) → patch tokens after the final norm, (B, Hp, Wp, C).

    timm's ``forward_features`` ends with the final norm; its first ``num_prefix_tokens`` tokens are the
    class (and register) tokens, dropped here.
    """
    tokens = model.forward_features(x)[:, info["num_prefix_tokens"] :]
    hp, wp = info["feature_hw"]
    assert tokens.shape[1] == hp * wp, f"teacher gave {tokens.shape[1]} patch tokens, expected {hp}x{wp}"
    return tokens.reshape(x.shape[0], hp, wp, tokens.shape[-1])


def normalize(images: torch.Tensor, info: dict) -> torch.Tensor:
    """uint8 (B, 3, H, W) → float32 normalised with the teacher's mean/std."""
    mean = torch.tensor(info["mean"], device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(info["std"], device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


# ---- images ----
def load_image(path: str | Path, input_size: tuple[int, int]) -> torch.Tensor:
    """A camera image resized whole to ``input_size`` (H, W): uint8 (3, H, W). JPEG draft decoding, then
    PIL bilinear (antialiased when shrinking). One-line error naming the file if it is missing or not a readable image."""
    h, w = input_size
    try:
        with Image.open(path) as im:
            # JPEGs: libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain while the result stays >= the
            # input size (1600x900 -> 800x450 for 224x406): ~2x faster decoding, the CPU-side bottleneck
            # of a GPU run (BENCHMARKS.md); mean difference to a full decode ~0.3 of 255 levels.
            im.draft("RGB", (w, h))
            im = im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise OccfeatError(f"camera image {path} is missing; restore it or rerun with --skip-bad") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # PIL: truncated/corrupt JPEGs raise OSError/SyntaxError
        raise OccfeatError(f"camera image {path} is corrupt ({str(e).splitlines()[0][:80]}); restore it or rerun with --skip-bad") from None
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


class CameraImages(Dataset):
    """Items (row, camera, path) → (uint8 (3, H, W), row, camera, error message or "").

    Errors come back as data, not exceptions: an exception raised in a worker reaches the main process
    wrapped in a multi-line traceback, and the CLI promises one line.
    """

    def __init__(self, items: list[tuple[int, int, Path]], input_size: tuple[int, int]):
        self.items, self.input_size = items, tuple(input_size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        row, cam, path = self.items[i]
        try:
            return load_image(path, self.input_size), row, cam, ""
        except OccfeatError as e:
            return torch.zeros(3, *self.input_size, dtype=torch.uint8), row, cam, str(e)


def resolve_device(device: str) -> torch.device:
    """"auto" → CUDA when available, else CPU; a named device must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OccfeatError(f"--device '{device}' is not a torch device; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OccfeatError(f"--device {device} asked but CUDA is not available here; use --device cpu or auto")
    return dev


# ---- the extraction loop ----
def extract_features(
    dataroot: str | Path,
    version: str,
    split: str | None,
    out: str | Path,
    teacher: str = DEFAULTS.teacher,
    weights: str | Path | None = None,
    random_teacher: bool = False,
    input_size: tuple[int, int] = DEFAULTS.input_size,
    batch_size: int = DEFAULTS.batch_size,
    device: str = DEFAULTS.device,
    workers: int = DEFAULTS.workers,
    skip_bad: bool = False,
    block_samples: int = DEFAULTS.block_samples,
    progress: bool = True,
    index: SampleIndex | None = None,
    standin: StandinConfig = StandinConfig(),
) -> ExtractSummary:
    """Write the teacher features of every key frame of ``split`` to ``out`` (schema: data/README.md).

    Resumable (finished blocks are kept), idempotent (a complete cache is left alone), and refuses a
    cache made under another teacher, weights, input size or sample list. ``skip_bad`` marks samples
    with an unreadable image invalid instead of stopping. ``teacher`` "semantic-standin": the stand-in
    with the knobs ``standin`` (no weights; its spec also holds ``standin``, the knobs).
    """
    if batch_size < 1 or workers < 0:
        raise OccfeatError(f"--batch-size must be >= 1 and --workers >= 0 (got {batch_size}, {workers})")
    dev = resolve_device(device)
    index = index if index is not None else SampleIndex(dataroot, version, split, progress=progress)
    if teacher == STANDIN_TEACHER:
        if weights is not None or random_teacher:
            raise OccfeatError("the semantic stand-in teacher takes no weights; drop --weights/--random-teacher")
        model, prov, info = build_standin(dataroot, standin, check_input_size(input_size, standin.patch_size))
    else:
        model, prov, info = build_teacher(teacher, weights, random_teacher, input_size)
    hp, wp = info["feature_hw"]
    shape = (len(CAMERAS), hp, wp, info["feature_dim"])
    spec = {
        "kind": KIND,
        "teacher": prov.model,
        "pretrained": prov.pretrained,
        "weights_sha256": prov.sha256,
        "weights_source": prov.source,
        "input_size": list(info["input_size"]),
        "feature_hw": [hp, wp],
        "patch_size": info["patch_size"],
        "feature_dim": info["feature_dim"],
        "mean": info["mean"],
        "std": info["std"],
        "cameras": list(CAMERAS),
        "version": version,
        "split": split or "all",
        "dataroot": str(Path(dataroot).resolve()),
        "occfeat_version": __version__,
        **({"standin": info["standin"]} if "standin" in info else {}),
    }
    with CacheWriter(out, index.tokens, spec, {"features": Payload(shape, "float16")}, block_size=block_samples) as writer:
        pending = writer.pending()
        t0 = time.perf_counter()
        n_images = 0
        if pending and is_standin(spec):
            n_images = run_standin_blocks(writer, index, pending, model, skip_bad, progress)
        elif pending:
            n_images = _run_blocks(writer, index, pending, model.to(dev), info, dev, batch_size, workers, skip_bad, progress)
        skipped = writer.finalize()
    seconds = time.perf_counter() - t0
    return ExtractSummary(
        out=Path(out),
        samples=len(index.tokens),
        computed=sum(stop - start for start, stop in pending),
        skipped=skipped,
        feature_shape=shape,
        provenance=prov,
        seconds=seconds,
        images_per_s=n_images / seconds if n_images else 0.0,
    )


def _worker_init(_worker_id: int) -> None:
    die_with_parent()  # a killed extract leaves no decoding workers behind


def _run_blocks(writer, index, pending, model, info, dev, batch_size, workers, skip_bad, progress) -> int:
    """Compute and write the pending blocks; returns the number of images processed."""
    n_cam = len(CAMERAS)
    items = []
    for start, stop in pending:
        for row in range(start, stop):
            rec = index.record(index.tokens[row])
            items += [(row, c, cam.path) for c, cam in enumerate(rec.cameras)]
    cuda = dev.type == "cuda"
    loader = DataLoader(
        CameraImages(items, info["input_size"]),
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=_worker_init,
        pin_memory=cuda,
        persistent_workers=False,
    )
    block_of = {row: (start, stop) for start, stop in pending for row in range(start, stop)}
    buffers: dict[tuple[int, int], dict] = {}
    # The bar is closed before an error propagates, so the CLI's error line stands alone below it.
    with progress_bar(total=len(items), unit="img", desc="extract", enabled=progress) as bar, torch.inference_mode():
        for images, rows, cams, errors in loader:
            bad = [i for i, e in enumerate(errors) if e]
            if bad and not skip_bad:
                raise OccfeatError(errors[bad[0]])
            x = normalize(images.to(dev, non_blocking=True), info)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                feats = patch_tokens(model, x, info)
            feats = feats.to(torch.float16).cpu().numpy()
            for i, (row, cam) in enumerate(zip(rows.tolist(), cams.tolist())):
                start, stop = block_of[row]
                buf = buffers.setdefault(
                    (start, stop),
                    {"features": np.zeros((stop - start, n_cam, *feats.shape[1:]), np.float16), "valid": np.ones(stop - start, bool), "left": (stop - start) * n_cam},
                )
                if i in bad:
                    buf["valid"][row - start] = False
                else:
                    buf["features"][row - start, cam] = feats[i]
                buf["left"] -= 1
                if buf["left"] == 0:
                    f = buf["features"]
                    f[~buf["valid"]] = 0  # skipped samples are all zeros (store.py convention)
                    writer.write_block(start, stop, {"features": f}, valid=buf["valid"])
                    del buffers[(start, stop)]
            bar.update(len(rows))
    return len(items)


# ---- reading ----
class FeatureReader:
    """Random access to a features cache by sample token, checked against ``expect``.

    ``expect``: spec keys that must match (e.g. ``{"teacher": ..., "feature_dim": 384, "pretrained": True}``);
    the cache's kind and camera order are always checked. Safe to create before DataLoader workers fork.
    """

    def __init__(self, path: str | Path, expect: dict | None = None):
        self._cache = CacheReader(path, expect={"kind": KIND, "cameras": list(CAMERAS), **(expect or {})}, made_by="occfeat extract")
        self.path = self._cache.path
        self.spec: dict = self._cache.spec

    @property
    def feature_dim(self) -> int:
        return int(self.spec["feature_dim"])

    @property
    def feature_hw(self) -> tuple[int, int]:
        """(Hp, Wp) of each camera's map."""
        return tuple(self.spec["feature_hw"])

    @property
    def pretrained(self) -> bool:
        return bool(self.spec["pretrained"])

    @property
    def standin(self) -> bool:
        """Made by the semantic stand-in teacher (not pretrained, not random either)."""
        return is_standin(self.spec)

    @property
    def tokens(self) -> list[str]:
        """Tokens with features (skipped samples left out), in file order."""
        return [t for t in self._cache.row if t in self._cache]

    def __contains__(self, token: str) -> bool:
        return token in self._cache

    def __len__(self) -> int:
        return len(self.tokens)

    def get(self, token: str) -> np.ndarray:
        """(6, Hp, Wp, C) float16, cameras in CAMERAS order."""
        return self._cache.get("features", token)
