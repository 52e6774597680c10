"""``longtail report`` on two tiny runs: every file written, the page's links, the table's numbers,
and what training stores for it (confusion matrix, weight norms, features)."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from longtail.cli import main
from longtail.config import recipe_from_dict
from longtail.engine.checkpoint import load_checkpoint
from longtail.engine.pipeline import run_recipe
from longtail.report import plots
from longtail.report.embed import PCA_LABEL, embed_2d, pick_classes
from longtail.report.html import write_report
from longtail.report.runs import load_run
from longtail.report.record import dense_confusion, load_record
from figures import assert_drawn  # noqa: E402

AUG = [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "random_hflip"}, {"op": "normalize"}]
CE = {"name": "ce", "method": "ce", "epochs": 2, "optim": {"lr": 0.1}}
CRT = {"name": "crt", "method": "crt", "init": "ce", "sampler": "class_balanced", "samples_per_class": 4, "epochs": 1,
       "optim": {"lr": 0.1}}


def recipe(stages, **runtime):
    return recipe_from_dict({
        "name": "tiny-report", "data": {"dataset": "synthetic"}, "model": {"backbone": "resnet20"},
        "runtime": {"device": "cpu", "amp": "off", "progress": False, "tensorboard": False, **runtime},
        "stages": [{"batch_size": 32, "schedule": {"kind": "cosine"}, "augment": AUG, **s} for s in stages],
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """CE with validation every epoch (features kept), and CE -> cRT without features."""
    root = tmp_path_factory.mktemp("runs")
    run_recipe(recipe([CE], eval_every=1, report_features=8), root / "ce", data=data)
    run_recipe(recipe([{**CE, "epochs": 1}, CRT], report_features=0), root / "crt", data=data)
    return root / "ce", root / "crt"


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, write_report(list(runs), out, baseline=None, tsne_classes=4)


def test_every_file_is_written(report):
    out, written = report
    names = {p.name for p in written}
    assert {"index.html", "report.md", "per_class_accuracy.png", "gain_crt.png", "weight_norms.png", "curves_ce.png",
            "curves_crt.png", "features_ce.png", "confusions_ce.png", "confusions_crt.png", "stage_gain_crt_crt.png"} <= names
    assert "features_crt.png" not in names  # runtime.report_features=0 keeps no features
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    for p in written:
        if p.suffix == ".png":
            assert_drawn(p)
    assert {p.name for p in out.iterdir()} == names


def test_page_references_every_png(report):
    out, written = report
    page = (out / "index.html").read_text()
    linked = set(re.findall(r"<img src='([^']+)'", page))
    assert linked == {p.name for p in written if p.suffix == ".png"}
    assert all((out / name).is_file() for name in linked)
    assert "<script" not in page and "http" not in page  # self-contained
    md = (out / "report.md").read_text()
    assert set(re.findall(r"\]\(([^)]+\.png)\)", md)) == linked


def test_markdown_table_equals_results(report, runs):
    out, _ = report
    table = (out / "report.md").read_text().split("## Results")[1].split("\n## ")[0]
    rows = {cells[0]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| c"))}
    for run in runs:
        final = json.loads((run / "results.json").read_text())["final"]
        name, stage, *numbers = rows[run.name]
        assert stage == final["stage"]
        expected = ["n/a" if final[k] is None else f"{final[k]:.2f}" for k in ("top1", "many", "medium", "few")]
        assert numbers == expected
        assert final["many"] is None and numbers[1] == "n/a"  # no synthetic class has more than 100 images


def test_stage_table_lists_every_stage_and_its_gain_over_the_first(report, runs, data):
    out, _ = report
    md = (out / "report.md").read_text()
    assert "**crt (gains over ce)**" in md and "**ce (gains" not in md  # a one-stage run has nothing to compare
    body = md.split("**crt (gains over ce)**")[1].split("\n## ")[0]
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in body.splitlines() if line.startswith("| ") and "---" not in line)}
    stages = json.loads((runs[1] / "results.json").read_text())["stages"]
    assert list(rows) == ["stage", "ce", "crt"]
    for name in ("ce", "crt"):
        assert rows[name][:4] == ["n/a" if stages[name][k] is None else f"{stages[name][k]:.2f}"
                                  for k in ("top1", "many", "medium", "few")]
    assert rows["ce"][4:] == ["—"] * 4
    # by hand: the mean over a group's classes of (crt's accuracy - ce's), classes without test images left out
    ce, crt, counts = stages["ce"]["per_class"], stages["crt"]["per_class"], data.train_counts.tolist()
    groups = {"all": range(len(counts)), "many": [c for c, n in enumerate(counts) if n > 100],
              "medium": [c for c, n in enumerate(counts) if 20 <= n <= 100], "few": [c for c, n in enumerate(counts) if n < 20]}
    for cell, group in zip(rows["crt"][4:], groups.values(), strict=True):
        diffs = [crt[c] - ce[c] for c in group if ce[c] is not None and crt[c] is not None]
        if not diffs:
            assert cell == "n/a"
        else:
            assert cell.startswith(("+", "-")) and float(cell) == pytest.approx(sum(diffs) / len(diffs), abs=0.005 + 1e-9)
    assert rows["crt"][5] == "n/a" and rows["crt"][7] != "n/a"  # synthetic: no many-shot class, some few-shot ones


def test_stage_gains_on_known_accuracies(runs, tmp_path):
    """The tiny run's two stages may score alike; here per-class accuracies set by hand give non-zero gains."""
    import shutil

    run = tmp_path / "edited"
    shutil.copytree(runs[1], run)
    results = json.loads((run / "results.json").read_text())
    # counts 100, 63, 39, 25, 15, 10: classes 0-3 medium, 4-5 few, none many; class 5 without test images
    results["stages"]["ce"]["per_class"] = [80.0, 60.0, 40.0, 20.0, 10.0, None]
    results["stages"]["crt"]["per_class"] = [70.0, 60.0, 50.0, 40.0, 30.0, None]
    (run / "results.json").write_text(json.dumps(results))
    write_report([run], tmp_path / "report", tsne_classes=0)
    md = (tmp_path / "report" / "report.md").read_text()
    crt_row = next(line for line in md.split("**edited (gains over ce)**")[1].splitlines() if line.startswith("| crt |"))
    # all: (-10 + 0 + 10 + 20 + 20) / 5 = 8; medium: (-10 + 0 + 10 + 20) / 4 = 5; few: class 4 only, 20
    assert [c.strip() for c in crt_row.strip("|").split("|")][5:] == ["+8.00", "n/a", "+5.00", "+20.00"]


