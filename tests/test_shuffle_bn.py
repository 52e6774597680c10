"""MoCo's key encoder without BN leakage: split (ghost) BN on one device, shuffle BN across DDP ranks.

Every check compares against BatchNorm computed by hand, or by a plain BN copy on the hand-picked
images. The DDP test runs this file under ``torchrun --nproc_per_node 2`` (gloo on CPU) as its worker.
"""
import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from longtail.engine.runtime import shutdown_runtime
from longtail.models.moco import MoCo
from longtail.models.shuffle_bn import GhostBatchNorm, set_bn_groups, split_batchnorm

ROOT = Path(__file__).resolve().parents[1]


def tiny_encoder() -> nn.Sequential:
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():  # BN's affine part away from 1 / 0, so a wrong weight or bias would show
        enc[1].weight.uniform_(0.5, 2.0)
        enc[1].bias.uniform_(-1.0, 1.0)
    return enc


def tiny_moco(enc: nn.Module, bn_splits: int) -> MoCo:
    torch.manual_seed(1)
    return MoCo(enc, 4, dim=3, queue_size=8, mlp=False, bn_splits=bn_splits)


def plain_keys(moco: MoCo, plain_encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Keys of ``x`` with an ordinary train-mode BN over exactly ``x``."""
    return F.normalize(moco.k_proj(plain_encoder(x)), dim=1)


def test_ghost_bn_normalises_each_group_with_its_own_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.25)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0), bn.bias.uniform_(-1, 1), bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    r_mean, r_var = bn.running_mean.clone(), bn.running_var.clone()
    ghost = split_batchnorm(nn.Sequential(bn))[0]
    assert isinstance(ghost, GhostBatchNorm) and ghost is bn  # swapped in place: same tensors, same state_dict keys
    set_bn_groups(ghost, 3)
    x = torch.randn(7, 3, 4, 4) * 3 + 1  # 7 images in 3 groups: 3, 2, 2
    y = ghost(x)
    expected, means, vars_unbiased = [], [], []
    for a, b in [(0, 3), (3, 5), (5, 7)]:
        part = x[a:b]
        mu = part.mean(dim=(0, 2, 3))
        var = ((part - mu[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
        expected.append((part - mu[None, :, None, None]) / torch.sqrt(var + bn.eps)[None, :, None, None]
                        * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
        n = part.numel() // 3
        means.append(mu), vars_unbiased.append(var * n / (n - 1))
    assert torch.allclose(y, torch.cat(expected), atol=1e-5)
    assert not torch.allclose(y, F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps), atol=1e-3)
    # running estimates: one momentum step with the mean of the groups' statistics
    assert torch.allclose(ghost.running_mean, 0.75 * r_mean + 0.25 * torch.stack(means).mean(0), atol=1e-6)
    assert torch.allclose(ghost.running_var, 0.75 * r_var + 0.25 * torch.stack(vars_unbiased).mean(0), atol=1e-5)
    assert ghost.num_batches_tracked.item() == 1
    ghost.eval()  # evaluation: the running statistics, groups or not
    assert torch.allclose(ghost(x), F.batch_norm(x, ghost.running_mean, ghost.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))


def test_ghost_bn_keeps_two_images_per_group_and_validates_groups():
    bn = split_batchnorm(nn.Sequential(nn.BatchNorm1d(2)))[0]
    set_bn_groups(bn, 8)
    x = torch.randn(5, 2)  # 8 groups of 5 rows would leave single rows: 5 // 2 = 2 groups of 3 and 2
    parts = [F.batch_norm(p, None, None, bn.weight, bn.bias, True, 0.0, bn.eps) for p in (x[:3], x[3:])]
    assert torch.allclose(bn(x), torch.cat(parts), atol=1e-6)
    assert torch.allclose(bn(x[:3]), F.batch_norm(x[:3], None, None, bn.weight, bn.bias, True, 0.0, bn.eps), atol=1e-6)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            set_bn_groups(bn, bad)
        with pytest.raises(ValueError, match="bn_splits"):
            MoCo(nn.Flatten(), 4, dim=2, queue_size=4, bn_splits=bad)


def test_key_encoder_keeps_the_query_encoders_names_and_parameter_order():
    enc = tiny_encoder()
    moco = tiny_moco(enc, 8)
    assert list(moco.k_encoder.state_dict()) == list(enc.state_dict())  # old checkpoints still load
    assert [n for n, _ in moco.k_encoder.named_parameters()] == [n for n, _ in enc.named_parameters()]
    assert type(enc[1]) is nn.BatchNorm2d  # the query encoder keeps plain BN


def test_single_device_keys_come_from_a_shuffled_batch_in_groups_and_return_in_order():
    enc, x = tiny_encoder(), torch.randn(8, 3, 6, 6)
    moco = tiny_moco(enc, 2)
    plain = copy.deepcopy(enc).train()
    seen = []
    moco.k_encoder[1].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].clone()))
    k = moco.keys(enc, x, torch.Generator().manual_seed(5))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(perm, torch.arange(8))
    with torch.no_grad():
        assert torch.allclose(seen[0], plain[0](x[perm]), atol=1e-6)  # BN saw the permuted batch
        ref = torch.empty_like(k)
        for group in perm.tensor_split(2):  # each group of the permuted batch is one BN batch
            ref[group] = plain_keys(moco, plain, x[group])
        assert torch.allclose(k, ref, atol=1e-5)  # and key i is the key of image i
        assert not torch.allclose(k, plain_keys(moco, plain, x), atol=1e-3)  # the groups mattered


def test_unshuffle_aligns_key_i_with_query_i():
    x = torch.randn(6, 4)
    moco = MoCo(nn.Identity(), 4, dim=3, queue_size=8, mlp=False, bn_splits=3)  # no BN: a key depends on its image only
    k = moco.keys(nn.Identity(), x, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(k, F.normalize(moco.k_proj(x), dim=1), atol=1e-6)
    enc, x = tiny_encoder(), torch.randn(8, 3, 6, 6)  # one BN group: shuffling cannot change anything
    moco = tiny_moco(enc, 1)
    with torch.no_grad():
        assert torch.allclose(moco.keys(enc, x, torch.Generator().manual_seed(3)), plain_keys(moco, copy.deepcopy(enc), x), atol=1e-5)


def test_same_generator_same_keys_other_generator_other_groups():
    enc, x = tiny_encoder(), torch.randn(8, 3, 6, 6)
    a, b, c = (tiny_moco(enc, 2).keys(enc, x, torch.Generator().manual_seed(s)) for s in (7, 7, 8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def test_recipe_rejects_a_bad_split_count():
    from longtail.config import recipe_from_dict
    from longtail.engine.context import StageContext
    from longtail.engine.runtime import setup_runtime
    from longtail.errors import ConfigError
    from longtail.methods import get_method
    from longtail.data.synthetic import synthetic_bundle

    data = synthetic_bundle(num_classes=4, max_per_class=8, imbalance=2, size=8)
    for bad, msg in ((0, "moco_bn_splits: must be a positive integer"), (2.5, "moco_bn_splits: expected an integer")):
        r = recipe_from_dict({"name": "t", "data": {"dataset": "synthetic"}, "model": {"backbone": "resnet20"},
                              "runtime": {"device": "cpu", "amp": "off"},
                              "stages": [{"name": "s1", "method": "ssd_ssl", "params": {"self_sup": "moco", "moco_bn_splits": bad}}]})
        with pytest.raises(ConfigError, match=msg):
            get_method("ssd_ssl")(StageContext(r, r.stage("s1"), data, setup_runtime(r.runtime)))


# --------------------------------------------------------------------------- two ranks


def _rank_main(out: Path) -> None:
    """torchrun worker: 8 images, 4 per rank; keys from the shuffled global batch, saved per rank."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    enc = tiny_encoder()
    moco = tiny_moco(enc, 2)  # bn_splits must be ignored under DDP: a rank's slice is one BN batch
    x_all = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(11))
    seen = []
    moco.k_encoder[1].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].clone()))
    g = torch.Generator().manual_seed(100 + rank)  # per rank, like the engine's step generators: rank 0's decides
    k = moco.keys(enc, x_all[4 * rank:4 * rank + 4], g)
    torch.save({"keys": k, "bn_input": seen[0]}, out / f"rank{rank}.pt")
    shutdown_runtime()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_shuffle_the_global_batch_and_unshuffle_the_keys(tmp_path):
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    enc = tiny_encoder()
    moco, plain = tiny_moco(enc, 2), copy.deepcopy(enc).train()
    x_all = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(11))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(100))  # rank 0's draw, broadcast
    ref = torch.empty(8, 3)
    with torch.no_grad():
        for r, idx in enumerate(perm.view(2, 4)):
            assert torch.allclose(got[r]["bn_input"], plain[0](x_all[idx]), atol=1e-6)  # rank r's BN batch: its shuffled slice
            ref[idx] = plain_keys(moco, plain, x_all[idx])
        keys = torch.cat([got[0]["keys"], got[1]["keys"]])
        assert torch.allclose(keys, ref, atol=1e-5)  # each rank gets back the keys of its own images, in order
        unshuffled = torch.cat([plain_keys(moco, plain, x_all[:4]), plain_keys(moco, plain, x_all[4:])])
        assert not torch.allclose(keys, unshuffled, atol=1e-3)  # and they differ from BN over the rank's own images


def test_torchrun_two_ranks_train_the_moco_stage(tmp_path):
    """The engine's path: SSD stage I with MoCo under ``torchrun`` (keys shuffled across ranks inside the step)."""
    import json

    import yaml

    from test_ssd import ssd_recipe

    r = ssd_recipe(self_sup="moco", epochs=1, moco_queue=64, moco_dim=16, key_augment="cifar_strong")
    r.stages = r.stages[:1]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r.to_dict()))
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "longtail", "train", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["provenance"]["world_size"] == 2
    logged = [json.loads(line) for line in (tmp_path / "run" / "stage1" / "metrics.jsonl").read_text().splitlines()]
    ssl = [row["ssl"] for row in logged if "ssl" in row]
    assert ssl and all(0 < v < 20 for v in ssl)  # InfoNCE over 1 + 64 logits starts near log(65) = 4.2


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
