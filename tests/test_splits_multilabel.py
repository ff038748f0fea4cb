"""Splits of detection datasets: images stratified by the classes of their boxes
(curation.splits.assign_multilabel_splits, and make_splits / `curation split` on a
Detections field).

The tolerance under test (stated in ``assign_multilabel_splits``; measured, not proven):
for every class c and split s, |boxes(s, c) - r_s * boxes(c)| <= m_c + 1, with m_c the most
boxes of c in one group (a group: the images that must share a split). Before these tests
were settled it held in 16,000 examples of ``detection_problems()`` (groups of up to 3
classes) and 8,000 of the wide variant (up to 8 classes per group, 8 images, 6 boxes of a
class per image). No algorithm can promise it where groups hold many classes (keeping one
class on target can force another off), so the wide tests assert 2 m_c + 1, a margin over
what was measured, and the narrow one m_c + 1.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import sparse

from curation.splits import (
    NO_BOXES, REMOVED_REASON, SplitConfig, assign_multilabel_splits, build_groups, make_splits, read_splits,
    write_splits,
)

SPLIT_NAMES = ("train", "val", "test", "holdout")
TRAIN_VAL_TEST = {"train": 0.8, "val": 0.1, "test": 0.1}


def _group_index(groups) -> np.ndarray:
    return np.unique(np.asarray(groups), return_inverse=True)[1].ravel()


def _box_errors(counts: np.ndarray, split: np.ndarray, ratios: dict[str, float]) -> np.ndarray:
    """(S, K) boxes per split and class minus their targets."""
    totals = counts.sum(axis=0)
    return np.array([counts[split == name].sum(axis=0) - share * totals for name, share in ratios.items()])


def _presence_errors(counts: np.ndarray, split: np.ndarray, ratios: dict[str, float]) -> np.ndarray:
    """(S, K) images containing each class per split minus their targets."""
    return _box_errors((counts > 0).astype(np.int64), split, ratios)


def _largest_group_counts(counts: np.ndarray, groups) -> np.ndarray:
    """m_c: the most boxes of each class in one group."""
    index = _group_index(groups)
    per_group = np.zeros((index.max() + 1, counts.shape[1]), dtype=np.int64)
    np.add.at(per_group, index, counts)
    return per_group.max(axis=0)


def _assert_groups_whole(groups, split) -> None:
    index = _group_index(groups)
    for group in range(index.max() + 1 if len(index) else 0):
        assert len(set(split[index == group].tolist())) == 1, f"group {group} spans {set(split[index == group])}"


def _assert_within(counts, groups, split, ratios, slope: int) -> None:
    largest = _largest_group_counts(counts, groups)
    errors = _box_errors(counts, split, ratios)
    for (s, name), klass in ((pair, klass) for pair in enumerate(ratios) for klass in range(counts.shape[1])):
        bound = slope * largest[klass] + 1
        assert abs(errors[s, klass]) <= bound + 1e-9, (
            f"class {klass} in {name!r}: {counts[split == name, klass].sum()} boxes, target "
            f"{ratios[name] * counts[:, klass].sum():.2f}, bound {bound}")


@st.composite
def detection_problems(draw, max_classes_per_group: int = 3, max_group: int = 4, max_count: int = 4):
    """Box counts per image (groups of images share a pool of classes, as the frames of one
    video or the photos of one scene do; some images have no boxes), group ids in shuffled
    order, ratios over 1-4 splits and a seed."""
    n_classes = draw(st.integers(1, 6))
    n_groups = draw(st.integers(1, 25))
    rows: list[list[int]] = []
    groups: list[int] = []
    for group in range(n_groups):
        pool = draw(st.lists(st.integers(0, n_classes - 1), max_size=max_classes_per_group, unique=True))
        for _ in range(draw(st.integers(1, max_group))):
            row = [0] * n_classes
            for klass in pool:
                row[klass] = draw(st.integers(0, max_count))
            rows.append(row)
            groups.append(group)
    order = draw(st.permutations(range(len(rows))))
    counts = np.array(rows, dtype=np.int64)[list(order)]
    weights = draw(st.lists(st.integers(1, 20), min_size=1, max_size=len(SPLIT_NAMES)))
    ratios = {name: weight / sum(weights) for name, weight in zip(SPLIT_NAMES, weights)}
    return counts, np.array(groups)[list(order)], ratios, draw(st.integers(0, 2**32 - 1))


# --------------------------------------------------------------------------------------
# Property tests: assign_multilabel_splits
# --------------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(detection_problems())
def test_boxes_per_class_within_the_stated_tolerance_and_groups_whole(problem):
    counts, groups, ratios, seed = problem
    split = assign_multilabel_splits(counts, groups, ratios, seed)
    assert split.shape == (len(counts),) and set(split.tolist()) <= set(ratios)
    _assert_groups_whole(groups, split)
    _assert_within(counts, groups, split, ratios, slope=1)


@settings(max_examples=60, deadline=None)
@given(detection_problems(max_classes_per_group=8, max_group=8, max_count=6))
def test_many_classes_per_group_stay_within_the_looser_bound(problem):
    counts, groups, ratios, seed = problem
    split = assign_multilabel_splits(counts, groups, ratios, seed)
    _assert_groups_whole(groups, split)
    _assert_within(counts, groups, split, ratios, slope=2)


@settings(max_examples=40, deadline=None)
@given(detection_problems())
def test_same_seed_gives_the_same_split_and_sparse_input_the_same_as_dense(problem):
    counts, groups, ratios, seed = problem
    first = assign_multilabel_splits(counts, groups, ratios, seed)
    assert assign_multilabel_splits(counts.copy(), groups.copy(), dict(ratios), seed).tolist() == first.tolist()
    assert assign_multilabel_splits(sparse.csr_matrix(counts), groups, ratios, seed).tolist() == first.tolist()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_finder_groups_leak_pairs_and_group_field_never_span_two_splits(data):
    counts, _, ratios, seed = data.draw(detection_problems())
    n = len(counts)
    maybe = lambda high: st.one_of(st.none(), st.none(), st.integers(0, high))  # noqa: E731
    near = np.array(data.draw(st.lists(maybe(max(1, n // 3)), min_size=n, max_size=n)), dtype=object)
    leak = np.array(data.draw(st.lists(st.one_of(st.just(-1), st.just(-1), st.integers(0, n - 1)), min_size=n,
                                       max_size=n)))
    video = np.array(data.draw(st.lists(maybe(max(1, n // 2)), min_size=n, max_size=n)), dtype=object)
    groups = build_groups(np.arange(n), near_duplicate_group=near, leak_partner_index=leak, group_values=video)
    split = assign_multilabel_splits(counts, groups, ratios, seed)
    for values in (near, video):
        for value in {v for v in values.tolist() if v is not None}:
            assert len(set(split[values == value].tolist())) == 1
    for row, partner in enumerate(leak):
        if partner >= 0:
            assert split[row] == split[partner]
    _assert_within(counts, groups, split, ratios, slope=2)


# --------------------------------------------------------------------------------------
# Against random group assignment
# --------------------------------------------------------------------------------------

def _detection_like(seed: int, n_images: int = 600, n_classes: int = 15, max_group: int = 5):
    """Zipf-like class frequencies, 0-3 classes per image with 1+ boxes each, groups of 1-5."""
    rng = np.random.default_rng(seed)
    frequency = 1.0 / np.arange(1, n_classes + 1)
    frequency /= frequency.sum()
    counts = np.zeros((n_images, n_classes), dtype=np.int64)
    for row in range(n_images):
        for klass in rng.choice(n_classes, size=rng.integers(0, 4), p=frequency):
            counts[row, klass] += 1 + rng.poisson(1.0)
    groups = rng.permutation(np.repeat(np.arange(n_images), rng.integers(1, max_group + 1, n_images))[:n_images])
    return counts, groups


def _random_group_assignment(groups, ratios: dict[str, float], seed: int) -> np.ndarray:
    """The baseline: groups in random order, cut into splits by their images' running count."""
    index = _group_index(groups)
    sizes = np.bincount(index)
    order = np.random.default_rng(seed).permutation(len(sizes))
    middle = np.cumsum(sizes[order]) - sizes[order] / 2
    bounds = np.cumsum(list(ratios.values())) * sizes.sum()
    group_split = np.empty(len(sizes), dtype=np.int64)
    group_split[order] = np.minimum(np.searchsorted(bounds, middle), len(ratios) - 1)
    return np.array(list(ratios), dtype=object)[group_split[index]]


