"""How far finished stages memorised their training set: accuracy on the training images (unaugmented)
beside test accuracy, per shot group.

    python benchmarks/train_fit.py BalanceAux=results/full/cifar100-lt-if100/balance_aux-s0/main/final.pt \
        SSD-I=results/full/cifar100-lt-if100/ssd-s0/stage1/final.pt --out results/diagnostics/train-fit-cpu.json
"""
import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from longtail.engine.checkpoint import load_checkpoint  # noqa: E402
from longtail.engine.evaluate_checkpoint import evaluate_checkpoint  # noqa: E402
from longtail.engine.runtime import git_commit  # noqa: E402

KEYS = ("top1", "many", "medium", "few")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="+", help="NAME=final.pt")
    ap.add_argument("--data-root")
    ap.add_argument("--out", default="results/diagnostics/train-fit-cpu.json")
    args = ap.parse_args()
    rows = {}
    for item in args.stages:
        name, path = item.split("=", 1)
        # The stage's own test evaluation is stored with its weights; only the training split needs a pass.
        test = load_checkpoint(path)["metrics"]
        train = evaluate_checkpoint(path, args.data_root, split="train")
        rows[name] = {"checkpoint": path, "train": {k: train[k] for k in KEYS}, "test": {k: test[k] for k in KEYS}}
        print(name, json.dumps(rows[name]))
    prov = {"commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "note": "train: the training images with the test transform; top1 over images, groups over classes"}
    Path(args.out).write_text(json.dumps({"stages": rows, "provenance": prov}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
