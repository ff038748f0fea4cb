"""The contract every finder follows (after cleanlab's issue managers).

Input: a :class:`FinderContext` (ids, normalised embeddings, labels, splits, the shared
neighbour graph) and a frozen config dataclass. Output: a :class:`FinderResult` whose
``table`` has one row per sample id with ``score`` in [0, 1] (higher = more likely a
problem), ``is_issue``, and finder-specific columns; a one-line ``summary``; and an
``info`` dict with the thresholds and settings used, so a result can be explained and
reproduced. Finders validate their input once and raise :class:`FinderInputError` with
what was expected and what arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from curation.errors import CurationError


class FinderInputError(CurationError, ValueError):
    """The finder cannot run on this input; the message says what was expected and what arrived."""


@dataclass
class FinderResult:
    name: str
    table: pd.DataFrame  # index: sample id; columns: score, is_issue, ...
    summary: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "score" in self.table and len(self.table):
            scores = self.table["score"].to_numpy(dtype=float)
            finite = scores[~np.isnan(scores)]
            if finite.size and (finite.min() < 0 or finite.max() > 1):
                raise AssertionError(f"finder {self.name!r} produced scores outside [0, 1]")


@dataclass
class FinderContext:
    """Everything finders share, computed once per (dataset, embedding field).

    Attributes:
        ids: sample ids, aligned with every array below (N,).
        embeddings: (N, D) float32, L2-normalised (zero rows for broken vectors).
        labels: (N,) object array of class names, None where unlabelled; or None if the
            dataset has no label field.
        splits: (N,) object array of split names (train/val/test), None where unknown; or None.
        filepaths: (N,) file paths.
        neighbor_indices: (N, k) int64 row indices of each sample's nearest other samples,
            most similar first (-1 where fewer than k exist).
        neighbor_similarities: (N, k) float32 cosine similarities matching ``neighbor_indices``.
        model_name: the embedding model's registry name (zero-shot needs a text encoder).
    """

    ids: np.ndarray
    embeddings: np.ndarray
    filepaths: np.ndarray
    neighbor_indices: np.ndarray
    neighbor_similarities: np.ndarray
    labels: np.ndarray | None = None
    splits: np.ndarray | None = None
    model_name: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)
