"""Tables behind the map page: coordinates, colours and the samples of a selection."""

from __future__ import annotations

import numpy as np
import pandas as pd

from curation.embeddings import load_embeddings
from curation.projection import ClusterConfig, ProjectionConfig, cached_projection, compute_clusters
from curation.errors import MissingFieldError

COLOR_LABEL = "label"
COLOR_KMEANS = "cluster (k-means)"
COLOR_HDBSCAN = "cluster (HDBSCAN)"
COLOR_TAGS = "tags"
_SCALAR_TYPES = ("StringField", "IntField", "FloatField", "BooleanField")


def color_options(dataset) -> list[str]:
    """What the map can be coloured by: label, clusters, tags, then scalar sample fields."""
    schema = dataset.get_field_schema()
    scalars = sorted(
        name for name, field in schema.items()
        if type(field).__name__ in _SCALAR_TYPES and name not in ("filepath", "id") and not name.endswith("_error")
    )
    return [COLOR_LABEL, COLOR_KMEANS, COLOR_HDBSCAN, COLOR_TAGS, *scalars]


def projection_frame(dataset, field: str, config: ProjectionConfig = ProjectionConfig()) -> pd.DataFrame:
    """Map coordinates of every embedded sample: ``id``, ``x``, ``y`` (disk-cached UMAP)."""
    ids, embeddings = load_embeddings(dataset, field)
    if not ids:
        return pd.DataFrame({"id": pd.Series(dtype=object), "x": pd.Series(dtype=np.float32),
                             "y": pd.Series(dtype=np.float32)})
    coords = cached_projection(dataset.name, field, ids, embeddings, config)
    return pd.DataFrame({"id": ids, "x": coords[:, 0], "y": coords[:, 1]})


def with_attributes(dataset, frame: pd.DataFrame, label_field: str | None) -> pd.DataFrame:
    """``frame`` plus ``filepath``, ``label`` and ``tags`` of its samples, read fresh."""
    attributes = selection_table(dataset, list(frame["id"]), label_field)
    merged = frame.reset_index(drop=True).join(attributes.drop(columns="id"))
    merged["label"] = merged["label"].where(merged["label"].notna(), "(unlabelled)")
    return merged


def map_frame(dataset, field: str, label_field: str | None,
              config: ProjectionConfig = ProjectionConfig()) -> pd.DataFrame:
    """One row per embedded sample: ``id``, ``x``, ``y``, ``filepath``, ``label``, ``tags``."""
    return with_attributes(dataset, projection_frame(dataset, field, config), label_field)


def cluster_labels(dataset, field: str, config: ClusterConfig) -> pd.Series:
    """Cluster name per embedded sample id (``cluster 3``; ``noise`` for HDBSCAN outliers)."""
    ids, embeddings = load_embeddings(dataset, field)
    clusters = compute_clusters(embeddings, config)
    return pd.Series([("noise" if c < 0 else f"cluster {c}") for c in clusters], index=ids, dtype=object)


def color_column(dataset, frame: pd.DataFrame, color_by: str, field: str,
                 cluster_config: ClusterConfig | None = None) -> pd.Series:
    """Values to colour ``frame``'s points by, aligned with its rows."""
    if frame.empty:
        return pd.Series([], dtype=object)
    if color_by == COLOR_LABEL:
        return frame["label"]
    if color_by == COLOR_TAGS:
        return frame["tags"].replace("", "(no tags)")
    if color_by in (COLOR_KMEANS, COLOR_HDBSCAN):
        base = cluster_config or ClusterConfig()
        config = ClusterConfig(method="kmeans" if color_by == COLOR_KMEANS else "hdbscan", n_clusters=base.n_clusters,
                               min_cluster_size=base.min_cluster_size, seed=base.seed)
        return pd.Series(cluster_labels(dataset, field, config).loc[frame["id"]].to_numpy(), index=frame.index)
    if not dataset.has_sample_field(color_by):
        raise MissingFieldError(f"dataset {dataset.name!r} has no field {color_by!r}; choose one of {color_options(dataset)}")
    values = dataset.select(list(frame["id"]), ordered=True).values(color_by)
    return pd.Series(values, index=frame.index)


def selection_table(dataset, sample_ids: list[str], label_field: str | None) -> pd.DataFrame:
    """The selected samples, in selection order: ``id``, ``filepath``, ``label``, ``tags``."""
    if not sample_ids:
        return pd.DataFrame(columns=["id", "filepath", "label", "tags"])
    view = dataset.select(sample_ids, ordered=True)
    fields = ["id", "filepath", "tags"] + ([f"{label_field}.label"] if label_field else [])
    values = view.values(fields)
    labels = values[3] if label_field else [None] * len(values[0])
    return pd.DataFrame({"id": values[0], "filepath": values[1], "label": labels,
                         "tags": [", ".join(sorted(t)) if t else "" for t in values[2]]})


def is_categorical(values: pd.Series) -> bool:
    """Text, booleans and small-range integers are drawn as categories; other numbers as a scale."""
    from pandas.api import types

    if types.is_bool_dtype(values) or not types.is_numeric_dtype(values):
        return True
    return types.is_integer_dtype(values) and values.nunique(dropna=True) <= 12
