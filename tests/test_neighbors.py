"""The shared k-nearest-neighbour graph: exactness, corner cases, approximate recall, the
UMAP hand-off and the disk cache."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from curation import neighbors
from curation.neighbors import NeighborGraph, cached_neighbors, compute_neighbors, umap_precomputed_knn


# --------------------------------------------------------------------------- helpers


def _brute_force(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: (N, k) sorted similarities and the valid mask, from the full N x N matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    finite = np.isfinite(matrix).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], matrix, 0.0), axis=1)
    valid = finite & (norms > 0)
    unit = np.zeros_like(matrix)
    unit[valid] = matrix[valid] / norms[valid, None]
    similarities = unit @ unit.T
    similarities[~valid, :] = -np.inf
    similarities[:, ~valid] = -np.inf
    np.fill_diagonal(similarities, -np.inf)
    expected = -np.sort(-similarities, axis=1)[:, :k]
    if expected.shape[1] < k:
        expected = np.hstack([expected, np.full((len(matrix), k - expected.shape[1]), -np.inf)])
    expected[~valid] = -np.inf
    return expected, valid, unit


def _assert_matches_brute_force(graph: NeighborGraph, matrix: np.ndarray, k: int) -> None:
    expected, valid, unit = _brute_force(matrix, k)
    count = len(matrix)
    assert graph.indices.shape == graph.similarities.shape == (count, k)
    assert graph.indices.dtype == np.int64 and graph.similarities.dtype == np.float32
    assert np.array_equal(graph.valid, valid)
    present = graph.indices >= 0
    # padding exactly where fewer than k valid others exist, NaN similarity there
    assert np.array_equal(present, np.isfinite(expected))
    assert np.isnan(graph.similarities[~present]).all()
    # the similarities are the exact top k, in order
    assert np.allclose(graph.similarities[present], expected[present], atol=1e-5)
    rows = np.repeat(np.arange(count), k).reshape(count, k)
    # each returned index really has that similarity (ties may come in either order)
    true = np.einsum("ij,ij->i", unit[rows[present]], unit[graph.indices[present]])
    assert np.allclose(true, graph.similarities[present], atol=1e-5)
    assert not np.any(graph.indices == np.arange(count)[:, None]), "self must be excluded"
    assert valid[graph.indices[present]].all(), "broken rows must never be a neighbour"
    for row in range(count):
        found = graph.indices[row][present[row]]
        assert len(np.unique(found)) == len(found)


def _clusters(count: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit rows in Gaussian clusters with a low-rank spread (like real embeddings)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    bases = rng.normal(size=(clusters, 4, dim)) * 0.3
    labels = rng.integers(0, clusters, count)
    points = centers[labels] + np.einsum("nr,nrd->nd", rng.normal(size=(count, 4)), bases[labels])
    points += 0.05 * rng.normal(size=(count, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def _recall(graph: NeighborGraph, reference: NeighborGraph) -> float:
    """Share of returned neighbours at least as similar as the exact k-th one."""
    kth = reference.similarities[:, -1]
    return float(np.mean(graph.similarities >= kth[:, None] - 1e-5))


# small integer entries give exact duplicates, zero rows and exact ties on purpose
_integer_matrices = st.tuples(st.integers(0, 24), st.integers(1, 4)).flatmap(
    lambda shape: hnp.arrays(np.float32, shape, elements=st.integers(-2, 2).map(float)))


# --------------------------------------------------------------------------- exact search


@settings(max_examples=60, deadline=None)
@given(_integer_matrices, st.integers(1, 8), st.integers(1, 9))
def test_exact_matches_brute_force_with_ties_duplicates_and_zero_rows(matrix, k, block_size):
    graph = compute_neighbors(matrix, k, method="exact", device="cpu", block_size=block_size)
    _assert_matches_brute_force(graph, matrix, k)
    assert graph.method == "exact" and graph.backend in ("numpy", "none")


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 60), st.integers(1, 20), st.integers(1, 16), st.integers(0, 10_000))
def test_exact_matches_brute_force_on_continuous_data(count, k, block_size, seed):
    matrix = np.random.default_rng(seed).normal(size=(count, 5)).astype(np.float32)
    graph = compute_neighbors(matrix, k, method="exact", device="cpu", block_size=block_size)
    _assert_matches_brute_force(graph, matrix, k)


def test_exact_indices_equal_brute_force_order():
    matrix = _clusters(700, seed=3)
    graph = compute_neighbors(matrix, 10, method="exact", device="cpu", block_size=128)
    similarities = matrix.astype(np.float64) @ matrix.T.astype(np.float64)
    np.fill_diagonal(similarities, -np.inf)
    expected = np.argsort(-similarities, axis=1, kind="stable")[:, :10]
    near_tie = np.abs(np.diff(-np.sort(-similarities, axis=1)[:, :11], axis=1)).min(axis=1) < 1e-5
    assert np.array_equal(graph.indices[~near_tie], expected[~near_tie])
    assert near_tie.mean() < 0.1


def test_block_size_does_not_change_the_result():
    matrix = _clusters(300, seed=4)
    reference = compute_neighbors(matrix, 7, method="exact", device="cpu")
    for block_size in (2, 16, 99, 300, 10_000):
        graph = compute_neighbors(matrix, 7, method="exact", device="cpu", block_size=block_size)
        assert np.allclose(graph.similarities, reference.similarities, atol=1e-5)


def test_duplicate_pairs_find_each_other_both_ways():
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(40, 8)).astype(np.float32)
    matrix[30] = matrix[3]
    matrix[31] = 2.5 * matrix[7]  # same direction: a duplicate under cosine
    matrix[32] = matrix[33] = matrix[11]  # three copies
    for method in ("exact", "approx"):
        graph = compute_neighbors(matrix, 4, method=method, device="cpu")
        assert graph.indices[3, 0] == 30 and graph.indices[30, 0] == 3
        assert graph.indices[7, 0] == 31 and graph.indices[31, 0] == 7
        for row, others in ((11, {32, 33}), (32, {11, 33}), (33, {11, 32})):
            assert set(graph.indices[row, :2]) == others
            assert np.allclose(graph.similarities[row, :2], 1.0, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 50), st.integers(1, 12), st.integers(0, 10_000))
def test_permuting_rows_permutes_the_result(count, k, seed):
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(count, 6)).astype(np.float32)
    matrix[rng.random(count) < 0.1] = 0.0
    permutation = rng.permutation(count)
    graph = compute_neighbors(matrix, k, method="exact", device="cpu", block_size=7)
    permuted = compute_neighbors(matrix[permutation], k, method="exact", device="cpu", block_size=7)
    assert np.array_equal(permuted.valid, graph.valid[permutation])
    assert np.allclose(permuted.similarities, graph.similarities[permutation], atol=1e-5, equal_nan=True)
    # neighbour sets agree wherever the k-th similarity is not a near-tie with the next one
    mapped = np.where(permuted.indices >= 0, permutation[np.maximum(permuted.indices, 0)], -1)
    wider = compute_neighbors(matrix, k + 1, method="exact", device="cpu").similarities
    gap = np.abs(np.nan_to_num(wider[:, k - 1], nan=9) - np.nan_to_num(wider[:, k], nan=-9))
    clear = gap[permutation] > 1e-4
    for row in np.flatnonzero(clear):
        assert set(mapped[row]) == set(graph.indices[permutation[row]])


# --------------------------------------------------------------------------- corner cases


@pytest.mark.parametrize("method", ["exact", "approx", "auto"])
def test_broken_rows_have_no_neighbours_and_are_nobodys_neighbour(method):
    matrix = _clusters(60, dim=8, seed=6)
    matrix[5] = 0.0
    matrix[9, 2] = np.nan  # partly NaN: a failed embedding, not salvaged
    matrix[17] = np.inf
    matrix[18] = matrix[5]  # two zero rows are not duplicates of each other
    graph = compute_neighbors(matrix, 5, method=method, device="cpu")
    broken = [5, 9, 17, 18]
    assert not graph.valid[broken].any() and graph.valid.sum() == 56
    assert (graph.indices[broken] == -1).all() and np.isnan(graph.similarities[broken]).all()
    assert not np.isin(graph.indices, broken).any()
    assert np.isfinite(graph.similarities[graph.valid]).all()
    if method != "approx":
        _assert_matches_brute_force(graph, matrix, 5)


@pytest.mark.parametrize("method", ["exact", "approx"])
@pytest.mark.parametrize("count,k", [(0, 3), (1, 1), (1, 4), (2, 1), (2, 5), (5, 5), (5, 4)])
def test_tiny_inputs_pad_with_minus_one_and_nan(method, count, k):
    matrix = np.random.default_rng(count).normal(size=(count, 3)).astype(np.float32)
    graph = compute_neighbors(matrix, k, method=method, device="cpu")
    assert graph.indices.shape == (count, k) and graph.similarities.shape == (count, k)
    others = min(k, max(count - 1, 0))
    assert (graph.indices[:, others:] == -1).all() and np.isnan(graph.similarities[:, others:]).all()
    assert (graph.indices[:, :others] >= 0).all()
    _assert_matches_brute_force(graph, matrix, k)


def test_only_broken_rows():
    graph = compute_neighbors(np.zeros((4, 3), dtype=np.float32), 2)
    assert (graph.indices == -1).all() and not graph.valid.any()


def test_graph_is_read_only():
    graph = compute_neighbors(_clusters(20, dim=4), 3)
    with pytest.raises(ValueError):
        graph.indices[0, 0] = 1
    with pytest.raises(ValueError):
        graph.similarities[0, 0] = 0.5
    assert graph.k == 3 and len(graph) == 20 and graph.info()["method"] == "exact"


def test_float64_and_unnormalised_input():
    matrix = _clusters(50, dim=6).astype(np.float64) * np.arange(1, 51)[:, None]
    graph = compute_neighbors(matrix, 4, method="exact")
    _assert_matches_brute_force(graph, matrix, 4)


# --------------------------------------------------------------------------- approximate search


def test_approx_recall_on_clustered_points():
    matrix = _clusters(3000, dim=64, clusters=30, seed=7)
    exact = compute_neighbors(matrix, 15, method="exact", device="cpu")
    approx = compute_neighbors(matrix, 15, method="approx")
    assert approx.method == "approx" and approx.backend == "faiss-hnsw"
    assert _recall(approx, exact) >= 0.95
    assert not np.any(approx.indices == np.arange(len(matrix))[:, None])
    assert np.all(np.diff(approx.similarities, axis=1) <= 1e-6), "sorted most similar first"


def test_approx_drops_self_when_duplicates_hide_it():
    # 30 identical rows: HNSW may return any 6 of them for k + 1 = 6; self never stays
    matrix = np.vstack([np.ones((30, 4)), np.random.default_rng(8).normal(size=(20, 4))]).astype(np.float32)
    graph = compute_neighbors(matrix, 5, method="approx")
    assert not np.any(graph.indices == np.arange(50)[:, None])
    assert np.allclose(graph.similarities[:30], 1.0, atol=1e-5)


def test_auto_switches_to_approx_above_the_threshold(monkeypatch):
    matrix = _clusters(300, dim=8)
    assert compute_neighbors(matrix, 5, device="cpu").method == "exact"
    monkeypatch.setattr(neighbors, "EXACT_MAX_SAMPLES", 299)
    graph = compute_neighbors(matrix, 5, device="cpu")
    assert graph.method == "approx" and graph.backend == "faiss-hnsw"
    # broken rows do not count towards the threshold
    matrix[:10] = 0.0
    assert compute_neighbors(matrix, 5, device="cpu").method == "exact"


# --------------------------------------------------------------------------- devices


def test_auto_device_picks_torch_on_cuda(monkeypatch):
    calls = []

    def fake_torch(unit, k, device, block):
        calls.append(device)
        return neighbors._exact_cpu(unit, k, 64)

    monkeypatch.setattr(neighbors, "_cuda_available", lambda: True)
    monkeypatch.setattr(neighbors, "_exact_torch", fake_torch)
    monkeypatch.setattr(neighbors, "EXACT_MAX_SAMPLES", 10)  # on CUDA, auto stays exact anyway
    graph = compute_neighbors(_clusters(40, dim=4), 3)
    assert calls == ["cuda"] and graph.backend == "torch-cuda" and graph.method == "exact"
    assert compute_neighbors(_clusters(40, dim=4), 3, device="cpu").backend == "faiss-hnsw"  # CPU: threshold applies
    assert compute_neighbors(_clusters(40, dim=4), 3, method="exact", device="cpu").backend == "numpy"
    assert compute_neighbors(_clusters(40, dim=4), 3, method="approx").backend == "faiss-hnsw"
    assert calls == ["cuda"]


def test_auto_device_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(neighbors, "_cuda_available", lambda: False)
    assert compute_neighbors(_clusters(40, dim=4), 3).backend == "numpy"
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        compute_neighbors(_clusters(40, dim=4), 3, device="cuda")


@pytest.mark.parametrize("block", [None, 1, 5, 64])
def test_torch_path_matches_brute_force_on_the_cpu(block):
    # The CUDA code is device-generic: run it on torch's CPU device to check the chunking,
    # the self mask across chunk edges and the merge.
    pytest.importorskip("torch")
    matrix = _clusters(90, dim=6, seed=9)
    matrix[[4, 50]] = 0.0
    unit, valid = neighbors._unit_rows(matrix)
    rows = np.flatnonzero(valid)
    best_sim, best_idx = neighbors._exact_torch(unit[rows], 7, "cpu", block)
    indices, similarities = neighbors._to_full(best_sim, best_idx, rows, len(matrix), 7)
    _assert_matches_brute_force(NeighborGraph(indices, similarities, valid, "exact", "torch-cpu"), matrix, 7)
    # fewer rows than k: -inf slots become padding
    best_sim, best_idx = neighbors._exact_torch(unit[rows[:3]], 7, "cpu", block)
    assert (best_idx[:, 2:] == -1).all()


@pytest.mark.skipif(not neighbors._cuda_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    matrix = _clusters(2000, dim=64)
    cuda = compute_neighbors(matrix, 10, method="exact", device="cuda")
    cpu = compute_neighbors(matrix, 10, method="exact", device="cpu")
    assert cuda.backend == "torch-cuda"
    assert np.allclose(cuda.similarities, cpu.similarities, atol=1e-5)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs,message", [
    ({"embeddings": np.zeros(5)}, r"shape \(n_samples, dim\), but got an array of shape \(5,\)"),
    ({"embeddings": np.array([["a", "b"]])}, r"real numeric embeddings, but got dtype <U1"),
    ({"k": 0}, r"k to be a positive integer, but got 0"),
    ({"k": True}, r"k to be a positive integer, but got True"),
    ({"method": "hnsw"}, r"Unknown neighbour method 'hnsw'. Available: auto, exact, approx"),
    ({"device": "tpu"}, r"Unknown device 'tpu'. Available: auto, cpu, cuda"),
    ({"block_size": 0}, r"block_size to be a positive integer or None, but got 0"),
])
def test_validation_messages(kwargs, message):
    arguments = {"embeddings": np.ones((3, 2), dtype=np.float32)} | kwargs
    with pytest.raises(ValueError, match=message):
        compute_neighbors(**arguments)


def test_cached_neighbors_needs_one_id_per_row():
    with pytest.raises(ValueError, match="one id per embedding row, but got 2 ids for 3 rows"):
        cached_neighbors("ds", "emb", ["a", "b"], np.ones((3, 2), dtype=np.float32))


# --------------------------------------------------------------------------- UMAP hand-off


def test_umap_precomputed_knn_format():
    matrix = _clusters(30, dim=5)
    matrix[3] = 0.0
    graph = compute_neighbors(matrix, 29)
    indices, distances, search_index = umap_precomputed_knn(graph)
    assert search_index is None
    assert indices.shape == distances.shape == (30, 30)
    assert np.array_equal(indices[:, 0], np.arange(30)) and (distances[:, 0] == 0).all()
    present = graph.indices >= 0
    euclidean = np.linalg.norm(matrix[np.arange(30)[:, None].repeat(29, 1)[present]] - matrix[graph.indices[present]], axis=1)
    assert np.allclose(distances[:, 1:][present], euclidean, atol=1e-3)
    assert np.all(np.diff(np.where(np.isinf(distances), 10.0, distances), axis=1) >= -1e-6), "ascending, padding last"
    assert (indices[:, 1:][~present] == -1).all() and np.isinf(distances[:, 1:][~present]).all()
    assert indices.flags.writeable and distances.flags.writeable


@pytest.mark.slow  # numba compiles UMAP's kernels once per process (~40 s)
def test_umap_accepts_the_precomputed_graph_and_builds_the_same_graph():
    import warnings

    import umap
    from sklearn.manifold import trustworthiness

    matrix = _clusters(300, dim=16, clusters=4, seed=10)
    graph = compute_neighbors(matrix, 15)
    settings_ = {"n_neighbors": 16, "random_state": 0, "n_epochs": 100, "n_jobs": 1}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="precomputed_knn")
        reducer = umap.UMAP(precomputed_knn=umap_precomputed_knn(graph), **settings_)
        coords = reducer.fit_transform(matrix)
    own = umap.UMAP(**settings_).fit(matrix)  # umap's own exact search (fewer than 4096 rows)
    assert coords.shape == (300, 2) and np.isfinite(coords).all()
    assert abs(reducer.graph_ - own.graph_).max() < 1e-3, "same fuzzy graph as umap's own neighbours"
    assert trustworthiness(matrix, coords, n_neighbors=10) >= 0.8


@pytest.mark.slow
def test_umap_gives_broken_rows_nan_coordinates():
    # Broken rows have no edges; umap places points without neighbours at NaN on purpose.
    import warnings

    import umap

    matrix = _clusters(80, dim=8, seed=11)
    matrix[[0, 40]] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coords = umap.UMAP(n_neighbors=6, precomputed_knn=umap_precomputed_knn(compute_neighbors(matrix, 8)),
                           random_state=0, n_epochs=50, n_jobs=1).fit_transform(matrix)
    assert coords.shape == (80, 2)
    assert np.array_equal(np.flatnonzero(~np.isfinite(coords).all(axis=1)), [0, 40])


# --------------------------------------------------------------------------- cache


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of compute_neighbors made by cached_neighbors."""
    calls = []
    real = neighbors.compute_neighbors

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(neighbors, "compute_neighbors", counting)
    return calls


