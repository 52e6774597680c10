"""Batched augmentation ops checked against per-image reference loops.

Each random op exposes its parameter sampler, so a test seeds a generator,
draws the parameters, and compares the batched op with a plain Python loop
over images that uses the very same parameters.
"""

import colorsys
import math

import pytest
import torch
import torch.nn.functional as F

from longtail.data import augment as A
from longtail.errors import ConfigError

MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n=8, c=3, h=12, w=12, seed=1) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=gen(seed))


# --------------------------------------------------------------------------
# random_crop
# --------------------------------------------------------------------------


@pytest.mark.parametrize("size,padding,fill", [(32, 4, 0.0), (8, 0, 0.0), (10, 3, 0.7)])
def test_random_crop_matches_loop(size, padding, fill):
    h = w = 32 if size == 32 else 12
    x = batch(16, 3, h, w)
    top, left = A.crop_offsets(16, h, w, size, padding, gen(5))
    out = A.crop_with_offsets(x, top, left, size, padding, fill)
    for i in range(16):
        padded = F.pad(x[i], (padding,) * 4, value=fill)
        t, l = int(top[i]), int(left[i])
        torch.testing.assert_close(out[i], padded[:, t : t + size, l : l + size], rtol=0, atol=0)
    # The public op is exactly sampler + apply on the same generator stream.
    torch.testing.assert_close(A.random_crop(x, gen(5), size, padding, fill), out, rtol=0, atol=0)


def test_crop_offsets_cover_range_and_are_independent():
    top, left = A.crop_offsets(256, 32, 32, 32, 4, gen(0))
    assert top.dtype == torch.int64
    assert int(top.min()) == 0 and int(top.max()) == 8
    assert int(left.min()) == 0 and int(left.max()) == 8
    assert len(set(zip(top.tolist(), left.tolist()))) > 40
    assert not torch.equal(top, left)


def test_random_crop_too_large():
    with pytest.raises(ConfigError, match="random_crop.*exceeds"):
        A.random_crop(batch(2, 3, 8, 8), gen(), size=20, padding=2)


# --------------------------------------------------------------------------
# random_hflip
# --------------------------------------------------------------------------


def test_random_hflip_matches_loop():
    x = batch(32)
    mask = A.flip_mask(32, 0.5, gen(3))
    out = A.random_hflip(x, gen(3), p=0.5)
    for i in range(32):
        ref = torch.flip(x[i], dims=(-1,)) if mask[i] else x[i]
        assert torch.equal(out[i], ref)


def test_flip_fraction_near_p():
    for p in (0.0, 0.3, 0.5, 1.0):
        frac = A.flip_mask(4096, p, gen(7)).float().mean().item()
        assert abs(frac - p) < 0.03
    mask = A.flip_mask(256, 0.5, gen(7))
    assert 0 < int(mask.sum()) < 256


# --------------------------------------------------------------------------
# random_resized_crop
# --------------------------------------------------------------------------


def _reference_boxes(u, height, width, scale, ratio):
    """torchvision's sequential attempt loop, replayed on the batched draws."""
    boxes = []
    for draws in u.tolist():
        for a_area, a_ratio, a_top, a_left in draws:
            target = height * width * (scale[0] + (scale[1] - scale[0]) * a_area)
            lo, hi = math.log(ratio[0]), math.log(ratio[1])
            aspect = math.exp(lo + (hi - lo) * a_ratio)
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = min(math.floor(a_top * (height - h + 1)), height - h)
                left = min(math.floor(a_left * (width - w + 1)), width - w)
                boxes.append([top, left, h, w])
                break
        else:
            if width / height < ratio[0]:
                w, h = width, int(round(width / ratio[0]))
            elif width / height > ratio[1]:
                w, h = int(round(height * ratio[1])), height
            else:
                w, h = width, height
            boxes.append([(height - h) // 2, (width - w) // 2, h, w])
    return torch.tensor(boxes)


@pytest.mark.parametrize(
    "height,width,scale,ratio",
    [
        (24, 24, (0.08, 1.0), (3 / 4, 4 / 3)),
        (20, 40, (0.5, 1.0), (3 / 4, 4 / 3)),
        (16, 16, (1.0, 1.0), (3.0, 4.0)),
    ],
)
def test_resized_crop_boxes_follow_torchvision_rule(height, width, scale, ratio):
    n = 200
    boxes = A.resized_crop_boxes(n, height, width, scale, ratio, gen(11))
    u = torch.rand(n, 10, 4, generator=gen(11), dtype=torch.float64)
    assert torch.equal(boxes, _reference_boxes(u, height, width, scale, ratio))
    top, left, h, w = boxes.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (h > 0) & (w > 0)).all())
    assert bool(((top + h <= height) & (left + w <= width)).all())


