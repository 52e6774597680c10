"""Reliability and security: bad input, unsafe and broken checkpoints, divergence, failed writes, fuzzing, kills.

The bad-input matrix runs the real command line in-process (``longtail.cli.main``): every row must end
with exit code 2 and exactly one ``longtail: error:`` line naming the culprit (file, line or key), no
traceback, and, where a run folder exists, every byte and mtime in it unchanged.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from longtail import cli
from longtail.config import ModelConfig
from longtail.engine import checkpoint as ckpt
from longtail.engine.checkpoint import load_checkpoint, save_atomic
from longtail.errors import CheckpointError, LongtailError
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
def _restore_threads():
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
    """Every file under ``folder``: content hash and mtime (ns)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


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


# --------------------------------------------------------------------------- the bad-input matrix
# Each row: (id, setup(tmp_path, tiny_run) -> (argv, protected run folder or None), fragments of the one error line).
# Fragments may use {tmp} for tmp_path and {run} for the protected folder.


def _train(recipe, out, *more):
    return ["train", recipe, "--out", out, *more]


ROWS = [
    ("data_root_missing", lambda t, r: (_train(r[0], t / "o", "--data-root", t / "missing"), None),
     ["data root {tmp}/missing does not exist"]),
    ("archive_missing", lambda t, r: ((t / "empty").mkdir() or _train("cifar100-lt/ce", t / "o", "--data-root", t / "empty",
                                                                      "--set", "data.download=false"), None),
     ["cifar-100-python.tar.gz not found in {tmp}/empty"]),
    ("archive_corrupt", lambda t, r: (_train("cifar100-lt/ce", t / "o", "--data-root", cifar_archive(t)), None),
     ["{tmp}/corrupt/cifar-100-python.tar.gz", "corrupt or truncated archive"]),
    ("split_image_missing", lambda t, r: (_train(file_dataset(t, bad="missing")[0], t / "o", "--data-root", t), None),
     ["image {tmp}/imgs/c1/2.png does not exist"]),
    ("split_image_truncated", lambda t, r: (_train(file_dataset(t, bad="truncated")[0], t / "o", "--data-root", t), None),
     ["image {tmp}/imgs/c1/2.png cannot be decoded"]),
    ("split_image_not_an_image", lambda t, r: (_train(file_dataset(t, bad="not_image")[0], t / "o", "--data-root", t), None),
     ["image {tmp}/imgs/c1/2.png cannot be decoded", "UnidentifiedImageError"]),
    ("folder_image_truncated", lambda t, r: (_folder_bad(t), None),
     ["image {tmp}/pets/dog/003.png cannot be decoded"]),
    ("split_bad_label", lambda t, r: (_split_lines(t, ["c0/0.png 0", "c1/0.png 1", "c2/0.png two"]), None),
     ["{tmp}/imgs/tr.txt:3: expected '<relative path> <label>', got 'c2/0.png two'"]),
    ("split_label_out_of_range", lambda t, r: (_split_lines(t, ["c0/0.png 0", "c1/0.png 99999999999"]), None),
     ["{tmp}/imgs/tr.txt:2: label 99999999999 is out of range"]),
    ("split_path_dotdot", lambda t, r: (_split_lines(t, ["c0/0.png 0", "../secret.png 1"]), None),
     ["{tmp}/imgs/tr.txt:2: image path '../secret.png' escapes the image root"]),
    ("split_path_absolute", lambda t, r: (_split_lines(t, ["c0/0.png 0", "c1/0.png 1", "/etc/hostname 2"]), None),
     ["{tmp}/imgs/tr.txt:3: image path '/etc/hostname' escapes the image root"]),
    ("empty_class", lambda t, r: (_split_lines(t, ["c0/0.png 0", "c0/1.png 0", "c2/0.png 2"]), None),
     ["{tmp}/imgs/tr.txt: class 1 has no training images"]),
    ("imbalance_below_1", lambda t, r: (_train(r[0], t / "o", "--set", "data.imbalance=0.5"), None),
     ["data.imbalance must be >= 1, got 0.5"]),
    ("imbalance_nan", lambda t, r: (_train(r[0], t / "o", "--set", "data.imbalance=.nan"), None),
     ["data.imbalance must be >= 1, got nan"]),
    ("unknown_recipe", lambda t, r: (_train("cifar100-lt/nope", t / "o"), None),
     ["unknown recipe 'cifar100-lt/nope'"]),
    ("unknown_key_set", lambda t, r: (_train(r[0], t / "o", "--set", "stages.ce.optim.lrr=1"), None),
     ["unknown config key 'stages.ce.optim.lrr'"]),
    ("unknown_key_yaml", lambda t, r: (_train(_yaml(t, TINY.replace("runtime:", "runtme:")), t / "o"), None),
     ["unknown config key 'runtme'"]),
    ("wrong_type_set", lambda t, r: (_train(r[0], t / "o", "--set", "runtime.seed=abc"), None),
     ["runtime.seed: expected an integer, got 'abc'"]),
    ("bad_choice_set", lambda t, r: (_train(r[0], t / "o", "--set", "data.on_bad_image=ignore"), None),
     ["data.on_bad_image: 'ignore' is not one of error, skip"]),
    ("yaml_syntax", lambda t, r: (_train(_yaml(t, "name: x\nstages:\n  - {name: ce\n  - {name: lws}\n"), t / "o"), None),
     ["recipe {tmp}/r.yaml:4: invalid YAML"]),
    ("eval_truncated_checkpoint", lambda t, r: (["eval", _broken_final(t, r, truncate)], None),
     ["checkpoint {tmp}/run/lws/final.pt is unreadable (truncated"]),
    ("eval_other_num_classes", lambda t, r: (["eval", _broken_final(t, r, lambda p: swap_head(p, 7))], None),
     ["checkpoint {tmp}/run/lws/final.pt does not fit this model", "size mismatch for heads.main.fc.weight"]),
    ("eval_other_model", lambda t, r: (["eval", _broken_final(t, r, swap_model)], None),
     ["checkpoint {tmp}/run/lws/final.pt does not fit this model"]),
    ("eval_not_a_checkpoint", lambda t, r: ((t / "notes.pt").write_text("hello") and ["eval", t / "notes.pt"], None),
     ["checkpoint {tmp}/notes.pt is unreadable"]),
    ("resume_truncated_checkpoint", lambda t, r: _resume_broken(t, r, "lws/checkpoint.pt", truncate, drop="lws/final.pt"),
     ["--resume: checkpoint {run}/lws/checkpoint.pt is unreadable (truncated", "delete it to restart stage lws"]),
    ("resume_truncated_final", lambda t, r: _resume_broken(t, r, "ce/final.pt", truncate),
     ["checkpoint {run}/ce/final.pt is unreadable (truncated"]),
    ("resume_checkpoint_other_model", lambda t, r: _resume_broken(t, r, "lws/checkpoint.pt", swap_model, drop="lws/final.pt"),
     ["--resume: checkpoint {run}/lws/checkpoint.pt does not fit stage lws"]),
    ("init_from_other_num_classes", lambda t, r: _resume_broken(t, r, "ce/final.pt", lambda p: swap_head(p, 7), drop="lws"),
     ["stage lws: the weights of stage 'ce' ({run}/ce/final.pt) do not fit this model", "size mismatch"]),
    ("init_from_other_model", lambda t, r: _resume_broken(t, r, "ce/final.pt", swap_model, drop="lws"),
     ["stage lws: the weights of stage 'ce' ({run}/ce/final.pt) do not fit this model"]),
    ("resume_with_other_model", lambda t, r: _resume_broken(t, r, None, None, more=["--set", "model.backbone=resnet32"]),
     ["--resume: 'model' differs from the run in {run}/recipe.yaml"]),
    ("out_exists_without_resume", lambda t, r: (_train(r[0], copy_run(r, t)), t / "run"),
     ["output folder {run} is not empty: pass --resume to continue that run"]),
    ("out_is_a_file", lambda t, r: ((t / "f").write_text("x") and _train(r[0], t / "f"), None),
     ["output folder {tmp}/f is a file"]),
]


