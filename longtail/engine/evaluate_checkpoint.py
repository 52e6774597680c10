"""``longtail eval``: rebuild a stage's model and data from a checkpoint and score it."""
from __future__ import annotations

from ..config import recipe_from_dict
from ..data.build import build_data, resolve_data_root
from ..errors import CheckpointError, ConfigError
from ..methods import get_method
from ..models.classifier import load_exported
from .checkpoint import load_checkpoint
from .context import StageContext
from .passes import evaluate_split
from .runtime import setup_runtime


def evaluate_checkpoint(path, data_root: str | None = None, device: str | None = None, split: str = "test",
                        amp: str | None = None) -> dict:
    """Score a stage's checkpoint on ``split``; ``amp`` overrides the precision its recipe asks for (``runtime.amp``)."""
    ck = load_checkpoint(path)
    if not all(isinstance(ck.get(k), t) for k, t in (("recipe", dict), ("stage", str), ("model", dict))):
        raise CheckpointError(f"checkpoint {path} carries no recipe/stage/model; only longtail run checkpoints can be evaluated")
    try:
        recipe = recipe_from_dict(ck["recipe"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: its recipe is invalid here ({e})") from None
    if device:
        recipe.runtime.device = device
    if amp:
        recipe.runtime.amp = amp
    rt = setup_runtime(recipe.runtime)
    data = build_data(recipe.data, resolve_data_root(data_root, recipe.data.root))
    ctx = StageContext(recipe, recipe.stage(ck["stage"]), data, rt)
    method = get_method(ctx.stage.method)(ctx)
    model = method.build_model()
    load_exported(model, ck["model"], where=path)
    model.to(rt.device)
    if rt.channels_last:
        import torch

        model.to(memory_format=torch.channels_last)
    # train: the training images without augmentation, to see how far a model memorised its training set
    target = {"test": data.test, "val": data.val, "train": data.train}[split]
    if target is None:
        raise CheckpointError(f"the dataset of {path} has no {split} split")
    return {**evaluate_split(method, model, ctx, target.to(rt.device)), "stage": ck["stage"], "checkpoint": str(path)}
