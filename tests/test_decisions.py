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
