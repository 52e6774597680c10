"""A user's own folder end to end, as the README's "Your own images" section says it word for word: stats,
train, report, predict, export; the Python API; odd images; per-group learning rates."""
from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import longtail
from longtail.cli import main
from longtail.config import OptimConfig, load_recipe
from longtail.data.decode import decode_image
from longtail.data.synthetic import make_example_folder
from longtail.engine.optim import build_optimizer
from longtail.errors import ConfigError, DataError
from longtail.models.classifier import build_classifier
from figures import assert_drawn  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    text = README.read_text()
    section = text.split("### Your own images", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip().startswith("longtail ")]


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    """Runs the README's commands in order in a fresh folder; train gets --epochs-scale 0.05 to be quick."""
    work = tmp_path_factory.mktemp("readme")
    outputs = {}
    import os

    cwd = os.getcwd()
    os.chdir(work)
    try:
        for cmd in readme_commands():
            argv = shlex.split(cmd)[1:]
            if argv[0] == "train":
                argv += ["--epochs-scale", "0.05", "--set", "runtime.progress=false"]
            rc = main(argv)
            outputs[" ".join(argv[:2])] = rc
            assert rc == 0, f"README command failed: {cmd}"
    finally:
        os.chdir(cwd)
    return work, outputs


def test_readme_section_runs_word_for_word(walkthrough):
    work, outputs = walkthrough
    assert list(outputs) == ["data example", "data stats", "train folder/decoupling", "report runs/photos",
                             "predict runs/photos/lws/final.pt", "export runs/photos/lws/final.pt", "predict photos-model"]
    assert_drawn(work / "photos-counts.png")
    results = json.loads((work / "runs/photos/results.json").read_text())
    assert set(results["stages"]) == {"ce", "crt", "lws", "tau_norm", "logit_adjust"}
    pngs = list((work / "runs/photos/report").glob("*.png"))
    assert pngs and all(assert_drawn(p) is None for p in pngs)
    rows = list(csv.DictReader(open(work / "preds.csv")))
    assert len(rows) == len(list((work / "photos/jade").iterdir())) and all(r["class"] for r in rows)
    top3 = [float(rows[0][f"prob_{k}"]) for k in (1, 2, 3)]
    assert top3 == sorted(top3, reverse=True) and sum(top3) <= 1 + 1e-4 and float(rows[0]["prob"]) == top3[0]
    preds = json.loads((work / "preds.json").read_text())
    names = json.loads((work / "photos-model/card.json").read_text())["class_names"]
    assert len(preds) == len(list((work / "photos/heath").iterdir())) and all(p["class"] in names for p in preds)
    assert all(len(p["top"]) == 5 and p["top"][0]["class"] == p["class"] for p in preds)


def test_stats_lists_counts_imbalance_and_groups(walkthrough, capsys):
    work, _ = walkthrough
    assert main(["data", "stats", "folder", "--data-root", str(work / "photos")]) == 0
    out = capsys.readouterr().out
    counts = [len(list(p.iterdir())) for p in sorted((work / "photos").iterdir())]
    assert f"{len(counts)} classes" in out and "imbalance factor" in out and "many (> 100 images)" in out
    assert re.search(r"apple\s+\d+\s+many", out) and re.search(r"jade\s+\d+\s+few", out)


def test_export_and_checkpoint_give_the_same_top1(walkthrough):
    work, _ = walkthrough
    images = sorted((work / "photos").rglob("*.*"))[::7]
    ck = longtail.load(work / "runs/photos/lws/final.pt")
    ex = longtail.load(work / "photos-model")
    assert ck.class_names == ex.class_names == sorted(p.name for p in (work / "photos").iterdir())
    a, b = ck.probabilities(images), ex.probabilities(images)
    assert a.shape == (len(images), 10) and torch.equal(a.argmax(1), b.argmax(1))
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(a.sum(1), torch.ones(len(images)), atol=1e-4)
    rows = ck.predict([Image.open(images[0]), np.asarray(Image.open(images[1]).convert("RGB")), images[2]], top_k=2)
    assert [r["index"] for r in rows] == a[:3].argmax(1).tolist() and len(rows[0]["top"]) == 2
    program = torch.export.load(str(work / "photos-model/program.pt2")).module()  # runs without longtail
    x = ck.crops([decode_image(p, ck.card["image_size"]) for p in images[:4]])
    assert torch.allclose(program(x), a[:4], atol=1e-4)
    from safetensors.torch import load_file

    assert "backbone.conv1.weight" in load_file(str(work / "photos-model/model.safetensors"))


