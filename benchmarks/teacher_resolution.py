"""Does a 448x812 teacher change the voxel feature targets compared with the default 224x406?

    python benchmarks/teacher_resolution.py [--scenes 1] [--samples-per-scene 2] [--image-size 900x1600]
                                            [--low 224x406] [--high 448x812] [--threshold 0.9] [--device auto]
                                            [--weights dinov2_vits14.pth]

Steps, each the user-facing command: ``python -m occfeat synth`` (a tiny synthetic world at nuScenes' image
size), ``python -m occfeat voxelize`` (the default grid), then ``python -m occfeat extract`` twice with the SAME
teacher weights at the two input sizes, and ``voxel_feature_targets`` on the same occupied voxels from
both caches. Printed: the share of occupied, validly projected voxels whose two targets differ by
cosine < threshold, cosine quantiles, the same split by distance from the ego, and a control: the high
resolution map average-pooled 2x2 back to the low token grid.

No DINOv2 weights exist on this machine: the teacher is a RANDOM-INIT ViT-S/14 (seeded), saved once at
its native 518x518 size and loaded through ``--weights`` at both sizes, so timm resamples its position
embedding exactly as it would DINOv2's. What this shows: how much a voxel's target moves when the
teacher's token grid is twice as fine, for the synthetic world's geometry and a ViT of this shape. What it
does not show: how much DINOv2's *semantic* features change (a trained ViT's tokens are smoother within an
object and more distinct between objects), nor any effect on downstream IoU. With ``--weights`` (a DINOv2
ViT-S/14 file, as ``occfeat extract --weights`` takes) the same measurement runs on the real teacher.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's occfeat, the same code the `python -m occfeat` steps run

import numpy as np  # noqa: E402
import timm
import torch
from machine import describe  # benchmarks/machine.py: the hardware line
import torch.nn.functional as F
from safetensors.torch import save_file

from occfeat.data.extract import DEFAULTS, RANDOM_TEACHER_SEED, FeatureReader
from occfeat.data.index import SampleIndex
from occfeat.data.occupancy import OccupancyReader
from occfeat.data.synth import SynthConfig
from occfeat.data.targets import voxel_feature_targets
from occfeat.grid import BevGrid


def cli(*args: str) -> None:
    """``python -m occfeat ARGS`` from the repository root (this checkout's code), failing loudly."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "occfeat", *map(str, args)], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"`occfeat {args[0]}` failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    print(f"  occfeat {args[0]:<9} {time.perf_counter() - t:6.1f} s")


def save_random_teacher(path: Path) -> None:
    """A seeded random-init teacher at its native size, as a weights file both extractions load."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_TEACHER_SEED)
        model = timm.create_model(DEFAULTS.teacher, pretrained=False)
    save_file(model.state_dict(), str(path))


def targets(occ: torch.Tensor, feats: np.ndarray, rec, grid: BevGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """voxel_feature_targets of one sample: (idx (M, 4), target (M, C), valid (M,))."""
    K = torch.from_numpy(np.stack([c.K for c in rec.cameras])).float()[None]
    cam_T_ego = torch.from_numpy(np.stack([c.cam_T_ego for c in rec.cameras])).float()[None]
    hw = torch.tensor([[c.height, c.width] for c in rec.cameras])[None]
    return voxel_feature_targets(occ[None], torch.from_numpy(feats)[None], K, cam_T_ego, hw, grid)


def pool2(feats: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(S, Hp, Wp, C) → (S, h, w, C) by area averaging (2x2 for an exactly doubled grid)."""
    x = torch.from_numpy(feats).float().permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(x, hw).permute(0, 2, 3, 1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=1)
    ap.add_argument("--samples-per-scene", type=int, default=2)
    ap.add_argument("--image-size", default="900x1600", help="stored JPEG HEIGHTxWIDTH (nuScenes: 900x1600)")
    ap.add_argument("--low", default="x".join(map(str, DEFAULTS.input_size)), help="teacher input HEIGHTxWIDTH (default)")
    ap.add_argument("--high", default="448x812", help="teacher input HEIGHTxWIDTH to compare with")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--weights", type=Path, default=None, help="teacher weights file (default: a seeded RANDOM-INIT teacher)")
    args = ap.parse_args()

    print(f"machine: {describe()}")
    if args.weights is None:
        print(f"teacher {DEFAULTS.teacher}: RANDOM-INIT weights (seed {RANDOM_TEACHER_SEED}), the same file at both sizes; "
              "NOT DINOv2 — see the docstring for what this does and does not show")
    else:
        print(f"teacher {DEFAULTS.teacher}: weights {args.weights.resolve()} at both sizes")
    grid = BevGrid()
    version = SynthConfig().version
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        print(f"world: {args.scenes} scenes x {args.samples_per_scene} key frames, 6 cameras at {args.image_size}; grid {grid.spec()}")
        cli("synth", "--out", d / "root", "--scenes", args.scenes, "--samples-per-scene", args.samples_per_scene,
            "--image-size", args.image_size, "--version", version)  # fmt: skip
        cli("voxelize", "--dataroot", d / "root", "--version", version, "--split", "all", "--out", d / "occ.h5")
        weights = args.weights.resolve() if args.weights is not None else d / "teacher.safetensors"
        if args.weights is None:
            save_random_teacher(weights)
        for name, size in (("low", args.low), ("high", args.high)):
            cli("extract", "--dataroot", d / "root", "--version", version, "--split", "all", "--out", d / f"{name}.h5",
                "--weights", weights, "--input-size", size, "--batch-size", "6", "--device", args.device)  # fmt: skip

        index = SampleIndex(d / "root", version, "all")
        occ_reader = OccupancyReader(d / "occ.h5", grid)
        low, high = FeatureReader(d / "low.h5"), FeatureReader(d / "high.h5")
        print(f"token grids: low {low.spec['input_size']} → {low.feature_hw} tokens/camera, "
              f"high {high.spec['input_size']} → {high.feature_hw}")
        cos_all, cos_pool, dist_all = [], [], []
        for token in index.tokens:
            rec = index.record(token)
            occ = torch.from_numpy(occ_reader.get(token))
            idx, t_lo, v_lo = targets(occ, low.get(token), rec, grid)
            idx_hi, t_hi, v_hi = targets(occ, high.get(token), rec, grid)
            _, t_pool, _ = targets(occ, pool2(high.get(token), low.feature_hw), rec, grid)
            assert torch.equal(idx, idx_hi)  # the same occupied voxels, in the same order
            v = v_lo & v_hi
            cos_all.append(F.cosine_similarity(t_lo[v], t_hi[v], dim=1).numpy())
            cos_pool.append(F.cosine_similarity(t_lo[v], t_pool[v], dim=1).numpy())
            centres = grid.lower[:2] + (idx[v][:, 1:3].numpy() + 0.5) * grid.voxel_size[:2]
            dist_all.append(np.linalg.norm(centres, axis=1))
        cos, pooled, dist = np.concatenate(cos_all), np.concatenate(cos_pool), np.concatenate(dist_all)

    thr = args.threshold
    q = np.quantile(cos, [0.05, 0.25, 0.5, 0.75])
    print(f"occupied voxels with a valid projection: {cos.size} over {len(cos_all)} samples")
    print(f"share with cosine(low, high) < {thr}: {np.mean(cos < thr):.1%}   (mean cosine {cos.mean():.3f}; "
          f"quantiles 5/25/50/75 %: {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f} / {q[3]:.3f})")
    for lo, hi in ((0, 10), (10, 20), (20, 35), (35, 75)):
        m = (dist >= lo) & (dist < hi)
        if m.any():
            print(f"  {lo:>2}-{hi:<2} m from the ego: {m.sum():>6} voxels, share < {thr}: {np.mean(cos[m] < thr):6.1%}, "
                  f"mean cosine {cos[m].mean():.3f}")
    print(f"control, high map 2x2-pooled to the low grid: share < {thr}: {np.mean(pooled < thr):.1%}, "
          f"mean cosine {pooled.mean():.3f}")


if __name__ == "__main__":
    main()