def _yaml(t: Path, text: str) -> Path:
    (t / "r.yaml").write_text(text)
    return t / "r.yaml"


def _split_lines(t: Path, lines: list[str]) -> list:
    recipe, imgs = file_dataset(t)
    (imgs / "tr.txt").write_text("\n".join(lines) + "\n")
    return _train(recipe, t / "o", "--data-root", t)


def _folder_bad(t: Path) -> list:
    for c, n in (("cat", 12), ("dog", 8), ("emu", 6)):
        for i in range(n):
            write_png(t / "pets" / c / f"{i:03d}.png", 30 + 50 * len(c) + i)
    data = (t / "pets" / "dog" / "003.png").read_bytes()
    (t / "pets" / "dog" / "003.png").write_bytes(data[:40])
    recipe = _yaml(t, FILES.replace(", train_split: tr.txt, test_split: te.txt", "").replace("image_root: imgs", "image_root: pets")
                   % "error")
    return _train(recipe, t / "o", "--data-root", t)


def _broken_final(t: Path, r, breaker) -> Path:
    run = copy_run(r, t)
    breaker(run / "lws" / "final.pt")
    return run / "lws" / "final.pt"


def _resume_broken(t: Path, r, target, breaker, drop=None, more=()):
    """A copy of the finished run as a crash could leave it (``drop`` removed), with ``target`` broken; then --resume."""
    run = copy_run(r, t)
    if drop:
        p = run / drop
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    if target:
        breaker(run / target)
    return _train(r[0], run, "--resume", *more), run


