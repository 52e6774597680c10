"""DDP evaluation and post-hoc fits: every rank scores a share, on rank 0's weights, each image once.

``torchrun --nproc_per_node 2`` (gloo, CPU) runs this file as a script: it trains CE -> LWS -> tau-norm
-> NCM on a synthetic set whose sizes nothing divides (429 training, 155 validation, 465 test images,
scored 64 at a time), so last batches are short and the ranks' shares unequal (validation: two
batches on rank 0, one on rank 1), and the training epoch ends on 13 images, padded to 14 for two
ranks. One process then re-scores and re-fits what the two ranks saved.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.config import recipe_from_dict
from longtail.data.images import DataBundle, ImageSet, TensorStore
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.context import StageContext
from longtail.engine.passes import evaluate_split, predict_split
from longtail.engine.pipeline import run_recipe
from longtail.engine.runtime import setup_runtime, shutdown_runtime
from longtail.errors import ConfigError
from longtail.methods import get_method
from longtail.models.classifier import load_exported
from longtail.engine.finish import record_arrays

COUNTS = [75, 45, 41, 37, 33, 30, 27, 25, 22, 20, 18, 16, 15, 13, 12]  # 429 training images, 15 classes
VAL = [11] * 5 + [10] * 10  # 155 images
TEST = 31  # per class: 465 images
C = len(COUNTS)
EVAL_BATCH = 64
REPORT_FEATURES = 20  # test images per class kept for the report: 300, another pass of unequal shares
STAGES = ("ce", "lws", "tau", "ncm")
# 2 ranks vs 1 process, same recipe, seed and batch plan: each rank's BatchNorm normalises its half of the
# batch and sums round differently, so training takes another path. Measured |gap| in test top-1 (465
# images, 0.22 points each): at most 1.3 points at seed 0, at most 5.2 (tau-norm) over seeds 0-3, where one
# process alone moves 4.7 (CE) to 7.3 (tau-norm) points from seed to seed.
TOP1_TOLERANCE = 6.0


class CountingStore(TensorStore):
    """Writes down every index it loads, so a test can count how often each image was scored."""

    def __init__(self, images):
        super().__init__(images)
        self.loaded = []

    def load(self, index):
        self.loaded.append(np.asarray(index).copy())
        return super().load(index)

    def to(self, device):  # data.on_device: the same store, still counting (these tests run on the CPU)
        return self


def awkward_bundle() -> DataBundle:
    rng = np.random.default_rng(7)
    patterns = rng.uniform(40, 215, (C, 3, 1, 1)) + rng.normal(0, 50, (C, 3, 16, 16))

    def split(per_class, name, store=TensorStore):
        labels = np.repeat(np.arange(C), per_class)
        images = np.clip(patterns[labels] + rng.normal(0, 160, (len(labels), 3, 16, 16)), 0, 255)
        return ImageSet(store(torch.from_numpy(images.astype(np.uint8))), labels, name)

    return DataBundle(name="awkward", num_classes=C, class_names=[f"c{c}" for c in range(C)],
                      train=split(COUNTS, "train"), val=split(VAL, "val"), test=split([TEST] * C, "test", CountingStore),
                      mean=(0.5,) * 3, std=(0.25,) * 3, image_size=16, source={"dataset": "awkward"})


def recipe(stages=STAGES):
    aug = [{"op": "normalize"}]  # no random ops: ranks draw their own streams, a gap from 1 process that is not DDP's
    every = {
        "ce": {"method": "ce", "epochs": 12, "optim": {"lr": 0.02}},
        "lws": {"method": "lws", "init": "ce", "sampler": "class_balanced", "samples_per_class": 2, "epochs": 1, "optim": {"lr": 0.2}},
        "tau": {"method": "tau_norm", "init": "ce", "epochs": 0},
        "ncm": {"method": "ncm", "init": "ce", "epochs": 0},
    }
    return recipe_from_dict({
        "name": "ddp-eval", "data": {"dataset": "synthetic"}, "model": {"backbone": "resnet20"},
        "runtime": {"device": "cpu", "amp": "off", "threads": 1, "progress": False, "tensorboard": False,
                    "eval_batch_size": EVAL_BATCH, "report_features": REPORT_FEATURES},
        "stages": [{"name": n, "batch_size": 32, "schedule": {"kind": "cosine"}, "augment": aug, **every[n]} for n in stages],
    })


def train(out: Path) -> dict:
    """Train the recipe here (one process, or one torchrun rank); save which test images this process loaded."""
    data = awkward_bundle()
    res = run_recipe(recipe(), out / "run", data=data)
    np.save(out / f"test_loads{os.environ.get('RANK', 'single')}.npy", np.concatenate(data.test.store.loaded))
    return res


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "run" / "results.json").read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_process")
    return out, train(out)


def rebuild(run: Path, name: str):
    """A saved stage's method and model, in this (single) process, as ``longtail eval`` builds them."""
    r = recipe()
    ctx = StageContext(r, r.stage(name), awkward_bundle(), setup_runtime(r.runtime))
    method = get_method(ctx.stage.method)(ctx)
    model = method.build_model()
    load_exported(model, load_checkpoint(run / name / "final.pt")["model"])
    return method, model.to(memory_format=torch.channels_last), ctx


