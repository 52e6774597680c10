"""BalanceAux Fig. 4 from finished runs: per-class classifier weight norms of RRS-only, CBS-only and BalanceAux.

    python benchmarks/figure4.py RRS-only=runs/rrs CBS-only=runs/cbs BalanceAux=runs/ba --out results/figure4.png

Each run folder's results.json must come from a balance_aux recipe (its stages carry the weight norms).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longtail.report.plots import plot_weight_norms  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--out", default="results/figure4.png")
    args = ap.parse_args()
    runs = {}
    for item in args.runs:
        name, folder = item.split("=", 1)
        res = json.loads((Path(folder) / "results.json").read_text())
        reports = [m["report"] for m in res["stages"].values() if "classifier_weight_norms" in m.get("report", {})]
        if not reports:
            sys.exit(f"{folder}: no classifier_weight_norms in results.json (not a balance_aux run)")
        runs[name] = reports[-1]
    out = Path(args.out)
    plot_weight_norms(runs, out)
    out.with_suffix(".json").write_text(json.dumps(runs, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
