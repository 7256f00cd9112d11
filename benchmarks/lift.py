"""Benchmark the sparse voxel lift (occfeat.models.lift.VoxelLift) against the dense grid_sample reference
(DenseVoxelLift) in the same run, alternating the two.

    python benchmarks/lift.py [--batch-sizes 2,1] [--runs 3] [--no-memory]

At the paper's settings: the default 200x200x8 grid (occfeat.grid), 224x400 input, SimpleBEV's feature
maps (NetworkConfig: C = 128 channels at stride 8 → 28x50), 6 cameras with the nuScenes rig of the
synthetic world (occfeat.data.synth.rig, intrinsics resized to 225x400 and one row cropped, ego frame).
Times forward (with autograd recording, as in training) and forward+backward, median of ``--runs``, on
the CPU and on CUDA when there is one (synchronised). Peak memory: on CUDA torch.cuda.max_memory_allocated
over one forward+backward minus what was allocated before; on the CPU the peak RSS (VmHWM) of
a fresh child process per lift (glibc's mmap threshold fixed at 64 KiB, so freed tensors leave RSS)
running one forward+backward, minus the child's RSS just before it (inputs
built, kernels warmed up on a tiny grid): the lift's own high-water mark, allocator slack included.

The last line is the CPU speedup (dense / sparse, forward+backward) at the first batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from machine import describe  # benchmarks/machine.py: the hardware line

from occfeat.geometry import crop_intrinsics, invert_rigid
from occfeat.grid import BevGrid
from occfeat.models.base import NetworkConfig
from occfeat.models.lift import DenseVoxelLift, VoxelLift

IMAGE_HW = (224, 400)
LIFTS = {"dense": DenseVoxelLift, "sparse": VoxelLift}


def rig(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(K (B, 6, 3, 3) at 224x400, cam_T_ego (B, 6, 4, 4)) of the synthetic world's nuScenes rig."""
    from occfeat.data.synth.rig import CAMERA_MOUNTS

    H, W = IMAGE_HW
    K = np.stack([crop_intrinsics(m.K(W, H + 1), 0.0, 1.0) for m in CAMERA_MOUNTS])  # 900x1600 → 225x400, crop 1 row
    T = np.stack([invert_rigid(m.ego_T_cam()) for m in CAMERA_MOUNTS])
    as_batch = lambda a: torch.tensor(a, dtype=torch.float32, device=device)[None].expand(batch, *a.shape).contiguous()
    return as_batch(K), as_batch(T)


