"""longtail: long-tailed image recognition in plain PyTorch."""

__version__ = "0.1.0"


def load(path, device: str | None = None):
    """A trained stage (its ``final.pt``, or a ``longtail export`` folder) ready to ``.predict(images)``."""
    from .predict import load as _load

    return _load(path, device)
