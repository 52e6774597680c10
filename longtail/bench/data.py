"""``longtail bench data``: how fast file images reach the model, against the model alone.

On a JPEG folder (``--folder``, ``root/<class>/<images>``) or one it generates (``--generate N``
natural-looking 500 x 375 JPEGs: 1/f noise, the spectrum of photographs), it measures:

* each installed decoder on the original files, to the stored size (shorter side 256), on one
  thread (per core) and on all of them (total);
* building the JPEG cache with the chosen decoder: its speed and bytes per image, extrapolated to
  ImageNet-LT's and iNaturalist 2018's image counts against the size budget;
* the training path, from the cache: decode, then the recipe's random resized crop to 224 (what the
  engine's look-ahead thread does), per core and in total; the evaluation path likewise; on a GPU
  with torchvision, the same from nvJPEG decoding on the device;
* the batched rest of the transform on the device, and the recipe's model alone (``bench throughput``'s
  synthetic-batch step), so the ratio says which side is the bottleneck.

Writes ``<results>/bench-data-<device>.json`` with provenance.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig, load_recipe
from ..data.build import build_data
from ..data.decode import DECODERS, decode_image, decoder_available, pick_decoder
from ..data.filestore import FileStore
from ..data.folder import IMAGE_EXTENSIONS
from ..data.splitfile import read_split, split_files
from ..data.synthetic import make_jpeg_folder
from ..engine.runtime import setup_runtime
from ..errors import DataError, LongtailError
from .stepcost import stage_context, synchronize
from .throughput import device_slug, model_alone, provenance

# (training, evaluation) images of the official lists; evaluation images are stored as centre squares.
DATASET_IMAGES = {"imagenet-lt": (115_846, 20_000 + 50_000), "inat2018": (437_513, 24_426)}
BUDGET_GB = {"imagenet-lt": 6.0, "inat2018": 20.0}
BATCH = 256


def _rate(fn, items: list, threads: int, repeats: int = 2) -> float:
    """Items per second of ``fn`` mapped over ``items`` by ``threads`` threads; the best of ``repeats``."""
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items[: max(threads, 8)]))  # warm: imports, page cache, allocator
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(fn, items))
            best = max(best, len(items) / (time.perf_counter() - t0))
    return round(best, 1)


def _path_rate(store: FileStore, augment, n: int, repeats: int = 2) -> float:
    """Images per second of ``store.load`` then the augmentation's per-image sizing op, in batches."""
    g = torch.Generator().manual_seed(0)
    batches = [np.arange(i, min(i + BATCH, n)) for i in range(0, n, BATCH)]
    augment.size_images(store.load(batches[0][:8]), g)  # warm
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for index in batches:
            out = augment.size_images(store.load(index), g)
        synchronize(out.device)
        best = max(best, n / (time.perf_counter() - t0))
    assert out.dtype == torch.uint8
    return round(best, 1)


def list_images(folder: Path) -> list[str]:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"bench data: no images under {folder}")
    return files


def split_counts(data_root: Path | None) -> dict[str, tuple[int, int]]:
    """(training, evaluation) images of ImageNet-LT and iNat18: counted from the lists where they are at hand."""
    counts = dict(DATASET_IMAGES)
    for name in counts if data_root else ():
        try:
            lists = split_files(name, data_root, DataConfig(dataset=name))
        except LongtailError:
            continue
        n = {s: len(read_split(p)[0]) for s, p in lists.items() if p is not None}
        counts[name] = (n["train"], sum(n.values()) - n["train"])
    return counts


def cache_bytes(folder: Path, files: list[str], size: int, where: Path, decoder: str, threads: int,
                square: bool) -> tuple[FileStore, float, float]:
    """A built cache of ``files``: its store, bytes per image and build rate (img/s)."""
    store = FileStore(folder, files, size, where, threads=threads, decoder=decoder, square=square)
    t = time.perf_counter()
    cache = store.build_cache(progress=False)
    rate = len(files) / (time.perf_counter() - t)
    return store, json.loads(cache.manifest_path.read_text())["bytes"] / len(files), rate


