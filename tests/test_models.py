import pytest
import torch
from torch import nn

from longtail.errors import CheckpointError, ConfigError
from longtail.models import (
    BACKBONES,
    CosineHead,
    LinearHead,
    LinearNeck,
    build_backbone,
    build_head,
    cifar_resnet,
    load_torchvision_state_dict,
)
from longtail.models.resnet_cifar import PadShortcut, resnet32

IMAGENET = ["resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
            "resnext50_32x4d"]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def conv_bn(cin, cout, k):
    return cin * cout * k * k + 2 * cout


# --- CIFAR ResNet -----------------------------------------------------------

def test_resnet32_output_shape():
    m = resnet32().eval()
    assert m.feature_dim == 64
    out = m(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 64)
    assert torch.isfinite(out).all()


def test_resnet32_param_count():
    # Derived layer by layer: stem, then 5 blocks per stage, option-A shortcuts
    # have no parameters.
    stem = conv_bn(3, 16, 3)
    stage1 = 5 * 2 * conv_bn(16, 16, 3)
    stage2 = conv_bn(16, 32, 3) + conv_bn(32, 32, 3) + 4 * 2 * conv_bn(32, 32, 3)
    stage3 = conv_bn(32, 64, 3) + conv_bn(64, 64, 3) + 4 * 2 * conv_bn(64, 64, 3)
    expected = stem + stage1 + stage2 + stage3
    assert expected == 463_504
    m = resnet32()
    assert n_params(m) == expected
    # The commonly quoted 464,154 is the CIFAR-10 model including its fc,
    # ~0.47M the CIFAR-100 one.
    assert n_params(m) + n_params(LinearHead(64, 10)) == 464_154
    assert n_params(m) + n_params(LinearHead(64, 100)) == 470_004


@pytest.mark.parametrize("depth,params", [(20, 269_072), (56, 852_368), (110, 1_727_312)])
def test_cifar_resnet_depths(depth, params):
    m = cifar_resnet(depth)
    assert n_params(m) == params
    assert len(m.layer1) == (depth - 2) // 6


@pytest.mark.parametrize("depth", [31, 4, "32"])
def test_cifar_resnet_bad_depth(depth):
    with pytest.raises(ConfigError, match="6n\\+2"):
        cifar_resnet(depth)


def test_option_a_shortcut_zero_pads_channels():
    m = resnet32()
    block = m.layer2[0]
    assert isinstance(block.shortcut, PadShortcut)
    assert isinstance(m.layer2[1].shortcut, nn.Identity)
    x = torch.randn(2, 16, 32, 32)
    y = block.shortcut(x)
    assert y.shape == (2, 32, 16, 16)
    sub = x[:, :, ::2, ::2]
    # LDAM pads planes//4 zero channels on each side of the input channels.
    assert torch.equal(y[:, 8:24], sub)
    assert torch.count_nonzero(y[:, :8]) == 0
    assert torch.count_nonzero(y[:, 24:]) == 0


def test_cifar_conv_init_is_kaiming_normal_fan_in():
    torch.manual_seed(0)
    w = resnet32().layer3[1].conv1.weight  # 64*64*9 weights, fan_in 576
    assert w.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)


# --- ImageNet ResNets -------------------------------------------------------

@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_backbone_shapes(name):
    m = build_backbone(name).eval()
    expected_dim = 512 if name in ("resnet10", "resnet18", "resnet34") else 2048
    assert m.feature_dim == expected_dim
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, expected_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,total_with_fc", [
    # torchvision totals, which include a 1000-way fc of 2048*1000 + 1000
    ("resnet50", 25_557_032),
    ("resnext50_32x4d", 25_028_904),
    ("resnet18", 11_689_512),  # fc 512*1000 + 1000
])
def test_imagenet_param_counts_match_torchvision(name, total_with_fc):
    m = build_backbone(name)
    fc = m.feature_dim * 1000 + 1000
    assert n_params(m) == total_with_fc - fc
    if name == "resnet50":
        assert n_params(m) == 23_508_032
    if name == "resnext50_32x4d":
        assert n_params(m) == 22_979_904


