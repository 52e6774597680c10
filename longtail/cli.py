"""``longtail`` command line: train, eval, data stats, recipes."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import LongtailError


def _table(metrics: dict, title: str = "") -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    head = f"{'':<14}{'top1':>8}{'top5':>8}{'many':>8}{'medium':>8}{'few':>8}"
    row = f"{title:<14}" + "".join(f"{fmt(metrics.get(k)):>8}" for k in ("top1", "top5", "many", "medium", "few"))
    return f"{head}\n{row}"


def cmd_recipes(args) -> int:
    from .config import available_recipes

    for name in available_recipes():
        print(name)
    return 0


def cmd_stats(args) -> int:
    from .config import DataConfig, validate, Recipe
    from .data.build import dataset_stats, resolve_data_root

    cfg = DataConfig(dataset=args.dataset, imbalance=args.imbalance, profile=args.profile)
    if args.many is not None:
        cfg.many_threshold = args.many
    if args.few is not None:
        cfg.few_threshold = args.few
    validate(Recipe(data=cfg))
    root = None if args.dataset.startswith("cifar") else resolve_data_root(args.data_root, None)
    stats = dataset_stats(cfg, root) if root is not None else dataset_stats(cfg)
    if args.json:
        print(json.dumps(stats))
    else:
        g = stats["groups"]
        print(f"{stats['dataset']}: {stats['num_classes']} classes, {stats['num_train']} training images")
        print(f"counts: max {max(stats['counts'])}, min {min(stats['counts'])}")
        print(f"classes per group: many {g['many']}, medium {g['medium']}, few {g['few']}")
    return 0


def cmd_cache(args) -> int:
    from .config import DataConfig, Recipe, load_recipe, validate
    from .data.build import build_data, resolve_data_root
    from .data.filestore import build_caches

    overrides = ["data.cache=true", *(args.set or [])]
    if "/" in args.dataset or args.dataset.endswith((".yaml", ".yml")):  # a recipe: its data section
        cfg = load_recipe(args.dataset, overrides).data
    else:
        from .config import apply_override, from_dict, parse_override

        raw = {"data": {"dataset": args.dataset}}
        for item in overrides:
            keys, value = parse_override(item)
            apply_override(raw, keys, value, item.split("=", 1)[0])
        recipe = from_dict(Recipe, raw)
        validate(recipe)
        cfg = recipe.data
    if not isinstance(cfg, DataConfig) or cfg.dataset.startswith(("cifar", "synthetic")):
        print(f"{cfg.dataset} is held in memory: there is nothing to cache", file=sys.stderr)
        return 0
    built = build_caches(build_data(cfg, resolve_data_root(args.data_root, cfg.root)), progress=True)
    total = sum(m["bytes"] for m in built.values())
    for split, m in built.items():
        print(f"{split}: {m['count']} images, {m['bytes'] / 1e9:.2f} GB ({m['bytes'] / max(1, m['count']) / 1e3:.1f} KB each) in {m['dir']}")
    print(f"total {total / 1e9:.2f} GB")
    return 0


def cmd_train(args) -> int:
    from .config import load_recipe
    from .engine.pipeline import run_recipe

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"runtime.seed={args.seed}")
    if args.device is not None:
        overrides.append(f"runtime.device={args.device}")
    recipe = load_recipe(args.recipe, overrides, args.epochs_scale)
    out = Path(args.out or Path("runs") / recipe.name.replace("/", "_"))
    results = run_recipe(recipe, out, data_root=args.data_root, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        for name, m in results["stages"].items():
            print(_table(m, name))
        print(f"results: {out / 'results.json'}")
    return 0


def cmd_eval(args) -> int:
    from .engine.evaluate_checkpoint import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, data_root=args.data_root, device=args.device, split=args.split)
    print(_table(metrics, args.split), file=sys.stderr)  # for people; stdout stays machine-readable
    print(json.dumps(metrics))
    return 0


def cmd_report(args) -> int:
    from .report.html import write_report

    written = write_report([Path(r) for r in args.runs], Path(args.out), baseline=args.baseline, tsne_classes=args.tsne_classes)
    for path in written:
        print(path)
    return 0


def cmd_bench_reproduce(args) -> int:
    from .bench.reproduce import reproduce

    reproduce(args)
    return 0


def cmd_bench_throughput(args) -> int:
    from .bench.throughput import throughput

    throughput(args)
    return 0


def cmd_bench_data(args) -> int:
    from .bench.data import bench_data

    bench_data(args)
    return 0


def _csv(kind):
    return lambda text: [kind(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longtail", description="Long-tailed image recognition in plain PyTorch.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe (all its stages)")
    t.add_argument("recipe", help="recipe name (see 'longtail recipes') or a YAML path")
    t.add_argument("--out", help="run folder (default runs/<recipe>)")
    t.add_argument("--data-root", help="dataset folder (default $LONGTAIL_DATA, then ~/.cache/longtail)")
    t.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    t.add_argument("--seed", type=int)
    t.add_argument("--epochs-scale", type=float, help="multiply every stage's epochs (at least 1), for quick runs")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field, e.g. data.imbalance=50")
    t.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint: metrics as JSON on stdout, a table on stderr")
    e.add_argument("checkpoint")
    e.add_argument("--data-root")
    e.add_argument("--device")
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("stats", help="class counts and shot groups of a dataset")
    s.add_argument("dataset", help="cifar100-lt, cifar10-lt, imagenet-lt, places-lt, inat2018, ...")
    s.add_argument("--imbalance", type=float, default=100.0)
    s.add_argument("--profile", default="exp", choices=["exp", "step"])
    s.add_argument("--many", type=int, help="many-shot: more than this many images (default 100)")
    s.add_argument("--few", type=int, help="few-shot: fewer than this many images (default 20)")
    s.add_argument("--data-root")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)
    c = dsub.add_parser("cache", help="build the JPEG cache of a file dataset's images (resumable; training reads it)")
    c.add_argument("dataset", help="imagenet-lt, places-lt, inat2018, inat2017, folder, or a recipe whose data to cache")
    c.add_argument("--data-root")
    c.add_argument("--set", action="append", metavar="data.KEY=VALUE", help="e.g. data.image_root=/imgs or data.cache_dir=/fast")
    c.set_defaults(func=cmd_cache)

    rp = sub.add_parser("report", help="HTML + markdown report with plots for one or more finished runs")
    rp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (each with results.json)")
    rp.add_argument("--out", default="report", help="output folder (default ./report)")
    rp.add_argument("--baseline", help="run folder to compare the others against (default: the first)")
    rp.add_argument("--tsne-classes", type=int, default=9, help="classes in the t-SNE plot, drawn from many/medium/few")
    rp.set_defaults(func=cmd_report)

    b = sub.add_parser("bench", help="reproduction tables and throughput benchmarks")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    br = bsub.add_parser("reproduce", help="run a grid of methods x imbalance x seeds; write results/<table>.json and .md")
    br.add_argument("--table", required=True, choices=["cifar100-lt", "cifar10-lt"])
    br.add_argument("--imbalance", type=_csv(float), default=[100.0], help="comma-separated, e.g. 100,50,10")
    br.add_argument("--seeds", type=_csv(int), default=[0], help="comma-separated, e.g. 0,1,2")
    br.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every stage's epochs (1 = the papers' schedules)")
    br.add_argument("--methods", type=_csv(str), help="comma-separated subset (default: all)")
    br.add_argument("--data-root")
    br.add_argument("--device")
    br.add_argument("--runs", default="runs/bench", help="where the runs live (existing ones with the same config are reused)")
    br.add_argument("--results", default="results", help="where <table>[-<tag>].json and .md are written")
    br.add_argument("--tag", help="suffix of the results file name (default: cpu or gpu, from the device)")
    br.add_argument("--readme", default="README.md", help="a file whose <!-- bench:TABLE-TAG --> block gets the table")
    br.add_argument("--render-only", action="store_true", help="re-render the markdown from the results file; train nothing")
    br.set_defaults(func=cmd_bench_reproduce)
    bt = bsub.add_parser("throughput", help="training images/s: model alone, the longtail loop, a classic PIL pipeline, per method")
    bt.add_argument("--data-root")
    bt.add_argument("--device")
    bt.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    bt.add_argument("--results", default="results", help="folder for throughput-<device>.json")
    bt.add_argument("--quick", action="store_true", help="few steps, for smoke tests (numbers are not meaningful)")
    bt.add_argument("--batch", type=int, help=argparse.SUPPRESS)  # tests: smaller batches (default 128)
    bt.add_argument("--synthetic", action="store_true", help=argparse.SUPPRESS)  # tests: a tiny synthetic set, no archive
    bt.set_defaults(func=cmd_bench_throughput)

    bd = bsub.add_parser("data", help="file-image pipeline img/s: each decoder, the cache, crops; against the model alone")
    bd.add_argument("--folder", help="a JPEG folder root/<class>/<images> (default: generate one)")
    bd.add_argument("--generate", type=int, default=1024, help="images to generate without --folder (500x375 JPEGs)")
    bd.add_argument("--images", type=int, default=1024, help="images measured")
    bd.add_argument("--recipe", default="imagenet-lt/ce", help="whose transforms and model (default imagenet-lt/ce)")
    bd.add_argument("--steps", type=int, default=3, help="timed model-alone steps")
    bd.add_argument("--batch", type=int, default=32, help="model-alone batch size (default 32)")
    bd.add_argument("--data-root", help="where the split lists are, to count the images the cache budget covers")
    bd.add_argument("--device")
    bd.add_argument("--results", default="results", help="folder for bench-data-<device>.json")
    bd.set_defaults(func=cmd_bench_data)

    r = sub.add_parser("recipes", help="list the recipes")
    r.set_defaults(func=cmd_recipes)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"longtail: warning: {msg}\n"
    try:
        return args.func(args)
    except LongtailError as e:
        print(f"longtail: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longtail: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
