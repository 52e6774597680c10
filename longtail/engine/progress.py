"""Progress bar and metric logs (JSONL always, TensorBoard when installed)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """One line per stage, redrawn in place on a terminal; a line every ~10% otherwise (CI logs)."""

    def __init__(self, total: int, desc: str, start: int = 0, enabled: bool = True, stream=None):
        self.total, self.desc, self.n = total, desc, start
        self.start_n = start
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.last_draw = 0.0
        self.last_decile = -1
        self.postfix = ""

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items())
        if not self.enabled:
            return
        now = time.perf_counter()
        decile = 10 * self.n // max(1, self.total)
        if self.tty and (now - self.last_draw > 0.2 or self.n >= self.total):
            self._draw("\r", "")
            self.last_draw = now
        elif not self.tty and decile != self.last_decile:
            self._draw("", "\n")
            self.last_decile = decile

    def _draw(self, pre: str, post: str) -> None:
        elapsed = time.perf_counter() - self.t0
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        frac = self.n / max(1, self.total)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        line = f"{self.desc} [{bar}] {self.n}/{self.total} {_fmt_time(elapsed)}<{_fmt_time(eta)} {rate:.2f}it/s {self.postfix}"
        self.stream.write(f"{pre}{line}{post}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


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
            segments.append({"commit": rec.get("commit"), "host": rec.get("host"), "start": rec["time"], "end": rec["time"],
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
