"""Tables behind the map page: coordinates, colours and the samples of a selection.

At scale (a million samples) the page draws at most :attr:`DrawConfig.point_budget` points
(:func:`drawn_rows`) over a density image of all of them (:func:`density_raster`), and a
lasso or box is resolved here, on the server, against every point (:func:`selection_mask`),
so the selection stays exact whatever was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# Above this many rows, attributes are read for the whole dataset in its own order and
# aligned by id: an ordered ``select`` of N ids costs the database O(N^2).
_ALIGN_ABOVE = 10_000


def with_attributes(dataset, frame: pd.DataFrame, label_field: str | None) -> pd.DataFrame:
    """``frame`` plus ``filepath``, ``label`` and ``tags`` of its samples, read fresh.

    ``label`` and ``tags`` are categorical (a million rows hold a few distinct values).
    """
    if len(frame) > _ALIGN_ABOVE:
        attributes = _dataset_table(dataset, label_field).reindex(frame["id"].to_numpy())
        attributes = attributes.reset_index(drop=True)
    else:
        attributes = selection_table(dataset, list(frame["id"]), label_field).drop(columns="id")
    merged = frame.reset_index(drop=True).join(attributes)
    merged["label"] = merged["label"].where(merged["label"].notna(), "(unlabelled)").astype("category")
    merged["tags"] = merged["tags"].fillna("").astype("category")
    return merged


def _dataset_table(dataset, label_field: str | None) -> pd.DataFrame:
    """``filepath``, ``label``, ``tags`` of every sample, indexed by id, in one read."""
    fields = ["id", "filepath", "tags"] + ([f"{label_field}.label"] if label_field else [])
    values = dataset.values(fields)
    labels = values[3] if label_field else [None] * len(values[0])
    return pd.DataFrame({"filepath": values[1], "label": labels,
                         "tags": [", ".join(sorted(t)) if t else "" for t in values[2]]}, index=values[0])


def map_frame(dataset, field: str, label_field: str | None,
              config: ProjectionConfig = ProjectionConfig()) -> pd.DataFrame:
    """One row per embedded sample: ``id``, ``x``, ``y``, ``filepath``, ``label``, ``tags``."""
    return with_attributes(dataset, projection_frame(dataset, field, config), label_field)


def cluster_labels(dataset, field: str, config: ClusterConfig) -> pd.Series:
    """Cluster name per embedded sample id (``cluster 3``; ``noise`` for HDBSCAN outliers)."""
    ids, embeddings = load_embeddings(dataset, field)
    clusters = compute_clusters(embeddings, config)
    found = np.unique(clusters)
    # categorical: a million names cost a million codes, not a million strings
    names = pd.Categorical.from_codes(np.searchsorted(found, clusters),
                                      [("noise" if c < 0 else f"cluster {c}") for c in found])
    return pd.Series(names, index=ids)


def color_column(dataset, frame: pd.DataFrame, color_by: str, field: str,
                 cluster_config: ClusterConfig | None = None) -> pd.Series:
    """Values to colour ``frame``'s points by, aligned with its rows."""
    if frame.empty:
        return pd.Series([], dtype=object)
    if color_by == COLOR_LABEL:
        return frame["label"]
    if color_by == COLOR_TAGS:
        tags = frame["tags"]
        if isinstance(tags.dtype, pd.CategoricalDtype):
            return tags.cat.rename_categories({"": "(no tags)"}) if "" in tags.cat.categories else tags
        return tags.replace("", "(no tags)")
    if color_by in (COLOR_KMEANS, COLOR_HDBSCAN):
        base = cluster_config or ClusterConfig()
        config = ClusterConfig(method="kmeans" if color_by == COLOR_KMEANS else "hdbscan", n_clusters=base.n_clusters,
                               min_cluster_size=base.min_cluster_size, seed=base.seed)
        return aligned_colors(cluster_labels(dataset, field, config), frame)
    if not dataset.has_sample_field(color_by):
        raise MissingFieldError(f"dataset {dataset.name!r} has no field {color_by!r}; choose one of {color_options(dataset)}")
    if len(frame) > _ALIGN_ABOVE:
        ids, values = dataset.values(["id", color_by])
        return aligned_colors(pd.Series(values, index=ids), frame).rename(color_by)
    values = dataset.select(list(frame["id"]), ordered=True).values(color_by)
    return pd.Series(values, index=frame.index, name=color_by)


