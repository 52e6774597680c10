"""Metric logs (JSONL always, TensorBoard when installed); the progress bar lives in ``longtail.progress``."""
from __future__ import annotations

import json
import time
from pathlib import Path



class MetricLogger:
    """Appends one JSON object per event to ``metrics.jsonl``; mirrors scalars to TensorBoard if available."""

    def __init__(self, path: Path | None, tensorboard: bool = True):
        self.path = path
        self.tb = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tb"))
            except Exception:  # tensorboard not installed: JSONL is the record
                self.tb = None

    def log(self, step: int, fields: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": round(time.time(), 3), **fields}) + "\n")
        if self.tb is not None:
            for k, v in fields.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_segments(path: Path) -> list[dict]:
    """The segments of a stage's ``metrics.jsonl``: one per start or ``--resume``, each from its
    ``segment`` event to the last line before the next one (a kill loses only the unlogged tail)."""
    segments: list[dict] = []
    if not path.exists():
        return segments
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
        if rec.get("event") == "segment":
            segments.append({"commit": rec.get("commit"), "code": rec.get("code"), "host": rec.get("host"), "start": rec["time"], "end": rec["time"],
                             "start_step": rec["step"], "end_step": rec["step"]})
        elif segments:
            segments[-1]["end"] = rec["time"]
            segments[-1]["end_step"] = max(segments[-1]["end_step"], rec["step"])
    for seg in segments:
        seg["wall_seconds"] = round(seg["end"] - seg["start"], 2)
        seg["steps"] = seg["end_step"] - seg["start_step"]
        for k in ("start", "end"):
            seg[k] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seg[k]))
    return segments
