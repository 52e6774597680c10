"""Bit-identity of training across a code change: tiny versions of the main recipes on synthetic data, one
thread, fp32; every stage's final weights hashed. Run it at two commits (from a worktree of each, with
PYTHONPATH set to it) and compare the files: equal hashes mean the change left training bit for bit as it was.

    PYTHONPATH=<worktree> python benchmarks/bit_identity.py --out results/diagnostics/bit-identity-<commit>.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_process import cpu_name  # noqa: E402

RECIPES = ["cifar100-lt/ce", "cifar100-lt/ssd", "cifar100-lt/cbd", "cifar100-lt/balance_aux", "cifar100-lt/decoupling",
           "cifar100-lt/strong_mixup", "cifar100-lt/ldam_drw", "cifar100-lt/strong", "cifar100-lt/ssd+moco"]
# name+variant: a recipe with one of its stages changed, for a path no CIFAR recipe takes (MoCo: imagenet-lt/ssd's stage I).
VARIANTS = {"moco": ("stage1", {"self_sup": "moco", "moco_queue": 64, "key_augment": "cifar"})}
OVERRIDES = ["data.dataset=synthetic", "model.backbone=resnet20", "runtime.device=cpu", "runtime.amp=off",
             "runtime.progress=false", "runtime.tensorboard=false", "runtime.checkpoint_every=3"]
CROP_FLIP = [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"}, {"op": "normalize"}]


def weights_hash(state: dict) -> str:
    return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("recipes", nargs="*", default=RECIPES)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import longtail
    from longtail.config import load_recipe
    from longtail.data.synthetic import synthetic_bundle
    from longtail.engine.checkpoint import load_checkpoint
    from longtail.engine.pipeline import run_recipe
    from longtail.engine.runtime import git_commit

    data = synthetic_bundle(num_classes=6, max_per_class=60, imbalance=10, size=16)
    hashes = {}
    for name in args.recipes:
        base, _, variant = name.partition("+")
        try:
            r = load_recipe(base, OVERRIDES, epochs_scale=0.005)
        except Exception as e:  # a recipe that this commit does not have
            hashes[name] = f"unavailable: {type(e).__name__}"
            continue
        if variant:
            stage, params = VARIANTS[variant]
            r.stages = [s for s in r.stages if s.name == stage]
            r.stages[0].params.update(params)
        for s in r.stages:  # 16-pixel synthetic images: the CIFAR crop at their size (the strong policy kept)
            s.batch_size = 16
            if s.augment == "cifar_autoaugment":
                s.augment = CROP_FLIP[:2] + [{"op": "autoaugment_cifar"}, {"op": "cutout", "size": 4}] + CROP_FLIP[2:]
            elif isinstance(s.augment, str) and s.augment.startswith("cifar"):
                s.augment = CROP_FLIP
        with tempfile.TemporaryDirectory() as d:
            run_recipe(r, Path(d), data=data)
            for s in r.stages:
                hashes[f"{name}:{s.name}"] = weights_hash(load_checkpoint(Path(d) / s.name / "final.pt")["model"])
    # Float results differ between CPUs (AVX2 and AVX-512 kernels sum in other orders): compare on one machine.
    doc = {"commit": git_commit(), "code": str(Path(longtail.__file__).resolve().parents[1]), "torch": torch.__version__,
           "cpu": cpu_name(), "hashes": hashes}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
