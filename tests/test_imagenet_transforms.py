"""The ImageNet-scale input path: the papers' crops against PIL references, every recipe's resolution and
transforms, the decoders, and short trainings of the ImageNet-LT / Places-LT / iNat recipes on generated JPEGs."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail.config import ConfigError, load_recipe, resolve_recipe_path
from longtail.data import build
from longtail.data.augment import Augment, ImageList, random_resized_crop_images, resized_crop_boxes
from longtail.data.augment.perimage import center_crop_resize_images
from longtail.data.decode import DECODERS, decode_image, decoder_available
from longtail.data.filestore import FileStore, centre_square
from longtail.data.images import DataBundle, ImageSet
from longtail.data.splitfile import INAT_MEAN
from longtail.data.synthetic import natural_image
from longtail.engine import passes
from longtail.engine.context import StageContext
from longtail.engine.feeder import BatchLoader as Feeder
from longtail.engine.pipeline import run_recipe
from longtail.engine.runtime import Runtime

FILE_DATASETS = ("imagenet-lt", "places-lt", "inat2018")
CPU = Runtime(torch.device("cpu"), None, False, False)


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with detail at every scale, so crops and resizes are tested on real structure."""
    return natural_image(np.random.default_rng(seed), h, w)


def pil_resize_centre_crop(a: np.ndarray, resize: int = 256, crop: int = 224) -> np.ndarray:
    """torchvision's PIL ``Resize(resize)`` then ``CenterCrop(crop)``, written out."""
    im = Image.fromarray(a)
    w, h = im.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    im = im.resize(size, Image.Resampling.BILINEAR)
    top, left = int(round((size[1] - crop) / 2.0)), int(round((size[0] - crop) / 2.0))
    return np.asarray(im.crop((left, top, left + crop, top + crop)))


