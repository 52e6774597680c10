"""What a method is: how one stage builds its model and scores a training step.

The engine (``longtail.engine.loop``) owns everything else: sampling, device
transfer, augmentation, precision, the optimiser, checkpoints, logging and
evaluation. A method overrides only the hooks it needs, and most need just
``terms``: its loss as named, weighted terms. ``compose`` (at the end) is the
stage that sums terms of several methods, so a combination is a recipe.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Callable, ClassVar

import torch
from torch import nn

from ..config import parse_params
from ..data.augment.mix import MixedLabels
from ..errors import ConfigError
from ..models.classifier import build_classifier, load_fitting


@dataclass
class Batch:
    """One stream's share of a step: augmented (and perhaps mixed) input, labels, the extra augmented views
    of the same images that the method's feed asks for (``Feed.views``), and where training stands (losses
    that change over the schedule, such as DRW, read it)."""

    x: torch.Tensor
    y: torch.Tensor
    views: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int = 0  # the 0-based epoch of this step
    mix: MixedLabels | None = None  # set when x is a mix of two images: every loss scores both labels (losses.class_ce)


@dataclass
class Feed:
    """A stream of batches for a step; BalanceAux draws two (class-balanced and instance)."""

    sampler: str
    batch_size: int | None = None  # None: the stage's batch_size
    # Extra views of each batch's images, {name: augment preset or spec}: cut with the input on the look-ahead
    # thread (for file images, off the training thread), then augmented from the step's generator after it.
    views: dict = field(default_factory=dict)


@dataclass
class NoParams:
    pass


@dataclass
class Term:
    """One named, weighted loss of a method. A method's step loss is the weighted sum of its terms, and a
    ``compose`` stage sums terms picked from several methods, so a combination needs no method of its own."""

    weight: float
    fn: Callable[..., torch.Tensor]  # (the Classifier, its outputs on this feed's batch, the Batch) -> a scalar
    feed: str = "x"  # the batch stream it reads
    heads: tuple[str, ...] = ()  # the class heads it reads: a composed model builds their union
    aux: dict[str, Callable[[int], nn.Module]] = field(default_factory=dict)  # training-only parts: name -> make(feature_dim)


def unwrap(model: nn.Module) -> nn.Module:
    """The Classifier inside a DDP and/or torch.compile wrapper."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def add_aux(model: nn.Module, terms: dict[str, Term]) -> None:
    """Build the training-only parts the terms need, in term order (so fresh weights depend on the seed only)."""
    for t in terms.values():
        for name, make in t.aux.items():
            if name not in model.aux:
                model.aux[name] = make(model.feature_dim)


def split_rows(out: dict, sizes: list[int], copies: int = 1) -> list[dict]:
    """Each input's rows of one forward over ``copies`` stacked copies of [input_1; ...; input_k] (a copy's
    rows are sum(sizes) apart); rows past the copies (extra views) belong to no input."""
    n = sum(sizes)
    return [{k: torch.cat([v[c * n + end - m : c * n + end] for c in range(copies)]) if copies > 1 else v[end - m : end]
             for k, v in out.items()} for m, end in zip(sizes, accumulate(sizes))]


def sum_terms(classifier: nn.Module, outs: dict[str, dict], batch: dict[str, Batch], terms: dict[str, Term]) -> tuple[torch.Tensor, dict]:
    """sum_i w_i * L_i, each term on its feed's outputs and batch."""
    loss, parts = None, {}
    for name, t in terms.items():
        value = t.fn(classifier, outs[t.feed], batch[t.feed])
        loss = t.weight * value if loss is None else loss + t.weight * value
        parts[name] = value.detach()
    return loss, parts


def weighted_loss(model: nn.Module, batch: dict[str, Batch], terms: dict[str, Term]) -> tuple[torch.Tensor, dict]:
    """sum_i w_i * L_i. Every feed's batch goes through the backbone in one call: BatchNorm then normalises
    over the union of the step's inputs, the model BalanceAux trains (see methods/balance_aux.py)."""
    feeds = [f for f in batch if any(t.feed == f for t in terms.values())]
    x = batch[feeds[0]].x if len(feeds) == 1 else torch.cat([batch[f].x for f in feeds])
    outs = dict(zip(feeds, split_rows(model(x), [len(batch[f].y) for f in feeds])))
    return sum_terms(unwrap(model), outs, batch, terms)


