"""2-D maps of the embedding space (UMAP) and clusters, cached on disk.

numba compiles UMAP's kernels on first use in every process (~40 s here), so a map is
computed once per (dataset, embedding field, settings, sample set) and stored as a small
``.npz`` under the cache directory: an app restart, a new page or another process reads it
back in milliseconds. ``curation map --dataset NAME`` fills the cache headlessly.

Above ``ProjectionConfig.sample_above`` rows (50,000) UMAP is fitted on a seeded sample and
the other rows are placed on it block by block (:func:`sampled_projection`): a million
512-d rows took about 6 CPU minutes on 2 cores, in bounded extra memory.
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

    Large maps: above ``sample_above`` rows UMAP is fitted on a seeded sample of
    ``sample_size`` rows and every other row is placed at the similarity-weighted mean of
    its ``placement_neighbors`` most similar sample rows (see :func:`place_on_sample`).
    ``sample_size`` in [20k, 100k] works well (a 50k fit took 36 CPU s here, the exact graph
    of the sample 28 CPU s more).
    """

    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "euclidean"
    seed: int = 51
    sample_above: int = 50_000
    sample_size: int = 50_000
    placement_neighbors: int = 10

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


def _validate_config(config: ProjectionConfig) -> None:
    if config.sample_size < 10 or config.sample_above < config.sample_size:
        raise CurationInputError(
            f"ProjectionConfig expects sample_size >= 10 and sample_above >= sample_size; got "
            f"sample_size={config.sample_size}, sample_above={config.sample_above}")
    if config.placement_neighbors < 1:
        raise CurationInputError(f"ProjectionConfig expects placement_neighbors >= 1; got {config.placement_neighbors}")


def _fit_umap(matrix: np.ndarray, config: ProjectionConfig, knn) -> np.ndarray:
    """UMAP of unit rows ``matrix`` (at least 4) -> (N, 2) float32."""
    import warnings

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
        # Without a search index UMAP.transform is unavailable; the map places new points itself.
        warnings.filterwarnings("ignore", message="precomputed_knn\\[2\\]")
        return reducer.fit_transform(matrix).astype(np.float32)


def compute_projection(embeddings: np.ndarray, config: ProjectionConfig = ProjectionConfig(), *,
                       knn=None) -> np.ndarray:
    """(N, D) embeddings -> (N, 2) float32 UMAP coordinates.

    ``knn``: the shared neighbour graph as ``(indices, distances, None)``
    (:func:`curation.neighbors.umap_precomputed_knn`); UMAP then skips its own neighbour
    search. Ignored where :func:`usable_knn` says so. Fewer than 4 samples cannot support
    a UMAP graph; they get a PCA layout instead. ``n_neighbors`` is clamped to N - 1.

    Above ``config.sample_above`` rows the map is fitted on a seeded sample and the rest
    placed on it (:func:`sampled_projection`); ``knn`` is then ignored (it spans all rows).

    Raises:
        CurationInputError: inconsistent sampling settings in ``config``.
    """
    _validate_config(config)
    if len(embeddings) > config.sample_above:
        return sampled_projection(embeddings, config)
    matrix = normalize_rows(embeddings)
    if len(matrix) < 4:
        return _fallback_layout(matrix)
    return _fit_umap(matrix, config, knn)


def sample_rows(count: int, config: ProjectionConfig) -> np.ndarray:
    """The sorted, seeded rows UMAP is fitted on when ``count`` exceeds ``config.sample_above``."""
    if count <= config.sample_above:
        return np.arange(count)
    return np.sort(np.random.default_rng(config.seed).choice(count, size=config.sample_size, replace=False))


def sampled_projection(embeddings: np.ndarray, config: ProjectionConfig = ProjectionConfig(), *,
                       block_size: int = 65_536) -> np.ndarray:
    """UMAP fitted on ``config.sample_size`` seeded rows; every other row placed on it.

    The fit uses our exact neighbour graph of the sample (:func:`curation.neighbors.compute_neighbors`,
    so UMAP's NN-descent is never compiled). The rest is placed by :func:`place_on_sample`
    in blocks of ``block_size`` rows, so memory beyond the input is the sample (``sample_size``
    x D floats), one block and the (N, 2) result. The sample's own coordinates are exactly
    UMAP's.

    Why placement and not ``UMAP.transform`` (benchmarks/README.md, "The map at 1M"; 512-d
    rows in 1,000 synthetic clusters, the same 50k-row fit, 150k rows placed, 2 shared
    cores): placement took 48 CPU s against transform's 119 (which also needs UMAP's own
    NN-descent index: another ~25 s of numba compile per process), kept trustworthiness
    (k = 10, 2,000 held-out rows) at 0.624 against 0.592, and the 10 map neighbours of a
    held-out row came from its own cluster 100% of the time against 65%. 5, 10 or 20
    neighbours gave the same figures. At 1,000,000 rows: the sample's graph 28 CPU s, the
    fit 36 CPU s, the placement of 950,000 rows 285 CPU s; held-out trustworthiness 0.622
    (fitted rows: 0.626). A placed row sits at a weighted mean, so placed rows of one tight
    cluster draw a little tighter than fitted ones.
    """
    from curation.neighbors import compute_neighbors, umap_precomputed_knn

    count = len(embeddings)
    rows = sample_rows(count, config)
    sample = normalize_rows(embeddings[rows])
    n_neighbors = map_neighbors(len(sample), config)
    graph = compute_neighbors(sample, max(1, n_neighbors - 1))
    logger.info("map: fitting UMAP on %d of %d rows", len(rows), count)
    sample_coords = _fit_umap(sample, config, umap_precomputed_knn(graph))
    coords = np.empty((count, 2), dtype=np.float32)
    coords[rows] = sample_coords
    rest = np.ones(count, dtype=bool)
    rest[rows] = False
    rest_rows = np.flatnonzero(rest)
    logger.info("map: placing %d rows on the sample", len(rest_rows))
    coords[rest_rows] = place_on_sample(embeddings, rest_rows, sample, sample_coords,
                                        neighbors=config.placement_neighbors, block_size=block_size)
    return coords


