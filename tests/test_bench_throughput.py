"""``longtail bench throughput --quick``: the JSON's layout, on a tiny synthetic set (speeds are not checked)."""
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from longtail.bench.stepcost import METHOD_STAGES
from longtail.bench.throughput import epoch_end_times, sustained_rate
from longtail.cli import main
from longtail.errors import LongtailError

MEASURED = ("images_per_s", "ms_per_step", "images_per_step", "peak_mem_mib")


@pytest.fixture
def one_thread():
    """Two busy cores: one intra-op thread keeps the smoke run short and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def git_state() -> str:
    """HEAD, with '-dirty' when tracked code outside results/ has changed: what provenance should name."""
    repo = str(Path(__file__).resolve().parents[1])
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("-dirty" if dirty else "")


def test_quick_throughput_writes_every_figure_with_provenance(tmp_path, one_thread, monkeypatch):
    argv = ["bench", "throughput", "--quick", "--synthetic", "--batch", "16", "--device", "cpu", "--results", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/longtail", *argv])  # as the installed command would see it
    before, t0 = git_state(), time.time()
    assert main(argv) == 0
    after, t1 = git_state(), time.time()
    res = json.loads((tmp_path / "throughput-cpu.json").read_text())

    for part in (res["model_alone"], res["classic_pipeline"], *res["methods"].values()):
        for key in MEASURED:
            assert isinstance(part[key], (int, float)), key
        # One timing, two roundings: images/s = images per step / seconds per step.
        assert part["images_per_s"] == pytest.approx(1000 * part["images_per_step"] / part["ms_per_step"], rel=0.01)
    assert set(res["methods"]) == set(METHOD_STAGES) >= {"ce", "ssd_stage1_rotation", "ssd_stage3_online_teacher",
                                                         "cbd_k1", "cbd_k4", "balance_aux"}
    assert res["methods"]["balance_aux"]["images_per_step"] == 32  # two feeds of 16
    assert res["methods"]["ce"]["step_time_vs_ce"] == res["methods"]["ce"]["epoch_cost_vs_ce"] == 1.0
    assert res["methods"]["proco"]["images_per_step"] == 16  # its two extra views are of the same 16 images
    # an epoch is the first feed's pass: BalanceAux's two feeds of 16 make an epoch of 16-image steps
    assert res["methods"]["balance_aux"]["epoch_images_per_step"] == res["methods"]["proco"]["epoch_images_per_step"] == 16
    ce = res["methods"]["ce"]
    for r in res["methods"].values():
        assert r["epoch_cost_vs_ce"] == pytest.approx((r["ms_per_step"] / r["epoch_images_per_step"]) / (ce["ms_per_step"] / 16), abs=2e-3)
        assert r["step_time_vs_ce"] == pytest.approx(r["ms_per_step"] / res["methods"]["ce"]["ms_per_step"], abs=2e-3)

    loop = res["longtail_loop"]
    assert loop["steps_timed"] >= 1 and loop["sustained_epochs"] == 1  # --epochs 2 by default
    model = res["model_alone"]
    assert model["images_per_s"] == max(model["runs"])
    assert res["ratios"]["loop_over_model_alone"] == pytest.approx(loop["images_per_s"] / model["images_per_s"], rel=1e-3)
    assert res["ratios"]["sustained_over_model_alone"] == pytest.approx(loop["sustained_images_per_s"] / model["images_per_s"], rel=1e-3)
    assert res["ratios"]["loop_over_classic"] == pytest.approx(loop["images_per_s"] / res["classic_pipeline"]["images_per_s"], rel=1e-3)

    prov = res["provenance"]
    assert prov["commit"] in (before, after) and len(prov["commit"].removesuffix("-dirty")) == 40
    assert prov["batch"] == 16 and prov["torch"] == torch.__version__ and prov["threads"] == 1
    assert prov["python"] == platform.python_version() and prov["cpu_count"] == os.cpu_count()
    assert res["settings"]["amp"] in ("fp32", "bfloat16")
    assert prov["device"] == f"cpu (1 threads), {res['settings']['amp']}, world 1"
    assert prov["malloc_env"] == {k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
    assert t0 - 1 <= datetime.strptime(prov["time"], "%Y-%m-%dT%H:%M:%S%z").timestamp() <= t1 + 1
    assert prov["command"] == "longtail " + " ".join(argv)
    assert prov["args"]["batch"] == 16 and prov["args"]["quick"] is True and prov["args"]["device"] == "cpu"
    assert res["settings"]["quick"] is True and res["settings"]["peak_memory"].startswith("cpu:")


def test_sustained_rate_spans_whole_epochs_after_the_first():
    # 4 steps per epoch, 500 images per epoch; epoch ends at steps 4, 8, 12 stamped 10.0, 12.0, 14.5 s.
    lines = [{"step": 2, "time": 9.0, "loss": 1.0}, {"step": 4, "time": 10.0, "loss": 1.0},
             {"step": 6, "time": 11.0, "loss": 1.0}, {"step": 8, "time": 12.0, "loss": 1.0},
             {"step": 8, "time": 12.5, "val_top1": 3.0}, {"step": 12, "time": 14.5, "loss": 1.0}]
    assert epoch_end_times(lines, 4) == {1: 10.0, 2: 12.0, 3: 14.5}
    assert sustained_rate(lines, 4, 500) == (round(2 * 500 / 4.5, 1), 2)
    with pytest.raises(LongtailError, match=r"two whole epochs; the run logged the ends of \[1\]"):
        sustained_rate(lines[:2], 4, 500)


def test_throughput_refuses_fewer_than_two_epochs(capsys):
    assert main(["bench", "throughput", "--quick", "--synthetic", "--epochs", "1", "--device", "cpu"]) != 0
    assert "--epochs 1: the sustained rate needs at least 2" in capsys.readouterr().err
