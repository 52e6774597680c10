"""Host syncs per training step, through the real engine: the calls that make the host wait for the device.

On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` warns at every synchronising call; on the CPU, where
nothing waits, a ``TorchDispatchMode`` counts the ops that would (``_local_scalar_dense`` behind
``.item()``, and ``nonzero``, whose output size needs the data), and also the tensors a step makes from host
data, each a host-to-device copy on a GPU (timm and airbench build constants once per device and keep the
epoch's plan there). Steps are told apart by the engine's one
call of ``lr_at`` per step, and counting stops when the stage reaches ``finish_stage``. A clean loop shows
counts only at its logging steps (every ``LOG_EVERY``, and each epoch's last).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = ("aten._local_scalar_dense", "aten.nonzero", "aten.item")
#: A tensor made from host data (torch.tensor, as_tensor, from_numpy): on a GPU, a host-to-device copy.
HOST_OPS = ("aten.lift_fresh",)
#: The stages the device check counts (recipe, stage): a CE step, SSD's rotation step, the strong recipe's step, ProCo's.
CHECKED = (("cifar100-lt/ce", "ce"), ("cifar100-lt/ssd", "stage1"), ("cifar100-lt/strong", "ce"), ("cifar100-lt/proco", "ce"))
TOY_CROP = [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"}]


def one_epoch(recipe_name: str, stage: str, device: str, toy: bool):
    """That stage alone for one epoch (85 steps of 128 on CIFAR-100-LT); ``toy``: the synthetic set, batch 8
    (31 steps), a ResNet-20, fp32 and the recipe's augmentation at 16 pixels (its policy ops kept)."""
    from ..config import load_recipe

    over = [f"runtime.device={device}", "runtime.progress=false", "runtime.tensorboard=false"]
    over += ["data.dataset=synthetic", "model.backbone=resnet20", "runtime.amp=off"] if toy else []
    r = load_recipe(recipe_name, over)
    r.stages = [s for s in r.stages if s.name == stage]
    s = r.stages[0]
    s.epochs = 1
    if toy:
        policy = [{"op": "autoaugment_cifar"}, {"op": "cutout", "size": 4}] if s.augment == "cifar_autoaugment" else []
        s.batch_size, s.augment = 8, TOY_CROP + policy + [{"op": "normalize"}]
    return r


class _Tally:
    def __init__(self):
        self.per_step: list[int] = []
        self.host_per_step: list[int] = []
        self.active = False

    def step(self) -> None:
        self.active = True
        self.per_step.append(0)
        self.host_per_step.append(0)

    def bump(self, host: bool = False) -> None:
        if self.active and self.per_step:
            (self.host_per_step if host else self.per_step)[-1] += 1


class _CpuSyncs(TorchDispatchMode):
    def __init__(self, tally: _Tally):
        super().__init__()
        self.tally = tally

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        op = str(func.overloadpacket)
        if op in SYNC_OPS or op in HOST_OPS:
            self.tally.bump(host=op in HOST_OPS)
        return func(*args, **(kwargs or {}))


def count_syncs(recipe, data, out_dir: Path) -> tuple[list[int], list[int] | None]:
    """Train ``recipe`` (size it beforehand); ``(syncs, host_tensors)`` counted in each training step, in order.
    ``host_tensors`` (tensors made from host data inside a step) is counted on the CPU only: None on CUDA."""
    from ..engine import loop
    from ..engine.pipeline import run_recipe

    tally, real_lr_at, real_finish = _Tally(), loop.lr_at, loop.finish_stage

    def marking_lr_at(*a, **k):  # once per step, before the step's own work reaches the device
        tally.step()
        return real_lr_at(*a, **k)

    def finishing(*a, **k):
        tally.active = False
        return real_finish(*a, **k)

    loop.lr_at, loop.finish_stage = marking_lr_at, finishing
    device = recipe.runtime.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device(device).type == "cuda"
    show = warnings.showwarning
    try:
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *a, **k: tally.bump() if "synchroniz" in str(message) else show(message, *a, **k)
            run_recipe(recipe, out_dir, data=data)
        else:
            with _CpuSyncs(tally):
                run_recipe(recipe, out_dir, data=data)
    finally:
        loop.lr_at, loop.finish_stage, warnings.showwarning = real_lr_at, real_finish, show
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
    return tally.per_step, None if cuda else tally.host_per_step