def test_per_class_plot_overlays_the_stages_on_plain_count_ticks(report, runs, data):
    import matplotlib.image

    plt = plots._pyplot()
    ce = load_run(runs[0])
    series = {ce.name: ce, **{v.name: v for v in load_run(runs[1]).stage_views()}}
    assert list(series) == ["ce", "crt: ce", "crt: crt"]
    fig, ax = plots.accuracy_vs_frequency_axes(plt, {k: {"train_counts": v.train_counts, "per_class": v.per_class}
                                                     for k, v in series.items()})
    fig.canvas.draw()
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert all(len(lines[k].get_xdata()) == data.num_classes for k in series)  # one point per class, each stage
    major = [t.get_text() for t in ax.get_xticklabels()]
    assert major and all(t.isdigit() for t in major), major
    lo, hi = ax.get_xlim()
    assert [int(t) for t in major] == [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500) if lo <= t <= hi]
    assert all(t.get_text() == "" for t in ax.get_xticklabels(minor=True))
    plt.close(fig)
    # and the written figure is drawn: the lines' colours cover many pixels (the legend's samples alone a few
    # dozen); summed over the three, as a later stage's line may hide an earlier one where they agree
    png = report[0] / "per_class_accuracy.png"
    rgb = matplotlib.image.imread(png)[..., :3]
    wants = [np.array([int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)]) for c in ("#1f77b4", "#ff7f0e", "#2ca02c")]
    assert sum(int((np.abs(rgb - w).max(axis=-1) < 0.03).sum()) for w in wants) > 600, png


