import numpy as np
import pytest

from longtail.data.groups import group_accuracy, group_sizes, shot_groups


def test_default_thresholds_are_strict_at_the_edges():
    counts = [500, 101, 100, 20, 19, 1]
    g = shot_groups(counts)
    assert g["many"].tolist() == [0, 1]
    assert g["medium"].tolist() == [2, 3]
    assert g["few"].tolist() == [4, 5]
    assert group_sizes(counts) == {"many": 2, "medium": 2, "few": 2}


def test_thresholds_are_configurable():
    counts = [500, 101, 100, 20, 19, 1]
    g = shot_groups(counts, many=19, few=2)
    assert g["many"].tolist() == [0, 1, 2, 3]
    assert g["medium"].tolist() == [4]
    assert g["few"].tolist() == [5]
    assert group_sizes(counts, many=1000, few=0) == {"many": 0, "medium": 6, "few": 0}


def test_group_accuracy_means_and_empty_groups():
    counts = [200, 150, 50, 30, 10]
    acc = [0.9, 0.7, 0.5, 0.3, 0.2]
    out = group_accuracy(acc, shot_groups(counts))
    assert out["many"] == pytest.approx(0.8)
    assert out["medium"] == pytest.approx(0.4)
    assert out["few"] == pytest.approx(0.2)
    out = group_accuracy(acc, shot_groups(counts, few=5))
    assert out["few"] is None  # empty, never 0
    # a class without test images (NaN accuracy) does not count
    out = group_accuracy([0.9, np.nan, 0.5, 0.3, np.nan], shot_groups(counts))
    assert out["many"] == pytest.approx(0.9) and out["few"] is None
