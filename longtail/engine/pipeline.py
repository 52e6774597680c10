"""Run a recipe: its stages in order, each on the artifacts of the ones before.

The run folder holds everything needed to resume or audit::

    OUT/recipe.yaml             the resolved recipe
    OUT/<stage>/checkpoint.pt   latest state inside the stage (atomic)
    OUT/<stage>/final.pt        the finished stage: weights and metrics
    OUT/<stage>/metrics.jsonl   losses, lr, validation curves
    OUT/results.json            every stage's metrics, and provenance

``resume`` skips stages whose ``final.pt`` exists and restarts the first
unfinished one from its checkpoint, at the exact step. If the recipe was edited
in between, the stages it changed (and those built on them) are trained again;
their old folders are kept as ``<stage>.replaced-<time>``.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
import yaml

from .. import __version__
from ..config import Recipe, from_dict, stage_refs
from ..data.images import DataBundle
from ..errors import ConfigError
from .checkpoint import load_checkpoint, remove_stale_temps, write_text_atomic
from .context import StageContext, init_seed
from .loop import train_stage
from .reuse import reuse_stages
from .runtime import Runtime, code_hash, git_commit, setup_runtime


def provenance(recipe: Recipe, rt: Runtime, wall: float, data_source: dict, commit: str | None, code: str | None = None) -> dict:
    return {
        "recipe": recipe.name,
        "config_hash": recipe.hash(),
        "commit": commit,  # taken when this segment (the last start or --resume) began
        "code_hash": code,  # the same segment's code by content (runtime.code_hash)
        "longtail": __version__,
        "seed": recipe.runtime.seed,
        "init_seeds": {s.name: init_seed(recipe.runtime.seed, s) for s in recipe.stages if s.init == "fresh"},
        "device": rt.describe(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "world_size": rt.world,
        "wall_seconds": round(wall, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": data_source,
    }


def stale_stages(previous: dict, recipe: Recipe, where: Path) -> list[str]:
    """On ``--resume`` with an edited recipe: the stages to train again.

    A stage is stale when its own settings changed or a stage it starts from or learns from is stale;
    the others keep their finished work. Data, model and seed changes invalidate everything, so
    they are refused.
    """
    now = recipe.to_dict()
    # Through the schema, so fields added to longtail since that run compare at their defaults.
    previous = from_dict(Recipe, previous).to_dict()
    for key in ("data", "model"):
        if previous.get(key) != now[key]:
            raise ConfigError(f"--resume: '{key}' differs from the run in {where}; start a new --out for that")
    if previous.get("runtime", {}).get("seed") != now["runtime"]["seed"]:
        raise ConfigError(f"--resume: runtime.seed differs from the run in {where}; start a new --out for that")
    before = {s["name"]: s for s in previous.get("stages", [])}
    stale: list[str] = []
    for s in now["stages"]:
        if before.get(s["name"]) != s or stage_refs(s) & set(stale):
            stale.append(s["name"])
    return stale


def run_recipe(recipe: Recipe, out: str | Path, data_root: str | None = None, resume: bool = False,
               runtime: Runtime | None = None, data: DataBundle | None = None, reuse: list | None = None) -> dict:
    """Train every stage of ``recipe`` into ``out``; return the results dict (also written to results.json).

    ``data`` lets Python callers train on a bundle they built themselves instead of ``recipe.data``;
    ``reuse``: finished runs whose identical stages are copied instead of trained (engine/reuse.py).
    """
    out = Path(out)
    t0 = time.perf_counter()
    commit, code = git_commit(), code_hash()
    rt = runtime or setup_runtime(recipe.runtime)
    resolved = out / "recipe.yaml"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} is a file; choose another --out")
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError(f"output folder {out} is not empty: pass --resume to continue that run, or choose another --out")
    rt.barrier()  # every rank has checked the folder before rank 0 writes into it
    stale = []
    if resume and resolved.exists():
        stale = stale_stages(yaml.safe_load(resolved.read_text()), recipe, resolved)
    if data is None:  # before anything is written: a data error leaves the run folder as it was
        from ..data.build import build_data, resolve_data_root

        data = build_data(recipe.data, resolve_data_root(data_root, recipe.data.root))
    from ..data.filestore import build_caches

    # The image cache, a visible step: the first rank to take its file lock builds it, the others wait
    # on the lock (no collective timeout), then find it complete.
    build_caches(data, recipe.runtime.progress and rt.is_main)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)  # half-written files of a killed run: never read, but they would pile up
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name in stale:  # kept aside, never deleted
            if (out / name).exists():
                os.replace(out / name, out / f"{name}.replaced-{stamp}")
        if stale and resolved.exists():
            os.replace(resolved, out / f"recipe.replaced-{stamp}.yaml")
        text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
        if not resolved.exists() or resolved.read_text() != text:  # a resume leaves an unchanged recipe untouched
            write_text_atomic(resolved, text)
        for name, src in reuse_stages(recipe, out, [Path(r) for r in reuse or []]).items():
            print(f"{name}: reused from {src / name}", flush=True)
    rt.barrier()

    if recipe.data.on_device:
        data.train, data.val, data.test = (s.to(rt.device) if s is not None else None for s in (data.train, data.val, data.test))

    artifacts, stages = {}, {}
    for stage in recipe.stages:
        stage_dir = out / stage.name
        final = stage_dir / "final.pt"
        # Every rank runs every stage (each scores a share of every evaluation); rank 0 alone draws figures.
        ctx = StageContext(recipe, stage, data, rt, dict(artifacts), stage_dir if rt.is_main else None, commit, code)
        if final.exists():  # finished before a crash or an earlier run
            stages[stage.name] = load_checkpoint(final)["metrics"]
        else:
            stages[stage.name] = train_stage(ctx, stage_dir, resume=resume)
        artifacts[stage.name] = final

    last = recipe.stages[-1].name
    results = {
        "final": {**stages[last], "stage": last},
        "stages": stages,
        "provenance": provenance(recipe, rt, time.perf_counter() - t0, data.source, commit, code),
    }
    # Over every segment of every stage, so a run resumed ten times reports its whole cost.
    results["provenance"]["wall_seconds_total"] = round(sum(m.get("wall_seconds_total") or 0 for m in stages.values()), 2)
    results["provenance"]["segments"] = sum(len(m.get("segments") or []) for m in stages.values())
    # Which code trained the run, over every segment of every stage: the last segment's commit alone can mislead.
    pairs = {(s.get("commit"), s.get("code")) for m in stages.values() for s in m.get("segments") or []}
    results["provenance"]["trained_by"] = [{"commit": c, "code_hash": h} for c, h in sorted(pairs, key=str)]
    if rt.is_main:
        write_text_atomic(out / "results.json", json.dumps(results, indent=1))
    return results