# Exact placement search below these; IVF-flat above (see _placement_index).
EXACT_PLACEMENT_MAX_SAMPLE = 10_000
EXACT_PLACEMENT_MAX_PRODUCTS = 2_000_000_000  # sample rows x rows to place


def _placement_index(sample: np.ndarray, query_count: int):
    """Inner-product search over the unit sample rows: exact when cheap, else IVF-flat.

    IVF (about 4 sqrt(S) lists, 8 probed) found the same 10 neighbours as exact search on
    clustered 512-d rows (recall@10 1.000, 50k sample) for about 1/8 of its CPU time.
    PCA to 64-d before the search kept only 0.76 of those neighbours yet gave the same
    layout quality on that data for 1/2.8 of the CPU time: the next step if placement
    time matters, once checked on real embeddings (benchmarks/README.md, "The map at 1M").
    """
    from curation.neighbors import _import_faiss

    faiss = _import_faiss()
    dim = sample.shape[1]
    if len(sample) < EXACT_PLACEMENT_MAX_SAMPLE or len(sample) * query_count <= EXACT_PLACEMENT_MAX_PRODUCTS:
        index = faiss.IndexFlatIP(dim)
        index.add(sample)
        return index, None
    lists = int(min(4096, 4 * np.sqrt(len(sample))))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    index.add(sample)
    index.nprobe = 8
    return index, quantizer  # the quantizer must outlive the index (faiss keeps a raw pointer)


def place_on_sample(embeddings: np.ndarray, rows: np.ndarray, sample: np.ndarray, sample_coords: np.ndarray, *,
                    neighbors: int = 10, block_size: int = 65_536) -> np.ndarray:
    """Map positions (len(rows), 2) for ``embeddings[rows]`` from a fitted sample.

    Each row lands at the mean of the map positions of its ``neighbors`` most similar
    sample rows (cosine), weighted by similarity (clipped at a small positive floor so an
    all-zero row lands at the plain mean of whatever it matched). Rows are read and
    normalised ``block_size`` at a time.

    Args:
        embeddings: (N, D) raw vectors (normalised here, per block).
        rows: (M,) row numbers of ``embeddings`` to place.
        sample: (S, D) unit rows the map was fitted on.
        sample_coords: (S, 2) their map positions.
    """
    placed = np.empty((len(rows), 2), dtype=np.float32)
    if len(rows) == 0:
        return placed
    index, _quantizer = _placement_index(np.ascontiguousarray(sample, dtype=np.float32), len(rows))
    k = max(1, min(neighbors, len(sample)))
    usable = np.isfinite(sample_coords).all(axis=1)
    fallback = np.nanmean(np.where(usable[:, None], sample_coords, np.nan), axis=0) if usable.any() else np.zeros(2)
    for start in range(0, len(rows), block_size):
        block = normalize_rows(embeddings[rows[start:start + block_size]])
        similarities, hits = index.search(block, k)
        valid = (hits >= 0) & usable[np.maximum(hits, 0)]
        weights = np.where(valid, np.maximum(similarities, 0.0) + 1e-6, 0.0)
        positions = sample_coords[np.maximum(hits, 0)]  # (B, k, 2)
        total = weights.sum(axis=1, keepdims=True)
        mean = np.einsum("bk,bkc->bc", weights, np.nan_to_num(positions)) / np.maximum(total, 1e-12)
        placed[start:start + len(block)] = np.where(total > 0, mean, fallback)
    return placed


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()


def _cache_file(kind: str, dataset_name: str, field: str, config) -> tuple[str, "os.PathLike"]:
    key = hashlib.sha1(json.dumps([dataset_name, field, dataclasses.asdict(config)], sort_keys=True).encode()).hexdigest()
    return key, cache_dir() / kind / f"{key}.npz"


def cached_projection(dataset_name: str, field: str, ids: list[str], embeddings: np.ndarray,
                      config: ProjectionConfig = ProjectionConfig(), *, share_neighbors: bool = True) -> np.ndarray:
    """:func:`compute_projection`, read from / written to the disk cache.

    The cache entry is valid only for exactly the same sample ids in the same order (the
    check hashes the ids: 0.09 s for a million). With ``share_neighbors`` the UMAP uses the disk-cached
    neighbour graph the finders use (the same k when ``n_neighbors`` <= 16), computing it
    first if needed; not above ``config.sample_above`` rows, where only the sample is fitted.
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
    # Above sample_above the fit uses a graph of its sample only; the shared one spans all rows.
    if share_neighbors and 4 <= len(ids) <= config.sample_above and config.metric == "euclidean":
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
