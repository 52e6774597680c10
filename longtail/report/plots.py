"""Figures of a run, drawn with matplotlib when it is installed (an optional dependency).

Every function takes plain lists or arrays and a path, writes one PNG on the headless Agg
backend and returns the path (None when matplotlib is missing). Per-class figures sort the
classes by training count, head first, as the papers do.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

GROUP_COLOURS = {"many": "#4c72b0", "medium": "#dd8452", "few": "#c44e52"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        return plt
    except ImportError:
        warnings.warn("matplotlib is not installed: figures are skipped (pip install matplotlib)")
        return None


def _save(plt, fig, path: Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def _by_count(counts) -> list[int]:
    """Class indices, most training images first (ties keep class order)."""
    return sorted(range(len(counts)), key=lambda c: -counts[c])


def _shade_groups(ax, sorted_counts, many: int, few: int, notes: dict | None = None) -> None:
    """Label the many / medium / few spans of a class-index axis sorted by count (``notes``: extra text per group)."""
    sorted_counts = np.asarray(sorted_counts)
    spans = {"many": sorted_counts > many, "medium": (sorted_counts >= few) & (sorted_counts <= many), "few": sorted_counts < few}
    for group, mask in spans.items():
        idx = np.flatnonzero(mask)
        if idx.size:
            ax.axvspan(idx[0] - 0.5, idx[-1] + 0.5, color=GROUP_COLOURS[group], alpha=0.07, linewidth=0)
            label = f"{group} {notes[group]}" if notes and group in notes else group
            ax.text((idx[0] + idx[-1]) / 2, 1.0, label, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=8, color=GROUP_COLOURS[group])


def plot_label_distribution(dist: dict, path: Path) -> str | None:
    """SSD Fig. 5: label mass per class (sorted by training count) for original, class-balanced and distilled labels."""
    plt = _pyplot()
    if plt is None:
        return None
    order = _by_count(dist["original"])
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for key, style in (("original", "-"), ("class_balanced", "--"), ("distilled", "-")):
        ax.plot(range(len(order)), [dist[key][c] for c in order], style, label=key.replace("_", "-"), linewidth=1.6)
    ax.set_xlabel("class (sorted by training images)")
    ax.set_ylabel("label mass over the training set")
    ax.set_title(f"Distilled label distribution (T = {dist['T']:g})")
    ax.legend()
    return _save(plt, fig, path)


def plot_weight_norms(runs: dict[str, dict], path: Path) -> str | None:
    """BalanceAux Fig. 4: per-class classifier weight norm, classes sorted by training count, one line per run."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    for name, r in runs.items():
        order = _by_count(r["train_counts"])
        ax.plot(range(len(order)), [r["classifier_weight_norms"][c] for c in order], label=name, linewidth=1.6)
    ax.set_xlabel("class (sorted by training images)")
    ax.set_ylabel("||w_c||")
    ax.set_title("Classifier weight norm per class")
    ax.legend()
    return _save(plt, fig, path)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Running mean that ignores NaN (classes without test images)."""
    ok = ~np.isnan(y)
    kernel = np.ones(window)
    num = np.convolve(np.where(ok, y, 0.0), kernel, mode="same")
    den = np.convolve(ok.astype(float), kernel, mode="same")
    return np.where(den > 0, num / np.maximum(den, 1), np.nan)


COUNT_MANTISSAS = ((1, 2, 5), (1, 3), (1,))
MAX_TICKS = 10


def count_ticks(lo: float, hi: float) -> list[int]:
    """Plain counts (1, 2, 5, 10, 20, 50, ...) inside ``[lo, hi]`` for a log axis of training images.

    Matplotlib's own log labels read "3x10^1 4x10^1" and run into each other once minor ticks get
    labels over a short range; round counts say what a reader wants: how many images. Coarser steps
    are used when the range is wide, so that at most ``MAX_TICKS`` labels share the axis."""
    lo, hi = max(lo, 1.0), max(hi, 1.0)
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    ticks: list[int] = []
    for mantissas in COUNT_MANTISSAS:
        ticks = [m * 10 ** e for e in decades for m in mantissas if lo <= m * 10 ** e <= hi]
        if len(ticks) <= MAX_TICKS:
            break
    if len(ticks) < 2:  # a narrow range holds at most one round count: label its ends as well
        ticks = sorted({t for t in (*ticks, int(np.ceil(lo)), int(np.floor(hi))) if lo <= t <= hi})
    return ticks


def _count_axis(ax, which: str = "x") -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator(count_ticks(*(ax.get_xlim() if which == "x" else ax.get_ylim()))))
    axis.set_major_formatter(FuncFormatter(lambda v, _: str(int(round(v)))))
    axis.set_minor_formatter(NullFormatter())


def accuracy_vs_frequency_axes(plt, runs: dict[str, dict], many: int = 100, few: int = 20):
    """The figure of :func:`plot_accuracy_vs_frequency`, unsaved: ``(fig, ax)``."""
    fig, ax = plt.subplots(figsize=(7.5, 4), dpi=110)
    alpha = 0.35 if len(runs) <= 2 else 0.2  # overlaid stages: the running means stay readable
    for i, (name, r) in enumerate(runs.items()):
        counts = np.asarray(r["train_counts"], dtype=float)
        order = np.argsort(counts, kind="stable")
        x, y = counts[order], np.asarray(r["per_class"], dtype=float)[order]
        colour = f"C{i % 10}"
        ax.scatter(x, y, s=9, alpha=alpha, color=colour, linewidths=0)
        ax.plot(x, _smooth(y, max(3, len(x) // 10) | 1), color=colour, linewidth=2, label=name)
    ax.set_xscale("log")
    for t in (few, many):
        ax.axvline(t, color="grey", linestyle=":", linewidth=1)
    lo, hi = ax.get_xlim()
    for group, (a, b) in {"few": (lo, few), "medium": (few, many), "many": (many, hi)}.items():
        if b > a and a < hi and b > lo:
            ax.text(np.sqrt(max(a, lo) * min(b, hi)), 1.0, group, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=8, color=GROUP_COLOURS[group])
    ax.set_xlim(lo, hi)
    _count_axis(ax)
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_title("Per-class accuracy against training frequency (line: running mean over classes)", fontsize=10, pad=14)
    ax.legend(loc="upper left", fontsize=8)
    return fig, ax


def plot_accuracy_vs_frequency(runs: dict[str, dict], path: Path, many: int = 100, few: int = 20) -> str | None:
    """Per-class test accuracy against training images (log axis): a dot per class and a running mean
    over neighbouring classes per run (or stage). ``runs``: name -> {"train_counts", "per_class"}."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, _ = accuracy_vs_frequency_axes(plt, runs, many, few)
    return _save(plt, fig, path)


