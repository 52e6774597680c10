"""Crash survival: SIGKILL a two-stage run (CE -> LWS) at many random moments, resume each time, compare.

    python benchmarks/kill_resume.py                       # CIFAR-100-LT IF=100, 1 CE epoch + 1 LWS epoch, 12 kills
    python benchmarks/kill_resume.py --synthetic --kills 10   # tiny synthetic data, under a minute

First an uninterrupted run gives the reference results and a timeline (when each stage started and
finished). Then the same run is started again and killed with SIGKILL ``--kills`` times at seeded
random points of that timeline, spread over both stages; every third kill instead waits for a
checkpoint write to begin (its temporary file to appear) and kills the process in the middle of it.
After each kill, every ``checkpoint.pt`` / ``final.pt`` present must load
(``longtail.engine.checkpoint.load_checkpoint``), and the temporary files a kill can leave must be
gone once the next resume has started. The run is resumed with ``--resume`` each time; at the end,
its ``results.json`` (final and every stage: top1, top5, many, medium, few, per_class) and the weights
in every ``final.pt`` must equal the uninterrupted run's, bit for bit.

Writes ``results/reliability/kill_resume.json`` (or ``--json``); exits 1 if anything was lost.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from longtail.engine.checkpoint import load_checkpoint  # noqa: E402
from longtail.engine.pipeline import git_commit  # noqa: E402

METRIC_KEYS = ("top1", "top5", "many", "medium", "few", "per_class")
STAGES = ("ce", "lws")

# Tiny synthetic CE -> LWS (8x8 images, 10 classes): a few seconds of training.
SYNTHETIC = """
name: kill-resume-synthetic
data: {dataset: synthetic, imbalance: 10, image_size: 8}
model: {backbone: resnet20}
runtime: {device: cpu, amp: "off", tensorboard: false, progress: false, checkpoint_every: 3, threads: 1}
stage_defaults:
  batch_size: 32
  optim: {lr: 0.05}
  schedule: {kind: cosine}
  augment: [{op: random_crop, size: 8, padding: 1}, {op: random_hflip}, {op: normalize}]
  eval_augment: [{op: normalize}]
stages:
  - {name: ce, epochs: 4}
  - {name: lws, method: lws, init: ce, sampler: class_balanced, samples_per_class: 2, epochs: 6}
