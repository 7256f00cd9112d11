"""Benchmark an OccFeat pretraining step with data loading against the same step on tensors already in
memory, measured in the same run.

    python benchmarks/pretrain.py [--samples 6] [--batch-size 2] [--steps 2] [--rounds 2] [--workers 2]
                                  [--image-size 900x1600] [--device auto] [--amp auto] [--compare-reference]

SimpleBEV EN-B0 + the unsplat head at the paper's settings (recipes/pretrain/simplebev-effb0.yaml:
224x400 input with augmentation, 200x200x8 grid, N_B = 128, L = L_occ + 0.01 L_feat, Adam) with a
RANDOM-INIT backbone and teacher (no hub here; speed does not depend on weight values). The data: a
synthetic dataroot with nuScenes-sized JPEGs, its occupancy cache on the default grid and DINOv2
ViT-S/14 features at 224x406, built in a child process first (so the peak memory below is training's).

- in memory: one collated batch kept on the device, stepped again and again — the compute floor;
- with data: the task's DataLoader (JPEG decode + augmentation, HDF5 occupancy + features, collate,
  host→device copy; workers prefetch while the step computes, as in training) feeding the same step;

alternating the two (after one warm-up step) and keeping each one's best round; with
``--compare-reference`` a third mode in the same rounds, the in-memory step as it was before issue 19:
SimpleBEV's lift swapped for the dense grid_sample reference (occfeat.models.lift.DenseVoxelLift) and the
unsplat decoder for its Conv3d reference (occfeat.models.ReferenceUnsplatDecoder), so the compressor folds a
channels-first volume and the occupancy predictor runs as a Conv3d, as they did; and each version's peak
memory in a fresh child process stepping the same batch (the CPU's peak RSS, or CUDA's max allocated);

prints samples/s for both, the ratio, peak memory, and the time of 50 epochs on nuScenes trainval.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py: the hardware line

REPO = Path(__file__).resolve().parents[1]
TRAINVAL_TRAIN_SAMPLES = 28_130


def build_inputs(root: Path, samples: int, image_wh: tuple[int, int]) -> None:
    """Synthetic dataroot + occupancy (default grid) + random-teacher features (run in a child process)."""
    from occfeat.data.extract import extract_features
    from occfeat.data.synth import SynthConfig, write_dataroot
    from occfeat.data.voxelize import build_occupancy
    from occfeat.grid import BevGrid

    cfg = SynthConfig(scenes=1, samples_per_scene=samples, image_size=image_wh, seed=0)
    write_dataroot(root / "root", cfg)
    build_occupancy(root / "root", cfg.version, "all", root / "occ.h5", BevGrid(), progress=False)
    extract_features(root / "root", cfg.version, "all", root / "feats.h5", random_teacher=True, device="cpu", progress=False)


def decode_costs(root: Path, version: str) -> dict[str, str]:
    """Per-sample costs of the loader's parts: the six-image decode in each resize mode and the occupancy
    target (read the cached points, move them into a reference frame, voxelize), plus the cache's size."""
    import numpy as np

    from occfeat.data.index import SampleIndex
    from occfeat.data.occupancy import OccupancyReader
    from occfeat.geometry import reference_frame
    from occfeat.grid import BevGrid
    from occfeat.train.data import RESIZE_MODES, AugmentConfig, camera_rig, draw_augmentation, load_cameras, sample_rng

    rigs = [camera_rig(r) for r in SampleIndex(root / "root", version, "all")]
    out = {}
    for mode in RESIZE_MODES:
        aug = AugmentConfig(resize_mode=mode)
        draws = [draw_augmentation(r, (224, 400), aug, sample_rng(0, 0, i)) for i, r in enumerate(rigs)]
        best = min(_seconds(lambda: [load_cameras(r, (224, 400), a, mode) for r, a in zip(rigs, draws)]) for _ in range(3))
        out[f"6 JPEGs decoded + resized ({mode})"] = f"{1e3 * best / len(rigs):8.1f} ms/sample"
    occ = OccupancyReader(root / "occ.h5", BevGrid())
    refs = [reference_frame(r.cam_T_ego, 3) for r in rigs]  # CAM_BACK: a 180° frame
    for name, frames in (("ego frame", [None] * len(rigs)), ("CAM_BACK's frame", refs)):
        best = min(_seconds(lambda: [occ.get(r.token, f) for r, f in zip(rigs, frames)]) for _ in range(3))
        out[f"occupancy target in the {name}"] = f"{1e3 * best / len(rigs):8.1f} ms/sample"
    n_points = np.mean([len(occ.points(r.token)) for r in rigs])
    out["occupancy cache"] = f"{(root / 'occ.h5').stat().st_size / len(rigs) / 2**10:8.1f} KiB/sample ({n_points:,.0f} points kept)"
    return out


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def forever(loader):
    """Batches from a fresh pass each time round (itertools.cycle would replay stored batches without loading)."""
    while True:
        yield from loader


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU (max allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process peak)"


