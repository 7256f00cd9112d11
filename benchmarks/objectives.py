"""Benchmark what issue 11/12 added against the reference each replaces, measured in the same run:

- the semantic stand-in teacher (``extract --teacher semantic-standin``) against a random-init
  DINOv2 ViT-S/14 (``--random-teacher``), end to end through ``extract_features``, images/s;
- an Img-ALSO pretraining step against an OccFeat one (same tiny network, grid, batch, data),
  forward + backward, s/step, and Img-ALSO's per-sample query generation alone (ms/sample).

    python benchmarks/objectives.py [--scenes 2] [--samples 6] [--steps 6]

On a small synthetic world (``occfeat synth``), CPU; prints the ratios.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe  # benchmarks/machine.py: the hardware line

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()

    from occfeat.config import load_config
    from occfeat.data.extract import extract_features
    from occfeat.data.synth import SynthConfig, write_dataroot
    from occfeat.data.voxelize import build_occupancy
    from occfeat.objectives.img_also import LineOfSight
    from occfeat.train.pretrain import PretrainConfig, PretrainTask

    tmp = Path(tempfile.mkdtemp(prefix="occfeat-bench-"))
    root = tmp / "root"
    write_dataroot(root, SynthConfig(scenes=args.scenes, samples_per_scene=args.samples, image_size=(480, 270), seed=0))
    n_images = args.scenes * args.samples * 6
    rates = {}
    for name, kw in (("stand-in", {"teacher": "semantic-standin"}), ("random ViT-S/14", {"random_teacher": True})):
        t0 = time.perf_counter()
        extract_features(root, "v1.0-mini", "all", tmp / f"{name[:4]}.h5", input_size=(224, 406), progress=False, **kw)
        rates[name] = n_images / (time.perf_counter() - t0)
    print(f"machine: {describe()}")
    print(f"extract, {n_images} images at 224x406: stand-in {rates['stand-in']:.1f} img/s vs random ViT-S/14 "
          f"{rates['random ViT-S/14']:.1f} img/s -> stand-in {rates['stand-in'] / rates['random ViT-S/14']:.1f}x faster")

    recipes = REPO / "recipes" / "pretrain"
    cfg0 = load_config(PretrainConfig, recipes / "synthetic-tiny.yaml", ["train.num_workers=0", "train.device=cpu"])
    occ = tmp / "occ.h5"
    build_occupancy(root, "v1.0-mini", "all", occ, cfg0.grid, progress=False)
    step_s = {}
    for name, recipe in (("OccFeat", "synthetic-tiny.yaml"), ("Img-ALSO", "synthetic-img-also.yaml")):
        cfg = load_config(PretrainConfig, recipes / recipe, ["train.num_workers=0", "train.device=cpu"])
        task = PretrainTask(cfg, root, "v1.0-mini", occ, tmp / "stan.h5", split="all")
        loader = torch.utils.data.DataLoader(task.train_set, batch_size=cfg.train.batch_size, collate_fn=task.collate)
        batches = [b for _, b in zip(range(args.steps + 1), loader)]
        opt = torch.optim.Adam(task.model.parameters(), lr=1e-3)
        times = []
        for b in batches:
            t0 = time.perf_counter()
            opt.zero_grad()
            loss, _ = task.loss(task.model, b)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        step_s[name] = float(np.median(times[1:]))  # the first step warms up
        if name == "Img-ALSO":
            inp = next(i for i in task.train_set.inputs if isinstance(i, LineOfSight))
            ref = task.train_set[0]["ref_T_ego"].numpy()
            t0 = time.perf_counter()
            for k, rig in enumerate(task.train_set.rigs):
                inp(task.train_set.sources, rig, ref, np.random.default_rng(k))
            q_ms = 1000 * (time.perf_counter() - t0) / len(task.train_set.rigs)
            n_pts = np.mean([len(task.train_set.sources.occupancy.points(r.token)) for r in task.train_set.rigs])
    print(f"pretrain step (synthetic-tiny network, batch {cfg0.train.batch_size}, fwd+bwd, median of {args.steps}): "
          f"OccFeat {step_s['OccFeat']:.3f} s vs Img-ALSO {step_s['Img-ALSO']:.3f} s -> Img-ALSO/OccFeat {step_s['Img-ALSO'] / step_s['OccFeat']:.2f}x")
    print(f"Img-ALSO queries (decimate 10 cm + {inp.n_queries} line-of-sight queries): {q_ms:.1f} ms/sample "
          f"({n_pts:.0f} cached LiDAR points per sample)")


if __name__ == "__main__":
    main()
