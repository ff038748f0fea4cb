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