def test_resized_crop_boxes_fallback_is_central():
    # No (area, ratio) draw can fit: every image takes the central fallback.
    boxes = A.resized_crop_boxes(5, 16, 16, (1.0, 1.0), (3.0, 4.0), gen())
    assert boxes.tolist() == [[5, 0, 5, 16]] * 5


def test_resized_crop_matches_interpolate_on_crop():
    x = batch(24, 3, 20, 28)
    boxes = A.resized_crop_boxes(20, 20, 28, (0.08, 1.0), (3 / 4, 4 / 3), gen(2))
    # Add hand-made boxes: a single pixel, the full image, thin strips.
    extra = torch.tensor([[3, 4, 1, 1], [0, 0, 20, 28], [0, 5, 20, 2], [7, 0, 3, 28]])
    boxes = torch.cat([boxes, extra])
    for size in (9, 16, 40):
        out = A.resized_crop_with_boxes(x, boxes, size)
        assert out.shape == (24, 3, size, size)
        for i in range(24):
            t, l, h, w = boxes[i].tolist()
            ref = F.interpolate(
                x[i : i + 1, :, t : t + h, l : l + w], size=(size, size), mode="bilinear", align_corners=False
            )[0]
            torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        A.random_resized_crop(x[:20], gen(2), 16), A.resized_crop_with_boxes(x[:20], boxes[:20], 16)
    )


# --------------------------------------------------------------------------
# Deterministic resize / center crop
# --------------------------------------------------------------------------


def test_center_crop_resize():
    x = batch(3, 3, 40, 40)
    out = A.center_crop_resize(x, 28)  # resize to 32, crop 28
    ref = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    ref = ref[:, :, 2:30, 2:30]
    torch.testing.assert_close(out, ref)
    wide = A.resize(batch(2, 3, 20, 50), 10)
    assert wide.shape == (2, 3, 10, 25)
    assert A.center_crop(batch(2, 3, 9, 12), 5).shape == (2, 3, 5, 5)
    # An input already at the target size passes through unchanged.
    same = batch(2, 3, 32, 32)
    torch.testing.assert_close(A.center_crop_resize(same, 28, crop_fraction=0.875), same[:, :, 2:30, 2:30])


# --------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------


def _pixels(img):
    return img.permute(1, 2, 0).reshape(-1, 3).tolist()


def test_rgb_hsv_match_colorsys():
    x = batch(2, 3, 6, 7)
    # Greys, primaries and ties between channels exercise every branch.
    x[0, :, 0, :4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.3, 0.3, 0.3], [0.5, 0.5, 0.2]]).T
    x[0, :, 1, :4] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.6, 0.6]]).T
    hsv = A.rgb_to_hsv(x)
    for i in range(2):
        ref = [colorsys.rgb_to_hsv(*p) for p in _pixels(x[i])]
        torch.testing.assert_close(torch.tensor(_pixels(hsv[i])), torch.tensor(ref), rtol=0, atol=1e-5)
        back = [colorsys.hsv_to_rgb(*p) for p in _pixels(hsv[i])]
        rgb = torch.tensor(_pixels(A.hsv_to_rgb(hsv)[i]))
        torch.testing.assert_close(rgb, torch.tensor(back), rtol=0, atol=1e-5)
    torch.testing.assert_close(A.hsv_to_rgb(hsv), x, rtol=0, atol=1e-5)


