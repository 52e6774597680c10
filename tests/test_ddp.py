"""DDP on CPU with gloo: two ranks see disjoint halves of each global batch and end with the same weights."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from longtail.data.synthetic import synthetic_bundle
from longtail.engine.runtime import shutdown_runtime
from longtail.methods import METHODS
from longtail.methods.ce import CrossEntropy


class RecordingCE(CrossEntropy):
    """CE on a rank; the dataset indices it trained on are written down where the engine fetches them."""

    name = "ce_record"
    seen: list = []


def _record_fetches() -> None:
    from longtail.engine.feeder import BatchLoader

    fetch = BatchLoader.fetch

    def recording(self, stream, step, g):
        RecordingCE.seen.append(np.asarray(self.batches[stream][step]).copy())
        return fetch(self, stream, step, g)

    BatchLoader.fetch = recording


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out, batch=32):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    METHODS["ce_record"] = RecordingCE
    _record_fetches()
    from test_engine import tiny_recipe  # noqa: E402  (same tiny recipe as the engine tests)
    from longtail.engine.pipeline import run_recipe

    recipe = tiny_recipe(epochs=1, method="ce_record", batch_size=batch)
    captured = {}
    original = RecordingCE.loss

    def grab(self, model, batch, g):
        captured["model"], captured["broadcast"] = model.module, model.broadcast_buffers
        return original(self, model, batch, g)

    RecordingCE.loss = grab
    run_recipe(recipe, out / "run", data=synthetic_bundle(num_classes=6, max_per_class=100, imbalance=10, size=16))
    np.save(out / f"seen{rank}.npy", np.concatenate(RecordingCE.seen))
    np.save(out / f"steps{rank}.npy", np.array([len(s) for s in RecordingCE.seen]))
    torch.save(captured["model"].state_dict(), out / f"weights{rank}.pt")
    (out / f"broadcast{rank}").write_text(str(captured["broadcast"]))
    shutdown_runtime()


def test_two_ranks_see_disjoint_samples(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    a, b = np.load(tmp_path / "seen0.npy"), np.load(tmp_path / "seen1.npy")
    n_train = len(synthetic_bundle(num_classes=6, max_per_class=100, imbalance=10, size=16).train)
    assert not set(a.tolist()) & set(b.tolist())  # one instance-sampled epoch: disjoint
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(n_train))  # and together the whole epoch
    assert abs(len(a) - len(b)) <= len(a) // 10
    assert (tmp_path / "run" / "results.json").exists()
    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt", weights_only=True) for r in (0, 1))
    params = [k for k in w0 if "running" not in k and "num_batches" not in k]
    assert all(torch.allclose(w0[k], w1[k]) for k in params)  # gradients were averaged across ranks
    assert all(torch.equal(w0[k], w1[k]) for k in w0 if "running" in k)  # rank 0's statistics, synced once at the end
    assert [(tmp_path / f"broadcast{r}").read_text() for r in (0, 1)] == ["False"] * 2  # not on every forward


def test_an_awkward_batch_gives_every_rank_an_equal_nonempty_share(tmp_path):
    n_train = len(synthetic_bundle(num_classes=6, max_per_class=100, imbalance=10, size=16).train)
    # batch N - 1: the epoch's second batch holds one image, which would leave rank 1 with none (a NaN loss, then a hang)
    mp.spawn(_worker, args=(2, _free_port(), tmp_path, n_train - 1), nprocs=2, join=True)
    steps = [np.load(tmp_path / f"steps{r}.npy").tolist() for r in (0, 1)]
    assert steps[0] == steps[1] == [n_train // 2, 1]  # 251 padded to 252, then 1 padded to 2
    a, b = np.load(tmp_path / "seen0.npy"), np.load(tmp_path / "seen1.npy")
    assert sorted(set(a.tolist()) | set(b.tolist())) == list(range(n_train))
    assert len(set(a.tolist()) & set(b.tolist())) == 2  # only the padded repeats are shared
    assert (tmp_path / "run" / "results.json").is_file()


def test_padding_of_a_batch_that_the_world_does_not_divide():
    from longtail.data.samplers import InstanceSampler

    s = InstanceSampler(np.zeros(7, np.int64), batch_size=5)
    plan = s.plan(0)  # batches of 5 and 2
    shares = [[s.batch(0, k, r, 3, plan).tolist() for r in range(3)] for k in range(2)]
    assert [len(x) for x in shares[0]] == [2, 2, 2] and [len(x) for x in shares[1]] == [1, 1, 1]
    assert sorted(sum(shares[0], [])) == sorted(plan[0].tolist() + plan[0][:1].tolist())
    assert s.batch(0, 0, 0, 1, plan).tolist() == plan[0].tolist()  # one process: untouched


def test_torchrun_two_ranks_train_a_recipe_from_the_cli(tmp_path):
    """The README's command: ``torchrun --nproc_per_node 2 -m longtail train`` with gloo on CPU."""
    import json
    import subprocess
    import sys

    import yaml

    from test_engine import beats_constant_guess, tiny_recipe

    recipe = tiny_recipe(epochs=2).to_dict()
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "longtail", "train", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["provenance"]["world_size"] == 2
    assert "world 2" in results["provenance"]["device"]
    final = results["final"]  # scored once, on the whole balanced test set (10 classes x 20)
    assert final["num_images"] == 200
    beats_constant_guess(final["top1"], np.repeat(np.arange(10), 20))  # the two ranks' training learned
    assert done.stdout.count("results:") == 1  # rank 0 alone prints


