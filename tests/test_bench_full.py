"""`longtail bench full`: rows read from run folders (finished, running, missing), gaps, flags and the results-page block."""
import json

import yaml

from longtail.bench.full import ROWS, full_table, render
from longtail.cli import main
from longtail.engine.checkpoint import save_atomic


def _finished(stage_dir, top1, commits, wall=(100.0, 50.0), rate=512.3):
    segs = [{"commit": c, "wall_seconds": w} for c, w in zip(commits, wall)]
    metrics = {"top1": top1, "many": 60.0, "medium": 40.0, "few": 10.0, "epochs": 200, "segments": segs,
               "wall_seconds_total": sum(wall[:len(commits)]), "train_img_per_s_last_segment": rate}
    stage_dir.mkdir(parents=True)
    save_atomic({"kind": "final", "model": {}, "metrics": metrics}, stage_dir / "final.pt")


def _fixture(tmp_path):
    run = tmp_path / "full" / "cifar100-lt-if100"
    _finished(run / "ssd-s0" / "stage4", 44.96, ["a" * 40, "b" * 40 + "-dirty"])
    _finished(run / "decoupling-s0" / "lws", 41.65, ["c" * 40])
    _finished(run / "ssd-s0" / "stage2", 43.34, ["d" * 40 + "-dirty"], wall=(33.6,))
    stages = [{"name": n, "epochs": e} for n, e in (("stage1", 200), ("stage2", 5), ("stage3", 200), ("stage4", 5))]
    (run / "ssd-s0" / "recipe.yaml").write_text(yaml.safe_dump({"stages": stages}))
    s3 = run / "ssd-s0" / "stage3"
    s3.mkdir()
    lines = [{"step": 0, "event": "segment"}, {"step": 85, "epoch": 1, "loss": 1.0}, {"step": 10625, "epoch": 125}]
    (s3 / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + '\n{"step": 10650, "epo')  # cut by a kill
    (s3 / "checkpoint.pt").write_bytes(b"x")
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- bench:full-cifar100-lt-if100-s0-cpu -->\nstale table\n<!-- /bench:full-cifar100-lt-if100-s0-cpu -->\nafter\n")
    return readme


def test_rows_carry_scores_paper_gap_wall_and_flags(tmp_path):
    readme = _fixture(tmp_path)
    doc = full_table(tmp_path / "full", results=tmp_path, readme=readme)
    rows = {(r["recipe"], r["stage"]): r for r in doc["rows"]}
    assert len(doc["rows"]) == len(ROWS)
    ssd = rows[("ssd", "stage4")]
    assert ssd["status"] == "done" and ssd["top1"] == 44.96 and ssd["paper"] == 46.0
    assert ssd["gap"] == -1.04 and ssd["wall_seconds"] == 150.0 and ssd["segments"] == 2
    assert ssd["dirty"] is True and ssd["commits"] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb-dirty"]
    assert rows[("ssd", "stage2")]["dirty"] and not rows[("ssd", "stage2")]["upstream_dirty"]
    lws = rows[("decoupling", "lws")]
    assert lws["gap"] == round(41.65 - 42.3, 2) and lws["dirty"] is False and not lws["upstream_dirty"]
    running = rows[("ssd", "stage3")]
    assert running == {**running, "status": "running", "epoch": 125, "epochs": 200, "resumable": True}
    assert rows[("cbd", "cbd")]["status"] == "not started"
    # the results file is what was returned, and the README block between the markers was replaced
    assert json.loads((tmp_path / "full-cifar100-lt-if100-s0-cpu.json").read_text())["rows"] == doc["rows"]
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "stale table" not in text
    assert "| **SSD** (IV: LWS on the hard head) (dirty) | 44.96 | 60.0 | 40.0 | 10.0 | 46.0 | -1.04 | 2 min | 512 |" in text
    assert "| SSD III: hard head | running: epoch 125 of 200 |" in text
    assert "| SSD II: LWS teacher (dirty) | 43.34 | 60.0 | 40.0 | 10.0 | – | – | 34 s |" in text


def test_cli_prints_the_table(tmp_path, capsys):
    readme = _fixture(tmp_path)
    assert main(["bench", "full", "--root", str(tmp_path / "full"), "--results", str(tmp_path),
                 "--readme", str(readme)]) == 0
    out = capsys.readouterr().out
    assert "| LWS | 41.65 |" in out and "not started" in out


