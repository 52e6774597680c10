"""``longtail`` command line: train, eval, data stats, recipes."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .bench.commands import add_bench_parser
from .errors import LongtailError


def _table(rows: dict[str, dict]) -> str:
    """One header, then a row per stage (or split): top-1 / top-5 / many / medium / few."""
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    width = max([14, *(len(t) + 2 for t in rows)])
    head = f"{'':<{width}}{'top1':>8}{'top5':>8}{'many':>8}{'medium':>8}{'few':>8}"
    return "\n".join([head] + [f"{title:<{width}}" + "".join(f"{fmt(m.get(k)):>8}" for k in ("top1", "top5", "many", "medium", "few"))
                                for title, m in rows.items()])


def cmd_recipes(args) -> int:
    from .config.recipes import describe_search_path, recipe_index

    index = recipe_index()
    if not index:
        raise LongtailError(f"no recipes found; looked in {describe_search_path()}")
    for name, path in index.items():
        print(f"{name}\t{path}" if args.paths else name)
    return 0


def version_text() -> str:
    """``longtail X.Y.Z``, and the commit (``-dirty`` if changed) when this copy runs from a git clone."""
    from . import __version__

    root = Path(__file__).resolve().parents[1]
    commit = None
    if (root / ".git").exists():  # a clone's top level, not an installed copy inside some other repository
        from .engine.runtime import git_commit

        commit = git_commit(root)
    return f"longtail {__version__}" + (f" (commit {commit})" if commit else "")


class _Version(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


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
    if args.hist:
        from .report.plots import count_histogram

        count_histogram(stats, Path(args.hist))
    if args.json:
        print(json.dumps(stats))
        return 0
    g, t, counts = stats["groups"], stats["thresholds"], stats["counts"]
    print(f"{stats['dataset']}: {stats['num_classes']} classes, {stats['num_train']} training images, "
          f"imbalance factor {stats['imbalance']:.1f} (max {max(counts)} / min {min(counts)})")
    print(f"classes per group: many (> {t['many']} images) {g['many']}, medium {g['medium']}, few (< {t['few']}) {g['few']}")
    if stats["num_classes"] <= args.list_classes:
        group = lambda n: "many" if n > t["many"] else "few" if n < t["few"] else "medium"  # noqa: E731
        width = max(len(n) for n in stats["class_names"])
        for name, n in sorted(zip(stats["class_names"], counts), key=lambda r: -r[1]):
            print(f"  {name:<{width}}  {n:>7}  {group(n)}")
    if args.hist:
        print(f"histogram: {args.hist}")
    return 0


def cmd_predict(args) -> int:
    import time

    from .predict import image_paths, load, predict_files

    predictor = load(args.model, args.device)
    paths = image_paths(args.images)
    if not paths:
        raise LongtailError(f"no images in {' '.join(args.images)} ({', '.join(IMAGE_SUFFIXES)})")
    t0 = time.perf_counter()
    rows = predict_files(predictor, paths, args.top_k, args.batch)
    secs = time.perf_counter() - t0
    bad = [r for r in rows if "error" in r]
    if args.out:
        write_predictions(rows, Path(args.out), args.top_k)
    else:
        for r in rows:
            print(f"{r['path']}\t{r['class']}\t{r['prob']:.4f}" if "error" not in r else f"{r['path']}\tERROR\t{r['error']}")
    rate = (len(rows) - len(bad)) / secs if secs > 0 else 0.0
    for r in bad:
        print(f"longtail: skipped {r['error']}", file=sys.stderr)
    print(f"{len(rows) - len(bad)} images predicted, {len(bad)} unreadable, {rate:.1f} img/s on {predictor.device}"
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    if args.timing:
        from .engine.runtime import git_commit

        Path(args.timing).parent.mkdir(parents=True, exist_ok=True)
        Path(args.timing).write_text(json.dumps({
            "images": len(rows) - len(bad), "unreadable": len(bad), "seconds": round(secs, 3), "img_per_s": round(rate, 1),
            "device": str(predictor.device), "threads": __import__("torch").get_num_threads(), "cpu_count": os.cpu_count(),
            "batch": args.batch, "model": predictor.describe(), "commit": git_commit(),
            "command": " ".join(["longtail", *sys.argv[1:]]), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
    return 0 if len(bad) < len(rows) else 2


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def write_predictions(rows: list[dict], path: Path, top_k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=1))
        return
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "prob", *[f"{k}_{i + 1}" for i in range(top_k) for k in ("class", "prob")], "error"])
        for r in rows:
            top = [x for t in r.get("top", []) for x in (t["class"], t["prob"])]
            w.writerow([r["path"], r.get("class", ""), r.get("prob", ""), *top, *[""] * (2 * top_k - len(top)), r.get("error", "")])


def cmd_export(args) -> int:
    from .predict import export

    out = export(args.checkpoint, args.out)
    for name in ("model.safetensors", "card.json", "program.pt2"):
        print(out / name)
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


def cmd_example(args) -> int:
    from .data.synthetic import make_example_folder

    root = Path(args.folder)
    if root.exists() and any(root.iterdir()):
        raise LongtailError(f"{root} is not empty; choose a new folder for the example")
    _, counts = make_example_folder(root, args.classes, args.max_per_class, args.imbalance)
    print(f"{root}: {len(counts)} classes, {sum(counts)} images, {max(counts)} down to {min(counts)} per class")
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
    results = run_recipe(recipe, out, data_root=args.data_root, resume=args.resume, reuse=args.reuse)
    if int(os.environ.get("RANK", "0")) == 0:
        print(_table(results["stages"]))
        print(f"results: {out / 'results.json'}")
    return 0


def cmd_eval(args) -> int:
    from .engine.evaluate_checkpoint import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, data_root=args.data_root, device=args.device, split=args.split)
    print(_table({args.split: metrics}), file=sys.stderr)  # for people; stdout stays machine-readable
    print(json.dumps(metrics))
    return 0


def cmd_report(args) -> int:
    from .report.html import write_report

    written = write_report([Path(r) for r in args.runs], Path(args.out), baseline=args.baseline, tsne_classes=args.tsne_classes)
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longtail", description="Long-tailed image recognition in plain PyTorch.")
    p.add_argument("--version", action=_Version, help="print the version (and the commit, in a git clone) and exit")
    p.add_argument("--recipes", action="append", metavar="DIR", default=[],
                   help="a folder of your own recipes (DIR/<name>.yaml is recipe <name>), given before the command; "
                        "repeatable. Searched first, then the folders in $LONGTAIL_RECIPES (separated by "
                        f"'{os.pathsep}'), then the recipes shipped with longtail")
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
    t.add_argument("--reuse", action="append", metavar="RUN", default=[],
                   help="a finished run whose stages with the same settings, data, model and seed are copied, not trained again")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint: metrics as JSON on stdout, a table on stderr")
    e.add_argument("checkpoint")
    e.add_argument("--data-root")
    e.add_argument("--device")
    e.add_argument("--split", default="test", choices=["test", "val", "train"],
                   help="train: the training images, unaugmented (top1 over images, groups over classes)")
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
    s.add_argument("--hist", metavar="PNG", help="also draw the class-count histogram to this file")
    s.add_argument("--list-classes", type=int, default=50, help="list each class's count when there are at most this many")
    s.set_defaults(func=cmd_stats)
    x = dsub.add_parser("example", help="write a small long-tailed image folder (generated photos) to try longtail on")
    x.add_argument("folder")
    x.add_argument("--classes", type=int, default=10)
    x.add_argument("--max-per-class", type=int, default=200)
    x.add_argument("--imbalance", type=float, default=20.0)
    x.set_defaults(func=cmd_example)
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

    add_bench_parser(sub)

    pr = sub.add_parser("predict", help="classify images with a trained stage (final.pt) or an export folder")
    pr.add_argument("model", help="a stage's final.pt, or a folder written by 'longtail export'")
    pr.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--out", help="write the predictions to a .csv or .json file (default: a line per image on stdout)")
    pr.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    pr.add_argument("--batch", type=int, default=64)
    pr.add_argument("--timing", metavar="JSON", help="write images/s and provenance to this file")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="write a stage as safetensors weights, a JSON card and a torch.export program")
    ex.add_argument("checkpoint", help="a stage's final.pt")
    ex.add_argument("--out", required=True, help="the folder to write")
    ex.set_defaults(func=cmd_export)

    r = sub.add_parser("recipes", help="list the recipes: those in --recipes DIRs and $LONGTAIL_RECIPES, then the shipped ones",
                       description="List the recipe names. Searched in order, the first match of a name wins: "
                                   "longtail --recipes DIR (each), the folders in $LONGTAIL_RECIPES, then the "
                                   "recipes shipped with longtail. No recipe found is an error (exit 2).")
    r.add_argument("--paths", action="store_true", help="also print the file each name resolves to")
    r.set_defaults(func=cmd_recipes)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.recipes or "longtail.config.recipes" in sys.modules:  # (main may run more than once in a process)
        from .config.recipes import set_recipe_dirs

        set_recipe_dirs(args.recipes)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"longtail: warning: {msg}\n"
    ok = False
    try:
        code = args.func(args)
        ok = not code
        return code
    except LongtailError as e:
        print(f"longtail: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longtail: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # only a command that ran torch can have joined a process group
            from .engine.runtime import shutdown_runtime

            shutdown_runtime(ok)


if __name__ == "__main__":
    sys.exit(main())