def test_much_closer_to_the_targets_than_random_group_assignment():
    # Measured on these 10 problems (600 images in ~200 groups of 1-5, ~1,800 boxes, 15
    # classes): mean |boxes - target| per class and split 0.64 stratified vs 4.07 random;
    # images containing the class 0.72 vs 1.70; largest error relative to m_c + 1: 0.45 vs 1.96.
    box, box_random, seen, seen_random, worst, worst_random = [], [], [], [], [], []
    for seed in range(10):
        counts, groups = _detection_like(seed)
        largest = _largest_group_counts(counts, groups)
        stratified = assign_multilabel_splits(counts, groups, TRAIN_VAL_TEST, seed)
        baseline = _random_group_assignment(groups, TRAIN_VAL_TEST, seed)
        _assert_groups_whole(groups, stratified)
        box.append(np.abs(_box_errors(counts, stratified, TRAIN_VAL_TEST)).mean())
        box_random.append(np.abs(_box_errors(counts, baseline, TRAIN_VAL_TEST)).mean())
        seen.append(np.abs(_presence_errors(counts, stratified, TRAIN_VAL_TEST)).mean())
        seen_random.append(np.abs(_presence_errors(counts, baseline, TRAIN_VAL_TEST)).mean())
        worst.append((np.abs(_box_errors(counts, stratified, TRAIN_VAL_TEST)) / (largest + 1)).max())
        worst_random.append((np.abs(_box_errors(counts, baseline, TRAIN_VAL_TEST)) / (largest + 1)).max())
    assert np.mean(box) < 0.3 * np.mean(box_random), (np.mean(box), np.mean(box_random))
    assert np.mean(seen) < 0.6 * np.mean(seen_random), (np.mean(seen), np.mean(seen_random))
    assert max(worst) <= 1.0 < max(worst_random), (max(worst), max(worst_random))


