"""What only shows on GPUs or several ranks, checked on CPU: the autocast dtype a CUDA card gets, and a
first download under DDP."""
import io
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from longtail.data import cifar, download
from longtail.engine.runtime import pick_amp
from longtail.errors import DataError


@pytest.mark.parametrize("native,want", [(False, torch.float16), (True, torch.bfloat16)])
def test_auto_amp_takes_fp16_where_bf16_is_only_emulated(monkeypatch, native, want):
    """``is_bf16_supported()`` is True on pre-Ampere cards too, which emulate bf16 far slower than their fp16."""
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return native or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert pick_amp("auto", torch.device("cuda", 0)) is want
    assert asked == [False]
    assert pick_amp("bf16", torch.device("cuda", 0)) is torch.bfloat16  # asked for by name: as asked


def _as_rank(monkeypatch, rank, events, broadcast):
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    monkeypatch.setattr(download, "download_url",
                        lambda url, dest, md5=None: events.append(("download", url, dest.name)) or dest.write_bytes(b"x") or dest)


def test_rank_one_waits_for_rank_zero_and_never_downloads(tmp_path, monkeypatch):
    events, dest = [], tmp_path / "a.tar.gz"

    def broadcast(box, src=0):  # rank 0 finishes its download while rank 1 waits here
        events.append(("barrier", dest.exists()))
        dest.write_bytes(b"x")
        box[0] = None

    _as_rank(monkeypatch, 1, events, broadcast)
    assert download.download_once("http://x/a.tar.gz", dest, "md5") == dest
    assert events == [("barrier", False)]


def test_rank_zero_downloads_once_before_the_barrier(tmp_path, monkeypatch):
    events, dest = [], tmp_path / "a.tar.gz"
    _as_rank(monkeypatch, 0, events, lambda box, src=0: events.append(("barrier", box[0])))
    download.download_once("http://x/a.tar.gz", dest, "md5")
    assert events == [("download", "http://x/a.tar.gz", "a.tar.gz"), ("barrier", None)]
    events.clear()
    download.download_once("http://x/a.tar.gz", dest, "md5")  # there now: nobody fetches, every rank still meets
    assert events == [("barrier", None)]


def test_a_failed_download_on_rank_zero_fails_rank_one_with_its_message(tmp_path, monkeypatch):
    def broadcast(box, src=0):
        box[0] = "could not download http://x/a.tar.gz to a.tar.gz: refused"

    _as_rank(monkeypatch, 1, [], broadcast)
    with pytest.raises(DataError, match=r"^could not download http://x/a.tar.gz to a.tar.gz: refused$"):
        download.download_once("http://x/a.tar.gz", tmp_path / "a.tar.gz")
    _as_rank(monkeypatch, 1, [], lambda box, src=0: None)  # rank 0 succeeded, but on a disk rank 1 cannot see
    with pytest.raises(DataError, match="rank 1 does not see it; put the data root on a filesystem that every rank shares"):
        download.download_once("http://x/a.tar.gz", tmp_path / "a.tar.gz")


