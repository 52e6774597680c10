"""The device check's results under one name pattern and with provenance (called by gpu_check.sh after
each step, so what a cut-off call brings back is already stamped):

    python benchmarks/gpu_stamp.py OUT TAG      # TAG: gpu on the device, dry for --dry-run

* ``throughput-<device>.json`` and ``bench-data-<device>.json`` (the bench commands' own names) become
  ``throughput-TAG.json`` and ``bench-data-TAG.json``, beside ``syncs-TAG.json``, ``nvjpeg-race-TAG.json``,
  ``ce-TAG.json`` and ``ssd-TAG.json``: the ``results/*-gpu.json`` that are committed after a device call;
* every ``*-TAG.json`` gets a ``provenance`` block, or the fields its own block lacks: the commit (``git``, else ``LONGTAIL_COMMIT``,
  which the device command sets, since the tree travels there without ``.git``), the code's content hash
  (which checks that commit), torch and the device.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

from longtail.engine.runtime import code_hash, git_commit

RENAMED = ("throughput", "bench-data")


def provenance() -> dict:
    cuda = torch.cuda.is_available()
    return {"commit": git_commit(), "code_hash": code_hash(), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(0) if cuda else f"cpu: {platform.processor() or platform.machine()}",
            "stamped": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def stamp(out: Path, tag: str) -> list[str]:
    for kind in RENAMED:
        for p in sorted(out.glob(f"{kind}-*.json")):
            if p.name != f"{kind}-{tag}.json":
                p.replace(out / f"{kind}-{tag}.json")
    done, prov = [], provenance()
    for p in sorted(out.glob(f"*-{tag}.json")):
        res = json.loads(p.read_text())
        if not isinstance(res, dict):
            continue
        have = res.get("provenance") or {}
        # a bench command's own block may lack the commit (no .git there): fill what is missing, keep the rest
        filled = {**have, **{k: v for k, v in prov.items() if have.get(k) is None}}
        if filled != have:
            p.write_text(json.dumps({**res, "provenance": filled}, indent=1))
            done.append(p.name)
    return done


if __name__ == "__main__":
    print("stamped:", " ".join(stamp(Path(sys.argv[1]), sys.argv[2])) or "-")