"""

# The real recipe, shrunk: CE 200 epochs x 0.005 = 1 epoch, LWS 5 x 0.005 -> 1 epoch (CIFAR-100-LT IF=100, 10,847 images).
REAL_ARGS = ["--epochs-scale", "0.005", "--set", "runtime.device=cpu", "--set", "runtime.amp=off",
             "--set", "runtime.threads=1", "--set", "runtime.checkpoint_every=10", "--set", "runtime.progress=false",
             "--set", "runtime.tensorboard=false"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Forked:
    """A ``longtail train`` forked from this (already warm) process: a real process to SIGKILL, minus the
    seconds of importing torch and torch._dynamo that every fresh ``python -m longtail`` pays."""

    def __init__(self, argv: list[str], log):
        log.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: run the CLI, never return into the caller's code
            rc = 1
            try:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                from longtail import cli

                rc = cli.main(argv)
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


class Runner:
    def __init__(self, recipe: str, extra: list[str], data_root: str | None, fork: bool = False):
        self.recipe, self.extra = recipe, list(extra) + (["--data-root", data_root] if data_root else [])
        self.fork = fork
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184"}

    def start(self, out: Path, resume: bool, log):
        argv = ["train", self.recipe, "--out", str(out), *self.extra] + (["--resume"] if resume else [])
        if self.fork:
            return Forked(argv, log)
        return subprocess.Popen([sys.executable, "-m", "longtail", *argv], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)


def temp_files(out: Path) -> list[str]:
    found = []
    for d in [out, *(out / s for s in STAGES)]:
        try:
            found += [str((d / e.name).relative_to(out)) for e in os.scandir(d) if e.name.startswith(".") and e.name.endswith(".tmp")]
        except FileNotFoundError:
            pass
    return sorted(found)


def reference_run(runner: Runner, out: Path, log) -> dict:
    """The uninterrupted run, watched: when it was ready to train and when each stage finished (seconds from launch)."""
    t0 = time.perf_counter()
    proc = runner.start(out, False, log)
    marks: dict[str, float] = {}
    while proc.poll() is None:
        now = time.perf_counter() - t0
        if "ready" not in marks and (out / STAGES[0] / "checkpoint.pt").exists():  # training has begun
            marks["ready"] = now
        for s in STAGES:
            if f"{s}_done" not in marks and (out / s / "final.pt").exists():
                marks[f"{s}_done"] = now
        time.sleep(0.02)
    marks["end"] = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {proc.returncode}); see {log.name}")
    marks.setdefault("ready", 0.0)
    for s in STAGES:
        marks.setdefault(f"{s}_done", marks["end"])
    return marks


def position(out: Path, marks: dict) -> tuple[str, float, dict]:
    """Where a killed run stands: the stage it was in, and that point on the reference timeline (seconds)."""
    start = marks["ready"]
    for s in STAGES:
        if not (out / s / "final.pt").exists():
            frac, where = 0.0, {"stage": s, "step": 0}
            ck_path = out / s / "checkpoint.pt"
            if ck_path.exists():
                sched = load_checkpoint(ck_path).get("scheduler", {})
                if sched.get("total_steps"):
                    frac = sched["global_step"] / sched["total_steps"]
                    where = {"stage": s, "step": sched["global_step"], "of": sched["total_steps"]}
            return s, start + frac * (marks[f"{s}_done"] - start), where
        start = marks[f"{s}_done"]
    return "after_last_stage", marks["end"], {"stage": "results"}


def check_files(out: Path) -> tuple[int, list[str]]:
    """Load every checkpoint.pt / final.pt / best.pt present; return how many, and the failures."""
    checked, failures = 0, []
    for p in sorted(out.glob("*/*.pt")):
        checked += 1
        try:
            load_checkpoint(p)
        except Exception as e:  # noqa: BLE001 - any failure is a lost checkpoint
            failures.append(f"{p.relative_to(out)}: {e}")
    return checked, failures


def kill_during_write(proc: subprocess.Popen, out: Path, wait: float) -> bool:
    """Wait up to ``wait`` seconds for a checkpoint write to start, then SIGKILL at once; True if one was caught."""
    dirs = [out / s for s in STAGES]
    deadline = time.perf_counter() + wait
    while time.perf_counter() < deadline and proc.poll() is None:
        for d in dirs:
            try:
                if any(e.name.startswith((".checkpoint.pt.", ".final.pt.")) for e in os.scandir(d)):
                    proc.send_signal(signal.SIGKILL)
                    return True
            except FileNotFoundError:
                pass
        time.sleep(0.0005)
    return False


def compare(ref: dict, got: dict, ref_dir: Path, got_dir: Path) -> list[str]:
    diffs = []
    for k in METRIC_KEYS:
        if ref["final"].get(k) != got["final"].get(k):
            diffs.append(f"final.{k}")
    for s, m in ref["stages"].items():
        for k in METRIC_KEYS:
            if m.get(k) != got["stages"].get(s, {}).get(k):
                diffs.append(f"stages.{s}.{k}")
        a, b = load_checkpoint(ref_dir / s / "final.pt")["model"], load_checkpoint(got_dir / s / "final.pt")["model"]
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            diffs.append(f"{s}/final.pt weights")
    return diffs


def run(kills: int = 12, seed: int = 0, synthetic: bool = False, data_root: str | None = None,
        work: Path | None = None, write_every: int = 3, fork: bool = False) -> dict:
    t_all = time.perf_counter()
    work = Path(work or tempfile.mkdtemp(prefix="kill_resume-"))
    work.mkdir(parents=True, exist_ok=True)
    if fork:  # what every run would import on its own (the optimiser pulls in torch._dynamo): once, before forking
        import importlib

        for name in ("torch._dynamo", "longtail.cli", "longtail.data.build"):
            importlib.import_module(name)
    if synthetic:
        (work / "recipe.yaml").write_text(SYNTHETIC)
        runner = Runner(str(work / "recipe.yaml"), [], None, fork)
    else:
        runner = Runner("cifar100-lt/lws", REAL_ARGS, data_root, fork)
    log = open(work / "train.log", "ab")
    ref_dir, out = work / "uninterrupted", work / "killed"

    marks = reference_run(runner, ref_dir, log)
    rng = random.Random(seed)
    # Seeded kill moments on the reference timeline, half in each stage (ready..ce_done, ce_done..end).
    n_ce = (kills + 1) // 2
    targets = sorted([rng.uniform(marks["ready"], marks["ce_done"]) for _ in range(n_ce)]
                     + [rng.uniform(marks["ce_done"], marks["lws_done"]) for _ in range(kills - n_ce)])
    records, checked, failures, temps_seen, temps_stuck, resumes = [], 0, [], 0, [], 0
    previous_temps: list[str] = []
    startup = marks["ready"]  # launch to training; re-estimated when a resumed process made no progress
    here = marks["ready"]
    for i, target in enumerate(targets):
        delay = startup + max(0.05, target - here) * rng.uniform(0.8, 1.2)
        during_write = write_every and i % write_every == write_every - 1
        proc = runner.start(out, resume=i > 0, log=log)
        resumes += i > 0
        launched = time.perf_counter()
        if during_write:  # from a little before the planned moment, the next checkpoint write is the target
            time.sleep(0.8 * delay)
            caught = kill_during_write(proc, out, wait=max(2.0, 0.4 * delay))
        else:
            caught = False
            while time.perf_counter() - launched < delay and proc.poll() is None:
                time.sleep(0.005)
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        stage, now, where = position(out, marks)
        if alive and now <= here:  # killed before it got anywhere: it needs longer to start than estimated
            startup *= 1.3
        elif not alive or now > target + 0.25 * (marks["lws_done"] - marks["ready"]) / kills:  # overshot
            startup *= 0.8
        here = now
        # A kill can leave a temporary file; the next resume must clear those of the run before it.
        temps = temp_files(out)
        stuck = [t for t in previous_temps if t in temps]
        temps_stuck += stuck
        temps_seen += len(temps)
        previous_temps = temps
        n, bad = check_files(out)
        checked += n
        failures += bad
        records.append({"kill": i + 1, "after_s": round(time.perf_counter() - launched, 3), "planned_s": round(delay, 3),
                        "aimed_at_write": bool(during_write), "caught_writing": caught, "landed_mid_run": alive,
                        "stage": stage if alive else None, "resume_point": where, "temp_files_left": temps,
                        "checkpoints_loaded": n, "load_failures": bad})
        if not alive:  # it finished before the kill: nothing left to interrupt
            break

    # The last resume runs to the end.
    proc = runner.start(out, resume=True, log=log)
    resumes += 1
    deadline = time.perf_counter() + 20 * marks["end"] + 60
    while proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:  # hung: counts as a failure, never as a pass
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    n, bad = check_files(out)
    checked += n
    failures += bad
    temps_after = temp_files(out)
    if proc.returncode != 0 or not (out / "results.json").exists():
        diffs = [f"the final resume failed (exit {proc.returncode}); see {work / 'train.log'}"]
    else:
        ref = json.loads((ref_dir / "results.json").read_text())
        got = json.loads((out / "results.json").read_text())
        diffs = compare(ref, got, ref_dir, out)
    landed = [r for r in records if r["landed_mid_run"]]
    by_stage = {s: sum(r["stage"] == s for r in landed) for s in (*STAGES, "after_last_stage")}
    lost = len(failures) + (1 if diffs else 0)
    return {
        "what": "SIGKILL at seeded random moments of a CE -> LWS run, --resume after each, results compared "
                "with an uninterrupted run",
        "data": "synthetic (10 classes, 8x8)" if synthetic else "CIFAR-100-LT IF=100 (10,847 training images)",
        "recipe": runner.recipe, "args": runner.extra if not synthetic else SYNTHETIC.strip().splitlines(),
        "seed": seed,
        "processes": "forked from the driver (warm imports)" if fork else "fresh python -m longtail",
        "kills_attempted": len(records),
        "kills_landed_mid_run": len(landed),
        "kills_during_checkpoint_write": sum(r["caught_writing"] and r["landed_mid_run"] for r in records),
        "kills_by_stage": {k: v for k, v in by_stage.items() if v},
        "stages_with_kills": sorted({r["stage"] for r in landed if r["stage"] in STAGES}),
        "resumes": resumes,
        "checkpoints_checked": checked,
        "checkpoint_load_failures": failures,
        "temp_files_left_by_kills": temps_seen,
        "temp_files_not_cleared_by_resume": temps_stuck + temps_after,
        "results_identical": not diffs,
        "differences": diffs,
        "results_lost": lost,
        "reference_timeline_s": {k: round(v, 2) for k, v in marks.items()},
        "wall_seconds": round(time.perf_counter() - t_all, 1),
        "kills": records,
        "provenance": {
            "commit": git_commit(), "torch": torch.__version__, "python": platform.python_version(),
            "device": f"cpu ({cpu_name()}, {os.cpu_count()} cores), 1 intra-op thread", "host": platform.node(),
            "command": " ".join(["python", "benchmarks/kill_resume.py", *sys.argv[1:]]) if __name__ == "__main__" else None,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "work_dir": str(work),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=12, help="SIGKILLs to send (at least 10 for the record)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--synthetic", action="store_true", help="tiny synthetic data instead of CIFAR-100-LT (under a minute)")
    p.add_argument("--data-root", help="CIFAR-100 archive folder (default $LONGTAIL_DATA)")
    p.add_argument("--fork", action="store_true", help="fork each run from this process (skips the per-process import time)")
    p.add_argument("--work", help="folder for the two runs (default: a new temporary folder)")
    p.add_argument("--json", default=str(REPO / "results" / "reliability" / "kill_resume.json"), help="where the record goes")
    args = p.parse_args(argv)
    record = run(args.kills, args.seed, args.synthetic, args.data_root, Path(args.work) if args.work else None, fork=args.fork)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"kills {record['kills_attempted']} (mid-run {record['kills_landed_mid_run']}, during a checkpoint write "
          f"{record['kills_during_checkpoint_write']}, by stage {record['kills_by_stage']}), resumes {record['resumes']}, "
          f"checkpoints loaded {record['checkpoints_checked']}, results identical {record['results_identical']}, "
          f"results lost {record['results_lost']}, {record['wall_seconds']} s -> {path}")
    return 0 if record["results_identical"] and record["results_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
