"""Compare two datasets: class mix, coverage and shift in the embedding space, cross near
duplicates and labels that disagree with the other dataset's neighbours.

The usual question is "what does this new batch (B) add to, or lack from, the data I have
(A)?". :func:`compare_datasets` answers it in sections:

- **classes**: counts and shares per class side by side, the classes missing from B and
  the ones new in B, and a chi-square test of homogeneity (are the class mixes the same?)
  with Cramér's V as its size and per-class adjusted residuals (which classes drive it).
- **coverage**: each B sample's cosine distance to its nearest A sample. "Far" is
  calibrated on A itself: a B sample is far when it is further from A than
  ``far_quantile`` (0.99) of A's samples are from their own nearest other A sample. If B
  were drawn like A, about 1 - 0.99 = 1% of B would be far, whatever the model or data;
  no fixed distance tuned on one dataset.
- **shift**: a domain classifier (A against B on the embeddings, cross-validated; the
  "classifier two-sample test" of Lopez-Paz and Oquab, 2017). Its out-of-fold AUC is 0.5
  when B cannot be told from A and 1.0 when they are disjoint. Computed overall and within
  each class both datasets hold, so a change of class mix (label shift) can be told apart
  from a change of how the classes look (covariate shift).
- **regions**: k-means regions of A; B assigned to the nearest centre; a region B lacks
  holds a much smaller share of B than of A (at most half, with a one-sided binomial
  test, Bonferroni over the regions).
- **duplicates**: B-A pairs at or above the duplicates finder's cosine threshold.
- **disagreements**: samples whose label disagrees with a confident vote of their k
  nearest neighbours in the other dataset, both ways.

Both datasets must carry embeddings of the same model (same weights, input size and flip
TTA, as recorded by :func:`curation.embeddings.compute_embeddings`, and the same
dimension). When they do not, the class section is still computed and the embedding
sections are skipped with a reason naming both models (``embedding_skipped``).

Scale: neighbours across the datasets come from blocked matrix products (one pass over
A x B tiles of ``block_size`` rows feeds both directions); no N x M matrix is ever held.
The domain classifier sees at most ``domain_max_samples`` samples per side.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from curation.errors import CurationInputError
from curation.finders.classifier import usable_rows
from curation.neighbors import _merge_tile, _unit_rows, compute_neighbors

logger = logging.getLogger(__name__)

#: Neighbours per sample of each dataset's own graph: the finders' k, so the cached graph
#: that ``curation analyze`` built is reused (only its nearest neighbour is needed here).
SELF_NEIGHBORS = 15
#: Rows per tile of the cross products (a tile is block_size**2 float32: 64 MiB at 4096).
DEFAULT_BLOCK = 4096
#: Most regions of A, and samples per region at least (the region count follows the size).
MAX_REGIONS = 50
#: k-means on more than this many rows uses mini-batches (as :func:`curation.projection.compute_clusters`).
KMEANS_FULL_MAX = 20_000
#: Principal components the domain classifier sees: at most this many, and one per
#: DOMAIN_SAMPLES_PER_COMPONENT pooled rows. Measured on Fashion-MNIST EfficientNet-Lite0
#: embeddings (demo slice against training images of two classes, 5 draws): 60 vs 60 rows
#: gave AUC 0.87 with 10 or 20 components, 0.78 with 50 (overfitting), while the null (two
#: halves of one set) stayed at 0.48-0.50; 1000 vs 1000 gave 0.89-0.90 with 10, 20 or 50, and
#: 50 components were as sensitive as the full 1280-d vectors at a third of the time.
DOMAIN_COMPONENTS = 50
DOMAIN_SAMPLES_PER_COMPONENT = 6
#: Inverse regularisation of the domain classifier on standardised components (0.1 was
#: 0.005-0.03 AUC above 1.0 on the small sets above and equal on the large ones).
DOMAIN_C = 0.1


class CompareInputError(CurationInputError):
    """The two datasets (or the settings) cannot be compared; the message says why."""


@dataclass(frozen=True)
class CompareConfig:
    """Settings of a comparison. Frozen: it hashes stably (a cache key) and is recorded.

    Attributes:
        k: neighbours in the other dataset that vote on a sample's label, >= 1 (5-20 work well).
        far_quantile: in (0, 1); a B sample is "far" from A when its distance to A exceeds this
            quantile of A's own nearest-neighbour distances. 1 - far_quantile is the share of
            B expected to be far if B were drawn like A (0.99: 1%).
        min_vote_share: in (0.5, 1]; a label disagrees when at least this share of the
            labelled neighbours vote for one other class.
        duplicate_threshold: cosine similarity in (0, 1] for cross near duplicates; None: the
            threshold a cosine calibration stored for A's embedding field, else the duplicates
            finder's default (0.95).
        n_regions: k-means regions of A; None: sqrt(n_A / 2) clipped to [2, 50].
        region_max_ratio: a region "lacks" B when B's share there is at most this fraction of A's.
        region_alpha: family-wise significance over the regions (Bonferroni) for "lacks".
        domain_folds: cross-validation folds of the domain classifier, >= 2.
        domain_max_samples: samples per side the domain classifier sees at most (a seeded draw).
        min_domain_samples: samples per side the domain classifier needs, overall and for a
            class's own AUC (fewer: not computed, with the reason).
        seed: for the regions, the draw and the folds.
        block_size: rows per tile of the cross products.
    """

    k: int = 10
    far_quantile: float = 0.99
    min_vote_share: float = 0.8
    duplicate_threshold: float | None = None
    n_regions: int | None = None
    region_max_ratio: float = 0.5
    region_alpha: float = 0.05
    domain_folds: int = 5
    domain_max_samples: int = 5000
    min_domain_samples: int = 10
    seed: int = 0
    block_size: int = DEFAULT_BLOCK

    def __post_init__(self) -> None:
        def whole(name: str, minimum: int, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise CompareInputError(f"{name}: expected a whole number >= {minimum}, got {value!r}")

        def number(name: str, low: float, high: float, *, low_open: bool, high_open: bool,
                   allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            ok = (isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
                  and math.isfinite(value) and (value > low if low_open else value >= low)
                  and (value < high if high_open else value <= high))
            if not ok:
                raise CompareInputError(f"{name}: expected a number in {interval}, got {value!r}")

        whole("k", 1)
        number("far_quantile", 0, 1, low_open=True, high_open=True)
        number("min_vote_share", 0.5, 1, low_open=True, high_open=False)
        number("duplicate_threshold", 0, 1, low_open=True, high_open=False, allow_none=True)
        whole("n_regions", 1, allow_none=True)
        number("region_max_ratio", 0, 1, low_open=False, high_open=False)
        number("region_alpha", 0, 1, low_open=True, high_open=True)
        whole("domain_folds", 2)
        whole("domain_max_samples", 2)
        whole("min_domain_samples", 2)
        whole("seed", 0)
        whole("block_size", 1)


# --------------------------------------------------------------------------- classes


def compare_classes(counts_a: dict[Any, int], counts_b: dict[Any, int]) -> tuple[pd.DataFrame, dict]:
    """Class counts side by side and a chi-square test of homogeneity.

    Args:
        counts_a, counts_b: samples per class; a ``None`` key (unlabelled) is left out.

    Returns:
        ``(table, test)``. ``table``: one row per class in either, most common in A first,
        columns ``class``, ``count_a``, ``share_a``, ``count_b``, ``share_b`` (shares of the
        labelled samples), ``residual`` (adjusted residual of B's count: above about 2, B
        holds more of the class than A's mix predicts; below about -2, fewer; NaN without a
        test). ``test``: ``chi2``, ``dof``, ``p_value``, ``cramers_v`` (0 = same mix, 1 =
        no class in common), ``n``, ``small_expected_cells`` (expected count < 5, where the
        chi-square approximation is rough) and ``method``; or ``reason`` alone when no test
        is possible (one class, or a side without labels).
    """
    from scipy.stats import chi2_contingency

    a = {str(name): int(count) for name, count in counts_a.items() if name is not None and count}
    b = {str(name): int(count) for name, count in counts_b.items() if name is not None and count}
    classes = sorted(set(a) | set(b), key=lambda name: (-a.get(name, 0), -b.get(name, 0), name))
    count_a = np.array([a.get(name, 0) for name in classes], dtype=float)
    count_b = np.array([b.get(name, 0) for name in classes], dtype=float)
    total_a, total_b = count_a.sum(), count_b.sum()
    table = pd.DataFrame({
        "class": classes,
        "count_a": count_a.astype(int),
        "share_a": count_a / total_a if total_a else np.full(len(classes), np.nan),
        "count_b": count_b.astype(int),
        "share_b": count_b / total_b if total_b else np.full(len(classes), np.nan),
        "residual": np.full(len(classes), np.nan),
    })
    if not total_a or not total_b:
        side = "A" if not total_a else "B"
        return table, {"reason": f"dataset {side} has no labelled samples: no class mix to compare"}
    if len(classes) < 2:
        return table, {"reason": f"both datasets hold one class only ({classes[0]!r}): nothing to test"}
    observed = np.vstack([count_a, count_b])
    chi2, p_value, dof, expected = chi2_contingency(observed, correction=False)
    n = observed.sum()
    row_share = observed.sum(axis=1) / n
    column_share = observed.sum(axis=0) / n
    # Adjusted (standardised) residuals: ~N(0, 1) per cell under homogeneity (Agresti 2.4.5).
    spread = np.sqrt(expected[1] * (1 - row_share[1]) * (1 - column_share))
    table["residual"] = np.divide(observed[1] - expected[1], spread, out=np.full(len(classes), np.nan),
                                  where=spread > 0)
    test = {
        "chi2": float(chi2), "dof": int(dof), "p_value": float(p_value),
        "cramers_v": float(math.sqrt(chi2 / n)),  # min(rows, columns) - 1 = 1 with two datasets
        "n": int(n), "small_expected_cells": int((expected < 5).sum()),
        "method": "chi-square test of homogeneity on the 2 x classes table (no continuity correction); "
                  "Cramér's V = sqrt(chi2 / n)",
    }
    return table, test


# --------------------------------------------------------------------------- neighbours across


def cross_neighbors(queries: np.ndarray, database: np.ndarray, k: int, *, k_back: int | None = None,
                    block_size: int = DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of each query row among the database rows, and back.

    Both inputs are (n, d) / (m, d) float32 unit rows (all valid). Each (query block x
    database block) tile is computed once and merged into the query rows' lists and into
    the database rows' lists, so both directions cost one pass of products and memory stays
    O((n + m) k + block_size**2).

    Returns:
        ``(sim_qd, idx_qd, sim_dq, idx_dq)``: (n, min(k, m)) similarities and database row
        indices for the queries, most similar first; (m, min(k_back, n)) for the database
        rows (``k_back`` defaults to ``k``). -inf / -1 never remain: every list is full.
    """
    n, m = len(queries), len(database)
    k_forward = min(int(k), m)
    k_reverse = min(int(k if k_back is None else k_back), n)
    sim_qd = np.full((n, k_forward), -np.inf, dtype=np.float32)
    idx_qd = np.full((n, k_forward), -1, dtype=np.int64)
    sim_dq = np.full((m, k_reverse), -np.inf, dtype=np.float32)
    idx_dq = np.full((m, k_reverse), -1, dtype=np.int64)
    if not n or not m:
        return sim_qd, idx_qd, sim_dq, idx_dq
    for query_start in range(0, n, block_size):
        query_end = min(n, query_start + block_size)
        rows = queries[query_start:query_end]
        for base_start in range(0, m, block_size):
            base_end = min(m, base_start + block_size)
            tile = rows @ database[base_start:base_end].T
            if k_forward:
                _merge_tile(sim_qd[query_start:query_end], idx_qd[query_start:query_end], tile, base_start)
            if k_reverse:
                _merge_tile(sim_dq[base_start:base_end], idx_dq[base_start:base_end], tile, query_start,
                            by_column=True)
    np.clip(sim_qd, -1.0, 1.0, out=sim_qd)
    np.clip(sim_dq, -1.0, 1.0, out=sim_dq)
    return sim_qd, idx_qd, sim_dq, idx_dq


