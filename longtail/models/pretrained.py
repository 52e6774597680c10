"""``model.pretrained: imagenet``: torchvision's ImageNet weights, fetched once into torch's hub cache.

The file names are torchvision's own (``<arch>-<hash>.pth``), in the folder torchvision uses
(``torch.hub.get_dir()/checkpoints``), so weights torchvision already downloaded are found, and a
file fetched by hand on another machine has an obvious place to go. The ``<hash>`` is the first hex
digits of the file's sha256; it is checked on download and again on every use, so a truncated or
swapped file placed by hand is caught before it trains.
"""
from __future__ import annotations

import hashlib
import http.client
import os
from pathlib import Path

import torch

from longtail.errors import CheckpointError, ConfigError

# The IMAGENET1K_V1 weights (the original ResNet training recipe; the V2 ones need torchvision's newer
# transforms to reach their numbers). File names as in torchvision's model builders.
WEIGHTS = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
    "resnet152": "resnet152-394f9c45.pth",
    "resnext50_32x4d": "resnext50_32x4d-7cdf4587.pth",
}
BASE_URL = "https://download.pytorch.org/models"
URL_ENV = "LONGTAIL_WEIGHTS_URL"  # a mirror, or a local server in tests
TAGS = ("imagenet", "imagenet1k_v1")


class WeightsError(CheckpointError):
    """The ImageNet weights could not be fetched or failed their hash check."""


def weight_name(spec: str) -> str | None:
    """The architecture a weight name asks for ('' when it names none, as ``imagenet`` does), or None
    when ``spec`` is not a weight name but a path. Accepts ``imagenet``, ``IMAGENET1K_V1``,
    ``resnet18.imagenet1k_v1`` and torchvision's enum spelling ``ResNet18_Weights.IMAGENET1K_V1``."""
    s = str(spec).strip().lower()
    if "/" in s or os.sep in s:
        return None
    arch, _, tag = s.rpartition(".")
    if tag not in TAGS:
        return None
    return arch.removesuffix("_weights")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def fetch_weights(file: str) -> Path:
    """The verified local copy of ``file``, downloaded first if the hub cache lacks it."""
    base = os.environ.get(URL_ENV) or BASE_URL
    url = f"{base.rstrip('/')}/{file}"
    dst = Path(torch.hub.get_dir()) / "checkpoints" / file
    prefix = file.rsplit("-", 1)[-1].split(".")[0]
    if dst.is_file():
        if not _sha256(dst).startswith(prefix):
            raise WeightsError(f"{dst}: its sha256 does not start with {prefix}, as its name says (a truncated or "
                               f"different file); delete it, then fetch {url} again")
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        # writes a .partial file beside dst and renames it only once the hash matched; removed on any failure
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=prefix, progress=False)
    except RuntimeError as e:
        if "hash" not in str(e):
            raise
        raise WeightsError(f"{url}: the download's sha256 does not start with {prefix}, as its name says (a corrupt "
                           f"or changed copy); nothing was kept in {dst.parent}. Try again, or fetch it by hand "
                           f"and place it at {dst}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        # OSError covers URLError / HTTPError and refused connections; ValueError a malformed mirror URL
        raise WeightsError(f"cannot download {url} ({_one_line(e)}): on a connected machine fetch that URL and "
                           f"place the file at {dst} (torch's hub cache; TORCH_HOME moves it), or set "
                           f"model.pretrained to the file's path") from None
    return dst


def resolve_weights(spec, arch: str | None) -> str:
    """A local file for ``model.pretrained``: an existing path as is, a weight name fetched for ``arch``."""
    spec = os.fspath(spec)
    named = None if os.path.exists(spec) else weight_name(spec)
    if named is None:
        return spec  # a path; the loader reports it when missing
    if named and named != arch:
        raise ConfigError(f"model.pretrained={spec} names {named} weights, but the backbone is {arch or 'another model'}")
    if arch not in WEIGHTS:
        raise ConfigError(f"model.pretrained={spec}: ImageNet weights are published for {', '.join(WEIGHTS)}, "
                          f"not for {arch or 'this backbone'}; give a torchvision-format file's path instead")
    return str(fetch_weights(WEIGHTS[arch]))
