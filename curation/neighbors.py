"""One k-nearest-neighbour graph over the embeddings, computed once and shared.

The map (UMAP via ``precomputed_knn``), duplicates, label checks, outliers and clusters all
read the same :class:`NeighborGraph` instead of each building its own. Similarity is cosine
(rows are L2-normalised first), so the most similar neighbour comes first.

Methods (numbers from ``benchmarks/bench_neighbors.py``, see ``benchmarks/README.md``):

- ``exact``: blocked matrix products, never an N x N matrix. On the CPU, numpy float32 in
  square tiles of ``block_size`` rows; the similarity matrix is symmetric, so each tile is
  computed once and feeds both its row block and its column block, and a tile only reaches
  the top-k selection for the entries that beat a row's current k-th best (1.9x faster than
  row blocks with ``argpartition`` at 50k rows; 100k x 512 in about 40 s on two cores). On
  CUDA, torch matrix products and ``torch.topk``: a million rows are about 10^15 flops,
  seconds to tens of seconds on one current GPU (an estimate; not measured here), where CPU
  exact would take about an hour.
- ``approx``: a faiss HNSW index over inner products (``faiss-cpu``), queried with every
  row. Chosen over faiss IVF-flat and pynndescent by measurement: the only one of the
  three at or above recall@15 0.99 on every set all three ran on (0.998-0.9999 on
  clustered 10k-200k, 0.990 on real Fashion-MNIST pixels, where IVF-flat reached 0.960 and
  pynndescent 0.984). It builds the graph for 1,000,000 x 512 in 8.5 minutes on two cores
  within 4.6 GiB, at recall 0.973.
- ``auto``: ``exact`` on CUDA or up to :data:`EXACT_MAX_SAMPLES` valid rows (where exact is
  no slower than building the index, and has no recall loss), ``approx`` above.

Broken rows (all zero, or any NaN/inf) take no part: their own row is all padding and they
never appear in another row's neighbours, so a broken vector can never be anyone's near
duplicate. :attr:`NeighborGraph.valid` says which rows took part.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from curation.paths import cache_dir

logger = logging.getLogger(__name__)

NEIGHBOR_METHODS = ("auto", "exact", "approx")
DEVICES = ("auto", "cpu", "cuda")

#: ``auto`` uses exact search up to this many valid rows (on the CPU) and HNSW above. Measured
#: on two cores, 512-d (``benchmarks/README.md``): CPU seconds exact / HNSW were 21.8 / 27.2
#: at 50k and 38.7 / 33.9 at 70k, so below this size exact is no slower, and it is exact.
EXACT_MAX_SAMPLES = 60_000

#: Rows per square tile in CPU exact search: a tile is block_size**2 float32 (64 MiB at 4096).
DEFAULT_CPU_BLOCK = 4096
#: Bytes of similarities per step on the GPU (query block x database chunk).
GPU_TILE_BYTES = 1 << 30

#: HNSW settings: M links per node, efConstruction and efSearch candidate lists. Measured
#: recall@15 at efSearch 128, efConstruction 40 / 80: 200k clustered 512-d rows with 1,000
#: per cluster (the density of the 1M benchmark) 0.943 / 0.995, for 73 / 76 CPU seconds;
#: Fashion-MNIST 70k x 784 0.9975 / 0.990; 1M rows 0.859 / 0.973 for 661 / 654 CPU seconds.
#: efSearch 64 lost 0.5-1.5 points; M=16 lost 3-8.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128


@dataclass(frozen=True, eq=False)
class NeighborGraph:
    """Each row's k most similar other rows.

    Attributes:
        indices: (N, k) int64 row indices, most similar first; self never appears; -1 pads a
            row that has fewer than k valid other rows (and fills a broken row entirely).
        similarities: (N, k) float32 cosine similarities in [-1, 1] matching ``indices``;
            NaN where ``indices`` is -1.
        valid: (N,) bool, False for broken rows (zero or non-finite embeddings).
        method: ``"exact"`` or ``"approx"`` (what ``auto`` resolved to).
        backend: what computed it, e.g. ``"numpy"``, ``"torch-cuda"``, ``"faiss-hnsw"``; with
            ``"+incremental"`` when rows were added to a cached graph.

    The arrays are read-only: the graph is shared by every consumer.
    """

    indices: np.ndarray
    similarities: np.ndarray
    valid: np.ndarray
    method: str
    backend: str

    def __post_init__(self) -> None:
        for array in (self.indices, self.similarities, self.valid):
            array.setflags(write=False)

    @property
    def k(self) -> int:
        return self.indices.shape[1]

    def __len__(self) -> int:
        return self.indices.shape[0]

    def info(self) -> dict:
        """Settings to record next to results computed from this graph."""
        return {"k": self.k, "method": self.method, "backend": self.backend}


# --------------------------------------------------------------------------- validation


def _is_positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _validate(embeddings, k, method, device, block_size) -> np.ndarray:
    if not isinstance(embeddings, np.ndarray):
        embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(
            f"Expected embeddings of shape (n_samples, dim), but got an array of shape {embeddings.shape}.")
    if not np.issubdtype(embeddings.dtype, np.number) or np.issubdtype(embeddings.dtype, np.complexfloating):
        raise ValueError(f"Expected real numeric embeddings, but got dtype {embeddings.dtype}.")
    if not _is_positive_int(k):
        raise ValueError(f"Expected k to be a positive integer, but got {k!r}.")
    if method not in NEIGHBOR_METHODS:
        raise ValueError(f"Unknown neighbour method {method!r}. Available: {', '.join(NEIGHBOR_METHODS)}")
    if device not in DEVICES:
        raise ValueError(f"Unknown device {device!r}. Available: {', '.join(DEVICES)}")
    if block_size is not None and not _is_positive_int(block_size):
        raise ValueError(f"Expected block_size to be a positive integer or None, but got {block_size!r}.")
    return embeddings


def _unit_rows(embeddings: np.ndarray, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit rows and the valid mask; broken rows (zero norm or any non-finite value)
    become zero rows. Stricter than :func:`curation.projection.normalize_rows`, which keeps
    the finite part of a row with a NaN: here a partly-NaN vector is a failed embedding and
    must not be matched to anything.

    Input that is already float32 with unit rows (what the app stores) is returned as is,
    not copied: 2 GiB saved at 1M x 512. Otherwise it works in chunks, so the peak is
    input + output.
    """
    count = len(embeddings)
    valid = np.zeros(count, dtype=bool)
    if embeddings.dtype == np.float32 and embeddings.flags.c_contiguous:
        unit_already = True
        for start in range(0, count, chunk):
            norms = np.linalg.norm(embeddings[start:start + chunk], axis=1)
            if not np.all(np.abs(norms - 1.0) <= 1e-5):  # NaN/inf rows fail this too
                unit_already = False
                break
        if unit_already:
            valid[:] = True
            return embeddings, valid
    unit = np.empty(embeddings.shape, dtype=np.float32)
    for start in range(0, count, chunk):
        part = np.asarray(embeddings[start:start + chunk], dtype=np.float32)
        finite = np.isfinite(part).all(axis=1)
        block = unit[start:start + len(part)]
        np.copyto(block, part)
        block[~finite] = 0.0
        norms = np.linalg.norm(block, axis=1)
        ok = finite & (norms > 0) & np.isfinite(norms)
        np.divide(block, norms[:, None], out=block, where=ok[:, None])
        block[~ok] = 0.0
        valid[start:start + len(part)] = ok
    return unit, valid


