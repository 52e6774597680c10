"""A backbone, an optional neck, and one or more heads on the same feature.

The parts are named so that stages can freeze them: ``backbone`` and ``neck``
make the feature, ``heads`` the class logits, ``adjust`` the post-hoc or LWS
logit adjusters of the decoupled re-balancers, ``aux`` what only training uses
(self-supervised heads, momentum encoders).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError


class Classifier(nn.Module):
    """``forward`` returns ``{"feat": v, <head name>: logits, ...}``: methods pick the heads they train."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module], neck: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.neck = neck if neck is not None else nn.Identity()
        self.heads = nn.ModuleDict(heads)
        self.adjust = nn.ModuleDict()  # head name -> logit adjuster (LWS, tau-norm, NCM, ...), see adjust.py
        # Training-only parts (rotation head, momentum encoder, queue): checkpointed with their stage,
        # never inherited by a later stage.
        self.aux = nn.ModuleDict()
        self.feature_dim = getattr(neck, "feature_dim", None) or backbone.feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self.features(x)
        out = {}
        for name, head in self.heads.items():
            z = head(feat)
            out[name] = self.adjust[name](z, feat, head) if name in self.adjust else z
        out["feat"] = feat
        return out


def build_classifier(cfg, num_classes: int, heads: dict[str, int] | None = None) -> Classifier:
    """``heads`` maps head name to output width; by default one class head, ``main``."""
    from . import build_backbone, build_head
    from .heads import LinearNeck

    from .experts import ExpertsHead, ExpertsResNet

    make = lambda: build_backbone(cfg.backbone, **({"zero_init_residual": True} if cfg.zero_init_residual else {}))  # noqa: E731
    backbone = ExpertsResNet(make, cfg.experts) if cfg.experts > 1 else make()
    if cfg.experts > 1 and cfg.neck_dim > 0:
        raise ConfigError("model.experts: each expert has its own head on its own feature; set model.neck_dim: 0")
    neck = LinearNeck(backbone.feature_dim, cfg.neck_dim, relu=cfg.neck_relu) if cfg.neck_dim > 0 else None
    dim = cfg.neck_dim if cfg.neck_dim > 0 else backbone.feature_dim
    heads = heads or {"main": num_classes}
    built = {}
    for name, width in heads.items():
        # Self-supervised heads (rotation) stay linear whatever the class head is.
        kind = cfg.head if width == num_classes else "linear"
        cosine = {"scale": cfg.cosine_scale, "learn_scale": cfg.cosine_learnable} if kind == "cosine" else {}
        if cfg.experts > 1 and width == num_classes:
            built[name] = ExpertsHead(lambda d: build_head(kind, d, width, **cosine), cfg.experts, backbone.expert_dim)
        else:
            built[name] = build_head(kind, dim, width, **cosine)
    return Classifier(backbone, built, neck)


def exported_state(model: nn.Module) -> dict:
    """What a finished stage keeps: everything but the training-only ``aux`` parts."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("aux.")}


def load_fitting(model: nn.Module, state: dict, misfit: str, may_be_new: tuple[str, ...] = ("aux.",)) -> None:
    """Load ``state`` strictly, except that parts under ``may_be_new`` may be absent from it. A state that
    does not fit (other keys, or tensors of another shape: another width or number of classes) is a
    :class:`CheckpointError`: ``misfit`` (which names where the state came from), then the first misfits."""
    from ..errors import CheckpointError

    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        sizes = [l.strip() for l in str(e).splitlines() if "size mismatch" in l]
        raise CheckpointError(f"{misfit}: {(sizes or [str(e).strip().splitlines()[-1]])[0][:200]}") from None
    bad = [k for k in missing if not k.startswith(may_be_new)] + list(unexpected)
    if bad:
        raise CheckpointError(f"{misfit}: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")


def load_exported(model: nn.Module, state: dict, where=None) -> None:
    """Load an exported state: strict, except that training-only ``aux`` parts may be absent."""
    load_fitting(model, state, f"{f'checkpoint {where}' if where is not None else 'the checkpoint'} does not fit this model")
