"""Reliability beyond bad input: images skipped by policy, checkpoints that would run code, a non-finite loss,
failed checkpoint writes, and SIGKILLs at chosen training steps followed by --resume (benchmarks/kill_resume.py)."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from longtail.engine import checkpoint as ckpt
from longtail.engine.checkpoint import load_checkpoint, save_atomic
from longtail.errors import CheckpointError
from reliability_kit import (  # noqa: F401  (restore_threads and tiny_run are fixtures)
    REPO, TINY, copy_run, file_dataset, folder_with_bad_image, one_line_error, restore_threads, run_cli, tiny_run,
)


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
    argv = folder_with_bad_image(tmp_path)
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


# --------------------------------------------------------------------------- SIGKILL at chosen training steps, then --resume


def kill_resume():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kill_resume", REPO / "benchmarks" / "kill_resume.py")
    kr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kr)
    return kr


def test_kill_points_spread_over_each_stage_training_steps():
    import random

    pick = kill_resume().pick_kill_points
    points = pick({"ce": 85, "tau": 0, "lws": 22}, 12, random.Random(0))
    assert [p["stage"] for p in points] == ["ce"] * 6 + ["lws"] * 6  # split evenly; a stage without training has none
    for stage, n in (("ce", 85), ("lws", 22)):
        mine = [p for p in points if p["stage"] == stage]
        assert all(p["of"] == n for p in mine)
        # In order, one step in each sixth of the stage: bin j is steps [j*n//6, (j+1)*n//6).
        assert [j * n // 6 <= p["step"] < (j + 1) * n // 6 for j, p in enumerate(mine)] == [True] * 6
    assert [p["stage"] for p in pick({"ce": 85, "lws": 22}, 5, random.Random(0))] == ["ce"] * 3 + ["lws"] * 2  # spare: earlier
    assert pick({"ce": 85, "lws": 22}, 12, random.Random(0)) == points != pick({"ce": 85, "lws": 22}, 12, random.Random(1))
    # Uniform within its bin: over seeds, every step of the stage is drawn, the first and the last included.
    drawn = {p["step"] for seed in range(300) for p in pick({"lws": 22}, 6, random.Random(seed))}
    assert drawn == set(range(22))
    # Fewer steps than kills: bins [0,0) [0,1) [1,1) [1,2) [2,3) -> steps 0, 0, 1, 1, 2, never past the stage.
    assert [p["step"] for p in pick({"ce": 3}, 5, random.Random(0))] == [0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match="no stage has training steps"):
        pick({"tau": 0}, 3, random.Random(0))


def test_a_kill_fires_once_the_target_step_has_begun():
    reached = kill_resume().reached
    order, target = ["ce", "lws"], {"stage": "ce", "step": 10, "of": 52}
    assert not reached(None, target, order)
    assert not reached({"stage": "ce", "phase": "start-up", "step": None, "of": None}, target, order)
    assert not reached({"stage": "ce", "phase": "train", "step": 9, "of": 52}, target, order)
    assert reached({"stage": "ce", "phase": "train", "step": 10, "of": 52}, target, order)
    assert reached({"stage": "ce", "phase": "writing checkpoint.pt", "step": 12, "of": 52}, target, order)
    assert reached({"stage": "lws", "phase": "start-up", "step": None, "of": None}, target, order)  # already past it
    assert not reached({"stage": "ce", "phase": "evaluation", "step": 51, "of": 52}, {"stage": "lws", "step": 0}, order)


def test_ten_sigkills_across_both_stages_lose_nothing(tmp_path):
    """benchmarks/kill_resume.py on tiny synthetic data: 10 SIGKILLs at training steps spread over both stages
    (some in the middle of a checkpoint write), a --resume after each; the final results and weights equal an
    uninterrupted run's, bit for bit."""
    rec = kill_resume().run(kills=10, seed=1, synthetic=True, work=tmp_path, fork=True)
    assert rec["stage_steps"]["ce"]["steps"] == 4 * 13 and rec["stage_steps"]["lws"]["steps"] == 6 * 13  # 403 images, batch 32
    assert rec["kills_attempted"] == rec["kills_landed_mid_run"] == 10, rec["kills"]
    assert rec["kills_by_stage"] == {"ce": 5, "lws": 5} and rec["stages_with_kills"] == ["ce", "lws"]
    # Each kill cut short a training step (or a checkpoint write between steps) of the stage it aimed at, at or
    # after its target step; seed 1's latest targets are 10 steps before their stage's end (ce 42/52, lws 68/78).
    for k in rec["kills"]:
        assert k["reached_target"] and k["stage"] == k["target"]["stage"], k
        assert k["interrupted"]["step"] >= k["target"]["step"] and k["in_training"], k
    assert rec["kills_in_training_steps"] == 10 and rec["kills_during_checkpoint_write"] >= 1
    assert rec["resumes"] == 10 and rec["checkpoints_checked"] >= 10
    assert rec["checkpoint_load_failures"] == [] and rec["temp_files_not_cleared_by_resume"] == []
    assert rec["results_identical"] and rec["differences"] == [] and rec["results_lost"] == 0
    ref = json.loads((tmp_path / "uninterrupted" / "results.json").read_text())
    got = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert got["final"]["per_class"] == ref["final"]["per_class"] and got["stages"]["ce"]["top1"] == ref["stages"]["ce"]["top1"]
    assert not list((tmp_path / "killed").glob("**/.*.tmp"))