# --------------------------------------------------------------------------- the parts


def _label_codes(labels: np.ndarray | None, classes: list[str]) -> np.ndarray | None:
    """(n,) int codes into ``classes``; -1 for unlabelled (or a class not in the list)."""
    if labels is None:
        return None
    position = {name: code for code, name in enumerate(classes)}
    return np.fromiter((position.get(None if value is None else str(value), -1) for value in labels),
                       dtype=np.int64, count=len(labels))


def _class_names(labels: np.ndarray | None) -> list[str]:
    if labels is None:
        return []
    return sorted({str(value) for value in labels if value is not None and str(value) != ""})


def _far_threshold(self_similarity: np.ndarray, quantile: float) -> float | None:
    """The distance (1 - cosine) above which a sample is far: ``quantile`` of the dataset's own
    nearest-neighbour distances; None with fewer than 2 rows (no neighbour to measure)."""
    distances = 1.0 - self_similarity[np.isfinite(self_similarity)].astype(np.float64)
    if distances.size == 0:
        return None
    return float(np.quantile(distances, quantile))


def _coverage(distance_b: np.ndarray, threshold: float, labels_b: np.ndarray | None, quantile: float) -> dict:
    far = distance_b > threshold
    groups = pd.DataFrame({"class": [None if value is None else str(value) for value in labels_b]
                           if labels_b is not None else [None] * len(distance_b),
                           "far": far, "distance": distance_b})
    per_class = (groups.groupby("class", dropna=False, sort=False)
                 .agg(count=("far", "size"), far=("far", "sum"), median_distance=("distance", "median"))
                 .reset_index())
    per_class["share_far"] = per_class["far"] / per_class["count"]
    per_class["far"] = per_class["far"].astype(int)
    per_class = per_class.sort_values(["share_far", "count"], ascending=[False, False], kind="stable")
    per_class["class"] = per_class["class"].astype(object).where(per_class["class"].notna(), None)
    return {
        "far_distance": threshold,
        "far_quantile": quantile,
        "share_far": float(far.mean()) if far.size else float("nan"),
        "n_far": int(far.sum()),
        "n": int(far.size),
        "expected_share_if_alike": 1.0 - quantile,
        "median_distance": float(np.median(distance_b)) if distance_b.size else float("nan"),
        "per_class": per_class.reset_index(drop=True)[["class", "count", "far", "share_far", "median_distance"]],
        "method": (f"cosine distance from each B sample to its nearest A sample; far above {threshold:.4f}, the "
                   f"{quantile:g} quantile of A's own nearest-neighbour distances (leave-one-out), so about "
                   f"{1 - quantile:.0%} of B would be far if B were drawn like A"),
    }