def _jitter_reference(img, b, c, s, h):
    """One image, plain Python per pixel for hue, torchvision's blend formulas."""
    lum = torch.tensor(A.LUMA_WEIGHTS).view(3, 1, 1)
    img = (img * b).clamp(0, 1)
    mean = (img * lum).sum(0).mean()
    img = (c * img + (1 - c) * mean).clamp(0, 1)
    gray = (img * lum).sum(0, keepdim=True)
    img = (s * img + (1 - s) * gray).clamp(0, 1)
    out = []
    for r, g_, bl in _pixels(img):
        hh, ss, vv = colorsys.rgb_to_hsv(r, g_, bl)
        out.append(colorsys.hsv_to_rgb((hh + h) % 1.0, ss, vv))
    return torch.tensor(out).view(img.shape[1], img.shape[2], 3).permute(2, 0, 1).clamp(0, 1)


def test_color_jitter_matches_loop():
    x = batch(12, 3, 5, 6)
    params = A.jitter_params(12, 0.8, 0.8, 0.8, 0.2, 0.6, gen(4))
    assert 0 < int(params.apply.sum()) < 12
    for name, (lo, hi) in [("brightness", (0.2, 1.8)), ("contrast", (0.2, 1.8)), ("hue", (-0.2, 0.2))]:
        f = getattr(params, name)
        assert bool(((f >= lo) & (f <= hi)).all())
    out = A.color_jitter_with(x, params)
    for i in range(12):
        if params.apply[i]:
            ref = _jitter_reference(
                x[i], *(float(getattr(params, k)[i]) for k in ("brightness", "contrast", "saturation", "hue"))
            )
            torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-5)
        else:
            assert torch.equal(out[i], x[i])
    torch.testing.assert_close(A.color_jitter(x, gen(4), 0.8, 0.8, 0.8, 0.2, p=0.6), out, rtol=0, atol=0)


def test_color_jitter_disabled_stages_and_ranges():
    params = A.jitter_params(64, 0.0, (0.5, 0.9), 0.4, 0.0, 1.0, gen())
    u = torch.rand(64, 5, generator=gen())  # the same draws, by hand: one uniform per factor, low + width * u
    assert params.brightness is None and params.hue is None and bool(params.apply.all())
    torch.testing.assert_close(params.contrast, 0.5 + 0.4 * u[:, 1])  # given as a (min, max) range
    torch.testing.assert_close(params.saturation, 0.6 + 0.8 * u[:, 2])  # strength s: [1 - s, 1 + s]
    # Brightness strength above 1: the range's low end is clipped at 0 like torchvision, [max(0, 1 - 1.5), 2.5].
    big = A.jitter_params(256, 1.5, 0, 0, 0, 1.0, gen())
    torch.testing.assert_close(big.brightness, 2.5 * torch.rand(256, 5, generator=gen())[:, 0])
    out = A.color_jitter(batch(16), gen(), 2.0, 2.0, 2.0, 0.5, p=1.0)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_random_grayscale_matches_loop():
    x = batch(32)
    mask = A.grayscale_mask(32, 0.5, gen(9))
    out = A.random_grayscale(x, gen(9), p=0.5)
    w = A.LUMA_WEIGHTS
    for i in range(32):
        if mask[i]:
            gray = w[0] * x[i, 0] + w[1] * x[i, 1] + w[2] * x[i, 2]
            torch.testing.assert_close(out[i], gray.expand(3, -1, -1), rtol=0, atol=1e-6)
        else:
            assert torch.equal(out[i], x[i])


def test_rgb_ops_reject_other_channel_counts():
    with pytest.raises(ConfigError, match="color_jitter.*3-channel"):
        A.color_jitter(batch(2, 1), gen())
    with pytest.raises(ConfigError, match="random_grayscale.*3-channel"):
        A.random_grayscale(batch(2, 4), gen())


# --------------------------------------------------------------------------
# Noise, blur, rotation, normalisation
# --------------------------------------------------------------------------