def test_images_per_split_follow_the_ratios():
    counts, groups = _detection_like(3, n_images=1000, max_group=1)
    split = assign_multilabel_splits(counts, groups, TRAIN_VAL_TEST, seed=3)
    sizes = {name: int((split == name).sum()) for name in TRAIN_VAL_TEST}
    assert all(abs(sizes[name] - share * 1000) <= 2 for name, share in TRAIN_VAL_TEST.items()), sizes


# --------------------------------------------------------------------------------------
# Corner cases and validation
# --------------------------------------------------------------------------------------

def test_images_without_boxes_fill_the_splits_by_image_count():
    split = assign_multilabel_splits(np.zeros((20, 3), dtype=np.int64), np.arange(20), TRAIN_VAL_TEST, seed=0)
    assert {name: int((split == name).sum()) for name in TRAIN_VAL_TEST} == {"train": 16, "val": 2, "test": 2}
    no_classes = assign_multilabel_splits(np.zeros((10, 0), dtype=np.int64), np.arange(10), {"a": 0.5, "b": 0.5}, 1)
    assert sorted(no_classes.tolist()) == ["a"] * 5 + ["b"] * 5


def test_images_without_boxes_beside_boxed_ones():
    counts = np.zeros((100, 2), dtype=np.int64)
    counts[:50, 0] = 2  # 50 images with two boxes of class 0, 50 with none
    counts[:50:10, 1] = 1  # five of them also hold one box of class 1
    split = assign_multilabel_splits(counts, np.arange(100), {"train": 0.6, "test": 0.4}, seed=5)
    empty = counts.sum(axis=1) == 0
    assert int((split[empty] == "train").sum()) == 30 and int((split[~empty] == "train").sum()) == 30
    assert _box_errors(counts, split, {"train": 0.6, "test": 0.4}).tolist() == [[0, 0], [0, 0]]


def test_a_class_present_in_a_single_image_goes_to_the_largest_split():
    counts = np.zeros((51, 2), dtype=np.int64)
    counts[:50, 0] = 1
    counts[50, 1] = 3  # the rare class: three boxes in one image
    split = assign_multilabel_splits(counts, np.arange(51), TRAIN_VAL_TEST, seed=2)
    assert split[50] == "train"
    assert {name: int((split[:50] == name).sum()) for name in TRAIN_VAL_TEST} == {"train": 40, "val": 5, "test": 5}