def _domain_auc(features_a: np.ndarray, features_b: np.ndarray, config: CompareConfig) -> dict:
    """Cross-validated AUC of a classifier telling B's rows from A's (0.5: indistinguishable)."""
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(config.seed)
    if len(features_a) > config.domain_max_samples:
        features_a = features_a[np.sort(rng.choice(len(features_a), config.domain_max_samples, replace=False))]
    if len(features_b) > config.domain_max_samples:
        features_b = features_b[np.sort(rng.choice(len(features_b), config.domain_max_samples, replace=False))]
    n_a, n_b = len(features_a), len(features_b)
    if min(n_a, n_b) < config.min_domain_samples:
        return {"auc": None, "p_value": None, "n_a": n_a, "n_b": n_b,
                "reason": f"a domain classifier needs at least {config.min_domain_samples} samples on each side "
                          f"(A has {n_a}, B {n_b})"}
    folds = min(config.domain_folds, n_a, n_b)
    features = np.vstack([features_a, features_b])
    target = np.r_[np.zeros(n_a, dtype=np.int64), np.ones(n_b, dtype=np.int64)]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=DOMAIN_C, max_iter=2000))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    scores = cross_val_predict(model, features, target, cv=splitter, method="decision_function")
    auc = float(roc_auc_score(target, scores))
    p_value = float(mannwhitneyu(scores[target == 1], scores[target == 0], alternative="greater").pvalue)
    return {"auc": auc, "p_value": p_value, "n_a": n_a, "n_b": n_b}


def _principal_components(unit_a: np.ndarray, unit_b: np.ndarray,
                           config: CompareConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Both datasets projected on the leading principal components of their pooled rows.

    Fitted once, without the A/B labels (so no fold sees its test labels), on at most
    ``domain_max_samples`` rows a side; the overall and per-class classifiers share it.
    """
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(config.seed)
    pool = [matrix if len(matrix) <= config.domain_max_samples else
            matrix[rng.choice(len(matrix), config.domain_max_samples, replace=False)] for matrix in (unit_a, unit_b)]
    pooled = np.vstack(pool)
    components = max(1, min(DOMAIN_COMPONENTS, len(pooled) // DOMAIN_SAMPLES_PER_COMPONENT, pooled.shape[1],
                            len(pooled) - 1))
    projection = PCA(n_components=components, random_state=config.seed).fit(pooled)
    return projection.transform(unit_a), projection.transform(unit_b), components


def _shift(unit_a: np.ndarray, unit_b: np.ndarray, labels_a: np.ndarray | None, labels_b: np.ndarray | None,
           config: CompareConfig, class_p_value: float | None) -> dict:
    features_a, features_b, components = _principal_components(unit_a, unit_b, config)
    overall = _domain_auc(features_a, features_b, config)
    per_class = []
    if labels_a is not None and labels_b is not None:
        names_a = np.array([None if v is None else str(v) for v in labels_a], dtype=object)
        names_b = np.array([None if v is None else str(v) for v in labels_b], dtype=object)
        for name in sorted(set(_class_names(labels_a)) & set(_class_names(labels_b))):
            rows_a, rows_b = names_a == name, names_b == name
            if rows_a.sum() < config.min_domain_samples or rows_b.sum() < config.min_domain_samples:
                continue
            part = _domain_auc(features_a[rows_a], features_b[rows_b], config)
            per_class.append({"class": name, **part})
    per_class_table = pd.DataFrame(per_class, columns=["class", "auc", "p_value", "n_a", "n_b"])
    within = None
    if len(per_class_table):
        weights = per_class_table["n_b"].to_numpy(dtype=float)
        within = float(np.average(per_class_table["auc"].to_numpy(dtype=float), weights=weights))
    result = {**overall, "auc_within_classes": within, "per_class": per_class_table,
              "min_domain_samples": config.min_domain_samples,
              "components": components,
              "method": (f"logistic regression on the {components} leading principal components of both "
                         f"datasets' embeddings, {config.domain_folds}-fold cross-validated, at most "
                         f"{config.domain_max_samples} samples a side; AUC of its out-of-fold scores (0.5: B cannot "
                         "be told from A; 1: disjoint); p-value: one-sided Mann-Whitney U on those scores "
                         "(approximate); within classes: the same for each class with at least "
                         f"{config.min_domain_samples} samples a side, averaged weighted by B's counts")}
    result["verdict"] = _shift_verdict(result, class_p_value)
    return result


def _shift_verdict(shift: dict, class_p_value: float | None) -> str:
    auc, p_value, within = shift.get("auc"), shift.get("p_value"), shift.get("auc_within_classes")
    if auc is None:
        return shift.get("reason", "not computed")
    if auc < 0.6 or p_value >= 0.01:
        return f"B looks like A: a classifier can hardly tell them apart (AUC {auc:.2f}, 0.5 = indistinguishable)"
    text = f"B differs from A: a classifier tells them apart with AUC {auc:.2f}"
    if within is None:
        return text + " (no class with enough samples on both sides to check within classes)"
    if within < 0.6:
        mix = "the class mix" if class_p_value is not None and class_p_value < 0.01 else "which classes B holds"
        return (text + f", but not within classes (AUC {within:.2f}): the difference is {mix}, not how the "
                "images of a class look")
    return text + f", and within classes too (AUC {within:.2f}): B's images of the same classes look different"


def _region_count(n_a: int, config: CompareConfig) -> int:
    if config.n_regions is not None:
        return max(1, min(config.n_regions, n_a))
    return max(1, min(n_a, int(np.clip(round(math.sqrt(n_a / 2)), 2, MAX_REGIONS))))


def _regions(unit_a: np.ndarray, unit_b: np.ndarray, labels_a: np.ndarray | None, config: CompareConfig) -> dict:
    from scipy.stats import binomtest
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n_a, n_b = len(unit_a), len(unit_b)
    count = _region_count(n_a, config)
    estimator = (KMeans if n_a <= KMEANS_FULL_MAX else MiniBatchKMeans)(n_clusters=count, random_state=config.seed,
                                                                       n_init=3)
    region_a = estimator.fit_predict(unit_a)
    region_b = estimator.predict(unit_b) if n_b else np.zeros(0, dtype=np.int64)
    count_a = np.bincount(region_a, minlength=count)
    count_b = np.bincount(region_b, minlength=count)
    share_a = count_a / n_a
    share_b = count_b / n_b if n_b else np.zeros(count)
    alpha = config.region_alpha / count
    names_a = (np.array([None if v is None else str(v) for v in labels_a], dtype=object) if labels_a is not None
               else None)
    rows = []
    for region in range(count):
        members = np.flatnonzero(region_a == region)
        p_value = float(binomtest(int(count_b[region]), n_b, float(share_a[region]), alternative="less").pvalue) \
            if n_b and 0 < share_a[region] < 1 else 1.0
        lacking = bool(share_b[region] <= config.region_max_ratio * share_a[region] and p_value < alpha)
        dominant = []
        if names_a is not None:
            labelled = [name for name in names_a[members] if name is not None]
            if labelled:
                values, counts = np.unique(np.array(labelled, dtype=object), return_counts=True)
                order = np.argsort(-counts, kind="stable")[:3]
                dominant = [[str(values[i]), float(counts[i] / len(members))] for i in order]
        centre = estimator.cluster_centers_[region]
        closest = members[np.argsort(-(unit_a[members] @ centre), kind="stable")[:6]]
        rows.append({"region": region, "count_a": int(count_a[region]), "share_a": float(share_a[region]),
                     "count_b": int(count_b[region]), "share_b": float(share_b[region]),
                     "ratio": float(share_b[region] / share_a[region]) if share_a[region] else float("nan"),
                     "p_value": p_value, "lacking": lacking, "dominant_classes": dominant,
                     "examples_a": closest.tolist()})
    table = pd.DataFrame(rows).sort_values(["lacking", "ratio"], ascending=[False, True], kind="stable")
    return {
        "n_regions": count,
        "table": table.reset_index(drop=True),
        "n_lacking": int(table["lacking"].sum()),
        "share_a_in_lacking": float(table.loc[table["lacking"], "share_a"].sum()),
        "method": (f"k-means with {count} regions on A (seed {config.seed}), B assigned to the nearest centre; a "
                   f"region lacks B when B's share is at most {config.region_max_ratio:g} x A's and a one-sided "
                   f"binomial test gives p < {config.region_alpha:g} / {count} (Bonferroni)"),
    }


def _votes(neighbor_idx: np.ndarray, own_codes: np.ndarray, other_codes: np.ndarray, n_classes: int,
           eligible: np.ndarray, min_vote_share: float) -> pd.DataFrame:
    """Rows whose label loses to a confident vote of their neighbours' labels."""
    neighbor_codes = np.where(neighbor_idx >= 0, other_codes[np.maximum(neighbor_idx, 0)], -1)
    votes = np.zeros((len(neighbor_idx), max(n_classes, 1)), dtype=np.int64)
    for column in range(neighbor_codes.shape[1]):
        codes = neighbor_codes[:, column]
        present = codes >= 0
        np.add.at(votes, (np.flatnonzero(present), codes[present]), 1)
    voters = votes.sum(axis=1)
    top = votes.argmax(axis=1)
    share = np.divide(votes.max(axis=1), voters, out=np.zeros(len(voters)), where=voters > 0)
    # At least half the neighbours must be labelled for a vote to count as confident.
    enough = voters * 2 >= neighbor_idx.shape[1]
    flagged = eligible & enough & (share >= min_vote_share) & (top != own_codes) & (own_codes >= 0)
    rows = np.flatnonzero(flagged)
    return pd.DataFrame({"row": rows, "suggested": top[rows], "vote_share": share[rows], "n_votes": voters[rows]})


# --------------------------------------------------------------------------- core on arrays


@dataclass
class EmbeddingComparison:
    """What the embedding sections found; row numbers index the matrices given to
    :func:`compare_embeddings` (see :func:`compare_datasets` for ids and file paths)."""

    coverage: dict | None
    coverage_reverse: dict | None  # A against B: share of A far from everything in B
    shift: dict
    regions: dict
    duplicates: pd.DataFrame  # row_b, row_a, similarity
    duplicate_threshold: float
    disagreements: pd.DataFrame  # side ("a"|"b"), row, label, suggested, vote_share, n_votes
    distance_b: np.ndarray  # (n_b,) cosine distance of each B row to its nearest A row (NaN: broken row)
    nearest_a: np.ndarray  # (n_b,) row of A nearest to each B row (-1: broken row)
    valid_a: np.ndarray
    valid_b: np.ndarray
    notes: list[str] = field(default_factory=list)


def _self_similarity(unit: np.ndarray, given: np.ndarray | None, valid: np.ndarray) -> np.ndarray:
    """Each valid row's cosine similarity to its nearest other row (NaN if none)."""
    if given is not None:
        given = np.asarray(given, dtype=np.float32)
        if given.shape != (len(valid),):
            raise CompareInputError(f"self similarity: expected shape ({len(valid)},), got {given.shape}")
        return given[valid]
    compact = unit[valid]
    if len(compact) < 2:
        return np.full(len(compact), np.nan, dtype=np.float32)
    graph = compute_neighbors(compact, 1, method="exact")
    return graph.similarities[:, 0]


def _check_matrix(name: str, matrix) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number) or np.iscomplexobj(matrix):
        raise CompareInputError(f"{name}: expected a real (n_samples, dim) array, got shape {matrix.shape} "
                                f"and dtype {matrix.dtype}")
    return matrix


