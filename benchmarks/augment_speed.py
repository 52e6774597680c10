"""Throughput of the batched CIFAR augmentation versus a per-sample loop.

    python benchmarks/augment_speed.py [--batch 512] [--threads N]

Prints images per second (best of 5 timed runs) for the ``cifar`` preset (random crop 32 pad 4,
horizontal flip, normalize, from uint8) on CPU, and on CUDA when available.
The reference applies the same ops one image at a time, the way a
per-sample dataset transform would.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longtail.data.augment import Augment, random_crop  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def per_sample_cifar(raw: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=raw.device).view(3, 1, 1)
    std = torch.tensor(STD, device=raw.device).view(3, 1, 1)
    out = []
    for img in raw:
        img = F.pad(img.float().div(255), (4, 4, 4, 4))
        top, left = torch.randint(0, 9, (2,), generator=g, device=raw.device).tolist()
        img = img[:, top : top + 32, left : left + 32]
        if torch.rand(1, generator=g, device=raw.device).item() < 0.5:
            img = img.flip(-1)
        out.append((img - mean) / std)
    return torch.stack(out)


def rate(fn, batch: int, device: torch.device, trials: int = 5, min_time: float = 0.3) -> float:
    """Best of ``trials`` timed runs of at least ``min_time`` s each (robust to a busy machine)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()  # warm-up
    sync()
    best = 0.0
    for _ in range(trials):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = max(best, calls * batch / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    aug = Augment.preset("cifar", MEAN, STD)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"batch {args.batch}, 3x32x32, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in devices:
        g = torch.Generator(device).manual_seed(0)
        raw = torch.randint(0, 256, (args.batch, 3, 32, 32), dtype=torch.uint8, device=device)
        x = raw.float().div(255)
        results = {
            "cifar preset (batched)": rate(lambda: aug(raw, g), args.batch, device),
            "random_crop only (batched)": rate(lambda: random_crop(x, g, 32, 4), args.batch, device),
            "cifar per-sample loop": rate(lambda: per_sample_cifar(raw, g), args.batch, device),
        }
        for name, value in results.items():
            print(f"{device.type:>4}  {name:<28} {value:>12,.0f} img/s")


if __name__ == "__main__":
    main()
