"""Our batched AutoAugment / RandAugment / Cutout against kornia's, and both against PIL.

    python benchmarks/augment_policies.py [--out benchmarks/results/augment_policies.json] [--calls 20]

On one CPU thread and a 128 x 3 x 32 x 32 float batch: milliseconds per batch (median of
``--calls`` calls after warm-up) for ours, for kornia 0.9's ``AutoAugment(policy='cifar10')`` and
``RandAugment(n=2, m=10)``, and for the per-image PIL policy the published code runs. Also: how
each picks sub-policies (per image or per batch), whether it draws from the global torch RNG
(then an exact resume needs the global RNG reseeded every step), and the agreement of single ops
with PIL as the mean absolute difference in uint8 levels. Without kornia it still runs and says so.
Takes well under two minutes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing the package

from longtail.data.augment import policy as POL  # noqa: E402
from longtail.data.augment import policy_ops as O  # noqa: E402

GREY = (128, 128, 128)


def images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8: half smooth gradients plus noise, half noise in a random range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    out = []
    for i in range(n):
        if i % 2 == 0:
            base = np.stack([xx * rng.uniform(2, 6), yy * rng.uniform(2, 6), (xx + yy) * rng.uniform(1, 3)], -1)
            img = base + rng.uniform(0, 60, 3) + rng.normal(0, 8, base.shape)
        else:
            img = rng.uniform(rng.uniform(0, 60), rng.uniform(180, 256), (32, 32, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def to_batch(ims: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(ims).permute(0, 3, 1, 2).float() / 255


def to_levels(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy().astype(int)


def ms_per_call(fn, calls: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": round(statistics.median(times), 2), "mean_ms": round(statistics.mean(times), 2),
            "min_ms": round(min(times), 2),
            "max_ms": round(max(times), 2), "calls": calls}


# --------------------------------------------------------------------------
# PIL: the reference ops (the official CIFAR10Policy's calls) and the per-image policy
# --------------------------------------------------------------------------


def pil_rotate_fill(img, degrees):
    rot = img.convert("RGBA").rotate(degrees)
    return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)


PIL_OPS = {
    "invert": lambda im, a: ImageOps.invert(im),
    "autocontrast": lambda im, a: ImageOps.autocontrast(im),
    "equalize": lambda im, a: ImageOps.equalize(im),
    "posterize": lambda im, a: im if a >= 8 else ImageOps.posterize(im, int(a)),
    "solarize": lambda im, a: ImageOps.solarize(im, a),
    "color": lambda im, a: ImageEnhance.Color(im).enhance(a),
    "contrast": lambda im, a: ImageEnhance.Contrast(im).enhance(a),
    "brightness": lambda im, a: ImageEnhance.Brightness(im).enhance(a),
    "sharpness": lambda im, a: ImageEnhance.Sharpness(im).enhance(a),
    "shear_x": lambda im, a: im.transform(im.size, Image.AFFINE, (1, a, 0, 0, 1, 0), Image.BICUBIC, fillcolor=GREY),
    "shear_y": lambda im, a: im.transform(im.size, Image.AFFINE, (1, 0, 0, a, 1, 0), Image.BICUBIC, fillcolor=GREY),
    "translate_x": lambda im, a: im.transform(im.size, Image.AFFINE, (1, 0, a * im.size[0], 0, 1, 0), fillcolor=GREY),
    "translate_y": lambda im, a: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, a * im.size[1]), fillcolor=GREY),
    "rotate": pil_rotate_fill,
}
# Magnitudes per op kind, cycled over the images: the values the CIFAR-10 policy uses.
ARGS = {
    "invert": [0], "autocontrast": [0], "equalize": [0], "posterize": [7, 6, 5, 4],
    "solarize": [256 - 256 * m / 9 for m in (2, 3, 5, 8)],
    **{k: [0.1, 0.4, 0.7, 1.3, 1.6, 1.9] for k in ("color", "contrast", "brightness", "sharpness")},
    **{k: [0.1, -0.2, 0.3] for k in ("shear_x", "shear_y")},
    **{k: [m * (150 / 331) / 9 * s for m in (3, 8, 9) for s in (1, -1)] for k in ("translate_x", "translate_y")},
    "rotate": [30 * 2 / 9, 10.0, 20.0, -17.3],
}


def pil_ref(ims, name, args):
    return np.stack([np.asarray(PIL_OPS[name](Image.fromarray(im), a)) for im, a in zip(ims, args)]).astype(int)


def cycle(values, n):
    return [float(values[i % len(values)]) for i in range(n)]


def ours_op(name, x, args, shear_mode="bicubic"):
    a = torch.tensor(args)
    if name in ("shear_x", "shear_y"):
        return getattr(O, name)(x, a, shear_mode)
    if name in ("translate_x", "translate_y"):
        return getattr(O, name)(x, a * x.shape[-1])
    return getattr(O, name)(x, a)


def pil_policy(im, sub, fire, sign):
    img = Image.fromarray(im)
    for (op, p, m), u, s in zip(POL.CIFAR10_POLICY[sub], fire, sign):
        if u < p:
            base, value, signed = POL.aa_magnitude(op, m)
            img = PIL_OPS[op](img, base + (value * (-1 if s < 0.5 else 1) if signed else value))
    return img


def agreement_ours(ims: np.ndarray) -> dict:
    x = to_batch(ims)
    out = {}
    for name in PIL_OPS:
        args = cycle(ARGS[name], len(ims))
        d = np.abs(to_levels(ours_op(name, x, args)) - pil_ref(ims, name, args))
        out[name] = {"mean_abs_levels": round(float(d.mean()), 4), "max_abs_levels": int(d.max())}
    for name in ("shear_x", "shear_y"):  # the alternative mode, for the record
        args = cycle(ARGS[name], len(ims))
        d = np.abs(to_levels(ours_op(name, x, args, "bilinear")) - pil_ref(ims, name, args))
        out[name + "_bilinear"] = {"mean_abs_levels": round(float(d.mean()), 4), "max_abs_levels": int(d.max())}
    draws = POL.autoaugment_params(len(ims), torch.Generator().manual_seed(1))
    ours = to_levels(POL.autoaugment_with(x, draws))
    ref = np.stack([np.asarray(pil_policy(im, int(k), f.tolist(), s.tolist())).astype(int)
                    for im, k, f, s in zip(ims, draws.subpolicy, draws.fire, draws.sign)])
    out["whole_policy_same_draws"] = {"mean_abs_levels": round(float(np.abs(ours - ref).mean()), 4)}
    return out


# --------------------------------------------------------------------------
# kornia
# --------------------------------------------------------------------------


def kornia_report(x: torch.Tensor, ims: np.ndarray, calls: int) -> dict:
    try:
        import kornia
        from kornia.augmentation.auto import AutoAugment, RandAugment
    except Exception as e:  # not installed, or broken (e.g. kornia_rs missing)
        return {"available": False, "reason": f"{type(e).__name__}: {e}"}
    aa, ra = AutoAugment(policy="cifar10"), RandAugment(n=2, m=10)
    rep: dict = {"available": True, "version": kornia.__version__}
    rep["autoaugment_cifar10"] = ms_per_call(lambda: aa(x), calls)
    rep["randaugment_n2_m10"] = ms_per_call(lambda: ra(x), calls)

    # How many sub-policies one call uses: forward_parameters lists the chosen ones.
    chosen = [len(aa.forward_parameters(x.shape)) for _ in range(50)]
    ra_chosen = [[p.name for p in ra.forward_parameters(x.shape)] for _ in range(50)]
    rep["autoaugment_subpolicies_per_call"] = sorted(set(chosen))
    rep["autoaugment_selection"] = ("per batch: one sub-policy for the whole batch (Categorical.sample((1,)) in "
                                    "get_forward_sequence); firing and magnitudes are drawn per image")
    rep["randaugment_ops_per_call"] = sorted({len(c) for c in ra_chosen})
    rep["randaugment_selection"] = ("per batch: n ops for the whole batch, without replacement (torch.randperm); "
                                    "timm draws them per image, with replacement")

    # The global RNG: same global seed, same output; a generator cannot be passed to forward().
    torch.manual_seed(0)
    a = aa(x)
    torch.manual_seed(0)
    b = aa(x)
    torch.manual_seed(1)
    c = aa(x)
    rep["uses_global_torch_rng"] = bool(torch.equal(a, b) and not torch.equal(a, c))
    rep["resume_note"] = "exact resume needs torch.manual_seed(f(seed, epoch, step)) before every call"

    # Single ops against PIL, kornia's functional forms, in uint8 levels.
    kx = to_batch(ims)
    n = len(ims)
    agree = {}
    d = np.abs(to_levels(kornia.enhance.equalize(kx)) - pil_ref(ims, "equalize", [0] * n))
    agree["equalize"] = float(d.mean())
    bits = cycle(ARGS["posterize"], n)
    d = np.abs(to_levels(kornia.enhance.posterize(kx, torch.tensor(bits, dtype=torch.long))) - pil_ref(ims, "posterize", bits))
    agree["posterize"] = float(d.mean())
    thr = cycle(ARGS["solarize"], n)
    d = np.abs(to_levels(kornia.enhance.solarize(kx, torch.tensor(thr) / 255)) - pil_ref(ims, "solarize", thr))
    agree["solarize"] = float(d.mean())
    d = np.abs(to_levels(kornia.enhance.invert(kx)) - pil_ref(ims, "invert", [0] * n))
    agree["invert"] = float(d.mean())
    deg = cycle(ARGS["rotate"], n)
    for mode in ("nearest", "bilinear"):
        rot = kornia.geometry.transform.rotate(kx, torch.tensor(deg), mode=mode, padding_mode="zeros")
        ref = np.stack([np.asarray(Image.fromarray(im).rotate(a, Image.NEAREST if mode == "nearest" else Image.BILINEAR,
                                                              fillcolor=(0, 0, 0))) for im, a in zip(ims, deg)])
        agree[f"rotate_{mode}_fill0"] = float(np.abs(to_levels(rot) - ref.astype(int)).mean())
    rep["agreement_with_pil_mean_abs_levels"] = {k: round(v, 4) for k, v in agree.items()}
    rep["agreement_note"] = ("kornia.enhance / kornia.geometry.transform functions (what its policy ops wrap), "
                             "the same images and magnitudes as ours; rotate compared with fill 0, since "
                             "kornia's padding is zeros; its solarize threshold given as level / 255")
    return rep


# --------------------------------------------------------------------------


def lines_of_code(paths) -> dict:
    out = {}
    for p in paths:
        text = Path(p).read_text().splitlines()
        code = [ln for ln in text if ln.strip() and not ln.strip().startswith("#")]
        out[str(Path(p).relative_to(ROOT))] = {"lines": len(text), "non_blank_non_comment": len(code)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/augment_policies.json"))
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)

    ims = images(128)
    x = to_batch(ims)
    g = torch.Generator().manual_seed(0)
    ours = {
        "autoaugment_cifar": ms_per_call(lambda: POL.autoaugment_cifar(x, g), args.calls),
        "randaugment_n2_m10_mstd0.5": ms_per_call(lambda: POL.randaugment(x, g), args.calls),
        "cutout_1x16": ms_per_call(lambda: POL.cutout(x, g), args.calls),
    }
    draws = POL.autoaugment_params(len(ims), torch.Generator().manual_seed(0))

    def pil_batch():
        for im, k, f, s in zip(ims, draws.subpolicy, draws.fire, draws.sign):
            pil_policy(im, int(k), f.tolist(), s.tolist())

    state = torch.get_rng_state()
    first = POL.autoaugment_cifar(x, torch.Generator().manual_seed(5))
    POL.randaugment(x, torch.Generator().manual_seed(5))
    POL.cutout(x, torch.Generator().manual_seed(5))
    ours_global = not torch.equal(state, torch.get_rng_state())
    torch.manual_seed(99)  # a different global RNG state must not matter
    ours_resume = torch.equal(first, POL.autoaugment_cifar(x, torch.Generator().manual_seed(5)))
    report = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "pil": Image.__version__,
        "threads": torch.get_num_threads(),
        "batch": list(x.shape),
        "note": "CPU timings taken beside other work on the machine: read them as rough",
        "ours": {
            **ours,
            "selection": "per image: each image draws its sub-policy (AutoAugment) or its n ops (RandAugment, with "
                         "replacement), its firing and its signs",
            "uses_global_torch_rng": ours_global,  # measured: the global state is unchanged by the ops
            "same_generator_seed_same_output_whatever_the_global_rng": ours_resume,
            "lines_of_code": lines_of_code([ROOT / "longtail/data/augment/policy.py",
                                            ROOT / "longtail/data/augment/policy_ops.py"]),
            "agreement_with_pil": agreement_ours(ims),
        },
        "pil_per_image_autoaugment_ms_per_batch": ms_per_call(pil_batch, max(3, args.calls // 4), warmup=1),
        "kornia": kornia_report(x, ims, args.calls),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