def _check_labels(name: str, labels, count: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels, dtype=object)
    if labels.shape != (count,):
        raise CompareInputError(f"{name}: expected one label per embedding row, shape ({count},), got {labels.shape}")
    return np.array([None if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == ""
                     else str(value) for value in labels], dtype=object)


def compare_embeddings(embeddings_a: np.ndarray, embeddings_b: np.ndarray, labels_a: Sequence | None = None,
                       labels_b: Sequence | None = None, *, config: CompareConfig = CompareConfig(),
                       self_similarity_a: np.ndarray | None = None, self_similarity_b: np.ndarray | None = None,
                       class_p_value: float | None = None) -> EmbeddingComparison:
    """The embedding sections of a comparison, on arrays.

    Args:
        embeddings_a, embeddings_b: (n_a, d) and (n_b, d) vectors of the same model, any
            scale (rows are normalised); zero or non-finite rows take no part.
        labels_a, labels_b: (n,) class names, None where unlabelled; or None.
        self_similarity_a, self_similarity_b: optional (n,) cosine similarity of each row to
            its nearest other row of the same dataset (a cached graph's first column);
            computed when absent.
        class_p_value: the class test's p-value, for the shift's verdict.

    Raises:
        CompareInputError: shapes or dimensions that do not fit, or fewer than 2 usable rows in A
            or none in B.
    """
    embeddings_a = _check_matrix("embeddings_a", embeddings_a)
    embeddings_b = _check_matrix("embeddings_b", embeddings_b)
    if embeddings_a.shape[1] != embeddings_b.shape[1]:
        raise CompareInputError(f"embeddings of A are {embeddings_a.shape[1]}-d and of B {embeddings_b.shape[1]}-d: "
                                "they cannot come from the same model")
    labels_a = _check_labels("labels_a", labels_a, len(embeddings_a))
    labels_b = _check_labels("labels_b", labels_b, len(embeddings_b))
    unit_a, valid_a = _unit_rows(embeddings_a)
    unit_b, valid_b = _unit_rows(embeddings_b)
    if valid_a.sum() < 2:
        raise CompareInputError(f"A needs at least 2 samples with a usable embedding, has {int(valid_a.sum())}")
    if valid_b.sum() < 1:
        raise CompareInputError("B has no sample with a usable embedding")
    rows_a, rows_b = np.flatnonzero(valid_a), np.flatnonzero(valid_b)
    compact_a, compact_b = unit_a[rows_a], unit_b[rows_b]
    compact_labels_a = labels_a[rows_a] if labels_a is not None else None
    compact_labels_b = labels_b[rows_b] if labels_b is not None else None
    notes = []
    for side, valid in (("A", valid_a), ("B", valid_b)):
        if not valid.all():
            notes.append(f"{int((~valid).sum())} samples of {side} have a zero or non-finite embedding and take no part")

    logger.info("compare: neighbours across %d x %d rows", len(rows_b), len(rows_a))
    sim_ba, idx_ba, sim_ab, idx_ab = cross_neighbors(compact_b, compact_a, config.k, block_size=config.block_size)
    self_a = _self_similarity(unit_a, self_similarity_a, valid_a)
    self_b = _self_similarity(unit_b, self_similarity_b, valid_b)
    threshold_a = _far_threshold(self_a, config.far_quantile)
    threshold_b = _far_threshold(self_b, config.far_quantile)
    distance_b = 1.0 - sim_ba[:, 0].astype(np.float64)
    distance_a = 1.0 - sim_ab[:, 0].astype(np.float64)
    coverage = _coverage(distance_b, threshold_a, compact_labels_b, config.far_quantile)
    coverage_reverse = None
    if threshold_b is not None:
        coverage_reverse = _coverage(distance_a, threshold_b, compact_labels_a, config.far_quantile)
    else:
        notes.append("B has a single usable sample: the share of A far from B needs B's own neighbour distances")

    logger.info("compare: domain classifier")
    shift = _shift(compact_a, compact_b, compact_labels_a, compact_labels_b, config, class_p_value)
    logger.info("compare: regions")
    regions = _regions(compact_a, compact_b, compact_labels_a, config)
    regions["table"]["examples_a"] = [rows_a[np.array(rows, dtype=np.int64)].tolist()
                                      for rows in regions["table"]["examples_a"]]

    from curation.finders.duplicates import DEFAULT_THRESHOLD

    threshold = DEFAULT_THRESHOLD if config.duplicate_threshold is None else config.duplicate_threshold
    hit_b, hit_column = np.nonzero(sim_ba >= threshold)
    duplicates = pd.DataFrame({"row_b": rows_b[hit_b], "row_a": rows_a[idx_ba[hit_b, hit_column]],
                               "similarity": sim_ba[hit_b, hit_column].astype(float)})
    duplicates = duplicates.sort_values(["similarity", "row_b", "row_a"], ascending=[False, True, True],
                                        kind="stable").reset_index(drop=True)
    if len(hit_b) and (sim_ba[:, -1] >= threshold).any():
        notes.append(f"some B samples have more than {sim_ba.shape[1]} near duplicates in A: only the {sim_ba.shape[1]} "
                     "most similar are listed (raise k to see more)")

    frames = []
    if compact_labels_a is not None and compact_labels_b is not None:
        classes = sorted(set(_class_names(compact_labels_a)) | set(_class_names(compact_labels_b)))
        codes_a = _label_codes(compact_labels_a, classes)
        codes_b = _label_codes(compact_labels_b, classes)
        in_a = set(_class_names(compact_labels_a))
        in_b = set(_class_names(compact_labels_b))
        known_b = np.array([name in in_a for name in compact_labels_b], dtype=bool)  # a class A can vote for
        known_a = np.array([name in in_b for name in compact_labels_a], dtype=bool)
        # A far sample's neighbours are not like it: their vote says nothing about its label.
        eligible_b = known_b & (distance_b <= threshold_a)
        eligible_a = known_a & (distance_a <= threshold_b if threshold_b is not None else np.ones(len(distance_a), bool))
        for side, idx, own, other, eligible, compact_rows, own_labels in (
                ("b", idx_ba, codes_b, codes_a, eligible_b, rows_b, compact_labels_b),
                ("a", idx_ab, codes_a, codes_b, eligible_a, rows_a, compact_labels_a)):
            found = _votes(idx, own, other, len(classes), eligible, config.min_vote_share)
            frames.append(pd.DataFrame({
                "side": side, "row": compact_rows[found["row"].to_numpy()],
                "label": own_labels[found["row"].to_numpy()],
                "suggested": np.array(classes, dtype=object)[found["suggested"].to_numpy()] if len(found) else [],
                "vote_share": found["vote_share"].to_numpy(dtype=float), "n_votes": found["n_votes"].to_numpy(),
            }))
    disagreements = (pd.concat(frames, ignore_index=True) if frames else
                     pd.DataFrame(columns=["side", "row", "label", "suggested", "vote_share", "n_votes"]))
    disagreements = disagreements.sort_values(["vote_share", "side", "row"], ascending=[False, False, True],
                                              kind="stable").reset_index(drop=True)

    full_distance = np.full(len(embeddings_b), np.nan)
    full_distance[rows_b] = distance_b
    nearest = np.full(len(embeddings_b), -1, dtype=np.int64)
    nearest[rows_b] = rows_a[idx_ba[:, 0]]
    return EmbeddingComparison(coverage=coverage, coverage_reverse=coverage_reverse, shift=shift, regions=regions,
                               duplicates=duplicates, duplicate_threshold=float(threshold),
                               disagreements=disagreements, distance_b=full_distance, nearest_a=nearest,
                               valid_a=valid_a, valid_b=valid_b, notes=notes)


