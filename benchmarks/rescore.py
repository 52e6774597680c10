"""Re-score committed full-schedule stages with today's code (`longtail eval` on each final.pt) and compare with
the test metrics their records hold: behaviour unchanged across the refactors means the same numbers.

    python scripts/checkpoints.py restore results/full/cifar100-lt-if100/decoupling-s0 ...   # weights back from history
    python benchmarks/rescore.py results/full/cifar100-lt-if100/*-s0/*/final.pt --out results/diagnostics/rescore-cpu.json

A stage trained and scored under bf16 autocast on a CPU that has it natively is re-scored here in the
precision this machine's ``runtime.amp: auto`` picks; the record says which, and where they differ the
predictions of a few images can flip: the comparison is then within that, not bit for bit.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from longtail.engine.checkpoint import load_checkpoint  # noqa: E402
from longtail.engine.evaluate_checkpoint import evaluate_checkpoint  # noqa: E402
from longtail.engine.runtime import code_hash, git_commit, pick_amp  # noqa: E402
from train_process import cpu_name  # noqa: E402

KEYS = ("top1", "many", "medium", "few")


def scored_on(path: Path) -> str | None:
    """The device line of the run that wrote ``path`` (its results.json): the precision it was scored in."""
    run = path.parents[1] / "results.json"
    return json.loads(run.read_text())["provenance"].get("device") if run.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data-root")
    ap.add_argument("--out", default="results/diagnostics/rescore-cpu.json")
    args = ap.parse_args()
    rows = {}
    for path in args.checkpoints:
        ck = load_checkpoint(path)
        stored = ck["metrics"]
        stored = stored.get("test", stored)  # the stage's test metrics, as finish_stage stored them
        now = evaluate_checkpoint(path, args.data_root)
        n = now["num_images"]
        flips = sum(abs(a - b) for a, b in zip(now["per_class"], stored["per_class"]) if a is not None and b is not None)
        rows[path] = {"stored": {k: stored[k] for k in KEYS}, "now": {k: now[k] for k in KEYS},
                      "identical": all(now[k] == stored[k] for k in (*KEYS, "per_class")),
                      "top1_diff": round(now["top1"] - stored["top1"], 4),
                      "amp_recorded": ck["recipe"]["runtime"]["amp"], "images": n, "scored_on": scored_on(Path(path)),
                      "per_class_abs_diff_sum": round(flips, 4)}
        print(path, json.dumps({k: rows[path][k] for k in ("identical", "top1_diff")}), flush=True)
    prov = {"commit": git_commit(), "code": code_hash(), "torch": torch.__version__, "cpu": cpu_name(),
            "amp_here": str(pick_amp("auto", torch.device("cpu")) or "torch.float32 (auto: no native bf16 here)"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    summary = {"stages": len(rows), "identical": sum(r["identical"] for r in rows.values()),
               "max_abs_top1_diff": max(abs(r["top1_diff"]) for r in rows.values())}
    Path(args.out).write_text(json.dumps({"summary": summary, "stages": rows, "provenance": prov}, indent=1) + "\n")
    print(json.dumps(summary), f"-> {args.out}")


if __name__ == "__main__":
    main()
