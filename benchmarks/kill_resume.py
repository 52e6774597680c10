"""Crash survival: SIGKILL a two-stage run (CE -> LWS) at chosen training steps, resume each time, compare.

    python benchmarks/kill_resume.py                       # CIFAR-100-LT IF=100, 1 CE epoch + 1 LWS epoch, 12 kills
    python benchmarks/kill_resume.py --synthetic --kills 10   # tiny synthetic data, under a minute

First an uninterrupted run gives the reference results, each stage's number of training steps and its
time per step. The kill points are training steps: the kills are split evenly over the stages, and
within a stage its steps are cut into as many equal bins as it has kills, one step drawn (seeded) in
each bin (``pick_kill_points``). Every training process reports where it is (stage, phase, global
step) through a small progress file (``install_progress_hooks``); the driver kills it with SIGKILL once
it reports the target step, after a seeded pause of up to one step so the kill lands anywhere inside
the step. Every third kill instead waits, from the target step on, for the next checkpoint write to
begin (its temporary file to appear) and kills the process in the middle of it. Each kill's record
says which stage, phase and step it interrupted (the process's last report).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_process, also when loaded by path (tests)

import torch  # noqa: E402

from longtail.engine.checkpoint import load_checkpoint  # noqa: E402
from longtail.engine.pipeline import git_commit  # noqa: E402
from train_process import Forked, child, cpu_name, read_progress  # noqa: E402

METRIC_KEYS = ("top1", "top5", "many", "medium", "few", "per_class")
STAGES = ("ce", "lws")

SYNTHETIC_EVERY, REAL_EVERY = 3, 10  # runtime.checkpoint_every: how far the next checkpoint write can be, in steps

# Tiny synthetic CE -> LWS (8x8 images, 10 classes): a few seconds of training.
SYNTHETIC = """
name: kill-resume-synthetic
data: {dataset: synthetic, imbalance: 10, image_size: 8}
model: {backbone: resnet20}
runtime: {device: cpu, amp: "off", tensorboard: false, progress: false, checkpoint_every: %d, threads: 1}
stage_defaults:
  batch_size: 32
  optim: {lr: 0.05}
  schedule: {kind: cosine}
  augment: [{op: random_crop, size: 8, padding: 1}, {op: random_hflip}, {op: normalize}]
  eval_augment: [{op: normalize}]
stages:
  - {name: ce, epochs: 4}
  - {name: lws, method: lws, init: ce, sampler: class_balanced, samples_per_class: 2, epochs: 6}
