"""2-D maps of the embedding space (UMAP) and clusters, cached on disk.

numba compiles UMAP's kernels on first use in every process (~40 s here), so a map is
computed once per (dataset, embedding field, settings, sample set) and stored as a small
``.npz`` under the cache directory: an app restart, a new page or another process reads it
back in milliseconds. ``curation map --dataset NAME`` fills the cache headlessly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from curation.paths import cache_dir
from curation.errors import CurationInputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectionConfig:
    """UMAP settings. ``n_neighbors`` in [5, 50] works well; larger keeps more global shape.

    Embeddings are L2-normalised first, so ``euclidean`` ranks neighbours exactly as cosine
    does while using UMAP's fastest kernels.
    """

    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    seed: int = 51

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ClusterConfig:
    """``method`` is ``kmeans`` (``n_clusters`` groups) or ``hdbscan`` (density; -1 = noise)."""

    method: str = "kmeans"
    n_clusters: int = 10
    min_cluster_size: int = 10
    seed: int = 51


CLUSTER_METHODS = ("kmeans", "hdbscan")


def normalize_rows(embeddings: np.ndarray) -> np.ndarray:
    """Unit-length rows; zero and non-finite rows become all-zero rows."""
    matrix = np.nan_to_num(np.asarray(embeddings, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix), where=norms > 0)


def _fallback_layout(matrix: np.ndarray) -> np.ndarray:
    """For too few samples for UMAP: PCA to 2-D (padded with zeros)."""
    centered = matrix - matrix.mean(axis=0, keepdims=True)
    if len(matrix) < 2 or not np.any(centered):
        return np.zeros((len(matrix), 2), dtype=np.float32)
    _, _, components = np.linalg.svd(centered, full_matrices=False)
    coords = centered @ components[:2].T
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((len(coords), 2 - coords.shape[1]))])
    return coords.astype(np.float32)


def map_neighbors(count: int, config: ProjectionConfig) -> int:
    """UMAP's ``n_neighbors`` for ``count`` samples (it counts the point itself)."""
    return max(2, min(config.n_neighbors, count - 1))


def usable_knn(knn, count: int, n_neighbors: int):
    """``knn`` (from :func:`curation.neighbors.umap_precomputed_knn`) cut to ``n_neighbors``
    columns, or None when UMAP must search itself: too few columns, another sample count,
    or rows without a full set of neighbours (broken vectors would get NaN coordinates)."""
    if knn is None:
        return None
    indices, distances = knn[0], knn[1]
    if indices.shape[0] != count or indices.shape[1] < n_neighbors:
        return None
    indices, distances = indices[:, :n_neighbors].copy(), distances[:, :n_neighbors].copy()
    if (indices < 0).any() or not np.isfinite(distances).all():
        return None
    return indices, distances, None


def compute_projection(embeddings: np.ndarray, config: ProjectionConfig = ProjectionConfig(), *,
                       knn=None) -> np.ndarray:
    """(N, D) embeddings -> (N, 2) float32 UMAP coordinates.

    ``knn``: the shared neighbour graph as ``(indices, distances, None)``
    (:func:`curation.neighbors.umap_precomputed_knn`); UMAP then skips its own neighbour
    search. Ignored where :func:`usable_knn` says so. Fewer than 4 samples cannot support
    a UMAP graph; they get a PCA layout instead. ``n_neighbors`` is clamped to N - 1.
    """
    import warnings

    matrix = normalize_rows(embeddings)
    if len(matrix) < 4:
        return _fallback_layout(matrix)
    import umap

    n_neighbors = map_neighbors(len(matrix), config)
    precomputed = usable_knn(knn, len(matrix), n_neighbors)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=n_neighbors,
        min_dist=config.min_dist,
        metric=config.metric,
        random_state=config.seed,
        n_jobs=1,  # a seed makes UMAP single-threaded anyway; say so and silence its warning
        precomputed_knn=precomputed if precomputed is not None else (None, None, None),
    )
    with warnings.catch_warnings():
        # Without a search index UMAP.transform is unavailable; the map never transforms new points.
        warnings.filterwarnings("ignore", message="precomputed_knn\\[2\\]")
        return reducer.fit_transform(matrix).astype(np.float32)


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()


def _cache_file(kind: str, dataset_name: str, field: str, config) -> tuple[str, "os.PathLike"]:
    key = hashlib.sha1(json.dumps([dataset_name, field, dataclasses.asdict(config)], sort_keys=True).encode()).hexdigest()
    return key, cache_dir() / kind / f"{key}.npz"


def cached_projection(dataset_name: str, field: str, ids: list[str], embeddings: np.ndarray,
                      config: ProjectionConfig = ProjectionConfig(), *, share_neighbors: bool = True) -> np.ndarray:
    """:func:`compute_projection`, read from / written to the disk cache.

    The cache entry is valid only for exactly the same sample ids in the same order. With
    ``share_neighbors`` the UMAP uses the disk-cached neighbour graph the finders use (the
    same k when ``n_neighbors`` <= 16), computing it first if needed.
    """
    _, path = _cache_file("projections", dataset_name, field, config)
    digest = _ids_digest(ids)
    if os.path.exists(path):
        try:
            with np.load(path) as stored:
                if str(stored["ids_digest"]) == digest:
                    return stored["coords"]
        except (OSError, KeyError, ValueError) as error:
            logger.warning("ignoring unreadable projection cache %s: %s", path, error)
    knn = None
    if share_neighbors and len(ids) >= 4 and config.metric == "euclidean":
        from curation.neighbors import cached_neighbors, umap_precomputed_knn

        k = min(max(15, map_neighbors(len(ids), config) - 1), len(ids) - 1)
        knn = umap_precomputed_knn(cached_neighbors(dataset_name, field, ids, normalize_rows(embeddings), k))
    coords = compute_projection(embeddings, config, knn=knn)
    from curation.files import atomic_file

    with atomic_file(path, make_parents=True) as partial:  # the name keeps .npz, so savez adds nothing
        np.savez(partial, coords=coords, ids_digest=np.array(digest))
    return coords


def compute_clusters(embeddings: np.ndarray, config: ClusterConfig = ClusterConfig()) -> np.ndarray:
    """Cluster ids (N,) for the embeddings; HDBSCAN marks noise with -1.

    Raises:
        ValueError: unknown method (the message lists the valid ones).
    """
    if config.method not in CLUSTER_METHODS:
        raise CurationInputError(f"unknown cluster method {config.method!r}. Available: {', '.join(CLUSTER_METHODS)}")
    matrix = normalize_rows(embeddings)
    count = len(matrix)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if config.method == "kmeans":
        from sklearn.cluster import MiniBatchKMeans, KMeans

        k = max(1, min(config.n_clusters, count))
        estimator = (KMeans if count <= 20_000 else MiniBatchKMeans)(n_clusters=k, random_state=config.seed, n_init=3)
        return estimator.fit_predict(matrix).astype(np.int64)
    from sklearn.cluster import HDBSCAN
    from sklearn.decomposition import PCA

    if count < 3:
        return np.full(count, -1, dtype=np.int64)
    # Density estimates degrade in hundreds of dimensions; 32 PCA components keep the structure.
    reduced = PCA(n_components=min(32, count, matrix.shape[1]), random_state=config.seed).fit_transform(matrix)
    size = max(2, min(config.min_cluster_size, count))
    return HDBSCAN(min_cluster_size=size).fit_predict(reduced).astype(np.int64)
