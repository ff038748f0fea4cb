"""Stratified, leakage-free, balanced train/val/test splits (curation/splits.py).

The tolerance under test (stated in ``assign_splits``): for every class c and split s,
|n_{s,c} - r_s * n_c| <= g_max + 1, with g_max the size of the largest group.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from curation.splits import (
    REMOVED_REASON, SplitConfig, assign_splits, balance_assignment, build_groups, make_splits, parse_ratios,
    read_splits, write_splits,
)

SPLIT_NAMES = ("train", "val", "test", "holdout")
TRAIN_VAL_TEST = {"train": 0.8, "val": 0.1, "test": 0.1}


def _labels(*counts: tuple[str | None, int]) -> np.ndarray:
    return np.array([name for name, n in counts for _ in range(n)], dtype=object)


def _assert_within_tolerance(labels, groups, split, ratios) -> None:
    g_max = int(np.bincount(np.unique(groups, return_inverse=True)[1].ravel()).max())
    for name, share in ratios.items():
        for klass in set(labels.tolist()):
            in_class = np.array([label == klass for label in labels])
            n_class = int(in_class.sum())
            n_split_class = int((in_class & (split == name)).sum())
            assert abs(n_split_class - share * n_class) <= g_max + 1 + 1e-9, (
                f"class {klass!r} in {name!r}: {n_split_class} samples, target {share * n_class:.2f}, g_max {g_max}")


# --------------------------------------------------------------------------------------
# Property tests: assign_splits + build_groups
# --------------------------------------------------------------------------------------

@st.composite
def split_problems(draw):
    """Labels (None included), the three grouping relations, ratios and a seed."""
    n = draw(st.integers(1, 80))
    labels = np.array(draw(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n)), dtype=object)
    maybe_group = lambda high: st.one_of(st.none(), st.none(), st.integers(0, high))  # noqa: E731
    near = draw(st.lists(maybe_group(max(1, n // 3)), min_size=n, max_size=n))
    no_partner = st.just(-1)
    leak = draw(st.lists(st.one_of(no_partner, no_partner, no_partner, st.integers(0, n - 1)), min_size=n, max_size=n))
    patient = draw(st.lists(maybe_group(max(1, n // 2)), min_size=n, max_size=n))
    weights = draw(st.lists(st.integers(1, 20), min_size=1, max_size=len(SPLIT_NAMES)))
    ratios = {name: weight / sum(weights) for name, weight in zip(SPLIT_NAMES, weights)}
    seed = draw(st.integers(0, 2**32 - 1))
    return labels, np.array(near, dtype=object), np.array(leak), np.array(patient, dtype=object), ratios, seed


@settings(max_examples=150, deadline=None)
@given(split_problems())
def test_groups_never_span_two_splits_and_every_sample_gets_one_split(problem):
    labels, near, leak, patient, ratios, seed = problem
    groups = build_groups(np.arange(len(labels)), near_duplicate_group=near, leak_partner_index=leak,
                          group_values=patient)
    split = assign_splits(labels, groups, ratios, seed)
    # (d) exactly one split per sample.
    assert split.shape == labels.shape
    assert set(split.tolist()) <= set(ratios)
    # (a) every relation that joins samples keeps them in one split.
    for values in (near, patient):
        for value in {v for v in values.tolist() if v is not None}:
            assert len(set(split[values == value])) == 1
    for row, partner in enumerate(leak):
        if partner >= 0:
            assert split[row] == split[partner]
    for group in np.unique(groups):
        assert len(set(split[groups == group])) == 1


@settings(max_examples=150, deadline=None)
@given(split_problems())
def test_class_proportions_within_the_stated_tolerance(problem):
    labels, near, leak, patient, ratios, seed = problem
    groups = build_groups(np.arange(len(labels)), near_duplicate_group=near, leak_partner_index=leak,
                          group_values=patient)
    _assert_within_tolerance(labels, groups, assign_splits(labels, groups, ratios, seed), ratios)


@settings(max_examples=60, deadline=None)
@given(group_classes=st.lists(st.tuples(st.sampled_from(["a", "b", "c", None]), st.integers(1, 6)), min_size=20,
                              max_size=80),
       weights=st.lists(st.integers(1, 20), min_size=1, max_size=4), seed=st.integers(0, 10**6))
def test_tolerance_holds_when_classes_come_in_groups(group_classes, weights, seed):
    # Patients with one class each (sizes 1-6): the greedy must track classes, not only split sizes.
    labels = np.array([label for label, size in group_classes for _ in range(size)], dtype=object)
    groups = np.array([group for group, (_, size) in enumerate(group_classes) for _ in range(size)])
    ratios = {name: weight / sum(weights) for name, weight in zip(SPLIT_NAMES, weights)}
    split = assign_splits(labels, groups, ratios, seed)
    _assert_within_tolerance(labels, groups, split, ratios)
    assert all(len(set(split[groups == group])) == 1 for group in range(len(group_classes)))


@settings(max_examples=60, deadline=None)
@given(n_classes=st.integers(1, 8), n=st.integers(1, 400), n_splits=st.integers(1, 4), seed=st.integers(0, 10**6),
       data=st.data())
def test_singletons_are_within_one_sample_of_every_target(n_classes, n, n_splits, seed, data):
    rng = np.random.default_rng(seed)
    labels = np.array([f"class{c}" for c in rng.zipf(1.5, n) % n_classes], dtype=object)
    weights = data.draw(st.lists(st.integers(1, 50), min_size=n_splits, max_size=n_splits))
    ratios = {name: weight / sum(weights) for name, weight in zip(SPLIT_NAMES, weights)}
    split = assign_splits(labels, np.arange(n), ratios, seed)
    for name, share in ratios.items():
        for klass in set(labels.tolist()):
            n_class = int((labels == klass).sum())
            assert abs(int(((labels == klass) & (split == name)).sum()) - share * n_class) <= 1 + 1e-9


@settings(max_examples=40, deadline=None)
@given(split_problems())
def test_same_seed_gives_the_same_split(problem):
    labels, near, leak, patient, ratios, seed = problem
    groups = build_groups(np.arange(len(labels)), near_duplicate_group=near, leak_partner_index=leak,
                          group_values=patient)
    first = assign_splits(labels, groups, ratios, seed)
    again = assign_splits(labels.copy(), groups.copy(), dict(ratios), seed)
    assert first.tolist() == again.tolist()


def test_different_seeds_give_different_splits():
    labels = _labels(("a", 60), ("b", 30), (None, 10))
    groups = np.arange(100) // 2
    splits = {tuple(assign_splits(labels, groups, TRAIN_VAL_TEST, seed)) for seed in range(10)}
    assert len(splits) == 10


def test_larger_groups_are_placed_and_kept_whole():
    labels = _labels(("a", 50), ("b", 50))
    groups = np.concatenate([np.zeros(20, dtype=int), np.arange(1, 81)])  # one group of 20 'a' samples
    split = assign_splits(labels, groups, TRAIN_VAL_TEST, seed=3)
    assert len(set(split[:20])) == 1
    _assert_within_tolerance(labels, groups, split, TRAIN_VAL_TEST)


# --------------------------------------------------------------------------------------
# assign_splits: corner cases and validation
# --------------------------------------------------------------------------------------

def test_two_samples():
    split = assign_splits(_labels(("a", 1), ("b", 1)), np.array([0, 1]), TRAIN_VAL_TEST, seed=0)
    assert split.tolist() == ["train", "train"]  # each class's val/test target is 0.1 of a sample


def test_one_class_splits_in_the_ratios():
    labels = _labels(("only", 100))
    split = assign_splits(labels, np.arange(100), TRAIN_VAL_TEST, seed=1)
    assert Counter(split.tolist()) == {"train": 80, "val": 10, "test": 10}


def test_a_class_of_one_sample_goes_to_the_largest_split():
    labels = _labels(("common", 50), ("rare", 1))
    split = assign_splits(labels, np.arange(51), TRAIN_VAL_TEST, seed=2)
    assert split[-1] == "train"
    assert Counter(split[:50].tolist()) == {"train": 40, "val": 5, "test": 5}


def test_unlabelled_samples_are_a_stratum_of_their_own():
    labels = _labels(("a", 20), (None, 20))
    split = assign_splits(labels, np.arange(40), {"train": 0.5, "test": 0.5}, seed=0)
    assert Counter(split[20:].tolist()) == {"train": 10, "test": 10}
    assert Counter(split[:20].tolist()) == {"train": 10, "test": 10}


def test_a_ratio_too_small_for_the_data_leaves_its_split_empty():
    labels = _labels(("a", 10))
    split = assign_splits(labels, np.arange(10), {"train": 0.98, "val": 0.01, "test": 0.01}, seed=0)
    assert split.tolist() == ["train"] * 10


def test_one_split_and_no_samples():
    assert assign_splits(_labels(("a", 3)), np.arange(3), {"all": 1.0}, seed=0).tolist() == ["all"] * 3
    assert assign_splits(np.array([], dtype=object), np.array([], dtype=int), TRAIN_VAL_TEST, seed=0).tolist() == []


@pytest.mark.parametrize("ratios, message", [
    ({"train": 0.8, "val": 0.1}, r"expected shares that sum to 1, got train=0.8, val=0.1 \(sum 0.9\)"),
    ({"train": 1.1, "val": -0.1}, r"expected a positive share for every split, got val=-0.1"),
    ({"train": 1.0, "val": 0.0}, r"expected a positive share for every split, got val=0"),
    ({}, r"expected at least one split with a positive share, got none"),
    ({"train": "most"}, r"expected a number for split 'train', got 'most'"),
    ({"": 1.0}, r"expected non-empty split names, got ''"),
])
def test_bad_ratios_say_what_arrived(ratios, message):
    with pytest.raises(ValueError, match=message):
        assign_splits(_labels(("a", 2)), np.arange(2), ratios, seed=0)


def test_ratios_within_the_sum_tolerance_are_accepted():
    split = assign_splits(_labels(("a", 3)), np.arange(3), {"train": 0.7, "test": 0.3 + 5e-7}, seed=0)
    assert set(split.tolist()) <= {"train", "test"}


def test_misshaped_inputs_are_refused():
    with pytest.raises(ValueError, match=r"groups: expected one group id per sample, shape \(3,\), got shape \(2,\)"):
        assign_splits(_labels(("a", 3)), np.arange(2), TRAIN_VAL_TEST, seed=0)
    with pytest.raises(ValueError, match="groups: expected integer group ids, got dtype float64"):
        assign_splits(_labels(("a", 3)), np.arange(3.0), TRAIN_VAL_TEST, seed=0)


# --------------------------------------------------------------------------------------
# build_groups
# --------------------------------------------------------------------------------------

def test_build_groups_joins_all_three_relations_transitively():
    near = np.array([7, 7, None, np.nan, -1, None, None, None], dtype=object)
    leak = np.array([-1, -1, 1, -1, -1, -1, -1, -1])  # 2 leaks into 1, which shares a near group with 0
    patient = np.array([None, None, None, None, "p1", "p1", "p2", None], dtype=object)
    groups = build_groups(list("abcdefgh"), near_duplicate_group=near, leak_partner_index=leak, group_values=patient)
    assert groups.tolist() == [0, 0, 0, 1, 2, 2, 3, 4]


def test_build_groups_without_relations_gives_singletons():
    assert build_groups(["x", "y", "z"]).tolist() == [0, 1, 2]
    assert build_groups([]).tolist() == []


def test_build_groups_refuses_bad_input():
    with pytest.raises(ValueError,
                       match=r"leak_partner_index: expected row indices in \[-1, 3\), got values from -1 to 5"):
        build_groups([1, 2, 3], leak_partner_index=np.array([-1, 5, 0]))
    with pytest.raises(ValueError,
                       match=r"group_values: expected one value per sample, shape \(3,\), got shape \(2,\)"):
        build_groups([1, 2, 3], group_values=["a", "b"])


# --------------------------------------------------------------------------------------
# Balancing
# --------------------------------------------------------------------------------------

def _train_val():
    # train: a 10, b 4, c 2, unlabelled 3; val: a 3
    labels = _labels(("a", 10), ("b", 4), ("c", 2), (None, 3), ("a", 3))
    split = np.array(["train"] * 19 + ["val"] * 3, dtype=object)
    return split, labels


def _counts(split, labels, name):
    return Counter(str(label) for s, label in zip(split, labels) if s == name)


def test_cap_limits_every_class_of_the_balanced_split_only():
    split, labels = _train_val()
    outcome = balance_assignment(split, labels, mode="cap", cap=3)
    assert _counts(outcome.split, labels, "train") == {"a": 3, "b": 3, "c": 2, "None": 3}
    assert _counts(outcome.split, labels, "val") == {"a": 3}
    assert Counter(r for r in outcome.dropped_reason if r) == {"balance: cap 3 per class": 8}
    assert all((s is None) == (r is not None) for s, r in zip(outcome.split, outcome.dropped_reason))
    assert outcome.class_weights is None


def test_cap_on_several_splits():
    split, labels = _train_val()
    outcome = balance_assignment(split, labels, mode="cap", cap=2, balance_splits=("train", "val"))
    assert _counts(outcome.split, labels, "val") == {"a": 2}
    assert _counts(outcome.split, labels, "train") == {"a": 2, "b": 2, "c": 2, "None": 3}


def test_undersample_to_the_smallest_class_or_a_target():
    split, labels = _train_val()
    smallest = balance_assignment(split, labels, mode="undersample")
    assert _counts(smallest.split, labels, "train") == {"a": 2, "b": 2, "c": 2, "None": 3}
    assert Counter(r for r in smallest.dropped_reason if r) == {"balance: undersample to 2 per class": 10}
    target = balance_assignment(split, labels, mode="undersample", target=3)
    assert _counts(target.split, labels, "train") == {"a": 3, "b": 3, "c": 2, "None": 3}


def test_weights_keep_everything_and_follow_the_balanced_formula():
    split, labels = _train_val()
    outcome = balance_assignment(split, labels, mode="weights")
    assert outcome.split.tolist() == split.tolist()
    # n_train = 16 labelled, 3 classes: 16 / (3 * n_c)
    assert outcome.class_weights == pytest.approx({"a": 16 / 30, "b": 16 / 12, "c": 16 / 6})


def test_dropping_prefers_marked_samples_then_is_seeded():
    labels = _labels(("a", 10))
    split = np.array(["train"] * 10, dtype=object)
    prefer = np.zeros(10, dtype=bool)
    prefer[[1, 4, 8]] = True
    outcome = balance_assignment(split, labels, mode="cap", cap=7, prefer_drop=prefer, seed=0)
    assert np.flatnonzero(outcome.split == None).tolist() == [1, 4, 8]  # noqa: E711
    def dropped_rows(seed):
        outcome = balance_assignment(split, labels, mode="cap", cap=5, prefer_drop=prefer, seed=seed)
        return tuple(np.flatnonzero(outcome.split == None))  # noqa: E711

    dropped = {seed: dropped_rows(seed) for seed in range(6)}
    assert all({1, 4, 8} <= set(rows) for rows in dropped.values())
    assert len(set(dropped.values())) > 1  # the two random drops depend on the seed
    assert dropped_rows(3) == dropped[3]


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "oversample"}, r"balance: unknown mode 'oversample'. Available: none, cap, undersample, weights"),
    ({"mode": "cap"}, r"cap: balance 'cap' needs a positive whole number of samples per class, got None"),
    ({"mode": "undersample", "target": 0},
     r"target: expected a positive whole number of samples per class or None, got 0"),
])
def test_balance_settings_are_validated(kwargs, message):
    split, labels = _train_val()
    with pytest.raises(ValueError, match=message):
        balance_assignment(split, labels, **kwargs)


# --------------------------------------------------------------------------------------
# parse_ratios and SplitConfig
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("0.8,0.1,0.1", (("train", 0.8), ("val", 0.1), ("test", 0.1))),
    ("0.7, 0.3", (("train", 0.7), ("test", 0.3))),
    ("1", (("train", 1.0),)),
    ("train=0.7,test=0.3", (("train", 0.7), ("test", 0.3))),
    (" train = 0.6 ; val=0.2, holdout=0.2 ", (("train", 0.6), ("val", 0.2), ("holdout", 0.2))),
])
def test_parse_ratios(text, expected):
    assert parse_ratios(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", r"expected text like '0.8,0.1,0.1' or 'train=0.7,test=0.3', got ''"),
    ("0.8,test=0.2", r"expected either all shares named \(train=0.8,...\) or none named, got '0.8,test=0.2'"),
    ("0.4,0.3,0.2,0.1", r"expected at most 3 bare shares \(train,val,test\), got 4"),
    ("80,10,10", r"expected shares that sum to 1, got train=80, val=10, test=10 \(sum 100\)"),
    ("0.8,lots", r"expected a number in 'lots'"),
    ("train=0.5,train=0.5", r"expected each split once, got train more than once"),
])
def test_parse_ratios_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_ratios(text)


def test_config_is_hashable_json_able_and_round_trips():
    config = SplitConfig(ratios={"train": 0.7, "test": 0.3}, group_field="patient", balance="cap", cap=5,
                         balance_splits=["train"])
    assert config.ratios == (("train", 0.7), ("test", 0.3))
    assert hash(config) == hash(SplitConfig.from_dict(json.loads(json.dumps(config.to_dict()))))
    assert SplitConfig.from_dict(config.to_dict()) == config
    assert SplitConfig(ratios=(("fit", 0.5), ("holdout", 0.5))).balance_splits == ("train",)  # unused without balancing


@pytest.mark.parametrize("kwargs, message", [
    ({"balance": "smote"}, r"balance: unknown mode 'smote'. Available: none, cap, undersample, weights"),
    ({"balance": "cap"}, r"cap: balance 'cap' needs a positive whole number"),
    ({"balance": "cap", "cap": 3, "balance_splits": ("training",)},
     r"balance_splits: unknown split 'training'. Available: train, val, test"),
    ({"ratios": (("fit", 0.5), ("holdout", 0.5)), "balance": "weights"},
     r"balance_splits: unknown split 'train'. Available: fit, holdout"),
    ({"ratios": (("train", 0.5),)}, r"ratios: expected shares that sum to 1, got train=0.5 \(sum 0.5\)"),
    ({"seed": 1.5}, r"seed: expected an integer, got 1.5"),
])
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SplitConfig(**kwargs)


# --------------------------------------------------------------------------------------
# FiftyOne: make_splits / write_splits / read_splits
# --------------------------------------------------------------------------------------

@pytest.fixture
def curated(embedded_dataset):
    """A clone of the 60-sample embedded dataset (10 classes x 6, in class order) with finder and
    user fields: near-duplicate groups of 3 (two within a class, one across three classes that
    also joins patients p1, p5 and p8), one leak pair (5, 50), 10 patients of 3 samples (rows
    15-44) and two removed samples (3, 33)."""
    from curation.decisions import record_decision

    dataset = embedded_dataset.clone()
    try:
        ids, paths = dataset.values(["id", "filepath"])
        near = [None] * 60
        for group, rows in enumerate([(0, 1, 2), (12, 13, 14), (20, 30, 40)]):
            for row in rows:
                near[row] = group
        dataset.set_values("near_duplicate_group", near)
        leak = [None] * 60
        leak[5] = paths[50]
        dataset.set_values("leak_filepath", leak)
        patients = [None] * 60
        for row in range(30):
            patients[row + 15] = f"p{row // 3}"
        dataset.set_values("patient", patients)
        record_decision(dataset, [ids[3], ids[33]], "remove", reason="blurry")
        yield dataset
    finally:
        dataset.delete()


def test_make_splits_keeps_groups_together_and_excludes_removed(curated):
    ids, paths, near, leak, patients = curated.values(["id", "filepath", "near_duplicate_group", "leak_filepath",
                                                       "patient"])
    result = make_splits(curated, "ground_truth", SplitConfig(ratios=(("train", 0.5), ("val", 0.25), ("test", 0.25)),
                                                              group_field="patient", seed=7))
    split = dict(zip(result.ids, result.split))
    assert result.ids == ids
    assert result.excluded_reason == {ids[3]: REMOVED_REASON, ids[33]: REMOVED_REASON}
    assert split[ids[3]] is None and split[ids[33]] is None
    assert sum(s is not None for s in result.split) == 58
    for values in (near, patients):
        for value in {v for v in values if v is not None}:
            assert len({split[i] for i, v in zip(ids, values) if v == value and split[i] is not None}) == 1
    assert split[ids[5]] == split[ids[50]]  # the leak pair
    # Kept samples: {0,1,2}, {12,13,14}, p1+p5+p8 joined by near group {20,30,40} (9), p0, p2, p3,
    # p4, p7, p9 (3 each), p6 without the removed 33 (2), the leak pair (2): 37 samples in 11
    # groups, and 21 singletons.
    assert (result.n_groups, result.largest_group) == (32, 9)

    table = result.distribution
    assert list(table.columns) == ["train", "val", "test", "excluded"]
    assert table.to_numpy().sum() == 60 and table["excluded"].sum() == 2
    assert table.loc[curated.values("ground_truth.label")[3], "excluded"] >= 1
    proportions = result.proportions()
    assert np.allclose(proportions.sum(axis=1), 1.0)
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["counts"] == {name: int(table[name].sum()) for name in ("train", "val", "test")}
    assert summary["excluded_reasons"] == {REMOVED_REASON: 2}
    assert summary["config"]["group_field"] == "patient"
    # The tolerance holds on the kept samples, with g_max the largest group.
    labels = curated.values("ground_truth.label")
    for name, share in result.config.ratios:
        for klass in set(labels):
            in_class = [i for i, label in zip(ids, labels) if label == klass and split[i] is not None]
            in_split = sum(split[i] == name for i in in_class)
            assert abs(in_split - share * len(in_class)) <= result.largest_group + 1


def test_make_splits_without_finder_fields_or_labels(embedded_dataset):
    dataset = embedded_dataset.clone()
    try:
        result = make_splits(dataset, None, SplitConfig(seed=1))
        assert result.n_groups == 60 and result.largest_group == 1
        assert result.distribution.index.tolist() == ["(unlabelled)"]
        assert result.counts() == {"train": 48, "val": 6, "test": 6}
        labelled = make_splits(dataset, "ground_truth", SplitConfig(seed=1))
        # 6 per class: 4.8 / 0.6 / 0.6 targets, each within one sample.
        assert (labelled.distribution["train"] >= 4).all() and (labelled.distribution["train"] <= 5).all()
    finally:
        dataset.delete()


def test_make_splits_balance_drops_near_duplicates_first(curated):
    from curation.finders.duplicates import suggest_keepers

    # One split, so every class is in "train": 6 samples (5 where one was removed), cap 3 drops
    # 2 or 3 per class, and no class holds more than 2 non-keepers: all of them must go.
    result = make_splits(curated, "ground_truth", SplitConfig(ratios=(("train", 1.0),), balance="cap", cap=3, seed=0))
    reasons = Counter(result.excluded_reason.values())
    assert reasons == {REMOVED_REASON: 2, "balance: cap 3 per class": 58 - 30}
    assert (result.distribution["train"] == 3).all()
    ids, paths, labels, near = curated.values(["id", "filepath", "ground_truth.label", "near_duplicate_group"])
    codes = np.array([-1 if g is None else g for g in near])
    keepers = suggest_keepers(codes, np.array(paths, dtype=object), np.array(labels, dtype=object))
    non_keepers = {ids[row] for row in np.flatnonzero((codes >= 0) & ~keepers)}
    assert len(non_keepers) == 6
    assert all(result.excluded_reason.get(i) == "balance: cap 3 per class" for i in non_keepers)

    weights = make_splits(curated, "ground_truth", SplitConfig(balance="weights"))
    train_counts = weights.distribution["train"]
    assert weights.class_weights == pytest.approx(
        {name: train_counts.sum() / (len(train_counts) * n) for name, n in train_counts.items()})
    assert all(s is not None for i, s in zip(weights.ids, weights.split) if i not in weights.excluded_reason)


def test_make_splits_names_missing_fields(curated):
    with pytest.raises(ValueError, match=r"group_field: field 'subject' does not exist on dataset .*"
                                         r"Available fields: .*filepath.*patient"):
        make_splits(curated, "ground_truth", SplitConfig(group_field="subject"))
    with pytest.raises(ValueError, match=r"label_field: field 'labels' does not exist .*ground_truth"):
        make_splits(curated, "labels", SplitConfig())


def test_write_and_read_splits_with_tags_and_info(curated):
    from curation.datasets import curation_info

    result = make_splits(curated, "ground_truth", SplitConfig(group_field="patient", seed=3))
    written = write_splits(curated, result, tags=True)
    assert written == 58
    assert read_splits(curated) == dict(zip(result.ids, result.split))
    record = curation_info(curated)["splits"]["curation_split"]
    assert record["counts"] == result.counts() and record["tags"] is True
    assert record["config"] == result.config.to_dict()
    tag_counts = curated.count_sample_tags()
    assert {name: tag_counts.get(name, 0) for name in ("train", "val", "test")} == result.counts()

    # A second split with other names replaces the earlier curation tags instead of adding to them.
    again = make_splits(curated, "ground_truth", SplitConfig(ratios=(("fit", 0.5), ("holdout", 0.5)), seed=4))
    write_splits(curated, again, tags=True)
    tag_counts = curated.count_sample_tags()
    assert not {"train", "val", "test"} & set(tag_counts)
    assert {name: tag_counts.get(name, 0) for name in ("fit", "holdout")} == again.counts()
    # Without tags only the field and the record change; another field keeps its own record.
    write_splits(curated, result, field="split_v1")
    info = curation_info(curated)["splits"]
    assert set(info) == {"curation_split", "split_v1"} and info["split_v1"]["tags"] is False
    assert read_splits(curated, "split_v1") == dict(zip(result.ids, result.split))
    assert set(curated.count_sample_tags()) == {"fit", "holdout"}
    # A sample added after the split was made gets None, not a stale value.
    import fiftyone as fo

    new_id = curated.add_sample(fo.Sample(filepath=curated.first().filepath))
    write_splits(curated, again, field="curation_split")
    assert read_splits(curated)[new_id] is None


def test_write_and_read_splits_refuse_bad_fields(curated):
    result = make_splits(curated, "ground_truth", SplitConfig())
    with pytest.raises(ValueError, match=r"field: 'ground_truth' already exists on dataset .* as a "
                                         r"EmbeddedDocumentField; expected a string field or a new name"):
        write_splits(curated, result, field="ground_truth")
    with pytest.raises(ValueError, match=r"field: field 'nothing_here' does not exist on dataset .*Available fields"):
        read_splits(curated, "nothing_here")
