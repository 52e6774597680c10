"""``longtail report``: one HTML page and one markdown summary for one or more finished runs.

The page is self-contained (inline style, no scripts); its figures are PNGs beside it,
referenced by relative path, so the folder can be copied or served as is. Both files are
rendered from the same list of sections, so they never disagree.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.groups import GROUPS, group_accuracy
from ..errors import ConfigError
from . import plots
from .embed import embed_2d, pick_classes
from .runs import RunView, load_runs

TOP_CONFUSIONS = 10


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    title: str
    text: str = ""
    images: list[str] = field(default_factory=list)  # file names inside the report folder
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (caption, table)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def _draw(section: Section, written, out: Path, name: str, draw) -> None:
    """``draw(path)`` -> path or None; keep the figure only when one was drawn."""
    if draw(out / name):
        section.images.append(name)
        written.append(out / name)


def results_section(runs: list[RunView]) -> Section:
    rows = [[r.name, r.stage] + [_fmt(r.metrics.get(k)) for k in ("top1", "many", "medium", "few")] for r in runs]
    sizes = [f"{g} {len(idx)}" for g, idx in runs[0].groups.items()]
    many, few = runs[0].thresholds
    text = (f"Top-1 test accuracy (%). Shot groups by training images: many > {many}, medium {few}-{many}, few < {few} "
            f"(classes: {', '.join(sizes)}); n/a: the group has no class.")
    return Section("Results", text, tables=[("", Table(["run", "stage", "overall", "many", "medium", "few"], rows))])


def stage_gains(per_class: np.ndarray, first: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Mean per-class gain (points) over ``first``, over all classes and per shot group; classes without
    test images (NaN) are left out, a group without classes is None."""
    every = {"all": np.arange(len(per_class))}
    return group_accuracy(np.asarray(per_class, dtype=float) - np.asarray(first, dtype=float), {**every, **groups})


def _gain(v) -> str:
    return "n/a" if v is None else f"{v:+.2f}"


def stages_section(runs: list[RunView]) -> Section:
    """Every stage of each multi-stage run side by side: the results table reports only the last."""
    section = Section("Stages", "Each stage of a multi-stage run, up to the reported one: top-1 test accuracy (%), "
                      "and its mean per-class gain over the run's first stage in points, over all classes and per "
                      "shot group (classes without test images left out).")
    headers = ["stage", "overall", "many", "medium", "few", "gain all", "gain many", "gain medium", "gain few"]
    for r in runs:
        views = r.stage_views()
        if len(views) < 2:
            continue
        first = views[0].per_class
        rows = []
        for i, v in enumerate(views):
            gains = stage_gains(v.per_class, first, r.groups)
            row = [v.stage] + [_fmt(v.metrics.get(k)) for k in ("top1", *GROUPS)]
            rows.append(row + (["—"] * 4 if i == 0 else [_gain(gains[k]) for k in ("all", *GROUPS)]))
        section.tables.append((f"{r.name} (gains over {views[0].stage})", Table(headers, rows)))
    return section


def confusion_section(runs: list[RunView], out: Path, written: list) -> Section:
    section = Section("Most-confused class pairs", "Test images of the true class predicted as the other class, "
                      f"the {TOP_CONFUSIONS} largest off-diagonal cells of the confusion matrix.")
    for r in runs:
        if r.record is None:
            continue
        cells = r.record["confusion"]  # (true, predicted, images), non-zero cells only
        per_class = np.bincount(cells[:, 0], weights=cells[:, 2], minlength=len(r.train_counts))
        off = cells[cells[:, 0] != cells[:, 1]]
        top = off[np.argsort(-off[:, 2], kind="stable")[:TOP_CONFUSIONS]]
        names = r.class_names
        rows = [[names[t], names[p], str(n), f"{100.0 * n / per_class[t]:.1f}"] for t, p, n in top]
        section.tables.append((r.name, Table(["true", "predicted as", "images", "% of true class"], rows)))
        if len(top):
            bars = [(f"{names[t]} → {names[p]}", int(n)) for t, p, n in top]
            _draw(section, written, out, f"confusions_{_slug(r.name)}.png",
                  lambda path: plots.plot_confused_pairs(bars, path, f"{r.name}: most-confused pairs"))
    return section


def tsne_section(runs: list[RunView], out: Path, written: list, n_classes: int) -> Section:
    section = Section("Test features", f"{n_classes} classes drawn from many, medium and few (marker: group), "
                      "features of the network's last layer before the classifier, as stored at train time.")
    for r in runs:
        rec = r.record
        if rec is None or "features" not in rec or n_classes <= 0:
            continue
        labels = rec["feature_labels"]
        chosen = pick_classes(np.unique(labels), r.groups, r.train_counts, n_classes)
        keep = np.isin(labels, chosen)
        if keep.sum() < 5:  # too few points for a meaningful picture
            continue
        coords, how = embed_2d(rec["features"][keep])
        _draw(section, written, out, f"features_{_slug(r.name)}.png",
              lambda path: plots.plot_embedding(coords, labels[keep], r.class_names, r.group_of(), path, f"{r.name}: {how}"))
    return section


def _series(runs: list[RunView], all_stages: bool) -> dict[str, RunView]:
    """The per-class plot's lines: each run, or each of its stages when it has several."""
    out = {}
    for r in runs:
        views = r.stage_views() if all_stages else []
        out.update({v.name: v for v in views} if len(views) > 1 else {r.name: r})
    return out


