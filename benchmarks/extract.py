"""Benchmark ``occfeat extract`` end to end against the bare teacher forward, measured in the same run.

    python benchmarks/extract.py [--samples 4] [--image-size 900x1600] [--input-size 224x406]
                                 [--batch-size 12] [--workers 0] [--device auto]

On a synthetic dataroot (``occfeat.data.synth.write_dataroot``, nuScenes-sized JPEGs by default) with a
RANDOM-INIT teacher (no hub here; the speed of a ViT does not depend on its weight values):

- decode: JPEG decode + resize alone, one process (what each DataLoader worker does);
- forward: the teacher alone on preloaded, already normalised tensors in the same batches — the floor;
- end to end: ``extract_features`` — devkit records, JPEG decode + resize, normalise, forward, float16,
  crash-safe HDF5 blocks and the final assembly;

and prints images/s for both, the ratio, and the extrapolation to nuScenes trainval (34,149 key
frames x 6 cameras): time at the end-to-end rate and the file size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from machine import describe  # benchmarks/machine.py: the hardware line

from occfeat.data.extract import DEFAULTS, build_teacher, extract_features, load_image, normalize, patch_tokens, resolve_device
from occfeat.data.index import CAMERAS, SampleIndex

TRAINVAL_KEY_FRAMES = 34_149


def hw(text: str) -> tuple[int, int]:
    a, b = (int(v) for v in text.lower().split("x"))
    return a, b


def bare_forward(model, info, dev, n_images: int, batch_size: int) -> float:
    """images/s of the teacher alone on preloaded normalised batches (after one warm-up batch)."""
    h, w = info["input_size"]
    x = normalize(torch.randint(0, 256, (batch_size, 3, h, w), dtype=torch.uint8, device=dev), info)
    cuda = dev.type == "cuda"
    n_batches = max(1, n_images // batch_size)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        patch_tokens(model, x, info)  # warm-up
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n_batches):
            patch_tokens(model, x, info).to(torch.float16)
        if cuda:
            torch.cuda.synchronize()
    return n_batches * batch_size / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4, help="key frames (x6 images) in the synthetic dataroot")
    ap.add_argument("--image-size", default="900x1600", help="stored JPEG HEIGHTxWIDTH (nuScenes: 900x1600)")
    ap.add_argument("--input-size", default="x".join(map(str, DEFAULTS.input_size)), help="teacher input HEIGHTxWIDTH")
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from occfeat.data.synth import SynthConfig, write_dataroot

    dev = resolve_device(args.device)
    input_size = hw(args.input_size)
    print(f"machine: {describe()}")
    print(f"teacher {DEFAULTS.teacher} RANDOM-INIT, input {input_size[0]}x{input_size[1]}, batch {args.batch_size}, "
          f"workers {args.workers}, device {dev}")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "root"
        t = time.perf_counter()
        write_dataroot(root, SynthConfig(scenes=1, samples_per_scene=args.samples, image_size=hw(args.image_size)[::-1], seed=0))  # SynthConfig takes (width, height)
        print(f"synthetic dataroot: {args.samples} key frames x 6 JPEGs at {args.image_size} ({time.perf_counter() - t:.1f} s to write)")
        version = SynthConfig().version

        model, _, info = build_teacher(random_teacher=True, input_size=input_size)
        model.to(dev)
        n_images = args.samples * len(CAMERAS)
        fwd = bare_forward(model, info, dev, n_images, args.batch_size)
        paths = [cam.path for rec in SampleIndex(root, version, "all") for cam in rec.cameras]
        t = time.perf_counter()
        for p in paths:
            load_image(p, input_size)
        decode = len(paths) / (time.perf_counter() - t)

        s = extract_features(
            root, version, "all", Path(d) / "feats.h5", random_teacher=True, input_size=input_size,
            batch_size=args.batch_size, device=str(dev), workers=args.workers, progress=False,
        )
        e2e = s.images_per_s
        per_sample = 2 * len(CAMERAS) * info["feature_hw"][0] * info["feature_hw"][1] * info["feature_dim"]  # float16 bytes
    print(f"\n{'':<34}{'images/s':>10}")
    print(f"{'JPEG decode + resize (1 process)':<34}{decode:>10.2f}")
    print(f"{'teacher forward (preloaded)':<34}{fwd:>10.2f}")
    print(f"{'end to end (JPEG -> HDF5)':<34}{e2e:>10.2f}")
    print(f"ratio end-to-end / forward: {e2e / fwd:.2f}")
    print(f"decode processes needed to feed 2,000 images/s (the H100 goal): {2000 / decode:.0f}")
    images = TRAINVAL_KEY_FRAMES * len(CAMERAS)
    print(f"\nnuScenes trainval ({TRAINVAL_KEY_FRAMES:,} key frames, {images:,} images) at this rate: "
          f"{images / e2e / 3600:.1f} h; file size {TRAINVAL_KEY_FRAMES * per_sample / 1e9:.1f} GB "
          f"({per_sample / 2**20:.2f} MiB/sample: 6 x {info['feature_hw'][0]} x {info['feature_hw'][1]} x {info['feature_dim']} x 2 B)")


if __name__ == "__main__":
    main()