def _leave_group_worker(rank, world, port, out):
    """One rank: a CLI command that joins a gloo group (as ``setup_runtime`` does), then whether it is gone."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    import longtail.cli as cli

    def joins(args):
        torch.distributed.init_process_group("gloo")
        return 0

    cli.cmd_recipes = joins
    code = cli.main(["recipes"])
    (out / f"rank{rank}").write_text(f"{code} {torch.distributed.is_initialized()}")


def test_the_cli_leaves_the_process_group_it_ran_in(tmp_path):
    """A rank that exits still in its gloo group can abort at teardown (SIGABRT: 2 of 4 torchrun runs of
    ``longtail train`` failed so before this), so ``main`` leaves the group on the way out."""
    mp.spawn(_leave_group_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["0 False", "0 False"]


def _two_head_worker(rank, world, port, out):
    """One rank: a two-head stage, then cRT and LWS on its hard head, as SSD's stages III and IV."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    from test_rebalance import TwoHeadCE, recipe  # noqa: E402  (registers the two-head method in this process)
    from longtail.engine.pipeline import run_recipe

    METHODS["two_head"] = TwoHeadCE
    res = run_recipe(recipe("stage3", "crt_hard", "lws_hard"), out / "run",
                     data=synthetic_bundle(num_classes=6, max_per_class=100, imbalance=10, size=16))
    (out / f"done{rank}").write_text(" ".join(res["stages"]))
    shutdown_runtime()


def test_ddp_trains_crt_and_lws_on_one_head_of_a_two_head_model(tmp_path):
    """cRT on the hard head used to leave the soft head trainable without a gradient, and DDP
    (find_unused_parameters off) stopped at the second step waiting for it."""
    from longtail.engine.checkpoint import load_checkpoint

    mp.spawn(_two_head_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    assert [(tmp_path / f"done{r}").read_text() for r in (0, 1)] == ["stage3 crt_hard lws_hard"] * 2
    s3, crt, lws = (load_checkpoint(tmp_path / "run" / s / "final.pt")["model"] for s in ("stage3", "crt_hard", "lws_hard"))
    steps = load_checkpoint(tmp_path / "run" / "crt_hard" / "checkpoint.pt")["scheduler"]["global_step"]
    assert steps >= 2  # past the step where it used to fail
    soft = [k for k in s3 if k.startswith("heads.soft.")]
    assert soft and all(torch.equal(s3[k], crt[k]) and torch.equal(s3[k], lws[k]) for k in soft)
    assert not torch.allclose(s3["heads.hard.fc.weight"], crt["heads.hard.fc.weight"])  # re-initialised, re-trained
    assert all(torch.equal(crt[k], lws[k]) for k in crt)  # LWS moved only its scales
    assert not torch.allclose(lws["adjust.hard.scale"], torch.ones(6))


def _ssd_then_crt_worker(rank, world, port, out):
    """One rank: SSD's own recipe (shrunk: ResNet-20, one epoch a stage), then cRT on stage III's hard head."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    from longtail.config import load_recipe, recipe_from_dict
    from longtail.engine.pipeline import run_recipe

    tiny = ["model.backbone=resnet20", "runtime.device=cpu", "runtime.amp=off", "runtime.progress=false",
            "runtime.tensorboard=false", "runtime.report_features=0"]
    r = load_recipe("cifar100-lt/ssd", tiny, epochs_scale=0.005).to_dict()
    for s in r["stages"]:
        s["batch_size"], s["augment"] = 16, [{"op": "random_crop", "size": 16, "padding": 2}, {"op": "normalize"}]
    r["stages"].append({**r["stages"][1], "name": "crt_hard", "method": "crt", "init": "stage3", "params": {"head": "hard"},
                        "sampler": "class_balanced", "epochs": 1})
    res = run_recipe(recipe_from_dict(r), out / "run", data=synthetic_bundle(num_classes=6, max_per_class=100, imbalance=10, size=16))
    (out / f"done{rank}").write_text(" ".join(res["stages"]))
    shutdown_runtime()


def test_ddp_trains_crt_on_ssd_stage_three_hard_head(tmp_path):
    """The issue's own reproduction: SSD's stages on 2 gloo ranks, then {crt, init: stage3, head: hard}; the
    soft head it does not train stays frozen (it used to stop DDP at the second step)."""
    from longtail.engine.checkpoint import load_checkpoint

    mp.spawn(_ssd_then_crt_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    stages = "stage1 stage2 stage3 stage3_soft stage4 crt_hard"
    assert [(tmp_path / f"done{r}").read_text() for r in (0, 1)] == [stages] * 2
    s3, crt = (load_checkpoint(tmp_path / "run" / s / "final.pt")["model"] for s in ("stage3", "crt_hard"))
    assert load_checkpoint(tmp_path / "run" / "crt_hard" / "checkpoint.pt")["scheduler"]["global_step"] >= 2
    soft = [k for k in s3 if k.startswith("heads.soft.")]
    assert soft and all(torch.equal(s3[k], crt[k]) for k in soft)
    assert not torch.allclose(s3["heads.hard.fc.weight"], crt["heads.hard.fc.weight"])