@pytest.mark.parametrize("setup, fragments", [pytest.param(s, f, id=i) for i, s, f in ROWS])
def test_bad_input_row(setup, fragments, tiny_run, tmp_path, capsys):
    argv, protected = setup(tmp_path, tiny_run)
    before = snapshot(protected) if protected else None
    rc, out, err = run_cli(capsys, *argv)
    fill = {"tmp": str(tmp_path), "run": str(protected)}
    one_line_error(rc, err, *[f.format(**fill) for f in fragments])
    if protected:
        assert snapshot(protected) == before  # nothing written, replaced or touched
    if argv[0] == "train" and "--resume" not in argv and not protected and "--out" in argv:
        out_dir = Path(argv[argv.index("--out") + 1])
        assert not out_dir.is_dir() or not (out_dir / "results.json").exists()


def test_matrix_covers_every_row_of_the_issue():
    ids = {i for i, _, _ in ROWS}
    assert len(ids) == len(ROWS) >= 30


# --------------------------------------------------------------------------- bad images: skip instead of error


def test_on_bad_image_skip_split_files(tmp_path, capsys):
    recipe, imgs = file_dataset(tmp_path, policy="skip", bad="truncated")
    (imgs / "c0/t1.png").write_text("not an image")  # one bad test image too
    (imgs / "c2/0.png").unlink()  # and a missing one
    with pytest.warns(UserWarning) as caught:
        rc, out, err = run_cli(capsys, "train", recipe, "--out", tmp_path / "o", "--data-root", tmp_path)
    assert rc == 0, err
    warn = [str(w.message) for w in caught if str(w.message).startswith("data.on_bad_image=skip")]
    assert len(warn) == 1 and "skipped 3 unreadable image(s)" in warn[0] and "(2 in train, 1 in test)" in warn[0], warn
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    bad = res["provenance"]["data"]["bad_images"]
    assert bad["policy"] == "skip" and bad["skipped"] == {"train": 2, "test": 1} and bad["skipped_total"] == 3
    assert any("c1/2.png cannot be decoded" in e for e in bad["examples"])
    assert res["final"]["num_images"] == 5  # 6 test images listed, 1 skipped


def test_on_bad_image_skip_folder(tmp_path, capsys):
    argv = _folder_bad(tmp_path)
    recipe = Path(argv[1])
    recipe.write_text(recipe.read_text().replace("on_bad_image: error", "on_bad_image: skip"))
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image\(s\) .*dog/003.png cannot be decoded"):
        rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, err
    bad = json.loads((tmp_path / "o" / "results.json").read_text())["provenance"]["data"]["bad_images"]
    assert bad["skipped_total"] == 1 and sum(bad["skipped"].values()) == 1


def test_on_bad_image_error_records_policy(tmp_path):
    from longtail.config import DataConfig
    from longtail.data.build import build_data

    file_dataset(tmp_path)
    cfg = DataConfig(dataset="folder", image_root="imgs", train_split="tr.txt", test_split="te.txt", image_size=8)
    assert build_data(cfg, tmp_path).source["bad_images"] == {"policy": "error"}


# --------------------------------------------------------------------------- checkpoints that would run code