def test_one_split_no_samples_and_one_image():
    assert assign_multilabel_splits(np.ones((3, 2), dtype=np.int64), np.arange(3), {"all": 1.0}, 0).tolist() == \
        ["all"] * 3
    assert assign_multilabel_splits(np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64),
                                    TRAIN_VAL_TEST, 0).tolist() == []
    assert assign_multilabel_splits(np.array([[4, 1]]), np.array([0]), TRAIN_VAL_TEST, 0).tolist() == ["train"]


def test_different_seeds_give_different_splits():
    counts, groups = _detection_like(1, n_images=200)
    assert len({tuple(assign_multilabel_splits(counts, groups, TRAIN_VAL_TEST, seed)) for seed in range(6)}) == 6


@pytest.mark.parametrize("counts, groups, message", [
    (np.ones(3, dtype=np.int64), np.arange(3),
     r"class_counts: expected a 2-D array \(samples, classes\), got shape \(3,\)"),
    (np.ones((3, 2)), np.arange(3), r"class_counts: expected integer counts, got dtype float64"),
    (-np.ones((3, 2), dtype=np.int64), np.arange(3), r"class_counts: expected counts of zero or more, got -1"),
    (np.ones((3, 2), dtype=np.int64), np.arange(2),
     r"groups: expected one group id per sample, shape \(3,\), got shape \(2,\)"),
    (np.ones((3, 2), dtype=np.int64), np.arange(3.0), r"groups: expected integer group ids, got dtype float64"),
])
def test_bad_input_says_what_arrived(counts, groups, message):
    with pytest.raises(ValueError, match=message):
        assign_multilabel_splits(counts, groups, TRAIN_VAL_TEST, seed=0)


def test_bad_ratios_are_refused_as_for_single_labels():
    with pytest.raises(ValueError, match=r"expected shares that sum to 1, got train=0.8, val=0.1 \(sum 0.9\)"):
        assign_multilabel_splits(np.ones((2, 1), dtype=np.int64), np.arange(2), {"train": 0.8, "val": 0.1}, seed=0)


# --------------------------------------------------------------------------------------
# FiftyOne: make_splits on a Detections field, the command line, the Export page
# --------------------------------------------------------------------------------------

CLASSES = ("car", "person", "dog", "bicycle")


@pytest.fixture
def boxes_dataset(embedded_dataset):
    """A clone of the 60-sample dataset with a Detections field ``boxes``: rows 0-47 hold 1-4
    boxes of up to three classes (bicycle rare), rows 48-53 hold none, rows 54-59 have no
    field at all; row 10 alone holds a "kite"; 12 videos of 3 frames (rows 0-35) in
    ``video``; a near-duplicate group (40, 41, 42); row 59 decided "remove"."""
    import fiftyone as fo

    from curation.decisions import record_decision

    dataset = embedded_dataset.clone()
    try:
        rng = np.random.default_rng(7)
        boxes = []
        for row in range(60):
            if row >= 54:
                boxes.append(None)
                continue
            labels = [] if row >= 48 else list(rng.choice(CLASSES, size=rng.integers(1, 5), p=[0.45, 0.3, 0.2, 0.05]))
            if row == 10:
                labels.append("kite")
            boxes.append(fo.Detections(detections=[
                fo.Detection(label=str(label), bounding_box=[0.1 * (i % 5), 0.1, 0.2, 0.3])
                for i, label in enumerate(labels)]))
        dataset.set_values("boxes", boxes)
        dataset.set_values("video", [f"v{row // 3}" if row < 36 else None for row in range(60)])
        dataset.set_values("near_duplicate_group", [0 if row in (40, 41, 42) else None for row in range(60)])
        record_decision(dataset, [dataset.values("id")[59]], "remove", reason="blurry")
        yield dataset
    finally:
        dataset.delete()


def _expected_tables(dataset, result):
    labels = dataset.values("boxes.detections.label")
    split = dict(zip(result.ids, result.split))
    boxes, images = {}, {}
    for sample_id, names in zip(dataset.values("id"), labels):
        column = split[sample_id] or "excluded"
        for name in names or ():
            boxes[(name, column)] = boxes.get((name, column), 0) + 1
        for name in set(names or ()) or {NO_BOXES}:
            images[(name, column)] = images.get((name, column), 0) + 1
    return boxes, images


