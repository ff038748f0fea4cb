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


def _unanalysed_clone(dataset):
    """A clone without analysis results (the session's dataset may have been analysed by an
    earlier test): what a dataset looks like before its first ``analyze``."""
    from curation.analysis import RUN_FIELD, owner_of_field

    clone = dataset.clone()
    for name in [*owner_of_field(), RUN_FIELD]:
        if clone.has_sample_field(name):
            clone.delete_sample_field(name)
    curation_info = {k: v for k, v in clone.info.get("curation", {}).items() if k != "analysis"}
    clone.info = {**clone.info, "curation": curation_info}
    clone.save()
    return clone


def test_mislabel_queue_is_sorted_and_empty_before_analysis(embedded_dataset):
    from curation.review import mislabel_queue

    dataset = _unanalysed_clone(embedded_dataset)
    try:
        assert mislabel_queue(dataset, "ground_truth").empty
        ids = dataset.values("id")
        dataset.set_values("mislabel_score", dict(zip(ids, [i / len(ids) for i in range(len(ids))])), key_field="id")
        queue = mislabel_queue(dataset, "ground_truth")
        assert len(queue) == len(ids) and queue["mislabel_score"].is_monotonic_decreasing
        assert queue["decision"].isna().all() and queue["id"].iloc[0] == ids[-1]
    finally:
        dataset.delete()


@pytest.fixture
def scratch(embedded_dataset):
    dataset = _unanalysed_clone(embedded_dataset)
    yield dataset
    dataset.delete()


def test_undo_restores_the_label_and_the_decision_it_replaced(scratch):
    from curation.decisions import apply_relabel, decision_history, undo_decision

    sample_id = scratch.first().id
    original = scratch.first().ground_truth.label
    record_decision(scratch, [sample_id], "annotate", reason="unsure", source="review")
    apply_relabel(scratch, [sample_id], "zebra", label_field="ground_truth", reason="obvious", source="review")
    sample = scratch[sample_id]
    assert (sample.ground_truth.label, sample["previous_label"], sample["decision"]) == ("zebra", original, "relabel")
    history = decision_history(scratch, sample_id)
    assert [entry["decision"] for entry in history] == ["annotate", "relabel"]
    assert history[1]["prior"] == {"decision": "annotate", "decision_reason": "unsure", "decision_source": "review",
                                   "decision_at": history[0]["at"], "previous_label": None, "label": original}
    label_id = sample.ground_truth.id

    assert undo_decision(scratch, [sample_id]) == 1
    sample = scratch[sample_id]
    assert (sample.ground_truth.label, sample["previous_label"]) == (original, None)
    assert sample.ground_truth.id == label_id  # the same label object, only its class restored
    assert (sample["decision"], sample["decision_reason"]) == ("annotate", "unsure")
    assert undo_decision(scratch, [sample_id]) == 1
    sample = scratch[sample_id]
    assert sample["decision"] is None and sample["decision_at"] is None and sample["decision_history"] == []
    assert undo_decision(scratch, [sample_id]) == 0  # nothing left to undo


def test_relabel_of_an_unlabelled_sample_and_its_undo(scratch):
    from curation.decisions import apply_relabel, undo_decision

    sample = scratch.first()
    sample["ground_truth"] = None
    sample.save()
    apply_relabel(scratch, [sample.id], "coat", label_field="ground_truth")
    sample.reload()
    assert sample.ground_truth.label == "coat" and sample.ground_truth.id and sample["previous_label"] is None
    undo_decision(scratch, [sample.id])
    sample.reload()
    assert sample.ground_truth is None


def test_bulk_undo_mixes_relabels_and_plain_decisions(scratch):
    from curation.decisions import apply_relabel, clear_decision, undo_decision

    ids = scratch.values("id")[:4]
    labels = scratch.select(ids, ordered=True).values("ground_truth.label")
    apply_relabel(scratch, ids[:2], "zebra", label_field="ground_truth")
    record_decision(scratch, ids[2:], "remove", reason="copy")
    assert undo_decision(scratch, ids) == 4
    assert scratch.select(ids, ordered=True).values("ground_truth.label") == labels
    assert set(decisions_for(scratch, ids).values()) == {None}
    for _ in range(3):
        record_decision(scratch, ids, "keep")
    apply_relabel(scratch, ids, "zebra", label_field="ground_truth")
    assert clear_decision(scratch, ids) == 16
    assert scratch.select(ids, ordered=True).values("ground_truth.label") == labels