def _evil_checkpoint(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    # A checkpoint in every other respect (format tag, recipe, stage), with a payload in the pickle.
    torch.save({"format": ckpt.FORMAT, "kind": "final", "stage": "ce", "model": {"w": torch.zeros(2)},
                "recipe": {}, "payload": Evil()}, path)


def test_malicious_checkpoint_is_refused(tiny_run, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    _evil_checkpoint(evil, marker)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(evil)
    msg = str(err.value)
    assert "\n" not in msg and f"checkpoint {evil} was refused" in msg and "system" in msg
    rc, out, stderr = run_cli(capsys, "eval", evil)
    one_line_error(rc, stderr, f"checkpoint {evil} was refused", "GLOBAL posix.system")
    # as the finished stage a resumed run would read, too
    run = copy_run(tiny_run, tmp_path)
    _evil_checkpoint(run / "ce" / "final.pt", marker)
    rc, out, stderr = run_cli(capsys, "train", tiny_run[0], "--out", run, "--resume")
    one_line_error(rc, stderr, f"checkpoint {run}/ce/final.pt was refused")
    assert not marker.exists()
    # the same pickle without weights_only does run code: the marker proves the test's payload is live
    torch.load(evil, weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- NaN / inf loss


class _Poison:
    """CE whose loss turns non-finite from a chosen training call on."""

    def __init__(self, value, at):
        self.value, self.at, self.calls = value, at, 0


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(value, data, tmp_path):
    from longtail.config import recipe_from_dict
    from longtail.engine.pipeline import run_recipe
    from longtail.errors import TrainingError
    from longtail.methods import METHODS
    from longtail.methods.ce import CrossEntropy

    state = {"calls": 0}
    steps = -(-len(data.train) // 32)

    class PoisonCE(CrossEntropy):
        name = "ce_poison"

        def loss(self, model, batch, g):
            state["calls"] += 1
            loss, parts = super().loss(model, batch, g)
            if state["calls"] > steps:  # from epoch 1, step 0 on: after epoch 0's last checkpoint
                loss = loss * value
            return loss, parts

    METHODS["ce_poison"] = PoisonCE
    recipe = recipe_from_dict({
        "name": "poison", "data": {"dataset": "synthetic"}, "model": {"backbone": "resnet20"},
        "runtime": {"device": "cpu", "amp": "off", "progress": False, "tensorboard": False, "checkpoint_every": 3,
                    "threads": 1},
        "stages": [{"name": "ce", "method": "ce_poison", "epochs": 3, "batch_size": 32, "augment": [{"op": "normalize"}]}],
    })
    with pytest.raises(TrainingError) as err:
        run_recipe(recipe, tmp_path, data=data)
    msg = str(err.value)
    assert "stage ce: the loss diverged" in msg and "at epoch 1 step 2" in msg and "\n" not in msg
    assert "'loss': nan" in msg or "'loss': inf" in msg
    ck = load_checkpoint(tmp_path / "ce" / "checkpoint.pt")
    assert (ck["epoch"], ck["step"]) == (1, 0)  # the last good one: the step-3 save was refused
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (tmp_path / "ce" / "final.pt").exists()
    assert not list((tmp_path / "ce").glob(".*.tmp"))


# --------------------------------------------------------------------------- a failing checkpoint write


def _half_then_enospc(real_save):
    def save(obj, f, *a, **k):
        import io

        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    return save


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_atomic({"kind": "checkpoint", "step": 1, "w": torch.arange(1000.0)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _half_then_enospc(torch.save))
    with pytest.raises(CheckpointError) as err:
        save_atomic({"kind": "checkpoint", "step": 2, "w": torch.zeros(1000)}, path)
    assert str(err.value) == f"cannot write checkpoint {path} (the previous one is kept): No space left on device"
    monkeypatch.undo()
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left


def test_training_run_that_cannot_write_a_checkpoint(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny.yaml").write_text(TINY)
    real, calls = torch.save, {"n": 0}

    def flaky(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third checkpoint of stage ce
            return _half_then_enospc(real)(obj, f, *a, **k)
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", flaky)
    rc, out, err = run_cli(capsys, "train", tmp_path / "tiny.yaml", "--out", tmp_path / "run")
    path = tmp_path / "run" / "ce" / "checkpoint.pt"
    one_line_error(rc, err, f"cannot write checkpoint {path} (the previous one is kept): No space left on device")
    ck = load_checkpoint(path)
    assert (ck["epoch"], ck["step"]) == (0, 8)  # saves at steps 4 and 8 of epoch 0, then the failed one at 12
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]


# --------------------------------------------------------------------------- SIGKILL at random moments, then --resume


def test_ten_sigkills_across_both_stages_lose_nothing(tmp_path):
    """benchmarks/kill_resume.py on tiny synthetic data: 10 SIGKILLs (some in the middle of a checkpoint write),
    a --resume after each; the final results and weights equal an uninterrupted run's, bit for bit."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kill_resume", REPO / "benchmarks" / "kill_resume.py")
    kr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kr)
    rec = kr.run(kills=10, seed=1, synthetic=True, work=tmp_path, fork=True)
    assert rec["kills_attempted"] == rec["kills_landed_mid_run"] == 10, rec["kills"]
    assert rec["stages_with_kills"] == ["ce", "lws"], rec["kills_by_stage"]
    assert rec["resumes"] == 10 and rec["checkpoints_checked"] >= 10
    assert rec["checkpoint_load_failures"] == [] and rec["temp_files_not_cleared_by_resume"] == []
    assert rec["results_identical"] and rec["differences"] == [] and rec["results_lost"] == 0
    ref = json.loads((tmp_path / "uninterrupted" / "results.json").read_text())
    got = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert got["final"]["per_class"] == ref["final"]["per_class"] and got["stages"]["ce"]["top1"] == ref["stages"]["ce"]["top1"]
    assert not list((tmp_path / "killed").glob("**/.*.tmp"))
