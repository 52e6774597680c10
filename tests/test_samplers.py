import numpy as np
import pytest

from longtail.data.samplers import ClassBalancedSampler, InstanceSampler, SqrtSampler, build_sampler
from longtail.errors import ConfigError

# A long-tailed toy label set: class c has 2**(5-c) images (32, 16, 8, 4, 2, 1).
LABELS = np.concatenate([np.full(2 ** (5 - c), c) for c in range(6)])


def test_instance_sampler_is_a_permutation_per_epoch():
    s = InstanceSampler(LABELS, batch_size=10, seed=3)
    e0, e1 = np.concatenate(s.plan(0)), np.concatenate(s.plan(1))
    assert sorted(e0) == list(range(len(LABELS)))
    assert not np.array_equal(e0, e1)
    assert s.steps_per_epoch == 7 and [len(b) for b in s.plan(0)] == [10] * 6 + [3]


def test_sampler_is_deterministic_given_seed_and_epoch():
    a = ClassBalancedSampler(LABELS, 8, seed=1, samples_per_class=2)
    b = ClassBalancedSampler(LABELS, 8, seed=1, samples_per_class=2)
    assert all(np.array_equal(x, y) for x, y in zip(a.plan(4), b.plan(4)))
    c = ClassBalancedSampler(LABELS, 8, seed=2, samples_per_class=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a.plan(4), c.plan(4)))


def test_class_balanced_draws_classes_equally_and_cycles_images():
    s = ClassBalancedSampler(LABELS, batch_size=12, seed=0, samples_per_class=2, epoch_length="balanced")
    idx = np.concatenate(s.plan(0))
    assert len(idx) == 32 * 6  # max_count * num_classes
    counts = np.bincount(LABELS[idx], minlength=6)
    assert counts.tolist() == [32] * 6
    # Each group of Z=2 consecutive indices comes from one class.
    pairs = LABELS[idx].reshape(-1, 2)
    assert (pairs[:, 0] == pairs[:, 1]).all()
    # The 2-image class is cycled: each of its images appears exactly 16 times.
    cls4 = idx[LABELS[idx] == 4]
    assert np.bincount(cls4).max() == 16 and len(set(cls4)) == 2
    # Within one pass over the classes a batch holds distinct classes (k = 6 = C here).
    for b in s.plan(0)[:5]:
        assert len(set(LABELS[b])) == 6


def test_class_balanced_dataset_length_epoch():
    s = ClassBalancedSampler(LABELS, batch_size=8, seed=0, samples_per_class=4, epoch_length="dataset")
    assert s.epoch_size == len(LABELS) and s.steps_per_epoch == 8


def test_class_balanced_rejects_bad_batch():
    with pytest.raises(ConfigError, match="multiple of samples_per_class"):
        ClassBalancedSampler(LABELS, batch_size=10, samples_per_class=4)


def test_sqrt_sampler_follows_sqrt_counts():
    labels = np.concatenate([np.full(400, 0), np.full(100, 1)])
    s = SqrtSampler(labels, batch_size=50, seed=0)
    drawn = np.concatenate([np.concatenate(s.plan(e)) for e in range(20)])
    frac = np.mean(labels[drawn] == 0)
    assert abs(frac - 20 / 30) < 0.02  # sqrt(400) : sqrt(100) = 2 : 1


def test_ddp_ranks_get_disjoint_shards_of_the_global_batch():
    s = build_sampler("instance", LABELS, batch_size=8, seed=5)
    plan = s.plan(2)
    for step in range(len(plan)):
        shards = [s.batch(2, step, rank, 2) for rank in range(2)]
        assert len(shards[0]) == len(shards[1]) > 0
        if len(plan[step]) % 2 == 0:
            assert not set(shards[0]) & set(shards[1])
            assert sorted(np.concatenate(shards)) == sorted(plan[step])
        else:  # the odd last batch: padded with its first image, so both shares are equal
            assert sorted(np.concatenate(shards)) == sorted([*plan[step], plan[step][0]])
    assert any(len(b) % 2 for b in plan)  # the padding case is exercised


def test_unknown_sampler():
    with pytest.raises(ConfigError, match="unknown sampler 'weird'"):
        build_sampler("weird", LABELS, 8, 0)


def test_class_balanced_batch_holds_k_distinct_classes_times_z():
    labels = np.concatenate([np.full(max(1, 200 >> c), c) for c in range(12)])
    s = ClassBalancedSampler(labels, batch_size=32, seed=0, samples_per_class=4)
    for epoch in range(3):
        for b in s.plan(epoch)[:-1]:
            classes, per = np.unique(labels[b], return_counts=True)
            assert len(classes) == 8 and (per == 4).all()  # k = 32 / 4 classes, Z = 4 images each
    drawn = np.concatenate([labels[np.concatenate(s.plan(e))] for e in range(20)])
    freq = np.bincount(drawn) / len(drawn)
    assert np.abs(freq - 1 / 12).max() < 0.01  # every class equally likely


def test_instance_sampler_follows_the_training_distribution():
    labels = np.concatenate([np.full(n, c) for c, n in enumerate([400, 200, 100, 50])])
    s = InstanceSampler(labels, batch_size=64, seed=0)
    # Over many batches, the class frequency of the first batch of each epoch matches n_c / N.
    first = np.concatenate([labels[s.plan(e)[0]] for e in range(300)])
    expected = np.array([400, 200, 100, 50]) / 750
    observed = np.bincount(first, minlength=4) / len(first)
    chi2 = (len(first) * (observed - expected) ** 2 / expected).sum()
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom, p = 0.001
