"""Shared pieces of the reliability tests: tiny recipes, a finished run to copy, broken inputs, and the checks
every bad-input row makes (one ``longtail: error:`` line; files left as they were)."""
from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail import cli
from longtail.config import ModelConfig
from longtail.engine.checkpoint import load_checkpoint, save_atomic
from longtail.models.classifier import build_classifier

REPO = Path(__file__).resolve().parents[1]

# CE -> LWS on 8x8 synthetic images: two stages, seconds on a CPU.
TINY = """
name: tiny-rel
data: {dataset: synthetic, imbalance: 10, image_size: 8}
model: {backbone: resnet20}
runtime: {device: cpu, amp: "off", tensorboard: false, progress: false, checkpoint_every: 4, threads: 1}
stage_defaults:
  batch_size: 32
  optim: {lr: 0.05}
  schedule: {kind: cosine}
  augment: [{op: random_crop, size: 8, padding: 1}, {op: random_hflip}, {op: normalize}]
  eval_augment: [{op: normalize}]
stages:
  - {name: ce, epochs: 2}
  - {name: lws, method: lws, init: ce, sampler: class_balanced, samples_per_class: 2, epochs: 1}
"""

# A user's images listed by split files (dataset: folder with data.train_split / test_split).
FILES = """
name: files-rel
data: {dataset: folder, image_root: imgs, train_split: tr.txt, test_split: te.txt, image_size: 8, on_bad_image: %s}
model: {backbone: resnet20}
runtime: {device: cpu, amp: "off", tensorboard: false, progress: false, threads: 1}
stages:
  - name: ce
    epochs: 1
    batch_size: 8
    augment: [{op: normalize}]
    eval_augment: [{op: normalize}]
"""


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    """The recipes here ask for one intra-op thread (two spinning threads on a loaded 2-core machine are 10x slower);
    the rest of the suite gets its thread count back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, *fragments: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("longtail: error:")]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Everything under ``folder``: each file's content hash and mtime (ns), each sub-folder (as None)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            if p.is_file() else None for p in sorted(folder.rglob("*"))}


def run_folders(root: Path) -> list[Path]:
    """The run folders under ``root``: those holding a run's record (recipe.yaml, results.json, a stage's checkpoint)."""
    found = {p.parent for name in ("recipe.yaml", "results.json") for p in root.rglob(name)}
    found |= {p.parent.parent for name in ("checkpoint.pt", "final.pt") for p in root.rglob(name)}
    return sorted(found)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished CE -> LWS run, made by the CLI; rows copy it (mtimes included) before breaking things."""
    d = tmp_path_factory.mktemp("rel")
    (d / "tiny.yaml").write_text(TINY)
    rc = cli.main(["train", str(d / "tiny.yaml"), "--out", str(d / "run")])
    assert rc == 0
    return d / "tiny.yaml", d / "run"


def copy_run(tiny_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(tiny_run[1], dst)  # copy2: mtimes kept
    return dst


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 10, 3), value, np.uint8)).save(path)


def file_dataset(tmp_path: Path, policy: str = "error", bad: str | None = None, train_rows=None) -> tuple[Path, Path]:
    """Three classes of PNGs under tmp/imgs, listed in imgs/tr.txt and imgs/te.txt; ``bad``: what to break."""
    imgs = tmp_path / "imgs"
    train = train_rows or [(f"c{c}/{i}.png", c) for c in range(3) for i in range((8, 5, 3)[c])]
    test = [(f"c{c}/t{i}.png", c) for c in range(3) for i in range(2)]
    for p, y in train + test:
        write_png(imgs / p, 60 * y + 20)
    if bad == "missing":
        (imgs / "c1/2.png").unlink()
    elif bad == "truncated":
        data = (imgs / "c1/2.png").read_bytes()
        (imgs / "c1/2.png").write_bytes(data[: len(data) // 2])
    elif bad == "not_image":
        (imgs / "c1/2.png").write_text("these are my notes, not an image\n")
    (imgs / "tr.txt").write_text("".join(f"{p} {y}\n" for p, y in train))
    (imgs / "te.txt").write_text("".join(f"{p} {y}\n" for p, y in test))
    recipe = tmp_path / "files.yaml"
    recipe.write_text(FILES % policy)
    return recipe, imgs


def cifar_archive(tmp_path: Path) -> Path:
    root = tmp_path / "corrupt"
    root.mkdir()
    (root / "cifar-100-python.tar.gz").write_bytes(gzip.compress(b"not a tar file at all" * 100)[:300])
    return root


def swap_head(path: Path, classes: int) -> None:
    """Rewrite a checkpoint with a class head of another width, as if from another dataset."""
    ck = load_checkpoint(path)
    ck["model"]["heads.main.fc.weight"] = torch.zeros(classes, ck["model"]["heads.main.fc.weight"].shape[1])
    ck["model"]["heads.main.fc.bias"] = torch.zeros(classes)
    save_atomic(ck, path)


def swap_model(path: Path, backbone: str = "resnet32") -> None:
    """Rewrite a checkpoint with the weights of another backbone (same classes)."""
    ck = load_checkpoint(path)
    ck["model"] = build_classifier(ModelConfig(backbone=backbone), 10).state_dict()
    save_atomic(ck, path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_yaml(t: Path, text: str) -> Path:
    (t / "r.yaml").write_text(text)
    return t / "r.yaml"


def folder_with_bad_image(t: Path) -> list:
    for c, n in (("cat", 12), ("dog", 8), ("emu", 6)):
        for i in range(n):
            write_png(t / "pets" / c / f"{i:03d}.png", 30 + 50 * len(c) + i)
    data = (t / "pets" / "dog" / "003.png").read_bytes()
    (t / "pets" / "dog" / "003.png").write_bytes(data[:40])
    recipe = write_yaml(t, FILES.replace(", train_split: tr.txt, test_split: te.txt", "").replace("image_root: imgs", "image_root: pets")
                   % "error")
    return ["train", recipe, "--out", t / "o", "--data-root", t]
