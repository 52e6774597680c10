"""benchmarks/cpu_settings.py: epoch times read from metrics.jsonl stamps, checked by hand."""
import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("cpu_settings", Path(__file__).parents[1] / "benchmarks" / "cpu_settings.py")
cpu_settings = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_settings)


def test_epoch_times_split_first_epoch_from_steady_ones(tmp_path):
    recs = [{"step": 0, "time": 100.0, "event": "segment"},
            {"step": 5, "time": 150.0, "epoch": 0, "loss": 1.0},   # compile lands in the first epoch
            {"step": 10, "time": 160.0, "epoch": 1, "loss": 1.0},
            {"step": 10, "time": 161.0, "epoch": 1, "val_top1": 3.0},  # not a training stamp
            {"step": 20, "time": 172.0, "epoch": 2, "loss": 1.0},
            {"step": 30, "time": 186.0, "epoch": 3, "loss": 1.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(map(json.dumps, recs)) + "\n")
    first, later = cpu_settings.epoch_times(path, steps_per_epoch=10)
    assert first == 60.0 and later == [12.0, 14.0]