""" % SYNTHETIC_EVERY

# The real recipe, shrunk: CE 200 epochs x 0.005 = 1 epoch, LWS 5 x 0.005 -> 1 epoch (CIFAR-100-LT IF=100, 10,847 images).
REAL_ARGS = ["--epochs-scale", "0.005", "--set", "runtime.device=cpu", "--set", "runtime.amp=off",
             "--set", "runtime.threads=1", "--set", f"runtime.checkpoint_every={REAL_EVERY}", "--set", "runtime.progress=false",
             "--set", "runtime.tensorboard=false"]


def pick_kill_points(steps: dict[str, int], kills: int, rng: random.Random) -> list[dict]:
    """``kills`` target training steps, in run order: ``[{"stage", "step", "of"}]``.

    ``steps`` maps each stage, in run order, to its number of training steps (stages without training are
    passed over). The kills are split evenly over those stages, the earlier ones taking any spare; within
    a stage of ``n`` steps that gets ``k`` kills, bin ``j`` is steps ``[j*n//k, (j+1)*n//k)`` and one step
    is drawn uniformly in each bin, so the kills spread over the whole stage, its first and last steps
    included. A stage with fewer steps than kills gets some steps twice.
    """
    stages = [s for s, n in steps.items() if n > 0]
    if not stages:
        raise ValueError("no stage has training steps to kill")
    points = []
    for i, stage in enumerate(stages):
        n, k = steps[stage], kills // len(stages) + (i < kills % len(stages))
        for j in range(k):
            lo, hi = j * n // k, (j + 1) * n // k
            points.append({"stage": stage, "step": min(rng.randrange(lo, max(hi, lo + 1)), n - 1), "of": n})
    return points


def reached(progress: dict | None, target: dict, order: list[str]) -> bool:
    """Whether a process reporting ``progress`` has begun the target step (or gone past it)."""
    if not progress or progress.get("stage") not in order:
        return False
    here, there = order.index(progress["stage"]), order.index(target["stage"])
    if here != there:
        return here > there
    return progress["phase"] != "start-up" and progress["step"] is not None and progress["step"] >= target["step"]


class Runner:
    def __init__(self, recipe: str, extra: list[str], data_root: str | None, fork: bool = False, every: int = REAL_EVERY):
        self.recipe, self.extra = recipe, list(extra) + (["--data-root", data_root] if data_root else [])
        self.fork, self.every = fork, every
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184"}

    def start(self, out: Path, resume: bool, log, progress: Path):
        """A training process on ``out`` that reports to ``progress`` (cleared first: no stale report counts)."""
        for p in (progress, progress.with_name(progress.name + ".w")):
            p.unlink(missing_ok=True)
        argv = ["train", self.recipe, "--out", str(out), *self.extra] + (["--resume"] if resume else [])
        if self.fork:
            return Forked(argv, log, progress)
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(progress), *argv],
                                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)


def temp_files(out: Path) -> list[str]:
    found = []
    for d in [out, *(out / s for s in STAGES)]:
        try:
            found += [str((d / e.name).relative_to(out)) for e in os.scandir(d) if e.name.startswith(".") and e.name.endswith(".tmp")]
        except FileNotFoundError:
            pass
    return sorted(found)


def reference_run(runner: Runner, out: Path, progress: Path, log) -> tuple[dict, dict]:
    """The uninterrupted run, watched: ``(marks, stages)``. ``marks``: seconds from launch to the first training
    step and to each stage's ``final.pt``; ``stages``: each stage's training steps and seconds per step."""
    t0 = time.perf_counter()
    proc = runner.start(out, False, log, progress)
    marks: dict[str, float] = {}
    seen: dict[str, dict] = {}
    while proc.poll() is None:
        now = time.perf_counter() - t0
        p = read_progress(progress)
        if p and p["phase"] == "train" and p["stage"] in STAGES:
            marks.setdefault("ready", now)
            s = seen.setdefault(p["stage"], {"of": p["of"], "first": (p["step"], now)})
            s["last"] = (p["step"], now)
        for st in STAGES:
            if f"{st}_done" not in marks and (out / st / "final.pt").exists():
                marks[f"{st}_done"] = now
        time.sleep(0.002)
    marks["end"] = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {proc.returncode}); see {log.name}")
    missing = [st for st in STAGES if st not in seen]
    if missing:
        raise SystemExit(f"the progress hooks saw no training step of stage(s) {missing}: has longtail.engine.loop "
                         f"(train_stage, lr_at) changed? See install_progress_hooks")
    stages = {}
    for st, s in seen.items():
        (a, ta), (b, tb) = s["first"], s["last"]
        stages[st] = {"steps": s["of"], "seconds_per_step": round((tb - ta) / (b - a), 4) if b > a else 0.0}
    return marks, stages


def resume_point(out: Path) -> dict:
    """Where a resume of ``out`` starts: the first unfinished stage and its checkpoint's global step."""
    for s in STAGES:
        if not (out / s / "final.pt").exists():
            where = {"stage": s, "step": 0}
            ck_path = out / s / "checkpoint.pt"
            if ck_path.exists():
                sched = load_checkpoint(ck_path).get("scheduler", {})
                if sched.get("total_steps"):
                    where = {"stage": s, "step": sched["global_step"], "of": sched["total_steps"]}
            return where
    return {"stage": "results"}


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


def in_training(interrupted: dict | None) -> bool:
    """A kill inside a stage's training steps: during a step, or a checkpoint write between steps."""
    return bool(interrupted) and interrupted["phase"] in ("train", "writing checkpoint.pt", "writing best.pt")


def run(kills: int = 12, seed: int = 0, synthetic: bool = False, data_root: str | None = None,
        work: Path | None = None, write_every: int = 3, fork: bool = False, overrides: list[str] = ()) -> dict:
    t_all = time.perf_counter()
    work = Path(work or tempfile.mkdtemp(prefix="kill_resume-"))
    work.mkdir(parents=True, exist_ok=True)
    if fork:  # what every run would import on its own (the optimiser pulls in torch._dynamo): once, before forking
        import importlib

        for name in ("torch._dynamo", "longtail.cli", "longtail.data.build"):
            importlib.import_module(name)
    if synthetic:
        (work / "recipe.yaml").write_text(SYNTHETIC)
    sets = [a for o in overrides for a in ("--set", o)]  # after the fixed ones: the last --set of a key wins
    if synthetic:
        runner = Runner(str(work / "recipe.yaml"), sets, None, fork, every=SYNTHETIC_EVERY)
    else:
        runner = Runner("cifar100-lt/lws", REAL_ARGS + sets, data_root, fork, every=REAL_EVERY)
    log = open(work / "train.log", "ab")
    ref_dir, out, progress = work / "uninterrupted", work / "killed", work / "progress.json"

    marks, stage_steps = reference_run(runner, ref_dir, progress, log)
    rng = random.Random(seed)
    targets = pick_kill_points({s: stage_steps[s]["steps"] for s in STAGES}, kills, rng)
    records, checked, failures, temps_seen, temps_stuck, resumes = [], 0, [], 0, [], 0
    previous_temps: list[str] = []
    for i, target in enumerate(targets):
        step_s = stage_steps[target["stage"]]["seconds_per_step"]
        during_write = bool(write_every and i % write_every == write_every - 1)
        proc = runner.start(out, resume=i > 0, log=log, progress=progress)
        resumes += i > 0
        launched = time.perf_counter()
        deadline = launched + 5 * marks["end"] + 60  # a resumed run never needs longer than a whole one
        got_there = False
        while proc.poll() is None and time.perf_counter() < deadline:
            if reached(read_progress(progress), target, list(STAGES)):
                got_there = True
                break
            time.sleep(0.001)
        caught = False
        if got_there and during_write:  # from the target step on, the next checkpoint write is the moment
            caught = kill_during_write(proc, out, wait=2.0 + 1.5 * (runner.every + 1) * step_s)
        elif got_there:
            time.sleep(rng.uniform(0, step_s))  # anywhere inside the step
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted = read_progress(progress) if alive else None  # its last report: what the kill cut short
        # A kill can leave a temporary file; the next resume must clear those of the run before it.
        temps = temp_files(out)
        stuck = [t for t in previous_temps if t in temps]
        temps_stuck += stuck
        temps_seen += len(temps)
        previous_temps = temps
        n, bad = check_files(out)
        checked += n
        failures += bad
        records.append({"kill": i + 1, "target": target, "reached_target": got_there, "after_s": round(time.perf_counter() - launched, 3),
                        "aimed_at_write": during_write, "caught_writing": caught, "landed_mid_run": alive,
                        "stage": interrupted["stage"] if interrupted else None, "interrupted": interrupted,
                        "in_training": in_training(interrupted), "resume_point": resume_point(out), "temp_files_left": temps,
                        "checkpoints_loaded": n, "load_failures": bad})
        if not alive:  # it finished (or failed) before the kill: nothing left to interrupt
            break

    # The last resume runs to the end.
    proc = runner.start(out, resume=True, log=log, progress=progress)
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
    by_stage = {s: sum(r["stage"] == s for r in landed) for s in STAGES}
    by_phase: dict[str, int] = {}
    for r in landed:
        phase = (r["interrupted"] or {}).get("phase", "before its first report")
        by_phase[phase] = by_phase.get(phase, 0) + 1
    lost = len(failures) + (1 if diffs else 0)
    threads = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("runtime.threads=")), 1)
    return {
        "what": "SIGKILL at seeded training steps of a CE -> LWS run (spread over each stage's steps), --resume after "
                "each, results compared with an uninterrupted run",
        "data": "synthetic (10 classes, 8x8)" if synthetic else "CIFAR-100-LT IF=100 (10,847 training images)",
        "recipe": runner.recipe, "args": runner.extra if not synthetic else SYNTHETIC.strip().splitlines() + runner.extra,
        "overrides": list(overrides), "amp": resolved_amp(overrides),
        "seed": seed,
        "processes": "forked from the driver (warm imports)" if fork else "fresh python processes (benchmarks/kill_resume.py --child)",
        "kill_points": "per stage, its training steps cut into as many equal bins as it gets kills (kills split evenly "
                       "over the stages), one step drawn in each bin; killed when the process reports that step, after "
                       "a seeded pause of up to one step (every third kill: at the next checkpoint write instead)",
        "stage_steps": stage_steps,
        "kills_attempted": len(records),
        "kills_landed_mid_run": len(landed),
        "kills_in_training_steps": sum(r["in_training"] for r in landed),
        "kills_during_checkpoint_write": sum(r["caught_writing"] and r["landed_mid_run"] for r in records),
        "kills_by_stage": {k: v for k, v in by_stage.items() if v},
        "kills_by_phase": by_phase,
        "interrupted_steps": {s: [r["interrupted"]["step"] for r in landed if r["stage"] == s] for s in STAGES},
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
            "device": f"cpu ({cpu_name()}, {os.cpu_count()} cores), {threads} intra-op thread(s) per training process",
            "host": platform.node(),
            "command": " ".join(["python", "benchmarks/kill_resume.py", *sys.argv[1:]]) if __name__ == "__main__" else None,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "work_dir": str(work),
    }


