"""The ``longtail bench`` commands: their arguments and handlers (the CLI adds them under ``bench``)."""
from __future__ import annotations

import argparse


def _csv(kind):
    def parse(text):
        return [kind(v) for v in text.split(",") if v.strip()]

    parse.__name__ = f"comma-separated {kind.__name__}"  # argparse names it in "invalid ... value"
    return parse


def cmd_bench_reproduce(args) -> int:
    from .reproduce import reproduce

    reproduce(args)
    return 0


def cmd_bench_full(args) -> int:
    from .full import full_table, render

    if args.seeds:
        from .seeds import render_seeds, seeds_table

        print(render_seeds(seeds_table(args.root, args.table, args.imbalance, tuple(args.seeds), args.device, args.results, args.readme)), end="")
        return 0
    doc = full_table(args.root, args.table, args.imbalance, args.seed, args.device, args.results, args.readme)
    print(render(doc), end="")
    return 0


def cmd_bench_throughput(args) -> int:
    from .throughput import throughput

    throughput(args)
    return 0


def cmd_bench_data(args) -> int:
    from .data import bench_data

    bench_data(args)
    return 0


def add_bench_parser(sub) -> None:
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
    br.add_argument("--page", "--readme", dest="readme", default="docs/results.md", metavar="FILE",
                    help="the results page whose <!-- bench:TABLE-TAG --> block gets the table (default docs/results.md; "
                         "--readme is the old name)")
    br.add_argument("--render-only", action="store_true", help="re-render the markdown from the results file; train nothing")
    br.set_defaults(func=cmd_bench_reproduce)
    bf = bsub.add_parser("full", help="the full-schedule table from the committed run folders (trains nothing)")
    bf.add_argument("--root", default="results/full", help="holds <table>-if<IF>/<recipe>-s<seed>/")
    bf.add_argument("--table", default="cifar100-lt", choices=["cifar100-lt", "cifar10-lt"])
    bf.add_argument("--imbalance", type=float, default=100.0)
    bf.add_argument("--seed", type=int, default=0)
    bf.add_argument("--seeds", type=_csv(int), default=None, help="e.g. 0,1,2: one table of mean ± std over these seeds (full-<table>-if<IF>-seeds-<device>.json)")
    bf.add_argument("--device", default="cpu", help="the device tag the runs were made on (file name and caption)")
    bf.add_argument("--results", default="results", help="folder for full-<table>-if<IF>-s<seed>-<device>.json")
    bf.add_argument("--page", "--readme", dest="readme", default="docs/results.md", metavar="FILE",
                    help="the results page whose <!-- bench:full-... --> block gets the table (default docs/results.md; "
                         "--readme is the old name)")
    bf.set_defaults(func=cmd_bench_full)
    bt = bsub.add_parser("throughput", help="training images/s: model alone, the longtail loop, a classic PIL pipeline, per method")
    bt.add_argument("--data-root")
    bt.add_argument("--device")
    bt.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    bt.add_argument("--epochs", type=int, default=2, help="whole epochs of the loop (the sustained rate is epochs 2..N; at least 2)")
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
