"""UMAP maps, their disk cache, and clusters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from curation import projection
from curation.projection import ClusterConfig, ProjectionConfig, compute_clusters, normalize_rows


def _blobs(per_blob: int = 40, blobs: int = 3, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(blobs, dim)) * 6
    points = np.concatenate([center + rng.normal(size=(per_blob, dim)) for center in centers])
    return points.astype(np.float32), np.repeat(np.arange(blobs), per_blob)


def test_normalize_rows_handles_zero_and_nan_rows():
    matrix = np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0]], dtype=np.float32)
    normalized = normalize_rows(matrix)
    assert np.allclose(normalized[0], [0.6, 0.8])
    assert np.all(normalized[1] == 0)
    assert np.allclose(normalized[2], [0.0, 1.0])
    assert np.isfinite(normalized).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 3), st.integers(1, 6))
def test_tiny_inputs_get_a_finite_layout(count, dim):
    matrix = np.random.default_rng(count * 7 + dim).normal(size=(count, dim)).astype(np.float32)
    coords = projection.compute_projection(matrix)
    assert coords.shape == (count, 2)
    assert np.isfinite(coords).all()


def test_umap_keeps_blobs_apart():
    from sklearn.manifold import trustworthiness

    points, blob = _blobs()
    coords = projection.compute_projection(points, ProjectionConfig(n_neighbors=10))
    assert coords.shape == (len(points), 2) and coords.dtype == np.float32
    # Quality floor on the layout itself, as umap-learn's own tests do.
    assert trustworthiness(normalize_rows(points), coords, n_neighbors=10) >= 0.8
    centroids = np.stack([coords[blob == b].mean(axis=0) for b in range(3)])
    spread = max(np.linalg.norm(coords[blob == b] - centroids[b], axis=1).mean() for b in range(3))
    gaps = [np.linalg.norm(centroids[a] - centroids[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread


def test_projection_is_cached_per_ids_and_config(monkeypatch):
    points, _ = _blobs(per_blob=10)
    ids = [f"id{i}" for i in range(len(points))]
    calls = []
    real = projection.compute_projection
    monkeypatch.setattr(projection, "compute_projection", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = projection.cached_projection("ds-cache", "emb", ids, points)
    second = projection.cached_projection("ds-cache", "emb", ids, points)
    assert len(calls) == 1 and np.array_equal(first, second)
    projection.cached_projection("ds-cache", "emb", ids[:-1], points[:-1])  # other samples
    projection.cached_projection("ds-cache", "emb", ids, points, ProjectionConfig(n_neighbors=5))  # other settings
    assert len(calls) == 3


def test_corrupt_cache_file_is_recomputed_not_fatal(monkeypatch):
    points, _ = _blobs(per_blob=5)
    ids = [f"id{i}" for i in range(len(points))]
    _, path = projection._cache_file("projections", "ds-corrupt", "emb", ProjectionConfig())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a npz file")
    coords = projection.cached_projection("ds-corrupt", "emb", ids, points)
    assert coords.shape == (len(points), 2)


def test_kmeans_recovers_blobs_and_is_seeded():
    from sklearn.metrics import adjusted_rand_score

    points, blob = _blobs()
    labels = compute_clusters(points, ClusterConfig(method="kmeans", n_clusters=3))
    assert adjusted_rand_score(blob, labels) == pytest.approx(1.0)
    assert np.array_equal(labels, compute_clusters(points, ClusterConfig(method="kmeans", n_clusters=3)))


def test_hdbscan_finds_dense_groups_and_marks_noise():
    points, blob = _blobs(per_blob=30)
    labels = compute_clusters(points, ClusterConfig(method="hdbscan", min_cluster_size=5))
    assert len(set(labels) - {-1}) >= 3 - 1
    assert compute_clusters(points[:2], ClusterConfig(method="hdbscan")).tolist() == [-1, -1]


def test_cluster_edge_cases_and_bad_method():
    assert compute_clusters(np.zeros((0, 4)), ClusterConfig()).shape == (0,)
    assert compute_clusters(np.ones((2, 4)), ClusterConfig(n_clusters=10)).shape == (2,)
    with pytest.raises(ValueError, match="unknown cluster method 'dbscan'. Available: kmeans, hdbscan"):
        compute_clusters(np.ones((3, 2)), ClusterConfig(method="dbscan"))


def test_map_reuses_the_shared_neighbour_graph(monkeypatch):
    """The map's UMAP gets the finders' cached kNN graph instead of searching again."""
    from curation import neighbors
    from sklearn.manifold import trustworthiness

    points, blob = _blobs()
    ids = [f"id{i}" for i in range(len(points))]
    graph = neighbors.cached_neighbors("ds-shared", "emb", ids, normalize_rows(points), 15)  # as analyze does
    seen = {}
    real = projection.compute_projection

    def spy(embeddings, config=ProjectionConfig(), *, knn=None):
        seen["knn"] = knn
        return real(embeddings, config, knn=knn)

    monkeypatch.setattr(projection, "compute_projection", spy)
    monkeypatch.setattr(neighbors, "compute_neighbors", lambda *a, **k: pytest.fail("the graph was computed again"))
    coords = projection.cached_projection("ds-shared", "emb", ids, points, ProjectionConfig(n_neighbors=10))
    assert np.array_equal(seen["knn"][0][:, 1:], graph.indices)  # the finders' graph, self first
    assert np.isfinite(coords).all()
    assert trustworthiness(normalize_rows(points), coords, n_neighbors=10) >= 0.8
    centroids = np.stack([coords[blob == b].mean(axis=0) for b in range(3)])
    assert min(np.linalg.norm(centroids[a] - centroids[b]) for a in range(3) for b in range(a + 1, 3)) > 1.0


def test_a_graph_with_broken_rows_is_not_given_to_umap():
    """Rows without neighbours (zero or NaN vectors) would get NaN coordinates from UMAP."""
    from curation.neighbors import compute_neighbors, umap_precomputed_knn

    points, _ = _blobs(per_blob=10)
    points[3] = 0.0
    knn = umap_precomputed_knn(compute_neighbors(normalize_rows(points), 10))
    assert projection.usable_knn(knn, len(points), 10) is None
    assert projection.usable_knn(knn, len(points) + 1, 10) is None
    coords = projection.compute_projection(points, ProjectionConfig(n_neighbors=10), knn=knn)
    assert np.isfinite(coords).all()
    clean, _ = _blobs(per_blob=10)
    usable = projection.usable_knn(umap_precomputed_knn(compute_neighbors(normalize_rows(clean), 15)), len(clean), 10)
    assert usable[0].shape == (len(clean), 10) and (usable[0][:, 0] == np.arange(len(clean))).all()