# --------------------------------------------------------------------------- datasets


@dataclass
class Comparison:
    """Dataset A against dataset B (see the module docstring for each section).

    Attributes:
        name_a, name_b, label_field_a, label_field_b: what was compared.
        samples_a, samples_b: samples in each dataset; unlabelled_a / unlabelled_b of them
            without a label.
        classes: one row per class (see :func:`compare_classes`).
        missing_in_b: classes of A that B does not hold; new_in_b: classes only B holds.
        class_test: the chi-square test (``p_value``, ``cramers_v``, ...) or ``{"reason"}``.
        class_skipped: why there is no class section (a side without labels), else None.
        embeddings: fields, models, dimension and embedded counts used (or found).
        embedding_skipped: why the embedding sections are missing, else None.
        coverage: share of B far from A overall and ``per_class`` (a table), the threshold.
        coverage_reverse: the same for A against B (how much of A the batch does not reach).
        far_b: the B samples far from A, furthest first (id, filepath, label, distance,
            nearest A sample).
        shift: domain-classifier AUC overall, ``per_class``, ``auc_within_classes``, ``verdict``.
        regions: ``table`` of A's regions (shares, ``lacking``, dominant classes, example
            A samples), ``n_lacking``.
        duplicates: B-A pairs at or above ``duplicate_threshold`` (ids, file paths, labels).
        disagreements: samples whose label loses to their neighbours in the other dataset:
            ``side`` ("a" or "b"), id, filepath, label, suggested, vote_share, n_votes.
        settings: the :class:`CompareConfig` and the thresholds used; notes: anything left out.
    """

    name_a: str
    name_b: str
    label_field_a: str | None
    label_field_b: str | None
    samples_a: int
    samples_b: int
    unlabelled_a: int
    unlabelled_b: int
    classes: pd.DataFrame
    missing_in_b: list[str]
    new_in_b: list[str]
    class_test: dict
    class_skipped: str | None
    embeddings: dict
    embedding_skipped: str | None = None
    coverage: dict | None = None
    coverage_reverse: dict | None = None
    far_b: pd.DataFrame | None = None
    shift: dict | None = None
    regions: dict | None = None
    duplicates: pd.DataFrame | None = None
    duplicate_threshold: float | None = None
    duplicate_threshold_source: str | None = None
    disagreements: pd.DataFrame | None = None
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Everything as JSON-safe values: tables become lists of records, NaN becomes None."""
        return _jsonable({
            "a": {"dataset": self.name_a, "label_field": self.label_field_a, "samples": self.samples_a,
                  "unlabelled": self.unlabelled_a},
            "b": {"dataset": self.name_b, "label_field": self.label_field_b, "samples": self.samples_b,
                  "unlabelled": self.unlabelled_b},
            "classes": self.classes, "missing_in_b": self.missing_in_b, "new_in_b": self.new_in_b,
            "class_test": self.class_test, "class_skipped": self.class_skipped,
            "embeddings": self.embeddings, "embedding_skipped": self.embedding_skipped,
            "coverage": self.coverage, "coverage_reverse": self.coverage_reverse, "far_b": self.far_b,
            "shift": self.shift, "regions": self.regions,
            "duplicates": {"threshold": self.duplicate_threshold, "threshold_source": self.duplicate_threshold_source,
                           "pairs": self.duplicates,
                           "b_samples_with_duplicate": None if self.duplicates is None
                           else int(self.duplicates["id_b"].nunique())},
            "disagreements": self.disagreements,
            "settings": self.settings, "notes": self.notes,
        })

    def summary_lines(self, limit: int = 10) -> list[str]:
        """A readable report, one statement a line (what ``curation compare`` prints)."""
        return _summary_lines(self, limit)


def _jsonable(value):
    if isinstance(value, pd.DataFrame):
        return [_jsonable(record) for record in value.to_dict(orient="records")]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(item) for item in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def _root(collection):
    return getattr(collection, "_root_dataset", None) or collection


def _describe_collection(collection) -> str:
    root = _root(collection)
    return root.name if collection is root else f"{root.name} (a view)"


def embedding_identity(collection, field_name: str) -> dict | None:
    """What makes vectors of ``field_name`` comparable with another field's: the model (its
    weights: name, architecture, pretrained tag, checkpoint) and the input (size, crop, flip
    TTA), from the run record :func:`curation.embeddings.compute_embeddings` keeps; None
    when the dataset has no record of the field."""
    from curation.datasets import curation_info

    record = curation_info(_root(collection)).get("embeddings", {}).get(field_name)
    if not isinstance(record, dict) or "model" not in record:
        return None
    spec = record.get("model_spec") or {}
    return {"model": record["model"], "architecture": spec.get("architecture"), "pretrained": spec.get("pretrained"),
            "checkpoint": spec.get("checkpoint"), "image_size": record.get("image_size"), "crop": record.get("crop"),
            "flip_tta": bool(record.get("flip_tta"))}


def describe_identity(identity: dict | None, field_name: str | None) -> str:
    """``efficientnet-lite0-imagenet at 160 px`` (field name when the model is not recorded)."""
    if identity is None:
        return f"an unrecorded model (field {field_name!r})" if field_name else "no embeddings"
    text = identity["model"]
    if identity.get("checkpoint"):
        text += f" from {identity['checkpoint']}"
    if identity.get("image_size"):
        text += f" at {identity['image_size']} px"
    if identity.get("flip_tta"):
        text += " with flip TTA"
    return text


def _embedding_field_order(collection) -> list[str]:
    """Embedding fields: those with a run record (the default one first, newest next), then
    vector fields without one (computed elsewhere, for example by FiftyOne Brain)."""
    from curation.analysis import embedding_fields
    from curation.datasets import embedding_statuses
    from curation.embeddings import default_embedding_field

    root = _root(collection)
    fields = [status.field for status in embedding_statuses(root)]
    default = default_embedding_field(root)
    if default:
        fields = [default] + [name for name in fields if name != default]
    return fields + [name for name in embedding_fields(root) if name not in fields]


def _embed_hint(identity: dict | None, dataset_name: str) -> str:
    """The ``curation embed`` command that gives ``dataset_name`` vectors like ``identity``'s."""
    if identity is None:
        return f"`curation embed --dataset {dataset_name}`"
    checkpoint = f" --checkpoint {identity['checkpoint']}" if identity.get("checkpoint") else ""
    size = f" --image-size {identity['image_size']}" if identity.get("image_size") else ""
    flip = " --flip-tta" if identity.get("flip_tta") else ""
    return f"`curation embed --dataset {dataset_name} --model {identity['model']}{checkpoint}{size}{flip}`"