def torchvision_rrc_box(h: int, w: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's ``RandomResizedCrop.get_params``, written out: 10 tries, then a central crop."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        bw, bh = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < bw <= w and 0 < bh <= h:
            return rng.randint(0, h - bh), rng.randint(0, w - bw), bh, bw
    return (h - min(h, w)) // 2, (w - min(h, w)) // 2, min(h, w), min(h, w)


def test_train_crop_is_pil_crop_then_resize_of_the_whole_image():
    images = ImageList([photo(256, 341), photo(341, 256, 1), photo(256, 256, 2)])
    g = torch.Generator().manual_seed(3)
    out = random_resized_crop_images(images, g, 224)
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.uint8
    h, w = images.sizes
    boxes = resized_crop_boxes(3, h, w, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(3))
    for a, (top, left, bh, bw), got in zip(images.images, boxes.tolist(), out):
        ref = np.asarray(Image.fromarray(a).crop((left, top, left + bw, top + bh)).resize((224, 224), Image.Resampling.BILINEAR))
        assert np.array_equal(got.permute(1, 2, 0).numpy(), ref)  # tolerance 0: the same PIL operations


def test_crop_boxes_cover_the_whole_image_as_torchvision_does():
    n, h, w = 4000, 256, 341  # a 4:3 image at the stored size
    boxes = resized_crop_boxes(n, torch.full((n,), h), torch.full((n,), w), (0.08, 1.0), (3 / 4, 4 / 3),
                               torch.Generator().manual_seed(0)).double()
    top, left, bh, bw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    # crops reach every border, the outer parts of the 4:3 image included (a centre square would stop at 43 and 299)
    assert top.min() == 0 and left.min() == 0 and (top + bh).max() == h and (left + bw).max() == w
    assert (left + bw > 299).float().mean() > 0.2 and (left < 42).float().mean() > 0.2
    rng = random.Random(0)
    ref = torch.tensor([torchvision_rrc_box(h, w, rng) for _ in range(n)], dtype=torch.float64)
    for ours, theirs in ((bh * bw / (h * w), ref[:, 2] * ref[:, 3] / (h * w)), (bw / bh, ref[:, 3] / ref[:, 2])):
        assert abs(ours.mean() - theirs.mean()) < 0.02 and abs(ours.std() - theirs.std()) < 0.02


def test_per_image_sizes_give_the_same_boxes_as_one_size():
    a = resized_crop_boxes(64, 200, 300, (0.08, 1.0), (0.75, 4 / 3), torch.Generator().manual_seed(5))
    b = resized_crop_boxes(64, torch.full((64,), 200), torch.full((64,), 300), (0.08, 1.0), (0.75, 4 / 3),
                           torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_eval_is_resize_256_centre_crop_224_and_the_square_store_is_exact(tmp_path):
    for i, (h, w) in enumerate([(375, 500), (500, 375), (900, 1200), (256, 256)]):
        Image.fromarray(photo(h, w, i)).save(tmp_path / f"{i}.jpg", quality=95)
    names = [f"{i}.jpg" for i in range(4)]
    full = FileStore(tmp_path, names, 256, decoder="pillow").load(range(4))
    square = FileStore(tmp_path, names, 256, decoder="pillow", square=True).load(range(4))
    assert [a.shape for a in square.images] == [(256, 256, 3)] * 4
    ours_full, ours_square = center_crop_resize_images(full, 224), center_crop_resize_images(square, 224)
    assert ours_full.shape == (4, 3, 224, 224) and torch.equal(ours_full, ours_square)  # the square loses nothing
    for i, got in enumerate(ours_full):
        with Image.open(tmp_path / f"{i}.jpg") as im:
            ref = pil_resize_centre_crop(np.asarray(im.convert("RGB")))
        diff = np.abs(got.permute(1, 2, 0).numpy().astype(int) - ref)
        # 1200x900 is decoded at DCT scale 1/2 first (libjpeg's scaled IDCT), then resized: not bit-exact
        assert diff.mean() < (1.5 if i == 2 else 0.01) and np.percentile(diff, 99) <= (8 if i == 2 else 0)


def test_centre_square_rounds_as_the_centre_crop():
    a = np.arange(256 * 301 * 3, dtype=np.int64).reshape(256, 301, 3)
    sq = centre_square(a)
    assert sq.shape == (256, 256, 3) and sq[0, 0, 0] == a[0, 22, 0]  # round(45 / 2) = 22 (half to even)


@pytest.mark.parametrize("name", [n for n in DECODERS if n != "pillow"])
def test_decoders_agree_with_pillow(tmp_path, name):
    if not decoder_available(name):
        pytest.skip(f"{name} is not installed")
    for i, (h, w) in enumerate([(375, 500), (1200, 900), (300, 256)]):
        Image.fromarray(photo(h, w, i)).save(tmp_path / f"{i}.jpg", quality=90)
        ref, got = decode_image(tmp_path / f"{i}.jpg", 256, "pillow"), decode_image(tmp_path / f"{i}.jpg", 256, name)
        assert got.shape == ref.shape and min(got.shape[:2]) == 256 and got.dtype == np.uint8
        assert np.abs(got.astype(int) - ref).mean() < 2.0


def test_unknown_or_missing_decoder_is_a_config_error(monkeypatch):
    from longtail.data import decode

    with pytest.raises(ConfigError, match="data.decoder: unknown decoder 'nvjpg'"):
        decode.pick_decoder("nvjpg")
    monkeypatch.setattr(decode, "decoder_available", lambda n: n == "pillow")
    decode.pick_decoder.cache_clear()
    try:
        assert decode.pick_decoder("auto") == "pillow"
        with pytest.raises(ConfigError, match="simplejpeg is not installed here"):
            decode.pick_decoder("simplejpeg")
    finally:
        decode.pick_decoder.cache_clear()


def test_crop_and_quality_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="data.crop_size=300 is larger than data.image_size=256"):
        from longtail.config import DataConfig
        from longtail.data.splitfile import image_sizes

        image_sizes(DataConfig(crop_size=300, image_size=256))
    assert image_sizes(DataConfig()) == (256, 224) and image_sizes(DataConfig(crop_size=64)) == (73, 64)
    assert image_sizes(DataConfig(image_size=24)) == (24, 24)
    with pytest.raises(ConfigError, match="data.cache_quality must be a JPEG quality in 1..100"):
        load_recipe("imagenet-lt/ce", ["data.cache_quality=0"])
    with pytest.raises(ConfigError, match="data.decoder"):
        load_recipe("imagenet-lt/ce", ["data.decoder=fast"])


def file_recipes() -> list[str]:
    root = resolve_recipe_path("imagenet-lt/ce").parents[1]
    return sorted(f"{d}/{p.stem}" for d in FILE_DATASETS for p in (root / d).glob("*.yaml"))


def recipe_text(name: str) -> str:
    """The recipe's file and every file it extends."""
    import yaml

    path, text = resolve_recipe_path(name), ""
    while path is not None:
        text += path.read_text()
        parent = yaml.safe_load(path.read_text()).get("extends")
        path = (path.parent / parent).resolve() if parent else None
    return text


def fake_bundle(dataset: str) -> DataBundle:
    mean = INAT_MEAN if dataset.startswith("inat") else (0.485, 0.456, 0.406)
    empty = ImageSet(FileStore(".", []), np.zeros(0, np.int64))
    return DataBundle(dataset, 2, ["a", "b"], empty, None, empty, mean, (0.2, 0.2, 0.2), 256, crop_size=224)


@pytest.mark.parametrize("name", file_recipes())
def test_every_file_recipe_crops_224_and_names_its_transform(name):
    recipe = load_recipe(name)
    assert "Transforms:" in recipe_text(name), f"{name}: say where its transforms come from"
    images = ImageList([photo(256, 341), photo(300, 256, 1)])
    for stage in recipe.stages:
        ctx = StageContext(recipe, stage, fake_bundle(recipe.data.dataset), CPU)
        train, test = ctx.augment(stage.augment), ctx.augment(stage.eval_augment)
        assert test.steps[0] == ("center_crop_resize", {"size": 224}), f"{name}/{stage.name}: eval is Resize(256) + CenterCrop(224)"
        assert test(images, torch.Generator()).shape == (2, 3, 224, 224)
        if stage.epochs:
            assert train.steps[0][0] == "random_resized_crop" and train.steps[0][1]["size"] == 224
            assert train(images, torch.Generator().manual_seed(0)).shape == (2, 3, 224, 224)


def test_transform_sources_per_recipe():
    def spec(name, stage=None):
        recipe = load_recipe(name)
        st = recipe.stage(stage) if stage else recipe.stages[0]
        aug = Augment.preset(st.augment, [0] * 3, [1] * 3) if isinstance(st.augment, str) else Augment(st.augment, [0] * 3, [1] * 3)
        return dict(aug.steps)

    jitter = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.0, "p": 1.0}
    for name in ("imagenet-lt/ce", "imagenet-lt/balance_aux", "places-lt/balance_aux", "imagenet-lt/ssd"):
        assert spec(name)["color_jitter"] == jitter, name  # Decoupling / OLTR / SSD: ColorJitter(0.4, 0.4, 0.4, 0)
    assert spec("imagenet-lt/decoupling", "crt")["color_jitter"] == jitter
    assert "color_jitter" not in spec("inat2018/ce")  # Decoupling's iNat transform has none
    assert spec("imagenet-lt/cbd")["random_resized_crop"]["scale"] == (0.05, 1.0)  # CBD's area range


