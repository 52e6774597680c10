"""``longtail bench throughput --quick``: the JSON's layout, on a tiny synthetic set (speeds are not checked)."""
import json

import pytest
import torch

from longtail.bench.stepcost import METHOD_STAGES
from longtail.cli import main

MEASURED = ("images_per_s", "ms_per_step", "images_per_step", "peak_mem_mib")


@pytest.fixture
def one_thread():
    """Two busy cores: one intra-op thread keeps the smoke run short and steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_quick_throughput_writes_every_figure_with_provenance(tmp_path, one_thread):
    assert main(["bench", "throughput", "--quick", "--synthetic", "--batch", "16", "--device", "cpu",
                 "--results", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "throughput-cpu.json").read_text())

    for part in (res["model_alone"], res["classic_pipeline"], *res["methods"].values()):
        for key in MEASURED:
            assert isinstance(part[key], (int, float)), key
        assert part["images_per_s"] > 0 and part["ms_per_step"] > 0 and part["peak_mem_mib"] >= 0
    assert set(res["methods"]) == set(METHOD_STAGES) >= {"ce", "ssd_stage1_rotation", "ssd_stage3_online_teacher",
                                                         "cbd_k1", "cbd_k4", "balance_aux"}
    assert res["methods"]["balance_aux"]["images_per_step"] == 32  # two feeds of 16
    assert res["methods"]["ce"]["step_time_vs_ce"] == 1.0
    assert res["classic_pipeline"]["loader_alone_images_per_s"] > 0

    loop = res["longtail_loop"]
    assert loop["images_per_s"] > 0 and loop["steps_timed"] >= 1
    model = res["model_alone"]
    assert model["images_per_s"] == max(model["runs"])
    assert res["ratios"]["loop_over_model_alone"] == pytest.approx(loop["images_per_s"] / model["images_per_s"], rel=1e-3)
    assert res["ratios"]["loop_over_classic"] == pytest.approx(loop["images_per_s"] / res["classic_pipeline"]["images_per_s"], rel=1e-3)

    prov = res["provenance"]
    for key in ("commit", "torch", "device", "threads", "batch", "malloc_env", "time", "command"):
        assert key in prov, key
    assert prov["batch"] == 16 and prov["torch"] == torch.__version__ and prov["threads"] == 1
    assert res["settings"]["quick"] is True and res["settings"]["peak_memory"].startswith("cpu:")
