"""Decoupled re-balancers: their maths against hand computations, frozen BatchNorm, and multi-stage resume."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.config import recipe_from_dict
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.context import StageContext
from longtail.engine.pipeline import run_recipe
from longtail.engine.runtime import setup_runtime
from longtail.errors import ConfigError
from longtail.losses import class_ce
from longtail.methods import METHODS, get_method
from longtail.methods.base import Term
from longtail.methods.ce import CrossEntropy

AUG = [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"}, {"op": "normalize"}]
STAGES = {
    "ce": {"name": "ce", "method": "ce", "epochs": 3, "optim": {"lr": 0.1}},
    "crt": {"name": "crt", "method": "crt", "init": "ce", "sampler": "class_balanced", "samples_per_class": 4, "epochs": 1,
            "optim": {"lr": 0.1}},
    "lws": {"name": "lws", "method": "lws", "init": "ce", "sampler": "class_balanced", "samples_per_class": 2, "epochs": 1,
            "optim": {"lr": 0.2}},
    "tau_norm": {"name": "tau_norm", "method": "tau_norm", "init": "ce", "epochs": 0},
    "ncm": {"name": "ncm", "method": "ncm", "init": "ce", "epochs": 0},
    "logit_adjust": {"name": "logit_adjust", "method": "logit_adjust", "init": "ce", "epochs": 0},
    "finetune": {"name": "finetune", "method": "ce", "init": "ce", "sampler": "class_balanced", "epochs": 1, "optim": {"lr": 0.01}},
    # a two-head model (SSD's stage III in shape) and the re-balancers SSD puts on its hard head
    "stage3": {"name": "stage3", "method": "two_head", "epochs": 1, "optim": {"lr": 0.1}},
    "crt_hard": {"name": "crt_hard", "method": "crt", "init": "stage3", "params": {"head": "hard"}, "sampler": "class_balanced",
                 "samples_per_class": 4, "epochs": 1, "optim": {"lr": 0.1}},
    "lws_hard": {"name": "lws_hard", "method": "lws", "init": "crt_hard", "params": {"head": "hard"}, "sampler": "class_balanced",
                 "samples_per_class": 2, "epochs": 1, "optim": {"lr": 0.2}},
}


class TwoHeadCE(CrossEntropy):
    """SSD's stage III in shape, class heads ``hard`` and ``soft`` both trained, without a teacher to train first."""

    name = "two_head"

    def head_widths(self):
        return {"hard": self.ctx.num_classes, "soft": self.ctx.num_classes} if self.stage.init == "fresh" else super().head_widths()

    @property
    def head_name(self):
        return "hard"

    def terms(self):
        return {h: Term(1.0, lambda classifier, out, b, h=h: class_ce(out[h], b), heads=(h,)) for h in ("hard", "soft")}


METHODS["two_head"] = TwoHeadCE


def recipe(*names, **over):
    stages = []
    for n in names:
        s = {"batch_size": 32, "schedule": {"kind": "cosine"}, "augment": AUG, **STAGES[n]}
        s.update(over.get(n, {}))
        stages.append(s)
    return recipe_from_dict({
        "name": "tiny-decoupling", "data": {"dataset": "synthetic"}, "model": {"backbone": "resnet20"},
        "runtime": {"device": "cpu", "amp": "off", "progress": False, "tensorboard": False, "checkpoint_every": 3},
        "stages": stages,
    })


@pytest.fixture(scope="module")
def run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("decoupling")
    res = run_recipe(recipe("ce", "crt", "lws", "tau_norm", "ncm", "logit_adjust", "finetune"), out, data=data)
    return out, res


def built(data, stage_name, *names):
    """A stage's method and model, as the engine builds them, without training."""
    r = recipe(*names)
    ctx = StageContext(r, r.stage(stage_name), data, setup_runtime(r.runtime))
    method = get_method(ctx.stage.method)(ctx)
    model = method.build_model().eval()
    return method, model, ctx


def test_lws_scales_multiply_whole_logit_bias_included(data):
    _, model, _ = built(data, "lws", "ce", "lws")
    s = torch.rand(6) + 0.5
    model.adjust["main"].scale.data.copy_(s)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        v = model.features(x)
        fc = model.heads["main"].fc
        assert torch.allclose(model(x)["main"], s * (v @ fc.weight.t() + fc.bias), atol=1e-5)