def write_layout(root: Path, dataset: str, folder: str, files: dict, classes: int = 3, per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split, fname in files.items():
        rows = []
        for c in range(classes):
            for i in range(per_class if split == "train" else 2):
                rel = f"{split}/c{c}/{i}.jpg"
                h, w = (375, 500) if i % 2 else (500, 375)
                (root / folder / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(natural_image(rng, h, w)).save(root / folder / rel, quality=90)
                rows.append(f"{rel} {c}\n")
        (root / folder / fname).write_text("".join(rows))


@pytest.mark.parametrize("name,folder,files", [
    ("imagenet-lt/ce", "ImageNet_LT", {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}),
    ("places-lt/balance_aux", "Places_LT", {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}),
    ("inat2018/ce", "iNaturalist18", {"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"}),
])
def test_file_recipes_train_and_test_at_224_on_generated_jpegs(tmp_path, monkeypatch, name, folder, files):
    write_layout(tmp_path / "data", name, folder, files)
    recipe = load_recipe(name, ["model.backbone=resnet10", "model.pretrained=null", "runtime.progress=false",
                                "runtime.tensorboard=false", "runtime.report_features=0", "runtime.eval_batch_size=4",
                                f"data.cache_dir={tmp_path / 'cache'}"])
    for st in recipe.stages:
        st.epochs, st.batch_size = min(st.epochs, 1), 4
    seen = {"train": [], "eval": []}
    fetch, predict = Feeder.fetch, passes.predict_batches
    monkeypatch.setattr(Feeder, "fetch", lambda self, *a: seen["train"].append(tuple((b := fetch(self, *a)).x.shape)) or b)

    def spy(fn, batches, load, prepare):
        return predict(fn, batches, load, lambda loaded: seen["eval"].append(tuple((x := prepare(loaded)).shape)) or x)

    monkeypatch.setattr(passes, "predict_batches", spy)
    res = run_recipe(recipe, tmp_path / "run", data_root=str(tmp_path / "data"))
    assert seen["train"] and {s[1:] for s in seen["train"]} == {(3, 224, 224)}
    assert seen["eval"] and {s[1:] for s in seen["eval"]} == {(3, 224, 224)}
    assert res["final"]["num_images"] == 6
    assert (tmp_path / "cache").is_dir() and list((tmp_path / "cache").glob("*/manifest.json"))  # trained from the cache


def test_file_crops_are_the_same_after_a_resume(tmp_path):
    for i in range(6):
        Image.fromarray(photo(300, 400, i)).save(tmp_path / f"{i}.jpg")
    split = ImageSet(FileStore(tmp_path, [f"{i}.jpg" for i in range(6)], 256), np.arange(6) % 2)
    aug = Augment.preset("imagenet_jitter", (0.5,) * 3, (0.25,) * 3, size=224)
    first, again = Feeder(split, aug, CPU, 0, "ce", 0), Feeder(split, aug, CPU, 0, "ce", 0)
    index = np.array([0, 3, 5])
    for loader in (first, again):
        loader.start_epoch(2, {"x": [index] * 9})
    first.prefetch("x", 7)  # the uninterrupted run's look-ahead ...
    a = first.fetch("x", 7, torch.Generator().manual_seed(1))
    b = again.fetch("x", 7, torch.Generator().manual_seed(1))  # ... and a resumed run's direct load
    c = again.fetch("x", 8, torch.Generator().manual_seed(1))
    assert a.x.shape == (3, 3, 224, 224) and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


def test_tensor_images_take_the_same_crops_as_pil_ones():
    arrays = [photo(256, 341), photo(300, 256, 1)]
    pil, dev = ImageList(arrays), ImageList([torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in arrays])
    boxes = torch.tensor([[10, 20, 200, 240], [0, 0, 300, 256]])
    from longtail.data.augment import crop_resize_images

    for x, y in ((crop_resize_images(pil, boxes, 224), crop_resize_images(dev, boxes, 224)),
                 (center_crop_resize_images(pil, 224), center_crop_resize_images(dev, 224))):
        diff = (x.int() - y.int()).abs()
        assert x.shape == y.shape == (2, 3, 224, 224) and diff.float().mean() < 0.6 and diff.max() <= 3
