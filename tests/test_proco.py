"""ProCo: log I_nu against its power series, the closed-form expectation against Monte Carlo vMF samples,
the class estimate by hand, the loss by hand, exact resume, and learning end to end."""
import math

import pytest
import torch
import torch.nn.functional as F

from longtail.config import recipe_from_dict
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.context import StageContext
from longtail.engine.pipeline import run_recipe
from longtail.engine.runtime import setup_runtime
from longtail.errors import ConfigError
from longtail.losses import log_prior
from longtail.methods import get_method
from longtail.methods.base import Batch
from longtail.methods.proco import ProCo
from longtail.models.proco import ClassVMF, log_bessel_iv

from test_engine import Crash, beats_constant_guess, crashing, tiny_recipe


def series_log_iv(nu: float, x: float) -> float:
    """log I_nu(x) = log sum_k (x/2)^(2k+nu) / (k! Gamma(k+nu+1)), summed in log space (float64), far enough
    past its largest term (near k = x/2) that the rest is negligible."""
    k = torch.arange(int(x / 2 + 60 * math.sqrt(x) + 200), dtype=torch.float64)
    logs = (2 * k + nu) * math.log(x / 2) - torch.lgamma(k + 1) - torch.lgamma(k + nu + 1)
    return float(torch.logsumexp(logs, 0))


@pytest.mark.parametrize("nu", [63.0, 15.0])
def test_log_bessel_matches_the_power_series(nu):
    xs = [1e-2, 0.7, 8.0, 63.0, 150.0, 900.0]
    got = log_bessel_iv(nu, torch.tensor(xs, dtype=torch.float64))
    for x, g in zip(xs, got.tolist()):
        assert g == pytest.approx(series_log_iv(nu, x), rel=1e-9 if nu == 63 else 1e-7, abs=1e-9)


def test_log_bessel_gradient_is_the_bessel_ratio():
    # d/dx log I_nu(x) = I_{nu+1}(x) / I_nu(x) + nu / x (the official code's backward, ProCo loss/proco.py)
    x = torch.tensor([0.5, 20.0, 63.0, 400.0], dtype=torch.float64, requires_grad=True)
    log_bessel_iv(63.0, x).sum().backward()
    ratio = [math.exp(series_log_iv(64.0, v) - series_log_iv(63.0, v)) + 63.0 / v for v in x.tolist()]
    assert torch.allclose(x.grad, torch.tensor(ratio, dtype=torch.float64), rtol=1e-8)


def sample_vmf(mu: torch.Tensor, kappa: float, n: int, g: torch.Generator) -> torch.Tensor:
    """n draws from vMF(mu, kappa) in p dimensions (Wood 1994: the cosine to mu by rejection, then a uniform direction)."""
    p = mu.numel()
    b = (-2 * kappa + math.sqrt(4 * kappa ** 2 + (p - 1) ** 2)) / (p - 1)
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (p - 1) * math.log(1 - x0 ** 2)
    beta = torch.distributions.Beta(torch.tensor((p - 1) / 2, dtype=torch.float64), torch.tensor((p - 1) / 2, dtype=torch.float64))
    ws = []
    torch.manual_seed(1)
    while sum(len(w) for w in ws) < n:
        zb = beta.sample((4 * n,))
        w = (1 - (1 + b) * zb) / (1 - (1 - b) * zb)
        u = torch.rand(4 * n, dtype=torch.float64, generator=g)
        ws.append(w[kappa * w + (p - 1) * torch.log(1 - x0 * w) - c >= torch.log(u)])
    w = torch.cat(ws)[:n, None]
    v = torch.randn(n, p, dtype=torch.float64, generator=g)
    v = F.normalize(v - (v @ mu)[:, None] * mu, dim=1)
    return w * mu + torch.sqrt(1 - w ** 2) * v


