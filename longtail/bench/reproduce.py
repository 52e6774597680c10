"""``longtail bench reproduce``: the grid of methods x imbalance factors x seeds behind a results-page table.

A table row is one stage of one recipe, so a single run serves several rows: the ``decoupling``
recipe gives CE, cRT, LWS and tau-norm on the same CE weights, the ``cbd`` recipe gives CBD and
CBD_ENS on the same teachers. Each run trains only the stages its rows need (and what they start
from or learn from).

Nothing is trained twice: a (method, IF, seed) whose entry in the results file, or whose run folder,
already carries the same config hash is reused. A run folder left half-done by a crash is resumed.
The results file is rewritten after every run, so an interrupted grid keeps what it finished.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import keep_stages, load_recipe
from ..engine.checkpoint import write_text_atomic
from ..errors import ConfigError, LongtailError
from .tables import render_markdown, replace_block, summarise

RESULTS_PAGE = "docs/results.md"  # the page whose <!-- bench:KEY --> blocks `bench reproduce` and `bench full` rewrite
SHORT_STAGE = 10  # stages of at most this many epochs (the re-balancers) keep their length under --epochs-scale


@dataclass(frozen=True)
class Row:
    method: str
    recipe: str  # under recipes/<table>/
    stage: str


ROWS = [
    Row("CE", "decoupling", "ce"),
    Row("CBS", "cbs", "ce"),
    Row("cRT", "decoupling", "crt"),
    Row("LWS", "decoupling", "lws"),
    Row("tau-norm", "decoupling", "tau_norm"),
    Row("SSD", "ssd", "stage4"),
    Row("CBD", "cbd", "cbd"),
    Row("CBD_ENS", "cbd", "cbd_ens"),
    Row("BalanceAux", "balance_aux", "main"),
]
METHODS = [r.method for r in ROWS]

# Published top-1 (overall only; the papers give no shot groups on CIFAR). SSD paper, Table 2.
PAPER = {
    "cifar100-lt": {
        "CE": {100: 39.1, 50: 44.0, 10: 55.8},
        "LWS": {100: 42.3, 50: 46.0, 10: 58.1},
        "SSD": {100: 46.0, 50: 50.5, 10: 62.3},
    },
    "cifar10-lt": {},
}
PAPER_SOURCE = "SSD (ICCV 2021) Table 2, ResNet-32; CBD and BalanceAux publish no CIFAR numbers"


def _commit() -> str | None:
    from ..engine.pipeline import git_commit

    return git_commit()


def _device_tag(device: str | None) -> str:
    import torch

    if device:
        return "gpu" if device.startswith("cuda") else "cpu"
    return "gpu" if torch.cuda.is_available() else "cpu"


def build_recipe(table: str, recipe: str, stages: list[str], imbalance: float, seed: int, scale: float,
                 device: str | None, extra: list[str]):
    overrides = [f"data.imbalance={imbalance:g}", f"runtime.seed={seed}", "runtime.progress=false", *extra]
    if device:
        overrides.append(f"runtime.device={device}")
    r = load_recipe(f"{table}/{recipe}", overrides)
    keep_stages(r, stages)
    if scale != 1:
        from ..config import scale_epochs, validate

        scale_epochs(r, scale, keep_short=SHORT_STAGE)
        validate(r)
    return r


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _recipe_hash(path: Path) -> str | None:
    """The hash of a run folder's resolved recipe under today's schema (runs from before a field was added still match)."""
    import yaml

    from ..config import recipe_from_dict

    try:
        return recipe_from_dict(yaml.safe_load(path.read_text())).hash()
    except (OSError, yaml.YAMLError, LongtailError):
        return None


def _entry(row: Row, imbalance: float, seed: int, recipe, results: dict, run_dir: Path) -> dict:
    m, prov = results["stages"][row.stage], results["provenance"]
    return {
        "method": row.method, "imbalance": imbalance, "seed": seed, "recipe": recipe.name, "stage": row.stage,
        "config_hash": recipe.hash(), "run": str(run_dir),
        **{k: m[k] for k in ("top1", "top5", "many", "medium", "few")},
        "epochs": {s.name: s.epochs for s in recipe.stages},
        "provenance": {k: prov.get(k) for k in ("commit", "device", "torch", "wall_seconds", "finished")},
    }


def reproduce(args, extra_overrides: list[str] = ()) -> dict:
    """Run (or reuse) every cell of the grid; write ``<results>/<table>-<tag>.json`` and ``.md``; return the JSON."""
    from ..engine.pipeline import run_recipe

    table, scale = args.table, args.epochs_scale
    methods = args.methods or METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    tag = args.tag or _device_tag(args.device)
    out_json = Path(args.results) / f"{table}-{tag}.json"
    doc = _load(out_json)
    if doc and doc.get("epochs_scale") != scale:
        raise ConfigError(f"{out_json} holds an --epochs-scale {doc.get('epochs_scale')} table; pass --tag to keep "
                          f"a {scale} table beside it")
    doc = {"table": table, "tag": tag, "epochs_scale": scale, "short_stage_epochs": SHORT_STAGE,
           "paper_source": PAPER_SOURCE, "entries": doc.get("entries", [])}

    def save() -> None:
        doc["summary"] = summarise(doc["entries"], PAPER.get(table, {}))
        doc["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_text_atomic(out_json, json.dumps(doc, indent=1) + "\n")
        md = render_markdown(doc)
        write_text_atomic(out_json.with_suffix(".md"), md)
        readme = Path(getattr(args, "readme", None) or RESULTS_PAGE)
        if readme.is_file():
            text = readme.read_text()
            new = replace_block(text, f"bench:{table}-{tag}", md)
            if new != text:
                write_text_atomic(readme, new)

    if getattr(args, "render_only", False):
        save()
        return doc

    rows = [r for r in ROWS if r.method in methods]
    by_recipe: dict[str, list[Row]] = {}
    for r in rows:
        by_recipe.setdefault(r.recipe, []).append(r)
    cells = [(imb, seed, name, rs) for imb in args.imbalance for seed in args.seeds for name, rs in by_recipe.items()]
    for i, (imb, seed, name, rs) in enumerate(cells, 1):
        recipe = build_recipe(table, name, [r.stage for r in rs], imb, seed, scale, args.device, list(extra_overrides))
        h = recipe.hash()
        have = {(e["method"], e["imbalance"], e["seed"]): e for e in doc["entries"]}
        todo = [r for r in rs if have.get((r.method, imb, seed), {}).get("config_hash") != h]
        label = f"[{i}/{len(cells)}] {table}/{name} IF={imb:g} seed={seed} ({', '.join(r.method for r in rs)})"
        if not todo:
            print(f"{label}: in {out_json.name} already", flush=True)
            continue
        run_dir = Path(args.runs) / table / f"x{scale:g}" / f"{name}-if{imb:g}-s{seed}"
        done = _load(run_dir / "results.json")
        if done and _recipe_hash(run_dir / "recipe.yaml") == h:
            print(f"{label}: reusing {run_dir}", flush=True)
        else:
            print(f"{label}: training into {run_dir}", flush=True)
            t0 = time.perf_counter()
            done = run_recipe(recipe, run_dir, data_root=args.data_root, resume=run_dir.exists())
            print(f"{label}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        doc["entries"] = [e for e in doc["entries"] if (e["method"], e["imbalance"], e["seed"]) not in
                          {(r.method, imb, seed) for r in todo}]
        doc["entries"] += [_entry(r, imb, seed, recipe, done, run_dir) for r in todo]
        doc["entries"].sort(key=lambda e: (-e["imbalance"], METHODS.index(e["method"]), e["seed"]))
        doc["command"] = "longtail " + " ".join(sys.argv[1:]) if sys.argv and "longtail" in sys.argv[0] else None
        save()
    if not cells:
        save()
    print(f"results: {out_json} and {out_json.with_suffix('.md')}")
    return doc