def test_tau_norm_drops_the_bias_and_normalises_rows(data):
    # The official Decoupling scoring: (w_c / ||w_c||^tau) . v, with no bias, by hand.
    _, model, _ = built(data, "tau_norm", "ce", "tau_norm")
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        fc = model.heads["main"].fc
        fc.bias.copy_(torch.linspace(-3, 3, 6))  # a large bias, so keeping it would show
        v = model.features(x)
        model.adjust["main"].tau.fill_(0.0)
        assert torch.allclose(model(x)["main"], v @ fc.weight.t(), atol=1e-5)
        assert not torch.allclose(model(x)["main"], v @ fc.weight.t() + fc.bias, atol=1e-2)
        for tau in (0.5, 1.0, 1.7):
            model.adjust["main"].tau.fill_(tau)
            norms = torch.sqrt((fc.weight ** 2).sum(dim=1))
            by_hand = torch.stack([(v * (fc.weight[c] / norms[c] ** tau)).sum(dim=1) for c in range(6)], dim=1)
            assert torch.allclose(model(x)["main"], by_hand, atol=1e-5)


def test_tau_norm_on_a_cosine_head_is_a_config_error_naming_the_stage(data):
    # A cosine head has no class norms to re-scale (they are all 1); this was an AttributeError traceback.
    r = recipe("ce", "tau_norm")
    r = recipe_from_dict({**r.to_dict(), "model": {"backbone": "resnet20", "head": "cosine"}})
    ctx = StageContext(r, r.stage("tau_norm"), data, setup_runtime(r.runtime))
    with pytest.raises(ConfigError, match=r"^stages\.tau_norm: tau_norm re-scales a linear head.*'main' is a CosineHead; use logit_adjust"):
        get_method("tau_norm")(ctx).build_model()


def test_posthoc_logit_adjustment_tau_zero_changes_nothing(data):
    _, model, _ = built(data, "logit_adjust", "ce", "logit_adjust")
    prior = torch.tensor([0.4, 0.2, 0.15, 0.1, 0.1, 0.05])
    model.adjust["main"].log_prior.copy_(prior.log())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        z = model.heads["main"](model.features(x))
        model.adjust["main"].tau.fill_(0.0)
        assert torch.equal(model(x)["main"], z)
        model.adjust["main"].tau.fill_(1.5)
        assert torch.allclose(model(x)["main"], z - 1.5 * prior.log(), atol=1e-6)


def test_ncm_predicts_argmax_cosine_to_class_means(run, data):
    out, res = run
    method, model, ctx = built(data, "ncm", "ce", "ncm")
    model.load_state_dict(load_checkpoint(out / "ncm" / "final.pt")["model"])
    # Hand computation: class means of the L2-normalised CE features of the (unaugmented) training images.
    aug = ctx.augment("eval")
    with torch.no_grad():
        def feats(split):
            u8, _ = split.load(np.arange(len(split)))
            return F.normalize(model.features(aug(u8, None)), dim=1)
        f_train, y_train = feats(data.train), torch.as_tensor(data.train.labels)
        means = torch.stack([f_train[y_train == c].mean(0) for c in range(6)])
        assert torch.allclose(model.adjust["main"].means, means, atol=1e-4)
        f_test = feats(data.test)
        hand = (f_test @ F.normalize(means, dim=1).t()).argmax(1)
        u8, _ = data.test.load(np.arange(len(data.test)))
        assert torch.equal(model(aug(u8, None))["main"].argmax(1), hand)
    acc = 100 * (hand == torch.as_tensor(data.test.labels)).double().mean().item()
    assert res["stages"]["ncm"]["top1"] == pytest.approx(acc, abs=1e-3)


def mean_class_top1(pred: torch.Tensor, labels: np.ndarray) -> float:
    """Mean per-class accuracy over the classes present, as the tau grid scores it, by hand."""
    pred = pred.numpy()
    return round(100 * float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)])), 4)


