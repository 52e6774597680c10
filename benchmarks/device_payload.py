"""What one device call carries, against its 64 MiB: the tracked tree, untracked files git does not ignore
(they travel too), and the CIFAR-100-LT pack (its recorded size when it is not built here). A running stage's
``checkpoint.pt`` under results/full/ is listed apart: it is moved aside for the call (README, GPU section).

    python benchmarks/device_payload.py            # prints the sums; exit 1 when the call would not fit
    python benchmarks/device_payload.py --record   # also writes them into results/gpu-pack.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2 ** 20
PACK = REPO / "benchmarks" / "data" / "cifar100-lt-if100-pack.tar.xz"
RECORD = REPO / "results" / "gpu-pack.json"


def git_files(*args: str) -> list[Path]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", *args], capture_output=True, text=True, check=True).stdout
    return [REPO / f for f in out.split("\0") if f and (REPO / f).is_file()]


def payload() -> dict:
    moved = lambda p: p.name == "checkpoint.pt" and "results/full" in p.as_posix()  # noqa: E731
    tracked, untracked = git_files(), git_files("--others", "--exclude-standard")
    size = lambda files: sum(p.stat().st_size for p in files)  # noqa: E731
    pack = PACK.stat().st_size if PACK.exists() else json.loads(RECORD.read_text())["pack_bytes"]
    sums = {"tracked_tree_bytes": size(p for p in tracked if not moved(p)),
            "untracked_bytes": size(p for p in untracked if not moved(p)),
            "running_checkpoints_bytes": size(p for p in tracked + untracked if moved(p)),
            "pack_bytes": pack, "pack_measured_here": PACK.exists()}
    total = sums["tracked_tree_bytes"] + sums["untracked_bytes"] + pack
    return {**sums, "sum_bytes": total, "sum_mib": round(total / 2 ** 20, 2), "limit_mib": 64, "fits": total <= LIMIT}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    p = payload()
    print(json.dumps(p, indent=1))
    if args.record:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        rec = json.loads(RECORD.read_text())
        rec.update({k: p[k] for k in ("tracked_tree_bytes", "untracked_bytes", "running_checkpoints_bytes", "sum_bytes", "sum_mib")})
        rec["measured"] = f"{time.strftime('%Y-%m-%d')}, commit {head} (benchmarks/device_payload.py; running checkpoints moved aside)"
        RECORD.write_text(json.dumps(rec, indent=1) + "\n")
    return 0 if p["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
