"""``longtail bench reproduce``: the table generator, the grid's reuse of finished runs, stage pruning."""
from __future__ import annotations

import argparse
import json

import pytest

from longtail.bench.reproduce import build_recipe, reproduce
from longtail.bench.tables import mean_std, render_markdown, replace_block, summarise
from longtail.config import keep_stages, load_recipe
from longtail.errors import ConfigError


def entry(method, seed, top1, many, medium, few, imbalance=100.0):
    return {"method": method, "imbalance": imbalance, "seed": seed, "top1": top1, "many": many, "medium": medium,
            "few": few, "provenance": {"device": "cpu (2 threads), bfloat16, world 1", "commit": "abcdef1234567890",
                                       "finished": f"2026-11-2{seed}T10:00:00+0000"}}


@pytest.fixture
def doc():
    entries = [entry("CE", 0, 30.0, 60.0, 25.0, 2.0), entry("CE", 1, 32.0, 62.0, 27.0, 4.0),
               entry("SSD", 0, 40.0, 50.0, 40.0, None, imbalance=10.0)]
    d = {"table": "cifar100-lt", "tag": "cpu", "epochs_scale": 0.02, "short_stage_epochs": 10,
         "paper_source": "SSD Table 2", "entries": entries}
    d["summary"] = summarise(entries, {"CE": {100: 39.1}, "SSD": {10: 62.3}})
    return d


def test_mean_and_sample_std_by_hand():
    m, s = mean_std([30.0, 32.0])
    assert m == 31.0 and s == pytest.approx(2 ** 0.5)  # sqrt(((-1)^2 + 1^2) / (2 - 1))
    assert mean_std([5.0]) == (5.0, None)
    assert mean_std([None, None]) == (None, None)


def test_table_renders_results_file(doc):
    md = render_markdown(doc)
    lines = md.splitlines()
    ce = next(line for line in lines if line.startswith("| CE |"))
    assert ce == "| CE | 31.00 ± 1.41 | 61.00 ± 1.41 | 26.00 ± 1.41 | 3.00 ± 1.41 | 39.1 | 0,1 |"
    ssd = next(line for line in lines if line.startswith("| SSD |"))
    assert ssd == "| SSD | 40.00 | 50.00 | 40.00 | n/a | 62.3 | 0 |"  # empty few-shot group, one seed
    assert "**IF = 100**" in md and "**IF = 10**" in md
    assert "Device: cpu (2 threads), bfloat16, world 1" in md and "abcdef123456" in md
    assert "x0.02 (a 200-epoch stage runs 4)" in md and "2026-11-20 to 2026-11-21" in md


def test_readme_block_is_replaced_between_markers_only():
    text = "intro\n<!-- bench:t-cpu -->\nold table\n<!-- /bench:t-cpu -->\nafter\n"
    assert replace_block(text, "bench:t-cpu", "NEW\n") == "intro\n<!-- bench:t-cpu -->\nNEW\n<!-- /bench:t-cpu -->\nafter\n"
    assert replace_block("no markers", "bench:t-cpu", "NEW") == "no markers"


def test_keep_stages_keeps_dependencies_and_rejects_unknown():
    r = load_recipe("cifar100-lt/cbd")
    keep_stages(r, ["cbd_ens"])
    assert [s.name for s in r.stages] == ["teacher_std", "teacher_aug", "cbd_ens"]
    r = load_recipe("cifar100-lt/ssd")
    keep_stages(r, ["stage4"])
    assert [s.name for s in r.stages] == ["stage1", "stage2", "stage3", "stage4"]
    with pytest.raises(ConfigError, match="no stage named"):
        keep_stages(load_recipe("cifar100-lt/ssd"), ["nope"])


