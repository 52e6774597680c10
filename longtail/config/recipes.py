"""Recipes: lookup by name, YAML reading, ``extends:``, ``stage_defaults``, ``--set`` overrides.

Where names are looked up, first match wins: the folders given by ``--recipes DIR`` (:func:`add_recipe_dirs`),
then those in ``$LONGTAIL_RECIPES`` (``os.pathsep``-separated), then the recipes that ship with longtail:
package data ``longtail/recipes`` (read through :mod:`importlib.resources`) in an installed copy, the
repository's ``recipes/`` in a source checkout or an editable install.
"""
from __future__ import annotations

import copy
import importlib.resources
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .coerce import from_dict
from .rules import validate
from .schema import Recipe, StageConfig
from .stages import scale_epochs


ENV_VAR = "LONGTAIL_RECIPES"
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _packaged_recipes_dir() -> Path:
    """The shipped recipes: ``longtail/recipes`` package data (a wheel, ``pip install .``), else the
    checkout's ``recipes/`` (a source checkout, an editable install). A missing folder is returned as is."""
    try:
        res = importlib.resources.files("longtail").joinpath("recipes")
        if res.is_dir():
            if isinstance(res, Path):
                return res
            return _extracted(res)  # a zipped install: one copy on disk per process, so relative extends work
    except (ModuleNotFoundError, OSError, TypeError):
        pass
    source = _SOURCE_ROOT / "recipes"
    if source.is_dir() and (_SOURCE_ROOT / "pyproject.toml").is_file():
        return source
    return Path(__file__).resolve().parents[1] / "recipes"


def _extracted(res) -> Path:
    out = Path(tempfile.mkdtemp(prefix="longtail-recipes-"))

    def copy_tree(node, dest: Path):
        for child in node.iterdir():
            if child.is_dir():
                (dest / child.name).mkdir()
                copy_tree(child, dest / child.name)
            elif child.name.endswith((".yaml", ".yml")):
                (dest / child.name).write_bytes(child.read_bytes())

    copy_tree(res, out)
    import atexit

    atexit.register(shutil.rmtree, out, True)
    return out


RECIPES_DIR = _packaged_recipes_dir()  # the recipes that ship with longtail
_CLI_DIRS: list[Path] = []


def set_recipe_dirs(dirs) -> None:
    """Folders of user recipes (``longtail --recipes DIR``), searched before ``$LONGTAIL_RECIPES`` and the
    shipped ones; replaces the folders set before."""
    _CLI_DIRS[:] = [Path(d).expanduser() for d in dirs]


def recipe_search_path() -> list[tuple[Path, str]]:
    """``(folder, where it came from)`` in lookup order: ``--recipes``, ``$LONGTAIL_RECIPES``, the shipped ones."""
    env = [Path(d).expanduser() for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d.strip()]
    return ([(d, "--recipes") for d in _CLI_DIRS] + [(d, f"${ENV_VAR}") for d in env]
            + [(RECIPES_DIR, "shipped with longtail")])


def describe_search_path() -> str:
    return ", ".join(f"{d} ({origin}{'' if d.is_dir() else ', missing'})" for d, origin in recipe_search_path())


def _recipe_files(root: Path) -> dict[str, Path]:
    """name -> file of the recipes under one folder; files and folders starting with ``_`` are bases, not listed."""
    if not root.is_dir():
        return {}
    out = {}
    for p in sorted(root.rglob("*.y*ml")):
        rel = p.relative_to(root)
        if p.suffix in (".yaml", ".yml") and p.is_file() and not any(part.startswith("_") for part in rel.parts):
            out.setdefault(rel.with_suffix("").as_posix(), p)
    return out


def recipe_index() -> dict[str, Path]:
    """Every recipe name the search finds -> the file it resolves to (the first folder that has it)."""
    out: dict[str, Path] = {}
    for root, _ in recipe_search_path():
        for name, p in _recipe_files(root).items():
            out.setdefault(name, p)
    return dict(sorted(out.items()))


def _find_named(name: str, exclude: tuple = ()) -> Path | None:
    """The first file that a recipe name names along the search path (files in ``exclude`` skipped, so a
    user recipe can shadow a shipped one of the same name and still ``extends:`` it)."""
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix in (".yaml", ".yml") else name
    if not stem or Path(stem).is_absolute() or ".." in Path(stem).parts:  # a name stays inside its folder
        return None
    for root, _ in recipe_search_path():
        for suffix in (".yaml", ".yml"):
            candidate = root / f"{stem}{suffix}"
            if candidate.is_file() and candidate.resolve() not in exclude:
                return candidate
    return None


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
    return list(recipe_index())


def resolve_recipe_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"recipe file {str(p)!r} does not exist")
        return p
    candidate = _find_named(name_or_path)
    if candidate is not None:
        return candidate
    close = [r for r in available_recipes() if name_or_path.split("/")[-1] in r][:5]
    hint = f"; similar: {', '.join(close)}" if close else f"; looked in {describe_search_path()}"
    raise ConfigError(f"unknown recipe {name_or_path!r}{hint}")


def _resolve_extends(parent: str, path: Path, seen: tuple) -> Path:
    """``extends:`` a file relative to the extending one first (``../_base/cifar.yaml``), then a recipe
    name along the search path (``cifar100-lt/ce``)."""
    rel = path.parent / parent
    for candidate in (rel, rel.with_name(rel.name + ".yaml")) if rel.suffix not in (".yaml", ".yml") else (rel,):
        if candidate.is_file() and candidate.resolve() not in seen:
            return candidate
    found = _find_named(parent, exclude=seen) or (rel if rel.is_file() else _find_named(parent))
    if found is not None:  # (a file already in the chain: _read_yaml reports the cycle)
        return found
    raise ConfigError(f"recipe {path}: extends: {parent!r} is neither a file next to it nor a recipe name "
                      f"(looked in {describe_search_path()})")


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
        chain = seen + (path.resolve(),)
        data = _merge(_read_yaml(_resolve_extends(parent, path, chain), chain), data)
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