def test_make_splits_on_a_detections_field(boxes_dataset):
    ids, videos = boxes_dataset.values(["id", "video"])
    config = SplitConfig(group_field="video", seed=4)
    result = make_splits(boxes_dataset, "boxes", config)
    split = dict(zip(result.ids, result.split))
    assert result.ids == ids and result.label_field == "boxes"
    assert result.excluded_reason == {ids[59]: REMOVED_REASON} and split[ids[59]] is None
    for video in {v for v in videos if v is not None}:
        assert len({split[i] for i, v in zip(ids, videos) if v == video}) == 1
    assert len({split[ids[row]] for row in (40, 41, 42)}) == 1
    # 12 videos of 3, the near-duplicate group of 3 and 20 single images: 33 groups, 59 samples.
    assert (result.n_groups, result.largest_group) == (33, 3)

    table, images = result.distribution, result.image_distribution
    assert table.index.tolist() == sorted([*CLASSES, "kite"]) and table.columns.name == "boxes"
    assert images.index.tolist() == [*sorted([*CLASSES, "kite"]), NO_BOXES] and images.columns.name == "images"
    assert list(table.columns) == list(images.columns) == ["train", "val", "test", "excluded"]
    expected_boxes, expected_images = _expected_tables(boxes_dataset, result)
    assert {(c, s): n for (c, s), n in table.stack().items() if n} == expected_boxes
    assert {(c, s): n for (c, s), n in images.stack().items() if n} == expected_images
    assert images.loc[NO_BOXES].sum() == 12  # six empty Detections, six samples without the field
    assert table.loc["kite", "train"] == 1  # the class of a single image goes to the largest split
    assert result.counts() == {name: sum(s == name for s in result.split) for name in ("train", "val", "test")}
    assert sum(result.counts().values()) == 59 and result.excluded_count() == 1
    kept = [row for row in range(60) if row != 59]
    labels = boxes_dataset.values("boxes.detections.label")
    counts = np.array([[sum(label == name for label in (labels[row] or ())) for name in table.index] for row in kept])
    kept_split = np.array([split[ids[row]] for row in kept], dtype=object)
    group_ids = [videos[row] or (0 if row in (40, 41, 42) else f"single{row}") for row in kept]
    _assert_within(counts, np.unique(np.array(group_ids, dtype=str), return_inverse=True)[1], kept_split,
                   dict(config.ratios), slope=1)

    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["by_class_counts"] == "boxes" and summary["excluded"] == 1
    assert summary["by_class_images"][NO_BOXES] == {name: int(n) for name, n in images.loc[NO_BOXES].items()}
    assert summary["counts"] == result.counts()
    assert make_splits(boxes_dataset, "boxes", config).split == result.split  # same seed, same split
    assert make_splits(boxes_dataset, "ground_truth", config).image_distribution is None  # classification as before


def test_detections_weights_come_from_boxes_and_caps_are_refused(boxes_dataset):
    result = make_splits(boxes_dataset, "boxes", SplitConfig(balance="weights", seed=1))
    train = result.distribution["train"]
    train = train[train > 0]
    assert result.class_weights == pytest.approx({name: train.sum() / (len(train) * n) for name, n in train.items()})
    assert all(s is not None for i, s in zip(result.ids, result.split) if i not in result.excluded_reason)
    for mode, extra in (("cap", {"cap": 5}), ("undersample", {})):
        with pytest.raises(ValueError, match=rf"balance '{mode}': not available for the Detections field 'boxes': it "
                                             r"drops whole images .* use balance 'none', or 'weights'"):
            make_splits(boxes_dataset, "boxes", SplitConfig(balance=mode, **extra))


def test_a_label_field_of_another_kind_is_refused(boxes_dataset):
    with pytest.raises(ValueError, match=r"label_field 'video': expected a Classification field \(one class per "
                                         r"sample\) or a Detections field \(boxes, split by their classes\), got a "
                                         r"StringField"):
        make_splits(boxes_dataset, "video")