def test_torchvision_parameter_names():
    keys = set(build_backbone("resnet50").state_dict())
    for k in ["conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight",
              "layer1.0.downsample.1.weight", "layer4.2.conv3.weight", "layer4.2.bn3.bias",
              "layer3.5.bn2.num_batches_tracked"]:
        assert k in keys
    assert not any(k.startswith("fc.") for k in keys)
    keys18 = set(build_backbone("resnet18").state_dict())
    assert "layer2.0.downsample.0.weight" in keys18
    assert "layer1.0.downsample.0.weight" not in keys18


def test_zero_init_residual():
    m = build_backbone("resnet18", zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for layer in
               (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer)
    m = build_backbone("resnet18")
    assert torch.all(m.layer1[0].bn2.weight == 1)


# --- registry ---------------------------------------------------------------

def test_registry_contents_and_errors():
    for name in ["resnet32", "resnet20"] + IMAGENET:
        assert name in BACKBONES
    with pytest.raises(ConfigError, match="unknown backbone 'resnet99'.*resnet32"):
        build_backbone("resnet99")
    with pytest.raises(ConfigError, match="resnet18.*widht"):
        build_backbone("resnet18", widht=2)
    with pytest.raises(ConfigError, match="unknown head 'arc'.*linear.*cosine"):
        build_head("arc", 64, 10)
    with pytest.raises(ConfigError, match="cosine"):
        build_head("cosine", 64, 10, bias=False)
    assert isinstance(build_head("linear", 64, 10, bias=False), LinearHead)
    assert build_head("cosine", 64, 10, scale=16).scale == 16.0


# --- heads ------------------------------------------------------------------

def test_linear_head():
    h = LinearHead(8, 5)
    assert (h.in_dim, h.num_classes) == (8, 5)
    x = torch.randn(3, 8)
    assert torch.allclose(h(x), x @ h.fc.weight.T + h.fc.bias)
    assert LinearHead(8, 5, bias=False).fc.bias is None
    before = h.fc.weight.clone()
    h.reset_parameters()
    assert not torch.equal(before, h.fc.weight)


def test_cosine_head_matches_hand_computation():
    h = CosineHead(4, 3, scale=10.0)
    assert h.weight.shape == (3, 4)
    assert [n for n, _ in h.named_parameters()] == ["weight"]
    with torch.no_grad():
        h.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [1.0, 1.0, 0, 0]]))
    x = torch.tensor([[3.0, 4.0, 0, 0]])
    # cosines: 3/5, 4/5, 7/(5*sqrt 2)
    expected = 10.0 * torch.tensor([[0.6, 0.8, 7 / (5 * 2 ** 0.5)]])
    assert torch.allclose(h(x), expected, atol=1e-6)
    # invariant to the scale of the input
    assert torch.allclose(h(100 * x), expected, atol=1e-5)
    h.reset_parameters()
    assert not torch.equal(h.weight[0], torch.tensor([1.0, 0, 0, 0]))


def test_linear_neck():
    neck = LinearNeck(2048, 512, relu=True)
    assert neck.feature_dim == 512
    x = torch.randn(3, 2048)
    out = neck(x)
    by_hand = torch.clamp(x @ neck[0].weight.t() + neck[0].bias, min=0)  # relu(W x + b)
    assert out.shape == (3, 512) and torch.allclose(out, by_hand, atol=1e-5)
    assert (out == 0).any() and (out > 0).any()  # the ReLU clipped some units and passed others
    assert len(LinearNeck(8, 4)) == 1


# --- torchvision checkpoint loading -----------------------------------------

def _fake_torchvision_sd(model):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["fc.weight"] = torch.randn(1000, model.feature_dim)
    sd["fc.bias"] = torch.randn(1000)
    return sd


def test_load_torchvision_state_dict_roundtrip(tmp_path):
    src = build_backbone("resnet50")
    with torch.no_grad():  # make BN buffers non-default so they are checked too
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
    path = tmp_path / "resnet50.pth"
    torch.save(_fake_torchvision_sd(src), path)

    dst = build_backbone("resnet50")
    dropped = load_torchvision_state_dict(dst, path)
    assert sorted(dropped) == ["fc.bias", "fc.weight"]
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    assert src_sd.keys() == dst_sd.keys()
    assert all(torch.equal(src_sd[k], dst_sd[k]) for k in src_sd)