def test_other_imbalance_lists_the_runs_that_exist_and_reads_the_smaller_lws_recipe(tmp_path):
    run = tmp_path / "full" / "cifar100-lt-if50"
    _finished(run / "lws-s0" / "ce", 43.5, ["c" * 40])
    _finished(run / "lws-s0" / "lws", 46.4, ["c" * 40])
    _finished(run / "ssd-s0" / "stage4", 50.1, ["e" * 40])
    doc = full_table(tmp_path / "full", imbalance=50, results=tmp_path, readme=None)
    rows = {r["label"]: r for r in doc["rows"]}
    # the five SSD stages (four not started), then CE and LWS from the `lws` run; no CBD/BalanceAux rows
    assert [r["stage"] for r in doc["rows"]] == ["stage1", "stage2", "stage3", "stage3_soft", "stage4", "ce", "lws"]
    assert rows["LWS"]["recipe"] == "lws" and rows["LWS"]["paper"] == 46.0 and rows["LWS"]["gap"] == 0.4
    assert rows["CE (LDAM schedule)"]["top1"] == 43.5 and rows["CE (LDAM schedule)"]["gap"] == -0.5
    assert rows["**SSD** (IV: LWS on the hard head)"]["gap"] == round(50.1 - 50.5, 2)
    assert (tmp_path / "full-cifar100-lt-if50-s0-cpu.json").is_file()
    assert "CIFAR-100-LT, IF = 50, seed 0" in render(doc) and "[lws/lws](" in render(doc)


def test_a_slimmed_run_reads_its_record_instead_of_its_weights(tmp_path):
    """scripts/checkpoints.py took the weights out of the tree: the row comes from results.json, unchanged."""
    readme = _fixture(tmp_path)
    run = tmp_path / "full" / "cifar100-lt-if100" / "decoupling-s0"
    before = {(r["recipe"], r["stage"]): r for r in full_table(tmp_path / "full", results=tmp_path, readme=readme)["rows"]}
    from longtail.engine.checkpoint import load_checkpoint

    metrics = load_checkpoint(run / "lws" / "final.pt")["metrics"]
    (run / "results.json").write_text(json.dumps({"stages": {"lws": metrics}}))
    (run / "checkpoints.json").write_text(json.dumps({"lws/final.pt": {"commit": "c" * 40, "bytes": 1, "sha256": "0" * 64}}))
    (run / "lws" / "final.pt").unlink()
    after = {(r["recipe"], r["stage"]): r for r in full_table(tmp_path / "full", results=tmp_path, readme=readme)["rows"]}
    assert after[("decoupling", "lws")] == before[("decoupling", "lws")] and after[("decoupling", "lws")]["top1"] == 41.65
    (run / "checkpoints.json").unlink()  # weights gone with no manifest: not a finished row
    gone = {(r["recipe"], r["stage"]): r for r in full_table(tmp_path / "full", results=tmp_path, readme=readme)["rows"]}
    assert gone[("decoupling", "lws")]["status"] == "not started"


def test_defaults_write_the_block_into_docs_results_md_not_the_readme(tmp_path, monkeypatch):
    """With every default (root results/full, results/, page docs/results.md, from the checkout's root), the
    table lands in docs/results.md, its run links relative to docs/; README.md is left alone."""
    (tmp_path / "results").mkdir()
    _fixture(tmp_path / "results")  # runs under results/full/, as a checkout has them
    marker = "<!-- bench:full-cifar100-lt-if100-s0-cpu -->\nstale\n<!-- /bench:full-cifar100-lt-if100-s0-cpu -->\n"
    (tmp_path / "README.md").write_text("# readme\n" + marker)
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "results.md"
    page.write_text("# Results\n" + marker + "end\n")
    monkeypatch.chdir(tmp_path)
    doc = full_table()
    assert (tmp_path / "results" / "full-cifar100-lt-if100-s0-cpu.json").is_file()
    text = page.read_text()
    assert "stale" not in text and text.startswith("# Results\n") and text.endswith("end\n")
    assert "| LWS | 41.65 |" in text
    assert "[decoupling/lws](../results/full/cifar100-lt-if100/decoupling-s0/lws)" in text
    assert (tmp_path / "README.md").read_text() == "# readme\n" + marker
    # the same table on stdout (no page) links from the checkout's root
    assert "[decoupling/lws](results/full/cifar100-lt-if100/decoupling-s0/lws)" in render(doc)


