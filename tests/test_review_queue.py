"""The one review queue: every finder's flags merged, ranked, filtered, and emptied by decisions."""

from __future__ import annotations

import pytest

from curation.review import QUEUE_FINDERS, QUEUE_WEIGHTS, QueueFilter, review_queue


@pytest.fixture(scope="module")
def analysed(embedded_dataset):
    from curation.analysis import analyze

    dataset = embedded_dataset.clone()
    ids = dataset.values("id")
    dataset.set_values("split", ["train" if i % 2 else "test" for i in range(len(ids))])
    analyze(dataset)
    yield dataset
    dataset.delete()


def test_queue_holds_exactly_the_flagged_samples_ranked_by_priority(analysed):
    from curation.analysis import FLAG_FIELDS

    queue = review_queue(analysed, "ground_truth")
    flagged = {name: set(analysed.match({FLAG_FIELDS[name]: True}).values("id")) for name in QUEUE_FINDERS}
    assert set(queue["id"]) == set().union(*flagged.values()) and len(queue) == queue["id"].nunique()
    assert queue["priority"].is_monotonic_decreasing and queue["priority"].between(0, 1).all()
    for row in queue.itertuples():
        assert set(row.finders) == {name for name, ids in flagged.items() if row.id in ids}
        assert row.reason  # every row says why in words
    assert flagged["outliers"]


def test_agreeing_finders_rank_above_either_alone(analysed):
    queue = review_queue(analysed, "ground_truth")
    for row in queue.itertuples():
        scores = {"mislabels": row.mislabel_score, "duplicates": row.duplicate_score,
                  "leakage": row.leak_score, "outliers": row.outlier_score, "label_next": row.uncertainty_score}
        used = [QUEUE_WEIGHTS[name] * min(max(scores[name] or 0.0, 0.0), 1.0) for name in row.finders]
        assert row.priority >= max(used) - 1e-9
        if sum(u > 0 for u in used) > 1:
            assert row.priority > max(used)
    label_next_only = queue[queue["finders"].map(lambda f: f == ["label_next"])]
    assert (label_next_only["priority"] <= 0.5).all()  # advice alone never outranks a confident finding


def test_filters_by_finder_class_tag_ids_and_score(analysed):
    queue = review_queue(analysed, "ground_truth")
    outliers = review_queue(analysed, "ground_truth", QueueFilter(finders=("outliers",)))
    assert len(outliers) and all(f == ["outliers"] for f in outliers["finders"])
    some = queue["id"].iloc[:3].tolist()
    assert set(review_queue(analysed, "ground_truth", QueueFilter(ids=tuple(some)))["id"]) == set(some)
    label = queue["label"].iloc[0]
    assert set(review_queue(analysed, "ground_truth", QueueFilter(classes=(label,)))["label"]) == {label}
    analysed.select(some[:1]).tag_samples("look")
    try:
        assert review_queue(analysed, "ground_truth", QueueFilter(tags=("look",)))["id"].tolist() == some[:1]
    finally:
        analysed.untag_samples("look")
    high = review_queue(analysed, "ground_truth", QueueFilter(min_priority=0.5))
    assert (high["priority"] >= 0.5).all()
    with pytest.raises(ValueError, match="unknown finder 'blur'. Available: mislabels, duplicates"):
        review_queue(analysed, "ground_truth", QueueFilter(finders=("blur",)))


def test_decided_samples_leave_the_queue_and_undo_brings_them_back(analysed):
    from curation.decisions import record_decision, undo_decision

    queue = review_queue(analysed, "ground_truth")
    first = queue["id"].iloc[0]
    record_decision(analysed, [first], "keep", reason="fine")
    assert first not in set(review_queue(analysed, "ground_truth")["id"])
    assert first in set(review_queue(analysed, "ground_truth", QueueFilter(include_decided=True))["id"])
    undo_decision(analysed, [first])
    assert review_queue(analysed, "ground_truth")["id"].iloc[0] == first


def test_queue_is_empty_before_any_finder_ran(embedded_dataset):
    from curation.analysis import FLAG_FIELDS

    dataset = embedded_dataset.clone()
    try:
        for field in FLAG_FIELDS.values():  # other tests may have analysed the shared dataset
            if dataset.has_sample_field(field):
                dataset.delete_sample_field(field)
        assert review_queue(dataset, "ground_truth").empty
    finally:
        dataset.delete()


def test_curation_status_counts_findings_decisions_and_splits(analysed):
    from curation.decisions import clear_decision, record_decision
    from curation.review import curation_status
    from curation.splits import SplitConfig, make_splits, write_splits

    queue = review_queue(analysed, "ground_truth")
    first = queue["id"].iloc[:2].tolist()
    record_decision(analysed, first, "remove", reason="test")
    write_splits(analysed, make_splits(analysed, "ground_truth", SplitConfig(seed=1)), field="status_split")
    try:
        status = curation_status(analysed)
        assert status.analysed_at and status.to_review == len(queue) - 2
        assert status.decisions == {"remove": 2}
        assert status.flagged["outliers"] == len(analysed.match({"outlier_flag": True}))
        assert sum(status.splits["status_split"].values()) == len(analysed) - 2
    finally:
        clear_decision(analysed, first)
