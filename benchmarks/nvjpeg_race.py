"""The nvJPEG corruption harness (issue 30): decode on a look-ahead thread while the training stream is busy.

Reported upstream for torch 2.13 on an H100 (torchvision PR #9606, torchcodec PR #1634): nvJPEG decoding on a
second thread, into the stream whose queued kernels are still reading memory they have already freed,
corrupted rows in 134 of 200 iterations. Each iteration here queues matrix products on the main stream that
free their inputs before they run, while a thread decodes a batch of cache-sized JPEGs, then compares every
decoded image with a reference decode made on an idle device. Two ways of decoding are measured:

* ``shared``: the thread decodes on the main stream, as the engine did before the fix;
* ``side``: the engine's way now (``engine.streams.SideStream``): its own stream, drained before each decode,
  handed to the main stream by an event and ``record_stream``.

    python benchmarks/nvjpeg_race.py --out results/nvjpeg-race-gpu.json [--iterations 200]

Without CUDA (or torchvision's nvJPEG) it writes why it did not run, and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from longtail.data.decode import decode_jpegs_gpu, encode_jpeg, gpu_decoder_available, probe_image  # noqa: E402
from longtail.engine.streams import SideStream  # noqa: E402
from longtail.engine.runtime import code_hash, git_commit  # noqa: E402


def busy_main_stream(device, rounds: int = 8, n: int = 4096) -> None:
    """Queue products whose inputs are freed (to the allocator) before the kernels that read them have run."""
    for _ in range(rounds):
        a = torch.randn(n, n, device=device)
        b = a @ a
        del a  # the block goes back to the main stream's pool while the product is still queued
        b.sum()


def run(mode: str, blobs: list[bytes], reference: list[torch.Tensor], device, iterations: int) -> dict:
    side = SideStream(device)
    bad, bad_rows = 0, 0
    for _ in range(iterations):
        out = {}

        def decode():
            if mode == "side":
                out["x"] = side.run(decode_jpegs_gpu, blobs, device)
            else:
                out["x"] = (decode_jpegs_gpu(blobs, device), None)

        t = threading.Thread(target=decode)
        t.start()
        busy_main_stream(device)
        t.join()
        images = side.hand_over(*out["x"]) if mode == "side" else out["x"][0]
        torch.cuda.synchronize(device)
        rows = sum(int((a != r).any(dim=(0, 2)).sum()) for a, r in zip(images, reference))
        bad, bad_rows = bad + (rows > 0), bad_rows + rows
    return {"iterations": iterations, "corrupted_iterations": bad, "corrupted_rows": bad_rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--images", type=int, default=32)
    args = ap.parse_args(argv)
    record = {"provenance": {"commit": git_commit(), "code": code_hash(), "torch": torch.__version__,
                             "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, "what": "rows of nvJPEG output that differ from an idle-device decode"}
    if not torch.cuda.is_available() or not gpu_decoder_available("cuda:0"):
        record["skipped"] = "no CUDA device with torchvision's nvJPEG here"
    else:
        device = torch.device("cuda:0")
        blobs = [encode_jpeg(probe_image(375 + i % 7, 500 - i % 5), 85) for i in range(args.images)]
        reference = decode_jpegs_gpu(blobs, device)
        torch.cuda.synchronize(device)
        record["device"] = torch.cuda.get_device_name(device)
        for mode in ("shared", "side"):
            t0 = time.perf_counter()
            record[mode] = {**run(mode, blobs, reference, device, args.iterations),
                            "seconds": round(time.perf_counter() - t0, 1)}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(record, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "provenance"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
