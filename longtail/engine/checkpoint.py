"""Checkpoints: written atomically, read without running code.

A save goes to a temporary file in the same folder, is flushed to disk, then
renamed over the old one, so a crash mid-write leaves the previous checkpoint
intact. Loading uses ``torch.load(weights_only=True)``: tensors and plain
containers only, never pickled code.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError

FORMAT = "longtail-checkpoint/1"


def save_atomic(obj: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a longtail checkpoint): {reason}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a longtail checkpoint (format {FORMAT} expected)")
    return obj
