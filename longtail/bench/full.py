"""``longtail bench full``: the full-schedule table, read from the run folders the full runs commit.

Nothing is trained here. Each row is one stage of one run folder
``<root>/<table>-if<IF>/<recipe>-s<seed>/<stage>/``: a finished stage's numbers come from its ``final.pt``
(loaded weights-only), a running one shows the epoch its ``metrics.jsonl`` reached, a missing one says so.
A row whose segments include a ``-dirty`` commit is flagged: its code is not exactly a committed tree.
The table goes into its ``<!-- bench:full-... -->`` block on the results page (default ``docs/results.md``),
with each row's run link relative to that page.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..engine.checkpoint import load_checkpoint, write_text_atomic
from ..errors import LongtailError
from .reproduce import PAPER, RESULTS_PAGE
from .tables import _short, replace_block

GROUPS = ("top1", "many", "medium", "few")


@dataclass(frozen=True)
class FullRow:
    label: str
    recipe: str
    stage: str
    paper_key: str | None = None  # a key of reproduce.PAPER[table]
    also_in: tuple[str, ...] = ()  # smaller recipes that train the same stage (IF 50/10 run `lws`, not `decoupling`)


ROWS = [
    FullRow("SSD I: CE + rotation (BBN schedule)", "ssd", "stage1"),
    FullRow("SSD II: LWS teacher", "ssd", "stage2"),
    FullRow("SSD III: hard head", "ssd", "stage3"),
    FullRow("SSD III: soft head", "ssd", "stage3_soft"),
    FullRow("**SSD** (IV: LWS on the hard head)", "ssd", "stage4", "SSD"),
    FullRow("**BalanceAux** (CBS + RRS + SS)", "balance_aux", "main"),
    FullRow("BalanceAux without SS (CBS + RRS)", "balance_aux_noss", "main"),
    FullRow("CBD teacher, standard", "cbd", "teacher_std"),
    FullRow("CBD teacher, data augmentation", "cbd", "teacher_aug"),
    FullRow("Class-balanced sampling", "cbd", "cbs"),
    FullRow("cRT (CBD's teacher)", "cbd", "crt"),
    FullRow("**CBD** (K = 1)", "cbd", "cbd"),
    FullRow("**CBD_ENS** (K = 2)", "cbd", "cbd_ens"),
    FullRow("Teacher ensemble", "cbd", "ensemble"),
    FullRow("CE (LDAM schedule)", "decoupling", "ce", "CE", also_in=("lws", "ce")),
    FullRow("cRT", "decoupling", "crt"),
    FullRow("LWS", "decoupling", "lws", "LWS", also_in=("lws",)),
    FullRow("tau-norm (no bias)", "decoupling", "tau_norm"),
    FullRow("NCM", "decoupling", "ncm"),
    FullRow("fine-tune", "decoupling", "finetune"),
    FullRow("logit adjustment (post hoc)", "decoupling", "logit_adjust"),
    FullRow("CE (BBN schedule)", "decoupling", "ce_bbn", "CE"),
    FullRow("LDAM-DRW", "ldam_drw", "ce"),
    FullRow("Strong without the policy (LA + cosine + mixup)", "strong_mixup", "ce"),
    FullRow("**Strong** (LA + cosine + mixup + AutoAugment/Cutout)", "strong", "ce"),
    FullRow("Strong, 3 experts (1.36 M parameters)", "strong_experts", "ce"),
    FullRow("Strong, then a student with SSD's KD from it", "strong_distill", "student"),
    FullRow("Strong, then a student with CBD's feature distillation from it", "strong_cbd", "student"),
    FullRow("**ProCo** (LA + vMF contrastive term on 2 more views, AutoAugment/Cutout)", "proco", "ce"),
]


def _last_epoch(metrics: Path) -> int | None:
    epoch = None
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
            if "epoch" in rec:
                epoch = rec["epoch"]
    return epoch


def _recipe_stages(run: Path) -> list[dict]:
    """The stages of the run's resolved recipe.yaml, in order ([] when it is missing or unreadable)."""
    import yaml

    try:
        stages = yaml.safe_load((run / "recipe.yaml").read_text())["stages"]
        return [s for s in stages if isinstance(s, dict) and "name" in s]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []


def run_folder(table_dir: Path, row: FullRow, seed: int) -> Path:
    """The row's run folder: its own recipe's, else the first smaller recipe's that exists."""
    for recipe in (row.recipe, *row.also_in):
        if (table_dir / f"{recipe}-s{seed}").is_dir():
            return table_dir / f"{recipe}-s{seed}"
    return table_dir / f"{row.recipe}-s{seed}"


def read_row(row: FullRow, run: Path, paper: dict, imbalance: float) -> dict:
    """One table row as a dict: status, scores, paper gap, wall time, img/s and the commits that ran it."""
    stage_dir = run / row.stage
    out = {"label": row.label, "recipe": run.name.rsplit("-s", 1)[0], "stage": row.stage, "run": str(run),
           "paper": paper.get(row.paper_key, {}).get(imbalance) if row.paper_key else None}
    final = stage_dir / "final.pt"
    m = None
    if final.is_file():
        try:
            m = load_checkpoint(final)["metrics"]
        except (LongtailError, KeyError) as e:
            return {**out, "status": f"unreadable final.pt ({e})"}
    elif f"{row.stage}/final.pt" in _slimmed(run):  # weights in the history only (scripts/checkpoints.py): the run's record
        m = json.loads((run / "results.json").read_text())["stages"].get(row.stage)
    if m is not None:
        commits = [s.get("commit") for s in m.get("segments", [])]
        out.update({"status": "done", **{k: m.get(k) for k in GROUPS}, "epochs": m.get("epochs"),
                    "wall_seconds": m.get("wall_seconds_total") or m.get("train_seconds"),
                    "img_per_s": m.get("train_img_per_s_last_segment"), "segments": len(commits),
                    "commits": sorted({_short(c) for c in commits if c}),
                    "dirty": any(c and c.endswith("-dirty") for c in commits)})
        if out["paper"] is not None and out["top1"] is not None:
            out["gap"] = round(out["top1"] - out["paper"], 2)
        return out
    epoch = _last_epoch(stage_dir / "metrics.jsonl")
    if epoch is None:
        return {**out, "status": "not started"}
    return {**out, "status": "running", "epoch": epoch, "epochs": next((s.get("epochs") for s in _recipe_stages(run) if s["name"] == row.stage), None),
            "resumable": (stage_dir / "checkpoint.pt").is_file()}


