"""``longtail bench full --seeds 0,1,2``: each row of the full-schedule table as the mean and spread over seeds.

Reads the same run folders as :mod:`longtail.bench.full` (``<recipe>-s<seed>/<stage>``), one seed at a time,
and keeps the per-seed values in the JSON; the spread is the sample standard deviation (n - 1), shown
only where a row has two seeds or more. Rows no seed has finished say how far their runs are.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from ..engine.checkpoint import write_text_atomic
from .full import GROUPS, ROWS, _fmt, _link_target, mark_upstream_dirty, read_row, run_folder
from .reproduce import PAPER, PAPER_SOURCE, RESULTS_PAGE
from .tables import replace_block


def spread(values: list[float]) -> dict:
    """``{"mean", "std", "n"}`` of a row's per-seed values (std None below two seeds)."""
    return {"mean": round(statistics.fmean(values), 2), "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
            "n": len(values)}


def seeds_table(root: str | Path = "results/full", table: str = "cifar100-lt", imbalance: float = 100,
                seeds: tuple[int, ...] = (0, 1, 2), device: str = "cpu", results: str | Path = "results",
                page: str | Path | None = RESULTS_PAGE) -> dict:
    root, paper = Path(root), PAPER.get(table, {})
    key = f"full-{table}-if{imbalance:g}-seeds-{device}"
    table_dir = root / f"{table}-if{imbalance:g}"
    rows = []
    for r in ROWS:
        per_seed = []
        for seed in seeds:
            run = run_folder(table_dir, r, seed)
            if run.is_dir():
                per_seed.append({"seed": seed, **read_row(r, run, paper, imbalance)})
        if not per_seed:
            continue
        mark_upstream_dirty(per_seed)
        done = [s for s in per_seed if s["status"] == "done"]
        row = {"label": r.label, "recipe": r.recipe, "stage": r.stage, "paper": per_seed[0]["paper"],
               "seeds_done": [s["seed"] for s in done], "per_seed": per_seed,
               "run": per_seed[0]["run"], "dirty": any(s.get("dirty") or s.get("upstream_dirty") for s in done)}
        for g in GROUPS:
            vals = [s[g] for s in done if s.get(g) is not None]
            row[g] = spread(vals) if vals else None
        if row["top1"] and row["paper"] is not None:
            row["gap"] = round(row["top1"]["mean"] - row["paper"], 2)
        rows.append(row)
    doc = {"table": table, "imbalance": imbalance, "seeds": list(seeds), "device": device, "paper_source": PAPER_SOURCE,
           "results_file": str(Path(results) / f"{key}.json"), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    write_text_atomic(Path(results) / f"{key}.json", json.dumps(doc, indent=1) + "\n")
    if page and Path(page).is_file():
        text = Path(page).read_text()
        new = replace_block(text, f"bench:{key}", render_seeds(doc, page))
        if new != text:
            write_text_atomic(page, new)
    return doc


def _cell(s: dict | None, nd: int = 2) -> str:
    if s is None:
        return "–"
    return f"{s['mean']:.{nd}f} ± {s['std']:.{nd}f}" if s["std"] is not None else f"{s['mean']:.{nd}f}"


def render_seeds(doc: dict, page: str | Path | None = None) -> str:
    lines = [f"CIFAR-100-LT, IF = {doc['imbalance']:g}, device {doc['device']}: mean ± sample std over the finished seeds "
             f"of {', '.join(map(str, doc['seeds']))} (one value where one seed is done); top-1 % on the balanced test set.", "",
             "| method | seeds | top-1 | many | medium | few | paper | gap (mean) | run |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        link = f"[{r['recipe']}/{r['stage']}]({_link_target(r['run'], page)}/{r['stage']})"
        paper = _fmt(r["paper"], 1) if r["paper"] is not None else "–"
        going = [f"s{s['seed']} " + (f"epoch {s['epoch']}/{s['epochs'] or '?'}" if s["status"] == "running" else s["status"])
                 for s in r["per_seed"] if s["status"] != "done"]
        seeds = ", ".join(map(str, r["seeds_done"])) or "–"
        if going:
            seeds += f" ({'; '.join(going)})"
        flag = " (dirty)" if r["dirty"] else ""
        lines.append(f"| {r['label']}{flag} | {seeds} | {_cell(r['top1'])} | {_cell(r['many'], 1)} | {_cell(r['medium'], 1)} | "
                     f"{_cell(r['few'], 1)} | {paper} | {_fmt(r.get('gap'))} | {link} |")
    lines += ["", f"Paper numbers: {doc['paper_source']}. Per-seed values: `{doc['results_file']}`."]
    return "\n".join(lines) + "\n"