def test_gaussian_noise():
    x = batch(4)
    out = A.gaussian_noise(x, gen(6), sigma=0.05)
    noise = torch.randn(x.shape, generator=gen(6))
    torch.testing.assert_close(out, x + 0.05 * noise)
    assert not torch.equal(out, A.gaussian_noise(x, gen(7), sigma=0.05))


def test_gaussian_blur_matches_loop():
    x = batch(10, 3, 14, 16)
    k = 7
    sigmas, apply = A.blur_params(10, (0.1, 2.0), 0.5, gen(8))
    assert 0 < int(apply.sum()) < 10
    out = A.gaussian_blur(x, gen(8), k, (0.1, 2.0), 0.5)
    for i in range(10):
        if not apply[i]:
            assert torch.equal(out[i], x[i])
            continue
        s = float(sigmas[i])
        taps = [math.exp(-0.5 * (t / s) ** 2) for t in range(-(k // 2), k // 2 + 1)]
        k1 = torch.tensor(taps) / sum(taps)
        k2 = torch.outer(k1, k1).expand(3, 1, k, k)
        padded = F.pad(x[i : i + 1], (k // 2,) * 4, mode="reflect")
        ref = F.conv2d(padded, k2, groups=3)[0]
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-5)


def test_rotate90_matches_rot90():
    x = batch(9, 3, 6, 6)
    k = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 1])
    out = A.rotate90(x, k)
    for i in range(9):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
    rot, kk = A.random_rotate90(x, gen(1))
    assert kk.dtype == torch.int64 and set(kk.tolist()) <= {0, 1, 2, 3}
    assert torch.equal(rot, A.rotate90(x, kk))
    _, many = A.random_rotate90(batch(256, 1, 2, 2), gen(1))
    assert set(many.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="square"):
        A.rotate90(batch(2, 3, 4, 5), k[:2])


def test_normalize():
    x = batch(4)
    out = A.normalize(x, MEAN, STD)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (x[:, c] - MEAN[c]) / STD[c])


# --------------------------------------------------------------------------
# Shapes, dtypes, ranges, memory formats
# --------------------------------------------------------------------------

RANDOM_OPS = [
    ("random_crop", dict(size=10, padding=2), 10),
    ("random_hflip", dict(), 12),
    ("random_resized_crop", dict(size=8), 8),
    ("color_jitter", dict(), 12),
    ("random_grayscale", dict(p=0.5), 12),
    ("gaussian_noise", dict(sigma=0.1), 12),
    ("gaussian_blur", dict(kernel_size=5), 12),
]


@pytest.mark.parametrize("name,params,size", RANDOM_OPS, ids=[r[0] for r in RANDOM_OPS])
def test_op_shape_dtype_range_and_channels_last(name, params, size):
    x = batch(16)
    out = A.OP_TABLE[name].fn(x, gen(3), **params)
    assert out.shape == (16, 3, size, size) and out.dtype == torch.float32
    assert out.data_ptr() != x.data_ptr()
    if name != "gaussian_noise":
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
    # Same generator seed, same output; another seed, another output.
    assert torch.equal(out, A.OP_TABLE[name].fn(x, gen(3), **params))
    assert not torch.equal(out, A.OP_TABLE[name].fn(x, gen(4), **params))
    cl = A.OP_TABLE[name].fn(x.contiguous(memory_format=torch.channels_last), gen(3), **params)
    torch.testing.assert_close(cl, out, rtol=0, atol=1e-6)
    # The input is never modified.
    assert torch.equal(x, batch(16))


# --------------------------------------------------------------------------
# Pipeline, presets, config errors
# --------------------------------------------------------------------------


def test_pipeline_uint8_input_and_determinism():
    raw = torch.randint(0, 256, (64, 3, 32, 32), generator=gen(), dtype=torch.uint8)
    identity = A.Augment([])
    torch.testing.assert_close(identity(raw, gen()), raw.float() / 255)
    aug = A.Augment.preset("cifar_strong", MEAN, STD)
    out = aug(raw, gen(10))
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, aug(raw, gen(10)))
    assert not torch.equal(out, aug(raw, gen(11)))
    torch.testing.assert_close(aug(raw.float() / 255, gen(10)), out)
    with pytest.raises(TypeError, match="uint8 or float"):
        aug(raw.long(), gen())


