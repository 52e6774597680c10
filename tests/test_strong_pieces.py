"""The strong recipe's pieces: mixed labels, LDAM margins, DRW weights, experts, and exact resume with mixing."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.config import recipe_from_dict, load_recipe
from longtail.data.augment.mix import Mixer, MixedLabels, cutmix_box
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.pipeline import run_recipe
from longtail.errors import ConfigError
from longtail.losses import class_ce, drw_weights, ldam_margins, log_prior
from test_engine import Crash, CrashingCE, tiny_recipe  # noqa: E402  (the engine tests' tiny recipe and crash)
from longtail.models.classifier import build_classifier
from longtail.models.experts import ExpertsHead


def cfg(**kw):
    return SimpleNamespace(**{"kind": "mixup", "alpha": 0.4, "cutmix_alpha": 1.0, "switch_prob": 0.5, "until_epoch": None, **kw})


def test_mixup_mixes_inputs_by_lambda_and_keeps_both_label_sets():
    x = torch.rand(8, 3, 4, 4)
    y = torch.arange(8)
    xm, mix = Mixer(cfg())(x, y, seed=123)
    lam = float(np.random.default_rng(123).beta(0.4, 0.4))  # by hand: the same host draw
    assert mix.lam == pytest.approx(lam)
    perm = mix.y  # labels are arange, so the b labels are the permutation itself
    assert sorted(perm.tolist()) == list(range(8))
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm], atol=1e-6)
    again, mix2 = Mixer(cfg())(x, y, seed=123)
    assert torch.equal(again, xm) and torch.equal(mix2.y, mix.y)
    other, mix3 = Mixer(cfg())(x, y, seed=124)
    assert mix3.lam != mix.lam


def test_cutmix_pastes_one_box_and_lambda_is_the_kept_area():
    x = torch.zeros(4, 1, 10, 10)
    for i in range(4):
        x[i] = i + 1
    xm, mix = Mixer(cfg(kind="cutmix"))(x, torch.arange(4), seed=7)
    changed = (xm != x).any(1)  # (N, H, W) pasted pixels
    for i in range(4):
        j = int(mix.y[i])
        pasted = (xm[i, 0] == j + 1) & changed[i] if j != i else torch.zeros(10, 10, dtype=torch.bool)
        if j != i:
            assert pasted.sum().item() == round((1 - mix.lam) * 100)
    # the box of a known lambda and centre, by hand: sqrt(1 - 0.75) = 0.5 of each side, clipped at the corner
    rng = SimpleNamespace(integers=lambda n: 0)
    assert cutmix_box(0.75, 10, 10, rng) == (0, 2, 0, 2)


def test_mixer_switches_off_at_until_epoch():
    m = Mixer(cfg(until_epoch=3))
    assert m.active(2) and not m.active(3)
    assert not Mixer(cfg(kind="none")).active(0)


def test_class_ce_on_mixed_labels_is_the_lambda_weighted_sum():
    z = torch.randn(5, 4)
    y, yb = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 1, 0, 2, 3])
    plain = SimpleNamespace(y=y, mix=None)
    mixed = SimpleNamespace(y=y, mix=MixedLabels(yb, 0.3))
    assert class_ce(z, plain).item() == pytest.approx(F.cross_entropy(z, y).item())
    hand = 0.3 * -F.log_softmax(z, 1)[range(5), y].mean() + 0.7 * -F.log_softmax(z, 1)[range(5), yb].mean()
    assert class_ce(z, mixed).item() == pytest.approx(hand.item(), rel=1e-6)


def test_ldam_margins_and_drw_weights_by_hand():
    counts = [500, 100, 5]
    m = ldam_margins(counts, 0.5)
    assert m.tolist() == pytest.approx([0.5 * (5 / 500) ** 0.25, 0.5 * (5 / 100) ** 0.25, 0.5], rel=1e-6)
    w = drw_weights(counts, 0.9999)
    raw = [(1 - 0.9999) / (1 - 0.9999 ** n) for n in counts]
    assert w.tolist() == pytest.approx([r / sum(raw) * 3 for r in raw], rel=1e-5)
    assert drw_weights(counts, 0.0).tolist() == pytest.approx([1, 1, 1])
    # the margin comes off the true class only: CE of z - m_y * onehot
    z, y = torch.zeros(2, 3), torch.tensor([0, 2])
    got = class_ce(z, SimpleNamespace(y=y, mix=None), margin=torch.tensor([1.0, 0.0, 2.0]))
    hand = -(math.log(math.exp(-1) / (math.exp(-1) + 2)) + math.log(math.exp(-2) / (math.exp(-2) + 2))) / 2
    assert got.item() == pytest.approx(hand, rel=1e-6)
    assert log_prior([3, 1]).tolist() == pytest.approx([math.log(0.75), math.log(0.25)])


def test_experts_share_the_stem_average_their_logits_and_count_parameters():
    mc = recipe_from_dict({"name": "e", "data": {"dataset": "synthetic"},
                           "model": {"backbone": "resnet32", "head": "cosine", "cosine_scale": 30.0, "experts": 3},
                           "stages": [{"name": "s", "method": "ce"}]}).model
    model = build_classifier(mc, 100)
    assert sum(p.numel() for p in model.parameters()) == 1_362_064  # STRONG.md §5, from the layer shapes
    single = build_classifier(recipe_from_dict({"name": "s", "data": {"dataset": "synthetic"},
                                                "model": {"head": "cosine"}, "stages": [{"name": "s", "method": "ce"}]}).model, 100)
    assert sum(p.numel() for p in single.parameters()) == 469_904
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    head: ExpertsHead = model.heads["main"]
    each = head.each(out["feat"])
    assert out["feat"].shape == (2, 192) and len(each) == 3
    assert torch.allclose(out["main"], (each[0] + each[1] + each[2]) / 3, atol=1e-5)
    # expert 1 sees only its own branch: its logits equal its branch's pooled feature through its head
    stem = model.backbone.layer1(F.relu(model.backbone.bn1(model.backbone.conv1(x))))
    f1 = F.adaptive_avg_pool2d(model.backbone.branches[1](stem), 1).flatten(1)
    assert torch.allclose(each[1], head.members[1](f1), atol=1e-5)


CROP_FLIP = [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"}, {"op": "normalize"}]


def tiny(method="ce", epochs=3, model=None, **stage):
    """The engine tests' tiny recipe, with this file's model options (cosine head, experts) on top."""
    r = tiny_recipe(epochs=epochs, method=method, **stage)
    for key, value in (model or {}).items():
        setattr(r.model, key, value)
    return r


POLICY = [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"}, {"op": "autoaugment_cifar"},
          {"op": "cutout", "size": 4}, {"op": "normalize"}]


@pytest.mark.parametrize("augment", [CROP_FLIP, POLICY], ids=["crop_flip", "autoaugment_cutout"])
def test_resume_with_mixing_on_is_exact_and_mixing_learns(data, tmp_path, augment):
    mix = {"kind": "mixup_cutmix", "alpha": 0.4, "switch_prob": 0.5}
    full = run_recipe(tiny("ce_crash", mix=mix, augment=augment), tmp_path / "full", data=data)
    assert full["final"]["top1"] > 100 / 6 + 17  # 6 balanced classes: chance is 16.7 %
    steps_per_epoch = -(-len(data.train) // 32)
    CrashingCE.calls, CrashingCE.crash_at = 0, steps_per_epoch + 6
    with pytest.raises(Crash):
        run_recipe(tiny("ce_crash", mix=mix, augment=augment), tmp_path / "cut", data=data)
    CrashingCE.crash_at = None
    res = run_recipe(tiny("ce_crash", mix=mix, augment=augment), tmp_path / "cut", data=data, resume=True)
    a = load_checkpoint(tmp_path / "full" / "ce" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "ce" / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res["final"]["per_class"] == full["final"]["per_class"]
    plain = load_checkpoint(run_recipe(tiny("ce", augment=augment), tmp_path / "plain", data=data) and tmp_path / "plain" / "ce" / "final.pt")["model"]
    assert not all(torch.equal(a[k], plain[k]) for k in a)  # mixing changed training


def test_ldam_drw_and_experts_train_and_refuse_bad_configs(data, tmp_path):
    res = run_recipe(tiny("ldam_drw", epochs=6, model={"head": "cosine", "cosine_scale": 30.0}, params={"drw_epoch": 4}), tmp_path / "ldam", data=data)
    assert res["final"]["top1"] > 100 / 6 + 17
    with pytest.raises(ConfigError, match="cosine"):
        run_recipe(tiny("ldam_drw"), tmp_path / "bad", data=data)
    with pytest.raises(ConfigError, match="fixed cosine scale"):
        run_recipe(tiny("ldam_drw", model={"head": "cosine", "cosine_learnable": True}), tmp_path / "bad_s", data=data)
    res = run_recipe(tiny("experts_la", model={"head": "cosine", "experts": 2}, params={"taus": [0.5, 1.5]},
                          mix={"kind": "mixup"}), tmp_path / "exp", data=data)
    assert res["final"]["top1"] > 100 / 6 + 17
    with pytest.raises(ConfigError, match="one tau per expert"):
        run_recipe(tiny("experts_la", model={"experts": 2}, params={"taus": [1.0]}), tmp_path / "bad2", data=data)
    with pytest.raises(ConfigError, match="mix.kind"):
        tiny(mix={"kind": "mixupp"})


def test_strong_recipes_load():
    for name in ["strong", "strong_mixup", "strong_experts", "ldam_drw"]:
        r = load_recipe(f"cifar100-lt/{name}")
        assert r.model.head == "cosine" and r.stages[0].epochs == 200
    assert load_recipe("cifar100-lt/strong").stages[0].mix.kind == "mixup"
    assert load_recipe("cifar100-lt/strong_experts").model.experts == 3


def test_drw_weights_switch_on_at_drw_epoch(data):
    from longtail.engine.context import StageContext
    from longtail.engine.runtime import setup_runtime
    from longtail.methods.base import Batch
    from longtail.methods.ldam import LDAMDRW

    recipe = tiny("ldam_drw", model={"head": "cosine", "cosine_scale": 30.0}, params={"drw_epoch": 2, "beta": 0.99})
    ctx = StageContext(recipe, recipe.stages[0], data, setup_runtime(recipe.runtime))
    method = LDAMDRW(ctx)
    model = method.build_model()
    method.prepare(model)
    term = method.terms()["ldam"]
    x, y = torch.randn(6, 3, 16, 16), torch.arange(6)
    out = model(x)
    margin = ldam_margins(data.train_counts, 0.5) * 30
    early = term.fn(model, out, Batch(x, y, epoch=1))
    late = term.fn(model, out, Batch(x, y, epoch=2))
    b = SimpleNamespace(y=y, mix=None)
    assert early.item() == pytest.approx(class_ce(out["main"], b, margin=margin).item(), rel=1e-5)
    assert late.item() == pytest.approx(class_ce(out["main"], b, weight=drw_weights(data.train_counts, 0.99), margin=margin).item(), rel=1e-5)
    assert early.item() != pytest.approx(late.item(), rel=1e-3)


def test_a_derived_stage_that_changes_method_drops_the_old_methods_params():
    r = load_recipe("cifar100-lt/strong_experts")
    assert r.stages[0].method == "experts_la" and r.stages[0].params == {"taus": [0.0, 1.0, 2.0]}
    assert load_recipe("cifar100-lt/strong").stages[0].params == {"tau": 1.0}  # same method: params merge as before


@pytest.mark.parametrize("name", ["strong_distill", "strong_cbd"])
def test_strong_compositions_train_a_student_from_the_strong_teacher(name, data, tmp_path):
    r = load_recipe(f"cifar100-lt/{name}", ["data.dataset=synthetic", "model.backbone=resnet20", "runtime.device=cpu",
                                            "runtime.amp=off", "runtime.progress=false", "runtime.tensorboard=false"], epochs_scale=0.01)
    for s in r.stages:
        s.batch_size, s.augment = 32, [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"},
                                       {"op": "autoaugment_cifar"}, {"op": "cutout", "size": 4}, {"op": "normalize"}]
    res = run_recipe(r, tmp_path, data=data)
    assert [s.name for s in r.stages] == ["ce", "student"]
    parts = [json.loads(l) for l in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert parts and {"la_loss/la_ce", "ssd_distill/kd" if name == "strong_distill" else "cbd/feat"} <= set(parts[-1])
    assert res["final"]["stage"] == "student" and res["final"]["num_images"] == len(data.test)
