"""The hardware a benchmark ran on, as one line (``Machine:`` in BENCHMARKS.md): CPU model and count,
memory, GPU, torch. Circumstances (load, other jobs) are not hardware and are not printed here."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpu_model() -> str:
    """``model name`` from /proc/cpuinfo plus family/model numbers (a KVM guest often shows only
    "Intel(R) Xeon(R) Processor", and the numbers name the generation); the platform string elsewhere."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    info = {k.strip(): v.strip() for k, v in info.items()}
    details = [f"family {info['cpu family']}, model {info['model']}"] if "cpu family" in info and "model" in info else []
    if "avx512f" in info.get("flags", "").split():
        details.append("AVX-512")
    return info.get("model name", platform.machine()) + (f" ({', '.join(details)})" if details else "")


def _memory_gib() -> str:
    try:
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        return f"{kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        return "RAM unknown"


def describe() -> str:
    """E.g. "2 x Intel(R) Xeon(R) Processor (family 6, model 207, AVX-512), 24 GiB RAM, GPU: none; torch 2.14.1 (2 threads), python 3.11.7"."""
    import torch

    gpu = "none"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = f"{torch.cuda.device_count()} x {p.name} ({p.total_memory / 2**30:.0f} GiB)"
    return (f"{os.cpu_count()} x {_cpu_model()}, {_memory_gib()}, GPU: {gpu}; "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}")


if __name__ == "__main__":
    print(f"machine: {describe()}")
