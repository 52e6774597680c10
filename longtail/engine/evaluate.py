"""Evaluation: top-1 / top-5, per-class and many / medium / few accuracy."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from ..data.groups import group_accuracy, shot_groups


def eval_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """The batches one process scores images ``0..n-1`` in. Under DDP each rank takes whole batches of
    this list, so every image meets the same batch, and gets the same output bits, as in one process."""
    return [np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


@torch.no_grad()
def predict_batches(predict: Callable[[torch.Tensor], torch.Tensor], batches: list[np.ndarray],
                    load: Callable[[np.ndarray], object], prepare: Callable[[object], torch.Tensor]) -> list[torch.Tensor]:
    """Float outputs of ``batches``, in order, left on the device (one copy back at the end, not a sync per
    batch): ``load(index)`` runs one batch ahead on a thread (file decoding overlaps the model), ``prepare``
    turns what it returns into model input."""
    out = []
    with ThreadPoolExecutor(1, thread_name_prefix="eval-load") as pool:
        next_batch = pool.submit(load, batches[0]) if batches else None
        for k in range(len(batches)):
            loaded = next_batch.result()
            if k + 1 < len(batches):
                next_batch = pool.submit(load, batches[k + 1])
            out.append(predict(prepare(loaded)).float())
    return out


def accuracy_metrics(logits: torch.Tensor, labels, train_counts, many: int = 100, few: int = 20) -> dict:
    """Metrics as percentages; a shot group with no class is None, never 0."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    num_classes = len(train_counts)
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    hit1 = topk[:, 0] == labels
    hit5 = (topk == labels[:, None]).any(dim=1)
    n_per_class = torch.bincount(labels, minlength=num_classes).double()
    correct = torch.bincount(labels, weights=hit1.double(), minlength=num_classes)
    per_class = torch.where(n_per_class > 0, 100.0 * correct / n_per_class.clamp(min=1), torch.full_like(correct, float("nan")))
    per_class_list = [None if np.isnan(v) else round(float(v), 4) for v in per_class.tolist()]
    groups = group_accuracy(np.array([np.nan if v is None else v for v in per_class_list], dtype=float),
                            shot_groups(np.asarray(train_counts), many, few))
    return {
        "top1": round(100.0 * hit1.double().mean().item(), 4),
        "top5": round(100.0 * hit5.double().mean().item(), 4),
        **{g: None if v is None else round(float(v), 4) for g, v in groups.items()},
        "num_images": int(len(labels)),
        "per_class": per_class_list,
    }
