"""Class losses shared by every method: cross-entropy on (perhaps mixed) labels, the log prior of
logit adjustment, LDAM's margins and DRW's class weights. A leaf module: torch only."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def log_prior(counts: Sequence[int] | np.ndarray | torch.Tensor, device=None) -> torch.Tensor:
    """log pi_c of the training class counts (an empty class counts as 1, so it stays finite)."""
    c = torch.as_tensor(np.asarray(counts), dtype=torch.float32).clamp(min=1)
    return torch.log(c / c.sum()).to(device)


def _ce(z: torch.Tensor, y: torch.Tensor, weight, margin) -> torch.Tensor:
    if margin is not None:  # only the true class's logit moves
        z = z - F.one_hot(y, z.shape[1]).to(z.dtype) * margin[y][:, None]
    return F.cross_entropy(z, y, weight=weight)


def class_ce(z: torch.Tensor, b, weight: torch.Tensor | None = None, margin: torch.Tensor | None = None) -> torch.Tensor:
    """CE(z, y) on ``b.y``; on a mixed batch lam * CE(z, y_a) + (1 - lam) * CE(z, y_b) (mixup, Zhang et al. 2018, Eq. 1).

    ``b`` is a Batch (anything with ``y`` and ``mix``). ``weight``: per-class weights, as F.cross_entropy takes
    them; ``margin``: a per-class amount taken off the true class's logit (LDAM).
    """
    z = z.float()
    ce = _ce(z, b.y, weight, margin)
    mix = getattr(b, "mix", None)
    if mix is None:
        return ce
    return mix.lam * ce + (1.0 - mix.lam) * _ce(z, mix.y, weight, margin)


def ldam_margins(counts, max_m: float = 0.5) -> torch.Tensor:
    """LDAM's per-class margins m_c = C / n_c^(1/4), C set so the largest is ``max_m`` (Cao et al. 2019; kaidic/LDAM-DRW losses.py, STRONG.md §1)."""
    n = torch.as_tensor(np.asarray(counts), dtype=torch.float64).clamp(min=1)
    m = n.pow(-0.25)
    return (m * (max_m / m.max())).float()


def drw_weights(counts, beta: float) -> torch.Tensor:
    """Class-balanced weights w_c = (1 - beta) / (1 - beta^n_c), rescaled to sum to C (Cui et al. 2019, the inverse effective number;
    LDAM-DRW's deferred re-weighting). beta = 0 gives every class 1."""
    n = torch.as_tensor(np.asarray(counts), dtype=torch.float64).clamp(min=1)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w / w.sum() * len(n)).float()