def build_sections(runs: list[RunView], out: Path, tsne_classes: int,
                   all_stages: bool = True) -> tuple[list[Section], list[Path]]:
    written: list[Path] = []
    many, few = runs[0].thresholds
    base = runs[0]
    sections = [results_section(runs), stages_section(runs)]

    lines = _series(runs, all_stages)
    acc = Section("Per-class accuracy against training frequency",
                  "One dot per class; the line is a running mean over neighbouring classes"
                  + ("; every stage of a multi-stage run." if len(lines) > len(runs) else "."))
    _draw(acc, written, out, "per_class_accuracy.png", lambda path: plots.plot_accuracy_vs_frequency(
        {name: {"train_counts": r.train_counts, "per_class": r.per_class} for name, r in lines.items()}, path, many, few))
    sections.append(acc)

    gain = Section("Per-class accuracy gain", f"Each run's per-class accuracy minus the baseline's ({base.name}), "
                   "and each later stage's minus its run's first stage; dashed: the group's mean gain "
                   "(BalanceAux, Fig. 3).")
    for r in runs[1:]:
        if len(r.per_class) != len(base.per_class):
            continue  # different datasets: no per-class comparison
        _draw(gain, written, out, f"gain_{_slug(r.name)}.png", lambda path: plots.plot_accuracy_gain(
            r.train_counts, r.per_class - base.per_class, path, f"{r.name} vs {base.name}", many, few))
    for r in runs if all_stages else []:
        first, *later = r.stage_views() or [r]
        for v in later:
            title = f"{r.name}: {v.stage} vs {first.stage}"
            _draw(gain, written, out, f"stage_gain_{_slug(r.name)}_{_slug(v.stage)}.png", lambda path: (
                plots.plot_accuracy_gain(r.train_counts, v.per_class - first.per_class, path, title, many, few)))
    sections.append(gain)

    with_norms = {r.name: {"train_counts": r.train_counts, "classifier_weight_norms": r.record["weight_norms"]}
                  for r in runs if r.record is not None and "weight_norms" in r.record}
    norms = Section("Classifier weight norms", "||w_c|| of each class's weight as the logits use it "
                    "(LWS scales and tau-norm applied) (BalanceAux, Fig. 4).")
    if with_norms:
        _draw(norms, written, out, "weight_norms.png", lambda path: plots.plot_weight_norms(with_norms, path))
    sections.append(norms)

    dist = Section("Distilled label distribution", "Label mass per class of the original, class-balanced and "
                   "distilled (soft) labels (SSD, Fig. 5).")
    for r in runs:
        d = r.label_distribution()
        if d is not None:
            _draw(dist, written, out, f"label_distribution_{_slug(r.name)}.png", lambda path: plots.plot_label_distribution(d, path))
    sections.append(dist)

    curves = Section("Training curves", "Per epoch, all stages end to end; validation top-1 appears when the run "
                     "evaluated during training (runtime.eval_every).")
    for r in runs:
        _draw(curves, written, out, f"curves_{_slug(r.name)}.png", lambda path: plots.plot_curves(r.curves(), path, r.name))
    sections.append(curves)

    sections.append(tsne_section(runs, out, written, tsne_classes))
    sections.append(confusion_section(runs, out, written))
    return [s for s in sections if s.images or s.tables], written


# --------------------------------------------------------------------------- rendering

STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:.25em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%;display:block;margin:.8em 0}
.note{color:#555}"""


def render_html(sections: list[Section], title: str) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{e(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        if s.text:
            parts.append(f"<p class='note'>{e(s.text)}</p>")
        for caption, t in s.tables:
            if caption:
                parts.append(f"<h3>{e(caption)}</h3>")
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in t.headers) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows]
            parts.append("</table>")
        parts += [f"<img src='{e(name)}' alt='{e(s.title)}: {e(Path(name).stem)}'>" for name in s.images]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def render_markdown(sections: list[Section], title: str) -> str:
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.text:
            lines += [s.text, ""]
        for caption, t in s.tables:
            if caption:
                lines += [f"**{cell(caption)}**", ""]
            lines.append("| " + " | ".join(map(cell, t.headers)) + " |")
            lines.append("|" + "---|" * len(t.headers))
            lines += ["| " + " | ".join(map(cell, row)) + " |" for row in t.rows]
            lines.append("")
        for name in s.images:
            lines += [f"![{s.title}: {Path(name).stem}]({name})", ""]
    return "\n".join(lines)


def write_report(runs: list[Path], out: Path, baseline: str | None = None, tsne_classes: int = 9,
                 all_stages: bool = True) -> list[Path]:
    """Write ``index.html``, ``report.md`` and their PNGs into ``out``; return every file written.
    ``all_stages``: compare every stage of a multi-stage run (table, overlaid per-class plot, gain plots),
    not only the reported one."""
    if plots._pyplot() is None:
        raise ConfigError("longtail report draws with matplotlib, which is not installed (pip install matplotlib)")
    views = load_runs(runs, baseline)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections, pngs = build_sections(views, out, tsne_classes, all_stages)
    title = "longtail report: " + ", ".join(r.name for r in views)
    (out / "index.html").write_text(render_html(sections, title))
    (out / "report.md").write_text(render_markdown(sections, title))
    return [out / "index.html", out / "report.md", *pngs]