def test_the_test_set_is_scored_exactly_once_per_pass(two_ranks):
    out, results = two_ranks
    loads = [np.load(out / f"test_loads{r}.npy") for r in (0, 1)]
    # Each stage loads every test image once to score it, and the first REPORT_FEATURES of each class (all
    # 15 classes are among the report's feature classes) once more for the report: 4 * (465 + 300) loads.
    in_record = np.tile(np.arange(TEST) < REPORT_FEATURES, C)
    assert np.array_equal(np.bincount(np.concatenate(loads), minlength=C * TEST), len(STAGES) * (1 + in_record))
    # Unequal shares, per stage. Test: 8 batches of 64, the last 17; rank 0 scores batches 0, 2, 4, 6 and
    # rank 1 the rest. Report features: 5 batches, the last 44; rank 0 takes three of them.
    assert [len(x) for x in loads] == [len(STAGES) * (4 * 64 + 2 * 64 + 44), len(STAGES) * (3 * 64 + 17 + 2 * 64)]
    for name in STAGES:
        assert results["stages"][name]["num_images"] == C * TEST
        assert results["stages"][name]["val"]["num_images"] == sum(VAL)
        record = np.load(out / "run" / name / "report.npz", allow_pickle=False)
        assert record["confusion"][:, 2].sum() == C * TEST  # the confusion matrix counts each test image once
        assert len(record["features"]) == C * REPORT_FEATURES


def test_one_process_rescoring_the_saved_weights_gets_identical_metrics(two_ranks):
    """Exact: each image meets the same evaluation batch as in one process, so its output is bit-equal."""
    out, results = two_ranks
    for name in STAGES:
        method, model, ctx = rebuild(out / "run", name)
        test, val = evaluate_split(method, model, ctx, ctx.data.test), evaluate_split(method, model, ctx, ctx.data.val)
        saved = results["stages"][name]
        assert {k: saved[k] for k in test} == test, name
        assert saved["val"] == {k: v for k, v in val.items() if k != "per_class"}, name
        features = record_arrays(method, model, ctx, predict_split(ctx, model, ctx.data.test, method.predict))["features"]
        assert np.array_equal(np.load(out / "run" / name / "report.npz")["features"], features), name


def test_one_process_fitting_on_the_two_rank_ce_weights_gets_the_same_tau_curve_and_ncm(two_ranks, tmp_path):
    out, results = two_ranks
    (tmp_path / "ce").mkdir()
    shutil.copy(out / "run" / "ce" / "final.pt", tmp_path / "ce" / "final.pt")
    run_recipe(recipe(("ce", "tau", "ncm")), tmp_path, resume=True, data=awkward_bundle())  # ce is done: fits tau, ncm
    single = json.loads((tmp_path / "results.json").read_text())["stages"]
    curve = results["stages"]["tau"]["fit"]["val_top1_by_tau"]
    assert len(curve) == 21 and len(set(curve.values())) > 3  # a real curve over the grid, not a flat one
    assert single["tau"]["fit"] == results["stages"]["tau"]["fit"]
    means = [load_checkpoint(run / "ncm" / "final.pt")["model"]["adjust.main.means"] for run in (out / "run", tmp_path)]
    assert torch.equal(means[0], means[1]) and means[0].abs().sum() > 0
    for name in ("tau", "ncm"):
        assert {k: single[name][k] for k in ("top1", "per_class", "val")} == {k: results["stages"][name][k] for k in ("top1", "per_class", "val")}


def test_lws_on_the_same_ce_weights_trains_the_same_on_two_ranks_as_in_one_process(two_ranks, tmp_path):
    """Where BatchNorm cannot differ (LWS: a frozen backbone in eval mode), DDP's averaged gradient of the two
    half-batches is the one process's gradient of the whole batch: the learnt scales agree to rounding."""
    out, results = two_ranks
    (tmp_path / "ce").mkdir()
    shutil.copy(out / "run" / "ce" / "final.pt", tmp_path / "ce" / "final.pt")
    run_recipe(recipe(("ce", "lws")), tmp_path, resume=True, data=awkward_bundle())  # ce is done: trains lws alone
    two, one = (load_checkpoint(run / "lws" / "final.pt")["model"]["adjust.main.scale"] for run in (out / "run", tmp_path))
    assert (two - 1).abs().max() > 0.05  # the scales moved from 1: there was something to agree on
    assert torch.allclose(two, one, rtol=0, atol=1e-4), (two - one).abs().max()  # measured 2.2e-5: the padded last batch


def test_two_ranks_train_within_a_few_points_of_one_process(two_ranks, one_process):
    """Tolerance, not equality: within 6 points of test top-1 per stage (TOP1_TOLERANCE, measured beside it)."""
    two, one = two_ranks[1]["stages"], one_process[1]["stages"]
    gaps = {name: round(two[name]["top1"] - one[name]["top1"], 2) for name in STAGES}
    print("top-1 gap, 2 ranks - 1 process:", gaps)
    assert all(60 < one[name]["top1"] < 95 for name in STAGES)  # well above chance (6.7%), below 100: a gap can show
    assert all(abs(g) <= TOP1_TOLERANCE for g in gaps.values()), gaps


@pytest.mark.parametrize("value,why", [(0, "0"), (-5, "-5"), (float("nan"), "nan"), ("soon", "'soon'")])
def test_a_bad_dist_timeout_is_a_config_error(value, why):
    r = recipe(("ce",)).to_dict()
    r["runtime"]["dist_timeout_min"] = value
    with pytest.raises(ConfigError, match=r"runtime\.dist_timeout_min") as e:
        recipe_from_dict(r)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_the_process_group_waits_dist_timeout_min(monkeypatch):
    import datetime

    import torch.distributed as dist

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    r = recipe(("ce",)).to_dict()
    r["runtime"]["dist_timeout_min"] = 2.5
    rt = setup_runtime(recipe_from_dict(r).runtime)
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(minutes=2, seconds=30)} and rt.world == 2
    assert recipe().runtime.dist_timeout_min == 60


if __name__ == "__main__":  # one torchrun rank
    train(Path(sys.argv[1]))
    shutdown_runtime()
