"""A progress bar on stderr, for training stages and data preparation alike."""
from __future__ import annotations

import sys
import time


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
