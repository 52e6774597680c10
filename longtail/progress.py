"""Progress on stderr, for training stages and data preparation alike.

On a terminal, one bar redrawn in place. Redirected to a file (CI logs, ``nohup`` runs), the same
text as plain lines, one after the first step, then at most one every ``log_every`` seconds, and one
at the end: ``[ce] [########------------] 410/1000 15:47<22:43 2.31s/it loss 2.31`` (elapsed<ETA).

Why not tqdm or rich (measured: results/diagnostics/progress-compare.json, benchmarks/progress_compare.py,
the same 150-step stage drawn by each into a log file and a pseudo-terminal): in a log, tqdm keeps its
carriage-return redraws, one 2,132-character line of 32 redraws, so ``grep`` and a log viewer see one ever
longer line; rich writes nothing until the stage ends (one line, 146 bytes), so a log of a two-hour stage
shows no progress at all. This bar writes one plain line after the first step, one per ``log_every`` and one
at the end (4 lines, 269 bytes), which read cleanly in ``tail -f``, and it needs neither library.
"""
from __future__ import annotations

import sys
import time


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def fmt_rate(steps_per_second: float) -> str:
    """``12.34it/s``, or ``s/it`` below one step a second, where it/s would read 0.00 for slow steps."""
    if steps_per_second >= 1.0:
        return f"{steps_per_second:.2f}it/s"
    return f"{1.0 / steps_per_second:.2f}s/it"


class ProgressBar:
    """``update`` after each step (or item); ``close`` at the end."""

    # On a terminal the bar shows "?" over the first seconds, whose rate (warm-up, a resume's first
    # step) misleads, and is soon redrawn. A log line stays: there a "?" would say nothing about a short
    # stage, so it gives the rate from the segment's start as soon as one step is done.
    MIN_RATE_SECONDS = 5.0

    def __init__(self, total: int, desc: str, start: int = 0, enabled: bool = True, stream=None,
                 log_every: float = 30.0, clock=time.perf_counter):
        self.total, self.desc, self.n = total, desc, start
        self.start_n = start
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.clock = clock
        self.log_every = log_every
        self.t0 = clock()
        self.last_draw = self.t0
        self.logged_n: int | None = None  # the step of the last log line
        self.postfix = ""

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if postfix:
            self.postfix = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items())
        if not self.enabled:
            return
        now = self.clock()
        if self.tty:
            if now - self.last_draw > 0.2 or self.n >= self.total:
                self._draw(now)
                self.last_draw = now
        elif self.n > self.start_n and self.logged_n != self.n and (
                self.logged_n is None or now - self.last_draw >= self.log_every or self.n >= self.total):
            self._log(now)

    def _line(self, now: float, rate_after: float) -> str:
        elapsed = now - self.t0
        frac = self.n / max(1, self.total)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        if elapsed >= rate_after and self.n > self.start_n:
            rate = (self.n - self.start_n) / max(elapsed, 1e-9)
            timing = f"{_fmt_time(elapsed)}<{_fmt_time(max(0, self.total - self.n) / rate)} {fmt_rate(rate)}"
        else:
            timing = f"{_fmt_time(elapsed)}<? ?it/s"
        return f"{self.desc} [{bar}] {self.n}/{self.total} {timing} {self.postfix}".rstrip()

    def _draw(self, now: float) -> None:
        # the last redraw stays on screen: it gives the stage's rate even when the stage was shorter than the "?"
        self.stream.write("\r" + self._line(now, 0.0 if self.n >= self.total else self.MIN_RATE_SECONDS))
        self.stream.flush()

    def _log(self, now: float) -> None:
        self.stream.write(self._line(now, 0.0) + "\n")
        self.stream.flush()
        self.last_draw, self.logged_n = now, self.n

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        elif self.n > self.start_n and self.logged_n != self.n:  # ended short of total: still say where
            self._log(self.clock())
