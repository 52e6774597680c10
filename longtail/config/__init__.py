"""Typed configuration: dataclasses, YAML recipes, ``--set`` overrides.

A recipe is YAML that maps onto :class:`Recipe`. Every key is checked: an
unknown key, a wrong type or a bad value raises :class:`ConfigError` naming the
dotted key (``stages.ce.optim.lrr``), so a typo never silently trains the
wrong thing. A recipe may ``extends:`` another one; mappings merge key by key
and stages merge by name.

The parts: :mod:`.schema` (the dataclasses), :mod:`.coerce` (mapping -> dataclass), :mod:`.recipes`
(files, ``extends``, overrides, lookup), :mod:`.rules` (validation), :mod:`.stages` (stage edits).
"""
from ..errors import ConfigError
from .schema import (
    choice,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    StageConfig,
    RuntimeConfig,
    DOC_FIELDS,
    Recipe,
)
from .coerce import (
    from_dict,
    parse_params,
)
from .rules import (
    OPTIM_GROUPS,
    validate,
)
from .stages import (
    scale_epochs,
    stage_refs,
    keep_stages,
    steps_for,
)
from .recipes import (
    RECIPES_DIR,
    yaml_load,
    available_recipes,
    resolve_recipe_path,
    parse_override,
    apply_override,
    expand_stage_defaults,
    load_recipe,
    recipe_from_dict,
)

__all__ = [
    "ConfigError",
    "choice",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "StageConfig",
    "RuntimeConfig",
    "DOC_FIELDS",
    "Recipe",
    "from_dict",
    "parse_params",
    "RECIPES_DIR",
    "yaml_load",
    "available_recipes",
    "resolve_recipe_path",
    "parse_override",
    "apply_override",
    "expand_stage_defaults",
    "load_recipe",
    "recipe_from_dict",
    "scale_epochs",
    "stage_refs",
    "keep_stages",
    "steps_for",
    "OPTIM_GROUPS",
    "validate",
]
