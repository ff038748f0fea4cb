"""People's decisions about samples (keep, remove, relabel, ...), stored on the FiftyOne samples.

Each decision writes these sample fields, visible and filterable in the FiftyOne App:

- ``decision``: what (one of :data:`DECISIONS`), ``decision_reason``: why (free text),
  ``decision_source``: which page, finder or tool led to it, ``decision_at``: when (UTC
  ISO-8601);
- ``previous_label``: for relabelled samples, the label before curation;
- ``decision_history``: every decision in order, each with the state it replaced, so any
  decision can be undone (:func:`undo_decision`) and an export can explain every change.

Writes are single MongoDB update operations per sample that read the sample's current
state on the server (pipeline updates), never read-modify-write round trips from Python:
two people deciding on the same dataset at once lose nothing, and the history of a sample
decided by both holds both entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from curation.datasets import now_iso
from curation.errors import CurationInputError

DECISIONS = ("keep", "remove", "relabel", "annotate", "dismiss")
DECISION_FIELDS = ("decision", "decision_reason", "decision_source", "decision_at")
PREVIOUS_LABEL_FIELD = "previous_label"
HISTORY_FIELD = "decision_history"


def is_sample_id(value) -> bool:
    """Whether ``value`` looks like a FiftyOne sample id: a string of 24 hex digits."""
    return isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{24}", value) is not None


def _object_ids(sample_ids: list[str]):
    """``sample_ids`` as ObjectIds; raises :class:`CurationInputError` naming the first that is not an id."""
    from bson import ObjectId

    bad = [sample_id for sample_id in sample_ids if not is_sample_id(sample_id)]
    if bad:
        raise CurationInputError(f"decision: expected FiftyOne sample ids (24 hex digits), got {bad[0]!r}"
                                 + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
    return [ObjectId(sample_id) for sample_id in sample_ids]


def _ensure_fields(dataset, label_field: str | None = None) -> None:
    """Declare our fields in the dataset schema (so the App shows them); safe to race."""
    import fiftyone as fo

    wanted = {name: (fo.StringField, {}) for name in (*DECISION_FIELDS, PREVIOUS_LABEL_FIELD)}
    wanted[HISTORY_FIELD] = (fo.ListField, {"subfield": fo.DictField})
    if label_field:
        wanted[label_field] = (fo.EmbeddedDocumentField, {"embedded_doc_type": fo.Classification})
    for name, (kind, kwargs) in wanted.items():
        if dataset.has_sample_field(name):
            continue
        try:
            dataset.add_sample_field(name, kind, **kwargs)
        except ValueError:
            dataset.reload()  # another session declared it first
            if not dataset.has_sample_field(name):
                raise


def _check_label_field(dataset, label_field: str) -> None:
    import fiftyone as fo

    if not dataset.has_sample_field(label_field):
        return
    field = dataset.get_field(label_field)
    if not (isinstance(field, fo.EmbeddedDocumentField) and issubclass(field.document_type, fo.Classification)):
        kind = getattr(field, "document_type", type(field)).__name__
        raise CurationInputError(f"relabel: field {label_field!r} must hold a Classification, it holds {kind}")


def _refresh(dataset, sample_ids: list[str]) -> None:
    """Reload the in-memory ``fo.Sample`` objects of these ids (the writes bypassed them)."""
    import fiftyone as fo

    fo.Sample._reload_docs(dataset._sample_collection_name, sample_ids=sample_ids, hard=True)


def history_entry(decision: str, reason: str, source: str, stamp: str, label_field: str | None, new_label: str | None) -> dict:
    """One history entry: the decision and (evaluated on the server) the state it replaces."""
    prior = {name: {"$ifNull": [f"${name}", None]} for name in DECISION_FIELDS}
    prior["previous_label"] = {"$ifNull": [f"${PREVIOUS_LABEL_FIELD}", None]}
    prior["label"] = {"$ifNull": [f"${label_field}.label", None]} if label_field else None
    return {"decision": decision, "reason": reason, "source": source, "at": stamp,
            "label_field": label_field, "label": new_label, "prior": prior}


def record_decision(dataset, sample_ids: list[str], decision: str, *, reason: str = "", source: str = "",
                    label_field: str | None = None, new_label: str | None = None) -> int:
    """Store ``decision`` on the given samples; returns how many samples were updated.

    With ``decision="relabel"``, ``label_field`` and ``new_label`` set the new class (see
    :func:`apply_relabel`). Unknown ids are ignored (the count says how many matched).

    Raises:
        ValueError: unknown decision (the message lists the valid ones), a relabel without
            a class, or ids that are not FiftyOne ids.
    """
    from pymongo import UpdateOne

    if decision not in DECISIONS:
        raise CurationInputError(f"unknown decision {decision!r}. Available: {', '.join(DECISIONS)}")
    relabel = decision == "relabel" and new_label is not None
    if relabel:
        new_label = new_label.strip()
        if not new_label:
            raise CurationInputError("relabel: expected a non-empty class name, got an empty one")
        if not label_field:
            raise CurationInputError("relabel: expected the label field to write the new class to, got none")
        _check_label_field(dataset, label_field)
    if not sample_ids:
        return 0
    object_ids = _object_ids(sample_ids)
    from curation.snapshots import snapshot_before

    snapshot_before(dataset, f"{decision} on {len(sample_ids)} samples" + (f" (to {new_label})" if relabel else ""),
                    len(sample_ids))
    _ensure_fields(dataset, label_field if relabel else None)
    stamp = now_iso()
    entry = history_entry(decision, reason, source, stamp, label_field if relabel else None, new_label if relabel else None)
    history = {"$concatArrays": [{"$ifNull": [f"${HISTORY_FIELD}", []]}, [entry]]}
    values = {"decision": decision, "decision_reason": reason, "decision_source": source, "decision_at": stamp}
    base = {**{name: {"$literal": value} for name, value in values.items()}, HISTORY_FIELD: history,
            "last_modified_at": "$$NOW"}
    if not relabel:
        result = dataset._sample_collection.update_many({"_id": {"$in": object_ids}}, [{"$set": base}])
        _refresh(dataset, sample_ids)
        return result.matched_count
    from bson import ObjectId

    # A stored previous label is what the data said before curation: later relabels keep it. Without
    # one (never relabelled, or undone, or restored to a snapshot without one) the current label is it.
    previous = {"$ifNull": [f"${PREVIOUS_LABEL_FIELD}", {"$ifNull": [f"${label_field}.label", None]}]}
    operations = []
    for object_id in object_ids:
        fresh = {"_id": ObjectId(), "_cls": "Classification", "tags": [], "label": new_label}
        label = {"$cond": [{"$eq": [{"$type": f"${label_field}"}, "object"]},
                           {"$mergeObjects": [f"${label_field}", {"label": new_label}]}, {"$literal": fresh}]}
        operations.append(UpdateOne({"_id": object_id}, [{"$set": {**base, PREVIOUS_LABEL_FIELD: previous, label_field: label}}]))
    result = dataset._sample_collection.bulk_write(operations, ordered=False)
    _refresh(dataset, sample_ids)
    return result.matched_count


def apply_relabel(dataset, sample_ids: list[str], new_label: str, *, label_field: str, reason: str = "",
                  source: str = "") -> int:
    """Change the label of the samples to ``new_label``; the old one stays in ``previous_label``.

    The first relabel of a sample stores its original label; later relabels keep that
    original, so ``previous_label`` always says what the data said before curation.
    """
    if new_label is None or not str(new_label).strip():
        raise CurationInputError("relabel: expected a non-empty class name, got an empty one")
    new_label = str(new_label).strip()
    return record_decision(dataset, sample_ids, "relabel", reason=reason or f"relabelled to {new_label}",
                           source=source, label_field=label_field, new_label=new_label)


def accept_suggestions(dataset, sample_ids: list[str], *, label_field: str, source: str = "review") -> int:
    """Relabel each sample to its own ``suggested_label`` (from the mislabel finder).

    Samples without a suggestion, or whose suggestion equals their label, are left alone;
    so are suggestions of an analysis run that did not finish (see :mod:`curation.analysis`).
    """
    from curation.analysis import current_values

    if not sample_ids or not dataset.has_sample_field("suggested_label"):
        return 0
    _object_ids(sample_ids)
    view = dataset.select(sample_ids, ordered=True)
    ids, labels = view.values(["id", f"{label_field}.label"])
    suggested = current_values(view, ["suggested_label"])["suggested_label"]
    by_label: dict[str, list[str]] = {}
    for sample_id, label, suggestion in zip(ids, labels, suggested):
        if suggestion and suggestion != label:
            by_label.setdefault(suggestion, []).append(sample_id)
    from curation.snapshots import bulk_change

    count = sum(len(group) for group in by_label.values())
    with bulk_change(dataset, f"accepting {count} suggested labels", count):
        return sum(apply_relabel(dataset, group, label, label_field=label_field, source=source,
                                 reason=f"accepted the suggested label {label}") for label, group in by_label.items())


def undo_decision(dataset, sample_ids: list[str]) -> int:
    """Undo the latest decision of each sample, restoring what it replaced (label included).

    Returns how many samples had a decision to undo.

    Raises:
        CurationInputError: an id that is not a FiftyOne sample id.
    """
    _object_ids(sample_ids)
    if not sample_ids or not dataset.has_sample_field(HISTORY_FIELD):
        return 0
    from curation.snapshots import snapshot_before

    snapshot_before(dataset, f"undoing the decisions of {len(sample_ids)} samples", len(sample_ids))
    last = {"$arrayElemAt": [f"${HISTORY_FIELD}", -1]}
    restore = {name: {"$ifNull": [f"$_undo.prior.{name}", None]} for name in DECISION_FIELDS}
    restore[PREVIOUS_LABEL_FIELD] = {"$ifNull": ["$_undo.prior.previous_label", None]}
    restore[HISTORY_FIELD] = {"$slice": [f"${HISTORY_FIELD}", {"$subtract": [{"$size": f"${HISTORY_FIELD}"}, 1]}]}
    restore["last_modified_at"] = "$$NOW"
    total = 0
    for label_field, group in _ids_by_last_label_field(dataset, sample_ids).items():
        stage = dict(restore)
        last_field = {"$ifNull": [{"$arrayElemAt": [f"${HISTORY_FIELD}.label_field", -1]}, None]}
        # The filter re-checks the latest entry on the server, in case another session decided meanwhile.
        filter_ = {"_id": {"$in": _object_ids(group)}, f"{HISTORY_FIELD}.0": {"$exists": True},
                   "$expr": {"$eq": [last_field, label_field]}}
        if label_field:
            prior_label = {"$mergeObjects": [f"${label_field}", {"label": "$_undo.prior.label"}]}
            stage[label_field] = {"$cond": [{"$eq": [{"$ifNull": ["$_undo.prior.label", None]}, None]}, None, prior_label]}
        pipeline = [{"$set": {"_undo": last}}, {"$set": stage}, {"$unset": "_undo"}]
        total += dataset._sample_collection.update_many(filter_, pipeline).modified_count
    _refresh(dataset, sample_ids)
    return total


def samples_with_history(dataset, sample_ids: list[str]) -> list[str]:
    """The ids among ``sample_ids`` that have a decision to undo, in the given order."""
    _object_ids(sample_ids)
    if not sample_ids or not dataset.has_sample_field(HISTORY_FIELD):
        return []
    with_history = {sample_id for group in _ids_by_last_label_field(dataset, sample_ids).values() for sample_id in group}
    return [sample_id for sample_id in sample_ids if sample_id in with_history]


def _ids_by_last_label_field(dataset, sample_ids: list[str]) -> dict[str | None, list[str]]:
    """Samples with a history, grouped by the label field their latest decision changed (None: none)."""
    view = dataset.select(sample_ids)
    groups: dict[str | None, list[str]] = {}
    for sample_id, history in zip(*view.values(["id", HISTORY_FIELD])):
        if history:
            groups.setdefault(history[-1].get("label_field"), []).append(sample_id)
    return groups


def clear_decision(dataset, sample_ids: list[str]) -> int:
    """Undo every decision of the samples, back to their state before curation."""
    from curation.snapshots import bulk_change

    undone = 0
    with bulk_change(dataset, f"clearing the decisions of {len(sample_ids)} samples", len(sample_ids)):
        undone = _undo_all(dataset, sample_ids)
    return undone


def _undo_all(dataset, sample_ids: list[str]) -> int:
    undone = 0
    while True:
        count = undo_decision(dataset, sample_ids)
        if not count:
            return undone
        undone += count


def decisions_for(dataset, sample_ids: list[str]) -> dict[str, str | None]:
    """The current decision of each sample (None: undecided)."""
    _object_ids(sample_ids)
    if not sample_ids or not dataset.has_sample_field("decision"):
        return {sample_id: None for sample_id in sample_ids}
    values = dataset.select(sample_ids, ordered=True).values("decision")
    return dict(zip(sample_ids, values))


def decision_counts(dataset) -> dict[str, int]:
    """Samples per current decision (undecided ones not counted); one aggregation."""
    if not dataset.has_sample_field("decision"):
        return {}
    return {str(name): int(count) for name, count in dataset.count_values("decision").items() if name}


def decision_history(dataset, sample_id: str) -> list[dict]:
    """The decisions of one sample, oldest first (each with the state it replaced)."""
    _object_ids([sample_id])
    if not dataset.has_sample_field(HISTORY_FIELD):
        return []
    values = dataset.select([sample_id]).values(HISTORY_FIELD)
    return list(values[0] or []) if values else []


@dataclass(frozen=True)
class DecisionRecord:
    """One sample's current decision, for export manifests and the review page."""

    id: str
    filepath: str
    decision: str
    label: str | None
    previous_label: str | None
    reason: str | None
    source: str | None
    at: str | None
    history: tuple[dict, ...]


