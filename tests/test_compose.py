"""compose: a stage whose loss sums terms of other methods; the SSD + CBD + BalanceAux recipe (ours) on tiny data."""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from test_engine import beats_constant_guess  # noqa: E402
from longtail.config import keep_stages, load_recipe
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.context import StageContext
from longtail.engine.pipeline import run_recipe
from longtail.engine.runtime import setup_runtime
from longtail.errors import ConfigError
from longtail.methods import Batch, get_method

RECIPE = "cifar100-lt/ssd_cbd_aux"
TINY = ["model.backbone=resnet20", "runtime.device=cpu", "runtime.amp=off", "runtime.progress=false", "runtime.tensorboard=false",
        "stages.stage1.batch_size=32", "stages.stage2.batch_size=64", "stages.student.batch_size=32"]


def tiny(*overrides):
    return load_recipe(RECIPE, TINY + list(overrides), epochs_scale=0.005)  # every stage 1 epoch


def method_for(recipe, stage, data):
    ctx = StageContext(recipe, recipe.stage(stage), data, setup_runtime(recipe.runtime))
    return get_method(ctx.stage.method)(ctx)


def batch_of(data, idx):
    u8, y = data.train.load(np.asarray(idx))
    x = (u8.float() / 255 - 0.5) / 0.25
    return Batch(x, torch.as_tensor(y))


def test_composed_loss_is_the_weighted_sum_of_the_three_papers_terms(data):
    r = tiny()
    torch.manual_seed(0)
    method = method_for(r, "student", data)
    student = method.build_model().eval()  # eval-mode BatchNorm: the same features batched or not
    assert set(student.heads) == {"hard", "soft"} and set(student.aux) == {"rrs_head"} and method.head_name == "hard"
    feeds = method.feeds()
    assert list(feeds) == ["x", "rrs"] and feeds["x"].sampler == "class_balanced" and feeds["rrs"].sampler == "instance"
    # Teachers with random weights, as the engine would load them: stage2 (LWS scales) for the soft labels, stage1's features.
    ssd, cbd, _ = method.parts
    lws_method = method_for(r, "stage2", data)
    lws = lws_method.build_model().eval().requires_grad_(False)
    with torch.no_grad():
        lws.adjust["main"].scale.copy_(torch.linspace(0.5, 2.0, 6))
    t1_method = method_for(r, "stage1", data)
    t1 = t1_method.build_model().eval().requires_grad_(False)
    ssd.teacher_method, ssd.teacher = lws_method, lws
    cbd.teachers = [(t1_method, t1)]

    cbs, rrs = batch_of(data, range(0, 8)), batch_of(data, range(150, 158))
    calls = []
    forward = student.forward
    student.forward = lambda x: calls.append(len(x)) or forward(x)
    loss, parts = method.loss(student, {"x": cbs, "rrs": rrs}, torch.Generator())
    assert calls == [16]  # both streams through the backbone in one call
    with torch.no_grad():
        out, out_r = forward(cbs.x), forward(rrs.x)
        T = 2.0
        p = F.softmax(lws(cbs.x)["main"] / T, dim=1)
        ce = F.cross_entropy(out["hard"], cbs.y)
        kd = -(T * T) * (p * F.log_softmax(out["soft"] / T, dim=1)).sum(1).mean()
        v, vt = out["feat"], F.normalize(t1(cbs.x)["feat"], dim=1)
        feat = (1 - (v * vt).sum(1) / (v.norm(dim=1) * vt.norm(dim=1))).mean()
        aux = F.cross_entropy(student.aux["rrs_head"](out_r["feat"]), rrs.y)
    hand = {"ssd_distill/ce": ce, "ssd_distill/kd": kd, "cbd/feat": feat, "balance_aux/rrs": aux}
    assert list(parts) == list(hand)
    for k, v in hand.items():
        assert parts[k].item() == pytest.approx(v.item(), rel=1e-4, abs=1e-5), k
    assert loss.item() == pytest.approx((1.0 * ce + 1.0 * kd + 40.0 * feat + 1.0 * aux).item(), rel=1e-4)
    assert method.report(student) == {"terms": {"ssd_distill/ce": 1.0, "ssd_distill/kd": 1.0, "cbd/feat": 40.0, "balance_aux/rrs": 1.0}}


def test_recipe_trains_end_to_end(data, tmp_path):
    r = load_recipe(RECIPE, TINY, epochs_scale=0.03)  # every stage 6 epochs: enough to beat a constant guess
    keep_stages(r, ["student"])  # the teachers of its parts count as its inputs
    assert [s.name for s in r.stages] == ["stage1", "stage2", "student"]
    res = run_recipe(r, tmp_path, data=data)
    assert list(res["stages"]) == ["stage1", "stage2", "student"] and res["final"]["stage"] == "student"
    final = res["final"]
    assert final["num_images"] == len(data.test)
    beats_constant_guess(final["top1"], data.test.labels)
    exported = load_checkpoint(tmp_path / "student" / "final.pt")["model"]
    assert {k.split(".")[1] for k in exported if k.startswith("heads.")} == {"hard", "soft"}
    assert not any(k.startswith("aux.") for k in exported)  # h_a is training-only
    assert any(k.startswith("aux.rrs_head") for k in load_checkpoint(tmp_path / "student" / "checkpoint.pt")["model"])
    logged = (tmp_path / "student" / "metrics.jsonl").read_text()
    assert all(f'"{k}"' in logged for k in ("ssd_distill/ce", "ssd_distill/kd", "cbd/feat", "balance_aux/rrs"))
    s1 = load_checkpoint(tmp_path / "stage1" / "final.pt")["model"]
    assert not torch.equal(s1["backbone.conv1.weight"], exported["backbone.conv1.weight"])


@pytest.mark.parametrize("part,message", [
    ({"method": "cbd", "params": {"teachers": ["stage1"]}, "terms": {"kd": 1.0}}, "parts.cbd.terms.kd: not a term of cbd"),
    ({"method": "ssd_ssl"}, "parts.ssd_ssl: method 'ssd_ssl' does not split its loss into terms"),
    ({"method": "lws"}, "parts.lws: 'lws' is not a method that trains the whole network"),
    ({"method": "balance_aux", "params": {"rotation": "off"}, "terms": {"rrs": -1.0}}, "weight must be >= 0"),
    # a part whose own loss has more than its terms is refused, not summed without it
    ({"method": "balance_aux", "terms": {"rrs": 1.0}}, "parts.balance_aux: balance_aux with these params adds the rotation term "
                                                       "(params.rotation: task) to its terms, which a compose stage cannot sum"),
    ({"method": "proco"}, "parts.proco: proco scores two extra views of each image in its own loss"),
])
def test_bad_parts_are_config_errors_naming_the_key(data, part, message):
    r = tiny()
    r.stage("student").params["parts"].append(part)
    with pytest.raises(ConfigError, match=re.escape(message)):
        method_for(r, "student", data)


def test_every_composable_method_states_its_own_loss_as_terms(data):
    """The standalone methods and their terms are one definition: ssd_distill is CE + KD at l1, l2."""
    r = tiny()
    ssd = method_for(r, "student", data).parts[0]
    assert {k: t.weight for k, t in ssd.terms().items()} == {"ce": 1.0, "kd": 1.0}
    assert ssd.terms()["ce"].heads == ("hard",) and ssd.terms()["kd"].heads == ("soft",)