def _resolve_embedding_fields(a, b, field_a: str | None,
                              field_b: str | None) -> tuple[str | None, str | None, str | None, str | None]:
    """``(field_a, field_b, skipped_reason, note)``: the fields to compare, or why not.

    An explicitly named field must exist (otherwise an error); a field left to choose is the
    one whose model matches the other side's, the same name preferred.
    """
    from curation.analysis import check_embedding_field

    name_a, name_b = _describe_collection(a), _describe_collection(b)
    if field_a:
        check_embedding_field(_root(a), field_a)
    if field_b:
        check_embedding_field(_root(b), field_b)
    options_a = [field_a] if field_a else _embedding_field_order(a)
    options_b = [field_b] if field_b else _embedding_field_order(b)
    if not options_a:
        return None, None, (f"dataset {name_a!r} has no embeddings: run `curation embed --dataset {_root(a).name}`"), None
    if not options_b:
        wanted = embedding_identity(a, options_a[0])
        return options_a[0], None, (f"dataset {name_b!r} has no embeddings (A's are from "
                                    f"{describe_identity(wanted, options_a[0])}): run "
                                    f"{_embed_hint(wanted, _root(b).name)}"), None
    for candidate_a in options_a:
        identity_a = embedding_identity(a, candidate_a)
        ordered_b = sorted(options_b, key=lambda name: name != candidate_a)  # same name first
        for candidate_b in ordered_b:
            identity_b = embedding_identity(b, candidate_b)
            if identity_a is not None and identity_a == identity_b:
                return candidate_a, candidate_b, None, None
            if identity_a is None and identity_b is None and candidate_a == candidate_b:
                return candidate_a, candidate_b, None, (
                    f"no record of the model behind {candidate_a!r} in either dataset: assumed to be the same model "
                    "because the field name is the same")
    chosen_a, chosen_b = options_a[0], options_b[0]
    identity_a, identity_b = embedding_identity(a, chosen_a), embedding_identity(b, chosen_b)
    model_a, model_b = describe_identity(identity_a, chosen_a), describe_identity(identity_b, chosen_b)
    if identity_a and identity_b and identity_a["model"] == identity_b["model"]:
        differs = sorted(key for key in identity_a if identity_a[key] != identity_b[key])
        detail = f" (they differ in {', '.join(differs)})"
    else:
        detail = ""
    hint = (f"; embed B the same way to compare them: {_embed_hint(identity_a, _root(b).name)}"
            if identity_a is not None else "")
    return chosen_a, chosen_b, (f"the embeddings come from different models: {name_a!r} from {model_a} "
                                f"(field {chosen_a!r}), {name_b!r} from {model_b} (field {chosen_b!r}){detail}; "
                                f"coverage, shift, regions, near duplicates and label disagreements need the same "
                                f"model{hint}"), None


def _resolve_label_field(collection, label_field: str | None) -> str | None:
    from curation.analysis import check_label_field
    from curation.datasets import default_label_field

    root = _root(collection)
    if label_field is not None:
        check_label_field(root, label_field)
        return label_field
    return default_label_field(root)


def _counts(collection, label_field: str | None) -> tuple[dict, int]:
    if label_field is None:
        return {}, len(collection)
    counts = collection.count_values(f"{label_field}.label")
    unlabelled = int(counts.pop(None, 0))
    return {str(name): int(count) for name, count in counts.items()}, unlabelled


def _self_similarity_from_cache(collection, field_name: str, ids: list[str], matrix: np.ndarray) -> np.ndarray | None:
    """Each row's nearest-neighbour similarity from the graph the finders cache (shared with
    ``curation analyze``); None for a view (the cache is per dataset)."""
    from curation.neighbors import cached_neighbors
    from curation.projection import normalize_rows

    root = _root(collection)
    if collection is not root:
        return None
    graph = cached_neighbors(root.name, field_name, ids, normalize_rows(matrix), SELF_NEIGHBORS)
    return graph.similarities[:, 0]


def _duplicate_threshold(a, field_a: str, config: CompareConfig) -> tuple[float, str]:
    from curation.analysis import stored_threshold
    from curation.finders.duplicates import DEFAULT_THRESHOLD

    if config.duplicate_threshold is not None:
        return config.duplicate_threshold, "given"
    stored = stored_threshold(_root(a), field_a)
    if stored is not None:
        return float(stored), f"calibrated on {_root(a).name!r} for {field_a!r}"
    return DEFAULT_THRESHOLD, "the duplicates finder's default cosine threshold"


