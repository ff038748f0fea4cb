"""Balance and coverage: which classes, and which regions of the data, need more examples.

Dataset-level (not per-sample) report: class counts and shares, the imbalance ratio, the
classes below a share you set, per-class cross-validated accuracy and the confusion
matrix (which classes the data cannot separate), and a per-cluster class mix that shows
where a class is present but thinly sampled, or a whole region has few samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from curation.finders.base import FinderContext, FinderInputError
from curation.finders.classifier import label_mask, usable_rows
from curation.projection import ClusterConfig, compute_clusters


@dataclass
class BalanceReport:
    counts: pd.Series  # samples per class, most first
    shares: pd.Series  # counts / labelled samples
    imbalance_ratio: float  # largest class / smallest class
    below_share: list[str]  # classes under min_share
    accuracy: pd.Series  # per-class out-of-fold accuracy (recall), NaN where it cannot be checked
    confusion: pd.DataFrame  # rows: given class, columns: predicted class, row-normalised
    cluster_mix: pd.DataFrame  # rows: cluster, columns: class, sample counts
    thin: pd.DataFrame  # cluster, class, count, share_in_cluster
    small_clusters: list[int]
    suggestions: list[str] = field(default_factory=list)


def compute_balance(context: FinderContext, *, min_share: float = 0.05, n_clusters: int = 10, thin_count: int = 5,
                    seed: int = 0) -> BalanceReport:
    """Balance and coverage of the labelled samples in ``context``.

    Args:
        min_share: classes with a smaller share of the labelled samples are listed (0.05 = 5%).
        n_clusters: k-means regions of the embedding space for the coverage view; at most one
            per ``thin_count`` labelled samples, so a tiny dataset is not cut into regions of
            one sample each (every one of them "thin").
        thin_count: a class with at least 10% of a cluster but fewer than this many samples
            there is "thin" in that region.

    With a single class, or no class with 2 samples that have a usable embedding, nothing
    can be cross-validated: ``accuracy`` and ``confusion`` are NaN and a suggestion says why.

    Raises:
        FinderInputError: no labels, or ``min_share`` outside [0, 1].
    """
    if not 0 <= min_share <= 1:
        raise FinderInputError(f"min_share: expected a share in [0, 1], got {min_share}")
    if context.labels is None or not label_mask(context.labels).any():
        raise FinderInputError("balance needs labels: expected a classification field with at least one label, found none")
    labelled = label_mask(context.labels)
    labels = np.array([str(label) for label in context.labels[labelled]], dtype=object)
    counts = pd.Series(labels).value_counts()
    counts.index.name = "class"
    shares = counts / counts.sum()
    below = sorted(shares[shares < min_share].index.tolist())
    imbalance = float(counts.max() / counts.min())

    classes = sorted(counts.index)
    accuracy = pd.Series(np.nan, index=classes, name="accuracy")
    confusion = pd.DataFrame(np.nan, index=classes, columns=classes)
    usable_counts = pd.Series(labels[usable_rows(context.embeddings[labelled])], dtype=object).value_counts()
    not_checked = None
    if len(classes) < 2:
        not_checked = (f"Only one class ('{classes[0]}'): add examples of other classes. Per-class accuracy and "
                       "confusion need at least 2 classes to compare.")
    elif (usable_counts.max() if len(usable_counts) else 0) < 2:
        sizes = {name: int(usable_counts.get(name, 0)) for name in classes}
        not_checked = ("Too few samples to cross-validate a classifier: per-class accuracy and confusion need a class "
                       f"with at least 2 samples that have a usable embedding (samples per class: {sizes}).")
    else:
        predictions = context.out_of_fold(seed=seed)  # the fit the mislabel and label-next finders share
        given = np.array([str(label) for label in context.labels[predictions.labelled]], dtype=object)
        predicted = np.array(predictions.classes, dtype=object)[predictions.pred_probs.argmax(axis=1)]
        checkable = predictions.checkable
        table = pd.crosstab(pd.Series(given[checkable], name="given"), pd.Series(predicted[checkable], name="predicted"))
        table = table.reindex(index=classes, columns=classes, fill_value=0)
        row_totals = table.sum(axis=1).replace(0, np.nan)
        confusion = table.div(row_totals, axis=0)
        accuracy = pd.Series(np.diag(confusion.to_numpy()), index=classes, name="accuracy")

    regions = max(1, min(n_clusters, len(labels) // max(thin_count, 1)))
    clusters = compute_clusters(context.embeddings[labelled], ClusterConfig(n_clusters=regions, seed=seed))
    mix = pd.crosstab(pd.Series(clusters, name="cluster"), pd.Series(labels, name="class"))
    cluster_sizes = mix.sum(axis=1)
    share_in_cluster = mix.div(cluster_sizes, axis=0)
    thin_rows = [
        {"cluster": int(cluster), "class": name, "count": int(mix.loc[cluster, name]),
         "share_in_cluster": float(share_in_cluster.loc[cluster, name])}
        for cluster in mix.index for name in mix.columns
        if 0 < mix.loc[cluster, name] < thin_count and share_in_cluster.loc[cluster, name] >= 0.10
    ]
    thin = pd.DataFrame(thin_rows, columns=["cluster", "class", "count", "share_in_cluster"])
    expected = len(labels) / max(len(mix), 1)
    small = sorted(int(c) for c in cluster_sizes.index[cluster_sizes < 0.25 * expected])

    suggestions = [not_checked] if not_checked else []
    suggestions += [f"Collect more '{name}': {int(counts[name])} samples ({shares[name]:.1%}, below the {min_share:.0%} floor)."
                   for name in below]
    for name in classes:
        if np.isfinite(accuracy.get(name, np.nan)) and accuracy[name] < 0.8:
            row = confusion.loc[name].drop(name)
            other = row.idxmax()
            suggestions.append(f"'{name}' is recognised {accuracy[name]:.0%} of the time and mistaken for '{other}' "
                               f"{row.max():.0%}: add examples that tell them apart (and check their labels).")
    for cluster, rows in thin.groupby("cluster", sort=True):
        listed = ", ".join(f"'{name}' ({count})" for name, count in zip(rows["class"], rows["count"]))
        suggestions.append(f"Cluster {cluster}: {listed} appear there with fewer than {thin_count} samples each: "
                           "that kind of image is thinly covered for these classes.")
    for cluster in small:
        suggestions.append(f"Cluster {cluster} has only {int(cluster_sizes[cluster])} samples: a rare kind of image.")
    return BalanceReport(counts=counts, shares=shares, imbalance_ratio=imbalance, below_share=below, accuracy=accuracy,
                         confusion=confusion, cluster_mix=mix, thin=thin, small_clusters=small, suggestions=suggestions)
