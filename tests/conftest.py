"""Shared fixtures: the offline benchmark data folder and the real CIFAR-100 arrays."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """``$LONGTAIL_DATA``, else the ``shared/data`` folder beside the repository."""
    env = os.environ.get("LONGTAIL_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"benchmark data folder {path} not found (set LONGTAIL_DATA)")
    return path


@pytest.fixture(scope="session")
def real_cifar100(shared_data):
    """``(CifarArrays, warnings caught while loading)``: the archive is read once per session."""
    from longtail.data.cifar import load_cifar

    if not (shared_data / "cifar-100-python.tar.gz").is_file():
        pytest.skip(f"cifar-100-python.tar.gz not in {shared_data}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arrays = load_cifar("cifar100", shared_data, download=False)
    return arrays, list(caught)


@pytest.fixture(scope="session")
def data():
    """A tiny learnable long-tailed set (6 classes, 100 down to 10 images, 16 px) for engine-level tests."""
    from longtail.data.synthetic import synthetic_bundle

    return synthetic_bundle(num_classes=6, max_per_class=100, imbalance=10, size=16)
