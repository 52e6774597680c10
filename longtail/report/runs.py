"""Reading a finished run folder (what ``longtail train`` writes) for the report.

A report names a run folder (its final stage is reported) or a stage folder inside one
(``runs/decoupling/crt``: that stage). Everything is read from disk: results.json, the
resolved recipe, each stage's metrics.jsonl and ``report.npz``; nothing is re-run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from ..data.groups import shot_groups
from ..errors import DataError
from .record import load_record


@dataclass
class Curves:
    """One run's training curves, every stage end to end on a shared epoch axis."""

    loss: tuple[list, list]  # (epoch, mean loss over the epoch's log lines)
    lr: tuple[list, list]
    val: tuple[list, list]  # validation top-1 (logged every runtime.eval_every epochs)
    test: tuple[list, list]  # test top-1 at each stage's end
    stage_ends: list[tuple[float, str]]


@dataclass
class RunView:
    name: str
    run_dir: Path
    stage: str
    results: dict

    @property
    def metrics(self) -> dict:
        return self.results["stages"][self.stage]

    @property
    def per_class(self) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in self.metrics["per_class"]], dtype=float)

    @cached_property
    def recipe(self) -> dict:
        path = self.run_dir / "recipe.yaml"
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}

    @property
    def thresholds(self) -> tuple[int, int]:
        data = self.recipe.get("data", {})
        return int(data.get("many_threshold", 100)), int(data.get("few_threshold", 20))

    @cached_property
    def record(self) -> dict | None:
        """The stage's ``report.npz``; None for runs trained before it existed."""
        return load_record(self.run_dir / self.stage)

    @cached_property
    def train_counts(self) -> np.ndarray:
        """Stored at train time; for older runs, from provenance or recomputed from the recipe."""
        if self.record is not None:
            return self.record["train_counts"]
        counts = self.results.get("provenance", {}).get("data", {}).get("counts")
        if counts is None:
            from ..config import recipe_from_dict
            from ..data.build import dataset_stats

            if not self.recipe:
                raise DataError(f"{self.run_dir}: neither report.npz, provenance counts nor recipe.yaml to get the class counts from")
            counts = dataset_stats(recipe_from_dict(self.recipe).data)["counts"]
        return np.asarray(counts, dtype=np.int64)

    @property
    def groups(self) -> dict[str, np.ndarray]:
        return shot_groups(self.train_counts, *self.thresholds)

    def group_of(self) -> np.ndarray:
        """'many' / 'medium' / 'few' per class."""
        out = np.empty(len(self.train_counts), dtype=object)
        for g, idx in self.groups.items():
            out[idx] = g
        return out

    @property
    def class_names(self) -> list[str]:
        if self.record is not None and "class_names" in self.record:
            return [str(n) for n in self.record["class_names"]]
        return [str(c) for c in range(len(self.train_counts))]

    def stage_views(self) -> list[RunView]:
        """This run's stages up to the reported one, in training order, each a view of its own (those
        with per-class results only: the comparisons are per class)."""
        views = []
        for name, m in self.results["stages"].items():
            if m.get("per_class") is not None:
                views.append(RunView(f"{self.name}: {name}", self.run_dir, name, self.results))
            if name == self.stage:
                break
        return views

    def label_distribution(self) -> dict | None:
        """SSD Fig. 5 data: the last stage up to the reported one that recorded it."""
        found = None
        for name, m in self.results["stages"].items():
            found = (m.get("report") or {}).get("label_distribution", found)
            if name == self.stage:
                break
        return found

    def curves(self) -> Curves:
        loss, lr, val, test, ends = ([], []), ([], []), ([], []), ([], []), []
        offset = 0.0
        for name, m in self.results["stages"].items():
            rows = _read_jsonl(self.run_dir / name / "metrics.jsonl")
            by_epoch: dict[int, list] = {}
            for row in rows:
                if "loss" in row:
                    by_epoch.setdefault(int(row["epoch"]), []).append(row)
                if "val_top1" in row and row["val_top1"] is not None:
                    val[0].append(offset + row["epoch"]), val[1].append(row["val_top1"])
            for e in sorted(by_epoch):  # logged within epoch e (0-based): plotted at its end
                loss[0].append(offset + e + 1), loss[1].append(float(np.mean([r["loss"] for r in by_epoch[e]])))
                lr[0].append(offset + e + 1), lr[1].append(by_epoch[e][-1]["lr"])
            offset += m.get("epochs") or 0
            test[0].append(offset), test[1].append(m["top1"])
            ends.append((offset, name))
            if name == self.stage:
                break
        return Curves(loss, lr, val, test, ends)


def _read_jsonl(path: Path) -> list[dict]:
    """Metric lines; a resumed stage re-logs the steps after its last checkpoint, so the last line of a step wins."""
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        rows[(row.get("step"), tuple(sorted(k for k in row if k not in ("time", "step"))))] = row
    return list(rows.values())


def load_run(path: Path) -> RunView:
    """A run folder (its final stage) or one of its stage folders."""
    path = Path(path)
    if (path / "results.json").is_file():
        run_dir, stage = path, None
    elif (path.parent / "results.json").is_file():
        run_dir, stage = path.parent, path.name
    else:
        raise DataError(f"{path}: no results.json here; give a run folder written by 'longtail train' (or one of its stage folders)")
    try:
        results = json.loads((run_dir / "results.json").read_text())
        stages = results["stages"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{run_dir / 'results.json'}: not a longtail results file ({e})") from None
    if stage is None:
        stage = results.get("final", {}).get("stage") or list(stages)[-1]
        name = run_dir.name
    else:
        if stage not in stages:
            raise DataError(f"{path}: {run_dir / 'results.json'} has no stage {stage!r}; stages are {list(stages)}")
        name = f"{run_dir.name}/{stage}"
    return RunView(name, run_dir, stage, results)


def load_runs(paths: list[Path], baseline: str | None = None) -> list[RunView]:
    """The runs in order, the baseline first (added if it is not among them); names made unique."""
    runs = [load_run(p) for p in paths]
    if baseline is not None:
        base = load_run(Path(baseline))
        key = (base.run_dir.resolve(), base.stage)
        runs = [base] + [r for r in runs if (r.run_dir.resolve(), r.stage) != key]
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name} ({seen[r.name]})"
    return runs