def odd_images(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    Image.new("CMYK", (60, 40), (0, 255, 255, 0)).save(paths.setdefault("cmyk", root / "cmyk.jpg"))
    ramp = (np.linspace(0, 65535, 50 * 40).reshape(40, 50)).astype(np.uint16)
    Image.fromarray(ramp).save(paths.setdefault("png16", root / "deep.png"))
    up = np.zeros((40, 60, 3), np.uint8)
    up[:10] = 255  # white on top when upright
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    Image.fromarray(np.rot90(up, 1).copy()).save(paths.setdefault("exif", root / "rotated.jpg"), exif=exif.tobytes(), quality=95)
    Image.new("RGB", (1, 1), (200, 30, 30)).save(paths.setdefault("tiny", root / "tiny.png"))
    Image.fromarray(np.full((100, 8000, 3), 90, np.uint8)).save(paths.setdefault("panorama", root / "pano.jpg"))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths["broken"] = root / "broken.jpg"
    return paths


def test_odd_images_decode_correctly(tmp_path):
    p = odd_images(tmp_path)
    cmyk = decode_image(p["cmyk"], 32)
    assert cmyk.shape == (32, 48, 3) and cmyk[..., 0].mean() > 200 and cmyk[..., 1:].mean() < 60
    deep = decode_image(p["png16"], 40)
    assert deep.shape == (40, 50, 3) and deep[0, 0, 0] <= 1 and deep[-1, -1, 0] >= 254  # scaled, not clipped
    up = decode_image(p["exif"], 40)
    assert up.shape == (40, 60, 3) and up[:8].mean() > 240 and up[14:].mean() < 15  # upright, as a viewer shows it
    assert (decode_image(p["tiny"], 16) == (200, 30, 30)).all()
    pano = decode_image(p["panorama"], 64)
    assert pano.shape == (64, 5120, 3)
    with pytest.raises(DataError, match="broken.jpg cannot be decoded"):
        decode_image(p["broken"], 32)


def test_predict_reports_unreadable_files_and_goes_on(walkthrough, tmp_path, capsys):
    work, _ = walkthrough
    odd_images(tmp_path / "odd")
    out = tmp_path / "odd.json"
    assert main(["predict", str(work / "photos-model"), str(tmp_path / "odd"), "--out", str(out), "--timing", str(tmp_path / "t.json")]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 6 and [Path(r["path"]).name for r in rows if "error" in r] == ["broken.jpg"]
    assert "5 images predicted, 1 unreadable" in capsys.readouterr().err
    timing = json.loads((tmp_path / "t.json").read_text())
    assert timing["images"] == 5 and timing["unreadable"] == 1
    assert timing["img_per_s"] == pytest.approx(5 / timing["seconds"], rel=0.05)  # both rounded (0.1 img/s, 1 ms)
    import hashlib  # the record names its model by content, so it outlives a temporary file

    model = timing["model"]
    assert model["sha256"] == hashlib.sha256((work / "photos-model" / "program.pt2").read_bytes()).hexdigest()
    assert model["classes"] == len(json.loads((work / "photos-model" / "card.json").read_text())["class_names"])
    assert model["parameters"] > 0 and model["stage"] and model["backbone"]


def test_odd_images_in_a_training_folder_are_skipped_with_a_reason(tmp_path):
    root, _ = make_example_folder(tmp_path / "photos", classes=3, max_per_class=20, imbalance=2)
    (root / "apple" / "zz_broken.jpg").write_bytes(b"junk")
    from longtail.config import DataConfig
    from longtail.data.build import build_data

    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image.*zz_broken.jpg"):
        bundle = build_data(DataConfig(dataset="folder", crop_size=32, on_bad_image="skip"), root)
    assert bundle.source["bad_images"]["skipped_total"] == 1


def test_optim_groups_scale_the_backbone_lr():
    from longtail.config import ModelConfig

    model = build_classifier(ModelConfig(backbone="resnet10"), 5)
    opt = build_optimizer(model.parameters(), OptimConfig(lr=0.1, groups={"backbone": 0.1}), model)
    scales = {g["lr_scale"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    assert scales == {0.1: sum(p.numel() for p in model.backbone.parameters()),
                      1.0: sum(p.numel() for p in model.heads.parameters())}
    assert load_recipe("folder/pretrained").stage("ce").optim.groups == {"backbone": 0.1}
    with pytest.raises(ConfigError, match="optim.groups: unknown part 'body'"):
        load_recipe("folder/ce", ["stages.ce.optim.groups.body=0.1"])


def test_every_folder_recipe_trains_a_step(tmp_path):
    from longtail.engine.pipeline import run_recipe

    root, counts = make_example_folder(tmp_path / "photos", classes=4, max_per_class=24, imbalance=4)
    # The folder rule's test split, by hand: T = median(n // 5) = median(4, 3, 1, 1) = 2, class c keeps min(T, n_c // 5).
    assert counts == [24, 15, 9, 6]
    test_images = 2 + 2 + 1 + 1
    for name in ("folder/ce", "folder/ssd", "folder/cbd", "folder/balance_aux"):
        recipe = load_recipe(name, ["runtime.progress=false", "runtime.report_features=0", "model.backbone=resnet10"])
        for st in recipe.stages:
            st.epochs, st.batch_size = min(st.epochs, 1), 16
        res = run_recipe(recipe, tmp_path / name.replace("/", "_"), data_root=str(root))
        assert res["final"]["num_images"] == test_images, name
        assert len(res["final"]["per_class"]) == 4 and res["final"]["epochs"] <= 1, name
