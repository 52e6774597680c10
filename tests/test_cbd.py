"""CBD: the feature-distillation loss, K-teacher shapes, the cosine classifier, the Teacher Ensemble."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_engine import beats_constant_guess  # noqa: E402
from longtail.config import recipe_from_dict
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.context import StageContext
from longtail.engine.pipeline import run_recipe
from longtail.engine.runtime import setup_runtime
from longtail.methods import get_method
from longtail.methods.cbd import feature_distillation_loss, teacher_target
from longtail.models.heads import CosineHead

AUG = [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"}, {"op": "normalize"}]


def cbd_recipe(teachers=("t_std", "t_aug"), epochs=1):
    common = {"batch_size": 32, "augment": AUG, "optim": {"lr": 0.1}, "schedule": {"kind": "cosine"}, "epochs": epochs}
    return recipe_from_dict({
        "name": "tiny-cbd", "data": {"dataset": "synthetic"},
        "model": {"backbone": "resnet20", "head": "cosine", "cosine_scale": 20.0},
        "runtime": {"device": "cpu", "amp": "off", "progress": False, "tensorboard": False},
        "stages": [
            {"name": "t_std", "method": "ce", "seed": 0, **common},
            {"name": "t_aug", "method": "ce", "seed": 1, **common,
             "augment": [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"},
                         {"op": "color_jitter", "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2, "p": 0.8},
                         {"op": "random_grayscale", "p": 0.2}, {"op": "normalize"}, {"op": "gaussian_noise", "sigma": 0.01}]},
            {"name": "cbd", "method": "cbd", "sampler": "class_balanced", "params": {"teachers": list(teachers)}, **common},
            {"name": "ensemble", "method": "teacher_ensemble", "epochs": 0, "params": {"teachers": ["t_std", "t_aug"]}},
        ],
    })


def test_feature_loss_is_one_minus_cosine_and_only_the_student_learns():
    torch.manual_seed(0)
    student = torch.nn.Linear(5, 4)
    teacher = torch.nn.Linear(5, 4).requires_grad_(False)
    x = torch.randn(3, 5)
    v, vt = student(x), teacher(x)
    hand = sum(1 - (v[i] @ vt[i]) / (v[i].norm() * vt[i].norm()) for i in range(3)) / 3
    loss = feature_distillation_loss(v, vt)
    assert torch.allclose(loss, hand, atol=1e-6)
    assert feature_distillation_loss(vt, vt).item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None


def test_k_teachers_concatenate_normalised_features_and_h_maps_d_to_dk(data):
    feats = [torch.randn(4, 64) * s for s in (1.0, 5.0, 0.1)]
    target = teacher_target(feats)
    assert target.shape == (4, 192)
    assert torch.allclose(target[:, 64:128].norm(dim=1), torch.ones(4), atol=1e-5)  # each part L2-normalised
    for k in (1, 2, 4):
        r = cbd_recipe(teachers=[f"t{i}" for i in range(k)])
        r.stages = [s for s in r.stages if s.name == "cbd"]
        ctx = StageContext(r, r.stage("cbd"), data, setup_runtime(r.runtime))
        model = get_method("cbd")(ctx).build_model()
        assert model.feature_dim == 64 * k and model(torch.randn(2, 3, 16, 16))["feat"].shape == (2, 64 * k)
        if k > 1:
            assert model.neck[0].in_features == 64 and model.neck[0].out_features == 64 * k
            assert isinstance(model.neck[1], torch.nn.ReLU)  # the official code's ReLU after h
        assert model.heads["main"].weight.shape == (6, 64 * k)  # the classifier sits on h(v)


def test_cosine_logits_are_bounded_by_gamma():
    head = CosineHead(8, 5, scale=20.0)
    z = head(torch.randn(100, 8) * 50)
    assert z.abs().max() <= 20.0 + 1e-4
    w = F.normalize(head.weight, dim=1)
    v = torch.randn(3, 8)
    assert torch.allclose(head(v), 20 * F.normalize(v, dim=1) @ w.t(), atol=1e-5)
    learn = CosineHead(8, 5, scale=10.0, learn_scale=True)
    assert isinstance(learn.scale, torch.nn.Parameter) and learn.scale.item() == 10.0


@pytest.fixture(scope="module")
def cbd_run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("cbd")
    return out, run_recipe(cbd_recipe(), out, data=data)


def test_student_trains_with_feature_distillation_and_frozen_teachers(cbd_run):
    out, res = cbd_run
    logged = (out / "cbd" / "metrics.jsonl").read_text()
    assert '"feat"' in logged and '"ce"' in logged
    t = load_checkpoint(out / "t_std" / "final.pt")["model"]
    st = load_checkpoint(out / "cbd" / "final.pt")["model"]
    assert st["neck.0.weight"].shape == (128, 64)  # K = 2
    assert set(res["stages"]) == {"t_std", "t_aug", "cbd", "ensemble"}
    assert not torch.equal(t["backbone.conv1.weight"], load_checkpoint(out / "t_aug" / "final.pt")["model"]["backbone.conv1.weight"])


def test_teacher_ensemble_is_the_mean_of_teacher_probabilities(cbd_run, data):
    out, res = cbd_run
    r = cbd_recipe()
    rt = setup_runtime(r.runtime)
    probs = []
    for name in ("t_std", "t_aug"):
        ctx = StageContext(r, r.stage(name), data, rt)
        m = get_method("ce")(ctx)
        model = m.build_model().eval()
        model.load_state_dict(load_checkpoint(out / name / "final.pt")["model"])
        aug = ctx.augment("eval")
        u8, _ = data.test.load(np.arange(len(data.test)))
        with torch.no_grad():
            probs.append(F.softmax(model(aug(u8, None))["main"], dim=1))
    hand = (torch.stack(probs).mean(0).argmax(1) == torch.as_tensor(data.test.labels)).double().mean().item() * 100
    assert res["stages"]["ensemble"]["top1"] == pytest.approx(hand, abs=1e-3)


def test_a_teacher_from_another_run_by_path(cbd_run, data, tmp_path):
    out, _ = cbd_run
    r = cbd_recipe(teachers=[str(out / "t_std" / "final.pt")], epochs=6)
    r.stages = [s for s in r.stages if s.name == "cbd"]
    res = run_recipe(r, tmp_path, data=data)
    assert load_checkpoint(tmp_path / "cbd" / "final.pt")["model"]["heads.main.weight"].shape == (6, 64)  # K = 1: no h
    assert res["final"]["num_images"] == len(data.test)
    beats_constant_guess(res["final"]["top1"], data.test.labels)
    assert str(out / "t_std" / "final.pt") in (tmp_path / "recipe.yaml").read_text()  # the teacher it learned from


@pytest.mark.parametrize("distill,parts", [("feature", {"ce", "feat"}), ("logit", {"ce", "kd"}), ("hybrid", {"ce", "feat", "kd"})])
def test_variants_combine_the_losses_as_documented(data, distill, parts):
    from longtail.methods import Batch
    from longtail.methods.ssd import kd_loss

    r = cbd_recipe(teachers=["t_std"])
    r.stage("cbd").params["distill"] = distill
    rt = setup_runtime(r.runtime)
    ctx = StageContext(r, r.stage("cbd"), data, rt)
    method = get_method("cbd")(ctx)
    student = method.build_model().eval()
    tctx = StageContext(r, r.stage("t_std"), data, rt)
    tm = get_method("ce")(tctx)
    teacher = tm.build_model().eval().requires_grad_(False)
    method.teachers = [(tm, teacher)]
    u8, y = data.train.load(np.arange(8))
    x = ctx.augment("eval")(u8, None)
    loss, got = method.loss(student, {"x": Batch(x, torch.as_tensor(y))}, torch.Generator())
    assert set(got) == parts
    with torch.no_grad():
        out, tout = student(x), teacher(x)
        ce = F.cross_entropy(out["main"], torch.as_tensor(y))
        d = 0.0
        if "feat" in parts:
            d += 100.0 * feature_distillation_loss(out["feat"], F.normalize(tout["feat"], dim=1))
        if "kd" in parts:
            d += kd_loss(out["main"], F.softmax(tout["main"] / 2.0, dim=1), 2.0)
    assert loss.item() == pytest.approx((0.6 * ce + 0.4 * d).item(), rel=1e-4)


def test_hybrid_runs_each_teacher_once_per_step(data):
    """Hybrid reads features and logits of every teacher on the same batch: one forward each gives both."""
    from longtail.methods import Batch
    from longtail.methods.ssd import kd_loss

    r = cbd_recipe()
    r.stage("cbd").params["distill"] = "hybrid"
    rt = setup_runtime(r.runtime)
    ctx = StageContext(r, r.stage("cbd"), data, rt)
    method = get_method("cbd")(ctx)
    student = method.build_model().eval()
    calls, teachers = [], []
    for i, name in enumerate(("t_std", "t_aug")):
        torch.manual_seed(i)
        tm = get_method("ce")(StageContext(r, r.stage(name), data, rt))
        teacher = tm.build_model().eval().requires_grad_(False)
        forward = teacher.forward
        teacher.forward = lambda x, f=forward, n=name: calls.append(n) or f(x)
        teachers.append((tm, teacher))
    method.teachers = teachers
    u8, y = data.train.load(np.arange(8))
    x = ctx.augment("eval")(u8, None)
    batch = {"x": Batch(x, torch.as_tensor(y))}
    loss, got = method.loss(student, batch, torch.Generator())
    assert set(got) == {"ce", "feat", "kd"} and calls == ["t_std", "t_aug"]
    with torch.no_grad():  # the same loss as from separate feature and logit passes
        out, touts = student(x), [t(x) for _, t in teachers]
        ce = F.cross_entropy(out["main"], torch.as_tensor(y))
        feat = feature_distillation_loss(out["feat"], teacher_target([t["feat"] for t in touts]))
        kd = kd_loss(out["main"], F.softmax(torch.stack([t["main"] for t in touts]).mean(0) / 2.0, dim=1), 2.0)
    assert loss.item() == pytest.approx((0.6 * ce + 0.4 * 100.0 * feat + 0.4 * kd).item(), rel=1e-5)
    calls.clear()
    x.mul_(0.5)  # the same tensor refilled in place is another batch
    method.loss(student, batch, torch.Generator())
    assert calls == ["t_std", "t_aug"]
    u8, y = data.train.load(np.arange(8, 16))
    method.loss(student, {"x": Batch(ctx.augment("eval")(u8, None), torch.as_tensor(y))}, torch.Generator())
    assert calls == ["t_std", "t_aug"] * 2