def _ids(count: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{row}" for row in range(count)]


def test_cache_hit_and_misses(counted):
    matrix = _clusters(50, dim=6)
    ids = _ids(50)
    first = cached_neighbors("ds-hit", "emb", ids, matrix, k=5)
    second = cached_neighbors("ds-hit", "emb", ids, matrix, k=5)
    assert len(counted) == 1
    assert np.array_equal(first.indices, second.indices) and np.array_equal(first.similarities, second.similarities,
                                                                            equal_nan=True)
    assert not second.indices.flags.writeable
    cached_neighbors("ds-hit", "emb", ids, matrix, k=6)  # other k
    cached_neighbors("ds-hit", "emb2", ids, matrix, k=5)  # other field
    cached_neighbors("ds-other", "emb", ids, matrix, k=5)  # other dataset
    cached_neighbors("ds-hit", "emb", ids, matrix, k=5, method="exact")  # other method
    assert len(counted) == 5
    cached_neighbors("ds-hit", "emb", ids, matrix, k=5)
    assert len(counted) == 5


def test_cache_invalidated_by_changed_embeddings_or_removed_ids(counted):
    matrix = _clusters(50, dim=6)
    ids = _ids(50)
    cached_neighbors("ds-inv", "emb", ids, matrix, k=5)
    changed = _clusters(50, dim=6, seed=99)  # re-embedded under the same ids
    graph = cached_neighbors("ds-inv", "emb", ids, changed, k=5)
    assert len(counted) == 2
    _assert_matches_brute_force(graph, changed, 5)
    graph = cached_neighbors("ds-inv", "emb", ids[:40], changed[:40], k=5)  # samples removed
    assert len(counted) == 3
    _assert_matches_brute_force(graph, changed[:40], 5)
    cached_neighbors("ds-inv", "emb", ids[:40], changed[:40], k=5)
    assert len(counted) == 3


def test_corrupt_cache_file_is_recomputed(counted, caplog):
    matrix = _clusters(30, dim=6)
    ids = _ids(30)
    cached_neighbors("ds-corrupt", "emb", ids, matrix, k=4)
    path = neighbors._cache_path("ds-corrupt", "emb", 4, "auto")
    path.write_bytes(b"not an npz file")
    with caplog.at_level(logging.WARNING, logger="curation.neighbors"):
        graph = cached_neighbors("ds-corrupt", "emb", ids, matrix, k=4)
    assert len(counted) == 2 and "unreadable neighbour cache" in caplog.text
    _assert_matches_brute_force(graph, matrix, 4)
    # a readable file with inconsistent arrays is a miss too
    with np.load(path) as stored:
        entry = dict(stored)
    entry["indices"] = entry["indices"][:5]
    np.savez(path, **entry)
    cached_neighbors("ds-corrupt", "emb", ids, matrix, k=4)
    assert len(counted) == 3
    assert [name for name in os.listdir(path.parent) if "partial" in name] == []


def test_added_samples_extend_the_cached_graph_exactly(counted):
    rng = np.random.default_rng(12)
    matrix = _clusters(120, dim=8, seed=12)
    matrix[[7, 100]] = 0.0
    ids = _ids(120)
    old_rows = np.sort(rng.choice(120, 70, replace=False))
    cached_neighbors("ds-add", "emb", [ids[row] for row in old_rows], matrix[old_rows], k=6)
    assert len(counted) == 1
    graph = cached_neighbors("ds-add", "emb", ids, matrix, k=6)
    assert len(counted) == 1, "added samples are merged in, not recomputed"
    assert graph.backend == "numpy+incremental" and graph.method == "exact"
    _assert_matches_brute_force(graph, matrix, 6)
    # the extended graph is the new cache entry
    assert np.array_equal(cached_neighbors("ds-add", "emb", ids, matrix, k=6).indices, graph.indices)
    assert len(counted) == 1


def test_reordered_ids_reuse_the_cache(counted):
    matrix = _clusters(40, dim=6)
    ids = _ids(40)
    first = cached_neighbors("ds-order", "emb", ids, matrix, k=5)
    order = np.random.default_rng(13).permutation(40)
    graph = cached_neighbors("ds-order", "emb", [ids[row] for row in order], matrix[order], k=5)
    assert len(counted) == 1
    assert np.array_equal(order[graph.indices], first.indices[order])  # new positions -> old rows
    assert np.allclose(graph.similarities, first.similarities[order])


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 40), st.integers(1, 8), st.integers(0, 10_000))
def test_extending_equals_computing_afresh(count, k, seed):
    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(count, 4)).astype(np.float32)
    matrix[rng.random(count) < 0.1] = 0.0
    ids = _ids(count)
    old_rows = np.sort(rng.choice(count, rng.integers(1, count + 1), replace=False))
    old = compute_neighbors(matrix[old_rows], k, method="exact", device="cpu")
    entry = {"ids": [ids[row] for row in old_rows], "indices": old.indices, "similarities": old.similarities,
             "valid": old.valid, "method": "exact", "backend": "numpy",
             "fingerprint": neighbors._fingerprint(matrix[old_rows])}
    extended = neighbors._extend(entry, ids, matrix, k, "exact")
    assert extended is not None
    _assert_matches_brute_force(extended, matrix, k)


def test_extending_an_approx_graph_keeps_its_recall(monkeypatch):
    matrix = _clusters(2000, dim=32, clusters=15, seed=14)
    ids = _ids(2000)
    old = compute_neighbors(matrix[:1500], 10, method="approx")
    entry = {"ids": ids[:1500], "indices": old.indices, "similarities": old.similarities, "valid": old.valid,
             "method": "approx", "backend": old.backend, "fingerprint": neighbors._fingerprint(matrix[:1500])}
    extended = neighbors._extend(entry, ids, matrix, 10, "approx")
    exact = compute_neighbors(matrix, 10, method="exact", device="cpu")
    assert extended.method == "approx" and extended.backend == "faiss-hnsw+incremental"
    assert _recall(extended, exact) >= 0.95
    assert _recall(NeighborGraph(extended.indices[1500:], extended.similarities[1500:], extended.valid[1500:],
                                 "approx", ""), NeighborGraph(exact.indices[1500:], exact.similarities[1500:],
                                                              exact.valid[1500:], "exact", "")) == 1.0
    # too many new rows for brute force: a fresh index instead
    monkeypatch.setattr(neighbors, "EXACT_MAX_SAMPLES", 100)
    assert neighbors._extend(entry, ids, matrix, 10, "approx") is None