def test_count_ticks_are_round_and_few():
    assert plots.count_ticks(4, 600) == [5, 10, 20, 50, 100, 200, 500]
    assert plots.count_ticks(1, 1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert plots.count_ticks(1, 100000) == [1, 10, 100, 1000, 10000, 100000]  # 1-3 steps would be 11 labels
    assert plots.count_ticks(15.5, 18.7) == [16, 18]  # no round count inside: the ends, rounded in


def test_train_time_record(runs, data):
    ce, crt = runs
    counts = np.bincount(data.test.labels, minlength=data.num_classes)
    for stage_dir in (ce / "ce", crt / "ce", crt / "crt"):
        rec = load_record(stage_dir)  # np.load(allow_pickle=False): plain arrays only
        assert all(a.dtype != object for a in rec.values())
        matrix = dense_confusion(rec["confusion"], data.num_classes)
        assert matrix.sum(1).tolist() == counts.tolist()
        metrics = json.loads((stage_dir.parent / "results.json").read_text())["stages"][stage_dir.name]
        assert 100.0 * np.trace(matrix) / matrix.sum() == pytest.approx(metrics["top1"], abs=1e-3)
        assert rec["train_counts"].tolist() == data.train_counts.tolist()
        w = load_checkpoint(stage_dir / "final.pt")["model"]["heads.main.fc.weight"]  # no adjuster: the plain row norms
        np.testing.assert_allclose(rec["weight_norms"], w.norm(dim=1).numpy(), rtol=1e-6)
    rec = load_record(ce / "ce")
    assert rec["features"].dtype == np.float16 and len(rec["features"]) == len(rec["feature_labels"])
    assert np.bincount(rec["feature_labels"]).max() == 8  # runtime.report_features
    assert "features" not in load_record(crt / "crt")


def test_stage_folder_and_baseline(runs, tmp_path):
    ce, crt = runs
    written = write_report([ce, crt / "ce"], tmp_path, baseline=str(crt / "ce"), tsne_classes=0)
    names = {p.name for p in written}
    assert "gain_ce.png" in names and "gain_crt_ce.png" not in names  # the baseline is compared against, not with itself
    md = (tmp_path / "report.md").read_text()
    assert md.index("| crt/ce | ce |") < md.index("| ce | ce |")  # the baseline comes first
    assert not any(n.startswith("features_") for n in names)


def test_embedding_tsne_and_pca_fallback(monkeypatch):
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float16)
    pytest.importorskip("sklearn")
    coords, how = embed_2d(x)
    assert coords.shape == (40, 2) and how == "t-SNE"
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails as if not installed
    coords, how = embed_2d(x)
    assert coords.shape == (40, 2) and how == PCA_LABEL


def test_pick_classes_spreads_over_groups():
    counts = np.array([500, 300, 150, 90, 50, 25, 15, 8, 5])
    groups = {"many": np.array([0, 1, 2]), "medium": np.array([3, 4, 5]), "few": np.array([6, 7, 8])}
    assert sorted(pick_classes(range(9), groups, counts, 3)) == [0, 3, 6]
    assert sorted(pick_classes([0, 1, 2, 3, 8], groups, counts, 4)) == [0, 2, 3, 8]  # exhausted groups give way


def test_committed_run_without_record(tmp_path):
    """Runs trained before report.npz existed still report: counts come from the recipe, SSD's Fig. 5 from results.json."""
    run = Path(__file__).resolve().parents[1] / "results" / "cpu" / "cifar100-lt-if100" / "ssd-x0.1"
    if not (run / "results.json").is_file():
        pytest.skip(f"{run} not present")
    names = {p.name for p in write_report([run], tmp_path)}
    assert {"per_class_accuracy.png", "label_distribution_ssd-x0.1.png", "curves_ssd-x0.1.png"} <= names


def test_folder_without_results_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longtail: error:") and "results.json" in err[0]