def test_load_cifar_downloads_through_the_once_per_run_path(tmp_path, monkeypatch):
    seen = []

    def once(url, dest, md5=None):
        seen.append((url, dest, md5))
        raise DataError("stop here")

    monkeypatch.setattr(download, "download_once", once)
    with pytest.raises(DataError, match="stop here"):
        cifar.load_cifar("cifar10", tmp_path, download=True)
    spec = cifar.SPECS["cifar10"]
    assert seen == [(spec.url, tmp_path / spec.archive, spec.md5)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _download_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    opened = []
    download.urlopen = lambda url: opened.append(url) or io.BytesIO(b"archive bytes")
    got = download.download_once("http://x/a.tar.gz", out / "a.tar.gz", download.hashlib.md5(b"archive bytes").hexdigest())
    (out / f"rank{rank}").write_text(f"{len(opened)} {got.read_bytes().decode()}")
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_ranks_fetch_a_missing_archive_once(tmp_path):
    mp.spawn(_download_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["1 archive bytes", "0 archive bytes"]
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("recipe_name,stage,moco", [("cifar100-lt/ce", "ce", False), ("cifar100-lt/ssd", "stage1", False),
                                                     ("cifar100-lt/strong", "ce", False), ("cifar100-lt/ssd", "stage1", True),
                                                     ("cifar100-lt/proco", "ce", False)])
def test_a_training_step_makes_no_host_sync_except_at_logging(recipe_name, stage, moco, tmp_path, monkeypatch):
    """Counted through the engine with a dispatch mode (.item() / nonzero): only logging steps read back, and
    no step makes a tensor from host data (on a GPU, a host-to-device copy: the plan, labels and constants
    are on the device already). Before this was fixed, every step made 4 (index, labels, mean, std), 6 with
    MoCo. The augmentation policies run as they do off the CPU (``dense``: no gather by a host-side count)."""
    import functools

    from longtail.bench.syncs import CHECKED, count_syncs, one_epoch
    from longtail.data.augment import policy
    from longtail.data.synthetic import synthetic_bundle
    from longtail.engine.loop import LOG_EVERY

    assert (recipe_name, stage) in CHECKED  # the device check counts the same stages
    monkeypatch.setattr(policy, "apply_slots", functools.partial(policy.apply_slots, dense=True))
    data = synthetic_bundle(num_classes=6, max_per_class=100, imbalance=10, size=16)
    r = one_epoch(recipe_name, stage, "cpu", toy=True)
    if moco:  # MoCo's key view, queue and momentum encoder (imagenet-lt/ssd's stage I) on the toy set
        r.stages[0].params.update(self_sup="moco", moco_queue=64, key_augment="cifar")
    per_step, host = count_syncs(r, data, tmp_path)
    steps = -(-len(data.train) // 8)
    assert len(per_step) == len(host) == steps >= 30
    logging = {i for i in range(steps) if (i + 1) % LOG_EVERY == 0 or i + 1 == steps}
    assert [i for i, n in enumerate(per_step) if n and i not in logging] == []
    assert all(per_step[i] > 0 for i in logging)  # the counter sees the read-backs it should
    assert host == [0] * steps


def test_the_step_counter_sees_host_tensors_and_syncs():
    """The dispatch mode behind the step counts: each way of making a tensor from host data, and .item()."""
    import numpy as np

    from longtail.bench.syncs import _CpuSyncs, _Tally

    tally = _Tally()
    with _CpuSyncs(tally):
        torch.tensor([1.0])  # before the first step: not counted
        tally.step()
        torch.tensor([1.0]), torch.as_tensor(np.arange(3)), torch.from_numpy(np.arange(2)), torch.full((2,), 1.0)
        tally.step()
        torch.ones(2).sum().item()
    assert (tally.host_per_step, tally.per_step) == ([3, 0], [0, 1])


@pytest.mark.parametrize("name", ["autoaugment_cifar", "randaugment"])
def test_the_sync_free_policy_path_gives_the_same_images(name, monkeypatch):
    """dense (the GPU default: every op on every image, torch.where keeps the drawn one) equals the gathered path."""
    import functools

    from longtail.data.augment import policy

    x, outs, real = torch.rand(64, 3, 16, 16), [], policy.apply_slots
    for dense in (False, True):
        monkeypatch.setattr(policy, "apply_slots", functools.partial(real, dense=dense))
        outs.append(getattr(policy, name)(x, torch.Generator().manual_seed(3)))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], x)


def test_the_prepared_device_check_dry_run_passes(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: every step of the device check on this CPU at toy sizes."""
    import json
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                       env={**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}, timeout=1800)
    log = (tmp_path / "gpu_check.log").read_text()
    assert r.returncode == 0, log[-2000:]
    assert "done: 0 step(s) failed" in log
    got = {p.name: json.loads(p.read_text()) for p in tmp_path.glob("*-dry.json")}
    # one name pattern (results/*-gpu.json on the device) and provenance naming the code in every file
    assert set(got) == {f"{k}-dry.json" for k in ("syncs", "nvjpeg-race", "throughput", "ce", "bench-data", "ssd")}
    from longtail.engine.runtime import code_hash
    assert all(r["provenance"]["code_hash"] == code_hash() and r["provenance"]["commit"] for r in got.values())
    syncs = got["syncs-dry.json"]
    assert {k for k in syncs if k != "provenance"} == {"cifar100-lt/ce:ce", "cifar100-lt/ssd:stage1", "cifar100-lt/strong:ce",
                                                       "cifar100-lt/proco:ce"}
    assert all(v["steps"] >= 30 and v["host_tensors_per_step"] == [0] * v["steps"] for k, v in syncs.items() if k != "provenance")
    assert "no CUDA" in got["nvjpeg-race-dry.json"]["skipped"]
    # CE and SSD against the committed CPU runs: every stage's top-1 difference, by the stage names of those runs
    ce, ssd = got["ce-dry.json"], got["ssd-dry.json"]
    assert set(ce["top1_minus_cpu"]) == {"ce"} and ce["cpu_stages"]["ce"]["top1"] == 39.77
    assert ce["top1_minus_cpu"]["ce"] == pytest.approx(ce["stages"]["ce"]["top1"] - 39.77, abs=0.01)
    assert set(ssd["top1_minus_cpu"]) == {"stage1", "stage2", "stage3", "stage3_soft", "stage4"} and ssd["cpu_stages"]["stage4"]["top1"] == 44.62


def test_a_compiled_run_trains_whole_batches_only(tmp_path, monkeypatch):
    """runtime.compile drops each epoch's short last batch (timm's drop_last), so the compiled step never meets
    a second shape; torch.compile is replaced by a recorder of the batch sizes the training model sees."""
    from test_engine import tiny_recipe

    from longtail.data.synthetic import synthetic_bundle
    from longtail.engine.pipeline import run_recipe

    sizes = []

    class Recorder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            sizes.append(len(x))
            return self.m(x)

    monkeypatch.setattr(torch, "compile", lambda m, **k: Recorder(m))
    data = synthetic_bundle(num_classes=6, max_per_class=100, imbalance=10, size=16)
    n = len(data.train)
    assert n % 32
    r = tiny_recipe(epochs=2, batch_size=32)
    r.runtime.compile = True
    run_recipe(r, tmp_path / "run", data=data)
    assert sizes == [32] * (2 * (n // 32))


def test_the_look_ahead_stream_drains_before_each_decode_and_hands_over_by_event(monkeypatch, tmp_path):
    """nvJPEG race guard (engine/streams.py), with the CUDA stream calls spied on: for every prefetched batch,
    the side stream is drained before the store decodes, an event is recorded after, the main stream waits on
    it, and every device tensor handed over is kept for the main stream (record_stream)."""
    import contextlib

    import numpy as np
    from PIL import Image

    from longtail.data.augment import Augment
    from longtail.data.filestore import FileStore
    from longtail.data.images import ImageSet
    from longtail.engine import streams
    from longtail.engine.feeder import BatchLoader
    from longtail.engine.runtime import Runtime

    calls = []

    class Spied(torch.Tensor):  # a tensor that says it is on a GPU, so hand_over keeps it for the main stream
        @property
        def is_cuda(self):
            return True

        def record_stream(self, stream):
            calls.append("keep")

    class Stream:
        device = torch.device("cpu")

        def synchronize(self):
            calls.append("drain")

        def wait_event(self, event):
            calls.append("wait")

    class Event:
        def record(self, stream):
            calls.append("event")

    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(streams, "to_device", lambda t, device: t.as_subclass(Spied))
    for i in range(4):
        Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    store = FileStore(tmp_path, [f"{i}.png" for i in range(4)], 16)
    load = store.load
    monkeypatch.setattr(store, "load", lambda index: calls.append("decode") or load(index))
    aug = Augment([{"op": "random_resized_crop", "size": 8}, {"op": "normalize"}], (0.5,) * 3, (0.25,) * 3)
    loader = BatchLoader(ImageSet(store, np.arange(4) % 2), aug, Runtime(torch.device("cpu"), None, False, False), 0, "ce", 0)
    loader.side.stream = Stream()
    monkeypatch.setattr("longtail.engine.feeder.to_device", streams.to_device)
    loader.start_epoch(0, {"x": [np.array([0, 1]), np.array([2, 3])]})
    for step in (0, 1):
        loader.prefetch("x", step)
        loader.prefetched[("x", step)].result()  # the look-ahead is done: the order below is deterministic
        calls.append(f"fetch {step}")
        assert loader.fetch("x", step, torch.Generator().manual_seed(0)).x.shape == (2, 3, 8, 8)
    assert calls == ["drain", "decode", "event", "fetch 0", "wait", "keep"] + ["drain", "decode", "event", "fetch 1", "wait", "keep"]


def test_the_tracked_tree_and_the_data_pack_fit_one_device_call():
    """A device call carries the tree (running checkpoints moved aside) and the pack: 64 MiB at most."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "device_payload.py"
    spec = importlib.util.spec_from_file_location("device_payload", path)
    payload = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(payload)
    p = payload.payload()
    assert p["pack_bytes"] > 50 * 2 ** 20  # the recorded pack (or the built one), not a missing number
    assert p["tracked_tree_bytes"] + p["pack_bytes"] <= 64 * 2 ** 20, p
    assert p["fits"] == (p["sum_bytes"] <= 64 * 2 ** 20)
