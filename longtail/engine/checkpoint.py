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


TEMP_SUFFIX = ".tmp"  # temporary files are ".<name>.<random>.tmp" beside their target


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write ``obj`` to ``path`` so that ``path`` is always either the old or the new complete file.

    A failed write (disk full, ...) removes its temporary file and raises
    :class:`CheckpointError`; the previous checkpoint stays as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)):  # torch's zip writer turns some OSErrors into RuntimeErrors
            kept = " (the previous one is kept)" if path.exists() else ""
            raise CheckpointError(f"cannot write checkpoint {path}{kept}: {_reason(e)}") from None
        raise
    try:  # make the rename itself durable; some filesystems cannot fsync a directory (it is still atomic)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_text_atomic(path: str | Path, text: str) -> None:
    """A text file (results, recipes, tables) written whole or not at all, like :func:`save_atomic`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed process left in ``folder`` and its stage folders.

    They are never read (a resume reads only complete files), but they would pile up.
    Only files of :func:`save_atomic`'s and the run's own naming are touched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for p in [*folder.glob(f".*{TEMP_SUFFIX}"), *folder.glob(f"*/.*{TEMP_SUFFIX}")]:
        if p.is_file() and p.name.startswith((".checkpoint.pt.", ".final.pt.", ".best.pt.", ".results.json.", ".recipe.yaml.")):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...
        text = str(e).strip()
        if "Weights only load failed" in text:  # the pickle asks for code: refused, and said so plainly
            detail = [l.strip() for l in text.splitlines() if "GLOBAL" in l or "Unsupported" in l]
            reason = detail[0][:200] if detail else "it asks for Python objects other than tensors and containers"
            raise CheckpointError(f"checkpoint {path} was refused: its pickle asks for code or non-tensor objects ({reason})") from None
        reason = text.splitlines()[0][:160] if text else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a longtail checkpoint): {reason}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a longtail checkpoint (format {FORMAT} expected)")
    return obj