def test_cifar_preset_equals_composed_ops():
    raw = torch.randint(0, 256, (32, 3, 32, 32), generator=gen(), dtype=torch.uint8)
    out = A.Augment.preset("cifar", MEAN, STD)(raw, gen(12))
    g = gen(12)
    x = A.random_crop(raw.float() / 255, g, 32, 4)
    ref = A.normalize(A.random_hflip(x, g), MEAN, STD)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("name", sorted(A.PRESETS))
def test_presets_run(name):
    big = "imagenet" in name or name == "moco_v2"
    x = batch(4, 3, 40, 40) if big else batch(4, 3, 32, 32)
    aug = A.Augment.preset(name, MEAN, STD, size=24 if big else None)
    out = aug(x, gen())
    expected = 24 if big else 32
    assert out.shape == (4, 3, expected, expected)
    assert torch.isfinite(out).all()


def test_preset_contents():
    assert A.PRESETS["moco_v2"] == A.PRESETS["imagenet_strong"]
    names = [s["op"] for s in A.PRESETS["cifar_strong"]]
    assert names == [
        "random_crop", "random_hflip", "color_jitter", "random_grayscale", "normalize", "gaussian_noise"
    ]
    aug = A.Augment.preset("imagenet", MEAN, STD, size=96)
    assert aug.steps[0] == ("random_resized_crop", {"size": 96})
    assert "random_crop(size=32, padding=4)" in repr(A.Augment.preset("cifar", MEAN, STD))


@pytest.mark.parametrize(
    "spec,message",
    [
        ([{"op": "crop", "size": 32}], "unknown augment op 'crop'; choose from .*random_crop"),
        ([{"op": "random_crop", "size": 32, "pad": 4}], "augment op 'random_crop': unknown parameter 'pad'"),
        ([{"op": "random_crop"}], "augment op 'random_crop': missing parameter 'size'"),
        ([{"op": "random_crop", "size": 0}], "augment op 'random_crop': parameter 'size' must be a positive"),
        ([{"op": "random_hflip", "p": 1.5}], "'random_hflip': parameter 'p' must be a probability"),
        ([{"op": "gaussian_blur", "kernel_size": 4}], "parameter 'kernel_size' must be an odd"),
        ([{"op": "random_resized_crop", "size": 8, "scale": [0.9, 0.1]}], "parameter 'scale' must be a pair"),
        ([{"op": "color_jitter", "hue": 0.7}], "augment op 'color_jitter': parameter 'hue'"),
        ([{"op": "normalize"}], "augment op 'normalize': missing parameter 'mean'"),
        ([{"op": "normalize", "mean": [0.5], "std": [0.0]}], "parameter 'std' must be positive"),
        ([{"size": 3}], "augment step 0: missing 'op'"),
        (["random_crop"], "augment step 0: expected a mapping"),
        ({"op": "random_crop"}, "augment spec must be a list"),
    ],
)
def test_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        A.Augment(spec)


def test_spec_accepts_yaml_style_values():
    aug = A.Augment(
        [{"op": "random_resized_crop", "size": 8, "scale": [0.2, 1]}, {"op": "normalize"}], mean=MEAN, std=STD
    )
    assert aug.steps[0][1]["scale"] == (0.2, 1.0)
    assert aug(batch(2), gen()).shape == (2, 3, 8, 8)
    with pytest.raises(ConfigError, match="unknown augment preset 'cifar100'"):
        A.Augment.preset("cifar100", MEAN, STD)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_shapes_and_determinism():
    x = batch(32, 3, 32, 32).cuda()
    for name in ("cifar_strong", "moco_v2"):
        aug = A.Augment.preset(name, MEAN, STD, size=32)
        out = aug(x, torch.Generator("cuda").manual_seed(0))
        assert out.is_cuda and out.shape == (32, 3, 32, 32)
        assert torch.equal(out, aug(x, torch.Generator("cuda").manual_seed(0)))
    with pytest.raises(ValueError, match="generator is on"):
        A.random_hflip(x, gen())
