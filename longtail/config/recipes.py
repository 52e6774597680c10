"""Recipes on disk: lookup by name, YAML reading, ``extends:``, ``stage_defaults``, ``--set`` overrides."""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .coerce import from_dict
from .rules import validate
from .schema import Recipe, StageConfig
from .stages import scale_epochs


RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so ``amp: off`` stays the string 'off'."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"] for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


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
        base_stage = by_name.get(name)
        if base_stage is not None and "method" in s and s["method"] != base_stage.get("method"):
            # params belong to a method: a stage that changes method starts from none of the old one's
            base_stage = {k: v for k, v in base_stage.items() if k != "params"}
        out.append(_merge(base_stage, s) if base_stage is not None else s)
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
