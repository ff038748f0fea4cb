"""People's decisions about single boxes of a detection field: fix the class, remove the box,
accept a box the model found and nobody annotated; every one undoable.

Stored on the detection itself (visible and filterable in the FiftyOne App and in patch
views): ``decision`` (``relabel``, ``remove``, ``added``, ``keep``), ``decision_reason``,
``decision_source``, ``decision_at``, ``previous_label`` (the class before curation) and
``decision_history`` (every decision with the state it replaced). A removed box stays in the
field, marked ``remove``: exports leave it out (:func:`kept_boxes_view`), and undo brings it
back. An accepted missing box is copied from ``<field>_missing`` (written by ``analyze
--patches``) into the field with ``decision="added"``; undoing that removes the copy.
"""

from __future__ import annotations

from typing import Iterable

from curation.datasets import now_iso
from curation.errors import CurationInputError

OBJECT_DECISIONS = ("relabel", "remove", "added", "keep")


def _locate(dataset, field: str, object_ids: Iterable[str]) -> dict[str, list[str]]:
    """{sample id: [object ids]} for the given detection ids; raises naming unknown ids."""
    from curation.objects import check_detections_field

    check_detections_field(dataset, field)
    wanted = [str(object_id) for object_id in object_ids]
    if not wanted:
        return {}
    ids, detection_ids = dataset.values(["id", f"{field}.detections.id"])
    where = {}
    for sample_id, detections in zip(ids, detection_ids):
        for detection_id in detections or []:
            where[detection_id] = sample_id
    unknown = [object_id for object_id in wanted if object_id not in where]
    if unknown:
        raise CurationInputError(f"{field}: no box with id {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)"
                                                                               if len(unknown) > 1 else ""))
    by_sample: dict[str, list[str]] = {}
    for object_id in wanted:
        by_sample.setdefault(where[object_id], []).append(object_id)
    return by_sample


def _state(detection) -> dict:
    return {"label": detection.label, "decision": detection.get_field("decision") if detection.has_field("decision") else None,
            "decision_reason": detection.get_field("decision_reason") if detection.has_field("decision_reason") else None,
            "previous_label": detection.get_field("previous_label") if detection.has_field("previous_label") else None}


def _apply(dataset, field: str, object_ids: Iterable[str], decision: str, *, reason: str, source: str,
           new_label: str | None = None) -> int:
    by_sample = _locate(dataset, field, object_ids)
    stamp = now_iso()
    changed = 0
    for sample in dataset.select(list(by_sample)).iter_samples(autosave=True):
        targets = set(by_sample[sample.id])
        for detection in sample[field].detections:
            if detection.id not in targets:
                continue
            prior = _state(detection)
            history = list(detection.get_field("decision_history") or []) if detection.has_field("decision_history") else []
            history.append({"decision": decision, "reason": reason, "source": source, "at": stamp,
                            "label": new_label, "prior": prior})
            if new_label is not None:
                if prior["previous_label"] is None:
                    detection["previous_label"] = detection.label
                detection.label = new_label
            detection["decision"] = decision
            detection["decision_reason"] = reason
            detection["decision_source"] = source
            detection["decision_at"] = stamp
            detection["decision_history"] = history
            changed += 1
    return changed


def relabel_objects(dataset, field: str, object_ids: Iterable[str], new_label: str, *, reason: str = "",
                    source: str = "") -> int:
    """Change the class of the boxes; the class before curation stays in ``previous_label``."""
    if not isinstance(new_label, str) or not new_label.strip():
        raise CurationInputError("relabel: expected a non-empty class name, got an empty one")
    new_label = new_label.strip()
    return _apply(dataset, field, object_ids, "relabel", reason=reason or f"relabelled to {new_label}", source=source,
                  new_label=new_label)


