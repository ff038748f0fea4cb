"""Duplicates, leakage and outliers on small exact cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from curation.finders.base import FinderInputError
from curation.finders.duplicates import (DuplicateConfig, exact_duplicate_groups, find_duplicates,
                                         near_duplicate_groups, pixel_digest)
from curation.finders.leakage import find_leaks
from curation.finders.outliers import OutlierConfig, find_outliers
from finder_helpers import make_context


def _with_copies(seed: int = 0, count: int = 20, dim: int = 32):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(count, dim))
    copies = base[[0, 1, 2]] + rng.normal(scale=0.01, size=(3, dim))  # near copies of rows 0, 1, 2
    return np.vstack([base, copies]).astype(np.float32)


def test_near_copies_are_grouped_with_their_originals():
    context = make_context(_with_copies())
    result = find_duplicates(context, DuplicateConfig(threshold=0.95))
    groups = result.table["near_duplicate_group"].to_numpy()
    for original, copy in ((0, 20), (1, 21), (2, 22)):
        assert groups[original] >= 0 and groups[original] == groups[copy]
    assert len(set(groups[groups >= 0])) == 3
    assert (groups[3:20] == -1).all()
    assert result.table["is_issue"].sum() == 3  # one of each pair is suggested for removal
    assert result.table.loc[result.table["near_duplicate_group"] >= 0, "keep"].sum() == 3
    assert "3 near-duplicate groups (6 samples, 3 suggested for removal)" in result.summary


def test_chains_do_not_merge_unrelated_images():
    # a - b - c - d on a line: each adjacent pair is similar, the ends are not.
    angles = np.array([0.0, 0.25, 0.5, 0.75])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    threshold = float(np.cos(0.3))
    context = make_context(vectors, k=3)
    groups = near_duplicate_groups(context.neighbor_indices, context.neighbor_similarities, threshold)
    assert groups[0] != groups[3] or groups[0] == -1
    members = {}
    for row, group in enumerate(groups):
        members.setdefault(group, []).append(row)
    for group, rows in members.items():
        if group >= 0:  # every member directly similar to the others' centre: span below 2 steps
            assert max(rows) - min(rows) <= 2


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_groups_are_symmetric_and_order_independent(seed):
    vectors = _with_copies(seed, count=12, dim=8)
    context = make_context(vectors)
    groups = find_duplicates(context, DuplicateConfig(threshold=0.97)).table["near_duplicate_group"].to_numpy()
    permutation = np.random.default_rng(seed).permutation(len(vectors))
    shuffled = find_duplicates(make_context(vectors[permutation]), DuplicateConfig(threshold=0.97)).table
    groups_shuffled = np.empty_like(groups)
    groups_shuffled[permutation] = shuffled["near_duplicate_group"].to_numpy()
    # Same partition (group numbers may differ): pairs in a group are the same pairs.
    same = lambda g: {(i, j) for i in range(len(g)) for j in range(len(g)) if g[i] >= 0 and g[i] == g[j]}  # noqa: E731
    assert same(groups) == same(groups_shuffled)


def test_exact_duplicates_by_decoded_pixels(tmp_path):
    array = np.random.default_rng(1).integers(0, 255, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    Image.fromarray(array).save(tmp_path / "b.bmp")  # other file bytes, same pixels
    Image.fromarray(255 - array).save(tmp_path / "c.png")
    (tmp_path / "broken.png").write_bytes(b"")
    digests = [pixel_digest(tmp_path / name) for name in ("a.png", "b.bmp", "c.png", "broken.png")]
    assert digests[0] == digests[1] != digests[2] and digests[3] is None
    assert exact_duplicate_groups(digests).tolist() == [0, 0, -1, -1]


def test_keeper_prefers_labelled_then_larger(tmp_path):
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (8, 8), "red").save(small)
    Image.new("RGB", (32, 32), "red").save(large)
    vectors = np.array([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0]], dtype=np.float32)
    context = make_context(vectors, filepaths=[str(small), str(large), str(small)], k=2)
    keep = find_duplicates(context, DuplicateConfig(threshold=0.99)).table["keep"].tolist()
    assert keep[:2] == [False, True]
    labelled = make_context(vectors, filepaths=[str(small), str(large), str(small)], labels=["cat", None, "dog"], k=2)
    assert find_duplicates(labelled, DuplicateConfig(threshold=0.99)).table["keep"].tolist()[:2] == [True, False]


def test_bad_threshold_is_refused():
    with pytest.raises(FinderInputError, match=r"expected a cosine similarity in \(0, 1\], got 1.5"):
        find_duplicates(make_context(np.eye(3)), DuplicateConfig(threshold=1.5))


def test_leaks_are_cross_split_near_duplicates_only():
    vectors = _with_copies()
    splits = ["train"] * 20 + ["test", "train", None]  # copy of 0 in test; copy of 1 in train; copy of 2 unknown
    result = find_leaks(make_context(vectors, splits=splits), DuplicateConfig(threshold=0.95))
    table = result.table
    assert set(table.index[table["is_issue"]]) == {"s0", "s20"}
    assert table.loc["s0", "leak_id"] == "s20" and table.loc["s20", "leak_split"] == "train"
    assert 0.95 <= table.loc["s0", "score"] <= 1
    assert result.summary.startswith("1 cross-split near-duplicate pairs")


def test_leakage_without_splits_says_what_it_needs():
    with pytest.raises(FinderInputError, match="expected a split field or train/val/test tags"):
        find_leaks(make_context(np.eye(3)))


def test_outlier_is_the_far_point_and_scores_are_percentiles():
    rng = np.random.default_rng(0)
    cluster = rng.normal(size=(50, 8)) * 0.05 + np.eye(8)[0]
    far = -np.eye(8)[0:1]
    result = find_outliers(make_context(np.vstack([cluster, far])), OutlierConfig(k=5, fraction=0.02))
    table = result.table
    assert table["score"].idxmax() == "s50" and table.loc["s50", "score"] == 1.0
    assert table["score"].between(0, 1).all()
    assert table["is_issue"].sum() == 1 and table.loc["s50", "is_issue"]


def test_outliers_leave_zero_vectors_unscored():
    vectors = np.vstack([np.eye(4), np.zeros((1, 4))])
    result = find_outliers(make_context(vectors, k=3), OutlierConfig(k=3, fraction=0.0))
    assert np.isnan(result.table.loc["s4", "score"]) and "1 samples without a usable embedding" in result.summary


def test_a_lone_sample_is_unscored_for_lack_of_neighbours_not_of_an_embedding():
    result = find_outliers(make_context(np.eye(4)[:1], k=3))
    assert result.summary.endswith("; 1 samples with no neighbour to compare with were not scored")
    assert "usable embedding" not in result.summary


@pytest.mark.parametrize("count", [1, 2])
def test_tiny_datasets_give_results_not_tracebacks(count):
    context = make_context(np.eye(4)[:count], splits=["train", "test"][:count], k=5)
    assert len(find_duplicates(context).table) == count
    assert len(find_leaks(context).table) == count
    assert len(find_outliers(context).table) == count


def test_group_members_lists_each_group_keeper_first():
    from curation.finders.duplicates import group_members

    context = make_context(_with_copies())
    result = find_duplicates(context, DuplicateConfig(threshold=0.95))
    members = group_members(result, context)
    assert len(members) == 6 and members["group"].nunique() == 3
    for _, rows in members.groupby("group"):
        assert rows.iloc[0]["keep"] and rows.iloc[0]["similarity"] == pytest.approx(1.0)
        assert rows.iloc[1]["similarity"] > 0.95


def test_leak_pairs_lists_each_pair_once():
    from curation.finders.leakage import leak_pairs

    vectors = _with_copies()
    context = make_context(vectors, splits=["train"] * 20 + ["test", "test", "val"], labels=["x"] * 23)
    pairs = leak_pairs(find_leaks(context, DuplicateConfig(threshold=0.95)), context)
    assert len(pairs) == 3
    assert set(zip(pairs["a_id"], pairs["b_id"])) == {("s0", "s20"), ("s1", "s21"), ("s2", "s22")}
    assert (pairs["a_split"] == "train").all() and pairs["similarity"].is_monotonic_decreasing
