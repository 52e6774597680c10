"""Passes over a whole split with a trained model: prediction with the stage's test-time preprocessing,
and scoring. A leaf of the engine (it imports no method and no loop): methods and the report reach it
through ``StageContext.predict_split``, so nothing below the engine imports the engine."""
from __future__ import annotations

import torch
from torch import nn

from ..data.augment import Augment, ImageList
from ..data.images import ImageSet
from .distributed import gather_batches
from .evaluate import accuracy_metrics, eval_batches, predict_batches
from .streams import SideStream, to_device


def size_to_input(aug: Augment, images, g: torch.Generator) -> tuple[torch.Tensor, bool]:
    """``(batch, already_cut)``: file images cut to the input size by the augmentation's first op; tensors as they are."""
    if isinstance(images, ImageList):
        return aug.size_images(images, g), True
    return images, False


def decode_on_device(split: ImageSet, rt) -> None:
    """Let a file store decode on the training device where it can (nvJPEG on a GPU, from the cache)."""
    use = getattr(getattr(split, "store", None), "use_device", None)
    if use is not None:
        use(rt.device)


@torch.no_grad()
def predict_split(ctx, model: nn.Module, split: ImageSet, fn) -> torch.Tensor:
    """``fn(model, x)`` over a whole split in order, in eval mode, with the stage's test-time preprocessing.
    Under DDP every rank must call it: each scores a share of the batches, and all get the whole result."""
    rt = ctx.runtime
    aug = ctx.augment(ctx.stage.eval_augment)
    g, g_cpu, side = torch.Generator(device=rt.device), torch.Generator(), SideStream(rt.device)
    decode_on_device(split, rt)

    def cut(index):  # on the look-ahead thread and its stream: file images are cut to the input size there
        x, already_cut = size_to_input(aug, split.load(index)[0], g_cpu)
        return to_device(x, rt.device), already_cut

    def prepare(loaded):
        x, already_cut = side.hand_over(*loaded)
        x = aug(x, g, already_cut=already_cut)
        return x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x

    batches = eval_batches(len(split), ctx.recipe.runtime.eval_batch_size)
    was_training = model.training
    model.eval()
    with rt.autocast():
        mine = predict_batches(lambda x: fn(model, x), batches[rt.rank::rt.world], lambda i: side.run(cut, i), prepare)
    model.train(was_training)
    return gather_batches(mine, [len(b) for b in batches], rt)


def score_logits(ctx, logits: torch.Tensor, split: ImageSet) -> dict:
    d = ctx.recipe.data
    return accuracy_metrics(logits, split.labels, ctx.train_counts, d.many_threshold, d.few_threshold)


def evaluate_split(method, model: nn.Module, ctx, split: ImageSet) -> dict:
    return score_logits(ctx, predict_split(ctx, model, split, method.predict), split)
