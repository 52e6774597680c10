"""CBD's teacher cost: student-step time with K = 1 and K = 4 frozen teachers, relative to a plain CE step.

    python benchmarks/cbd_cost.py [--device cuda] [--batch 128] [--steps 30]

ResNet-32 with a cosine classifier on CIFAR-size synthetic batches, through the same method code the
engine runs (``cbd`` loss: teachers in eval mode, no autograd, autocast). Writes
``benchmarks/results/cbd_cost-<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from longtail.config import recipe_from_dict  # noqa: E402
from longtail.data.synthetic import synthetic_bundle  # noqa: E402
from longtail.engine.loop import StageContext  # noqa: E402
from longtail.engine.optim import build_optimizer  # noqa: E402
from longtail.engine.pipeline import git_commit  # noqa: E402
from longtail.engine.runtime import setup_runtime  # noqa: E402
from longtail.methods import Batch, get_method  # noqa: E402


def step_time(method, model, batch, rt, steps: int) -> float:
    opt = build_optimizer([p for p in model.parameters() if p.requires_grad], method.stage.optim)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)

    def step():
        with rt.autocast():
            loss, _ = method.loss(model, batch, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    teachers = [f"t{i}" for i in range(4)]
    recipe = recipe_from_dict({
        "name": "cbd-cost", "data": {"dataset": "synthetic"}, "model": {"backbone": "resnet32", "head": "cosine"},
        "runtime": {"device": args.device},
        "stages": [{"name": t, "method": "ce"} for t in teachers]
        + [{"name": "ce", "method": "ce"}, {"name": "cbd1", "method": "cbd", "params": {"teachers": teachers[:1]}},
           {"name": "cbd4", "method": "cbd", "params": {"teachers": teachers}}],
    })
    rt = setup_runtime(recipe.runtime)
    data = synthetic_bundle(num_classes=100, max_per_class=10, imbalance=1, size=32)
    x = torch.randn(args.batch, 3, 32, 32, device=rt.device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (args.batch,), device=rt.device)
    batch = {"x": Batch(x, y, torch.arange(args.batch), x)}
    times = {}
    for name in ("ce", "cbd1", "cbd4"):
        ctx = StageContext(recipe, recipe.stage(name), data, rt)
        method = get_method(ctx.stage.method)(ctx)
        model = method.build_model().to(rt.device).train()
        if rt.channels_last:
            model.to(memory_format=torch.channels_last)
        if name != "ce":  # random-weight teachers: the cost, not the accuracy, is measured
            method.teachers = []
            for t in method.p.teachers:
                tm = get_method("ce")(ctx.for_stage(t))
                net = tm.build_model().to(rt.device).eval().requires_grad_(False)
                if rt.channels_last:
                    net.to(memory_format=torch.channels_last)
                method.teachers.append((tm, net))
        times[name] = step_time(method, model, batch, rt, args.steps)
        print(f"{name:5s} {1000 * times[name]:8.1f} ms/step  ({times[name] / times['ce']:.2f} x CE)", flush=True)
    res = {
        "ms_per_step": {k: round(1000 * v, 2) for k, v in times.items()},
        "relative_to_ce": {k: round(v / times["ce"], 3) for k, v in times.items()},
        "provenance": {"commit": git_commit(), "device": rt.describe(), "torch": torch.__version__, "batch": args.batch,
                       "model": "resnet32 + cosine head", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    out = ROOT / "benchmarks" / "results" / f"cbd_cost-{rt.device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