def test_load_wrapped_prefixed_and_legacy_state_dict(tmp_path):
    src = build_backbone("resnet10")
    sd = {f"module.{k}": v for k, v in _fake_torchvision_sd(src).items()
          if not k.endswith("num_batches_tracked")}  # as in pre-0.4.1 checkpoints
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    dst = build_backbone("resnet10")
    assert sorted(load_torchvision_state_dict(dst, str(path))) == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.conv1.weight, src.conv1.weight)


def test_load_truncated_file_raises(tmp_path):
    path = tmp_path / "trunc.pth"
    torch.save(_fake_torchvision_sd(build_backbone("resnet10")), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        load_torchvision_state_dict(build_backbone("resnet10"), path)


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth.*not found"):
        load_torchvision_state_dict(build_backbone("resnet10"), tmp_path / "nope.pth")


def test_load_wrong_key_raises(tmp_path):
    model = build_backbone("resnet10")
    sd = _fake_torchvision_sd(model)
    sd["layer1.0.conv9.weight"] = sd.pop("layer1.0.conv2.weight")
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_torchvision_state_dict(model, path)
    msg = str(info.value)
    assert "bad.pth" in msg and "layer1.0.conv9.weight" in msg and "layer1.0.conv2.weight" in msg


def test_load_wrong_shape_and_arch_raises(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(_fake_torchvision_sd(build_backbone("resnet18")), path)
    with pytest.raises(CheckpointError, match=r"r18.pth.*unexpected keys: .*\(\+\d+ more\)"):
        load_torchvision_state_dict(build_backbone("resnet10"), path)
    model = build_backbone("resnet18")
    sd = _fake_torchvision_sd(model)
    sd["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="shape mismatch: conv1.weight"):
        load_torchvision_state_dict(model, path)


def test_load_safetensors_without_package_is_clear(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\0" * 16)
    try:
        import safetensors  # noqa: F401
        expected = "w.safetensors"
    except ImportError:
        expected = "safetensors' package"
    with pytest.raises(CheckpointError, match=expected):
        load_torchvision_state_dict(build_backbone("resnet10"), path)


# --- mixed precision / memory format ----------------------------------------

@pytest.mark.parametrize("name,size", [("resnet32", 32), ("resnet18", 64), ("resnet50", 64)])
def test_autocast_bf16_and_channels_last(name, size):
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    head = LinearHead(model.feature_dim, 10)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref_feats = model(x)  # the reference: fp32, contiguous
        ref = head(ref_feats)
        model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        cl = head(model(x_cl))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = model(x_cl)
            out = head(feats)
    assert ref_feats.shape == (2, model.feature_dim) and out.shape == (2, 10) and out.dtype == torch.bfloat16

    def rel(a, b):
        return ((a.float() - b).norm() / b.norm()).item()

    # channels_last only reorders memory: the same sums in another order, fp32 rounding apart (measured <= 1.2e-6).
    assert rel(cl, ref) < 1e-5
    # bf16 keeps an 8-bit significand (rounding 2^-9 = 0.2% per op); through 18-50 layers the measured error of
    # features and logits is 0.2-0.9% (seeds 0-2). 3% leaves 3x headroom; a wrong cast, an overflow or a layout
    # bug is an O(1) error.
    assert rel(feats, ref_feats) < 0.03 and rel(out, ref) < 0.03


def test_training_step_backward():
    torch.manual_seed(0)
    model, head = resnet32().double(), CosineHead(64, 10).double()  # float64: finite differences are exact enough
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 3])

    def loss_fn():
        return nn.functional.cross_entropy(head(model(x)), y)

    loss_fn().backward()
    # Each gradient is the loss's slope: a central difference along a random direction gives <grad, d>. The step
    # is tiny because a larger one moves some of the 65k post-conv1 units across their ReLU kink (at 1e-6: 0.2% off).
    with torch.no_grad():
        for p in (model.conv1.weight, model.layer3[-1].conv2.weight, head.weight):
            d, eps = torch.randn_like(p), 1e-8
            p += eps * d
            up = loss_fn()
            p -= 2 * eps * d
            down = loss_fn()
            p += eps * d
            assert ((up - down) / (2 * eps)).item() == pytest.approx((p.grad * d).sum().item(), rel=1e-5)
