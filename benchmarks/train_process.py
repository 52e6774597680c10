"""A training process the benchmarks can watch and kill: ``longtail <argv>`` reporting where it is (stage,
phase, global step) through a small progress file, started fresh or forked from a warm driver.
``benchmarks/kill_resume.py`` aims its SIGKILLs with these; ``benchmarks/cpu_settings.py`` names the CPU."""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def install_progress_hooks(path: Path) -> None:
    """In a training process: keep ``path`` saying where the run is, ``{"stage", "phase", "step", "of"}``, so
    the driver can aim its kills at training steps and record what each one interrupted.

    ``phase`` is ``start-up`` (a stage is being built or restored), ``train`` (global step ``step`` of ``of``
    has begun: its batch is fetched), ``writing checkpoint.pt`` / ``best.pt`` / ``final.pt``, or
    ``evaluation`` (the stage's last validation and test passes). The engine functions are wrapped by name;
    what they compute, and every random stream, is unchanged. One small file replace per step.
    """
    from longtail.engine import loop, pipeline

    path = Path(path)
    scratch = path.with_name(path.name + ".w")
    state = {"stage": None, "phase": "start-up", "step": None, "of": None}
    real_train_stage, real_lr_at, real_finish, real_save = pipeline.train_stage, loop.lr_at, loop.finish_stage, loop.save_atomic

    def report(**changes):
        state.update(changes)
        scratch.write_text(json.dumps(state))
        os.replace(scratch, path)

    def train_stage(ctx, *a, **k):
        report(stage=ctx.stage.name, phase="start-up", step=None, of=None)
        return real_train_stage(ctx, *a, **k)

    def lr_at(step, total_steps, *a, **k):
        report(phase="train", step=step, of=total_steps)
        return real_lr_at(step, total_steps, *a, **k)

    def finish_stage(*a, **k):
        report(phase="evaluation")
        return real_finish(*a, **k)

    def save_atomic(obj, target, *a, **k):
        phase = state["phase"]
        report(phase=f"writing {Path(target).name}")
        try:
            return real_save(obj, target, *a, **k)
        finally:
            report(phase=phase)

    pipeline.train_stage, loop.lr_at, loop.finish_stage, loop.save_atomic = train_stage, lr_at, finish_stage, save_atomic


def read_progress(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def child(progress: str, argv: list[str]) -> int:
    """A training process: ``longtail <argv>`` reporting its progress to ``progress``."""
    install_progress_hooks(Path(progress))
    from longtail import cli

    return cli.main(argv)


class Forked:
    """A ``longtail train`` forked from this (already warm) process: a real process to SIGKILL, minus the
    seconds of importing torch and torch._dynamo that every fresh ``python -m longtail`` pays."""

    def __init__(self, argv: list[str], log, progress: Path):
        log.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: run the CLI, never return into the caller's code
            rc = 1
            try:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                rc = child(str(progress), argv)
            except BaseException:  # noqa: BLE001
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self):
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode
