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