def compare_datasets(a, b, *, label_field_a: str | None = None, label_field_b: str | None = None,
                     embeddings_field: str | None = None, embeddings_field_b: str | None = None,
                     config: CompareConfig | None = None, **settings: Any) -> Comparison:
    """Compare dataset (or view) ``a`` with ``b``: B is usually the new batch.

    Args:
        a, b: FiftyOne datasets or views; they must not share samples.
        label_field_a, label_field_b: classification fields; None: each dataset's default
            (a dataset without one has no class section, and says so).
        embeddings_field: A's embedding field; None: the one whose model B also has.
        embeddings_field_b: B's; None: the one from the same model as A's (same name first).
        config: a :class:`CompareConfig`; or its fields as keyword arguments (``k=10``, ...).

    Returns:
        A :class:`Comparison`. Different embedding models are not an error: the class section
        is computed and ``embedding_skipped`` says why the rest is missing.

    Raises:
        CompareInputError: ``a`` and ``b`` are the same dataset or share samples; bad settings.
        MissingFieldError, CurationInputError: a named field does not exist or holds
            something else (the message names the dataset and the fields it has).
    """
    from curation.embeddings import load_embeddings

    if config is None:
        config = CompareConfig(**settings)
    elif settings:
        raise CompareInputError(f"pass either config or settings, not both (got config and {sorted(settings)})")
    root_a, root_b = _root(a), _root(b)
    name_a, name_b = _describe_collection(a), _describe_collection(b)
    if root_a.name == root_b.name and a is root_a and b is root_b:
        raise CompareInputError(f"dataset {root_a.name!r} compared with itself: name another dataset to compare with")
    label_field_a = _resolve_label_field(a, label_field_a)
    label_field_b = _resolve_label_field(b, label_field_b)
    if root_a.name == root_b.name:
        shared = set(a.values("id")) & set(b.values("id"))
        if shared:
            raise CompareInputError(f"{name_a!r} and {name_b!r} share {len(shared)} samples: compare two disjoint sets")

    counts_a, unlabelled_a = _counts(a, label_field_a)
    counts_b, unlabelled_b = _counts(b, label_field_b)
    class_skipped = None
    if label_field_a is None or label_field_b is None:
        missing = [name for name, field_name in ((name_a, label_field_a), (name_b, label_field_b)) if field_name is None]
        class_skipped = (f"{' and '.join(repr(n) for n in missing)} {'has' if len(missing) == 1 else 'have'} no "
                         "classification field: no class mix or label disagreements to compare")
    table, test = compare_classes(counts_a, counts_b)
    missing_in_b = sorted(name for name in counts_a if name not in counts_b) if not class_skipped else []
    new_in_b = sorted(name for name in counts_b if name not in counts_a) if not class_skipped else []

    field_a, field_b, skipped, note = _resolve_embedding_fields(a, b, embeddings_field, embeddings_field_b)
    identity_a = embedding_identity(a, field_a) if field_a else None
    identity_b = embedding_identity(b, field_b) if field_b else None
    embeddings = {"field_a": field_a, "field_b": field_b, "model_a": describe_identity(identity_a, field_a),
                  "model_b": describe_identity(identity_b, field_b) if field_b else None,
                  "identity_a": identity_a, "identity_b": identity_b}
    notes = [note] if note else []
    comparison = Comparison(
        name_a=name_a, name_b=name_b, label_field_a=label_field_a, label_field_b=label_field_b,
        samples_a=len(a), samples_b=len(b), unlabelled_a=unlabelled_a, unlabelled_b=unlabelled_b,
        classes=table, missing_in_b=missing_in_b, new_in_b=new_in_b,
        class_test=test if not class_skipped else {"reason": class_skipped}, class_skipped=class_skipped,
        embeddings=embeddings, settings={"config": asdict(config)}, notes=notes)
    if skipped:
        comparison.embedding_skipped = skipped
        return comparison

    ids_a, matrix_a = load_embeddings(a, field_a)
    ids_b, matrix_b = load_embeddings(b, field_b)
    embeddings.update({"embedded_a": len(ids_a), "embedded_b": len(ids_b)})
    if not ids_a or not ids_b:
        empty = name_a if not ids_a else name_b
        comparison.embedding_skipped = (f"dataset {empty!r} has no embedded samples in "
                                        f"{field_a if not ids_a else field_b!r}: run `curation embed --dataset "
                                        f"{_root(a if not ids_a else b).name}`")
        return comparison
    if matrix_a.shape[1] != matrix_b.shape[1]:
        comparison.embedding_skipped = (f"embeddings of {name_a!r} ({field_a!r}) are {matrix_a.shape[1]}-d and of "
                                        f"{name_b!r} ({field_b!r}) {matrix_b.shape[1]}-d: not the same model")
        return comparison
    embeddings["dimension"] = int(matrix_a.shape[1])
    usable_a, usable_b = int(usable_rows(matrix_a).sum()), int(usable_rows(matrix_b).sum())
    if usable_a < 2 or usable_b < 1:
        comparison.embedding_skipped = (f"too few usable embeddings to compare: {name_a!r} has {usable_a} (at least 2 "
                                        f"needed, to measure how far apart its own samples are), {name_b!r} has "
                                        f"{usable_b} (at least 1 needed)")
        return comparison
    if len(ids_a) < len(a) or len(ids_b) < len(b):
        notes.append(f"only embedded samples take part in the embedding sections: {len(ids_a)} of {len(a)} in A, "
                     f"{len(ids_b)} of {len(b)} in B")
    view_a, view_b = a.select(ids_a, ordered=True), b.select(ids_b, ordered=True)
    labels_a = np.array(view_a.values(f"{label_field_a}.label"), dtype=object) if label_field_a else None
    labels_b = np.array(view_b.values(f"{label_field_b}.label"), dtype=object) if label_field_b else None
    paths_a = np.array(view_a.values("filepath"), dtype=object)
    paths_b = np.array(view_b.values("filepath"), dtype=object)
    threshold, threshold_source = _duplicate_threshold(a, field_a, config)
    run_config = CompareConfig(**{**asdict(config), "duplicate_threshold": threshold})
    found = compare_embeddings(
        matrix_a, matrix_b, labels_a, labels_b, config=run_config,
        self_similarity_a=_self_similarity_from_cache(a, field_a, ids_a, matrix_a),
        self_similarity_b=_self_similarity_from_cache(b, field_b, ids_b, matrix_b),
        class_p_value=test.get("p_value"))
    ids_a_array, ids_b_array = np.array(ids_a, dtype=object), np.array(ids_b, dtype=object)

    def label_at(labels, rows):
        return labels[rows] if labels is not None else np.full(len(rows), None, dtype=object)

    comparison.coverage = found.coverage
    comparison.coverage_reverse = found.coverage_reverse
    far_rows = np.flatnonzero(found.distance_b > found.coverage["far_distance"])
    far_rows = far_rows[np.argsort(-found.distance_b[far_rows], kind="stable")]
    nearest = found.nearest_a[far_rows]
    comparison.far_b = pd.DataFrame({
        "id": ids_b_array[far_rows], "filepath": paths_b[far_rows], "label": label_at(labels_b, far_rows),
        "distance": found.distance_b[far_rows], "nearest_a_id": ids_a_array[nearest],
        "nearest_a_filepath": paths_a[nearest], "nearest_a_label": label_at(labels_a, nearest)})
    comparison.shift = found.shift
    regions = dict(found.regions)
    region_table = regions["table"].copy()
    region_table["examples_a"] = [[{"id": ids_a_array[row], "filepath": paths_a[row]} for row in rows]
                                  for rows in region_table["examples_a"]]
    regions["table"] = region_table
    comparison.regions = regions
    pairs = found.duplicates
    comparison.duplicates = pd.DataFrame({
        "id_b": ids_b_array[pairs["row_b"]], "id_a": ids_a_array[pairs["row_a"]],
        "similarity": pairs["similarity"].to_numpy(dtype=float),
        "label_b": label_at(labels_b, pairs["row_b"].to_numpy()), "label_a": label_at(labels_a, pairs["row_a"].to_numpy()),
        "filepath_b": paths_b[pairs["row_b"]], "filepath_a": paths_a[pairs["row_a"]]})
    comparison.duplicate_threshold = found.duplicate_threshold
    comparison.duplicate_threshold_source = threshold_source
    votes = found.disagreements
    sides = {"a": (name_a, ids_a_array, paths_a), "b": (name_b, ids_b_array, paths_b)}
    comparison.disagreements = pd.DataFrame({
        "side": votes["side"].to_numpy(dtype=object),
        "dataset": [sides[side][0] for side in votes["side"]],
        "id": [sides[side][1][row] for side, row in zip(votes["side"], votes["row"])],
        "filepath": [sides[side][2][row] for side, row in zip(votes["side"], votes["row"])],
        "label": votes["label"].to_numpy(dtype=object), "suggested": votes["suggested"].to_numpy(dtype=object),
        "vote_share": votes["vote_share"].to_numpy(dtype=float), "n_votes": votes["n_votes"].to_numpy(dtype=np.int64)})
    comparison.settings.update({
        "far_distance": found.coverage["far_distance"], "duplicate_threshold": found.duplicate_threshold,
        "duplicate_threshold_source": threshold_source, "n_regions": regions["n_regions"]})
    comparison.notes.extend(found.notes)
    if class_skipped:
        comparison.notes.append("label disagreements need labels on both sides: " + class_skipped)
    return comparison


