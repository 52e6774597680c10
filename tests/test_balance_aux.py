"""BalanceAux: two streams per step, the loss weights against a hand computation, one exported head."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.config import recipe_from_dict
from longtail.data.synthetic import synthetic_bundle
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.context import StageContext
from longtail.engine.pipeline import run_recipe
from longtail.engine.runtime import setup_runtime
from longtail.methods import Batch, get_method
from longtail.methods import balance_aux as ba
from longtail.models.classifier import load_exported

AUG = [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"}, {"op": "normalize"}]


def recipe(epochs=1, **params):
    return recipe_from_dict({
        "name": "tiny-balance-aux", "data": {"dataset": "synthetic"}, "model": {"backbone": "resnet20"},
        "runtime": {"device": "cpu", "amp": "off", "progress": False, "tensorboard": False},
        "stages": [{"name": "main", "method": "balance_aux", "params": params, "sampler": "class_balanced",
                    "samples_per_class": 4, "epochs": epochs, "batch_size": 32, "augment": AUG,
                    "optim": {"lr": 0.1}, "schedule": {"kind": "cosine"}}],
    })


@pytest.fixture(scope="module")
def data():
    return synthetic_bundle(num_classes=10, max_per_class=100, imbalance=10, size=16)


def built(data, **params):
    r = recipe(**params)
    ctx = StageContext(r, r.stages[0], data, setup_runtime(r.runtime))
    m = get_method("balance_aux")(ctx)
    return m, m.build_model().eval()


def batch_of(data, idx):
    u8, y = data.train.load(idx)
    x = u8.float() / 255
    return Batch(x, torch.as_tensor(y))


def test_loss_is_the_weighted_sum_of_the_three_heads(data, monkeypatch):
    method, model = built(data)
    assert method.feeds()["cbs"].sampler == "class_balanced" and method.feeds()["rrs"].sampler == "instance"
    cbs, rrs = batch_of(data, list(range(0, 8))), batch_of(data, list(range(100, 108)))
    k = torch.tensor([0, 1, 2, 3] * 4)
    rotated = {}

    def fixed_rotation(x, g):
        from longtail.data.augment import rotate90

        rotated["x"] = rotate90(x, k)
        return rotated["x"], k

    monkeypatch.setattr(ba, "random_rotate90", fixed_rotation)
    loss, parts = method.loss(model, {"cbs": cbs, "rrs": rrs}, torch.Generator())
    with torch.no_grad():  # eval-mode BatchNorm: the same features batched or not
        f = model.features
        l_cbs = F.cross_entropy(model.heads["main"](f(cbs.x)), cbs.y)
        l_rrs = F.cross_entropy(model.aux["rrs_head"](f(rrs.x)), rrs.y)
        l_ss = F.cross_entropy(model.aux["rotation"](f(rotated["x"])), k)
        for i in range(16):  # the rotation label is the rotation applied to that image
            src = torch.cat([cbs.x, rrs.x])[i]
            assert torch.equal(rotated["x"][i], torch.rot90(src, int(k[i]), dims=(1, 2)))
    assert parts["cbs"].item() == pytest.approx(l_cbs.item(), abs=1e-5)
    assert parts["rrs"].item() == pytest.approx(l_rrs.item(), abs=1e-5)
    assert parts["ss"].item() == pytest.approx(l_ss.item(), abs=1e-5)
    assert loss.item() == pytest.approx(0.5 * l_cbs.item() + l_rrs.item() + l_ss.item(), abs=1e-5)


def test_zero_weight_drops_a_stream_and_its_head(data):
    rrs_only, model = built(data, l1=0.0, l2=1.0, rotation="off")
    assert list(rrs_only.feeds()) == ["rrs"] and "rrs_head" not in model.aux and "rotation" not in model.aux
    cbs_only, _ = built(data, l1=1.0, l2=0.0, rotation="off")
    assert list(cbs_only.feeds()) == ["cbs"]


def test_rotation_as_augmentation_feeds_four_labelled_copies(data):
    method, model = built(data, rotation="augment")
    cbs, rrs = batch_of(data, list(range(4))), batch_of(data, list(range(200, 204)))
    seen = {}
    original = model.forward

    def spy(x):
        seen["n"] = len(x)
        return original(x)

    model.forward = spy
    _, parts = method.loss(model, {"cbs": cbs, "rrs": rrs}, torch.Generator())
    assert seen["n"] == 4 * 8 and set(parts) == {"cbs", "rrs"} and "rotation" not in model.aux


def test_trains_and_exports_one_head(data, tmp_path):
    res = run_recipe(recipe(epochs=2), tmp_path, data=data)
    exported = load_checkpoint(tmp_path / "main" / "final.pt")["model"]
    assert {k.split(".")[1] for k in exported if k.startswith("heads.")} == {"main"}
    assert not any(k.startswith("aux.") for k in exported)
    full = load_checkpoint(tmp_path / "main" / "checkpoint.pt")["model"]
    assert any(k.startswith("aux.rrs_head") for k in full) and any(k.startswith("aux.rotation") for k in full)
    logged = (tmp_path / "main" / "metrics.jsonl").read_text()
    assert all(f'"{k}"' in logged for k in ("cbs", "rrs", "ss"))
    m = res["stages"]["main"]  # images drawn per second: both feeds' 32-image batches a step
    assert m["train_img_per_s_last_segment"] == pytest.approx(m["steps"] * 64 / m["train_seconds"], rel=0.02)
    # The exported head alone gives the reported score (re-scored outside the engine, eval preprocessing) ...
    r = recipe(epochs=2)
    ctx = StageContext(r, r.stages[0], data, setup_runtime(r.runtime))
    model = get_method("balance_aux")(ctx).build_model()
    load_exported(model, exported)
    u8, _ = data.test.load(np.arange(len(data.test)))
    with torch.no_grad():
        pred = model.eval()(ctx.augment(r.stages[0].eval_augment)(u8, None))["main"].argmax(1)
    labels = torch.as_tensor(data.test.labels)
    assert res["final"]["top1"] == pytest.approx(100 * (pred == labels).double().mean().item(), abs=1e-3)
    # ... and it learned: the best constant answer (10% on 10 balanced classes) plus 5 binomial standard
    # deviations on these 200 images (2.1 points each) is a bar no untrained model reaches by luck.
    p = np.bincount(data.test.labels).max() / len(labels)
    assert res["final"]["top1"] > 100 * (p + 5 * np.sqrt(p * (1 - p) / len(labels)))
