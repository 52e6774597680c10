"""The engine end to end on a tiny synthetic long-tailed set: learning, resume, determinism, BN modes."""
import json

import pytest
import torch

from longtail.config import Recipe, StageConfig, recipe_from_dict
from longtail.data.synthetic import synthetic_bundle
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.pipeline import run_recipe
from longtail.methods import METHODS
from longtail.methods.ce import CrossEntropy
from longtail.errors import ConfigError


def tiny_recipe(epochs=4, **stage) -> Recipe:
    return recipe_from_dict({
        "name": "tiny",
        "data": {"dataset": "synthetic"},
        "model": {"backbone": "resnet20"},
        "runtime": {"device": "cpu", "amp": "off", "progress": False, "tensorboard": False, "checkpoint_every": 4},
        "stages": [{
            "name": "ce", "method": stage.pop("method", "ce"), "epochs": epochs, "batch_size": 32,
            "optim": {"lr": 0.1, "weight_decay": 5e-4},
            "schedule": {"kind": "cosine", "warmup_epochs": 1},
            "augment": [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"}, {"op": "normalize"}],
            **stage,
        }],
    })


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("full")
    return out, run_recipe(tiny_recipe(), out, data=data)


def test_trains_and_reports_groups(uninterrupted, data):
    out, res = uninterrupted
    final = res["final"]
    assert final["top1"] > 50  # 6 classes: chance is 16.7%
    assert len(final["per_class"]) == 6 and final["num_images"] == len(data.test)
    assert final["top1"] == pytest.approx(sum(final["per_class"]) / 6, abs=1e-3)  # balanced test set
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["final"]["top1"] == final["top1"] and set(on_disk["stages"]) == {"ce"}
    prov = on_disk["provenance"]
    for key in ("commit", "config_hash", "seed", "device", "torch", "wall_seconds"):
        assert key in prov
    lines = [json.loads(l) for l in (out / "ce" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in l for l in lines) and lines[-1]["test_top1"] == final["top1"]


def test_same_seed_same_result(uninterrupted, data, tmp_path):
    _, res = uninterrupted
    again = run_recipe(tiny_recipe(), tmp_path, data=data)
    assert again["final"]["per_class"] == res["final"]["per_class"]


class Crash(RuntimeError):
    pass


class CrashingCE(CrossEntropy):
    """Dies at a chosen training step, like a killed process (nothing after the last checkpoint survives)."""

    name = "ce_crash"
    crash_at = None
    calls = 0

    def loss(self, model, batch, g):
        CrashingCE.calls += 1
        if CrashingCE.calls == CrashingCE.crash_at:
            raise Crash()
        return super().loss(model, batch, g)


def test_resume_after_crash_mid_epoch_is_exact(uninterrupted, data, tmp_path):
    METHODS["ce_crash"] = CrashingCE
    steps_per_epoch = -(-len(data.train) // 32)
    CrashingCE.calls, CrashingCE.crash_at = 0, steps_per_epoch + 6  # epoch 1, after the step-4 checkpoint
    recipe = tiny_recipe(method="ce_crash")
    with pytest.raises(Crash):
        run_recipe(recipe, tmp_path, data=data)
    ck = load_checkpoint(tmp_path / "ce" / "checkpoint.pt")
    assert (ck["epoch"], ck["step"]) == (1, 4)
    with pytest.raises(ConfigError, match="not empty"):
        run_recipe(recipe, tmp_path, data=data)
    CrashingCE.crash_at = None
    res = run_recipe(recipe, tmp_path, data=data, resume=True)
    full_out, full = uninterrupted
    assert res["final"]["per_class"] == full["final"]["per_class"]
    a = load_checkpoint(full_out / "ce" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "ce" / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The crash and the resume are two segments in the record: the second starts at the checkpoint's step.
    segs = res["stages"]["ce"]["segments"]
    assert [s["start_step"] for s in segs] == [0, steps_per_epoch + 4]
    assert segs[1]["end_step"] == 4 * steps_per_epoch and segs[1]["steps"] == 3 * steps_per_epoch - 4
    assert res["stages"]["ce"]["wall_seconds_total"] == pytest.approx(sum(s["wall_seconds"] for s in segs), abs=0.02)
    assert res["provenance"]["segments"] == 2


def test_resume_with_an_edited_stage_retrains_it_and_keeps_the_old(uninterrupted, data, tmp_path):
    import shutil

    out, res = uninterrupted
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    again = run_recipe(tiny_recipe(epochs=5), copy, data=data, resume=True)
    assert again["final"]["epochs"] == 5
    replaced = [p.name for p in copy.iterdir() if p.name.startswith("ce.replaced-")]
    assert len(replaced) == 1 and (copy / replaced[0] / "final.pt").exists()
    assert any(p.name.startswith("recipe.replaced-") for p in copy.iterdir())
    bad = tiny_recipe()
    bad.runtime.seed = 7
    with pytest.raises(ConfigError, match="runtime.seed differs"):
        run_recipe(bad, copy, data=data, resume=True)


def test_finished_run_resumes_to_same_results(uninterrupted, data):
    out, res = uninterrupted
    again = run_recipe(tiny_recipe(), out, data=data, resume=True)
    assert again["final"]["per_class"] == res["final"]["per_class"]


def test_class_balanced_stage_and_best_val_selection(data, tmp_path):
    recipe = tiny_recipe(epochs=2, sampler="class_balanced", samples_per_class=4, select="best_val")
    recipe.runtime.eval_every = 1
    res = run_recipe(recipe, tmp_path, data=data)
    sel = res["final"]["selected"]
    assert sel["rule"] == "best_val" and sel["epoch"] in (1, 2)
    assert res["final"]["val"]["top1"] is not None


class TwoFeeds(CrossEntropy):
    """Two batch streams and two heads in one step, as BalanceAux needs."""

    name = "two_feeds"
    labels_seen = {"cb": [], "inst": []}

    def heads(self):
        return {"main": self.ctx.num_classes, "aux": self.ctx.num_classes}

    def feeds(self):
        from longtail.methods import Feed

        return {"cb": Feed("class_balanced"), "inst": Feed("instance", batch_size=16)}

    def loss(self, model, batch, g):
        import torch.nn.functional as F

        for k in batch:
            TwoFeeds.labels_seen[k].append(batch[k].y.clone())
        cb, inst = batch["cb"], batch["inst"]
        out = model(torch.cat([cb.x, inst.x]))
        n = len(cb.y)
        l_main = F.cross_entropy(out["main"][:n].float(), cb.y)
        l_aux = F.cross_entropy(out["aux"][n:].float(), inst.y)
        return 0.5 * l_main + l_aux, {"main": l_main.detach(), "aux": l_aux.detach()}


def test_engine_drives_several_feeds_and_heads(data, tmp_path):
    METHODS["two_feeds"] = TwoFeeds
    res = run_recipe(tiny_recipe(epochs=2, method="two_feeds", samples_per_class=4), tmp_path, data=data)
    cb = torch.cat(TwoFeeds.labels_seen["cb"])
    inst = torch.cat(TwoFeeds.labels_seen["inst"])
    assert len(TwoFeeds.labels_seen["inst"][0]) == 16 and len(TwoFeeds.labels_seen["cb"][0]) == 32
    cb_counts = torch.bincount(cb, minlength=6).float()
    assert cb_counts.max() / cb_counts.min() < 1.5  # class-balanced stream (the tail is 10x rarer under instance sampling)
    inst_counts = torch.bincount(inst, minlength=6).float()
    assert inst_counts[0] / inst_counts[5] > 4  # instance stream follows the 10:1 tail
    logged = [json.loads(l) for l in (tmp_path / "ce" / "metrics.jsonl").read_text().splitlines()]
    assert any("main" in l and "aux" in l for l in logged)
    assert res["final"]["top1"] > 30


def test_file_backed_folder_dataset_trains_with_prefetch(tmp_path):
    """A user's folder of class sub-folders, decoded by PIL one step ahead of the compute."""
    import numpy as np
    from PIL import Image

    from longtail.data.build import build_data
    from longtail.engine.loop import Feeder

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c, n in enumerate([40, 20, 10, 6]):
        (root / f"class{c}").mkdir(parents=True)
        colour = rng.integers(0, 255, 3)
        for i in range(n):
            px = np.clip(colour + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / f"class{c}" / f"{i:03d}.png")
    recipe = tiny_recipe(epochs=6)
    recipe.data.dataset, recipe.data.image_root, recipe.data.image_size = "folder", str(root), 16
    data = build_data(recipe.data, tmp_path)
    assert not isinstance(data.train.store, type(synthetic_bundle().train.store))  # file-backed

    loads = []
    original = Feeder.fetch

    def spy(self, index, g, key):
        loads.append(key in self.ahead and np.array_equal(self.ahead[key][0], index))
        return original(self, index, g, key)

    Feeder.fetch = spy
    try:
        res = run_recipe(recipe, tmp_path / "run", data=data)
    finally:
        Feeder.fetch = original
    assert sum(loads) == len(loads) - 6  # every step but each epoch's first came from the prefetch
    # One colour per class: the trained model must beat always answering the largest class (3 of 9).
    assert res["final"]["num_images"] == len(data.test) and res["final"]["top1"] > 100 * 3 / 9 + 1


def test_divergence_is_a_clear_error_and_keeps_checkpoints(data, tmp_path):
    from longtail.errors import TrainingError

    recipe = tiny_recipe(epochs=2, optim={"lr": 1e12, "weight_decay": 0.0})
    with pytest.raises(TrainingError, match=r"stage ce: the loss diverged .* lower stages.ce.optim.lr"):
        run_recipe(recipe, tmp_path, data=data)
    assert (tmp_path / "recipe.yaml").exists()


def test_read_segments_splits_at_each_start_and_sums_from_the_lines_between(tmp_path):
    import json

    from longtail.engine.progress import read_segments

    lines = [{"step": 0, "time": 100.0, "event": "segment", "commit": "aaa", "host": "h"},
             {"step": 10, "time": 110.0, "loss": 1.0}, {"step": 20, "time": 130.0, "loss": 0.9},
             {"step": 16, "time": 500.0, "event": "segment", "commit": "bbb", "host": "h"},
             {"step": 40, "time": 560.5, "loss": 0.5}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{\"step\": 4")  # a line cut by a kill
    segs = read_segments(path)
    assert [(s["commit"], s["start_step"], s["end_step"], s["steps"], s["wall_seconds"]) for s in segs] == [
        ("aaa", 0, 20, 20, 30.0), ("bbb", 16, 40, 24, 60.5)]