def repeat_labels(b: Batch, copies: int) -> Batch:
    """``b`` with its labels (mixed ones too) repeated for ``copies`` stacked copies of its images."""
    if copies == 1:
        return b
    mix = None if b.mix is None else MixedLabels(b.mix.y.repeat(copies), b.mix.lam)
    return dataclasses.replace(b, y=b.y.repeat(copies), mix=mix)


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
    default_train: ClassVar[str] = "all"  # what SGD updates where the stage says train: auto: all | classifier | lws | none (post-hoc)

    def __init__(self, ctx):
        self.ctx = ctx
        self.stage = ctx.stage
        self.params = parse_params(self.Params, self.stage.params, self.stage.name)

    # -- model --------------------------------------------------------------
    def head_widths(self) -> dict[str, int]:
        """Each class head's output width, by head name; a stage that starts from another keeps that stage's heads."""
        if self.stage.init != "fresh":
            ctx = self.ctx.for_stage(self.stage.init)
            return get_method(ctx.stage.method)(ctx).head_widths()
        return {"main": self.ctx.num_classes}

    def build_model(self) -> nn.Module:
        return build_classifier(self.ctx.recipe.model, self.ctx.num_classes, self.head_widths())

    @property
    def head_name(self) -> str:
        """The class head this stage trains and tests with."""
        return getattr(self.params, "head", "main")

    @property
    def trains(self) -> str:
        """What this stage's SGD updates: the stage's ``train``, else the method's default."""
        return self.default_train if self.stage.train == "auto" else self.stage.train

    def init_from(self, model: nn.Module, state: dict) -> None:
        """Start from an earlier stage's weights (``init: <stage>``); only this stage's adjusters may be new."""
        state = {k: v for k, v in state.items() if not k.startswith("aux.")}  # training-only parts stay behind
        source = self.ctx.artifacts.get(self.stage.init, self.stage.init)
        load_fitting(model, state, f"stage {self.stage.name}: the weights of stage {self.stage.init!r} ({source}) do not fit this model",
                     may_be_new=("adjust.", "aux."))

    def trained_heads(self) -> set[str]:
        """The class heads this stage's loss reads: its terms' heads, else the one it tests with."""
        try:
            read = {h for t in self.terms().values() for h in t.heads}
        except NotImplementedError:
            read = set()
        return read or {self.head_name}

    def check_head(self) -> None:
        """A stage that picks one head of the model it starts from must pick one that model has."""
        heads = self.head_widths()
        if self.head_name in heads:
            return
        where = f"stages.{self.stage.name}.params.head"
        source = self.stage.init if self.stage.init != "fresh" else "this stage's model"
        if "head" not in (self.stage.params or {}):
            raise ConfigError(f"{where}: {source} has heads {', '.join(heads)}; name one")
        raise ConfigError(f"{where}: {source} has no head {self.head_name!r}; it has {', '.join(heads)}")

    def frozen_parts(self, model: nn.Module) -> list[nn.Module]:
        trains = self.trains
        if trains in ("all", "none"):
            return [model] if trains == "none" else []
        # A head (or adjuster) that the loss never reads would still require grad and get none, and DDP
        # (find_unused_parameters off) stops at the next step waiting for its gradient: freeze it too.
        trained = self.trained_heads()
        idle = [m for d in (model.heads, model.adjust) for name, m in d.items() if name not in trained]
        if trains == "lws":
            return [model.backbone, model.neck, model.heads, *idle]
        return [model.backbone, model.neck, *idle]

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
    def terms(self) -> dict[str, Term]:
        """The step's named, weighted losses, as this stage's params set them."""
        raise NotImplementedError(f"method {self.name!r} does not split its loss into terms")

    def loss(self, model: nn.Module, batch: dict[str, Batch], g: torch.Generator) -> tuple[torch.Tensor, dict]:
        """The weighted sum of ``terms``; a method whose loss needs more (extra views of the batch) overrides it."""
        return weighted_loss(model, batch, self.terms())

    def beyond_terms(self) -> str:
        """What ``loss`` adds to the sum of ``terms`` with these params ("": nothing). A ``compose`` stage sums
        terms only, so it refuses a part whose loss has more rather than drop it unseen."""
        return "" if type(self).loss is Method.loss else f"{self.name}'s own loss()"

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


