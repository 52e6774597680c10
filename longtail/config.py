"""Typed configuration: dataclasses, YAML recipes, ``--set`` overrides.

A recipe is YAML that maps onto :class:`Recipe`. Every key is checked: an
unknown key, a wrong type or a bad value raises :class:`ConfigError` naming the
dotted key (``stages.ce.optim.lrr``), so a typo never silently trains the
wrong thing. A recipe may ``extends:`` another one; mappings merge key by key
and stages merge by name.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re

import yaml

from .errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so ``amp: off`` stays the string 'off'."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"] for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


# --------------------------------------------------------------------------- schema


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
    neck_relu: bool = False
    pretrained: str | None = None  # a local torchvision-format ResNet state dict
    zero_init_residual: bool = False


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
    select: str = choice("last", "best_val")  # selection uses the validation split only
    seed: int | None = None  # seed of this stage's fresh weights (e.g. CBD teachers of one type); None: from (runtime.seed, stage name)
    params: dict = field(default_factory=dict)  # the method's own options, checked by the method


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = choice("auto", "bf16", "fp16", "off")  # auto: bf16 where fast
    channels_last: bool = True
    compile: bool = False  # torch.compile: +10% on CPU after a 45-60 s cold compile
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0: leave as is)
    eval_every: int = 0  # evaluate on validation every N epochs (0: only at the end of a stage)
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: only at epoch ends)
    eval_batch_size: int = 512
    progress: bool = True
    tensorboard: bool = True
    report_features: int = 50  # test features kept per class for the report's t-SNE (0: none)


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




# --------------------------------------------------------------------------- dict -> dataclass


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Check ``value`` against the annotation ``tp``; return it converted."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        # Stages are named in messages by their name, as --set addresses them.
        label = lambda i, v: v["name"] if dataclasses.is_dataclass(item) and isinstance(v, dict) and "name" in v else i  # noqa: E731
        return [_coerce(v, item, f"{key}.{label(i, v)}") for i, v in enumerate(value)]
    if origin is tuple:  # tuple[float, float] (a fixed length) or tuple[float, ...]
        args = typing.get_args(tp)
        items = (args[0],) * len(value) if len(args) == 2 and args[1] is Ellipsis and isinstance(value, (list, tuple)) else args
        if not isinstance(value, (list, tuple)) or len(value) != len(items) or not items:
            what = f"{len(args)} values" if Ellipsis not in args else "a non-empty list"
            raise ConfigError(f"{key}: expected {what} [..], got {value!r}")
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()} if args else dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "2e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def from_dict(cls, data, prefix: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys by their dotted name."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'recipe'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    fields_meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], dotted)
        choices = fields_meta[key].get("choices")
        if choices and kwargs[key] not in choices:
            raise ConfigError(f"{dotted}: {kwargs[key]!r} is not one of {', '.join(choices)}")
    return cls(**kwargs)


def parse_params(cls, params: dict, stage: str):
    """Check a stage's method-specific ``params`` against the method's dataclass."""
    return from_dict(cls, params, f"stages.{stage}.params")


# --------------------------------------------------------------------------- YAML, extends, overrides


def _merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base and k != "stages" else v
        if "stages" in over and "stages" in base:
            out["stages"] = _merge_stages(base["stages"], over["stages"])
        return out
    return copy.deepcopy(over)


def _merge_stages(base: list, over: list) -> list:
    """Stages merge by name, so a derived recipe can change one stage's field."""
    by_name = {s.get("name", "main"): s for s in base if isinstance(s, dict)}
    out = []
    for s in over:
        name = s.get("name", "main") if isinstance(s, dict) else None
        out.append(_merge(by_name[name], s) if name in by_name else s)
    return out


def available_recipes() -> list[str]:
    return sorted(
        str(p.relative_to(RECIPES_DIR).with_suffix(""))
        for p in RECIPES_DIR.rglob("*.yaml")
        if not any(part.startswith("_") for part in p.relative_to(RECIPES_DIR).parts)
    )