def selection_table(dataset, sample_ids: list[str], label_field: str | None, *,
                    limit: int | None = None) -> pd.DataFrame:
    """The selected samples, in selection order: ``id``, ``filepath``, ``label``, ``tags``.

    ``limit``: read only the first ``limit`` of them from the database (a lasso at a million
    points can hold hundreds of thousands; the page shows the count and the first rows).
    """
    if limit is not None:
        sample_ids = sample_ids[:max(0, limit)]
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


# --------------------------------------------------------------------------- drawing at scale


@dataclass(frozen=True)
class DrawConfig:
    """How the map is drawn. ``point_budget``: most WebGL points sent to the browser
    (100k stay interactive in Chrome and Firefox; the figure is about 1.2 MB of JSON);
    above it a seeded subsample is drawn over a ``raster_bins`` x ``raster_bins`` density
    image of every point (128-512 work; 256 is about 90 kB)."""

    point_budget: int = 100_000
    raster_bins: int = 256
    seed: int = 51


@dataclass(frozen=True)
class DensityRaster:
    """Point counts on a regular grid: ``counts[row, column]``, row 0 at ``y0``."""

    counts: np.ndarray  # (bins_y, bins_x) int64
    x0: float
    dx: float
    y0: float
    dy: float


def drawn_rows(colors: pd.Series, config: DrawConfig = DrawConfig()) -> np.ndarray:
    """Sorted row positions of the points to draw: all of them up to ``config.point_budget``.

    Above it, a seeded sample of exactly the budget (the same rows on every rerun). Categorical colours are stratified:
    every category first gets up to ``budget / (10 * categories)`` points (so a class of 30
    among a million still shows), the rest of the budget goes to categories in proportion
    to their size. Numeric colours are sampled uniformly.
    """
    count = len(colors)
    budget = max(0, int(config.point_budget))
    if count <= budget:
        return np.arange(count)
    shuffled = np.random.default_rng(config.seed).permutation(count)
    if not is_categorical(colors):
        return np.sort(shuffled[:budget])
    codes, _ = pd.factorize(colors, use_na_sentinel=False)
    sizes = np.bincount(codes)
    floor = np.minimum(sizes, budget // (10 * len(sizes)))
    spare = sizes - floor
    share = (budget - floor.sum()) * spare / max(1, spare.sum())
    extra = np.floor(share).astype(np.int64)
    leftover = int(budget - floor.sum() - extra.sum())  # fewer than the number of categories
    if leftover > 0:
        by_remainder = [c for c in np.argsort(extra - share, kind="stable") if extra[c] < spare[c]]
        extra[by_remainder[:leftover]] += 1
    quota = floor + extra
    # by category, random within one (a stable sort of small integers is a radix sort)
    small = codes.astype(np.int16 if len(sizes) < 2**15 else np.int64)[shuffled]
    order = shuffled[np.argsort(small, kind="stable")]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sorted_codes = codes[order]
    rank = np.arange(count) - starts[sorted_codes]
    return np.sort(order[rank < quota[sorted_codes]])


def density_raster(x: np.ndarray, y: np.ndarray, bins: int = 256) -> DensityRaster:
    """Counts of every point on a ``bins`` x ``bins`` grid spanning the points (1M: ~30 ms)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return DensityRaster(np.zeros((bins, bins), dtype=np.int64), 0.0, 1.0, 0.0, 1.0)
    if not finite.all():
        x, y = x[finite], y[finite]
    low_x, high_x, low_y, high_y = x.min(), x.max(), y.min(), y.max()
    dx = (high_x - low_x) / bins or 1.0
    dy = (high_y - low_y) / bins or 1.0
    column = np.minimum(((x - low_x) / dx).astype(np.int64), bins - 1)
    row = np.minimum(((y - low_y) / dy).astype(np.int64), bins - 1)
    counts = np.bincount(row * bins + column, minlength=bins * bins).reshape(bins, bins)
    # cell centres: the heatmap's x0/y0 name the first cell's centre
    return DensityRaster(counts, float(low_x + dx / 2), float(dx), float(low_y + dy / 2), float(dy))


def polygon_contains(x: np.ndarray, y: np.ndarray, polygon_x, polygon_y) -> np.ndarray:
    """Which points (x[i], y[i]) lie inside a polygon (even-odd rule; closed implicitly).

    The crossing-number test (PNPOLY) done per edge, but each edge only meets the points
    whose y lies in its span: points in the polygon's bounding box are sorted by y once
    and each edge takes a contiguous slice, so the cost is about (points in the box) x
    (edges a horizontal line crosses), not points x edges. 1M points, a 300-vertex lasso:
    see benchmarks/README.md ("The map at 1M").

    Returns:
        (N,) bool.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    px = np.asarray(polygon_x, dtype=np.float64)
    py = np.asarray(polygon_y, dtype=np.float64)
    inside = np.zeros(len(x), dtype=bool)
    if len(px) < 3 or len(px) != len(py) or not (np.isfinite(px).all() and np.isfinite(py).all()):
        return inside
    candidates = np.flatnonzero((x >= px.min()) & (x <= px.max()) & (y >= py.min()) & (y <= py.max()))
    if not len(candidates):
        return inside
    order = candidates[np.argsort(y[candidates], kind="stable")]
    ys = y[order].astype(np.float64)
    xs = x[order].astype(np.float64)
    odd = np.zeros(len(order), dtype=bool)
    for x1, y1, x2, y2 in zip(px, py, np.roll(px, -1), np.roll(py, -1)):
        if y1 == y2:
            continue  # a horizontal edge is never crossed by a horizontal ray under this rule
        # the edge counts for points with min(y1, y2) <= y < max(y1, y2)
        start, stop = np.searchsorted(ys, [min(y1, y2), max(y1, y2)], side="left")
        if start == stop:
            continue
        crossing = x1 + (ys[start:stop] - y1) * ((x2 - x1) / (y2 - y1))
        odd[start:stop] ^= xs[start:stop] < crossing
    inside[order] = odd
    return inside


def _field(item, name: str):
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def selection_mask(x: np.ndarray, y: np.ndarray, selection) -> np.ndarray | None:
    """Rows inside a plotly selection (Streamlit's ``event.selection``), over all points.

    ``selection["lasso"]`` holds polygons as ``{"x": [...], "y": [...]}`` and
    ``selection["box"]`` rectangles as ``{"x": [x0, x1], "y": [y0, y1]}``, in data
    coordinates; several (shift-drag) are united. Clicked points (no lasso, no box) carry
    their row position in ``customdata``. Returns None when the selection holds nothing,
    so the caller can keep what was selected before.
    """
    if not selection:
        return None
    x = np.asarray(x)
    y = np.asarray(y)
    lassos = _field(selection, "lasso") or []
    boxes = _field(selection, "box") or []
    if lassos or boxes:
        mask = np.zeros(len(x), dtype=bool)
        for lasso in lassos:
            mask |= polygon_contains(x, y, _field(lasso, "x") or [], _field(lasso, "y") or [])
        for box in boxes:
            box_x, box_y = _field(box, "x") or [], _field(box, "y") or []
            if len(box_x) == 2 and len(box_y) == 2:
                mask |= ((x >= min(box_x)) & (x <= max(box_x)) & (y >= min(box_y)) & (y <= max(box_y)))
        return mask
    rows = []
    for point in _field(selection, "points") or []:
        data = _field(point, "customdata")
        data = data[0] if isinstance(data, (list, tuple)) and data else data
        if isinstance(data, (int, float, np.integer)) and 0 <= int(data) < len(x):
            rows.append(int(data))
    if not rows:
        return None
    mask = np.zeros(len(x), dtype=bool)
    mask[rows] = True
    return mask


def selected_ids(frame: pd.DataFrame, selection) -> list[str] | None:
    """Sample ids of ``frame``'s rows in a plotly selection (see :func:`selection_mask`), in
    frame order; None when the selection holds nothing."""
    mask = selection_mask(frame["x"].to_numpy(), frame["y"].to_numpy(), selection)
    if mask is None:
        return None
    return frame["id"].to_numpy()[mask].tolist()


def aligned_colors(values: pd.Series, frame: pd.DataFrame) -> pd.Series:
    """``values`` (indexed by sample id) in ``frame``'s row order; skips the 1M-row lookup
    when they already come in that order (both are read in the dataset's order)."""
    ids = frame["id"]
    if not (len(values) == len(ids) and np.array_equal(values.index.to_numpy(), ids.to_numpy())):
        values = values.reindex(ids.to_numpy())
    return pd.Series(values.array, index=frame.index, name=values.name)