def _cuda_available() -> bool:
    """Whether torch sees a CUDA GPU. Without an NVIDIA driver it cannot, and the answer
    comes without importing torch (2 s here), which the CPU path does not need."""
    import sys

    if "torch" not in sys.modules and not os.path.exists("/proc/driver/nvidia/version"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _resolve_device(device: str) -> str:
    if device == "cpu":
        return "cpu"
    available = _cuda_available()
    if device == "cuda" and not available:
        raise ValueError("device='cuda' was asked for, but torch sees no CUDA GPU. Use device='cpu' or 'auto'.")
    return "cuda" if available else "cpu"


def _resolve_method(method: str, valid_count: int, device: str) -> str:
    if method != "auto":
        return method
    # Brute force on a GPU beats any CPU index at the sizes this app sees.
    return "exact" if device == "cuda" or valid_count <= EXACT_MAX_SAMPLES else "approx"


# --------------------------------------------------------------------------- exact, CPU


def _merge_tile(best_sim: np.ndarray, best_idx: np.ndarray, tile: np.ndarray, offset: int,
                by_column: bool = False) -> None:
    """Fold a tile of similarities into the running top-k lists of its rows, in place.

    ``tile`` is (b, c) with the lists' rows along axis 0, or along axis 1 when ``by_column``
    (the other half of a symmetric tile, read without a transposed copy, which costs as much
    as the selection itself). ``best_sim`` / ``best_idx`` are (b, k) views, most similar
    first, -inf / -1 where empty; ``offset`` is the row index of the tile's other axis.

    Only entries above a row's current k-th best can enter. After the first tile of a row
    those are a few per tile, so the work is a max-reduction and a short sort, not a
    selection over the whole tile. Ties keep the entry seen first.
    """
    k = best_sim.shape[1]
    threshold = best_sim[:, k - 1]
    # Rows whose k-th best already beats every entry produce no hits, so no row selection is
    # needed (gathering columns would cost more than the whole comparison).
    mask = tile > (threshold[None, :] if by_column else threshold[:, None])
    flat = np.flatnonzero(mask)  # 2-D np.nonzero is several times slower
    if flat.size == 0:
        return
    if flat.size * 8 > mask.size:
        # Dense (a row's first tile): partition each row of the tile to its top k.
        rows_first = np.ascontiguousarray(tile.T) if by_column else tile
        touched = np.arange(rows_first.shape[0])
        width = rows_first.shape[1]
        keep = min(k, width)
        if width > keep:
            part = np.argpartition(rows_first, width - keep, axis=1)[:, width - keep:]
        else:
            part = np.broadcast_to(np.arange(width), rows_first.shape)
        candidate_sim = np.take_along_axis(rows_first, part, axis=1)
        candidate_idx = part + offset
    else:
        # Sparse: scatter each row's few hits into a short padded list.
        hit_sim = tile.ravel()[flat]
        first_axis, second_axis = np.divmod(flat, tile.shape[1])
        if by_column:
            order = np.argsort(second_axis, kind="stable")
            hit_row, hit_column, hit_sim = second_axis[order], first_axis[order], hit_sim[order]
        else:
            hit_row, hit_column = first_axis, second_axis
        counts = np.bincount(hit_row, minlength=best_sim.shape[0])
        touched = np.flatnonzero(counts)
        counts = counts[touched]
        local_row = np.repeat(np.arange(touched.size), counts)
        slot = np.arange(hit_row.size) - np.repeat(np.cumsum(counts) - counts, counts)
        candidate_sim = np.full((touched.size, int(counts.max())), -np.inf, dtype=np.float32)
        candidate_idx = np.full(candidate_sim.shape, -1, dtype=np.int64)
        candidate_sim[local_row, slot] = hit_sim
        candidate_idx[local_row, slot] = hit_column + offset
    merged_sim = np.concatenate([best_sim[touched], candidate_sim], axis=1)
    merged_idx = np.concatenate([best_idx[touched], candidate_idx], axis=1)
    order = np.argsort(-merged_sim, axis=1, kind="stable")[:, :k]
    best_sim[touched] = np.take_along_axis(merged_sim, order, axis=1)
    best_idx[touched] = np.take_along_axis(merged_idx, order, axis=1)


def _block_bounds(count: int, block: int, split: int) -> list[tuple[int, int]]:
    """Blocks of at most ``block`` rows that never straddle ``split``."""
    bounds = [(start, min(start + block, split)) for start in range(0, split, block)]
    bounds += [(start, min(start + block, count)) for start in range(split, count, block)]
    return bounds


def _exact_cpu(unit: np.ndarray, k: int, block: int, best_sim: np.ndarray | None = None,
               best_idx: np.ndarray | None = None, known: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (self excluded) for every row of ``unit`` (n, d), with the running lists.

    The similarity matrix is symmetric: each off-diagonal tile is computed once and feeds
    its row block and its column block. Diagonal tiles go first, so every row starts with
    a good k-th best and later tiles mostly take the cheap sparse path.

    With ``known`` > 0, rows ``[0, known)`` already hold their top-k among themselves in
    ``best_*``; only pairs that involve a row >= ``known`` are computed.
    Returns (similarities, indices), -inf / -1 where a row has fewer than k others.
    """
    count = len(unit)
    if best_sim is None:
        best_sim = np.full((count, k), -np.inf, dtype=np.float32)
        best_idx = np.full((count, k), -1, dtype=np.int64)
    bounds = _block_bounds(count, block, known)
    for start, end in bounds:
        if end > known:
            tile = unit[start:end] @ unit[start:end].T
            np.fill_diagonal(tile, -np.inf)
            _merge_tile(best_sim[start:end], best_idx[start:end], tile, start)
    for first, (row_start, row_end) in enumerate(bounds):
        rows = unit[row_start:row_end]
        for column_start, column_end in bounds[first + 1:]:
            if column_end <= known:
                continue  # both blocks old: already in the lists
            tile = rows @ unit[column_start:column_end].T
            _merge_tile(best_sim[row_start:row_end], best_idx[row_start:row_end], tile, column_start)
            _merge_tile(best_sim[column_start:column_end], best_idx[column_start:column_end], tile, row_start,
                        by_column=True)
    return best_sim, best_idx


# --------------------------------------------------------------------------- exact, CUDA


def _exact_torch(unit: np.ndarray, k: int, device: str, block: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k on a torch device: query blocks against database chunks, merged with topk.

    Memory on the device: the matrix (N x D float32) plus one query block x chunk tile.
    Full float32 products: TF32 would reorder near-ties, so it is switched off for the call.
    """
    import torch

    count = len(unit)
    matrix = torch.from_numpy(unit).to(device)
    chunk = min(count, max(k + 1, block or 65536))
    query_block = min(count, max(1, GPU_TILE_BYTES // (4 * chunk)) if block is None else block)
    best_sim = np.empty((count, k), dtype=np.float32)
    best_idx = np.empty((count, k), dtype=np.int64)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32 if device.startswith("cuda") else None
    if previous_tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            for query_start in range(0, count, query_block):
                query_end = min(count, query_start + query_block)
                queries = matrix[query_start:query_end]
                rows = torch.arange(query_start, query_end, device=device)
                run_sim = torch.full((query_end - query_start, k), -float("inf"), device=device)
                run_idx = torch.full((query_end - query_start, k), -1, dtype=torch.int64, device=device)
                for chunk_start in range(0, count, chunk):
                    chunk_end = min(count, chunk_start + chunk)
                    tile = queries @ matrix[chunk_start:chunk_end].T
                    # self: column (row - chunk_start) where the row falls inside this chunk
                    inside = (rows >= chunk_start) & (rows < chunk_end)
                    if bool(inside.any()):
                        local = torch.nonzero(inside).squeeze(1)
                        tile[local, rows[local] - chunk_start] = -float("inf")
                    tile_sim, tile_pos = torch.topk(tile, min(k, chunk_end - chunk_start), dim=1)
                    values = torch.cat([run_sim, tile_sim], dim=1)
                    indices = torch.cat([run_idx, tile_pos + chunk_start], dim=1)
                    run_sim, position = torch.topk(values, k, dim=1, largest=True, sorted=True)
                    run_idx = torch.gather(indices, 1, position)
                best_sim[query_start:query_end] = run_sim.cpu().numpy()
                best_idx[query_start:query_end] = run_idx.cpu().numpy()
    finally:
        if previous_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    best_idx[~np.isfinite(best_sim)] = -1
    return best_sim, best_idx


# --------------------------------------------------------------------------- approximate


def _import_faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("method='approx' needs faiss: pip install faiss-cpu") from error
    return faiss


def _approx_hnsw(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """HNSW (inner product) built on all rows, then queried with every row for k + 1 hits.

    Self is removed by index, not by position: with exact duplicates self may not come
    first. Where self was not among the k + 1 hits (many duplicates), the last hit goes.
    faiss builds in parallel, so results can differ in near-ties from run to run.
    """
    faiss = _import_faiss()
    count, dim = unit.shape
    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(unit)
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, k + 1)
    want = min(k + 1, count)
    sims, hits = index.search(unit, want)
    return _drop_self(sims, hits, k)


def _drop_self(sims: np.ndarray, hits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    count, want = hits.shape
    is_self = hits == np.arange(count)[:, None]
    # keep every non-self hit, and drop the last column in rows where self was not returned
    keep = ~is_self
    no_self = ~is_self.any(axis=1)
    keep[no_self, want - 1] = False
    hits = hits[keep].reshape(count, want - 1).astype(np.int64)
    sims = sims[keep].reshape(count, want - 1).astype(np.float32)
    sims[hits < 0] = -np.inf
    hits[hits < 0] = -1
    if want - 1 < k:
        hits = np.hstack([hits, np.full((count, k - want + 1), -1, dtype=np.int64)])
        sims = np.hstack([sims, np.full((count, k - want + 1), -np.inf, dtype=np.float32)])
    return sims, hits


# --------------------------------------------------------------------------- public


def _to_full(best_sim: np.ndarray, best_idx: np.ndarray, rows: np.ndarray, count: int,
             k: int) -> tuple[np.ndarray, np.ndarray]:
    """Compact (valid-row) results -> (count, k) arrays over all rows, -1 / NaN padding."""
    indices = np.full((count, k), -1, dtype=np.int64)
    similarities = np.full((count, k), np.nan, dtype=np.float32)
    present = (best_idx >= 0) & np.isfinite(best_sim)  # -inf: empty slot or a masked self
    mapped = np.where(present, rows[np.maximum(best_idx, 0)], -1)
    indices[rows] = mapped
    similarities[rows] = np.where(present, np.clip(best_sim, -1.0, 1.0), np.nan)
    return indices, similarities


def compute_neighbors(embeddings: np.ndarray, k: int = 15, *, method: str = "auto", device: str = "auto",
                      block_size: int | None = None) -> NeighborGraph:
    """The k nearest other rows of every row by cosine similarity.

    Args:
        embeddings: (N, D) vectors, any real dtype; normalised here (rows need not be unit).
            Zero rows and rows with NaN/inf take no part (see the module docstring).
        k: neighbours per row, >= 1; 15 suits the map and the finders, 5-50 is sensible.
        method: ``"exact"``, ``"approx"`` (faiss HNSW, recall@15 about 0.99) or ``"auto"``
            (exact up to :data:`EXACT_MAX_SAMPLES` valid rows or on CUDA, approx above).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when torch sees a GPU). Only exact
            search uses the GPU.
        block_size: exact search only. CPU: rows per square tile (default 4096, 64 MiB of
            float32 per tile; memory stays O(N x k + block_size**2) beyond the input). CUDA:
            rows per query block and database chunk (default: a 1 GiB tile).

    Returns:
        A :class:`NeighborGraph` with (N, k) ``indices`` (int64, -1 padding) and
        ``similarities`` (float32, NaN padding), most similar first, self excluded.

    Raises:
        ValueError: bad shape, dtype, k, method, device or block size (the message says
            what was expected and what arrived).
    """
    embeddings = _validate(embeddings, k, method, device, block_size)
    k = int(k)
    count = len(embeddings)
    unit, valid = _unit_rows(embeddings)
    rows = np.flatnonzero(valid)
    resolved_device = _resolve_device(device) if method != "approx" else "cpu"
    resolved = _resolve_method(method, len(rows), resolved_device)
    compact = unit if len(rows) == count else unit[rows]
    del unit
    if len(rows) < 2:
        backend = "none"
        best_sim = np.full((len(rows), k), -np.inf, dtype=np.float32)
        best_idx = np.full((len(rows), k), -1, dtype=np.int64)
    elif resolved == "approx":
        backend = "faiss-hnsw"
        best_sim, best_idx = _approx_hnsw(compact, k)
    elif resolved_device == "cpu":
        backend = "numpy"
        best_sim, best_idx = _exact_cpu(compact, k, block_size or DEFAULT_CPU_BLOCK)
    else:
        backend = f"torch-{resolved_device}"
        best_sim, best_idx = _exact_torch(compact, k, resolved_device, block_size)
    logger.debug("neighbours: %d rows (%d valid), k=%d, %s via %s", count, len(rows), k, resolved, backend)
    indices, similarities = _to_full(best_sim, best_idx, rows, count, k)
    return NeighborGraph(indices, similarities, valid, resolved, backend)


def umap_precomputed_knn(graph: NeighborGraph) -> tuple[np.ndarray, np.ndarray, None]:
    """``(knn_indices, knn_dists, None)`` for ``umap.UMAP(precomputed_knn=...)``.

    umap-learn 0.5.12 wants each row's first neighbour to be the row itself at distance 0,
    so the arrays have k + 1 columns and serve ``UMAP(n_neighbors=...)`` up to k + 1 (UMAP's
    n_neighbors counts the point itself). Distances are euclidean between unit vectors,
    ``sqrt(2 - 2 cos)``: use ``metric="euclidean"`` (as :class:`ProjectionConfig` does).
    Padding is index -1 at distance inf, which is how umap itself marks removed edges.
    Broken rows have no edges, and umap gives points without neighbours NaN coordinates
    (its convention, so that they are not drawn): drop or place them separately.
    The third element, the search index, is None: ``UMAP.transform`` of new points is then
    unavailable (umap warns once). The arrays are new and writable: umap edits them in place.
    """
    count = len(graph)
    indices = np.empty((count, graph.k + 1), dtype=np.int64)
    distances = np.empty((count, graph.k + 1), dtype=np.float32)
    indices[:, 0] = np.arange(count)
    distances[:, 0] = 0.0
    indices[:, 1:] = graph.indices
    cosine = graph.similarities.astype(np.float32)
    distances[:, 1:] = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * cosine))
    distances[:, 1:][graph.indices < 0] = np.inf
    return indices, distances, None


# --------------------------------------------------------------------------- cache


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()


def _fingerprint(embeddings: np.ndarray, rows: np.ndarray | None = None) -> str:
    """Cheap identity of an embedding matrix (or of its ``rows``, in that order): the shape
    and up to 1024 evenly spaced rows.

    Catches a field that was re-embedded with another model under the same ids without
    hashing gigabytes; it is not a guarantee against a change to a single unsampled row.
    """
    if rows is None:
        rows = np.arange(len(embeddings))
    count = len(rows)
    digest = hashlib.sha1(repr((count,) + tuple(embeddings.shape[1:])).encode())
    if count:
        sample = np.unique(np.linspace(0, count - 1, num=min(count, 1024)).astype(np.int64))
        digest.update(np.ascontiguousarray(np.asarray(embeddings[rows[sample]], dtype=np.float32)).tobytes())
    return digest.hexdigest()


def _cache_path(dataset_name: str, field: str, k: int, method: str):
    key = hashlib.sha1(json.dumps(["neighbors-v1", dataset_name, field, int(k), method]).encode()).hexdigest()
    return cache_dir() / "neighbors" / f"{key}.npz"


def _read_cache(path) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            entry = {name: stored[name] for name in stored.files}
        ids_blob = entry["ids"].tobytes().decode()
        entry["ids"] = ids_blob.split("\n") if ids_blob else []
        count = len(entry["ids"])
        if entry["indices"].shape != entry["similarities"].shape or entry["indices"].shape[0] != count \
                or entry["valid"].shape != (count,):
            raise ValueError("arrays do not match the stored ids")
        for name in ("ids_digest", "fingerprint", "method", "backend"):
            entry[name] = str(entry[name])
        return entry
    except Exception as error:  # noqa: BLE001 - any unreadable file is a cache miss
        logger.warning("ignoring unreadable neighbour cache %s: %s", path, error)
        return None


def _write_cache(path, ids: list[str], embeddings: np.ndarray, graph: NeighborGraph) -> None:
    from curation.files import atomic_file

    with atomic_file(path, make_parents=True) as partial:  # the name keeps .npz, so savez adds nothing
        np.savez(partial, indices=graph.indices, similarities=graph.similarities, valid=graph.valid,
                 method=np.array(graph.method), backend=np.array(graph.backend),
                 ids=np.frombuffer("\n".join(ids).encode(), dtype=np.uint8),
                 ids_digest=np.array(_ids_digest(ids)), fingerprint=np.array(_fingerprint(embeddings)))


def _extend(entry: dict, ids: list[str], embeddings: np.ndarray, k: int, method: str) -> NeighborGraph | None:
    """The cached graph patched for added samples, or None where that is not possible.

    Possible when every cached id is still present, the cached rows' embeddings are unchanged
    (fingerprint) and broken in the same rows. Old rows keep their neighbour lists and merge
    in exact similarities to the new rows; new rows get exact lists against all rows. The
    result is exact when the cached graph was exact; from an HNSW graph, its recall can only
    rise. It costs (new rows x all rows) products, so ``approx`` and ``auto`` use it only
    while that is at most an exact run at :data:`EXACT_MAX_SAMPLES` rows.
    """
    old_ids = entry["ids"]
    position = {sample_id: row for row, sample_id in enumerate(ids)}
    if len(position) != len(ids):
        return None  # duplicate ids: no unambiguous mapping
    try:
        old_in_new = np.fromiter((position[sample_id] for sample_id in old_ids), dtype=np.int64, count=len(old_ids))
    except KeyError:
        return None  # samples were removed: their neighbours' lists would need a new search
    if _fingerprint(embeddings, old_in_new) != entry["fingerprint"]:
        return None
    count = len(ids)
    added = np.setdiff1d(np.arange(count), old_in_new, assume_unique=True)
    if method != "exact" and len(added) * count > EXACT_MAX_SAMPLES ** 2 // 2:
        return None  # building a fresh index is cheaper than brute force for that many rows
    unit, valid = _unit_rows(embeddings)
    if not np.array_equal(valid[old_in_new], entry["valid"]):
        return None
    order = np.concatenate([old_in_new, added])
    full_rows = order[valid[order]]  # compact position -> row; valid old rows first, in old order
    known = int(entry["valid"].sum())
    compact = unit[full_rows]
    del unit
    old_to_compact = np.full(len(old_ids), -1, dtype=np.int64)
    old_to_compact[entry["valid"]] = np.arange(known)
    best_sim = np.full((len(full_rows), k), -np.inf, dtype=np.float32)
    best_idx = np.full((len(full_rows), k), -1, dtype=np.int64)
    old_indices = entry["indices"][entry["valid"]]
    present = old_indices >= 0
    best_idx[:known] = np.where(present, old_to_compact[np.maximum(old_indices, 0)], -1)
    best_sim[:known] = np.where(present, entry["similarities"][entry["valid"]], -np.inf)
    best_sim, best_idx = _exact_cpu(compact, k, DEFAULT_CPU_BLOCK, best_sim, best_idx, known=known)
    indices, similarities = _to_full(best_sim, best_idx, full_rows, count, k)
    backend = entry["backend"]
    if len(added) and not backend.endswith("+incremental"):
        backend += "+incremental"
    return NeighborGraph(indices, similarities, valid, entry["method"], backend)


def cached_neighbors(dataset_name: str, field: str, ids: list[str], embeddings: np.ndarray, k: int = 15,
                     method: str = "auto") -> NeighborGraph:
    """:func:`compute_neighbors`, read from / written to the disk cache.

    Keyed on (dataset, field, k, method); an entry serves exactly the same ids in the same
    order and the same embeddings (a sampled fingerprint). When samples were only added
    (or reordered), the cached rows are reused and only pairs involving new rows are
    computed (see :func:`_extend`); any removed id, changed embedding or change of which
    rows are broken recomputes the graph. An unreadable file is logged and recomputed.
    Writes are atomic (temporary file, then ``os.replace``), so readers never see half a file.
    """
    embeddings = _validate(embeddings, k, method, "auto", None)
    ids = [str(sample_id) for sample_id in ids]
    if len(ids) != len(embeddings):
        raise ValueError(f"Expected one id per embedding row, but got {len(ids)} ids for {len(embeddings)} rows.")
    path = _cache_path(dataset_name, field, k, method)
    entry = _read_cache(path)
    if entry is not None and entry["indices"].shape[1] == k:
        if entry["ids_digest"] == _ids_digest(ids) and entry["fingerprint"] == _fingerprint(embeddings):
            return NeighborGraph(entry["indices"], entry["similarities"], entry["valid"].astype(bool),
                                 entry["method"], entry["backend"])
        graph = _extend(entry, ids, embeddings, k, method)
        if graph is not None:
            logger.info("neighbour cache: extended %d cached rows to %d", len(entry["ids"]), len(ids))
            _write_cache(path, ids, embeddings, graph)
            return graph
    graph = compute_neighbors(embeddings, k, method=method)
    _write_cache(path, ids, embeddings, graph)
    return graph