def plot_accuracy_gain(train_counts, gain, path: Path, title: str, many: int = 100, few: int = 20) -> str | None:
    """BalanceAux Fig. 3: per-class accuracy of one run minus another's, classes sorted by training count,
    with each shot group's mean gain."""
    plt = _pyplot()
    if plt is None:
        return None
    order = _by_count(list(train_counts))
    g = np.asarray(gain, dtype=float)[order]
    counts = np.asarray(train_counts)[order]
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
    ax.bar(range(len(g)), np.nan_to_num(g), width=1.0, color=np.where(g >= 0, "#55a868", "#c44e52"), linewidth=0)
    ax.axhline(0, color="black", linewidth=0.8)
    spans = {"many": counts > many, "medium": (counts >= few) & (counts <= many), "few": counts < few}
    means = {}
    for group, mask in spans.items():
        idx = np.flatnonzero(mask & ~np.isnan(g))
        if idx.size:
            means[group] = f"(mean {g[idx].mean():+.1f})"
            ax.hlines(g[idx].mean(), idx[0] - 0.5, idx[-1] + 0.5, colors=GROUP_COLOURS[group], linestyles="--", linewidth=1.4)
    _shade_groups(ax, counts, many, few, means)
    ax.set_xlim(-0.5, len(g) - 0.5)
    ax.set_xlabel("class (sorted by training images)")
    ax.set_ylabel("accuracy gain (points)")
    ax.set_title(title, fontsize=10, pad=14)
    return _save(plt, fig, path)


