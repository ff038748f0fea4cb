"""People's decisions about single boxes of a detection field: fix the class, remove the box,
move it, accept a box the model found and nobody annotated; every one undoable.

Stored on the detection itself (visible and filterable in the FiftyOne App and in patch
views): ``decision`` (``relabel``, ``remove``, ``added``, ``keep``, ``moved``),
``decision_reason``, ``decision_source``, ``decision_at``, ``previous_label`` (the class
before curation), ``previous_bounding_box`` (the box before curation, once moved) and
``decision_history`` (every decision with the state it replaced). A removed box stays in the
field, marked ``remove``: exports leave it out (:func:`kept_boxes_view`), and undo brings it
back. An accepted missing box is copied from ``<field>_missing`` (written by ``analyze
--patches``) into the field with ``decision="added"``; undoing that removes the copy. A box
drawn by an annotator (:func:`apply_object_changes`, used by the relabel round trip) is
added the same way. A moved box keeps the box it replaced in its history; undo puts it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from curation.datasets import now_iso
from curation.errors import CurationInputError

OBJECT_DECISIONS = ("relabel", "remove", "added", "keep", "moved")


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


def _get(detection, name: str):
    return detection.get_field(name) if detection.has_field(name) else None


def _state(detection) -> dict:
    return {"label": detection.label, "decision": _get(detection, "decision"),
            "decision_reason": _get(detection, "decision_reason"), "previous_label": _get(detection, "previous_label"),
            "bounding_box": list(detection.bounding_box) if detection.bounding_box is not None else None,
            "previous_bounding_box": _get(detection, "previous_bounding_box")}


def _decide(detection, decision: str, *, reason: str, source: str, stamp: str, new_label: str | None = None,
            new_box: Sequence[float] | None = None) -> None:
    """Record ``decision`` on one detection, keeping the state it replaces in its history."""
    prior = _state(detection)
    history = list(_get(detection, "decision_history") or [])
    entry = {"decision": decision, "reason": reason, "source": source, "at": stamp, "label": new_label, "prior": prior}
    if new_box is not None:
        entry["bounding_box"] = [float(value) for value in new_box]
    history.append(entry)
    if new_label is not None:
        if prior["previous_label"] is None:
            detection["previous_label"] = detection.label
        detection.label = new_label
    if new_box is not None:
        if prior["previous_bounding_box"] is None:
            detection["previous_bounding_box"] = prior["bounding_box"]
        detection.bounding_box = [float(value) for value in new_box]
    detection["decision"] = decision
    detection["decision_reason"] = reason
    detection["decision_source"] = source
    detection["decision_at"] = stamp
    detection["decision_history"] = history


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
            _decide(detection, decision, reason=reason, source=source, stamp=stamp, new_label=new_label)
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


@dataclass(frozen=True)
class ObjectChange:
    """One change to one box, for :func:`apply_object_changes`.

    Attributes:
        sample_id: the sample holding (or to hold) the box.
        decision: ``"relabel"`` (``label``), ``"moved"`` (``bounding_box``, and ``label`` when
            the class changed too), ``"remove"``, ``"keep"`` or ``"added"`` (a new box of
            ``label`` at ``bounding_box``).
        object_id: the box's id; None for ``"added"``.
        label: the new class.
        bounding_box: the new box, relative ``[x, y, width, height]`` with values in [0, 1].
        reason: stored in ``decision_reason``.
    """

    sample_id: str
    decision: str
    object_id: str | None = None
    label: str | None = None
    bounding_box: tuple[float, float, float, float] | None = None
    reason: str = ""


def _check_change(change: ObjectChange) -> None:
    if change.decision not in OBJECT_DECISIONS:
        raise CurationInputError(f"object change: unknown decision {change.decision!r}. Available: "
                                 f"{', '.join(OBJECT_DECISIONS)}")
    if (change.object_id is None) != (change.decision == "added"):
        raise CurationInputError(f"object change {change.decision!r} on sample {change.sample_id}: expected an "
                                 f"object id for every decision but 'added', and none for 'added'")
    if change.decision in ("added", "moved"):
        box = change.bounding_box
        if box is None or len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box) \
                or box[2] <= 0 or box[3] <= 0:
            raise CurationInputError(f"object change {change.decision!r} on sample {change.sample_id}: expected a "
                                     f"box [x, y, width, height] of finite numbers with positive size, got {box!r}")
    if change.decision in ("added", "relabel") and not (isinstance(change.label, str) and change.label.strip()):
        raise CurationInputError(f"object change {change.decision!r} on sample {change.sample_id}: expected a "
                                 f"non-empty class name, got {change.label!r}")


def apply_object_changes(dataset, field: str, changes: Sequence[ObjectChange], *, source: str) -> list[str]:
    """Apply many box decisions across samples in one pass (the relabel round trip's import).

    Every change is checked before the first write (an unknown decision, a box id that is
    not on its sample, a malformed box raise :class:`CurationInputError` and write nothing).
    Each changed box gets one history entry, so one :func:`undo_objects` puts it back as it
    was: a moved box returns to its old place (and class), an added box is dropped.

    Args:
        dataset: the FiftyOne dataset.
        field: its ``fo.Detections`` field.
        changes: the changes; at most one per existing box.
        source: stored in ``decision_source`` (e.g. ``"cvat:annotations.xml"``).

    Returns:
        The ids of the added boxes, in the order of their changes.
    """
    import fiftyone as fo

    from curation.objects import check_detections_field

    check_detections_field(dataset, field, "object changes")
    by_sample: dict[str, list[ObjectChange]] = {}
    for change in changes:
        _check_change(change)
        by_sample.setdefault(change.sample_id, []).append(change)
    if not by_sample:
        return []
    found = dict(zip(*dataset.select(list(by_sample)).values(["id", f"{field}.detections.id"])))
    for sample_id, sample_changes in by_sample.items():
        if sample_id not in found:
            raise CurationInputError(f"{field}: no sample with id {sample_id!r}")
        on_sample = set(found[sample_id] or [])
        targets = [change.object_id for change in sample_changes if change.object_id is not None]
        unknown = [object_id for object_id in targets if object_id not in on_sample]
        if unknown:
            raise CurationInputError(f"{field}: sample {sample_id} has no box with id {unknown[0]!r}")
        if len(set(targets)) != len(targets):
            raise CurationInputError(f"{field}: sample {sample_id}: expected one change per box, got several for one")
    stamp = now_iso()
    added: dict[int, str] = {}
    order = {id(change): index for index, change in enumerate(changes)}
    for sample in dataset.select(list(by_sample)).iter_samples(autosave=True):
        sample_changes = by_sample[sample.id]
        edits = {change.object_id: change for change in sample_changes if change.object_id is not None}
        if sample[field] is None:
            sample[field] = fo.Detections(detections=[])
        for detection in sample[field].detections:
            change = edits.get(detection.id)
            if change is None:
                continue
            label = change.label.strip() if isinstance(change.label, str) else None
            if change.decision not in ("relabel", "moved") or label == detection.label:
                label = None  # a moved box keeps its class unless the change names another
            reason = change.reason or {"relabel": f"relabelled to {label}", "moved": "box moved",
                                       "remove": "removed", "keep": "reviewed: right as it is"}[change.decision]
            _decide(detection, change.decision, reason=reason, source=source, stamp=stamp, new_label=label,
                    new_box=change.bounding_box if change.decision == "moved" else None)
        for change in sample_changes:
            if change.decision != "added":
                continue
            box = fo.Detection(label=change.label.strip(), bounding_box=[float(v) for v in change.bounding_box],
                               decision="added", decision_reason=change.reason or "box added",
                               decision_source=source, decision_at=stamp,
                               decision_history=[{"decision": "added", "reason": change.reason or "box added",
                                                  "source": source, "at": stamp, "prior": None}])
            sample[field].detections.append(box)
            added[order[id(change)]] = box.id
    return [added[index] for index in sorted(added)]


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
            if prior.get("bounding_box") is not None:  # histories written before boxes could move have none
                detection.bounding_box = list(prior["bounding_box"])
            if "previous_bounding_box" in prior:
                detection["previous_bounding_box"] = prior["previous_bounding_box"]
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