def test_every_commit_a_committed_record_names_exists_or_is_marked():
    """A record's commit must be in the history, or listed (with what is known) in results/full/amended_commits.json."""
    import re
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    shallow = subprocess.run(["git", "-C", str(repo), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True).stdout.strip()
    if shallow == "true":
        pytest.skip("a shallow clone holds no history to check against")
    named = set()
    for p in (repo / "results").rglob("*"):
        if p.suffix in (".json", ".jsonl") and p.is_file():
            named |= set(re.findall(r'"commit": "([0-9a-f]{40})', p.read_text(errors="replace")))
    marked = set(json.loads((repo / "results" / "full" / "amended_commits.json").read_text())["commits"])
    missing = [c for c in sorted(named - marked)
               if subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{c}^{{commit}}"], capture_output=True).returncode != 0]
    assert missing == []
    assert "07814ed729fadf60cd6eda217934da83f4a83ce4" in marked


def test_an_empty_figure_does_not_count_as_drawn(tmp_path):
    """The figure check behind the report tests: an axes with labels but no data fails it, one line passes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, data in (("empty", None), ("line", [1, 3, 2])):
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.set_xlabel("training images")
        ax.set_ylabel("accuracy")
        if data:
            ax.plot(data)
        fig.savefig(tmp_path / f"{name}.png", dpi=80)
        plt.close(fig)
    with pytest.raises(AssertionError, match="nothing is plotted"):
        assert_drawn(tmp_path / "empty.png")
    assert_drawn(tmp_path / "line.png")


def test_the_stage_record_is_a_function_of_arrays_by_hand():
    """report.npz from arrays alone (no model, no context): confusion cells, counts, names, norms and features."""
    import numpy as np
    import torch

    from longtail.report.record import feature_rows, stage_record

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    labels = np.array([0, 1, 1, 2, 2])
    rec = stage_record(logits, labels, [50, 20, 5], ["a", "b", "c"], weight_norms=[1.5, 1.0, 0.5],
                       features=np.ones((2, 4)), feature_labels=[0, 2])
    # predictions 0, 1, 0, 2, 1: cells (0,0) 1, (1,0) 1, (1,1) 1, (2,1) 1, (2,2) 1
    assert sorted(map(tuple, rec["confusion"].tolist())) == [(0, 0, 1), (1, 0, 1), (1, 1, 1), (2, 1, 1), (2, 2, 1)]
    assert rec["train_counts"].tolist() == [50, 20, 5] and rec["class_names"].tolist() == ["a", "b", "c"]
    assert rec["weight_norms"].dtype == np.float32 and rec["features"].dtype == np.float16
    assert "features" not in stage_record(logits, labels, [50, 20, 5], [], features=np.zeros((0, 4)), feature_labels=[])
    # the first `cap` test images of each kept class, in dataset order
    assert feature_rows([0, 1, 0, 0, 1, 2], [9, 5, 1], cap=2).tolist() == [0, 1, 2, 4, 5]
    assert feature_rows([0, 1, 0], [9, 5, 1], cap=0).tolist() == []


def test_the_count_histogram_labels_its_log_axis_with_plain_counts(tmp_path, monkeypatch):
    """`data stats --hist`: the log y axis reads 5, 10, 20, ... (was matplotlib's 10^1 labels)."""
    seen = {}
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: seen.setdefault("fig", fig) and str(path))
    counts = [500, 300, 120, 60, 30, 12, 5]
    plots.count_histogram({"counts": counts, "thresholds": {"many": 100, "few": 20}, "dataset": "toy",
                           "num_classes": len(counts), "imbalance": 100.0}, tmp_path / "h.png")
    ax = seen["fig"].axes[0]
    seen["fig"].canvas.draw()
    major = [t.get_text() for t in ax.get_yticklabels()]
    lo, hi = ax.get_ylim()
    assert major == [str(t) for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if lo <= t <= hi] and len(major) >= 4
    assert all(t.get_text() == "" for t in ax.get_yticklabels(minor=True))