def use_reference(model) -> None:
    """The step before issue 19: the dense lift and the Conv3d unsplat decoder (same weights)."""
    from occfeat.models import ReferenceUnsplatDecoder
    from occfeat.models.lift import DenseVoxelLift

    model.network.lift = DenseVoxelLift(model.network.grid).to(model.network.lift.centers.device)
    reference = ReferenceUnsplatDecoder(model.decoder.bev_channels, model.decoder.z_bins)
    reference.bev, reference.volume = model.decoder.bev, model.decoder.volume  # the same parameters, stepped by the same optimizer
    model.decoder = reference


def step_peak(root: Path, batch_file: Path, version: str, args: argparse.Namespace, amp: bool, queue) -> None:
    """In a child process: build the task, take 2 steps on the saved batch with the ``version`` ("reference"
    or "current") network, put the process's peak memory on ``queue`` (what one training process needs)."""
    from occfeat.config import load_config
    from occfeat.data.synth import SynthConfig
    from occfeat.train.dist import DistEnv, resolve_device
    from occfeat.train.loop import to_device
    from occfeat.train.pretrain import PretrainConfig, PretrainTask

    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device, DistEnv())
    overrides = {"network": {"random_init": True}, "train": {"batch_size": args.batch_size, "num_workers": 0}}
    cfg = load_config(PretrainConfig, REPO / "recipes/pretrain/simplebev-effb0.yaml", overrides)
    task = PretrainTask(cfg, root / "root", SynthConfig().version, root / "occ.h5", root / "feats.h5", split="all")
    model = task.model.to(dev).train()
    if version == "reference":
        use_reference(model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    batch = to_device(torch.load(batch_file, weights_only=False), dev)
    for _ in range(2):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = task.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        queue.put(peak_memory(dev))
    else:  # VmHWM, not ru_maxrss: Linux carries the parent's peak across fork + exec into ru_maxrss
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        queue.put(f"{hwm / 2**20:.2f} GiB RSS (process peak, VmHWM)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=6, help="key frames in the synthetic dataroot")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per round and mode")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (in memory, with data); the best counts")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--image-size", default="900x1600", help="stored JPEG HEIGHTxWIDTH (nuScenes: 900x1600)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="auto", help="auto (bf16 on CUDA), bf16, off")
    ap.add_argument("--compare-reference", action="store_true",
                    help="also step the in-memory batch as before issue 19 (dense lift, Conv3d unsplat decoder; alternating), "
                         "and each version's peak memory")
    args = ap.parse_args()
    args.threads = torch.get_num_threads()

    from occfeat.config import load_config
    from occfeat.train.dist import DistEnv, resolve_device
    from occfeat.train.loop import to_device
    from occfeat.train.pretrain import PretrainConfig, PretrainTask

    dev = resolve_device(args.device, DistEnv())
    amp = args.amp == "bf16" or (args.amp == "auto" and dev.type == "cuda")
    print(f"machine: {describe()}")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t = time.perf_counter()
        h, w = (int(v) for v in args.image_size.lower().split("x"))
        child = mp.get_context("spawn").Process(target=build_inputs, args=(d, args.samples, (w, h)))
        child.start()
        child.join()
        if child.exitcode:
            raise SystemExit(f"building the synthetic inputs failed (exit {child.exitcode})")
        print(f"inputs: {args.samples} synthetic key frames at {args.image_size} + caches ({time.perf_counter() - t:.0f} s to build)")

        from occfeat.data.synth import SynthConfig

        decode = decode_costs(d, SynthConfig().version)

        overrides = {"network": {"random_init": True}, "train": {"batch_size": args.batch_size, "num_workers": args.workers}}
        cfg = load_config(PretrainConfig, REPO / "recipes/pretrain/simplebev-effb0.yaml", overrides)
        task = PretrainTask(cfg, d / "root", SynthConfig().version, d / "occ.h5", d / "feats.h5", split="all")
        print(f"SimpleBEV {cfg.network.backbone} RANDOM-INIT + unsplat head, input {cfg.input_size}, grid {cfg.grid.shape}, "
              f"N_B {cfg.network.bev_channels}, batch {args.batch_size}, amp {'bf16' if amp else 'off'}, device {dev}")
        model = task.model.to(dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

        def step(batch: dict) -> None:  # the loop's step: forward under autocast, backward, clip, update
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                loss, _ = task.loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)

        def timed(next_batch) -> float:
            """Seconds for ``--steps`` steps, each on ``next_batch()``."""
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.steps):
                step(next_batch())
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        loader = torch.utils.data.DataLoader(
            task.train_set, batch_size=args.batch_size, shuffle=True, collate_fn=task.collate, drop_last=True,
            num_workers=args.workers, pin_memory=dev.type == "cuda", persistent_workers=args.workers > 0,
        )  # fmt: skip
        batches = forever(loader)
        step(to_device(next(batches), dev))  # warm-up: allocator, cuDNN autotune, worker start-up
        fixed = to_device(next(batches), dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        current = (model.network.lift, model.decoder)
        if args.compare_reference:
            use_reference(model)
            reference = (model.network.lift, model.decoder)
            step(fixed)  # warm-up of the reference's kernels
            model.network.lift, model.decoder = current

        def timed_reference() -> float:
            model.network.lift, model.decoder = reference
            try:
                return timed(lambda: fixed)
            finally:
                model.network.lift, model.decoder = current

        # Alternate the modes and keep each one's best round: a shared machine's load hits them alike.
        mem_s, data_s, ref_s = [], [], []
        for _ in range(args.rounds):
            mem_s.append(timed(lambda: fixed))
            if args.compare_reference:
                ref_s.append(timed_reference())
            data_s.append(timed(lambda: to_device(next(batches), dev)))
        mem_rate = args.steps * args.batch_size / min(mem_s)
        data_rate = args.steps * args.batch_size / min(data_s)
        peak = peak_memory(dev)
        version_peaks = {}
        if args.compare_reference:
            torch.save(fixed, d / "batch.pt")
            ctx = mp.get_context("spawn")
            for name in ("reference", "current"):
                queue = ctx.Queue()
                child = ctx.Process(target=step_peak, args=(d, d / "batch.pt", name, args, amp, queue))
                # a fixed 64 KiB mmap threshold: freed tensors leave RSS at once, so the peak is the live peak
                os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
                try:
                    child.start()
                finally:
                    del os.environ["MALLOC_MMAP_THRESHOLD_"]
                version_peaks[name] = queue.get()
                child.join()

        t = time.perf_counter()
        n = 0
        for n, _ in enumerate(itertools.islice(forever(loader), 2 * args.steps), start=1):
            pass
        load_rate = n * args.batch_size / (time.perf_counter() - t)

    print(f"augmentations: {cfg.augment}")
    print("\nper-sample loading costs (1 process, best of 3 passes over the samples):")
    for name, value in decode.items():
        print(f"  {name:<44}{value}")
    print(f"\npeak memory while training: {peak}")
    for name, value in version_peaks.items():
        print(f"peak memory, {name} step (a fresh process, 2 steps on the batch): {value}")
    flips = fixed.get("flip_bev")
    print(f"the in-memory batch's BEV flips (x, y) per sample: {flips.tolist() if flips is not None else 'none'}")
    print(f"{'':<40}{'samples/s':>10}   (best of {args.rounds} alternating rounds of {args.steps} steps)")
    print(f"{'step on a batch in memory':<40}{mem_rate:>10.3f}")
    if args.compare_reference:
        ref_rate = args.steps * args.batch_size / min(ref_s)
        print(f"{'  the same step before issue 19':<40}{ref_rate:>10.3f}   (dense lift, Conv3d unsplat decoder)")
        print(f"{'  s/step now, before (each round)':<40}" + "  ".join(
            f"{m / args.steps:.2f}/{x / args.steps:.2f}" for m, x in zip(mem_s, ref_s)))
    print(f"{'step with data loading':<40}{data_rate:>10.3f}")
    print(f"{'data loading alone ({} workers)'.format(args.workers):<40}{load_rate:>10.3f}")
    print(f"ratio with-data / in-memory: {data_rate / mem_rate:.2f}")
    hours = 50 * TRAINVAL_TRAIN_SAMPLES / data_rate / 3600
    print(f"\n50 epochs on nuScenes trainval ({TRAINVAL_TRAIN_SAMPLES:,} train samples) at the with-data rate: "
          f"{hours:,.0f} h ({hours / 24:,.1f} days) on this device")
    if args.compare_reference:
        print(f"step speedup vs before issue 19 (in memory, batch {args.batch_size}): {mem_rate / ref_rate:.2f}x")


if __name__ == "__main__":
    main()
