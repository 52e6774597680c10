"""What a method is: how one stage builds its model and scores a training step.

The engine (``longtail.engine.loop``) owns everything else: sampling, device
transfer, augmentation, precision, the optimiser, checkpoints, logging and
evaluation. A method overrides only the hooks it needs, and most need just
``loss``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..config import parse_params
from ..errors import ConfigError
from ..models.classifier import build_classifier, load_fitting


@dataclass
class Batch:
    """One feed's share of a step: augmented input, labels, dataset indices and the raw uint8 images."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    raw: torch.Tensor


@dataclass
class Feed:
    """A stream of batches for a step; BalanceAux draws two (class-balanced and instance)."""

    sampler: str
    batch_size: int | None = None  # None: the stage's batch_size


@dataclass
class NoParams:
    pass


METHODS: dict[str, type["Method"]] = {}


def register(cls):
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type["Method"]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]


class Method:
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    scope: ClassVar[str] = "all"  # what SGD updates by default: all | classifier | lws | none (post-hoc)

    def __init__(self, ctx):
        self.ctx = ctx
        self.stage = ctx.stage
        self.p = parse_params(self.Params, self.stage.params, self.stage.name)

    # -- model --------------------------------------------------------------
    def heads(self) -> dict[str, int]:
        """Class heads by name; a stage that starts from another keeps that stage's heads."""
        if self.stage.init != "fresh":
            ctx = self.ctx.for_stage(self.stage.init)
            return get_method(ctx.stage.method)(ctx).heads()
        return {"main": self.ctx.num_classes}

    def build_model(self) -> nn.Module:
        return build_classifier(self.ctx.recipe.model, self.ctx.num_classes, self.heads())

    @property
    def head_name(self) -> str:
        """The class head this stage trains and tests with."""
        return getattr(self.p, "head", "main")

    @property
    def train_scope(self) -> str:
        return self.scope if self.stage.train == "auto" else self.stage.train

    def init_from(self, model: nn.Module, state: dict) -> None:
        """Start from an earlier stage's weights (``init: <stage>``); only this stage's adjusters may be new."""
        state = {k: v for k, v in state.items() if not k.startswith("aux.")}  # training-only parts stay behind
        source = self.ctx.artifacts.get(self.stage.init, self.stage.init)
        load_fitting(model, state, f"stage {self.stage.name}: the weights of stage {self.stage.init!r} ({source}) do not fit this model",
                     may_be_new=("adjust.", "aux."))

    def frozen_parts(self, model: nn.Module) -> list[nn.Module]:
        return {
            "all": [],
            "classifier": [model.backbone, model.neck],
            "lws": [model.backbone, model.neck, model.heads],
            "none": [model],
        }[self.train_scope]

    def prepare(self, model: nn.Module) -> None:
        """Freeze what this stage does not train; subclasses also load teachers here."""
        for part in self.frozen_parts(model):
            part.requires_grad_(False)

    def train_mode(self, model: nn.Module) -> None:
        """Called at the start of each epoch. Frozen parts stay in eval mode, so their BatchNorm
        statistics do not move, unless the stage says ``bn: train``."""
        model.train()
        if self.stage.bn == "frozen":
            for part in self.frozen_parts(model):
                part.eval()

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    # -- data ---------------------------------------------------------------
    def feeds(self) -> dict[str, Feed]:
        """Named batch streams per step; the first one sets the epoch length."""
        return {"x": Feed(self.stage.sampler)}

    # -- step ---------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, Batch], g: torch.Generator) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def report(self, model: nn.Module) -> dict:
        """Extra results of a trained stage for results.json (e.g. SSD's distilled-label distribution)."""
        return {}

    def fit(self, model: nn.Module) -> dict:
        """Post-hoc stages (``train: none``): compute what they need without SGD; return what was chosen."""
        raise NotImplementedError(f"method {self.name!r} trains with SGD; it has no post-hoc fit")

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Test-time logits."""
        return model(x)[self.head_name]
