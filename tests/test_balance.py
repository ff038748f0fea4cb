"""Balance and coverage report."""

from __future__ import annotations

import numpy as np
import pytest

from curation.balance import compute_balance
from curation.finders.base import FinderInputError
from finder_helpers import make_context


def _three_classes(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(60, 8)) * 0.2 + np.eye(8)[0] * 3
    b = rng.normal(size=(60, 8)) * 0.2 + np.eye(8)[1] * 3
    # c overlaps b (inseparable) and is rare.
    c = rng.normal(size=(6, 8)) * 0.2 + np.eye(8)[1] * 3
    return np.vstack([a, b, c]), ["a"] * 60 + ["b"] * 60 + ["c"] * 6


def test_counts_imbalance_and_rare_classes():
    vectors, labels = _three_classes()
    report = compute_balance(make_context(vectors, labels=labels), min_share=0.1, n_clusters=3)
    assert report.counts.to_dict() == {"a": 60, "b": 60, "c": 6}
    assert report.imbalance_ratio == pytest.approx(10.0)
    assert report.below_share == ["c"]
    assert any(s.startswith("Collect more 'c': 6 samples") for s in report.suggestions)


def test_inseparable_classes_show_in_accuracy_and_confusion():
    vectors, labels = _three_classes()
    report = compute_balance(make_context(vectors, labels=labels), n_clusters=3)
    assert report.accuracy["a"] > 0.95
    assert report.accuracy["c"] < 0.5
    assert report.confusion.loc["c", "b"] > 0.5
    assert np.allclose(report.confusion.sum(axis=1), 1.0)
    assert any("'c' is recognised" in s and "mistaken for 'b'" in s for s in report.suggestions)


def test_cluster_mix_counts_every_labelled_sample():
    vectors, labels = _three_classes()
    report = compute_balance(make_context(vectors, labels=labels), n_clusters=3)
    assert int(report.cluster_mix.to_numpy().sum()) == len(labels)
    assert set(report.cluster_mix.columns) == {"a", "b", "c"}


def test_balance_without_labels_says_what_it_needs():
    with pytest.raises(FinderInputError, match="balance needs labels"):
        compute_balance(make_context(np.eye(4)))
    with pytest.raises(FinderInputError, match=r"expected a share in \[0, 1\], got 2"):
        compute_balance(make_context(np.eye(4), labels=["a", "b", "a", "b"]), min_share=2)


def test_single_class_gives_counts_not_a_traceback():
    report = compute_balance(make_context(np.random.default_rng(0).normal(size=(10, 4)), labels=["a"] * 10), n_clusters=2)
    assert report.counts.to_dict() == {"a": 10} and report.imbalance_ratio == 1.0
    assert np.isnan(report.accuracy["a"])


def test_single_class_says_why_accuracy_is_missing():
    report = compute_balance(make_context(np.random.default_rng(0).normal(size=(8, 4)), labels=["bag"] * 8))
    assert report.confusion.isna().all().all()
    assert report.suggestions[0].startswith("Only one class ('bag')")


def test_too_few_samples_to_cross_validate_gives_counts_and_a_reason():
    # One sample per class (and a class whose only samples have broken vectors): no classifier can be
    # cross-validated, but counts, shares and the cluster mix still make sense.
    report = compute_balance(make_context(np.eye(4)[:2], labels=["bag", "trouser"], k=2))
    assert report.counts.to_dict() == {"bag": 1, "trouser": 1} and report.imbalance_ratio == 1.0
    assert report.accuracy.isna().all() and report.confusion.isna().all().all()
    assert report.suggestions[0].startswith("Too few samples to cross-validate")
    assert "{'bag': 1, 'trouser': 1}" in report.suggestions[0]
    broken = np.vstack([np.full((2, 4), np.nan), np.eye(4)[:2]])
    report = compute_balance(make_context(broken, labels=["a", "a", "b", "c"], k=3))
    assert "{'a': 0, 'b': 1, 'c': 1}" in report.suggestions[0]


def test_tiny_dataset_is_not_cut_into_regions_of_one():
    vectors = np.random.default_rng(0).normal(size=(8, 4))
    report = compute_balance(make_context(vectors, labels=["a", "b"] * 4), n_clusters=10)
    assert len(report.cluster_mix) == 1  # 8 samples: one region of at least thin_count (5)
    assert len([s for s in report.suggestions if s.startswith("Cluster ")]) <= 1  # not one per sample
    assert len(compute_balance(make_context(np.random.default_rng(1).normal(size=(60, 4)), labels=["a", "b"] * 30),
                               n_clusters=10).cluster_mix) == 10
