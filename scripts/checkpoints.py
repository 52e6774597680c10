#!/usr/bin/env python3
"""Keep finished runs' weights in the history, not in the tree, and bring them back on demand.

    python scripts/checkpoints.py slim    [RUN_DIR ...]   # finished runs: drop their .pt files from the tree
    python scripts/checkpoints.py restore [RUN_DIR ...]   # write them back from the commits their manifests name

``slim`` takes a run's committed ``.pt`` files out of the tree once the run is finished (``results.json``
written, no ``checkpoint.pt`` left) and records each in the run's ``checkpoints.json``: the commit that
holds it, its size and sha256. ``restore`` reads them back with ``git show`` and checks the hash. A
shallow clone (``git clone --depth 1``) lacks those commits: ``git fetch --unshallow`` first.
Run it in the checkout; default RUN_DIRs: every run under its results/full. Errors are one line and exit 2.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

MANIFEST = "checkpoints.json"


class Refused(Exception):
    pass


def git(repo: Path, *args: str, binary: bool = False):
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=not binary)
    if out.returncode != 0:
        err = out.stderr if not binary else out.stderr.decode(errors="replace")
        raise Refused(f"git {' '.join(args)}: {err.strip().splitlines()[-1] if err.strip() else 'failed'}")
    return out.stdout


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def runs_under(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/*/results.json")) + sorted(p.parent for p in root.glob("*/*/recipe.yaml") if not (p.parent / "results.json").exists())


def slim(repo: Path, run: Path) -> int:
    """Drop a finished run's committed .pt files from the tree; return how many."""
    if not (run / "results.json").is_file() or list(run.rglob("checkpoint.pt")):
        return 0  # still running (or never finished): its weights stay
    manifest = json.loads((run / MANIFEST).read_text()) if (run / MANIFEST).exists() else {}
    done = 0
    for p in sorted(run.rglob("*.pt")):
        rel = p.relative_to(repo).as_posix()
        if git(repo, "ls-files", "--", rel).strip() != rel or git(repo, "status", "--porcelain", "--", rel).strip():
            raise Refused(f"{rel}: not committed as it is on disk; commit the finished run first")
        data = p.read_bytes()
        commit = git(repo, "log", "-1", "--format=%H", "--", rel).strip()
        manifest[p.relative_to(run).as_posix()] = {"commit": commit, "bytes": len(data), "sha256": sha256(data)}
        git(repo, "rm", "-q", "--cached", "--", rel)
        p.unlink()
        done += 1
    if done:
        (run / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        git(repo, "add", "--", (run / MANIFEST).relative_to(repo).as_posix())
    return done


def restore(repo: Path, run: Path) -> int:
    """Write back every .pt a run's manifest lists and the tree lacks; return how many."""
    if not (run / MANIFEST).exists():
        return 0
    done = 0
    for rel, entry in json.loads((run / MANIFEST).read_text()).items():
        p = run / rel
        if p.exists():
            continue
        path = p.relative_to(repo).as_posix()
        try:
            data = git(repo, "show", f"{entry['commit']}:{path}", binary=True)
        except Refused as e:
            raise Refused(f"{path}: commit {entry['commit'][:12]} not here ({e}); a shallow clone needs `git fetch --unshallow`") from None
        if sha256(data) != entry["sha256"]:
            raise Refused(f"{path}: the bytes at {entry['commit'][:12]} do not match {run.name}/{MANIFEST}'s sha256")
        p.write_bytes(data)
        done += 1
    return done


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("slim", "restore"):
        print("usage: checkpoints.py slim|restore [RUN_DIR ...]", file=sys.stderr)
        return 2
    try:
        repo = Path(git(Path.cwd(), "rev-parse", "--show-toplevel").strip())  # the checkout this is run in
        runs = [Path(a).resolve() for a in argv[1:]] or runs_under(repo / "results" / "full")
        for run in runs:
            n = (slim if argv[0] == "slim" else restore)(repo, run)
            if n:
                print(f"{argv[0]}: {run.relative_to(repo)}: {n} file(s)")
    except Refused as e:
        print(f"checkpoints.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