def test_tau_is_chosen_on_validation_only(run, data, tmp_path, monkeypatch):
    """A validation split that disagrees with the test split (the test images of the three head classes only):
    the fit must read that split alone, and its per-tau scores must be that split's, not the test split's."""
    import dataclasses

    from longtail.data.images import ImageSet
    from longtail.engine import passes
    from longtail.methods.rebalance import PostHoc

    out, _ = run
    head = np.flatnonzero(data.test.labels < 3)
    val = ImageSet(type(data.test.store)(data.test.store.images[head]), data.test.labels[head], "val")
    bundle = dataclasses.replace(data, val=val)
    seen, fitting, real_run_over, real_choose = [], [], passes.predict_split, PostHoc.choose_tau

    def spy_run_over(ctx, model, split, fn):
        if fitting:
            seen.append((ctx.stage.name, split))
        return real_run_over(ctx, model, split, fn)

    def spy_choose(self, model):
        fitting.append(1)
        try:
            return real_choose(self, model)
        finally:
            fitting.pop()

    monkeypatch.setattr(passes, "predict_split", spy_run_over)
    monkeypatch.setattr(PostHoc, "choose_tau", spy_choose)
    (tmp_path / "ce").mkdir()
    (tmp_path / "ce" / "final.pt").write_bytes((out / "ce" / "final.pt").read_bytes())
    res = run_recipe(recipe("ce", "tau_norm", "logit_adjust"), tmp_path, data=bundle, resume=True)
    # Every image the fits looked at came from the validation split (the run moved it to the device: bundle.val), once per fit.
    assert [n for n, _ in seen] == ["tau_norm", "logit_adjust"]
    assert all(split is bundle.val and np.array_equal(split.labels, val.labels) for _, split in seen)
    for name in ("tau_norm", "logit_adjust"):
        fit = res["stages"][name]["fit"]
        scores = fit["val_top1_by_tau"]
        assert len(scores) == 21 and min(scores) == 0.0 and max(scores) == 2.0
        # Re-score every tau by hand with the stage's saved model: on the validation split it gives the logged
        # numbers; on the test split it does not (so a fit on test would have been caught).
        _, model, ctx = built(bundle, name, "ce", name)
        model.load_state_dict(load_checkpoint(tmp_path / name / "final.pt")["model"])
        aug = ctx.augment(ctx.stage.eval_augment)
        by_hand = {"val": {}, "test": {}}
        with torch.no_grad():
            for split_name, split in (("val", val), ("test", data.test)):
                x = aug(split.load(np.arange(len(split)))[0], None)
                for tau in scores:
                    model.adjust["main"].tau.fill_(tau)
                    by_hand[split_name][tau] = mean_class_top1(model(x)["main"].argmax(1), split.labels)
        assert scores == pytest.approx(by_hand["val"], abs=1e-3)
        assert by_hand["test"] != pytest.approx(by_hand["val"], abs=1e-3)
        best = max(scores.values())
        assert fit["tau"] == min(t for t, v in scores.items() if v == best)  # the best on val; ties: the smallest tau


def _bn_buffers(state, prefix="backbone."):
    return {k: v for k, v in state.items() if k.startswith(prefix) and ("running_" in k or "num_batches" in k)}


def test_crt_and_lws_keep_backbone_and_batchnorm_frozen(run):
    out, _ = run
    ce = load_checkpoint(out / "ce" / "final.pt")["model"]
    for stage in ("crt", "lws"):
        st = load_checkpoint(out / stage / "final.pt")["model"]
        bn = _bn_buffers(ce)
        assert bn and all(torch.equal(bn[k], st[k]) for k in bn), f"{stage} moved BatchNorm statistics"
        assert all(torch.equal(ce[k], st[k]) for k in ce if k.startswith("backbone."))
    crt = load_checkpoint(out / "crt" / "final.pt")["model"]
    assert not torch.allclose(crt["heads.main.fc.weight"], ce["heads.main.fc.weight"])  # re-initialised, re-trained
    lws = load_checkpoint(out / "lws" / "final.pt")["model"]
    assert torch.equal(lws["heads.main.fc.weight"], ce["heads.main.fc.weight"])  # LWS trains only the scales
    assert not torch.allclose(lws["adjust.main.scale"], torch.ones(6))
    ft = load_checkpoint(out / "finetune" / "final.pt")["model"]
    assert not all(torch.equal(ce[k], ft[k]) for k in _bn_buffers(ce))  # fine-tuning trains everything


def test_bn_train_is_an_explicit_opt_in_that_moves_statistics(run, data, tmp_path):
    out, _ = run
    r = recipe("ce", "crt", crt={"bn": "train"})
    (tmp_path / "ce").mkdir()
    (tmp_path / "ce" / "final.pt").write_bytes((out / "ce" / "final.pt").read_bytes())
    run_recipe(r, tmp_path, data=data, resume=True)
    ce = _bn_buffers(load_checkpoint(out / "ce" / "final.pt")["model"])
    crt = load_checkpoint(tmp_path / "crt" / "final.pt")["model"]
    assert not all(torch.equal(ce[k], crt[k]) for k in ce)


def test_results_hold_every_stage(run):
    out, res = run
    assert set(res["stages"]) == {"ce", "crt", "lws", "tau_norm", "ncm", "logit_adjust", "finetune"}
    for m in res["stages"].values():
        assert {"top1", "top5", "many", "medium", "few", "per_class"} <= set(m)


