"""Re-score committed full-schedule stages with today's code (`longtail eval` on each final.pt) and compare with
the test metrics their records hold: behaviour unchanged across the refactors means the same numbers.

    python scripts/checkpoints.py restore results/full/cifar100-lt-if100/decoupling-s0 ...   # weights back from history
    python benchmarks/rescore.py results/full/cifar100-lt-if100/*-s0/*/final.pt --out results/diagnostics/rescore-cpu.json

A stage trained and scored under bf16 autocast on a CPU that has it natively is re-scored here in the
precision this machine's ``runtime.amp: auto`` picks; the record says which, and where they differ the
predictions of a few images can flip: the comparison is then within that, not bit for bit. So that the code
itself is compared bit for bit, ``--before DIR`` also scores each stage with another checkout's code (a
worktree of a commit before the refactors) on this machine, in the same precision:

    git worktree add --detach /tmp/before 2f23ee2
    python benchmarks/rescore.py results/full/.../final.pt --before /tmp/before --out results/diagnostics/rescore-cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
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
SCORE = "import json, sys; from longtail.engine.evaluate_checkpoint import evaluate_checkpoint as e; print(json.dumps(e(sys.argv[1], sys.argv[2] or None)))"


def score_with(code: Path, path: str, data_root: str | None) -> dict:
    """``path`` scored by the checkout at ``code`` (its own evaluate_checkpoint), in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(code), "LONGTAIL_COMMIT": ""}
    # absolute paths: the other checkout runs in its own folder, which may hold its own copy of results/
    root = str(Path(data_root).resolve()) if data_root else ""
    out = subprocess.run([sys.executable, "-c", SCORE, str(Path(path).resolve()), root], env=env, cwd=str(code), capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def scored_on(path: Path) -> str | None:
    """The device line of the run that wrote ``path`` (its results.json): the precision it was scored in."""
    run = path.parents[1] / "results.json"
    return json.loads(run.read_text())["provenance"].get("device") if run.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data-root")
    ap.add_argument("--out", default="results/diagnostics/rescore-cpu.json")
    ap.add_argument("--amp", help="score in this precision (runtime.amp: bf16, off, ...) instead of the recipe's")
    ap.add_argument("--before", type=Path, help="also score with this checkout's code (same machine, same precision)")
    args = ap.parse_args()
    if args.amp and args.before:
        ap.error("--amp with --before: the other checkout's code scores in its recipes' precision; drop --amp")
    rows = {}
    for path in args.checkpoints:
        ck = load_checkpoint(path)
        stored = ck["metrics"]
        stored = stored.get("test", stored)  # the stage's test metrics, as finish_stage stored them
        now = evaluate_checkpoint(path, args.data_root, amp=args.amp)
        n = now["num_images"]
        flips = sum(abs(a - b) for a, b in zip(now["per_class"], stored["per_class"]) if a is not None and b is not None)
        rows[path] = {"stored": {k: stored[k] for k in KEYS}, "now": {k: now[k] for k in KEYS},
                      "identical": all(now[k] == stored[k] for k in (*KEYS, "per_class")),
                      "top1_diff": round(now["top1"] - stored["top1"], 4),
                      "amp_recorded": ck["recipe"]["runtime"]["amp"], "images": n, "scored_on": scored_on(Path(path)),
                      "per_class_abs_diff_sum": round(flips, 4)}
        if args.before:
            old = score_with(args.before.resolve(), path, args.data_root)
            rows[path]["before_code"] = {k: old[k] for k in KEYS}
            rows[path]["identical_to_before_code"] = all(old[k] == now[k] for k in (*KEYS, "per_class"))
        print(path, json.dumps({k: rows[path].get(k) for k in ("identical", "top1_diff", "identical_to_before_code")}), flush=True)
    prov = {"commit": git_commit(), "code": code_hash(), "torch": torch.__version__, "cpu": cpu_name(),
            "amp_here": args.amp or str(pick_amp("auto", torch.device("cpu")) or "torch.float32 (auto: no native bf16 here)"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    summary = {"stages": len(rows), "identical": sum(r["identical"] for r in rows.values()),
               "max_abs_top1_diff": max(abs(r["top1_diff"]) for r in rows.values())}
    if args.before:
        head = subprocess.run(["git", "-C", str(args.before), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        summary.update({"before_code_commit": head, "before_code_hash": code_hash(args.before.resolve()),
                        "identical_to_before_code": sum(r["identical_to_before_code"] for r in rows.values())})
    Path(args.out).write_text(json.dumps({"summary": summary, "stages": rows, "provenance": prov}, indent=1) + "\n")
    print(json.dumps(summary), f"-> {args.out}")


if __name__ == "__main__":
    main()