# --------------------------------------------------------------------------- text


def _p_text(p_value: float) -> str:
    if p_value == 0:
        return "p < 1e-300"
    return f"p = {p_value:.2g}" if p_value < 0.001 else f"p = {p_value:.3f}"


def _listed(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "none"


def _summary_lines(c: Comparison, limit: int) -> list[str]:
    lines = [f"A: {c.name_a} ({c.samples_a:,} samples" + (f", labels in {c.label_field_a!r}" if c.label_field_a else "")
             + f") · B: {c.name_b} ({c.samples_b:,} samples"
             + (f", labels in {c.label_field_b!r}" if c.label_field_b else "") + ")"]
    if c.class_skipped:
        lines.append(f"Classes: not compared: {c.class_skipped}")
    else:
        lines.append(f"Classes missing from B ({len(c.missing_in_b)}): {_listed(c.missing_in_b)}")
        lines.append(f"Classes new in B ({len(c.new_in_b)}): {_listed(c.new_in_b)}")
        test = c.class_test
        if "reason" in test:
            lines.append(f"Class mix: no test: {test['reason']}")
        else:
            differ = "differ" if test["p_value"] < 0.05 else "do not differ significantly"
            lines.append(f"Class mix: the distributions {differ} (chi-square {test['chi2']:.1f}, {test['dof']} dof, "
                         f"{_p_text(test['p_value'])}; Cramér's V {test['cramers_v']:.2f})")
            if test["small_expected_cells"]:
                lines.append(f"  ({test['small_expected_cells']} cells expect fewer than 5 samples: the p-value is rough)")
        lines.append(f"  {'class':<24} {'A':>7} {'A share':>8} {'B':>7} {'B share':>8} {'residual':>9}")
        for row in c.classes.head(max(limit, 30)).itertuples(index=False):
            residual = "" if not np.isfinite(row.residual) else f"{row.residual:+.1f}"
            lines.append(f"  {row[0]!s:<24} {row.count_a:>7,} {row.share_a:>8.1%} {row.count_b:>7,} "
                         f"{row.share_b:>8.1%} {residual:>9}")
        if len(c.classes) > max(limit, 30):
            lines.append(f"  ... and {len(c.classes) - max(limit, 30)} more classes (--json lists all)")
        for side, count in (("A", c.unlabelled_a), ("B", c.unlabelled_b)):
            if count:
                lines.append(f"  {count:,} samples of {side} are unlabelled (not in the test)")
    if c.embedding_skipped:
        lines.append(f"Embeddings: skipped: {c.embedding_skipped}")
        lines.extend(f"note: {note}" for note in c.notes)
        return lines
    e = c.embeddings
    lines.append(f"Embeddings: {e['model_a']}, {e['dimension']}-d (A {e['field_a']!r}, B {e['field_b']!r}); "
                 f"{e['embedded_a']:,} and {e['embedded_b']:,} embedded samples")
    cov = c.coverage
    lines.append(f"Coverage: {cov['share_far']:.1%} of B ({cov['n_far']:,} of {cov['n']:,}) is far from everything in A "
                 f"(cosine distance > {cov['far_distance']:.3f}, the {cov['far_quantile']:g} quantile of A's own "
                 f"nearest-neighbour distances; about {cov['expected_share_if_alike']:.0%} if B were drawn like A)")
    for row in cov["per_class"].head(limit).itertuples(index=False):
        name = "(unlabelled)" if row[0] is None else row[0]
        lines.append(f"  {name!s:<24} {row.share_far:>6.1%} far ({row.far:,} of {row.count:,})")
    if c.coverage_reverse is not None:
        reverse = c.coverage_reverse
        lines.append(f"  and {reverse['share_far']:.1%} of A is far from everything in B (B's own {reverse['far_quantile']:g} "
                     f"quantile, {reverse['far_distance']:.3f})")
    shift = c.shift
    if shift.get("auc") is None:
        lines.append(f"Shift: not computed: {shift.get('reason')}")
    else:
        lines.append(f"Shift: domain classifier AUC {shift['auc']:.3f} ({_p_text(shift['p_value'])}; 0.5 = B cannot be "
                     f"told from A)")
        within = shift["per_class"]
        if len(within):
            parts = ", ".join(f"{row[0]} {row.auc:.2f}" for row in within.head(limit).itertuples(index=False))
            lines.append(f"  within classes (at least {shift['min_domain_samples']} samples a side): {parts}")
        lines.append(f"  {shift['verdict']}")
    regions = c.regions
    lines.append(f"Regions of A that B lacks: {regions['n_lacking']} of {regions['n_regions']} "
                 f"(holding {regions['share_a_in_lacking']:.1%} of A)")
    for row in regions["table"][regions["table"]["lacking"]].head(limit).itertuples(index=False):
        dominant = ", ".join(f"{name} {share:.0%}" for name, share in row.dominant_classes) or "unlabelled"
        lines.append(f"  region {row.region}: A {row.share_a:.1%} ({row.count_a:,}), B {row.share_b:.1%} "
                     f"({row.count_b:,}); {dominant}")
    pairs = c.duplicates
    lines.append(f"Near duplicates across (cosine >= {c.duplicate_threshold:.3f}, {c.duplicate_threshold_source}): "
                 f"{len(pairs):,} pairs, {pairs['id_b'].nunique():,} B samples with a near duplicate in A")
    for row in pairs.head(limit).itertuples(index=False):
        conflict = "" if row.label_a == row.label_b else "  (labels differ)"
        lines.append(f"  {row.similarity:.3f}  B {row.filepath_b} [{row.label_b}]  A {row.filepath_a} [{row.label_a}]"
                     f"{conflict}")
    votes = c.disagreements
    if c.class_skipped:
        lines.append("Label disagreements: not checked (labels needed on both sides)")
    else:
        on_b, on_a = int((votes["side"] == "b").sum()), int((votes["side"] == "a").sum())
        lines.append(f"Label disagreements (at least {c.settings['config']['min_vote_share']:.0%} of the "
                     f"{c.settings['config']['k']} nearest neighbours in the other dataset vote for another class): "
                     f"{on_b:,} in B, {on_a:,} in A")
        for row in votes.head(limit).itertuples(index=False):
            lines.append(f"  {row.side.upper()} {row.filepath}: labelled {row.label}, neighbours say {row.suggested} "
                         f"({row.vote_share:.0%} of {row.n_votes})")
    lines.extend(f"note: {note}" for note in c.notes)
    return lines