def inputs(batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random features (B, 6, C, Hf, Wf) needing grad, the rig, and a random upstream gradient of the volume."""
    cfg = NetworkConfig()
    stride = cfg.encoder_strides[0]
    Hf, Wf = IMAGE_HW[0] // stride, IMAGE_HW[1] // stride
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(batch, 6, cfg.image_channels, Hf, Wf, generator=gen).to(device).requires_grad_()
    X, Y, Z = BevGrid().shape
    upstream = torch.randn(batch, cfg.image_channels, Z, X, Y, generator=gen).to(device)
    return feats, *rig(batch, device), upstream


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(lift: torch.nn.Module, feats, K, T, upstream, backward: bool) -> float:
    """Seconds for one forward (and backward) of the lift."""
    sync(feats.device)
    t = time.perf_counter()
    volume = lift(feats, K, T, IMAGE_HW)
    if backward:
        volume.backward(upstream)
        feats.grad = None
    sync(feats.device)
    return time.perf_counter() - t


def compare(batch: int, device: torch.device, runs: int) -> dict[str, dict[str, float]]:
    """Median seconds per lift of forward and forward+backward, the lifts alternating (after a warm-up)."""
    feats, K, T, upstream = inputs(batch, device)
    lifts = {name: cls(BevGrid()).to(device) for name, cls in LIFTS.items()}
    with torch.no_grad():  # the two agree (the tests check it at small sizes; here at the real one)
        diff = (lifts["dense"](feats, K, T, IMAGE_HW) - lifts["sparse"](feats, K, T, IMAGE_HW)).abs().max().item()
    times = {name: {"forward": [], "forward+backward": []} for name in lifts}
    for name, lift in lifts.items():
        run_once(lift, feats, K, T, upstream, backward=True)  # warm-up
    for _ in range(runs):
        for name, lift in lifts.items():
            times[name]["forward"].append(run_once(lift, feats, K, T, upstream, backward=False))
            times[name]["forward+backward"].append(run_once(lift, feats, K, T, upstream, backward=True))
    out = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    out["max |dense - sparse|"] = {"forward": diff}
    return out


def peak_cpu(name: str, batch: int) -> float:
    """GiB: the lift's peak RSS increment in a fresh child process (see the module docstring)."""
    cmd = [sys.executable, __file__, "--peak-of", name, "--batch-sizes", str(batch)]
    # glibc keeps freed blocks below its (adaptive) mmap threshold mapped, so RSS would show its history,
    # not the live tensors: a fixed 64 KiB threshold returns every freed tensor to the OS at once
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["gib"]


def peak_child(name: str, batch: int) -> None:
    """In the child: RSS before, one forward+backward, peak RSS after; prints the increment as JSON."""
    device = torch.device("cpu")
    feats, K, T, upstream = inputs(batch, device)
    small = BevGrid(shape=(8, 8, 8))  # a warm-up on a tiny grid pages in the kernels' code and pools
    small_up = torch.zeros(batch, feats.shape[2], 8, 8, 8)
    run_once(LIFTS[name](small), feats, K, T, small_up, backward=True)
    lift = LIFTS[name](BevGrid())
    before = _rss_kib()
    run_once(lift, feats, K, T, upstream, backward=True)
    print(json.dumps({"gib": (_rss_kib("VmHWM") - before) / 2**20}))


def _rss_kib(field: str = "VmRSS") -> int:
    """This process's resident set size (VmRSS) or its peak (VmHWM), KiB, from /proc/self/status.
    (Not getrusage's ru_maxrss: Linux carries the parent's peak across fork + exec into it.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def peak_cuda(name: str, batch: int, device: torch.device) -> float:
    feats, K, T, upstream = inputs(batch, device)
    lift = LIFTS[name](BevGrid()).to(device)
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_once(lift, feats, K, T, upstream, backward=True)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="2,1", help="comma-separated; the first one's CPU speedup is the last line")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per lift (alternating); the median counts")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--peak-of", choices=sorted(LIFTS), help=argparse.SUPPRESS)  # the child of peak_cpu
    args = ap.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if args.peak_of:
        return peak_child(args.peak_of, batches[0])

    print(f"machine: {describe()}")
    X, Y, Z = BevGrid().shape
    cfg = NetworkConfig()
    print(f"grid {X}x{Y}x{Z}, input {IMAGE_HW[0]}x{IMAGE_HW[1]}, features C={cfg.image_channels} at stride "
          f"{cfg.encoder_strides[0]}, 6 cameras (nuScenes rig), median of {args.runs} alternating runs")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    speedup = None
    for device in devices:
        for batch in batches:
            res = compare(batch, device, args.runs)
            print(f"\n{device.type}, batch {batch}:{'':<14}{'forward':>12}{'fwd+bwd':>12}")
            for name in LIFTS:
                print(f"  {name + ' lift':<28}{res[name]['forward']:>10.3f} s{res[name]['forward+backward']:>10.3f} s")
            ratio = {k: res["dense"][k] / res["sparse"][k] for k in ("forward", "forward+backward")}
            print(f"  {'speedup (dense / sparse)':<28}{ratio['forward']:>11.2f}x{ratio['forward+backward']:>11.2f}x")
            print(f"  max |dense - sparse| of the volume: {res['max |dense - sparse|']['forward']:.2e}")
            if not args.no_memory:
                peak = {n: peak_cpu(n, batch) if device.type == "cpu" else peak_cuda(n, batch, device) for n in LIFTS}
                what = "peak RSS increment of a child process" if device.type == "cpu" else "max allocated increment"
                print(f"  peak memory ({what}): " + ", ".join(f"{n} {v:.2f} GiB" for n, v in peak.items()))
            if device.type == "cpu" and speedup is None:
                speedup = ratio["forward+backward"]
    print(f"\nlift speedup vs dense: {speedup:.2f}x")


if __name__ == "__main__":
    main()