def test_boxes_without_a_label_are_a_class_of_their_own(fresh_name):
    import fiftyone as fo

    dataset = fo.Dataset(fresh_name)
    dataset.add_samples([fo.Sample(filepath=f"/nonexistent/{row}.png", boxes=fo.Detections(detections=[
        fo.Detection(label=None if row % 4 == 0 else "car", bounding_box=[0.1, 0.1, 0.2, 0.2])]))
        for row in range(20)])
    result = make_splits(dataset, "boxes", SplitConfig(ratios=(("train", 0.5), ("test", 0.5)), balance="weights"))
    assert result.distribution.index.tolist() == ["car", "(unlabelled)"]
    table = result.distribution[["train", "test"]]
    assert table.sum(axis=1).tolist() == [15, 5] and (abs(table["train"] - table["test"]) <= 1).all(), table
    assert list(result.class_weights) == ["car"]  # unlabelled boxes get no weight


def test_write_and_read_a_detections_split(boxes_dataset):
    from curation.datasets import curation_info

    result = make_splits(boxes_dataset, "boxes", SplitConfig(seed=2))
    assert write_splits(boxes_dataset, result, tags=True) == 59
    assert read_splits(boxes_dataset) == dict(zip(result.ids, result.split))
    record = curation_info(boxes_dataset)["splits"]["curation_split"]
    assert record["counts"] == result.counts() and record["by_class_counts"] == "boxes"


def test_cli_split_on_a_detections_field(boxes_dataset, capsys):
    from curation.cli import main

    argv = ["split", "--dataset", boxes_dataset.name, "--label-field", "boxes", "--group-field", "video", "--seed", "4"]
    assert main([*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert not boxes_dataset.has_sample_field("curation_split")
    expected = make_splits(boxes_dataset, "boxes", SplitConfig(group_field="video", seed=4))
    assert expected.distribution.to_string() in printed and expected.image_distribution.to_string() in printed
    counts = ", ".join(f"{name} {n}" for name, n in expected.counts().items())
    assert f"would write split to field 'curation_split': {counts}; excluded 1; 33 groups (largest 3)" in printed

    assert main([*argv, "--tags"]) == 0
    assert "wrote split to field 'curation_split'" in capsys.readouterr().out
    assert read_splits(boxes_dataset) == dict(zip(expected.ids, expected.split))
    tags = boxes_dataset.count_sample_tags()
    assert {name: tags.get(name, 0) for name in ("train", "val", "test")} == expected.counts()

    assert main(["split", "--dataset", boxes_dataset.name, "--label-field", "boxes", "--balance", "cap", "--cap",
                 "2"]) == 1
    error = capsys.readouterr().err
    assert "balance 'cap': not available for the Detections field 'boxes'" in error
    assert main(["split", "--dataset", boxes_dataset.name, "--label-field", "video"]) != 0
    assert "--label-field 'video' is not a classification or detections field" in capsys.readouterr().err


def test_export_page_previews_a_detections_split(boxes_dataset, monkeypatch, tmp_path):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    boxes_dataset.persistent = True
    monkeypatch.setenv("CURATION_DATASET", boxes_dataset.name)
    monkeypatch.setenv("CURATION_NO_DEMO", "1")
    monkeypatch.setenv("CURATION_EXPORT_DIR", str(tmp_path / "exports"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/export.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="sp_labels").select("boxes").run()
    at.number_input(key="sp_seed").set_value(4).run()
    at.selectbox(key="sp_group").select("video").run()
    next(b for b in at.button if b.label == "Preview split").click().run()
    assert not at.exception, [e.value for e in at.exception]
    expected = make_splits(boxes_dataset, "boxes", SplitConfig(group_field="video", seed=4))
    boxes, images = at.dataframe[0].value, at.dataframe[1].value
    assert boxes.to_numpy().tolist() == expected.distribution.to_numpy().tolist()
    assert images.to_numpy().tolist() == expected.image_distribution.to_numpy().tolist()
    shown = " ".join(m.value for m in at.markdown)
    assert " · ".join(f"**{name}** {n:,}" for name, n in expected.counts().items()) + " · excluded 1" in shown
    # Back to the classification field: the detections preview no longer shows.
    at.selectbox(key="sp_labels").select("ground_truth").run()
    assert any("Settings changed" in c.value for c in at.caption)