class CountingCE(CrossEntropy):
    name = "ce_count"
    calls = 0

    def loss(self, model, batch, g):
        CountingCE.calls += 1
        return super().loss(model, batch, g)


class CrashingCRT(METHODS["crt"]):
    name = "crt_crash"
    calls = 0

    def loss(self, model, batch, g):
        CrashingCRT.calls += 1
        if CrashingCRT.calls == 5:
            raise KeyboardInterrupt  # as if killed
        return super().loss(model, batch, g)


def test_killed_in_stage_two_resumes_without_rerunning_stage_one(data, tmp_path):
    METHODS["ce_count"], METHODS["crt_crash"] = CountingCE, CrashingCRT
    r = recipe("ce", "crt", ce={"method": "ce_count", "epochs": 1}, crt={"method": "crt_crash", "epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        run_recipe(r, tmp_path, data=data)
    stage1_steps = CountingCE.calls
    ck = load_checkpoint(tmp_path / "crt" / "checkpoint.pt")
    assert (ck["epoch"], ck["step"]) == (0, 3)
    res = run_recipe(r, tmp_path, data=data, resume=True)
    assert CountingCE.calls == stage1_steps  # stage 1 was not trained again
    steps_per_epoch = -(-len(data.train) // 32)
    assert CrashingCRT.calls == 5 + (2 * steps_per_epoch - 3)  # 5 calls (the last one died), then on from step 3
    assert set(res["stages"]) == {"ce", "crt"}


def test_resume_after_editing_one_stage_reuses_the_others(run, data, tmp_path):
    import shutil

    out, res = run
    shutil.copytree(out, tmp_path / "run")
    r = recipe("ce", "crt", "lws", "tau_norm", "ncm", "logit_adjust", "finetune", crt={"epochs": 2})
    again = run_recipe(r, tmp_path / "run", data=data, resume=True)
    assert again["stages"]["crt"]["epochs"] == 2
    for name in ("ce", "lws", "tau_norm", "ncm", "logit_adjust", "finetune"):  # untouched: not retrained
        assert again["stages"][name]["per_class"] == res["stages"][name]["per_class"]
    assert [p.name.split(".")[0] for p in (tmp_path / "run").iterdir() if ".replaced-" in p.name and p.is_dir()] == ["crt"]


@pytest.mark.parametrize("stage", ["crt_hard", "lws_hard"])
def test_a_head_stage_on_two_heads_freezes_the_head_it_does_not_train(data, stage):
    """The other head gets no gradient; left trainable it stops DDP at the second step (test_ddp.py)."""
    method, model, _ = built(data, stage, "stage3", "crt_hard", "lws_hard")
    assert set(model.heads) == {"hard", "soft"}
    method.prepare(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    want = {"heads.hard.fc.weight", "heads.hard.fc.bias"} if stage == "crt_hard" else {"adjust.hard.scale"}
    assert trainable == want
    named = dict(model.named_parameters())
    assert {id(p) for p in method.parameters(model)} == {id(named[n]) for n in want}  # what the optimiser gets
    method.train_mode(model)
    assert not model.heads["soft"].training and not model.backbone.training
    assert model.heads["hard"].training == (stage == "crt_hard")


@pytest.mark.parametrize("method", ["crt", "lws", "tau_norm", "ncm"])
def test_a_head_stage_on_two_heads_must_name_one_of_them(data, method):
    r = recipe("stage3", "crt_hard", crt_hard={"method": method, "params": {}})
    ctx = StageContext(r, r.stage("crt_hard"), data, setup_runtime(r.runtime))
    with pytest.raises(ConfigError) as e:
        get_method(method)(ctx)
    assert str(e.value) == "stages.crt_hard.params.head: stage3 has heads hard, soft; name one"
    r = recipe("stage3", "crt_hard", crt_hard={"method": method, "params": {"head": "main"}})
    with pytest.raises(ConfigError) as e:
        get_method(method)(StageContext(r, r.stage("crt_hard"), data, setup_runtime(r.runtime)))
    assert str(e.value) == "stages.crt_hard.params.head: stage3 has no head 'main'; it has hard, soft"


def test_the_cli_names_the_heads_when_crt_on_two_heads_names_none(tmp_path, capsys):
    import yaml

    from longtail.cli import main

    r = recipe("stage3", "crt_hard", crt_hard={"params": {}}).to_dict()
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    assert main(["train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["longtail: error: stages.crt_hard.params.head: stage3 has heads hard, soft; name one"]
