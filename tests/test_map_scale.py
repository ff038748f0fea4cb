"""The map at scale: UMAP on a sample with the rest placed, drawing within a point budget,
and selections resolved exactly over every point (small n, lowered thresholds)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from curation import mapview, projection
from curation.errors import CurationInputError
from curation.mapview import DrawConfig
from curation.plots import map_view_figure
from curation.projection import ProjectionConfig, normalize_rows

SCALED = ProjectionConfig(sample_above=1_000, sample_size=1_000)


def _blobs(count: int = 3_000, blobs: int = 6, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(blobs, dim)) * 3
    blob = rng.integers(0, blobs, count)
    return (centers[blob] + rng.normal(size=(count, dim))).astype(np.float32), blob


@pytest.fixture(scope="module")
def scaled_map():
    points, blob = _blobs()
    coords = projection.compute_projection(points, SCALED)
    return points, blob, coords


def test_large_input_is_fitted_on_a_seeded_sample_and_the_rest_placed_near_its_neighbours(scaled_map):
    from sklearn.manifold import trustworthiness

    points, blob, coords = scaled_map
    assert coords.shape == (3_000, 2) and coords.dtype == np.float32 and np.isfinite(coords).all()
    rows = projection.sample_rows(3_000, SCALED)
    assert len(rows) == 1_000 and np.array_equal(rows, projection.sample_rows(3_000, SCALED))
    rest = np.setdiff1d(np.arange(3_000), rows)
    unit = normalize_rows(points)
    nearest_sample = rows[np.argmax(unit[rest] @ unit[rows].T, axis=1)]
    # each placed row lands close to its most similar fitted row: within 5% of the map's extent
    extent = np.ptp(coords, axis=0).max()
    gaps = np.linalg.norm(coords[rest] - coords[nearest_sample], axis=1)
    assert np.median(gaps) < 0.05 * extent
    # ... and among its own blob: its nearest fitted row on the map is of the same blob
    on_map = rows[np.argmin(((coords[rest][:, None] - coords[rows][None]) ** 2).sum(-1), axis=1)]
    assert np.mean(blob[on_map] == blob[rest]) >= 0.95
    assert trustworthiness(unit[rest][:800], coords[rest][:800], n_neighbors=10) >= 0.85


def test_placement_with_one_neighbour_copies_the_matching_sample_row():
    rng = np.random.default_rng(1)
    sample = normalize_rows(rng.normal(size=(50, 8)))
    sample_coords = rng.normal(size=(50, 2)).astype(np.float32)
    queries = np.vstack([sample[[3, 17, 42]] * 5.0, np.zeros((1, 8))]).astype(np.float32)  # scale must not matter
    placed = projection.place_on_sample(queries, np.arange(4), sample, sample_coords, neighbors=1, block_size=2)
    assert np.allclose(placed[:3], sample_coords[[3, 17, 42]])
    assert np.isfinite(placed[3]).all()  # an all-zero row still gets a position


def test_placement_through_the_ivf_index_matches_exact_search(monkeypatch):
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(20, 16)) * 4
    sample = normalize_rows(centers[rng.integers(0, 20, 2_000)] + rng.normal(size=(2_000, 16)))
    sample_coords = rng.normal(size=(2_000, 2)).astype(np.float32)
    queries = (centers[rng.integers(0, 20, 300)] + rng.normal(size=(300, 16))).astype(np.float32)
    exact = projection.place_on_sample(queries, np.arange(300), sample, sample_coords, neighbors=5)
    monkeypatch.setattr(projection, "EXACT_PLACEMENT_MAX_SAMPLE", 0)
    monkeypatch.setattr(projection, "EXACT_PLACEMENT_MAX_PRODUCTS", 0)
    approximate = projection.place_on_sample(queries, np.arange(300), sample, sample_coords, neighbors=5)
    assert np.mean(np.isclose(exact, approximate, atol=1e-4).all(axis=1)) >= 0.9


@pytest.mark.parametrize("config, message", [
    (ProjectionConfig(sample_size=5), "sample_size >= 10"),
    (ProjectionConfig(sample_above=100, sample_size=200), "sample_above >= sample_size"),
    (ProjectionConfig(placement_neighbors=0), "placement_neighbors >= 1"),
])
def test_inconsistent_sampling_settings_are_refused(config, message):
    with pytest.raises(CurationInputError, match=message):
        projection.compute_projection(np.zeros((20, 4), dtype=np.float32), config)


def test_cached_large_map_skips_the_shared_graph_and_is_read_back(monkeypatch, scaled_map):
    points, _, coords = scaled_map
    ids = [f"id{i}" for i in range(len(points))]
    import curation.neighbors

    monkeypatch.setattr(curation.neighbors, "cached_neighbors",
                        lambda *a, **k: pytest.fail("the all-rows graph is not needed above sample_above"))
    calls = []
    monkeypatch.setattr(projection, "compute_projection", lambda *a, **k: calls.append(1) or coords)
    first = projection.cached_projection("ds-scale", "emb", ids, points, SCALED)
    second = projection.cached_projection("ds-scale", "emb", ids, points, SCALED)
    assert len(calls) == 1 and np.array_equal(first, second)


# --------------------------------------------------------------------------- selection


def _pnpoly(px: float, py: float, xs, ys) -> bool:
    """The textbook crossing-number test, one point at a time (the brute-force reference)."""
    inside, j = False, len(xs) - 1
    for i in range(len(xs)):
        if (ys[i] > py) != (ys[j] > py) and px < (xs[j] - xs[i]) * (py - ys[i]) / (ys[j] - ys[i]) + xs[i]:
            inside = not inside
        j = i
    return inside


@pytest.mark.parametrize("seed", range(6))
def test_polygon_membership_matches_brute_force(seed):
    from matplotlib.path import Path

    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-2, 2, 4_000), rng.uniform(-2, 2, 4_000)
    vertices = int(rng.integers(3, 60))
    angle = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radius = rng.uniform(0.3, 1.8, vertices)
    px, py = radius * np.cos(angle) + rng.normal(0, 0.1), radius * np.sin(angle)
    if seed % 2:  # a self-intersecting lasso: the even-odd rule decides
        order = rng.permutation(vertices)
        px, py = px[order], py[order]
    inside = mapview.polygon_contains(x, y, px, py)
    assert inside.tolist() == [_pnpoly(a, b, px, py) for a, b in zip(x, y)]
    if seed % 2 == 0:  # simple polygons: matplotlib agrees as well
        assert np.array_equal(inside, Path(np.c_[px, py]).contains_points(np.c_[x, y]))


def test_degenerate_polygons_select_nothing():
    x = np.array([0.0, 1.0])
    assert not mapview.polygon_contains(x, x, [0, 1], [0, 1]).any()
    assert not mapview.polygon_contains(x, x, [0, 1, np.nan], [0, 1, 2]).any()
    assert not mapview.polygon_contains(np.zeros(0), np.zeros(0), [0, 1, 1], [0, 0, 1]).any()


def _frame(count: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = np.where(np.arange(count) < 5, "rare", np.array(["a", "b", "c"])[rng.integers(0, 3, count)])
    return pd.DataFrame({"id": [f"s{i}" for i in range(count)], "x": rng.normal(size=count).astype(np.float32),
                         "y": rng.normal(size=count).astype(np.float32), "label": pd.Categorical(labels)})


def test_lasso_and_box_select_every_point_inside_not_only_the_drawn_ones():
    frame = _frame(3_000)
    drawn = mapview.drawn_rows(frame["label"], DrawConfig(point_budget=300))
    lasso = {"x": [-1.0, 1.0, 0.8, -0.5], "y": [-1.0, -0.8, 1.2, 0.9]}
    box = {"x": [1.5, 2.5], "y": [-0.5, 0.5]}
    ids = mapview.selected_ids(frame, {"points": [], "box": [box], "lasso": [lasso]})
    x, y = frame["x"].to_numpy(), frame["y"].to_numpy()
    expected = {f"s{i}" for i in range(3_000)
                if _pnpoly(x[i], y[i], lasso["x"], lasso["y"]) or (1.5 <= x[i] <= 2.5 and -0.5 <= y[i] <= 0.5)}
    assert set(ids) == expected and len(ids) == len(expected)  # exact, no duplicates
    assert len(expected - {f"s{i}" for i in drawn}) > 0.8 * len(expected)  # mostly undrawn points
    assert ids == [i for i in frame["id"] if i in expected]  # frame order


def test_clicked_points_map_back_through_their_row_and_an_empty_event_changes_nothing():
    frame = _frame(50)
    clicked = {"points": [{"customdata": 7}, {"customdata": [12]}], "box": [], "lasso": []}
    assert mapview.selected_ids(frame, clicked) == ["s7", "s12"]
    assert mapview.selected_ids(frame, {"points": [], "box": [], "lasso": []}) is None
    assert mapview.selected_ids(frame, None) is None


def test_drawn_rows_keep_the_budget_every_class_and_the_seed():
    frame = _frame(3_000)
    config = DrawConfig(point_budget=400)
    drawn = mapview.drawn_rows(frame["label"], config)
    assert len(drawn) == 400 and len(np.unique(drawn)) == 400 and np.all(np.diff(drawn) > 0)
    assert "rare" in set(frame["label"].iloc[drawn])  # 5 of 3,000 still shown
    assert np.array_equal(drawn, mapview.drawn_rows(frame["label"], config))
    numeric = mapview.drawn_rows(pd.Series(np.linspace(0, 1, 3_000)), config)
    assert len(numeric) == 400 and len(np.unique(numeric)) == 400
    assert np.array_equal(mapview.drawn_rows(frame["label"], DrawConfig(point_budget=5_000)), np.arange(3_000))


def test_density_raster_counts_every_point():
    frame = _frame(3_000)
    raster = mapview.density_raster(frame["x"].to_numpy(), frame["y"].to_numpy(), bins=32)
    assert raster.counts.shape == (32, 32) and raster.counts.sum() == 3_000
    empty = mapview.density_raster(np.array([np.nan]), np.array([np.nan]), bins=8)
    assert empty.counts.sum() == 0


def test_figure_above_the_budget_draws_the_budget_over_a_raster():
    frame = _frame(3_000)
    figure, drawn = map_view_figure(frame, frame["label"], DrawConfig(point_budget=500, raster_bins=64))
    scatter = [trace for trace in figure.data if trace.type == "scattergl"]
    heatmaps = [trace for trace in figure.data if trace.type == "heatmap"]
    assert drawn == 500 and sum(len(trace.x) for trace in scatter) == 500
    assert len(heatmaps) == 1 and np.asarray(heatmaps[0].z).shape == (64, 64)
    for trace in scatter:  # customdata is the frame row: a click maps back to the right sample
        rows = np.asarray(trace.customdata)
        assert np.allclose(np.asarray(trace.x), frame["x"].to_numpy()[rows])
        assert set(frame["label"].iloc[rows].astype(str)) == {trace.name}
    small, drawn_small = map_view_figure(frame.head(200), frame["label"].head(200), DrawConfig(point_budget=500))
    assert drawn_small == 200 and not [t for t in small.data if t.type == "heatmap"]
    assert len(json.dumps(figure.to_plotly_json(), default=str)) < 200_000


def test_numeric_colours_draw_one_trace_with_a_scale():
    frame = _frame(2_000)
    figure, drawn = map_view_figure(frame, pd.Series(np.arange(2_000.0), name="score"), DrawConfig(point_budget=300))
    scatter = [trace for trace in figure.data if trace.type == "scattergl"]
    assert drawn == 300 and len(scatter) == 1 and len(scatter[0].x) == 300


def test_selection_table_reads_only_the_first_rows(embedded_dataset):
    ids = embedded_dataset.values("id")
    chosen = ids[10:40]
    table = mapview.selection_table(embedded_dataset, chosen, "ground_truth", limit=5)
    assert list(table["id"]) == chosen[:5]
    assert len(mapview.selection_table(embedded_dataset, chosen, "ground_truth")) == 30


def test_attributes_of_a_large_frame_are_aligned_by_id(embedded_dataset, monkeypatch):
    frame = pd.DataFrame({"id": list(reversed(embedded_dataset.values("id"))), "x": 0.0, "y": 0.0})
    small = mapview.with_attributes(embedded_dataset, frame, "ground_truth")
    monkeypatch.setattr(mapview, "_ALIGN_ABOVE", 10)  # take the whole-dataset read, aligned by id
    large = mapview.with_attributes(embedded_dataset, frame, "ground_truth")
    pd.testing.assert_frame_equal(small, large)
    assert list(large["id"]) == list(frame["id"])