def test_the_closed_form_is_the_expected_similarity_under_the_class_vmf():
    # ProCo Eq. 13: E exp(z . z' / t) = C_p(kappa) / C_p(||kappa mu + z / t||), here against 400k samples.
    g = torch.Generator().manual_seed(0)
    p, kappa, t = 128, 300.0, 1.0
    vmf = ClassVMF(1, p)
    mu = F.normalize(torch.randn(p, dtype=torch.float64, generator=g), dim=0)
    r = (-p + math.sqrt(p * p + 4 * kappa * kappa)) / (2 * kappa)  # the mean norm R whose kappa = p R / (1 - R^2) is 300
    vmf.mean_old.copy_(r * mu[None])
    assert float(vmf.kappa()) == pytest.approx(kappa, rel=1e-9)
    z = F.normalize(mu + 0.8 * F.normalize(torch.randn(p, dtype=torch.float64, generator=g), dim=0), dim=0)
    samples = sample_vmf(mu, kappa, 400_000, g)
    mc = torch.logsumexp(samples @ z / t, 0) - math.log(len(samples))
    assert float(vmf.expected_logits(z[None], t)) == pytest.approx(float(mc), abs=2e-3)
    assert float((samples @ mu).mean()) == pytest.approx(r, abs=1e-3)  # the sampler's own check: E[mu . z'] = A_p(kappa) ~ R


def test_the_class_estimate_is_a_running_mean_over_two_epochs_by_hand():
    vmf = ClassVMF(3, 4)
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    y = torch.tensor([0, 0, 1, 0, 1])
    vmf.update(a[:3], y[:3], epoch=0)
    vmf.update(a[3:], y[3:], epoch=0)
    by_hand = torch.stack([a[[0, 1, 3]].mean(0), a[[2, 4]].mean(0)]).double()
    assert torch.allclose(vmf.mean_new[:2], by_hand) and torch.allclose(vmf.mean_old[:2], by_hand)
    assert vmf.count_new.tolist() == [3, 2, 0]
    assert torch.equal(vmf.mean_new[2], vmf.start[2]) and float(vmf.mean_new[2].norm()) == pytest.approx(0.9)  # unseen: its start
    b = F.normalize(torch.randn(2, 4, generator=g), dim=1)
    vmf.update(b, torch.tensor([0, 2]), epoch=1)  # a new epoch: the old window has epoch 0 and this batch
    assert torch.allclose(vmf.mean_new[0], b[0].double()) and vmf.count_new.tolist() == [1, 0, 1]
    assert torch.equal(vmf.mean_new[1], vmf.start[1])  # the new window restarted from the start
    assert torch.allclose(vmf.mean_old[0], (3 * by_hand[0] + b[0].double()) / 4)
    assert torch.allclose(vmf.mean_old[1], by_hand[1]) and vmf.count_old.tolist() == [4, 2, 1]
    r = vmf.mean_old.norm(dim=1)
    assert torch.allclose(vmf.kappa()[:2], 4 * r[:2] / (1 - r[:2] ** 2))
    assert float(vmf.kappa()[2]) == 1e5  # one feature: R = 1, kappa capped as the official code caps it


def proco_recipe(epochs=6, method="proco", **over):
    return tiny_recipe(epochs=epochs, method=method, params={"dim": 16, "hidden": 32, "views": "cifar_simclr", **over})


