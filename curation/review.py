"""Queues of samples for people to review, read from the findings stored on the dataset.

Only results of the committed analysis run count (see :mod:`curation.analysis`): samples
rewritten by an ``analyze`` that did not finish are not listed for that finder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from curation.errors import CurationInputError


def unchecked_mislabel_reasons(dataset) -> dict[str, int]:
    """Why labelled samples have no mislabel score (a class with one sample, a broken
    vector...): ``{reason: count}``, from the committed mislabel run only."""
    from fiftyone import ViewField as F

    from curation.analysis import current_values

    if not dataset.has_sample_field("mislabel_reason"):
        return {}
    # Only the unchecked samples leave the database (a page rerun must not read every sample).
    unchecked = (dataset.exists("mislabel_score", False).exists("mislabel_reason")
                 .match(F("mislabel_reason").starts_with("cannot be checked: ")))
    values = current_values(unchecked, ["mislabel_score", "mislabel_reason"])
    counts: dict[str, int] = {}
    for score, reason in zip(values["mislabel_score"], values["mislabel_reason"]):
        if score is None and isinstance(reason, str) and reason.startswith("cannot be checked: "):
            why = reason.removeprefix("cannot be checked: ")
            counts[why] = counts.get(why, 0) + 1
    return counts


def mislabel_queue(dataset, label_field: str) -> pd.DataFrame:
    """Samples with a mislabel score, highest first.

    Columns: ``id``, ``filepath``, ``label``, ``mislabel_score``, ``suggested_label``,
    ``suggested_confidence``, ``mislabel_reason``, ``mislabel_disagreeing_ids`` (the most
    similar neighbours whose label differs), ``decision`` (None while undecided).
    """
    from curation.analysis import committed_runs, current_condition, current_values, has_results

    columns = ["id", "filepath", "label", "mislabel_score", "suggested_label", "suggested_confidence",
               "mislabel_reason", "mislabel_disagreeing_ids", "decision"]
    runs = committed_runs(dataset)
    if not dataset.has_sample_field("mislabel_score") or not has_results("mislabels", runs):
        return pd.DataFrame(columns=columns)
    view = dataset.exists("mislabel_score")
    condition = current_condition("mislabels", runs)
    if condition is not None:
        view = view.match(condition)
    values = current_values(view, ["id", "filepath", "mislabel_score", "suggested_label", "suggested_confidence",
                                   "mislabel_reason", "mislabel_disagreeing_ids", "decision"], runs)
    has_labels = bool(label_field) and dataset.has_sample_field(label_field)
    values["label"] = view.values(f"{label_field}.label") if has_labels else [None] * len(values["id"])
    table = pd.DataFrame(values, columns=columns)
    return table.sort_values("mislabel_score", ascending=False, kind="stable").reset_index(drop=True)


def sample_previews(dataset, sample_ids: list[str], label_field: str | None) -> pd.DataFrame:
    """``id``, ``filepath``, ``label`` of the given samples, in the given order (unknown ids dropped)."""
    if not sample_ids:
        return pd.DataFrame(columns=["id", "filepath", "label"])
    view = dataset.select(sample_ids, ordered=True)
    fields = ["id", "filepath"] + ([f"{label_field}.label"] if label_field else [])
    values = view.values(fields)
    return pd.DataFrame({"id": values[0], "filepath": values[1], "label": values[2] if label_field else None})


# The review queue iterates the registered finder specs: each gives its flag field, the score
# that ranks a flagged sample (in [0, 1], higher = more likely a problem), the weight of that
# score in the priority (mislabels, duplicates and leaks are problems; an outlier may be fine;
# a label-next proposal is advice, so on its own it never outranks a confident finding) and
# how to say why in words.
QUEUE_LEADING_COLUMNS = ["id", "filepath", "label", "suggested_label", "priority", "finders", "reason"]
QUEUE_TRAILING_COLUMNS = ["decision", "tags", "cluster"]


def queue_finders() -> dict[str, tuple[str, str]]:
    """{finder: (flag field, score field)} in registry (display) order."""
    from curation.finders import finder_specs

    return {spec.name: (spec.flag_field, spec.queue_score) for spec in finder_specs()}


def queue_weights() -> dict[str, float]:
    """{finder: weight of its score in the queue's priority}."""
    from curation.finders import finder_specs

    return {spec.name: spec.queue_weight for spec in finder_specs()}


def queue_columns() -> list[str]:
    """The review queue's columns: fixed ones, then each finder's ranking score."""
    from curation.finders import finder_specs

    scores = list(dict.fromkeys(spec.queue_score for spec in finder_specs()))
    return QUEUE_LEADING_COLUMNS + scores + QUEUE_TRAILING_COLUMNS


_DERIVED = {"QUEUE_FINDERS": queue_finders, "QUEUE_WEIGHTS": queue_weights, "QUEUE_COLUMNS": queue_columns}


def __getattr__(name: str):  # the former constants, computed from the specs on access
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _flagged(name: str, runs: dict[str, str] | None):
    """Expression: finder ``name`` flags the sample in its committed run."""
    from fiftyone import ViewField as F

    from curation.analysis import current_condition

    from curation.finders import get_spec

    flag = F(get_spec(name).flag_field) == True  # noqa: E712
    condition = current_condition(name, runs)
    return flag if condition is None else flag & condition


@dataclass(frozen=True)
class QueueFilter:
    """What the review queue shows. Empty tuples mean "no restriction"."""

    finders: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()          # e.g. a lasso selection on the map
    min_priority: float = 0.0
    include_decided: bool = False


def _reason(row: dict, flagged: list[str]) -> str:
    """Why the row is in the queue: each flagging finder's ``describe``, joined."""
    from curation.finders import get_spec

    return "; ".join(get_spec(name).describe(row) for name in flagged)


def review_queue(dataset, label_field: str | None, queue_filter: QueueFilter = QueueFilter()) -> pd.DataFrame:
    """Every sample some finder flags, merged into one ranked queue.

    ``priority`` combines the scores of the finders that flag a sample as a noisy-OR,
    ``1 - prod(1 - weight * score)`` (each spec's ``queue_weight``): one strong finding ranks
    high, and agreeing finders rank a sample above any of them alone. ``finders`` lists who flagged it; ``reason`` says why in
    words. Undecided samples only unless ``include_decided``.

    Raises:
        ValueError: an unknown finder name in the filter (the message lists the valid ones),
            or a class filter without a label field.
    """
    from curation.analysis import committed_runs, current_values, has_results
    from curation.finders import finder_specs

    specs = {spec.name: spec for spec in finder_specs()}
    unknown = [name for name in queue_filter.finders if name not in specs]
    if unknown:
        raise CurationInputError(f"review queue: unknown finder {unknown[0]!r}. Available: {', '.join(specs)}")
    if queue_filter.classes and not label_field:
        raise CurationInputError(f"review queue: a class filter needs a label field; dataset {dataset.name!r} has no "
                                 "classification field")
    runs = committed_runs(dataset)
    columns = queue_columns()
    present = {name: spec for name, spec in specs.items()
               if dataset.has_sample_field(spec.flag_field) and has_results(name, runs)}
    if queue_filter.finders:
        present = {name: spec for name, spec in present.items() if name in queue_filter.finders}
    if not present:
        return pd.DataFrame(columns=columns)
    from fiftyone import ViewField as F

    view = dataset.match(F.any([_flagged(name, runs) for name in present]))
    if queue_filter.ids:
        view = view.select(list(queue_filter.ids))
    if queue_filter.tags:
        view = view.match_tags(list(queue_filter.tags))
    if label_field and queue_filter.classes:
        view = view.match(F(f"{label_field}.label").is_in(list(queue_filter.classes)))
    if not queue_filter.include_decided and dataset.has_sample_field("decision"):
        view = view.match((F("decision") == None) | (F("decision") == ""))  # noqa: E711
    # Fix the samples first: an `analyze` writing meanwhile changes which samples the match
    # holds, and the reads below must see one set (two reads of a live match could differ).
    view = dataset.select(view.values("id"), ordered=True)
    wanted = ["id", "filepath", "tags"] + [f for spec in present.values() for f in (spec.flag_field, spec.queue_score)]
    # Every finder's score and the fields its reason reads (None where absent), and the fixed columns.
    optional = list(dict.fromkeys([f for spec in specs.values() for f in (spec.queue_score, *spec.queue_fields)]
                                  + ["suggested_label", "decision", "cluster"]))
    fields = list(dict.fromkeys(wanted + [name for name in optional if dataset.has_sample_field(name)]))
    table = pd.DataFrame(current_values(view, fields, runs))
    table["label"] = view.values(f"{label_field}.label") if label_field else None
    for name in optional:
        if name not in table:
            table[name] = None
    if table.empty:
        return pd.DataFrame(columns=columns)
    records = table.to_dict("records")
    priorities, finders, reasons = [], [], []
    for row in records:
        flagged = [name for name, spec in present.items() if row.get(spec.flag_field)]
        scores = [present[name].queue_weight * min(max(float(row[present[name].queue_score] or 0.0), 0.0), 1.0)
                  for name in flagged]
        priorities.append(1.0 - float(np.prod([1.0 - s for s in scores])) if scores else 0.0)
        finders.append(flagged)
        reasons.append(_reason(row, flagged))
    table["priority"], table["finders"], table["reason"] = priorities, finders, reasons
    table = table[table["priority"] >= queue_filter.min_priority]
    return table[columns].sort_values("priority", ascending=False, kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class CurationStatus:
    """Where a dataset's curation stands: findings, open queue, decisions, saved splits."""

    analysed_at: str | None
    flagged: dict[str, int]          # finder -> samples it flags
    to_review: int                   # flagged and still undecided
    decisions: dict[str, int]        # decision -> samples currently carrying it
    splits: dict[str, dict]          # split field -> counts per split


def curation_status(dataset) -> CurationStatus:
    """A summary for the overview page and ``curation datasets``; cheap counts only."""
    from fiftyone import ViewField as F

    from curation.analysis import committed_runs, has_results
    from curation.datasets import curation_info
    from curation.decisions import decision_counts
    from curation.finders import finder_specs

    info = curation_info(dataset)
    runs = committed_runs(dataset)
    flagged = {spec.name: int(dataset.match(_flagged(spec.name, runs)).count()) for spec in finder_specs()
               if dataset.has_sample_field(spec.flag_field) and has_results(spec.name, runs)}
    to_review = 0
    if flagged:
        view = dataset.match(F.any([_flagged(name, runs) for name in flagged]))
        if dataset.has_sample_field("decision"):
            view = view.match(F("decision") == None)  # noqa: E711
        to_review = int(view.count())
    decisions = decision_counts(dataset)
    splits = {field: dict(record.get("counts", {})) for field, record in info.get("splits", {}).items()
              if isinstance(record, dict)}
    return CurationStatus(analysed_at=info.get("analysis", {}).get("updated_at"), flagged=flagged,
                          to_review=to_review, decisions=decisions, splits=splits)
