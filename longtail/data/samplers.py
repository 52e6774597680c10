"""Index samplers: which training images form each global batch.

A sampler is a pure function of ``(seed, epoch)``: it returns the epoch's whole
batch plan up front, so resuming at step ``s`` of epoch ``e`` replays exactly
the batches an uninterrupted run would have seen. Under DDP every rank builds
the same plan and keeps its own slice of each global batch, so ranks see
disjoint images that together make the global batch.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, 0x5A3])


class Sampler:
    """Base: ``plan(epoch)`` is a list of global batches (index arrays)."""

    def __init__(self, labels, batch_size: int, seed: int = 0):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        if len(self.labels) == 0:
            raise ConfigError("sampler: the training split is empty")

    @property
    def epoch_size(self) -> int:
        return len(self.labels)

    # Only whole batches (runtime.compile, as timm trains): a compiled step would recompile for the short one.
    drop_last: bool = False

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_last:
            return self.epoch_size // self.batch_size
        return math.ceil(self.epoch_size / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def plan(self, epoch: int) -> list[np.ndarray]:
        idx = self.order(epoch)
        return [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)][: self.steps_per_epoch]

    def batch(self, epoch: int, step: int, rank: int = 0, world: int = 1, plan=None) -> np.ndarray:
        """This rank's share of global batch ``step``: every ``world``-th index from ``rank``.

        A batch that ``world`` does not divide (an epoch's last) is padded by repeating its first images, as
        ``DistributedSampler`` pads, so every rank gets an equal, non-empty share: an empty one would give
        that rank a NaN loss and leave the others waiting in the all-reduce.
        """
        plan = plan if plan is not None else self.plan(epoch)
        b = plan[step]
        if world > 1 and len(b) % world:
            b = np.resize(b, -(-len(b) // world) * world)
        return b[rank::world]


class InstanceSampler(Sampler):
    """Every image with equal probability: a fresh permutation each epoch."""

    def order(self, epoch):
        return _rng(self.seed, epoch).permutation(len(self.labels))


class ClassBalancedSampler(Sampler):
    """Every class with equal probability (Decoupling / BalanceAux form).

    Each batch picks ``k = S/Z`` classes without replacement (if ``k`` exceeds
    the number of classes, every class once and the rest again without
    replacement), then ``Z`` images of each from a shuffled cycle over that
    class's images, so a class with few images repeats them in turn rather
    than at random.
    """

    def __init__(self, labels, batch_size, seed=0, samples_per_class: int = 4, epoch_length: str = "dataset"):
        super().__init__(labels, batch_size, seed)
        self.z = int(samples_per_class)
        if self.z <= 0 or self.batch_size % self.z:
            raise ConfigError(f"class-balanced sampler: batch_size {batch_size} is not a multiple of samples_per_class {self.z}")
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(self.labels.max() + 1)]
        self.classes = np.array([c for c, idx in enumerate(self.by_class) if len(idx)])
        if epoch_length not in ("dataset", "balanced"):
            raise ConfigError(f"epoch_length: {epoch_length!r} is not one of dataset, balanced")
        self.epoch_length = epoch_length

    @property
    def epoch_size(self):
        if self.epoch_length == "balanced":
            return max(len(i) for i in self.by_class) * len(self.classes)
        return len(self.labels)

    def order(self, epoch):
        rng = _rng(self.seed, epoch)
        k = self.batch_size // self.z
        n_batches = math.ceil(self.epoch_size / self.batch_size)
        class_seq = np.concatenate([_cycle(rng, self.classes, k) for _ in range(n_batches)])
        # Per class, the images it needs this epoch, from its own shuffled cycle.
        need = np.bincount(class_seq, minlength=len(self.by_class)) * self.z
        pools = {c: iter(_cycle(rng, self.by_class[c], need[c])) for c in np.flatnonzero(need)}
        out = np.empty(len(class_seq) * self.z, dtype=np.int64)
        for j, c in enumerate(class_seq):
            out[j * self.z : (j + 1) * self.z] = [next(pools[c]) for _ in range(self.z)]
        return out[: self.epoch_size]


class SqrtSampler(Sampler):
    """Class ``c`` drawn with probability proportional to ``sqrt(n_c)``, images uniform within it."""

    def order(self, epoch):
        counts = np.bincount(self.labels)
        w = np.sqrt(counts)[self.labels] / counts[self.labels]
        return _rng(self.seed, epoch).choice(len(self.labels), size=len(self.labels), replace=True, p=w / w.sum())


def _cycle(rng: np.random.Generator, items: np.ndarray, n: int) -> np.ndarray:
    """``n`` items from back-to-back shuffled passes over ``items``."""
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    passes = math.ceil(n / len(items))
    return np.concatenate([rng.permutation(items) for _ in range(passes)])[:n]


def build_sampler(kind: str, labels, batch_size: int, seed: int, samples_per_class: int = 4, epoch_length: str = "dataset",
                  drop_last: bool = False) -> Sampler:
    if kind == "instance":
        s = InstanceSampler(labels, batch_size, seed)
    elif kind == "class_balanced":
        s = ClassBalancedSampler(labels, batch_size, seed, samples_per_class, epoch_length)
    elif kind == "sqrt":
        s = SqrtSampler(labels, batch_size, seed)
    else:
        raise ConfigError(f"sampler: unknown sampler {kind!r}; choose from instance, class_balanced, sqrt")
    s.drop_last = drop_last
    if s.steps_per_epoch == 0:
        raise ConfigError(f"sampler: runtime.compile trains whole batches only, and an epoch of {s.epoch_size} "
                          f"images holds no whole batch of {batch_size}")
    return s