def test_the_loss_is_la_on_view_one_plus_the_vmf_term_on_views_two_and_three(data):
    r = proco_recipe()
    ctx = StageContext(r, r.stages[0], data, setup_runtime(r.runtime))
    method = get_method("proco")(ctx)
    model = method.build_model()
    method.prepare(model)
    model.train()
    g = torch.Generator().manual_seed(3)
    x, v2, v3 = (torch.randn(8, 3, 16, 16, generator=g) for _ in range(3))
    y = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    head = model.aux["proco"]
    before = {k: v.clone() for k, v in head.vmf.state_dict().items()}
    with torch.no_grad():
        loss, parts = method.loss(model, {"x": Batch(x, y, {"v2": v2, "v3": v3})}, torch.Generator().manual_seed(4))
    # by hand, from the same start: one forward of the three views, the classifier on view 1; the class means
    # folded in view by view; the vMF logits from kappa = p R / (1 - R^2) and log I_nu by its power series
    with torch.no_grad():
        out = model(torch.cat([x, v2, v3]))
        lp = log_prior(ctx.train_counts)
        la = F.cross_entropy(out["main"][:8] + lp, y)
        z = head(out["feat"]).double()
        p, nu = 16, 7.0
        log_c = lambda k: nu * math.log(k) - series_log_iv(nu, k)  # noqa: E731
        mean, count, scl = before["start"].clone(), torch.zeros(6, dtype=torch.float64), 0.0
        for v in (1, 2):
            zv = z[8 * v:8 * (v + 1)]
            for c in range(6):
                rows = zv[y == c]
                if len(rows):
                    mean[c] = (count[c] * mean[c] + rows.sum(0)) / (count[c] + len(rows))
                    count[c] += len(rows)
            r = mean.norm(dim=1)
            kappa = [p * float(rc) / (1 - float(rc) ** 2) if float(rc) < 1 else -1.0 for rc in r]
            kappa = [k if 0 <= k <= 1e5 else 1e5 for k in kappa]  # the official cap, R >= 1 included
            logits = torch.tensor([[log_c(kappa[c]) - log_c(float((kappa[c] * mean[c] / r[c] + zv[i] / 0.1).norm()))
                                    for c in range(6)] for i in range(8)], dtype=torch.float64)
            scl += float(F.cross_entropy(logits + lp.double(), y)) / 2
    assert float(parts["la_ce"]) == pytest.approx(float(la), rel=1e-5)
    assert float(parts["proco"]) == pytest.approx(scl, rel=1e-4)  # nu = 7: the uniform expansion is good to ~1e-5 there
    assert float(loss) == pytest.approx(float(la) + scl, rel=1e-4)


def test_bad_params_and_an_unknown_view_preset_are_config_errors(data):
    for params, match in (({"temperature": 0}, "temperature must be > 0"), ({"views": "nope"}, "unknown augment preset 'nope'")):
        r = proco_recipe(**params)
        with pytest.raises(ConfigError, match=match):
            get_method("proco")(StageContext(r, r.stages[0], data, setup_runtime(r.runtime)))


@pytest.fixture(scope="module")
def proco_run(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("proco")
    return out, run_recipe(proco_recipe(), out, data=data)


def test_proco_learns_and_leaves_its_head_behind(proco_run, data):
    out, res = proco_run
    beats_constant_guess(res["final"]["top1"], data.test.labels)
    final = load_checkpoint(out / "ce" / "final.pt")
    assert not any(k.startswith("aux.") for k in final["model"])  # one plain network at test time
    ck = torch.load(out / "ce" / "final.pt", weights_only=True)
    assert ck["metrics"]["top1"] == res["final"]["top1"]


CrashingProCo = crashing(ProCo, "proco_crash")


def test_a_run_killed_mid_epoch_resumes_bit_identical(proco_run, data, tmp_path):
    # Killed in epoch 3 after a mid-epoch checkpoint: the estimate's two windows must come back from it as they were.
    steps_per_epoch = -(-len(data.train) // 32)
    CrashingProCo.calls, CrashingProCo.crash_at = 0, 3 * steps_per_epoch + 6
    r = proco_recipe(method="proco_crash")
    with pytest.raises(Crash):
        run_recipe(r, tmp_path, data=data)
    ck = load_checkpoint(tmp_path / "ce" / "checkpoint.pt")
    assert (ck["epoch"], ck["step"]) == (3, 4) and ck["model"]["aux.proco.vmf.epoch"].item() == 3
    CrashingProCo.crash_at = None
    res = run_recipe(r, tmp_path, data=data, resume=True)
    out, full = proco_run
    assert res["final"]["per_class"] == full["final"]["per_class"]
    a = load_checkpoint(out / "ce" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "ce" / "final.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
