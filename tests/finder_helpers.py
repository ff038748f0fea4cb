"""Build FinderContexts from small arrays with a brute-force neighbour graph."""

from __future__ import annotations

import numpy as np

from curation.finders.base import FinderContext
from curation.projection import normalize_rows


def brute_force_graph(embeddings: np.ndarray, k: int):
    matrix = normalize_rows(embeddings)
    similarity = matrix @ matrix.T
    np.fill_diagonal(similarity, -np.inf)
    count = len(matrix)
    k_eff = min(k, max(count - 1, 0))
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k_eff]
    indices = np.full((count, k), -1, dtype=np.int64)
    sims = np.full((count, k), np.nan, dtype=np.float32)
    indices[:, :k_eff] = order
    sims[:, :k_eff] = np.take_along_axis(similarity, order, axis=1)
    return indices, sims


def make_context(embeddings, *, labels=None, splits=None, filepaths=None, k: int = 5) -> FinderContext:
    embeddings = np.asarray(embeddings, dtype=np.float32)
    indices, sims = brute_force_graph(embeddings, k)
    count = len(embeddings)
    return FinderContext(
        ids=np.array([f"s{i}" for i in range(count)], dtype=object),
        embeddings=normalize_rows(embeddings),
        filepaths=np.array(filepaths if filepaths is not None else [f"/nowhere/{i}.png" for i in range(count)], dtype=object),
        neighbor_indices=indices, neighbor_similarities=sims,
        labels=None if labels is None else np.array(labels, dtype=object),
        splits=None if splits is None else np.array(splits, dtype=object),
    )