def test_scale_keeps_short_rebalancing_stages():
    r = build_recipe("cifar100-lt", "decoupling", ["crt", "lws", "tau_norm"], 100, 0, 0.02, "cpu", [])
    assert {s.name: s.epochs for s in r.stages} == {"ce": 4, "crt": 10, "lws": 5, "tau_norm": 0}
    assert r.stage("ce").schedule.milestones == pytest.approx([3.2, 3.6])  # 160, 180 scaled like the epochs


def _args(tmp_path, **kw):
    base = dict(table="cifar100-lt", imbalance=[10.0], seeds=[0], epochs_scale=0.005, methods=["CBS"], data_root=None,
                device="cpu", runs=str(tmp_path / "runs"), results=str(tmp_path / "results"), tag="t",
                render_only=False, readme=str(tmp_path / "README.md"))
    base.update(kw)
    return argparse.Namespace(**base)


def test_grid_writes_results_and_reuses_finished_cells(tmp_path, capsys):
    (tmp_path / "README.md").write_text("# x\n<!-- bench:cifar100-lt-t -->\n<!-- /bench:cifar100-lt-t -->\n")
    synthetic = ["data.dataset=synthetic"]
    doc = reproduce(_args(tmp_path), synthetic)
    (e,) = doc["entries"]
    run = json.loads((tmp_path / "runs/cifar100-lt/x0.005/cbs-if10-s0/results.json").read_text())
    assert e["top1"] == run["stages"]["ce"]["top1"] and e["config_hash"] == run["provenance"]["config_hash"]
    assert json.loads((tmp_path / "results/cifar100-lt-t.json").read_text())["entries"] == doc["entries"]
    readme = (tmp_path / "README.md").read_text()
    assert "| CBS |" in readme and readme.endswith("<!-- /bench:cifar100-lt-t -->\n")
    mtime = (tmp_path / "runs/cifar100-lt/x0.005/cbs-if10-s0/results.json").stat().st_mtime_ns

    capsys.readouterr()
    again = reproduce(_args(tmp_path), synthetic)
    assert "already" in capsys.readouterr().out
    assert again["entries"] == doc["entries"]
    assert (tmp_path / "runs/cifar100-lt/x0.005/cbs-if10-s0/results.json").stat().st_mtime_ns == mtime

    (tmp_path / "results/cifar100-lt-t.json").unlink()  # a later session: the run folder is all there is
    capsys.readouterr()
    third = reproduce(_args(tmp_path), synthetic)
    assert "reusing" in capsys.readouterr().out
    assert third["entries"][0]["top1"] == e["top1"]
    assert (tmp_path / "runs/cifar100-lt/x0.005/cbs-if10-s0/results.json").stat().st_mtime_ns == mtime

    with pytest.raises(ConfigError, match="--epochs-scale 0.005 table"):
        reproduce(_args(tmp_path, epochs_scale=0.01), synthetic)
    with pytest.raises(ConfigError, match="unknown"):
        reproduce(_args(tmp_path, methods=["XYZ"]), synthetic)


def test_default_page_is_docs_results_md(tmp_path, monkeypatch):
    """`bench reproduce` with no --page rewrites its block in docs/results.md (from the checkout's root), not README.md."""
    from longtail.cli import build_parser, main

    assert build_parser().parse_args(["bench", "reproduce", "--table", "cifar100-lt"]).readme == "docs/results.md"
    marker = "<!-- bench:cifar100-lt-t -->\n<!-- /bench:cifar100-lt-t -->\n"
    (tmp_path / "README.md").write_text("# readme\n" + marker)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("# Results\n" + marker)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "cifar100-lt-t.json").write_text(json.dumps(
        {"epochs_scale": 1.0, "entries": [entry("CE", 0, 30.0, 60.0, 25.0, 2.0)]}))
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "reproduce", "--table", "cifar100-lt", "--tag", "t", "--render-only"]) == 0
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "| CE | 30.00 | 60.00 | 25.00 | 2.00 | 39.1 | 0 |" in page and page.endswith("<!-- /bench:cifar100-lt-t -->\n")
    assert (tmp_path / "README.md").read_text() == "# readme\n" + marker
