"""Decisions stored on FiftyOne samples."""

from __future__ import annotations

import pytest

from curation.decisions import clear_decision, decisions_for, record_decision


def test_decisions_are_stored_with_reason_source_and_time(embedded_dataset):
    ids = embedded_dataset.take(3, seed=1).values("id")
    assert record_decision(embedded_dataset, ids[:2], "remove", reason="blurry copy", source="duplicates") == 2
    embedded_dataset.reload()
    sample = embedded_dataset[ids[0]]
    assert (sample["decision"], sample["decision_reason"], sample["decision_source"]) == ("remove", "blurry copy", "duplicates")
    assert sample["decision_at"].endswith("+00:00")
    assert decisions_for(embedded_dataset, ids) == {ids[0]: "remove", ids[1]: "remove", ids[2]: None}
    clear_decision(embedded_dataset, ids)
    assert set(decisions_for(embedded_dataset, ids).values()) == {None}


def test_unknown_decision_lists_the_valid_ones(embedded_dataset):
    with pytest.raises(ValueError, match="unknown decision 'delete'. Available: keep, remove, relabel, annotate, dismiss"):
        record_decision(embedded_dataset, [embedded_dataset.first().id], "delete")


def test_relabel_keeps_the_original_label_across_relabels(small_class_tree, fresh_name):
    from curation.datasets import load_dataset
    from curation.decisions import apply_relabel
    from curation.importers import import_dataset

    import_dataset(small_class_tree / "bag", fresh_name, format="images")
    dataset = load_dataset(fresh_name)
    import fiftyone as fo

    sample = dataset.first()
    sample["ground_truth"] = fo.Classification(label="bag")
    sample.save()
    apply_relabel(dataset, [sample.id], "coat", label_field="ground_truth", source="test")
    apply_relabel(dataset, [sample.id], "shirt", label_field="ground_truth", source="test")
    sample.reload()
    assert sample.ground_truth.label == "shirt"
    assert sample["previous_label"] == "bag"  # the label before curation, not the intermediate one
    assert sample["decision"] == "relabel" and sample["decision_reason"] == "relabelled to shirt"
    with pytest.raises(ValueError, match="expected a non-empty class name"):
        apply_relabel(dataset, [sample.id], "  ", label_field="ground_truth")


def test_mislabel_queue_is_sorted_and_empty_before_analysis(embedded_dataset):
    from curation.review import mislabel_queue

    dataset = embedded_dataset.clone()
    try:
        assert mislabel_queue(dataset, "ground_truth").empty
        ids = dataset.values("id")
        dataset.set_values("mislabel_score", dict(zip(ids, [i / len(ids) for i in range(len(ids))])), key_field="id")
        queue = mislabel_queue(dataset, "ground_truth")
        assert len(queue) == len(ids) and queue["mislabel_score"].is_monotonic_decreasing
        assert queue["decision"].isna().all() and queue["id"].iloc[0] == ids[-1]
    finally:
        dataset.delete()
