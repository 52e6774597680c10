"""longtail: long-tailed image recognition in plain PyTorch."""

__version__ = "0.1.0"
