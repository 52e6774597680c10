"""Figures of a run, drawn with matplotlib when it is installed (an optional dependency)."""
from __future__ import annotations

import warnings
from pathlib import Path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        warnings.warn("matplotlib is not installed: figures are skipped (pip install matplotlib)")
        return None


def plot_label_distribution(dist: dict, path: Path) -> str | None:
    """SSD Fig. 5: label mass per class (sorted by training count) for original, class-balanced and distilled labels."""
    plt = _pyplot()
    if plt is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = sorted(range(len(dist["original"])), key=lambda c: -dist["original"][c])
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for key, style in (("original", "-"), ("class_balanced", "--"), ("distilled", "-")):
        ax.plot(range(len(order)), [dist[key][c] for c in order], style, label=key.replace("_", "-"), linewidth=1.6)
    ax.set_xlabel("class (sorted by training images)")
    ax.set_ylabel("label mass over the training set")
    ax.set_title(f"Distilled label distribution (T = {dist['T']:g})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def plot_weight_norms(runs: dict[str, dict], path: Path) -> str | None:
    """BalanceAux Fig. 4: per-class classifier weight norm, classes sorted by training count, one line per run."""
    plt = _pyplot()
    if plt is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for name, r in runs.items():
        order = sorted(range(len(r["train_counts"])), key=lambda c: -r["train_counts"][c])
        ax.plot(range(len(order)), [r["classifier_weight_norms"][c] for c in order], label=name, linewidth=1.6)
    ax.set_xlabel("class (sorted by training images)")
    ax.set_ylabel("||w_c||")
    ax.set_title("Classifier weight norm per class")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
