"""Where and how the tensors run: device, mixed precision, DDP ranks, seeds."""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..config import RuntimeConfig
from ..errors import ConfigError


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full fp32
    channels_last: bool
    compile: bool
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        else:
            name = f"cpu ({torch.get_num_threads()} threads)"
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        return f"{name}, {amp}, world {self.world}"

    def barrier(self):
        if self.distributed:
            dist.barrier()


def cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 / AMX: bf16 autocast roughly doubles ResNet-32 training speed there (measured 320 -> 610 img/s)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"runtime.device: {name!r} requested but CUDA is not available")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    elif name != "cpu":
        raise ConfigError(f"runtime.device: {name!r} is not one of auto, cpu, cuda, cuda:N")
    return torch.device(name)


def pick_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("runtime.amp: fp16 needs CUDA; use bf16 or off on CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        # Without emulation: pre-Ampere cards "support" bf16 by emulating it, far slower than their fp16.
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def setup_runtime(cfg: RuntimeConfig) -> Runtime:
    """Join the torchrun process group when launched by torchrun, pick device and precision."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=cfg.dist_timeout_min))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, pick_amp(cfg.amp, device), cfg.channels_last, cfg.compile, rank, world, local_rank)


def shutdown_runtime(ok: bool = True) -> None:
    """Leave the torchrun process group. Without it a rank that finishes first tears gloo down at
    interpreter exit while its peer still talks, and aborts ("terminate called without an active
    exception", SIGABRT), which torchrun reports as a failed run. The barrier waits for every rank; after
    an error the peers may never reach it, so then the group is only destroyed."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with contextlib.suppress(Exception):
        if ok:
            dist.barrier()
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple: independent streams for (seed, stage, epoch, step, rank)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def step_generator(device: torch.device, *parts) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


CODE_DIRS = ("longtail", "recipes")  # what a run's code hash covers, and where an untracked file marks it dirty


def git_commit(root: Path | None = None) -> str | None:
    """HEAD of the checkout the code runs from, ``-dirty`` when its code differs from that commit. Where the
    tree was copied without ``.git`` (the device machine), ``LONGTAIL_COMMIT`` if set: the code hash beside it
    in every record checks that it names this code."""
    fallback = os.environ.get("LONGTAIL_COMMIT") or None
    try:
        root = root or Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return fallback
        # results/ holds outputs (full runs commit their checkpoints as they go): not the code that ran.
        # A new, uncommitted module runs too: untracked files under the code folders count.
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                  ":(exclude)results"], capture_output=True, text=True, timeout=5).stdout.strip()
        new = subprocess.run(["git", "-C", str(root), "ls-files", "--others", "--exclude-standard", "--", *CODE_DIRS],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if changed or new else "")
    except (OSError, subprocess.SubprocessError):
        return fallback


def code_hash(root: Path | None = None) -> str:
    """A content hash of the code that runs (every .py and .yaml under longtail/ and recipes/, by path and
    bytes): it names the code even where its commit was amended away, or where there is no git at all.
    An installed copy (a wheel, ``pip install .``) has the recipes as package data under longtail/recipes/;
    they are hashed as recipes/..., so the same code hashes the same installed or checked out."""
    root = root or Path(__file__).resolve().parents[2]
    packaged = root / "longtail" / "recipes"  # in a source checkout there is none: recipes/ beside longtail/
    h = hashlib.sha256()
    for d in CODE_DIRS:
        base = packaged if d == "recipes" and packaged.is_dir() else root / d
        for p in sorted(base.rglob("*")):
            if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts and not (d == "longtail" and packaged in p.parents):
                h.update(f"{d}/{p.relative_to(base).as_posix()}".encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]
