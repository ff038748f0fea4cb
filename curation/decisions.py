"""People's decisions about samples (keep, remove, ...), stored on the FiftyOne samples.

Each decision writes four sample fields, visible and filterable in the FiftyOne App:
``decision`` (what), ``decision_reason`` (why, free text), ``decision_source`` (which page
or finder led to it) and ``decision_at`` (when, UTC ISO-8601).
"""

from __future__ import annotations

from curation.datasets import now_iso

DECISIONS = ("keep", "remove", "relabel", "annotate", "dismiss")
DECISION_FIELDS = ("decision", "decision_reason", "decision_source", "decision_at")


def record_decision(dataset, sample_ids: list[str], decision: str, *, reason: str = "", source: str = "") -> int:
    """Store ``decision`` on the given samples; returns how many were updated.

    Raises:
        ValueError: unknown decision (the message lists the valid ones).
    """
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {decision!r}. Available: {', '.join(DECISIONS)}")
    if not sample_ids:
        return 0
    stamp = now_iso()
    for field, value in zip(DECISION_FIELDS, (decision, reason, source, stamp)):
        dataset.set_values(field, {sample_id: value for sample_id in sample_ids}, key_field="id")
    return len(sample_ids)


def clear_decision(dataset, sample_ids: list[str]) -> int:
    for field in DECISION_FIELDS:
        if dataset.has_sample_field(field):
            dataset.set_values(field, {sample_id: None for sample_id in sample_ids}, key_field="id")
    return len(sample_ids)


def decisions_for(dataset, sample_ids: list[str]) -> dict[str, str | None]:
    if not sample_ids or not dataset.has_sample_field("decision"):
        return {sample_id: None for sample_id in sample_ids}
    values = dataset.select(sample_ids, ordered=True).values("decision")
    return dict(zip(sample_ids, values))


def apply_relabel(dataset, sample_ids: list[str], new_label: str, *, label_field: str, reason: str = "",
                  source: str = "") -> int:
    """Change the label of the samples to ``new_label``, keeping the old one in ``previous_label``.

    The first relabel of a sample stores its original label; later relabels keep that
    original, so ``previous_label`` always says what the data said before curation.
    """
    import fiftyone as fo

    new_label = new_label.strip()
    if not new_label:
        raise ValueError("relabel: expected a non-empty class name, got an empty one")
    if not sample_ids:
        return 0
    view = dataset.select(sample_ids, ordered=True)
    current = view.values(f"{label_field}.label")
    previous = view.values("previous_label") if dataset.has_sample_field("previous_label") else [None] * len(sample_ids)
    dataset.set_values("previous_label", {sample_id: old_previous if old_previous is not None else old
                                          for sample_id, old, old_previous in zip(sample_ids, current, previous)},
                       key_field="id")
    dataset.set_values(label_field, {sample_id: fo.Classification(label=new_label) for sample_id in sample_ids},
                       key_field="id")
    record_decision(dataset, sample_ids, "relabel", reason=reason or f"relabelled to {new_label}", source=source)
    return len(sample_ids)