def resolved_amp(overrides) -> str:
    """``runtime.amp`` and the dtype it trains in on this CPU (``auto``: bf16 only where the CPU has it natively);
    both fixed configurations set ``off`` unless an override says otherwise."""
    from longtail.engine.runtime import pick_amp

    amp = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("runtime.amp=")), "off")
    return f"{amp} -> {pick_amp(amp, torch.device('cpu')) or 'torch.float32'}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--child"]:  # a training process started by run(): --child PROGRESS then longtail's own arguments
        return child(argv[1], argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=12, help="SIGKILLs to send (at least 10 for the record)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    p.add_argument("--synthetic", action="store_true", help="tiny synthetic data instead of CIFAR-100-LT (under a minute)")
    p.add_argument("--data-root", help="CIFAR-100 archive folder (default $LONGTAIL_DATA)")
    p.add_argument("--fork", action="store_true", help="fork each run from this process (skips the per-process import time)")
    p.add_argument("--work", help="folder for the two runs (default: a new temporary folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every run, after the fixed ones (e.g. runtime.amp=auto, runtime.threads=2)")
    p.add_argument("--json", default=str(REPO / "results" / "reliability" / "kill_resume.json"), help="where the record goes")
    args = p.parse_args(argv)
    record = run(args.kills, args.seed, args.synthetic, args.data_root, Path(args.work) if args.work else None, fork=args.fork,
                 overrides=args.set)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"kills {record['kills_attempted']} (mid-run {record['kills_landed_mid_run']}, in training steps "
          f"{record['kills_in_training_steps']}, during a checkpoint write {record['kills_during_checkpoint_write']}, "
          f"by stage {record['kills_by_stage']}), resumes {record['resumes']}, checkpoints loaded {record['checkpoints_checked']}, "
          f"results identical {record['results_identical']}, results lost {record['results_lost']}, {record['wall_seconds']} s -> {path}")
    return 0 if record["results_identical"] and record["results_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
