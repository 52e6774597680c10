"""A progress bar on stderr, for training stages and data preparation alike."""
from __future__ import annotations

import sys
import time


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """One line per stage, redrawn in place on a terminal. Otherwise (CI logs, ``nohup`` runs) a line at
    every ~10 % and at least every ``log_every`` seconds, so an hours-long stage shows it is alive."""

    MIN_RATE_SECONDS = 5.0  # a rate over the first seconds (warm-up, a resume's first step) misleads

    def __init__(self, total: int, desc: str, start: int = 0, enabled: bool = True, stream=None,
                 log_every: float = 60.0, clock=time.perf_counter):
        self.total, self.desc, self.n = total, desc, start
        self.start_n = start
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.clock = clock
        self.log_every = log_every
        self.t0 = clock()
        self.last_draw = self.t0
        self.last_decile = -1
        self.postfix = ""

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items())
        if not self.enabled:
            return
        now = self.clock()
        decile = 10 * self.n // max(1, self.total)
        if self.tty and (now - self.last_draw > 0.2 or self.n >= self.total):
            self._draw("\r", "")
            self.last_draw = now
        elif not self.tty and (decile != self.last_decile or now - self.last_draw >= self.log_every):
            self._draw("", "\n")
            self.last_decile, self.last_draw = decile, now

    def _draw(self, pre: str, post: str) -> None:
        elapsed = self.clock() - self.t0
        frac = self.n / max(1, self.total)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        if elapsed >= self.MIN_RATE_SECONDS and self.n > self.start_n:
            rate = (self.n - self.start_n) / elapsed
            timing = f"{_fmt_time(elapsed)}<{_fmt_time((self.total - self.n) / rate)} {rate:.2f}it/s"
        else:
            timing = f"{_fmt_time(elapsed)}<? ?it/s"
        line = f"{self.desc} [{bar}] {self.n}/{self.total} {timing} {self.postfix}"
        self.stream.write(f"{pre}{line}{post}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