@dataclass
class Part:
    """One method whose terms a ``compose`` stage sums."""

    method: str = ""
    name: str = ""  # its terms are logged as <name>/<term>; default: the method's name
    params: dict = field(default_factory=dict)  # that method's own params (its teachers, T, ...), as in a stage of it
    terms: dict[str, float] = field(default_factory=dict)  # term -> weight; empty: all its terms at its own weights


@dataclass
class ComposeParams:
    parts: list[Part] = field(default_factory=list)
    head: str = ""  # the class head to test with; "": the first head a term reads


@register
class Compose(Method):
    """L = sum_i w_i * L_i over terms that other methods define: a combination of methods as a recipe.

    Each part is a method built on this stage (its params, its teachers), contributing its terms; the
    model has the union of the terms' heads and training-only parts, the step the union of their feeds.
    """

    name = "compose"
    Params = ComposeParams

    def __init__(self, ctx):
        super().__init__(ctx)
        where = f"stages.{self.stage.name}.params"
        if not self.params.parts:
            raise ConfigError(f"{where}.parts: name at least one method whose loss terms to sum")
        self.parts, self._terms = [], {}
        for part in self.params.parts:
            label = part.name or part.method
            at = f"{where}.parts.{label}"
            cls = get_method(part.method)
            if cls is Compose or cls.default_train != "all":  # such a part would freeze what the other parts train
                raise ConfigError(f"{at}: {part.method!r} is not a method that trains the whole network; it cannot be a part")
            sub = cls(dataclasses.replace(ctx, stage=dataclasses.replace(self.stage, name=f"{self.stage.name}.params.parts.{label}",
                                                                         method=part.method, params=part.params)))
            try:
                offered = sub.terms()
            except NotImplementedError as e:
                raise ConfigError(f"{at}: {e}") from None
            if sub.beyond_terms():
                raise ConfigError(f"{at}: {part.method} with these params adds {sub.beyond_terms()} to its terms, "
                                  f"which a compose stage cannot sum; train it as a stage of its own")
            weights = part.terms or {k: t.weight for k, t in offered.items()}
            for term, w in weights.items():
                if term not in offered:
                    raise ConfigError(f"{at}.terms.{term}: not a term of {part.method} with these params; it has {', '.join(offered)}")
                if not w >= 0:
                    raise ConfigError(f"{at}.terms.{term}: a weight must be >= 0, got {w}")
                if f"{label}/{term}" in self._terms:
                    raise ConfigError(f"{at}: two parts are named {label!r}; give one a 'name'")
                if w > 0:  # a weight of 0 drops the term, as BalanceAux's weights drop a stream
                    self._terms[f"{label}/{term}"] = dataclasses.replace(offered[term], weight=w)
            self.parts.append(sub)
        if not self._terms:
            raise ConfigError(f"{where}.parts: every term has weight 0")
        if self.params.head and self.params.head not in self.head_widths():
            raise ConfigError(f"{where}.head: {self.params.head!r} is not a head of this model ({', '.join(self.head_widths())})")

    def terms(self):
        return self._terms

    def head_widths(self):
        if self.stage.init != "fresh":
            return super().head_widths()
        names = dict.fromkeys(h for t in self._terms.values() for h in t.heads)
        return {h: self.ctx.num_classes for h in names} or {"main": self.ctx.num_classes}

    @property
    def head_name(self):
        return self.params.head or next(iter(self.head_widths()))

    def build_model(self):
        model = super().build_model()
        add_aux(model, self._terms)
        return model

    def prepare(self, model):
        super().prepare(model)
        for sub in self.parts:  # each loads its own teachers
            sub.prepare(model)

    def feeds(self):
        """The feeds the chosen terms read, in part order: the first sets the epoch length."""
        used, feeds = {t.feed for t in self._terms.values()}, {}
        for sub in self.parts:
            for name, feed in sub.feeds().items():
                if name in used and feeds.setdefault(name, feed) != feed:
                    raise ConfigError(f"stages.{self.stage.name}.params.parts: two parts read feed {name!r} with different samplers")
        return feeds

    def report(self, model):
        return {"terms": {k: t.weight for k, t in self._terms.items()}}