def accept_object_suggestions(dataset, field: str, object_ids: Iterable[str], *, source: str = "review") -> int:
    """Relabel each box to its own ``suggested_label`` (from ``analyze --patches``)."""
    by_sample = _locate(dataset, field, object_ids)
    suggestions: dict[str, list[str]] = {}
    wanted = {object_id for ids in by_sample.values() for object_id in ids}
    for sample in dataset.select(list(by_sample)):
        for detection in sample[field].detections:
            suggested = detection.get_field("suggested_label") if detection.has_field("suggested_label") else None
            if detection.id in wanted and suggested and suggested != detection.label:
                suggestions.setdefault(suggested, []).append(detection.id)
    return sum(relabel_objects(dataset, field, ids, label, reason=f"accepted the suggested class {label}", source=source)
               for label, ids in suggestions.items())


def keep_objects(dataset, field: str, object_ids: Iterable[str], *, reason: str = "", source: str = "") -> int:
    """Mark the boxes reviewed and right as they are (a flag dismissed): the review queue
    leaves them out; undo brings the flag back. ``field`` may be ``<field>_missing``, to
    dismiss a predicted box that is not really missing. Exports are unaffected."""
    return _apply(dataset, field, object_ids, "keep", reason=reason or "reviewed: right as it is", source=source)


def remove_objects(dataset, field: str, object_ids: Iterable[str], *, reason: str = "", source: str = "") -> int:
    """Mark the boxes removed (kept in the field for undo; exports leave them out)."""
    return _apply(dataset, field, object_ids, "remove", reason=reason or "removed", source=source)


def accept_missing(dataset, field: str, missing_ids: Iterable[str], *, source: str = "review") -> list[str]:
    """Copy predicted boxes flagged missing (ids of ``<field>_missing`` detections) into ``field``
    as ``added`` boxes; returns the new boxes' ids."""
    import fiftyone as fo

    missing_field = f"{field}_missing"
    if not dataset.has_sample_field(missing_field):
        raise CurationInputError(f"{field}: no missing boxes recorded; run `curation analyze --dataset {dataset.name} "
                                 f"--patches {field} --predictions FIELD` first")
    by_sample = _locate(dataset, missing_field, missing_ids)
    stamp = now_iso()
    added = []
    for sample in dataset.select(list(by_sample)).iter_samples(autosave=True):
        targets = set(by_sample[sample.id])
        if sample[field] is None:
            sample[field] = fo.Detections(detections=[])
        for detection in sample[missing_field].detections:
            if detection.id not in targets:
                continue
            copy = fo.Detection(label=detection.label, bounding_box=list(detection.bounding_box),
                                confidence=detection.confidence, decision="added",
                                decision_reason=f"accepted a missing box (model confidence {detection.confidence or 0:.2f})",
                                decision_source=source, decision_at=stamp, accepted_from=detection.id,
                                decision_history=[{"decision": "added", "source": source, "at": stamp, "prior": None}])
            sample[field].detections.append(copy)
            added.append(copy.id)
    return added


def undo_objects(dataset, field: str, object_ids: Iterable[str]) -> int:
    """Undo the latest decision of each box (an ``added`` box is removed again)."""
    by_sample = _locate(dataset, field, object_ids)
    undone = 0
    for sample in dataset.select(list(by_sample)).iter_samples(autosave=True):
        targets = set(by_sample[sample.id])
        kept = []
        for detection in sample[field].detections:
            history = list(detection.get_field("decision_history") or []) if detection.has_field("decision_history") else []
            if detection.id not in targets or not history:
                kept.append(detection)
                continue
            last = history.pop()
            undone += 1
            if last["decision"] == "added":
                continue  # dropped: it was not there before
            prior = last.get("prior") or {}
            detection.label = prior.get("label", detection.label)
            for name in ("decision", "decision_reason", "previous_label"):
                detection[name] = prior.get(name)
            detection["decision_source"] = history[-1]["source"] if history else None
            detection["decision_at"] = history[-1]["at"] if history else None
            detection["decision_history"] = history
            kept.append(detection)
        sample[field].detections = kept
    return undone


def kept_boxes_view(view, field: str):
    """``view`` with the boxes decided ``remove`` left out of ``field`` (samples stay)."""
    from fiftyone import ViewField as F

    if not view.has_sample_field(field):
        return view
    return view.filter_labels(field, F("decision") != "remove", only_matches=False)