def plot_curves(curves, path: Path, title: str) -> str | None:
    """Loss, learning rate and top-1 per epoch; stages end to end, each stage's end marked."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(3, 1, figsize=(7, 6), dpi=100, sharex=True)
    axes[0].plot(*curves.loss, marker=".", linewidth=1.4)
    axes[0].set_ylabel("training loss")
    axes[1].plot(*curves.lr, marker=".", linewidth=1.4, color="C1")
    axes[1].set_ylabel("learning rate")
    if curves.val[0]:
        axes[2].plot(*curves.val, marker=".", linewidth=1.4, color="C2", label="validation")
    axes[2].plot(*curves.test, "s", color="C3", label="test (end of stage)")
    axes[2].set_ylabel("top-1 (%)")
    axes[2].set_xlabel("epoch (all stages)")
    axes[2].legend(fontsize=8)
    ends: dict[float, list[str]] = {}  # post-hoc stages end where the stage before them does
    for end, name in curves.stage_ends:
        ends.setdefault(end, []).append(name)
    for ax in axes:
        for end in ends:
            ax.axvline(end, color="grey", linestyle=":", linewidth=1)
    for end, names in ends.items():
        axes[0].text(end, 1.0, "\n".join(names), transform=axes[0].get_xaxis_transform(), ha="right", va="bottom", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(plt, fig, path)


def plot_embedding(coords, labels, class_names: list[str], class_groups, path: Path, title: str) -> str | None:
    """2-D embedding of test features, a colour per class, a marker per shot group."""
    plt = _pyplot()
    if plt is None:
        return None
    markers = {"many": "o", "medium": "s", "few": "^"}
    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=110)
    for i, c in enumerate(np.unique(labels)):
        pts = coords[labels == c]
        group = class_groups[c]
        ax.scatter(pts[:, 0], pts[:, 1], s=12, alpha=0.75, marker=markers[group], color=f"C{i % 10}",
                   label=f"{class_names[c]} ({group})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.5)
    return _save(plt, fig, path)


def plot_confused_pairs(pairs: list[tuple[str, int]], path: Path, title: str) -> str | None:
    """Horizontal bars: test images of the true class predicted as the other, most first."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(pairs) + 1.2), dpi=110)
    ax.barh(range(len(pairs)), [n for _, n in pairs], color="#8172b2")
    ax.set_yticks(range(len(pairs)), [label for label, _ in pairs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test images")
    ax.set_title(title, fontsize=10)
    return _save(plt, fig, path)


def count_histogram(stats: dict, path: Path) -> str | None:
    """Training images per class, classes sorted by count, the many / medium / few spans shaded."""
    plt = _pyplot()
    if plt is None:
        return None
    counts, t = stats["counts"], stats["thresholds"]
    order = _by_count(counts)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(order)), [counts[c] for c in order], width=1.0, color="#4c72b0")
    ax.set_yscale("log")
    _shade_groups(ax, [counts[c] for c in order], t["many"], t["few"])
    _count_axis(ax, "y")  # plain counts on the log axis, as on the per-class plot
    ax.set_xlabel("class (most images first)")
    ax.set_ylabel("training images")
    ax.set_title(f"{stats['dataset']}: {stats['num_classes']} classes, imbalance {stats['imbalance']:.1f}", fontsize=9, pad=14)
    return _save(plt, fig, path)
