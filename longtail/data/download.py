"""Checksummed downloads with urllib, and the per-user cache folder.

Nothing here is called by the tests with a real URL: :data:`urlopen` is a
module attribute so tests (and users behind a proxy) can replace the fetcher.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import torch.distributed as dist

from ..errors import DataError

CHUNK = 1 << 20

# The fetcher: ``urlopen(url) -> a readable binary file object``. Monkeypatch it to test offline.
urlopen = urllib.request.urlopen


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/longtail``, else ``~/.cache/longtail`` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "longtail"


def md5sum(path, chunk: int = CHUNK) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def download_url(url: str, dest, md5: str | None = None) -> Path:
    """Fetch ``url`` to ``dest``, checking ``md5`` when given.

    The bytes go to ``dest.part`` first and are renamed only once complete and
    verified, so an interrupted download never looks like a finished archive.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    want = f" (md5 {md5})" if md5 else ""
    h = hashlib.md5()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urlopen(url) as src, open(part, "wb") as out:
            for block in iter(lambda: src.read(CHUNK), b""):
                h.update(block)
                out.write(block)
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        part.unlink(missing_ok=True)
        raise DataError(f"could not download {url}{want} to {dest}: {e}") from None
    if md5 and h.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise DataError(
            f"download of {url} to {dest} has md5 {h.hexdigest()}, expected {md5}; the partial file was deleted"
        )
    os.replace(part, dest)
    return dest


def download_once(url: str, dest, md5: str | None = None) -> Path:
    """``dest``, fetched by :func:`download_url` if it is missing; under DDP by rank 0 alone.

    Every rank calls this (it is a collective, whether or not the file is there): otherwise each rank
    writes into the same ``.part`` file and one renames it while another still writes. Rank 0's outcome,
    broadcast to all, is the barrier: no rank looks for the file before rank 0 has renamed it into place,
    and a failed download fails every rank with rank 0's message instead of leaving them waiting.
    """
    dest = Path(dest)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dest if dest.is_file() else download_url(url, dest, md5)
    failure = None
    if dist.get_rank() == 0 and not dest.is_file():
        try:
            download_url(url, dest, md5)
        except DataError as e:
            failure = str(e)
    box = [failure]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise DataError(box[0])
    if not dest.is_file():
        raise DataError(f"{dest}: rank 0 downloaded it, but rank {dist.get_rank()} does not see it; "
                        "put the data root on a filesystem that every rank shares")
    return dest