def resolve_recipe_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"recipe file {str(p)!r} does not exist")
        return p
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    close = [r for r in available_recipes() if name_or_path.split("/")[-1] in r][:5]
    hint = f"; similar: {', '.join(close)}" if close else "; run 'longtail recipes' for the list"
    raise ConfigError(f"unknown recipe {name_or_path!r}{hint}")


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"recipe {path}: 'extends' forms a cycle")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"recipe {where}: invalid YAML: {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"recipe {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: expected a mapping at the top level")
    parent = data.pop("extends", None)
    if parent is not None and not isinstance(parent, str):
        raise ConfigError(f"recipe {path}: extends: expected a recipe name or a .yaml path, got {parent!r}")
    if parent:
        base_path = (path.parent / parent) if str(parent).endswith((".yaml", ".yml")) else resolve_recipe_path(parent)
        data = _merge(_read_yaml(base_path, seen + (path.resolve(),)), data)
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    key, raw = item.split("=", 1)
    try:
        value = yaml_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict, path: list[str], value, dotted: str):
    node = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):  # stages: by name, or by position
            match = [s for s in node if isinstance(s, dict) and s.get("name") == part]
            if match:
                node = match[0]
            elif part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ConfigError(f"--set {dotted}: no stage {part!r}")
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {dotted}: {'.'.join(path[: i + 1])} is not a mapping")
    if isinstance(node, list):
        raise ConfigError(f"--set {dotted}: name a field of a stage, e.g. stages.<name>.epochs")
    node[path[-1]] = value


def expand_stage_defaults(data: dict) -> dict:
    """``stage_defaults`` (a recipe-level mapping) fills every stage's unset fields, so a recipe states a
    shared schedule once; the resolved recipe has it written into each stage."""
    defaults = data.pop("stage_defaults", None)
    if defaults is None:
        return data
    if not isinstance(defaults, dict):
        raise ConfigError("stage_defaults: expected a mapping of stage fields")
    from_dict(StageConfig, {k: v for k, v in defaults.items() if k != "name"}, "stage_defaults")  # typo check
    stages = data.get("stages", [{"name": StageConfig().name}])  # a base recipe may set no stages
    if not isinstance(stages, list):
        raise ConfigError(f"stages: expected a list of stages, got {stages!r}")
    data["stages"] = [_merge(defaults, s) if isinstance(s, dict) else s for s in stages]
    return data


def scale_epochs(recipe: Recipe, factor: float, keep_short: int = 0) -> None:
    """``--epochs-scale``: shrink every stage (and its schedule) for quick runs; at least 1 epoch.

    Stages of at most ``keep_short`` epochs keep their length: the re-balancers (cRT, LWS) are
    short by design and only train a head, so cutting them tests an under-trained head, not the method.
    """
    if factor <= 0:
        raise ConfigError(f"--epochs-scale must be > 0, got {factor}")
    for s in recipe.stages:
        if s.epochs <= keep_short:  # post-hoc stages (0 epochs) do not train
            continue
        new = max(1, round(s.epochs * factor))
        ratio = new / s.epochs if s.epochs else 1.0
        s.epochs = new
        s.schedule.warmup_epochs *= ratio
        s.schedule.milestones = [m * ratio for m in s.schedule.milestones]


def stage_refs(stage: "StageConfig | dict") -> set[str]:
    """The earlier stages a stage starts from (``init``) or learns from (``teacher``/``teachers``, also
    those of a ``compose`` stage's parts)."""
    get = stage.get if isinstance(stage, dict) else lambda k, d=None: getattr(stage, k, d)
    params = get("params") or {}
    parts = params.get("parts") if isinstance(params.get("parts"), list) else []
    refs = {get("init", "fresh")}
    for p in [params] + [p.get("params") or {} for p in parts if isinstance(p, dict)]:
        refs |= {p.get("teacher")} | set(p.get("teachers") or [])
    return {r for r in refs if isinstance(r, str) and r != "fresh"}


