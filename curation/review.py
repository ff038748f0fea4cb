"""Queues of samples for people to review, read from the findings stored on the dataset."""

from __future__ import annotations

import pandas as pd


def mislabel_queue(dataset, label_field: str) -> pd.DataFrame:
    """Samples with a mislabel score, highest first.

    Columns: ``id``, ``filepath``, ``label``, ``mislabel_score``, ``suggested_label``,
    ``suggested_confidence``, ``mislabel_reason``, ``mislabel_disagreeing_ids`` (the most
    similar neighbours whose label differs), ``decision`` (None while undecided).
    """
    columns = ["id", "filepath", "label", "mislabel_score", "suggested_label", "suggested_confidence",
               "mislabel_reason", "mislabel_disagreeing_ids", "decision"]
    if not dataset.has_sample_field("mislabel_score"):
        return pd.DataFrame(columns=columns)
    view = dataset.exists("mislabel_score")
    fields = ["id", "filepath", f"{label_field}.label", "mislabel_score"]
    optional = ["suggested_label", "suggested_confidence", "mislabel_reason", "mislabel_disagreeing_ids", "decision"]
    values = view.values(fields + [name for name in optional if dataset.has_sample_field(name)])
    table = pd.DataFrame(dict(zip(columns[:4] + [n for n in optional if dataset.has_sample_field(n)], values)))
    for name in optional:
        if name not in table:
            table[name] = None
    return table[columns].sort_values("mislabel_score", ascending=False, kind="stable").reset_index(drop=True)


def sample_previews(dataset, sample_ids: list[str], label_field: str | None) -> pd.DataFrame:
    """``id``, ``filepath``, ``label`` of the given samples, in the given order (unknown ids dropped)."""
    if not sample_ids:
        return pd.DataFrame(columns=["id", "filepath", "label"])
    view = dataset.select(sample_ids, ordered=True)
    fields = ["id", "filepath"] + ([f"{label_field}.label"] if label_field else [])
    values = view.values(fields)
    return pd.DataFrame({"id": values[0], "filepath": values[1], "label": values[2] if label_field else None})