def test_cli_default_page_is_docs_results_md_and_readme_is_an_alias(tmp_path, monkeypatch, capsys):
    from longtail.cli import build_parser

    args = build_parser().parse_args(["bench", "full"])
    assert args.readme == "docs/results.md"
    readme = _fixture(tmp_path)
    other = tmp_path / "page.md"
    other.write_text(readme.read_text())
    for flag, target in (("--page", other), ("--readme", readme)):
        assert main(["bench", "full", "--root", str(tmp_path / "full"), "--results", str(tmp_path), flag, str(target)]) == 0
        assert "| LWS | 41.65 |" in target.read_text() and "stale table" not in target.read_text()
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # no docs/results.md here: the run still prints its table and writes its JSON
    assert main(["bench", "full", "--root", str(tmp_path / "full"), "--results", str(tmp_path)]) == 0
    assert "| LWS | 41.65 |" in capsys.readouterr().out and not (tmp_path / "docs").exists()


def test_seeds_table_gives_mean_and_sample_std_by_hand(tmp_path):
    from longtail.bench.seeds import render_seeds, seeds_table

    run = tmp_path / "full" / "cifar100-lt-if100"
    for seed, top1 in ((0, 44.62), (1, 45.10), (2, 43.90)):
        _finished(run / f"ssd-s{seed}" / "stage4", top1, ["a" * 40])
    _finished(run / "decoupling-s0" / "lws", 42.46, ["c" * 40])
    (run / "decoupling-s1" / "lws").mkdir(parents=True)
    (run / "decoupling-s1" / "lws" / "metrics.jsonl").write_text('{"step": 85, "epoch": 3}\n')
    page = tmp_path / "results.md"
    page.write_text("<!-- bench:full-cifar100-lt-if100-seeds-cpu -->\n<!-- /bench:full-cifar100-lt-if100-seeds-cpu -->\n")
    doc = seeds_table(tmp_path / "full", seeds=(0, 1, 2), results=tmp_path, page=page)
    rows = {(r["recipe"], r["stage"]): r for r in doc["rows"]}
    ssd = rows[("ssd", "stage4")]
    mean = (44.62 + 45.10 + 43.90) / 3
    std = (sum((v - mean) ** 2 for v in (44.62, 45.10, 43.90)) / 2) ** 0.5
    assert ssd["top1"] == {"mean": round(mean, 2), "std": round(std, 2), "n": 3} and ssd["seeds_done"] == [0, 1, 2]
    assert ssd["gap"] == round(round(mean, 2) - 46.0, 2)
    lws = rows[("decoupling", "lws")]
    assert lws["top1"] == {"mean": 42.46, "std": None, "n": 1} and lws["seeds_done"] == [0]
    text = page.read_text()
    assert f"| **SSD** (IV: LWS on the hard head) | 0, 1, 2 | {mean:.2f} ± {std:.2f} |" in text
    assert "| LWS | 0 (s1 epoch 3/" in text
    assert ("cbd", "cbd") not in rows  # no seed of it exists
    assert json.loads((tmp_path / "full-cifar100-lt-if100-seeds-cpu.json").read_text())["rows"] == doc["rows"]


def test_the_results_page_tables_are_what_the_committed_run_folders_give(tmp_path):
    """docs/results.md's full-schedule blocks (IF 100, 50, 10 and the seeds table) re-derived from the run
    folders in results/full, as `longtail bench full` writes them. Link targets and the JSON paths depend on
    where the page is written, and a running seed's progress note on when: both are left out of the comparison."""
    import re
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    page = tmp_path / "results.md"
    shutil.copy(repo / "docs" / "results.md", page)
    for args in (["--imbalance", "100"], ["--imbalance", "50"], ["--imbalance", "10"], ["--seeds", "0,1,2"]):
        assert main(["bench", "full", "--root", str(repo / "results" / "full"), *args, "--page", str(page),
                     "--results", str(tmp_path)]) == 0

    def blocks(text):
        text = re.sub(r"\]\([^)]*\)", "]()", text)
        text = re.sub(r"`[^`]*\.json`", "`JSON`", text)
        text = re.sub(r" \(s\d+ epoch \d+/\d+\)", "", text)
        return dict(re.findall(r"<!-- bench:(full-[^ ]+) -->(.*?)<!-- /bench:\1 -->", text, re.S))

    committed, derived = blocks((repo / "docs" / "results.md").read_text()), blocks(page.read_text())
    assert set(committed) == {"full-cifar100-lt-if100-s0-cpu", "full-cifar100-lt-if100-seeds-cpu",
                              "full-cifar100-lt-if50-s0-cpu", "full-cifar100-lt-if10-s0-cpu"}
    assert derived == committed