def test_accept_suggestions_uses_each_samples_own_suggestion(scratch):
    from curation.decisions import accept_suggestions

    ids = scratch.values("id")[:3]
    labels = scratch.select(ids, ordered=True).values("ground_truth.label")
    scratch.set_values("suggested_label", dict(zip(ids, ["zebra", "lion", labels[2]])), key_field="id")
    assert accept_suggestions(scratch, ids, label_field="ground_truth") == 2
    assert scratch.select(ids, ordered=True).values("ground_truth.label") == ["zebra", "lion", labels[2]]
    assert scratch.select(ids, ordered=True).values("previous_label") == [labels[0], labels[1], None]


def test_relabel_refuses_a_field_that_is_not_a_classification(scratch):
    from curation.decisions import apply_relabel

    scratch.set_values("note", ["x"] * len(scratch))
    with pytest.raises(ValueError, match="field 'note' must hold a Classification"):
        apply_relabel(scratch, [scratch.first().id], "coat", label_field="note")
    with pytest.raises(ValueError, match="expected FiftyOne sample ids"):
        record_decision(scratch, ["not-an-id"], "keep")


_WORKER = """
import sys
import curation
from curation.datasets import load_dataset
from curation.decisions import apply_relabel, record_decision
name, who, ids = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
dataset = load_dataset(name)
for round_ in range(5):
    for sample_id in ids:
        if who == "a":
            record_decision(dataset, [sample_id], "keep", reason=f"{who}{round_}", source=who)
        else:
            apply_relabel(dataset, [sample_id], f"class{round_}", label_field="ground_truth", reason=f"{who}{round_}", source=who)
"""


def test_two_sessions_deciding_at_once_lose_no_decision(scratch, tmp_path):
    """Two processes decide on overlapping samples at the same time; every decision is in the history."""
    import os
    import subprocess
    import sys

    scratch.persistent = True
    ids = scratch.values("id")[:12]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    shared, only_a, only_b = ids[:6], ids[6:9], ids[9:]
    env = dict(os.environ)
    workers = [subprocess.Popen([sys.executable, str(script), scratch.name, who, ",".join(chosen)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for who, chosen in (("a", shared + only_a), ("b", shared + only_b))]
    for worker in workers:
        _, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err[-2000:]
    scratch.reload()  # the workers added fields this process has not seen
    histories = dict(zip(*scratch.select(ids).values(["id", "decision_history"])))
    for sample_id in shared:
        reasons = sorted(entry["reason"] for entry in histories[sample_id])
        assert reasons == sorted([f"a{r}" for r in range(5)] + [f"b{r}" for r in range(5)])
    for sample_id in only_a:
        assert [entry["reason"] for entry in histories[sample_id]] == [f"a{r}" for r in range(5)]
    for sample_id in only_b:
        assert [entry["reason"] for entry in histories[sample_id]] == [f"b{r}" for r in range(5)]
        assert scratch[sample_id].ground_truth.label == "class4"


def test_fields_added_by_another_process_are_seen_on_the_next_load(scratch):
    """A running app sees what `curation analyze` in a terminal wrote, without a restart."""
    import os
    import subprocess
    import sys

    from curation.datasets import load_dataset

    scratch.persistent = True
    assert not load_dataset(scratch.name).has_sample_field("from_elsewhere")
    code = ("import curation; from curation.datasets import load_dataset; import fiftyone as fo; "
            f"d = load_dataset({scratch.name!r}); d.add_sample_field('from_elsewhere', fo.StringField); "
            "d.set_values('from_elsewhere', ['x'] * len(d))")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ), timeout=120)
    again = load_dataset(scratch.name)
    assert again.has_sample_field("from_elsewhere") and set(again.values("from_elsewhere")) == {"x"}


def test_newest_decisions_come_first_and_are_limited(scratch):
    import time

    from curation.decisions import decided_samples

    ids = scratch.values("id")[:4]
    for sample_id in ids:
        record_decision(scratch, [sample_id], "keep", reason=sample_id)
        time.sleep(1.05)  # decision_at has second resolution
    newest = decided_samples(scratch, "ground_truth", newest=2)
    assert [record.id for record in newest] == [ids[3], ids[2]]
    assert len(decided_samples(scratch, "ground_truth")) == 4