def bench_data(args) -> dict:
    t0 = time.perf_counter()
    recipe = load_recipe(args.recipe, [f"runtime.device={args.device or 'auto'}"])
    rt = setup_runtime(recipe.runtime)
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="longtail-bench-data-") as tmp:
        folder = Path(args.folder) if args.folder else make_jpeg_folder(Path(tmp) / "jpegs", args.generate)
        files = list_images(folder)[: args.images]
        n = len(files)
        print(f"{n} images under {folder}; {threads} threads; device {rt.describe()}", flush=True)
        size = recipe.data.image_size or 256
        paths = [folder / f for f in files]

        decoders = {}
        for name in DECODERS:
            if not decoder_available(name):
                decoders[name] = None
                continue
            one = lambda p, name=name: decode_image(p, size, name)  # noqa: E731
            decoders[name] = {"originals": {"per_core": _rate(one, paths, 1), "total": _rate(one, paths, threads)}}
            print(f"{name:<11} originals: {decoders[name]['originals']['per_core']:7.1f} img/s per core, "
                  f"{decoders[name]['originals']['total']:7.1f} total", flush=True)
        chosen = pick_decoder("auto")

        cache_dir = Path(tmp) / "cache"
        store, per_train, build_rate = cache_bytes(folder, files, size, cache_dir, chosen, threads, False)
        _, per_eval, _ = cache_bytes(folder, files, size, cache_dir, chosen, threads, True)
        quality = store.quality
        counts = split_counts(Path(args.data_root) if args.data_root else None)
        budget = {}
        for k, (n_train, n_eval) in counts.items():
            gb = (per_train * n_train + per_eval * n_eval) / 1e9
            budget[k] = {"train_images": n_train, "eval_images": n_eval, "gb": round(gb, 2), "budget_gb": BUDGET_GB[k],
                         "within": gb <= BUDGET_GB[k]}
        print(f"cache: {per_train / 1e3:.1f} KB per training image, {per_eval / 1e3:.1f} KB per evaluation square "
              f"(q{quality}), built at {build_rate:.1f} img/s; "
              + ", ".join(f"{k} {v['gb']} GB (budget {v['budget_gb']})" for k, v in budget.items()), flush=True)

        data = build_data(DataConfig(dataset="folder", image_root=str(folder), image_size=size, crop_size=recipe.data.crop_size),
                          Path(tmp))
        ctx = stage_context(args.recipe, recipe.stages[0].name, data, rt, args.batch)
        train_aug, eval_aug = ctx.augment(ctx.stage.augment), ctx.augment(ctx.stage.eval_augment)
        for name, res in decoders.items():
            if res is None:
                continue
            for k, label in ((1, "per_core"), (threads, "total")):
                s = FileStore(folder, files, size, cache_dir, threads=k, decoder=name)
                res.setdefault("train_from_cache", {})[label] = _path_rate(s, train_aug, n)
                res.setdefault("eval_from_cache", {})[label] = _path_rate(s, eval_aug, n)
            print(f"{name:<11} cache -> {data.input_size} crops: train {res['train_from_cache']['per_core']:7.1f} per core, "
                  f"{res['train_from_cache']['total']:7.1f} total; eval {res['eval_from_cache']['total']:7.1f} total", flush=True)

        gpu = FileStore(folder, files, size, cache_dir, threads=threads, decoder=chosen)
        gpu.build_cache(progress=False)
        gpu.use_device(rt.device)
        if gpu.gpu is not None:  # nvJPEG on the training GPU, crops there too
            decoders["nvjpeg"] = {"train_from_cache": {"total": _path_rate(gpu, train_aug, n)},
                                  "eval_from_cache": {"total": _path_rate(gpu, eval_aug, n)}}
            print(f"nvjpeg      cache -> {data.input_size} crops on {rt.device}: train "
                  f"{decoders['nvjpeg']['train_from_cache']['total']:7.1f}, eval {decoders['nvjpeg']['eval_from_cache']['total']:7.1f}",
                  flush=True)
        x = train_aug.size_images(store.load(np.arange(min(BATCH, n))), torch.Generator()).to(rt.device)
        g = torch.Generator(device=rt.device).manual_seed(0)
        train_aug(x, g, already_cut=True)
        synchronize(rt.device)
        t1 = time.perf_counter()
        for _ in range(3):
            train_aug(x, g, already_cut=True)
        synchronize(rt.device)
        batched = round(3 * len(x) / (time.perf_counter() - t1), 1)

        alone = model_alone(ctx, args.steps, 1)
        print(f"batched ops on {rt.device.type}: {batched:.1f} img/s; model alone ({recipe.model.backbone}, batch "
              f"{ctx.stage.batch_size}): {alone['images_per_s']:.1f} img/s", flush=True)

    best = decoders[chosen]["train_from_cache"]  # the CPU path; nvjpeg, where measured, is beside it
    res = {
        "chosen_decoder": chosen,
        "decoders": decoders,
        "cache": {"bytes_per_training_image": round(per_train), "bytes_per_evaluation_image": round(per_eval),
                  "quality": quality, "shorter_side": size, "build_img_per_s": round(build_rate, 1), "extrapolated": budget},
        "train_path_img_per_s": best,
        "batched_ops_img_per_s": batched,
        "model_alone": alone,
        "ratio_train_path_to_model_alone": round(best["total"] / alone["images_per_s"], 3),
        "projection": {
            "note": "per-core rate times 16 cores (the GPU machine); ResNet-50 on one H200 trains at 2,000-3,000 img/s "
                    "(issue 14's figure, not measured here)",
            "cores": 16, "train_path_img_per_s": round(16 * best["per_core"], 1),
        },
        "settings": {"images": n, "folder": "generated" if not args.folder else str(folder), "generated": not args.folder,
                     "recipe": args.recipe, "crop_size": data.input_size, "train_augment": repr(train_aug),
                     "eval_augment": repr(eval_aug), "threads": threads, "batch": BATCH},
    }
    res["provenance"] = provenance(args, rt, ctx.stage.batch_size, time.perf_counter() - t0)
    path = Path(args.results) / f"bench-data-{device_slug(rt)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    print(f"train path {best['total']:.1f} img/s = {res['ratio_train_path_to_model_alone']:.2f} x the model alone; wrote {path}",
          flush=True)
    return res
