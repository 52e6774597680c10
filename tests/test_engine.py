"""The engine end to end on a tiny synthetic long-tailed set: learning, resume, determinism, BN modes."""
import dataclasses
import hashlib
import json
import platform
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

import longtail
from longtail.config import Recipe, StageConfig, recipe_from_dict
from longtail.data.synthetic import synthetic_bundle
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.context import StageContext
from longtail.engine.pipeline import run_recipe
from longtail.engine.runtime import setup_runtime
from longtail.methods import METHODS, get_method
from longtail.methods.ce import CrossEntropy
from longtail.errors import ConfigError
from longtail.models.classifier import load_exported

REPO = Path(__file__).resolve().parents[1]


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


def git_state() -> str:
    """The commit as provenance should name it, by hand: HEAD, '-dirty' if tracked code outside results/ changed."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)results"], capture_output=True, text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


def hand_logits(recipe: Recipe, data, state: dict, split) -> torch.Tensor:
    """Logits of a whole split from saved weights, outside the engine: the stage's eval preprocessing, one batch."""
    stage = recipe.stages[0]
    ctx = StageContext(recipe, stage, data, setup_runtime(recipe.runtime))
    method = get_method(stage.method)(ctx)
    model = method.build_model()
    load_exported(model, state)
    u8, _ = split.load(np.arange(len(split)))
    with torch.no_grad():
        return method.predict(model.eval(), ctx.augment(stage.eval_augment)(u8, None))


def hand_top1(recipe: Recipe, data, state: dict, split) -> float:
    hit = hand_logits(recipe, data, state, split).argmax(1) == torch.as_tensor(split.labels)
    return 100 * hit.double().mean().item()


def beats_constant_guess(top1: float, labels) -> float:
    """The score a model must beat to show it learned: the best constant answer (always the test set's most
    frequent class) plus 5 binomial standard deviations of that guess on this many images, which luck
    does not reach (p < 1e-6)."""
    counts = np.bincount(labels)
    p, n = counts.max() / len(labels), len(labels)
    bar = 100 * (p + 5 * np.sqrt(p * (1 - p) / n))
    assert top1 > bar, f"top-1 {top1} does not beat the constant guess {100 * p:.1f}% by 5 sd ({bar:.1f}%)"
    return bar


RUN_GIT = {}  # the code state just before and after the module's reference run, for its provenance


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("full")
    RUN_GIT["before"], t0 = git_state(), time.time()
    res = run_recipe(tiny_recipe(), out, data=data)
    RUN_GIT["after"], RUN_GIT["seconds"], RUN_GIT["t0"] = git_state(), time.time() - t0, t0
    return out, res