def _slimmed(run: Path) -> dict:
    """The run's weights that scripts/checkpoints.py took out of the tree (path in the run -> commit, hash)."""
    p = run / "checkpoints.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def mark_upstream_dirty(rows: list[dict]) -> None:
    """A stage is only as clean as the stages before it in its run (it starts from them or learns from them):
    conservatively, any earlier stage of the same run folder, in recipe order."""
    for r in rows:
        order, r["upstream_dirty"] = [s["name"] for s in _recipe_stages(Path(r["run"]))], False
        if r["stage"] in order:
            before = set(order[: order.index(r["stage"])])
            r["upstream_dirty"] = any(o.get("dirty") for o in rows if o["run"] == r["run"] and o["stage"] in before)


def _fmt(v, nd=2) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def _wall(s: float | None) -> str:
    if not s:
        return "–"
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def _link_target(run: str, page: str | Path | None) -> str:
    """``run`` as the page links it: relative to the page's folder (``../results/...`` from ``docs/``), as is without a page."""
    if page is None:
        return Path(run).as_posix()
    return Path(os.path.relpath(Path(run).absolute(), Path(page).absolute().parent)).as_posix()


def render(doc: dict, page: str | Path | None = None) -> str:
    """The markdown table; with ``page``, its run links are relative to that file's folder."""
    lines = [f"CIFAR-100-LT, IF = {doc['imbalance']:g}, seed {doc['seed']}, device {doc['device']}; "
             f"top-1 % on the balanced test set (many / medium / few: > 100, 20–100, < 20 training images). "
             f"Wall time is the stage's own, summed over its segments.", "",
             "| method | top-1 | many | medium | few | paper | gap | wall | img/s | run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        link = f"[{r['recipe']}/{r['stage']}]({_link_target(r['run'], page)}/{r['stage']})"
        if r["status"] == "not started":  # no folder yet to link to
            link = f"`{r['recipe']}/{r['stage']}`"
        paper = _fmt(r["paper"], 1) if r["paper"] is not None else "–"
        if r["status"] == "done":
            flag = " (dirty)" if r["dirty"] else " (on dirty)" if r.get("upstream_dirty") else ""
            lines.append(f"| {r['label']}{flag} | {_fmt(r['top1'])} | {_fmt(r['many'], 1)} | {_fmt(r['medium'], 1)} | "
                         f"{_fmt(r['few'], 1)} | {paper} | {_fmt(r.get('gap'))} | {_wall(r['wall_seconds'])} | "
                         f"{_fmt(r['img_per_s'], 0)} | {link} |")
        else:
            state = (f"running: epoch {r['epoch']} of {r['epochs'] or '?'}" if r["status"] == "running" else r["status"])
            lines.append(f"| {r['label']} | {state} | | | | {paper} | | | | {link} |")
    if any(r.get("dirty") or r.get("upstream_dirty") for r in doc["rows"]):
        lines += ["", "(dirty): at least one segment of that stage ran from a tree with uncommitted changes; "
                  "(on dirty): the stage itself ran from clean commits, but an earlier stage of its run was dirty."]
    lines += ["", f"Paper numbers: {doc['paper_source']}. Written by `longtail bench full` from the run folders; "
              f"per-row commits, segments and img/s are in `{doc['results_file']}`."]
    return "\n".join(lines) + "\n"


def full_table(root: str | Path = "results/full", table: str = "cifar100-lt", imbalance: float = 100, seed: int = 0,
               device: str = "cpu", results: str | Path = "results", readme: str | Path | None = RESULTS_PAGE) -> dict:
    """Read every row's run folder, write ``<results>/full-<table>-if<IF>-s<seed>-<device>.json`` and the block
    ``<!-- bench:full-... -->`` of the results page ``readme`` (default ``docs/results.md``; None: no page)."""
    from .reproduce import PAPER_SOURCE

    root = Path(root)
    key = f"full-{table}-if{imbalance:g}-s{seed}-{device}"
    out_json = Path(results) / f"{key}.json"
    paper = PAPER.get(table, {})
    table_dir = root / f"{table}-if{imbalance:g}"
    runs = [(r, run_folder(table_dir, r, seed)) for r in ROWS]
    if imbalance != 100:  # the issue plans every row at IF 100 only; elsewhere, the rows of runs that exist
        runs = [(r, run) for r, run in runs if run.is_dir()]
    rows = [read_row(r, run, paper, imbalance) for r, run in runs]
    mark_upstream_dirty(rows)
    doc = {"table": table, "imbalance": imbalance, "seed": seed, "device": device, "paper_source": PAPER_SOURCE,
           "results_file": str(out_json), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    md = render(doc, page=readme or None)
    write_text_atomic(out_json, json.dumps(doc, indent=1) + "\n")
    if readme and Path(readme).is_file():
        text = Path(readme).read_text()
        new = replace_block(text, f"bench:{key}", md)
        if new != text:
            write_text_atomic(readme, new)
    return doc
