"""BalanceAux's ImageNet-scale recipes against OLTR, whose settings the paper says it follows: per-part
learning rates (Places-LT), the 512-d FC with its ReLU, the 30-epoch schedule."""
import pytest
import torch
import torch.nn.functional as F

from longtail.config import load_recipe
from longtail.data.synthetic import synthetic_bundle
from longtail.engine.context import StageContext
from longtail.engine.optim import build_optimizer, lr_at
from longtail.engine.runtime import setup_runtime
from longtail.methods import get_method

NO_WEIGHTS = ["model.pretrained=null", "runtime.device=cpu"]  # no ImageNet file here; the parts are what count


def built(name: str, overrides=(), num_classes: int = 365):
    r = load_recipe(name, NO_WEIGHTS + list(overrides))
    data = synthetic_bundle(num_classes=num_classes, max_per_class=2, imbalance=1, size=8, test_per_class=1, val_per_class=1)
    ctx = StageContext(r, r.stages[0], data, setup_runtime(r.runtime))
    method = get_method(r.stages[0].method)(ctx)
    torch.manual_seed(0)
    return r, method, method.build_model()


@pytest.fixture(scope="module")
def places():
    return built("places-lt/balance_aux")


def lr_of_each_part(optimizer, model) -> dict[str, set[float]]:
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    out = {}
    for name, p in model.named_parameters():
        part = name.split(".", 1)[0] if not name.startswith("aux.") else ".".join(name.split(".")[:2])
        out.setdefault(part, set()).add(round(lr[id(p)], 12))
    return out


def test_places_lt_learning_rates_are_oltrs(places):
    """OLTR config/Places_LT/stage_1.py: feature model (trunk + 512-d FC) lr 0.001, classifier 0.1, batch 128,
    30 epochs, momentum 0.9, weight decay 5e-4; every new head here learns as OLTR's classifier does."""
    r, method, model = places
    stage = r.stages[0]
    assert (stage.epochs, stage.batch_size, stage.optim.momentum, stage.optim.weight_decay) == (30, 128, 0.9, 5e-4)
    opt = build_optimizer(method.parameters(model), stage.optim, model)
    lrs = lr_of_each_part(opt, model)
    assert set(lrs) == {"backbone", "neck", "heads", "aux.rrs_head", "aux.rotation"}
    assert lrs["backbone"] == lrs["neck"] == {0.001}
    assert lrs["heads"] == lrs["aux.rrs_head"] == lrs["aux.rotation"] == {0.1}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # The loop resets every group's lr each step as schedule lr x lr_scale: the 100:1 ratio holds all along.
    for step in (0, 500, 999):
        base = lr_at(step, 1000, 100, stage.optim.lr, stage.schedule)
        assert sorted(base * g["lr_scale"] for g in opt.param_groups) == pytest.approx([base * 0.01, base])


def test_places_lt_earlier_schedule_stays_reachable():
    r = load_recipe("places-lt/balance_aux", ["stages.main.optim.lr=0.01", "stages.main.optim.groups={}",
                                              "stages.main.batch_size=256"])
    assert r.stages[0].optim.groups == {} and r.stages[0].optim.lr == 0.01 and r.stages[0].batch_size == 256
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    opt = build_optimizer(model.parameters(), r.stages[0].optim, model)
    assert [g["lr"] for g in opt.param_groups] == [0.01]


@pytest.mark.parametrize("name", ["imagenet-lt/balance_aux", "imagenet-lt/balance_aux_r50", "places-lt/balance_aux"])
def test_the_512d_fc_is_relud_as_oltrs(name):
    """OLTR's ResNet feature model: x = F.relu(self.fc_add(x)) after pooling."""
    r = load_recipe(name, NO_WEIGHTS)
    assert r.model.neck_dim == 512 and r.model.neck_relu


def test_the_neck_computes_relu_of_the_fc():
    _, _, model = built("imagenet-lt/balance_aux", num_classes=10)
    fc = model.neck[0]
    pooled = torch.randn(6, fc.in_features) * 3
    with torch.no_grad():
        out = model.neck(pooled.clone())
        affine = F.linear(pooled, fc.weight, fc.bias)
    assert (affine < 0).any()  # without the ReLU the feature would go negative
    assert torch.equal(out, F.relu(affine)) and (out >= 0).all()
    with torch.no_grad():
        feat = model.eval()(torch.randn(2, 3, 64, 64))["feat"]
    assert feat.shape == (2, 512) and (feat >= 0).all() and (feat == 0).any()


def test_imagenet_lt_schedule_is_oltrs_30_epochs():
    """OLTR config/ImageNet_LT/stage_1.py: num_epochs 30, lr 0.1 (feature model and classifier), wd 5e-4."""
    for name in ("imagenet-lt/balance_aux", "imagenet-lt/balance_aux_r50"):
        s = load_recipe(name).stages[0]
        assert (s.epochs, s.optim.lr, s.optim.groups, s.optim.weight_decay, s.schedule.kind) == (30, 0.1, {}, 5e-4, "cosine")
