"""Copy a finished run's record (not its checkpoints) into results/, where it is committed.

    python benchmarks/collect.py RUN_DIR results/cpu/cifar100-lt-if100/decoupling-x0.1 [--command "..."]

Copies results.json, recipe.yaml and every stage's metrics.jsonl and figures, and prints the
stage table (top-1, many, medium, few) as Markdown.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path


def table(results: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    rows = ["| stage | top-1 | many | medium | few |", "|---|---|---|---|---|"]
    for name, m in results["stages"].items():
        rows.append(f"| {name} | {fmt(m['top1'])} | {fmt(m['many'])} | {fmt(m['medium'])} | {fmt(m['few'])} |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("dest")
    ap.add_argument("--command", default="", help="the command that produced the run, recorded in COMMAND.txt")
    args = ap.parse_args()
    run, dest = Path(args.run), Path(args.dest)
    if not (run / "results.json").exists():
        sys.exit(f"{run}: no results.json (the run has not finished)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "recipe.yaml"):
        shutil.copy2(run / name, dest / name)
    for stage in run.iterdir():
        if stage.is_dir() and ".replaced-" not in stage.name:
            for f in list(stage.glob("metrics.jsonl")) + list(stage.glob("*.png")):
                (dest / stage.name).mkdir(exist_ok=True)
                shutil.copy2(f, dest / stage.name / f.name)
    if args.command:
        (dest / "COMMAND.txt").write_text(args.command.strip() + "\n")
    md = table(json.loads((run / "results.json").read_text()))
    (dest / "TABLE.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