def test_trains_and_reports_groups(uninterrupted, data):
    out, res = uninterrupted
    final = res["final"]
    beats_constant_guess(final["top1"], data.test.labels)  # 6 balanced classes, 120 images: 16.7% + 5 sd = 33.7%
    assert len(final["per_class"]) == 6 and final["num_images"] == len(data.test)
    # The reported numbers are those of the saved weights, recomputed outside the engine.
    logits = hand_logits(tiny_recipe(), data, load_checkpoint(out / "ce" / "final.pt")["model"], data.test)
    hit = (logits.argmax(1) == torch.as_tensor(data.test.labels)).double()
    per_class = [100 * hit[torch.as_tensor(data.test.labels) == c].mean().item() for c in range(6)]
    assert final["per_class"] == pytest.approx(per_class, abs=1e-3)
    assert final["top1"] == pytest.approx(100 * hit.mean().item(), abs=1e-3)
    assert final["top1"] == pytest.approx(sum(final["per_class"]) / 6, abs=1e-3)  # balanced test set
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["final"]["top1"] == final["top1"] and set(on_disk["stages"]) == {"ce"}
    lines = [json.loads(l) for l in (out / "ce" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in l for l in lines) and lines[-1]["test_top1"] == final["top1"]


def test_provenance_values(uninterrupted, data):
    out, res = uninterrupted
    prov = json.loads((out / "results.json").read_text())["provenance"]
    assert prov["commit"] in (RUN_GIT["before"], RUN_GIT["after"])  # the code that ran (HEAD, or HEAD-dirty)
    assert len(prov["commit"].removesuffix("-dirty")) == 40
    recipe = tiny_recipe()
    assert prov["config_hash"] == recipe.hash() and prov["recipe"] == "tiny" and prov["seed"] == recipe.runtime.seed == 0
    # The fresh stage's init seed, derived by hand: blake2b-64 of repr((seed, "init", stage)), 31 bits.
    digest = hashlib.blake2b(repr((0, "init", "ce")).encode(), digest_size=8).digest()
    derived = int.from_bytes(digest, "little") & ((1 << 63) - 1) & 0x7FFFFFFF
    assert prov["init_seeds"] == {"ce": derived} and res["stages"]["ce"]["init_seed"] == derived
    assert prov["device"] == f"cpu ({torch.get_num_threads()} threads), fp32, world 1" and prov["world_size"] == 1
    assert (prov["torch"], prov["python"], prov["longtail"], prov["host"]) == (
        torch.__version__, platform.python_version(), longtail.__version__, platform.node())
    assert prov["data"] == data.source and prov["segments"] == 1
    assert 0 < prov["wall_seconds"] <= RUN_GIT["seconds"] + 0.01
    finished = datetime.strptime(prov["finished"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert RUN_GIT["t0"] - 1 <= finished <= RUN_GIT["t0"] + RUN_GIT["seconds"] + 1
    assert prov["wall_seconds_total"] == pytest.approx(res["stages"]["ce"]["wall_seconds_total"], abs=0.01)


def test_same_seed_same_result(uninterrupted, data, tmp_path):
    _, res = uninterrupted
    again = run_recipe(tiny_recipe(), tmp_path, data=data)
    assert again["final"]["per_class"] == res["final"]["per_class"]


class Crash(RuntimeError):
    pass


def crashing(method: type, name: str) -> type:
    """``method`` that dies at a chosen training step (``crash_at``, counted in ``calls``), like a killed process:
    nothing after the last checkpoint survives. Registered as ``name``."""

    class Crashing(method):
        crash_at, calls = None, 0

        def loss(self, model, batch, g):
            Crashing.calls += 1
            if Crashing.calls == Crashing.crash_at:
                raise Crash()
            return super().loss(model, batch, g)

    Crashing.name, Crashing.__name__ = name, f"Crashing{method.__name__}"
    METHODS[name] = Crashing
    return Crashing


CrashingCE = crashing(CrossEntropy, "ce_crash")


def test_resume_after_crash_mid_epoch_is_exact(uninterrupted, data, tmp_path):
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


class SpoiltLastEpochCE(CrossEntropy):
    """CE that learns, then in its last epoch trains hard on wrong labels (all class 0): the last epoch is not the best."""

    name = "ce_spoilt"
    calls, spoil_after = 0, None

    def loss(self, model, batch, g):
        SpoiltLastEpochCE.calls += 1
        if SpoiltLastEpochCE.calls <= SpoiltLastEpochCE.spoil_after:
            return super().loss(model, batch, g)
        b = batch["x"]
        loss, parts = super().loss(model, {"x": dataclasses.replace(b, y=torch.zeros_like(b.y))}, g)
        return 10 * loss, parts


def val_by_epoch(stage_dir: Path) -> dict[int, float]:
    lines = [json.loads(l) for l in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    return {l["epoch"]: l["val_top1"] for l in lines if "val_top1" in l}


def test_class_balanced_stage_and_best_val_selection(data, tmp_path):
    METHODS["ce_spoilt"] = SpoiltLastEpochCE
    steps_per_epoch = -(-len(data.train) // 32)
    SpoiltLastEpochCE.calls, SpoiltLastEpochCE.spoil_after = 0, 4 * steps_per_epoch
    recipe = tiny_recipe(epochs=5, method="ce_spoilt", sampler="class_balanced", samples_per_class=4, select="best_val",
                         optim={"lr": 0.05, "weight_decay": 5e-4})
    recipe.runtime.eval_every = 1
    res = run_recipe(recipe, tmp_path, data=data)
    logged = val_by_epoch(tmp_path / "ce")
    assert sorted(logged) == [1, 2, 3, 4, 5]  # every epoch's validation score is on record, the last one included
    best = max(logged, key=lambda e: (logged[e], e))
    assert logged[5] < logged[best]  # the spoilt last epoch: selection must go back to an earlier one
    sel = res["final"]["selected"]
    assert sel == {"epoch": best, "rule": "best_val"} and res["final"]["val"]["top1"] == logged[best]
    # The weights kept are that epoch's: final.pt holds best.pt's, not the last epoch's (checkpoint.pt) ...
    final = load_checkpoint(tmp_path / "ce" / "final.pt")["model"]
    kept, last = load_checkpoint(tmp_path / "ce" / "best.pt"), load_checkpoint(tmp_path / "ce" / "checkpoint.pt")
    assert kept["epoch"] == best and last["epoch"] == 5
    assert all(torch.equal(final[k], kept["model"][k]) for k in final)
    assert not all(torch.equal(final[k], last["model"][k]) for k in final)
    # ... and re-scoring both outside the engine gives the numbers logged for those epochs.
    assert hand_top1(recipe, data, final, data.val) == pytest.approx(logged[best], abs=1e-3)
    assert hand_top1(recipe, data, last["model"], data.val) == pytest.approx(logged[5], abs=1e-3)
    assert hand_top1(recipe, data, final, data.test) == pytest.approx(res["final"]["top1"], abs=1e-3)


def test_best_val_ties_go_to_the_epoch_whose_weights_are_kept(data, tmp_path, monkeypatch):
    """Scripted validation scores 40, 60, 60, 30: epochs 2 and 3 tie. best.pt is rewritten on a tie, so the
    selection must name epoch 3 and report epoch 3's weights (naming epoch 2 with epoch 3's weights was the bug)."""
    from longtail.engine import finish, loop

    scripted, states, real = iter([40.0, 60.0, 60.0, 30.0]), [], loop.evaluate_split

    def scripted_val(method, model, ctx, split):
        metrics = real(method, model, ctx, split)
        if split is data.val and len(states) < 4:  # the four end-of-epoch scores; later calls re-score the pick
            states.append({k: v.clone() for k, v in model.state_dict().items()})
            metrics["top1"] = next(scripted)
        return metrics

    for where in (loop, finish):  # epoch ends, then the last epoch's score in finish_stage
        monkeypatch.setattr(where, "evaluate_split", scripted_val)
    recipe = tiny_recipe(epochs=4, select="best_val")
    recipe.runtime.eval_every = 1
    res = run_recipe(recipe, tmp_path, data=data)
    assert val_by_epoch(tmp_path / "ce") == {1: 40.0, 2: 60.0, 3: 60.0, 4: 30.0}
    assert res["final"]["selected"] == {"epoch": 3, "rule": "best_val"}
    final = load_checkpoint(tmp_path / "ce" / "final.pt")["model"]
    assert all(torch.equal(final[k], states[2][k]) for k in final)
    assert not all(torch.equal(final[k], states[1][k]) for k in final)


class TwoFeeds(CrossEntropy):
    """Two batch streams and two heads in one step, as BalanceAux needs."""

    name = "two_feeds"
    labels_seen = {"cb": [], "inst": []}

    def head_widths(self):
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
    res = run_recipe(tiny_recipe(epochs=4, method="two_feeds", samples_per_class=4), tmp_path, data=data)
    cb = torch.cat(TwoFeeds.labels_seen["cb"])
    inst = torch.cat(TwoFeeds.labels_seen["inst"])
    assert len(TwoFeeds.labels_seen["inst"][0]) == 16 and len(TwoFeeds.labels_seen["cb"][0]) == 32
    cb_counts = torch.bincount(cb, minlength=6).float()
    assert cb_counts.max() / cb_counts.min() < 1.5  # class-balanced stream (the tail is 10x rarer under instance sampling)
    inst_counts = torch.bincount(inst, minlength=6).float()
    assert inst_counts[0] / inst_counts[5] > 4  # instance stream follows the 10:1 tail
    logged = [json.loads(l) for l in (tmp_path / "ce" / "metrics.jsonl").read_text().splitlines()]
    assert any("main" in l and "aux" in l for l in logged)
    beats_constant_guess(res["final"]["top1"], data.test.labels)  # 16.7% + 5 sd = 33.7% on 120 images


def test_file_backed_folder_dataset_trains_with_prefetch(tmp_path):
    """A user's folder of class sub-folders, decoded by PIL one step ahead of the compute."""
    import numpy as np
    from PIL import Image

    from longtail.data.build import build_data
    from longtail.engine.feeder import BatchLoader as Feeder

    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c, n in enumerate([120, 60, 30, 18]):
        (root / f"class{c}").mkdir(parents=True)
        colour = rng.integers(0, 255, 3)
        for i in range(n):
            px = np.clip(colour + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / f"class{c}" / f"{i:03d}.png")
    recipe = tiny_recipe(epochs=8)
    recipe.data.dataset, recipe.data.image_root, recipe.data.image_size = "folder", str(root), 16
    data = build_data(recipe.data, tmp_path)
    assert not isinstance(data.train.store, type(synthetic_bundle().train.store))  # file-backed

    loads = []
    original = Feeder.fetch

    def spy(self, stream, step, g):
        loads.append((stream, step) in self.prefetched)
        return original(self, stream, step, g)

    Feeder.fetch = spy
    try:
        res = run_recipe(recipe, tmp_path / "run", data=data)
    finally:
        Feeder.fetch = original
    assert sum(loads) == len(loads) - 8  # every step but each epoch's first came from the prefetch
    # One colour per class: the trained model must beat always answering the largest class by 5 sd.
    assert res["final"]["num_images"] == len(data.test)
    beats_constant_guess(res["final"]["top1"], data.test.labels)


def test_divergence_is_a_clear_error_and_keeps_checkpoints(data, tmp_path):
    from longtail.errors import TrainingError

    recipe = tiny_recipe(epochs=2, optim={"lr": 1e12, "weight_decay": 0.0})
    with pytest.raises(TrainingError, match=r"stage ce: the loss diverged .* lower stages.ce.optim.lr"):
        run_recipe(recipe, tmp_path, data=data)
    assert (tmp_path / "recipe.yaml").exists()


def test_read_segments_splits_at_each_start_and_sums_from_the_lines_between(tmp_path):
    import json

    from longtail.engine.metric_log import read_segments

    lines = [{"step": 0, "time": 100.0, "event": "segment", "commit": "aaa", "host": "h"},
             {"step": 10, "time": 110.0, "loss": 1.0}, {"step": 20, "time": 130.0, "loss": 0.9},
             {"step": 16, "time": 500.0, "event": "segment", "commit": "bbb", "host": "h"},
             {"step": 40, "time": 560.5, "loss": 0.5}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{\"step\": 4")  # a line cut by a kill
    segs = read_segments(path)
    assert [(s["commit"], s["start_step"], s["end_step"], s["steps"], s["wall_seconds"]) for s in segs] == [
        ("aaa", 0, 20, 20, 30.0), ("bbb", 16, 40, 24, 60.5)]


def test_code_hash_and_dirty_check_cover_new_files(tmp_path):
    from longtail.engine.runtime import code_hash, git_commit

    (tmp_path / "longtail").mkdir()
    (tmp_path / "recipes").mkdir()
    (tmp_path / "longtail" / "a.py").write_text("x = 1\n")
    (tmp_path / "recipes" / "r.yaml").write_text("a: 1\n")
    h0 = code_hash(tmp_path)
    (tmp_path / "notes.txt").write_text("not code")
    assert code_hash(tmp_path) == h0
    (tmp_path / "longtail" / "a.py").write_text("x = 2\n")
    h1 = code_hash(tmp_path)
    assert h1 != h0
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], capture_output=True, text=True, check=True)  # noqa: E731
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
    head = git("rev-parse", "HEAD").stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "out.json").write_text("{}")  # outputs do not mark the code dirty
    assert git_commit(tmp_path) == head
    (tmp_path / "longtail" / "new_module.py").write_text("y = 1\n")  # an uncommitted new module does
    assert git_commit(tmp_path) == head + "-dirty"


def test_run_level_provenance_names_every_segments_code(uninterrupted):
    from longtail.engine.runtime import code_hash

    _, res = uninterrupted
    prov = res["provenance"]
    assert prov["code_hash"] == code_hash() and len(prov["code_hash"]) == 16
    assert prov["trained_by"] == [{"commit": prov["commit"], "code_hash": prov["code_hash"]}]
    assert res["stages"]["ce"]["segments"][0]["code"] == prov["code_hash"]
