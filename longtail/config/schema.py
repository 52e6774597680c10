"""The recipe schema: one dataclass per section, each field typed, defaulted and commented.

Unknown keys, wrong types and values outside a field's ``choice`` are rejected when a mapping is turned
into these classes (:mod:`.coerce`); cross-field rules live in :mod:`.rules`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


def choice(default: str, *options: str):
    """A string field that must be one of ``options`` (checked with the key's name in the message)."""
    return field(default=default, metadata={"choices": (default, *[o for o in options if o != default])})


@dataclass
class DataConfig:
    dataset: str = "cifar100-lt"  # cifar10-lt | cifar100-lt | cifar10 | cifar100 | imagenet-lt | places-lt | inat2017 | inat2018 | folder | synthetic
    imbalance: float = 100.0  # CIFAR-LT imbalance factor n_max / n_min, >= 1
    profile: str = choice("exp", "step")  # CIFAR-LT profile
    lt_seed: int = 0  # numpy seed of the per-class shuffle (LDAM-DRW uses 0)
    val_per_class: int = 20  # balanced validation images per class, drawn outside the training subset
    val_seed: int = 0
    root: str | None = None  # data root; else --data-root, $LONGTAIL_DATA, the user cache
    download: bool = True  # fetch official archives that are absent
    image_root: str | None = None  # split-file datasets: folder the split paths are relative to
    train_split: str | None = None  # split-file datasets: paths of the split lists (default names otherwise)
    val_split: str | None = None
    test_split: str | None = None
    image_size: int = 0  # file datasets: the stored shorter side, aspect kept (0: 256)
    crop_size: int = 0  # file datasets: the model's input side, cut by the first augmentation op (0: 224, or image_size if smaller)
    decoder: str = choice("auto", "simplejpeg", "turbojpeg", "pillow")  # file datasets: JPEG decoder (auto: the fastest installed)
    cache: bool = False  # file datasets: build a JPEG cache of every image at image_size once (`longtail data cache`), read it after
    cache_dir: str | None = None  # where the cache lives (default: the user cache, images/)
    cache_quality: int = 85  # JPEG quality of the cache (85 keeps ImageNet-LT within 6 GB: results/bench-data-cpu.json)
    decode_device: str = choice("auto", "cpu", "cuda")  # file datasets with the cache, training on a GPU: decode there with nvJPEG (auto: where it works)
    many_threshold: int = 100  # many-shot: n_c > many_threshold
    few_threshold: int = 20  # few-shot: n_c < few_threshold
    on_device: bool = True  # hold tensor datasets on the training device
    on_bad_image: str = choice("error", "skip")  # file datasets: a missing/truncated/non-image file stops the run | is dropped (decodes every image once at load, counted in provenance.data)


@dataclass
class ModelConfig:
    backbone: str = "resnet32"
    head: str = choice("linear", "cosine")
    cosine_scale: float = 20.0  # gamma of the cosine head
    cosine_learnable: bool = False  # learn gamma instead of fixing it
    neck_dim: int = 0  # > 0: a linear layer to this width after pooling (OLTR's 512-d FC)
    neck_relu: bool = False  # OLTR's 512-d FC is ReLU'd (F.relu(fc_add(x))); the BalanceAux recipes keep it
    pretrained: str | None = None  # a local torchvision-format ResNet state dict, or "imagenet" (torchvision IMAGENET1K_V1, downloaded once, hash-checked)
    zero_init_residual: bool = False
    experts: int = 0  # > 1: a shared stem (conv1 + layer1) with this many later-stage branches and heads (BalPoE, RIDE); CIFAR ResNets only


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    # lr multipliers per part of the model, e.g. {backbone: 0.1} for a pretrained backbone under new layers
    # (OLTR's and fine-tuning's practice); parts: backbone, neck, heads, adjust, aux
    groups: dict[str, float] = field(default_factory=dict)


@dataclass
class ScheduleConfig:
    kind: str = choice("multistep", "cosine", "constant")
    warmup_epochs: float = 0.0  # linear warm-up to lr over this many epochs
    warmup_from: float = 0.0  # the warm-up's first lr, as a fraction of lr (BBN: 1/3)
    warmup_by: str = choice("step", "epoch")  # lr rises every step (LDAM) | once per epoch (BBN's WarmupMultiStepLR)
    milestones: list[float] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1
    final_lr: float = 0.0  # cosine: the lr it decays to


@dataclass
class MixConfig:
    """Mixup / CutMix of a stage's training batches (Zhang et al. 2018; Yun et al. 2019): one lambda and one
    permutation per batch and feed, as BalPoE and MiSLAS do; every loss then scores both label sets."""

    kind: str = choice("none", "mixup", "cutmix", "mixup_cutmix")  # mixup_cutmix: one of the two per batch, at switch_prob
    alpha: float = 0.4  # mixup: lambda ~ Beta(alpha, alpha) (BalPoE CIFAR: 0.4; MiSLAS: 1.0)
    cutmix_alpha: float = 1.0  # cutmix: lambda ~ Beta(a, a), then lambda = 1 - box area
    switch_prob: float = 0.5  # mixup_cutmix: the chance of cutmix
    until_epoch: int | None = None  # off from this epoch on (None: every epoch)


@dataclass
class StageConfig:
    name: str = "main"
    method: str = "ce"
    init: str = "fresh"  # fresh | the name of an earlier stage to start from
    train: str = choice("auto", "all", "classifier", "lws", "none")  # what SGD updates; none: post-hoc; auto: the method's
    bn: str = choice("frozen", "train")  # BatchNorm of a frozen backbone: eval mode (fixed statistics) | statistics move
    sampler: str = choice("instance", "class_balanced", "sqrt")
    samples_per_class: int = 4  # class-balanced: Z images per drawn class
    epoch_length: str = choice("dataset", "balanced")  # N images per epoch | max_count * num_classes
    epochs: int = 200
    batch_size: int = 128  # global batch, split over DDP ranks
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: Any = "cifar"  # a preset name or a list of ops
    eval_augment: Any = "eval"
    mix: MixConfig = field(default_factory=MixConfig)
    select: str = choice("last", "best_val")  # selection uses the validation split only
    seed: int | None = None  # seed of this stage's fresh weights (e.g. CBD teachers of one type); None: from (runtime.seed, stage name)
    params: dict = field(default_factory=dict)  # the method's own options, checked by the method


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = choice("auto", "bf16", "fp16", "off")  # auto: bf16 where fast
    channels_last: bool = True
    compile: bool = False  # torch.compile: no faster on a 2-core EPYC after a 62 s cold compile (results/cpu-settings-cpu.json)
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0: leave as is)
    eval_every: int = 0  # evaluate on validation every N epochs (0: only at the end of a stage)
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: only at epoch ends)
    eval_batch_size: int = 512
    progress: bool = True
    tensorboard: bool = True
    report_features: int = 50  # test features kept per class for the report's t-SNE (0: none)
    # DDP process-group timeout: how long a rank waits in a collective for a stuck or dead peer before it
    # fails instead of hanging, so it must exceed the longest time one rank works alone between collectives
    dist_timeout_min: float = 60.0


DOC_FIELDS = ("description", "reference")  # a recipe's prose: what it trains does not depend on them


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    reference: str = ""  # where the numbers come from (paper, table)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"no stage named {name!r}; stages are {[s.name for s in self.stages]}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Over the fields a recipe sets away from their defaults, so a field added to longtail later
        (at its default) leaves the hash of every earlier recipe, and the runs recorded under it, valid.
        The prose fields are left out: correcting a citation must not make a finished run look stale."""
        fields = {k: v for k, v in _non_defaults(self).items() if k not in DOC_FIELDS}
        blob = json.dumps(fields, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _non_defaults(obj):
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            if dataclasses.is_dataclass(value):  # nested: only the sub-fields that differ
                inner = _non_defaults(value)
                if inner:
                    out[f.name] = inner
            elif value != default:
                out[f.name] = _non_defaults(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [_non_defaults(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _non_defaults(v) for k, v in obj.items()}
    return obj
