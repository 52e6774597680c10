"""SSD: each loss against a hand computation, and the whole pipeline end to end on synthetic data."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_engine import beats_constant_guess  # noqa: E402
from longtail.config import recipe_from_dict
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.context import StageContext
from longtail.engine.pipeline import run_recipe
from longtail.engine.runtime import setup_runtime
from longtail.methods import get_method
from longtail.data.augment import random_rotate90
from longtail.methods.ssd import kd_loss
from longtail.models.moco import MoCo, info_nce, momentum_update
from figures import assert_drawn  # noqa: E402

AUG = [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"}, {"op": "normalize"}]


def ssd_recipe(mode="decoupled", self_sup="rotation", epochs=2, **ssl):
    train = {"batch_size": 32, "augment": AUG, "optim": {"lr": 0.1}, "schedule": {"kind": "cosine"}}
    lws = {"method": "lws", "sampler": "class_balanced", "samples_per_class": 2, "epochs": 1, "batch_size": 64,
           "optim": {"lr": 0.2}, "schedule": {"kind": "cosine"}, "augment": AUG}
    head = "hard" if mode == "decoupled" else "main"
    stages = [
        {"name": "stage1", "method": "ssd_ssl", "epochs": epochs, "params": {"self_sup": self_sup, **ssl}, **train},
        {"name": "stage2", "init": "stage1", **lws},
        {"name": "stage3", "method": "ssd_distill", "epochs": epochs, "params": {"teacher": "stage2", "mode": mode}, **train},
        {"name": "stage4", "init": "stage3", "params": {"head": head}, **lws},
    ]
    if mode == "decoupled":
        stages.insert(3, {"name": "stage3_soft", "method": "evaluate", "init": "stage3", "params": {"head": "soft"}, "epochs": 0})
    return recipe_from_dict({
        "name": "tiny-ssd", "data": {"dataset": "synthetic"}, "model": {"backbone": "resnet20"},
        "runtime": {"device": "cpu", "amp": "off", "progress": False, "tensorboard": False}, "stages": stages,
    })


def method_and_model(data, recipe, stage):
    ctx = StageContext(recipe, recipe.stage(stage), data, setup_runtime(recipe.runtime))
    m = get_method(ctx.stage.method)(ctx)
    return m, m.build_model()


def test_kd_is_t2_times_soft_cross_entropy():
    torch.manual_seed(0)
    z, zt, T = torch.randn(5, 7), torch.randn(5, 7), 2.0
    p = F.softmax(zt / T, dim=1)
    hand = sum(-(p[i] * torch.log(torch.exp(z[i] / T) / torch.exp(z[i] / T).sum())).sum() for i in range(5)) / 5 * T * T
    assert torch.allclose(kd_loss(z, p, T), hand, atol=1e-5)
    assert torch.allclose(kd_loss(z, p, T), T * T * F.cross_entropy(z / T, p), atol=1e-5)  # soft-target CE


def test_kd_gradient_reaches_only_soft_head_and_backbone(data):
    method, model = method_and_model(data, ssd_recipe(), "stage3")
    assert set(model.heads) == {"hard", "soft"}
    out = model(torch.randn(4, 3, 16, 16))
    kd_loss(out["soft"], F.softmax(torch.randn(4, 6), dim=1), 2.0).backward()
    assert all(p.grad is None for p in model.heads["hard"].parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.heads["soft"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


def test_rotation_labels_match_the_applied_rotation():
    x = torch.randn(64, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    xr, k = random_rotate90(x, g)
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(64):
        assert torch.equal(xr[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))


def test_info_nce_known_value():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])
    tau = 0.5
    # Row 0: pos 0.6, negatives 1, -1, 0; row 1: pos 1, negatives 0, 0, -1.
    l0 = -math.log(math.exp(0.6 / tau) / (math.exp(0.6 / tau) + math.exp(1 / tau) + math.exp(-1 / tau) + math.exp(0)))
    l1 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * math.exp(0) + math.exp(-1 / tau)))
    assert info_nce(q, k, queue, tau).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    # Masking a negative removes it from the denominator.
    mask = torch.tensor([[True, False, False], [False, False, False]])
    l0m = -math.log(math.exp(0.6 / tau) / (math.exp(0.6 / tau) + math.exp(-1 / tau) + math.exp(0)))
    assert info_nce(q, k, queue, tau, mask).item() == pytest.approx((l0m + l1) / 2, abs=1e-6)


def test_momentum_update_follows_the_formula():
    q, k = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.clone() for p in k.parameters()]
    momentum_update(k, q, 0.9)
    for b, pk, pq in zip(before, k.parameters(), q.parameters()):
        assert torch.allclose(pk, 0.9 * b + 0.1 * pq)


def test_moco_queue_is_a_ring_buffer_with_labels():
    moco = MoCo(nn.Flatten(), 4, dim=2, queue_size=5)
    for step in range(3):
        moco.enqueue(F.normalize(torch.ones(2, 2) * (step + 1)), torch.tensor([step, step]))
    assert moco.ptr.item() == 1  # 6 keys into 5 slots
    assert moco.queue_labels.tolist() == [2, 0, 1, 1, 2]  # slots 0,1 | 2,3 | 4 then wrap to 0


@pytest.fixture(scope="module")
def ssd_run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("ssd")
    return out, run_recipe(ssd_recipe(), out, data=data)


def test_pipeline_reports_every_stage_and_the_label_distribution(ssd_run, data):
    out, res = ssd_run
    assert list(res["stages"]) == ["stage1", "stage2", "stage3", "stage3_soft", "stage4"]
    assert res["final"]["stage"] == "stage4"
    for m in res["stages"].values():
        assert len(m["per_class"]) == 6 and m["num_images"] == len(data.test)
    beats_constant_guess(res["final"]["top1"], data.test.labels)  # the pipeline learned, not only ran
    dist = res["stages"]["stage3"]["report"]["label_distribution"]
    n = len(data.train)
    assert dist["original"] == data.train_counts.tolist()
    assert sum(dist["distilled"]) == pytest.approx(n, rel=1e-3)  # soft labels sum to one per image
    assert dist["class_balanced"] == [pytest.approx(n / 6)] * 6
    assert_drawn(out / "stage3" / "label_distribution.png")


def test_stage3_is_reinitialised_and_teacher_untouched(ssd_run):
    out, _ = ssd_run
    s1 = load_checkpoint(out / "stage1" / "final.pt")["model"]
    s2 = load_checkpoint(out / "stage2" / "final.pt")["model"]
    s3 = load_checkpoint(out / "stage3" / "final.pt")["model"]
    assert any(k.startswith("aux.rotation") for k in load_checkpoint(out / "stage1" / "checkpoint.pt")["model"])
    assert not any(k.startswith("aux.") for k in s1)  # the rotation head is training-only: not exported
    assert all(torch.equal(s1[k], s2[k]) for k in s2 if k.startswith("backbone."))  # LWS froze the backbone and its BN
    assert "adjust.main.scale" in s2 and not torch.allclose(s2["adjust.main.scale"], torch.ones(6))
    assert set(k.split(".")[1] for k in s3 if k.startswith("heads.")) == {"hard", "soft"}
    s4 = load_checkpoint(out / "stage4" / "final.pt")["model"]
    assert "adjust.hard.scale" in s4 and all(torch.equal(s3[k], s4[k]) for k in s3)


@pytest.mark.parametrize("mode", ["coupled", "single"])
def test_ablations_train_one_head(mode, data, tmp_path):
    res = run_recipe(ssd_recipe(mode=mode, epochs=1), tmp_path, data=data)
    s3 = load_checkpoint(tmp_path / "stage3" / "final.pt")["model"]
    assert {k.split(".")[1] for k in s3 if k.startswith("heads.")} == {"main"}
    assert "stage3_soft" not in res["stages"]
    logged = (tmp_path / "stage3" / "metrics.jsonl").read_text()
    assert ('"ce"' in logged) == (mode == "coupled") and '"kd"' in logged


def test_moco_stage_runs_and_moves_the_key_encoder(data, tmp_path):
    r = ssd_recipe(self_sup="moco", epochs=3, moco_queue=64, moco_dim=16, key_augment="cifar_strong")
    r.stages = r.stages[:1]
    method, fresh = method_and_model(data, r, "stage1")
    res = run_recipe(r, tmp_path, data=data)
    st = load_checkpoint(tmp_path / "stage1" / "checkpoint.pt")["model"]  # resumable state keeps the MoCo parts
    assert not any(k.startswith("aux.") for k in load_checkpoint(tmp_path / "stage1" / "final.pt")["model"])
    assert st["aux.moco.ptr"].item() == 3 * len(data.train) % 64  # every image of 3 epochs enqueued once
    assert not torch.equal(st["aux.moco.k_encoder.0.conv1.weight"], st["backbone.conv1.weight"])  # lags the query
    assert not torch.equal(st["aux.moco.k_encoder.0.conv1.weight"], fresh.state_dict()["aux.moco.k_encoder.0.conv1.weight"])
    assert '"ssl"' in (tmp_path / "stage1" / "metrics.jsonl").read_text()
    assert res["final"]["num_images"] == len(data.test)
    beats_constant_guess(res["final"]["top1"], data.test.labels)


def test_fresh_stages_get_their_own_init_seed_so_students_differ_from_teachers(data):
    from longtail.engine.context import init_seed
    from longtail.engine.loop import build_stage_model

    r = ssd_recipe()
    seeds = {s: init_seed(r.runtime.seed, r.stage(s)) for s in ("stage1", "stage3")}
    assert seeds["stage1"] != seeds["stage3"]
    assert init_seed(r.runtime.seed, r.stage("stage3")) == seeds["stage3"]  # a pure function: resume rebuilds the same weights

    def first_weights(stage):  # the backbone as train_stage builds it for that stage (stage1's method: no teacher needed)
        ctx = StageContext(r, r.stage("stage1"), data, setup_runtime(r.runtime))
        m = get_method(ctx.stage.method)(ctx)
        return build_stage_model(m, ctx, init_seed(r.runtime.seed, r.stage(stage))).backbone.state_dict()

    w1, w3 = first_weights("stage1"), first_weights("stage3")
    conv = [k for k in w1 if k.endswith("conv1.weight")][0]
    assert w1[conv].shape == w3[conv].shape and not torch.allclose(w1[conv], w3[conv])
    assert torch.equal(first_weights("stage3")[conv], w3[conv])


def test_cbd_student_starts_from_other_weights_than_its_teacher(data):
    from longtail.engine.context import init_seed
    from test_cbd import cbd_recipe

    r = cbd_recipe()
    assert init_seed(0, r.stage("t_std")) == 0  # an explicit stage seed is kept
    assert init_seed(0, r.stage("cbd")) not in (0, 1)


def _keys_equal_query(model):
    moco = model.aux["moco"]
    query = nn.Sequential(model.backbone, model.neck).state_dict()
    keys = moco.k_encoder.state_dict()
    assert list(keys) == list(query) and all(torch.equal(keys[k], query[k]) for k in query)
    assert all(torch.equal(a, b) for a, b in zip(moco.k_proj.state_dict().values(), moco.q_proj.state_dict().values()))


def test_the_key_encoder_starts_equal_to_the_query_after_init_and_pretrained_loads(data, tmp_path):
    """MoCo starts theta_k = theta_q; the key encoder copied in build_model predates the weight loads."""
    from longtail.config import recipe_from_dict
    from longtail.engine.loop import build_stage_model

    moco = dict(self_sup="moco", moco_queue=64, moco_dim=16, key_augment="cifar_strong")
    r = ssd_recipe(epochs=1, **moco)
    r.stages = r.stages[:1]
    run_recipe(r, tmp_path / "run", data=data)
    trained = load_checkpoint(tmp_path / "run" / "stage1" / "final.pt")["model"]
    d = r.to_dict()
    d["stages"].append({**d["stages"][0], "name": "again", "init": "stage1"})
    r = recipe_from_dict(d)
    ctx = StageContext(r, r.stage("again"), data, setup_runtime(r.runtime), {"stage1": tmp_path / "run" / "stage1" / "final.pt"})
    model = build_stage_model(get_method("ssd_ssl")(ctx), ctx, seed=123)
    assert torch.equal(model.backbone.conv1.weight, trained["backbone.conv1.weight"])  # the init: weights are in
    _keys_equal_query(model)

    torch.save({f"{k.removeprefix('backbone.')}": v for k, v in trained.items() if k.startswith("backbone.")}, tmp_path / "tv.pth")
    d["stages"] = d["stages"][:1]
    d["model"]["pretrained"] = str(tmp_path / "tv.pth")
    r = recipe_from_dict(d)
    ctx = StageContext(r, r.stage("stage1"), data, setup_runtime(r.runtime))
    model = build_stage_model(get_method("ssd_ssl")(ctx), ctx, seed=123)
    assert torch.equal(model.backbone.conv1.weight, trained["backbone.conv1.weight"])  # the pretrained weights are in
    _keys_equal_query(model)
