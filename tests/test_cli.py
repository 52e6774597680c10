"""The command line as a user meets it: stats, train/eval agreement, SIGKILL + --resume, one-line errors."""
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

TINY = """
name: tiny-cli
data: {dataset: synthetic, imbalance: 10}
model: {backbone: resnet20}
runtime: {device: cpu, amp: "off", tensorboard: false, checkpoint_every: 2}
stages:
  - name: ce
    epochs: %d
    batch_size: 32
    optim: {lr: 0.1}
    schedule: {kind: cosine, warmup_epochs: 1}
    augment: [{op: random_crop, size: 16, padding: 2}, {op: random_hflip}, {op: normalize}]
"""


def longtail(*args, env=None, **kw):
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "longtail", *map(str, args)], capture_output=True, text=True, env=e, cwd=REPO, **kw)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("longtail: error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("dataset,imbalance,total,groups", [
    ("cifar100-lt", 100, 10847, {"many": 35, "medium": 35, "few": 30}),
    ("cifar100-lt", 50, 12608, {"many": 41, "medium": 41, "few": 18}),
    ("cifar100-lt", 10, 19573, {"many": 69, "medium": 31, "few": 0}),
    ("cifar10-lt", 100, 12406, None),
])
def test_data_stats_needs_no_archive(dataset, imbalance, total, groups, tmp_path):
    p = longtail("data", "stats", dataset, "--imbalance", imbalance, "--json", env={"LONGTAIL_DATA": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["num_train"] == total == sum(s["counts"])
    assert len(s["counts"]) == s["num_classes"]
    if groups:
        assert s["groups"] == groups


def test_recipes_lists_shipped_recipes():
    p = longtail("recipes")
    assert {"cifar100-lt/ce", "cifar100-lt/cbs", "cifar10-lt/ce", "cifar10-lt/cbs"} <= set(p.stdout.split())


def test_bad_inputs_give_one_line_errors(tmp_path):
    assert_one_line_error(longtail("train", "cifar100-lt/ce", "--data-root", tmp_path / "missing", "--out", tmp_path / "o1"),
                          "data root", "missing", "does not exist")
    assert_one_line_error(longtail("train", "cifar100-lt/nope"), "unknown recipe 'cifar100-lt/nope'")
    assert_one_line_error(longtail("train", "cifar100-lt/ce", "--set", "stages.ce.optim.lrr=1"), "'stages.ce.optim.lrr'")
    assert_one_line_error(longtail("data", "stats", "cifar100-lt", "--imbalance", "0.5"), "data.imbalance must be >= 1")
    root = tmp_path / "corrupt"
    root.mkdir()
    (root / "cifar-100-python.tar.gz").write_bytes(gzip.compress(b"not a tar file at all" * 100)[:300])
    assert_one_line_error(longtail("train", "cifar100-lt/ce", "--data-root", root, "--out", tmp_path / "o2"),
                          "cifar-100-python.tar.gz")
    assert_one_line_error(longtail("eval", tmp_path / "nothing.pt"), "nothing.pt", "does not exist")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 50)
    assert_one_line_error(longtail("eval", truncated), "trunc.pt")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "tiny.yaml").write_text(TINY % 6)
    p = longtail("train", d / "tiny.yaml", "--out", d / "run")
    assert p.returncode == 0, p.stderr
    # the progress bar reached the end with a rate (s/it when a loaded machine runs under a step a second)
    assert re.search(r"\[ce\] \[#{20}\] \d+/\d+ \S+ \d+\.\d\d(it/s|s/it)", p.stderr), p.stderr[-300:]
    assert "top1" in p.stdout and "many" in p.stdout and "few" in p.stdout  # the summary table
    return d, json.loads((d / "run" / "results.json").read_text())


def test_train_shows_progress_and_eval_agrees(full_run):
    d, res = full_run
    p = longtail("eval", d / "run" / "ce" / "final.pt")
    assert p.returncode == 0, p.stderr
    ev = json.loads(p.stdout)
    assert "medium" in p.stderr  # the human-readable table
    for k in ("top1", "top5", "many", "medium", "few", "per_class"):
        assert ev[k] == res["final"][k], k
    assert res["final"]["many"] is None  # synthetic IF=10 has no class above 100 images

    p = longtail("eval", d / "run" / "ce" / "final.pt", "--split", "train")
    assert p.returncode == 0, p.stderr
    tr = json.loads(p.stdout)
    from longtail.engine.checkpoint import load_checkpoint

    counts = load_checkpoint(d / "run" / "ce" / "final.pt")["data"]["train_counts"]
    assert tr["num_images"] == sum(counts) and len(tr["per_class"]) == len(counts)
    # top1 counts images, so on the long-tailed training set it is the count-weighted mean of per_class
    by_count = sum(a * n for a, n in zip(tr["per_class"], counts)) / sum(counts)
    assert tr["top1"] == pytest.approx(by_count, abs=0.01)


def test_sigkill_mid_epoch_then_resume_matches(full_run, tmp_path):
    d, res = full_run
    (tmp_path / "tiny.yaml").write_text(TINY % 6)
    out = tmp_path / "run"
    e = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "longtail", "train", tmp_path / "tiny.yaml", "--out", out],
                            env=e, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = out / "ce" / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ck.exists():
            try:
                state = torch.load(ck, weights_only=True)
            except Exception:
                state = None
            if state and state["epoch"] >= 2 and state["step"] > 0:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "ce" / "final.pt").exists(), "the run finished before it could be killed"
    p = longtail("train", tmp_path / "tiny.yaml", "--out", out, "--resume")
    assert p.returncode == 0, p.stderr
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["final"]["per_class"] == res["final"]["per_class"]
    assert resumed["final"]["top1"] == res["final"]["top1"]


def test_train_prints_one_table_with_a_row_per_stage():
    """The summary a multi-stage run prints: one header, then each stage's row (no header per stage)."""
    from longtail.cli import _table

    text = _table({"ce": {"top1": 39.771, "top5": 70.0, "many": 66.3, "medium": 39.1, "few": 9.6},
                   "logit_adjust": {"top1": 43.98, "top5": 72.5, "many": None, "medium": 44.0, "few": 28.0}})
    lines = text.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["top1", "top5", "many", "medium", "few"]
    assert lines[1].split() == ["ce", "39.77", "70.00", "66.30", "39.10", "9.60"]
    assert lines[2].split() == ["logit_adjust", "43.98", "72.50", "n/a", "44.00", "28.00"]
