"""longtail's progress bar against tqdm and rich, in a log file and in a terminal (issue 32): the same stage
(STEPS steps of STEP_S seconds, with a loss postfix) drawn by each, the bytes each writes, how many lines a
log gets, and what ``tail -n 3`` of that log shows. The terminal is a pseudo-terminal, so each library sees
a tty and behaves as it would on screen.

    PYTHONPATH=<a folder with tqdm and rich> python benchmarks/progress_compare.py --out results/diagnostics/progress-compare.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS, STEP_S, LOG_EVERY = 150, 0.02, 1.0  # a 3 s stage; longtail logs a line every LOG_EVERY s (30 s in training)


def run_longtail(stream) -> None:
    from longtail.progress import ProgressBar

    bar = ProgressBar(STEPS, "[ce]", stream=stream, log_every=LOG_EVERY)
    for i in range(STEPS):
        time.sleep(STEP_S)
        bar.update(1, loss=2.0 - i / STEPS)
    bar.close()


def run_tqdm(stream) -> None:
    from tqdm import tqdm

    with tqdm(total=STEPS, desc="[ce]", file=stream) as bar:
        for i in range(STEPS):
            time.sleep(STEP_S)
            bar.set_postfix(loss=f"{2.0 - i / STEPS:.4g}", refresh=False)
            bar.update(1)


def run_rich(stream) -> None:
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(file=stream)) as progress:
        task = progress.add_task("[ce]", total=STEPS)
        for i in range(STEPS):
            time.sleep(STEP_S)
            progress.update(task, advance=1, description=f"[ce] loss {2.0 - i / STEPS:.4g}")


RUNNERS = {"longtail": run_longtail, "tqdm": run_tqdm, "rich": run_rich}


def to_file(fn) -> bytes:
    path = Path(f"/tmp/progress-{os.getpid()}.log")
    with open(path, "w") as f:
        fn(f)
    data = path.read_bytes()
    path.unlink()
    return data


def to_terminal(fn) -> bytes:
    """Everything ``fn`` writes to a pseudo-terminal (80 columns), read back from its other end."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    os.set_blocking(leader, False)
    chunks = []
    with os.fdopen(follower, "w", closefd=True) as tty:
        def drain():
            try:
                while True:
                    chunks.append(os.read(leader, 65536))
            except BlockingIOError:
                pass
        import threading

        stop = threading.Event()
        reader = threading.Thread(target=lambda: [drain() or time.sleep(0.01) for _ in iter(lambda: stop.is_set(), True)])
        reader.start()
        fn(tty)
        tty.flush()
        time.sleep(0.1)
        stop.set()
        reader.join()
        drain()
    os.close(leader)
    return b"".join(chunks)


def summary(data: bytes) -> dict:
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")  # a terminal's line discipline turns \n into \r\n
    lines = text.split("\n")
    last_lines = [l.split("\r")[-1] for l in lines if l.split("\r")[-1].strip()][-3:]  # what `tail -n 3` shows, after the last redraw
    return {"bytes": len(data), "lines": text.count("\n"), "redraws": text.count("\r"), "escapes": text.count("\x1b"),
            "longest_line": max(len(l) for l in lines), "tail_3": last_lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import rich
    import tqdm

    from longtail.engine.runtime import code_hash, git_commit

    res = {"stage": {"steps": STEPS, "seconds_per_step": STEP_S, "longtail_log_every_s": LOG_EVERY}}
    for name, fn in RUNNERS.items():
        res[name] = {"log_file": summary(to_file(fn)), "terminal": summary(to_terminal(fn))}
        print(name, json.dumps(res[name]["log_file"]), flush=True)
    res["versions"] = {"tqdm": tqdm.__version__, "rich": getattr(rich, "__version__", None) or __import__("importlib.metadata").metadata.version("rich")}
    res["provenance"] = {"commit": git_commit(), "code_hash": code_hash(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
