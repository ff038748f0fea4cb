"""Label-next: uncertain and diverse."""

from __future__ import annotations

import numpy as np
import pytest

from curation.finders.base import FinderInputError
from curation.finders.label_next import LabelNextConfig, find_label_next
from finder_helpers import make_context


def _two_blobs_with_a_boundary(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(30, 8)) * 0.3 + np.eye(8)[0] * 3
    b = rng.normal(size=(30, 8)) * 0.3 + np.eye(8)[1] * 3
    # Ten near-identical unlabelled points half-way between the classes, and two more elsewhere on the boundary.
    boundary = (np.eye(8)[0] + np.eye(8)[1]) * 1.5 + rng.normal(size=(10, 8)) * 0.01
    other = (np.eye(8)[0] + np.eye(8)[1]) * 1.5 + np.eye(8)[2] * 1.0 + rng.normal(size=(2, 8)) * 0.01
    vectors = np.vstack([a, b, boundary, other])
    labels = ["a"] * 30 + ["b"] * 30 + [None] * 12
    return vectors, labels


def test_boundary_samples_first_and_not_all_copies_of_one():
    vectors, labels = _two_blobs_with_a_boundary()
    result = find_label_next(make_context(vectors, labels=labels), LabelNextConfig(budget=3, include_labelled=False))
    table = result.table
    picked = table.index[table["is_issue"]].tolist()
    rows = sorted(int(p[1:]) for p in picked)
    assert len(rows) == 3 and all(r >= 60 for r in rows)  # only unlabelled boundary samples
    assert any(r >= 70 for r in rows)  # diversity: not three copies from the same tight clump
    assert table["score"].dropna().between(0, 1).all()
    assert table.loc[table["is_issue"], "label_next_rank"].sort_values().tolist() == [1.0, 2.0, 3.0]


def test_without_labels_it_is_a_diverse_cover():
    vectors, _ = _two_blobs_with_a_boundary()
    result = find_label_next(make_context(vectors), LabelNextConfig(budget=3))
    rows = sorted(int(p[1:]) for p in result.table.index[result.table["is_issue"]])
    groups = {0 if r < 30 else 1 if r < 60 else 2 for r in rows}
    assert len(groups) == 3  # one from each region
    assert result.summary == "3 samples proposed for labelling (3 unlabelled, 0 to re-check)"


def test_budget_validation_and_tiny_inputs():
    with pytest.raises(FinderInputError, match="expected at least 1, got 0"):
        find_label_next(make_context(np.eye(3)), LabelNextConfig(budget=0))
    assert find_label_next(make_context(np.eye(2)[:1], k=2)).table["is_issue"].sum() == 1


def test_one_example_per_class_is_a_cold_start_not_a_skip():
    # Two labelled samples, one per class, and ten unlabelled: no classifier can be cross-validated,
    # so the list is a diverse cover of the data instead of "not run".
    vectors, _ = _two_blobs_with_a_boundary()
    labels = [None] * len(vectors)
    labels[0], labels[30] = "a", "b"
    result = find_label_next(make_context(vectors, labels=labels), LabelNextConfig(budget=3, include_labelled=False))
    rows = sorted(int(p[1:]) for p in result.table.index[result.table["is_issue"]])
    assert len(rows) == 3 and 0 not in rows and 30 not in rows
    assert len({0 if r < 30 else 1 if r < 60 else 2 for r in rows}) == 3  # one from each region
    assert (result.table["score"] == 1.0).all()
    two = find_label_next(make_context(np.eye(4)[:2], labels=["a", "b"], k=2))
    assert two.table["is_issue"].tolist() == [True, True]
