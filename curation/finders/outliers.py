"""Outliers: samples far from everything else in the embedding space."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from curation.finders.base import FinderContext, FinderInputError, FinderResult, FinderSpec, FindingField


@dataclass(frozen=True)
class OutlierConfig:
    """``k``: neighbours averaged (at most the graph's k); ``fraction``: share flagged (0.02 = 2%)."""

    k: int = 10
    fraction: float = 0.02


def find_outliers(context: FinderContext, config: OutlierConfig = OutlierConfig()) -> FinderResult:
    """Score each sample by how far it is from its nearest neighbours.

    ``distance`` is 1 - mean cosine similarity to the ``k`` nearest other samples, in [0, 2].
    ``score`` is its percentile among the dataset's samples (in [0, 1]; 0.99 = farther than
    99% of samples), so it reads the same for every model. Zero or NaN vectors have no
    meaningful neighbours and get ``score`` NaN. The ``fraction`` farthest are ``is_issue``.
    """
    if not 0 <= config.fraction <= 1:
        raise FinderInputError(f"outlier fraction: expected a value in [0, 1], got {config.fraction}")
    if config.k < 1:
        raise FinderInputError(f"outlier k: expected at least 1, got {config.k}")
    count = len(context)
    k = min(config.k, context.neighbor_indices.shape[1]) if count else 0
    valid_vector = np.linalg.norm(context.embeddings, axis=1) > 0 if count else np.zeros(0, bool)
    if k == 0:
        distance = np.full(count, np.nan)
    else:
        similarities = np.where(context.neighbor_indices[:, :k] >= 0, context.neighbor_similarities[:, :k], np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rows with no neighbour at all: NaN, handled below
            distance = 1.0 - np.nanmean(similarities, axis=1)
    distance = np.where(valid_vector, distance, np.nan)
    finite = np.isfinite(distance)
    score = np.full(count, np.nan)
    if finite.sum() >= 2:
        score[finite] = (rankdata(distance[finite], method="max") - 1) / (finite.sum() - 1)
    elif finite.sum() == 1:
        score[finite] = 0.0
    flagged = int(np.floor(config.fraction * finite.sum()))
    is_issue = np.zeros(count, dtype=bool)
    if flagged:
        order = np.argsort(-np.where(finite, distance, -np.inf), kind="stable")[:flagged]
        is_issue[order] = True
    table = pd.DataFrame({"score": score, "is_issue": is_issue, "mean_neighbor_distance": distance},
                         index=pd.Index(context.ids, name="id"))
    skipped = int(count - finite.sum())
    broken = int((~valid_vector).sum())
    summary = f"{flagged} outliers flagged (the farthest {config.fraction:.0%} by mean distance to {k} nearest neighbours)"
    if broken:
        summary += f"; {broken} samples without a usable embedding were not scored"
    if skipped - broken:
        summary += f"; {skipped - broken} samples with no neighbour to compare with were not scored"
    return FinderResult("outliers", table, summary, {"config": asdict(config), "unscored": skipped})


SPEC = FinderSpec(
    name="outliers",
    title="outlier",
    find=find_outliers,
    config_type=OutlierConfig,
    fields=(FindingField("outlier_score", "float", column="score"), FindingField("outlier_flag", "bool", column="is_issue")),
    flag_field="outlier_flag",
    queue_score="outlier_score",
    queue_weight=0.8,  # an outlier may be fine
    describe=lambda row: f"far from everything (outlier score {row['outlier_score']:.2f})",
    findings_columns=("outlier_score",),
    findings_version=1,
)