def decided_samples(dataset, label_field: str | None = None, decisions: tuple[str, ...] = DECISIONS, *,
                    newest: int | None = None) -> list[DecisionRecord]:
    """Every sample whose current decision is one of ``decisions``, in dataset order; or,
    with ``newest``, the ``newest`` most recently decided ones, newest first (sorted and
    cut in the database)."""
    if not dataset.has_sample_field("decision"):
        return []
    from fiftyone import ViewField as F

    view = dataset.match(F("decision").is_in(list(decisions)))
    if newest is not None:
        view = view.sort_by("decision_at", reverse=True).limit(newest)
    fields = ["id", "filepath", "decision", "decision_reason", "decision_source", "decision_at"]
    columns = dict(zip(fields, view.values(fields)))
    labels = view.values(f"{label_field}.label") if label_field and dataset.has_sample_field(label_field) else [None] * len(view)
    previous = view.values(PREVIOUS_LABEL_FIELD) if dataset.has_sample_field(PREVIOUS_LABEL_FIELD) else [None] * len(view)
    history = view.values(HISTORY_FIELD) if dataset.has_sample_field(HISTORY_FIELD) else [None] * len(view)
    return [DecisionRecord(id=columns["id"][i], filepath=columns["filepath"][i], decision=columns["decision"][i],
                           label=labels[i], previous_label=previous[i], reason=columns["decision_reason"][i],
                           source=columns["decision_source"][i], at=columns["decision_at"][i],
                           history=tuple(history[i] or ()))
            for i in range(len(view))]
