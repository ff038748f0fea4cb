"""Queues of samples for people to review, read from the findings stored on the dataset."""

from __future__ import annotations

import pandas as pd


def mislabel_queue(dataset, label_field: str) -> pd.DataFrame:
    """Samples with a mislabel score, highest first.

    Columns: ``id``, ``filepath``, ``label``, ``mislabel_score``, ``suggested_label``,
    ``suggested_confidence``, ``mislabel_reason``, ``decision`` (None while undecided).
    """
    columns = ["id", "filepath", "label", "mislabel_score", "suggested_label", "suggested_confidence",
               "mislabel_reason", "decision"]
    if not dataset.has_sample_field("mislabel_score"):
        return pd.DataFrame(columns=columns)
    view = dataset.exists("mislabel_score")
    fields = ["id", "filepath", f"{label_field}.label", "mislabel_score"]
    optional = ["suggested_label", "suggested_confidence", "mislabel_reason", "decision"]
    values = view.values(fields + [name for name in optional if dataset.has_sample_field(name)])
    table = pd.DataFrame(dict(zip(columns[:4] + [n for n in optional if dataset.has_sample_field(n)], values)))
    for name in optional:
        if name not in table:
            table[name] = None
    return table[columns].sort_values("mislabel_score", ascending=False, kind="stable").reset_index(drop=True)