def keep_stages(recipe: Recipe, wanted: list[str]) -> None:
    """Drop every stage that neither is in ``wanted`` nor is needed by one that is (a bench grid trains only what it reports)."""
    names = {s.name for s in recipe.stages}
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ConfigError(f"recipe {recipe.name}: no stage named {missing}; stages are {sorted(names)}")
    needed, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(r for r in stage_refs(recipe.stage(name)) if r in names)
    recipe.stages = [s for s in recipe.stages if s.name in needed]


OPTIM_GROUPS = ("backbone", "neck", "heads", "adjust", "aux")  # the Classifier's parts


def validate(recipe: Recipe) -> None:
    names = [s.name for s in recipe.stages]
    if not names:
        raise ConfigError("stages: a recipe needs at least one stage")
    if len(set(names)) != len(names):
        raise ConfigError(f"stages: names must be unique, got {names}")
    for i, s in enumerate(recipe.stages):
        k = f"stages.{s.name}"
        if s.init != "fresh" and s.init not in names[:i]:
            raise ConfigError(f"{k}.init: {s.init!r} is neither 'fresh' nor an earlier stage ({names[:i]})")
        if s.epochs < 0:
            raise ConfigError(f"{k}.epochs must be >= 0")
        if s.batch_size <= 0:
            raise ConfigError(f"{k}.batch_size must be > 0")
        if s.sampler == "class_balanced" and (s.samples_per_class <= 0 or s.batch_size % s.samples_per_class):
            raise ConfigError(f"{k}.batch_size ({s.batch_size}) must be a multiple of samples_per_class ({s.samples_per_class})")
    if not recipe.data.imbalance >= 1:  # also NaN
        raise ConfigError(f"data.imbalance must be >= 1, got {recipe.data.imbalance:g}")
    if recipe.data.few_threshold > recipe.data.many_threshold:
        raise ConfigError("data.few_threshold must not exceed data.many_threshold")
    for s in recipe.stages:
        bad = sorted(set(s.optim.groups) - set(OPTIM_GROUPS))
        if bad:
            raise ConfigError(f"stages.{s.name}.optim.groups: unknown part {bad[0]!r}; choose from {', '.join(OPTIM_GROUPS)}")
        if any(not v >= 0 for v in s.optim.groups.values()):
            raise ConfigError(f"stages.{s.name}.optim.groups: lr multipliers must be >= 0, got {s.optim.groups}")
    for key in ("image_size", "crop_size"):
        if getattr(recipe.data, key) < 0:
            raise ConfigError(f"data.{key} must be >= 0 (0: the dataset's default), got {getattr(recipe.data, key)}")
    if not 1 <= recipe.data.cache_quality <= 100:
        raise ConfigError(f"data.cache_quality must be a JPEG quality in 1..100, got {recipe.data.cache_quality}")


def load_recipe(name_or_path: str, overrides: list[str] = (), epochs_scale: float | None = None) -> Recipe:
    """Read a recipe by name (``cifar100-lt/ce``) or path, apply ``--set`` overrides, check it."""
    path = resolve_recipe_path(name_or_path)
    data = _read_yaml(path)
    for item in overrides:
        keys, value = parse_override(item)
        apply_override(data, keys, value, item.split("=", 1)[0])
    data = expand_stage_defaults(data)
    data.setdefault("name", name_or_path if not path.suffix or name_or_path.count("/") == 1 else path.stem)
    recipe = from_dict(Recipe, data)
    if epochs_scale is not None and epochs_scale != 1:
        scale_epochs(recipe, epochs_scale)
    validate(recipe)
    return recipe


def recipe_from_dict(data: dict) -> Recipe:
    recipe = from_dict(Recipe, data)
    validate(recipe)
    return recipe


def steps_for(epochs: float, steps_per_epoch: int) -> int:
    return max(1, math.ceil(epochs * steps_per_epoch))
