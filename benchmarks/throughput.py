"""Training throughput, in one run: model alone, the longtail loop, and a classic PIL DataLoader.

    python benchmarks/throughput.py --data-root ../shared/data [--variants] [--compile]

* model alone: ResNet-32 forward + backward + SGD on one synthetic batch, repeated;
* longtail loop: ``longtail train cifar100-lt/ce`` for one epoch (sampling, device-held
  uint8 data, batched augmentation, the step, logging, the epoch checkpoint), rate taken
  from its metrics.jsonl timestamps so start-up and evaluation are excluded;
* classic: a per-sample ``Dataset`` that builds a PIL image, crops / flips it with PIL,
  converts it to a tensor, batched by ``torch.utils.data.DataLoader`` (the peers' way),
  feeding the same model and step.

Writes ``benchmarks/results/throughput-<device>.json`` with provenance.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longtail.config import load_recipe  # noqa: E402
from longtail.engine.pipeline import git_commit, run_recipe  # noqa: E402
from longtail.engine.runtime import pick_amp, setup_runtime  # noqa: E402
from longtail.models.classifier import build_classifier  # noqa: E402


def make_model(recipe, device, channels_last):
    model = build_classifier(recipe.model, 100).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def sgd_step(model, opt, x, y, amp_dtype) -> None:
    """The same step as the engine's CE method: autocast forward, fp32 loss, SGD."""
    with (torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype else torch.enable_grad()):
        loss = F.cross_entropy(model(x)["main"].float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def sync_for(device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_steps(step, n_warm: int, n: int, sync) -> float:
    for _ in range(n_warm):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return time.perf_counter() - t


def model_alone(recipe, device, amp_dtype, channels_last, compile_, batch=128, steps=40) -> float:
    model = make_model(recipe, device, channels_last)
    fwd = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,), device=device)

    secs = time_steps(lambda: sgd_step(fwd, opt, x, y, amp_dtype), 8 if not compile_ else 3, steps, sync_for(device))
    return batch * steps / secs


def longtail_loop(data_root, device_name, overrides) -> tuple[float, dict]:
    recipe = load_recipe("cifar100-lt/ce", [f"runtime.device={device_name}", "runtime.progress=false", *overrides])
    recipe.stages[0].epochs = 1
    with tempfile.TemporaryDirectory() as out:
        res = run_recipe(recipe, out, data_root=data_root)
        lines = [json.loads(l) for l in (Path(out) / "ce" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    # Steady state: from the first logged step (25) to the last full one, by wall-clock stamps.
    (s0, t0), (s1, t1) = (lines[0]["step"], lines[0]["time"]), (lines[-2]["step"], lines[-2]["time"])
    return (s1 - s0) * recipe.stages[0].batch_size / (t1 - t0), res["provenance"]


class PILCifar(torch.utils.data.Dataset):
    """The classic way: one PIL image per __getitem__, augmented per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std):
        self.images, self.labels = images, labels
        self.mean = np.array(mean, dtype=np.float32)[:, None, None]
        self.std = np.array(std, dtype=np.float32)[:, None, None]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image, ImageOps

        img = Image.fromarray(self.images[i].transpose(1, 2, 0))
        img = ImageOps.expand(img, border=4, fill=0)
        top, left = np.random.randint(0, 9, size=2)
        img = img.crop((left, top, left + 32, top + 32))
        if np.random.rand() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = (np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0 - self.mean) / self.std
        return torch.from_numpy(x), int(self.labels[i])


def classic_loader(recipe, data, device, amp_dtype, channels_last, workers: int, steps=40) -> tuple[float, float]:
    ds = PILCifar(data.train.store.images.numpy(), data.train.labels, data.mean, data.std)
    loader = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    # Loader alone.
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    loader_rate = 128 * steps / (time.perf_counter() - t)
    # Loader + the same training step.
    model = make_model(recipe, device, channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sgd_step(model, opt, x, y, amp_dtype)

    return loader_rate, 128 * steps / time_steps(step, 3, steps, sync_for(device))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("LONGTAIL_DATA"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variants", action="store_true", help="also time fp32 / channels_last / bf16 / compile, model alone")
    ap.add_argument("--compile", action="store_true", help="include torch.compile in --variants (slow cold start)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the classic pipeline")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()

    recipe = load_recipe("cifar100-lt/ce", [f"runtime.device={args.device}"])
    rt = setup_runtime(recipe.runtime)
    dev, amp, cl = rt.device, rt.amp_dtype, rt.channels_last
    print(f"device: {rt.describe()}", flush=True)
    res = {"defaults": {"amp": str(amp), "channels_last": cl, "compile": False}}
    if args.variants:
        variants = {"fp32": (None, False, False), "fp32+channels_last": (None, True, False),
                    "bf16+channels_last": (torch.bfloat16, True, False)}
        if args.compile:
            variants["bf16+channels_last+compile"] = (torch.bfloat16, True, True)
        res["model_alone_variants"] = {}
        for name, (a, c, comp) in variants.items():
            r = model_alone(recipe, dev, a, c, comp)
            res["model_alone_variants"][name] = round(r, 1)
            print(f"model alone {name:28s} {r:8.1f} img/s", flush=True)
    r = model_alone(recipe, dev, amp, cl, False)
    res["model_alone"] = round(r, 1)
    print(f"model alone (defaults)        {r:8.1f} img/s", flush=True)
    loop, prov = longtail_loop(args.data_root, args.device, [])
    # The model alone again, after the loop: a 2-core machine drifts, so compare with the better of the two.
    r2 = model_alone(recipe, dev, amp, cl, False)
    res["model_alone_after_loop"] = round(r2, 1)
    best = max(r, r2)
    res["longtail_loop"] = round(loop, 1)
    res["loop_over_model"] = round(loop / best, 3)
    print(f"model alone (again)           {r2:8.1f} img/s", flush=True)
    print(f"longtail loop, CIFAR-100-LT   {loop:8.1f} img/s  ({loop / best:.2f} of the better model-alone figure)", flush=True)

    from longtail.data.build import build_data, resolve_data_root

    data = build_data(recipe.data, resolve_data_root(args.data_root, None))
    loader_rate, classic = classic_loader(recipe, data, dev, amp, cl, args.workers)
    res["classic_loader_alone"] = round(loader_rate, 1)
    res["classic_pipeline"] = round(classic, 1)
    print(f"classic PIL DataLoader alone  {loader_rate:8.1f} img/s ({args.workers} workers)", flush=True)
    print(f"classic PIL pipeline          {classic:8.1f} img/s", flush=True)
    res["provenance"] = {
        "commit": git_commit(), "device": rt.describe(), "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "batch": 128, "model": "resnet32",
        "malloc_env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv),
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"throughput-{dev.type}.json"
    path.write_text(json.dumps(res, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
