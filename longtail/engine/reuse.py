"""``longtail train ... --reuse RUN``: take a finished stage from another run instead of training it again.

A stage is taken when the other run has a stage of the same name whose ``final.pt`` was trained from the
same stage settings, data, model and seed (compared through the schema, so fields added since compare at
their defaults), and every stage it starts from or learns from was taken from that run too: then it is the
same training, and its weights are what this run would train. The copy keeps the source's metrics and
segments (their commits and code hashes), and its metrics.jsonl gains a line naming where it came from, so
the run's record says which code trained it. Example: the teacher of ``strong_distill`` is ``strong``'s stage
``ce``, so ``--reuse results/full/cifar100-lt-if100/strong-s1`` trains only the student.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from ..config import Recipe, from_dict, stage_refs
from ..errors import ConfigError
from .checkpoint import load_checkpoint

COPIED = ("final.pt", "metrics.jsonl", "report.npz")


WHERE = ("root", "image_root", "cache_dir")  # where the data lives, not what it is


def _same_training(theirs: dict, ours: Recipe, stage: str) -> bool:
    theirs = from_dict(Recipe, theirs).to_dict()
    mine = ours.to_dict()
    data = lambda r: {k: v for k, v in r["data"].items() if k not in WHERE}  # noqa: E731
    if data(theirs) != data(mine) or theirs["model"] != mine["model"] or theirs["runtime"]["seed"] != mine["runtime"]["seed"]:
        return False
    pick = lambda r: next((s for s in r["stages"] if s["name"] == stage), None)  # noqa: E731
    return pick(theirs) is not None and pick(theirs) == pick(mine)


def reuse_stages(recipe: Recipe, out: Path, sources: list[Path]) -> dict[str, Path]:
    """Copy every stage of ``recipe`` that one of ``sources`` finished with the same training into ``out``;
    return {stage: the run it came from}. A source's stage that left the tree (``checkpoints.json``) is an
    error naming the command that brings it back."""
    taken: dict[str, Path] = {}
    for stage in recipe.stages:
        if (out / stage.name / "final.pt").exists():
            continue
        for src in sources:
            final = src / stage.name / "final.pt"
            manifest = src / "checkpoints.json"
            if not final.exists():
                if manifest.is_file() and f"{stage.name}/final.pt" in json.loads(manifest.read_text()):
                    raise ConfigError(f"--reuse {src}: its stage {stage.name!r} is in the history, not the tree; "
                                      f"bring it back with: python scripts/checkpoints.py restore {src}")
                continue
            if not _same_training(load_checkpoint(final)["recipe"], recipe, stage.name):
                continue
            if any(taken.get(ref) != src for ref in stage_refs(stage)):  # it built on stages this run trains itself
                continue
            dest = out / stage.name
            dest.mkdir(parents=True, exist_ok=True)
            for name in COPIED:
                if (src / stage.name / name).exists():
                    shutil.copy2(src / stage.name / name, dest / name)
            note = {"event": "reused", "from": str(src / stage.name), "time": time.time(),
                    "final_sha256": hashlib.sha256(final.read_bytes()).hexdigest()}
            with open(dest / "metrics.jsonl", "a") as f:
                f.write(json.dumps(note) + "\n")
            taken[stage.name] = src
            break
    return taken
