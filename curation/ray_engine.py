"""Embedding past one machine: the same run as :func:`curation.embeddings.compute_embeddings`,
computed by a pool of model actors on a Ray cluster.

The driver (the process that calls :func:`embed_with_ray`) reads which samples still need an
embedding (the same incremental rule: no vector and no recorded failure, unless
``retry_failed``), chooses the input size as the in-process path does, and hands Ray Data
rows of ``(id, filepath, shard)``. ``map_batches`` runs them through a pool of actors that
each load the model once (on a GPU of their own where the cluster has GPUs) and decode the
images by path, so every node must see the images at the same path (a shared file system,
or an object store mounted there). As the vectors stream back, the driver writes each
finished shard (``SHARD_SIZE`` samples) atomically into a run folder in the cache dir; when
all are done it writes the database from the shards (the same field, failure field and run
record as in-process), then deletes the folder. A run that stops (a killed driver, a lost
cluster) loses only its unfinished shards: the next run with the same model and input reads
the finished ones back instead of recomputing them. A worker that dies mid-run is restarted
by Ray and its batch retried, within the same run.

:func:`cache_neighbors_with_ray` builds the shared neighbour graph as Ray tasks (blocks of
query rows against the whole matrix, put once in the object store; exact top k per block)
and writes it to the neighbour cache where :func:`curation.analysis.analyze` finds it.

Workers never open the database; only the driver does (``FIFTYONE_DATABASE_URI``).
Set-up on a cluster and the failure modes: ``docs/ray.md``.
Ray is optional: ``pip install 'curation[ray]'``; it is imported only here, and only when
a Ray run starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation.embeddings import (
    EmbeddingRun,
    ProgressCallback,
    _choose_input,
    _record_run,
    default_batch_size,
    pending_samples,
    resolve_embedder,
)
from curation.errors import CurationError, CurationInputError
from curation.models import ModelSpec, ModelUnavailableError
from curation.paths import cache_dir

logger = logging.getLogger(__name__)

#: Samples per shard: what a stopped run can lose per unfinished shard, and the unit the
#: database is written in. 2,000 x 1280-d float32 is 10 MB.
SHARD_SIZE = 2000
#: The folder under :func:`curation.paths.cache_dir` that holds the unfinished runs.
RUNS_FOLDER = "ray-embeddings"
INSTALL_HINT = "pip install 'curation[ray]'"


class RayUnavailableError(CurationError, RuntimeError):
    """Ray is not installed (the message names the install extra) or the cluster cannot be reached."""


def import_ray():
    """The ``ray`` module with Ray Data, or an error that says how to install it.

    Raises:
        RayUnavailableError: ``ray[data]`` is not installed.
    """
    # No usage report from this product's runs unless the user asked for one (Ray's own setting wins).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayUnavailableError(f"the Ray engine needs Ray Data, which is not installed: {INSTALL_HINT}") from error
    return ray


@dataclass
class RayEmbeddingRun(EmbeddingRun):
    """An :class:`~curation.embeddings.EmbeddingRun` plus what the Ray run did with shards.

    ``embedded`` and ``failures`` count the samples written to the database in this call,
    whether their vectors were computed now or read back from an earlier stopped run's
    shards; ``computed`` counts only those the actors processed now.
    """

    shards_computed: int = 0
    shards_reused: int = 0
    computed: int = 0
    num_actors: int = 0
    run_folder: str = ""


class _EmbedActor:
    """A Ray Data actor: loads the model once, then decodes and embeds batches of image paths.

    Decoding and preprocessing are exactly the in-process path's (``_ImageFiles``), so a file
    fails here for the same reason it fails there, and the vectors are the same.
    """

    def __init__(self, spec: dict, device: str, input_config: dict, threads: int):
        import torch

        from curation.models import load_embedder

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.embedder = load_embedder(ModelSpec(**spec), device=device, allow_fallback=False).with_input(**input_config)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from curation.embeddings import _ImageFiles, _collate, _encode_adaptive

        paths = [str(path) for path in batch["filepath"]]
        files = _ImageFiles(paths, self.embedder.preprocess)
        indices, stacked, bad = _collate([files[index] for index in range(len(paths))])
        vectors = np.zeros((len(paths), self.embedder.dimension), dtype=np.float32)
        errors = np.array([""] * len(paths), dtype=object)
        if stacked is not None:
            vectors[indices] = _encode_adaptive(self.embedder, stacked)
        for index, reason in bad:
            errors[index] = reason
        return {"id": batch["id"], "filepath": batch["filepath"], "shard": batch["shard"], "vector": vectors,
                "error": errors, "device": np.array([self.embedder.device] * len(paths), dtype=object)}


def _run_key(root, field_name: str, used: ModelSpec, input_config: dict) -> str:
    """The run folder's name: a hash of what decides the vectors, never user text."""
    dataset_id = str(getattr(getattr(root, "_doc", None), "id", "") or "")
    payload = json.dumps({"dataset": root.name, "dataset_id": dataset_id, "field": field_name,
                          "model": used.to_dict(), "input": input_config}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def _shard_name(ids: list[str]) -> str:
    return "shard-" + hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16] + ".npz"


def _write_shard(folder: Path, ids: list[str], paths: list[str], vectors: np.ndarray, errors: list[str],
                 device: str) -> Path:
    """One finished shard, written to a temporary name and renamed: never half a shard."""
    target = folder / _shard_name(ids)
    temporary = folder / (target.name + f".{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        np.savez(handle, ids=np.array(ids, dtype=str), filepaths=np.array(paths, dtype=str),
                 vectors=vectors.astype(np.float32, copy=False), errors=np.array(errors, dtype=str),
                 device=np.array(device))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return target


def _read_shard(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in ("ids", "filepaths", "vectors", "errors", "device")}
    except Exception as error:  # a shard of another version or a damaged file: recompute its samples
        logger.warning("ignoring unreadable shard %s: %s", path, error)
        return None


def _finished_rows(folder: Path, wanted: dict[str, str], retry_failed: bool) -> tuple[dict[str, tuple[Path, int]], int]:
    """{sample id: (shard file, row)} for the pending samples an earlier run already finished,
    and how many shard files contributed. A row counts only for the same id at the same path;
    with ``retry_failed``, recorded failures are computed again."""
    found: dict[str, tuple[Path, int]] = {}
    used_shards = 0
    for path in sorted(folder.glob("shard-*.npz")):
        shard = _read_shard(path)
        if shard is None:
            continue
        before = len(found)
        for row, (sample_id, filepath, error) in enumerate(zip(shard["ids"], shard["filepaths"], shard["errors"])):
            if wanted.get(str(sample_id)) == str(filepath) and not (retry_failed and error):
                found[str(sample_id)] = (path, row)
        used_shards += len(found) > before
    return found, used_shards


def _cluster_plan(ray, device: str, num_actors: int | None) -> tuple[str, int, float, int]:
    """(actor device, actors, GPUs per actor, CPU threads per actor) for this cluster."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if device.startswith("cuda:"):
        raise CurationInputError(f"device: with the Ray engine each actor gets a GPU of its own from Ray; use 'cuda' "
                                 f"or 'auto', got {device!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise CurationInputError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not gpus:
        raise ModelUnavailableError("device 'cuda' requested but the Ray cluster has no GPUs (use --device cpu or auto)")
    on_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if on_gpu:
        actors = num_actors or gpus
        return "cuda", actors, 1.0, 1
    # One actor per 4 cores by default, each using its share of the cores for the model's threads.
    actors = num_actors or max(1, cpus // 4)
    if actors > max(1, cpus):
        raise CurationInputError(f"num_actors: the Ray cluster has {cpus} CPUs, fewer than the {actors} CPU actors "
                                 f"asked for; use at most {max(1, cpus)}")
    return "cpu", actors, 0.0, max(1, cpus // actors)


def _connect(ray, address: str | None) -> bool:
    """Connect to the cluster at ``address`` (None: Ray's default); True if this call did."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayUnavailableError(f"cannot reach the Ray cluster at {address or 'the default address'}: {error}") from error
    return True


def embed_with_ray(
    dataset,
    *,
    model: str | ModelSpec | None = None,
    checkpoint: str | None = None,
    address: str | None = None,
    batch_size: int | None = None,
    num_actors: int | None = None,
    device: str = "auto",
    allow_fallback: bool = True,
    retry_failed: bool = False,
    image_size: int | str = "auto",
    flip_tta: bool | None = None,
    shard_size: int = SHARD_SIZE,
    progress: ProgressCallback | None = None,
) -> RayEmbeddingRun:
    """Embed every sample of ``dataset`` that has no embedding for this model yet, on Ray.

    The database ends up as :func:`~curation.embeddings.compute_embeddings` leaves it: the
    same field, the same failure field (``<field>_error``) and the same run record.

    Args:
        dataset: a FiftyOne dataset (or view: only its samples are embedded). Its image
            paths must be readable at the same path on every node of the cluster.
        model, checkpoint, allow_fallback, retry_failed, image_size, flip_tta: as for
            :func:`~curation.embeddings.compute_embeddings`. The driver decides the model
            (and any fallback) and the input size; the actors load exactly that model.
        address: the Ray cluster (``host:port`` of the head, ``auto``, ``ray://...``);
            None: Ray's default (``RAY_ADDRESS``, then a cluster started on this machine,
            else a new local one for this run). An existing ``ray.init`` is reused.
        batch_size: images per forward pass in each actor; default 256 on GPU, 32 on CPU.
        num_actors: model actors; default one per GPU of the cluster, else one per 4 CPUs.
        device: ``auto`` (a GPU per actor where the cluster has GPUs), ``cpu`` or ``cuda``.
        shard_size: samples per shard (the unit a stopped run keeps); 100..100,000 work well.
        progress: called with (done, total) as vectors come back.

    Returns:
        A :class:`RayEmbeddingRun`.

    Raises:
        RayUnavailableError: Ray is not installed, or the cluster cannot be reached.
        CurationInputError: as compute_embeddings; a ``cuda:N`` device; a bad shard size.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise CurationInputError(f"shard_size: expected a whole number >= 1, got {shard_size!r}")
    if num_actors is not None and (isinstance(num_actors, bool) or not isinstance(num_actors, int) or num_actors < 1):
        raise CurationInputError(f"num_actors: expected a whole number >= 1, got {num_actors!r}")
    ray = import_ray()

    # The driver loads the model on its CPU only to decide the fallback and the input; the
    # actors load it again where they run.
    spec, embedder = resolve_embedder(model, checkpoint, None, device="cpu", allow_fallback=allow_fallback)
    used = embedder.spec
    field_name, error_field = used.field_name, f"{used.field_name}_error"
    root = dataset._root_dataset if hasattr(dataset, "_root_dataset") else dataset

    ids, filepaths = pending_samples(dataset, root, field_name, error_field, retry_failed)  # compute_embeddings' rule
    size, crop, flip, input_reason = _choose_input(root, dataset, field_name, embedder, image_size, flip_tta, filepaths)
    embedder = embedder.with_input(image_size=size, crop=crop, flip_tta=flip)
    input_config = embedder.input_config()

    started = _connect(ray, address)
    try:
        actor_device, actors, gpus_per_actor, threads = _cluster_plan(ray, device, num_actors)
        run = RayEmbeddingRun(field_name, used.name, spec.name, embedder.fallback_reason, actor_device,
                              already_done=len(dataset) - len(ids), image_size=embedder.image_size,
                              crop=embedder.crop, flip_tta=embedder.flip_tta, input_reason=input_reason,
                              num_actors=actors)
        _record_run(root, run, used, spec)
        if not ids:
            return run
        folder = cache_dir() / RUNS_FOLDER / _run_key(root, field_name, used, input_config)
        folder.mkdir(parents=True, exist_ok=True)
        run.run_folder = str(folder)

        wanted = dict(zip(ids, filepaths))
        finished, run.shards_reused = _finished_rows(folder, wanted, retry_failed)
        todo = [index for index, sample_id in enumerate(ids) if sample_id not in finished]
        if finished:
            logger.info("reusing %d samples from %d finished shards in %s", len(finished), run.shards_reused, folder)
        if progress:
            progress(len(finished), len(ids))
        if todo:
            _compute_shards(ray, folder, [ids[i] for i in todo], [filepaths[i] for i in todo], used, actor_device,
                            input_config, actors, gpus_per_actor, threads, batch_size, shard_size, run,
                            progress=(lambda done: progress(len(finished) + done, len(ids))) if progress else None)
            finished, _ = _finished_rows(folder, wanted, retry_failed)
        _write_database(root, folder, ids, finished, field_name, error_field, retry_failed, run)
    finally:
        if started:
            ray.shutdown()
    _record_run(root, run, used, spec)
    shutil.rmtree(folder, ignore_errors=True)
    return run


def _compute_shards(ray, folder: Path, ids: list[str], filepaths: list[str], used: ModelSpec, device: str,
                    input_config: dict, actors: int, gpus_per_actor: float, threads: int, batch_size: int | None,
                    shard_size: int, run: RayEmbeddingRun, progress) -> None:
    """Run the actors over the samples and write each shard as soon as all its rows are back."""
    batch_size = batch_size or default_batch_size(device)
    shards = [(start, min(start + shard_size, len(ids))) for start in range(0, len(ids), shard_size)]
    items = [{"id": ids[index], "filepath": filepaths[index], "shard": shard}
             for shard, (start, stop) in enumerate(shards) for index in range(start, stop)]
    blocks = max(1, min(len(items) // batch_size + 1, 20 * actors, 10_000))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        _EmbedActor,
        fn_constructor_kwargs={"spec": used.to_dict(), "device": device, "input_config": input_config,
                               "threads": threads},
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=threads if device == "cpu" else 1,  # threads * actors <= the cluster's CPUs
        num_gpus=gpus_per_actor or None,
    )
    pending: dict[int, dict[str, list]] = {}
    done = 0
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for sample_id, filepath, shard, vector, error, actor_device in zip(
                batch["id"], batch["filepath"], batch["shard"], batch["vector"], batch["error"], batch["device"]):
            rows = pending.setdefault(int(shard), {"ids": [], "filepaths": [], "vectors": [], "errors": []})
            rows["ids"].append(str(sample_id))
            rows["filepaths"].append(str(filepath))
            rows["vectors"].append(vector)
            rows["errors"].append(str(error or ""))
            run.device = str(actor_device)
            start, stop = shards[int(shard)]
            if len(rows["ids"]) == stop - start:
                rows = pending.pop(int(shard))
                order = np.argsort(rows["ids"], kind="stable")  # a shard's name must not depend on arrival order
                _write_shard(folder, [rows["ids"][i] for i in order], [rows["filepaths"][i] for i in order],
                             np.stack([rows["vectors"][i] for i in order]), [rows["errors"][i] for i in order],
                             run.device)
                run.shards_computed += 1
                run.computed += stop - start
        done += len(batch["id"])
        if progress:
            progress(done)
    if pending:  # cannot happen unless rows were lost; those samples stay pending for the next run
        logger.warning("%d shards came back incomplete; their samples stay pending", len(pending))


def _write_database(root, folder: Path, ids: list[str], finished: dict[str, tuple[Path, int]], field_name: str,
                    error_field: str, retry_failed: bool, run: RayEmbeddingRun) -> None:
    """Write the vectors and failures of the finished samples, one shard at a time."""
    by_shard: dict[Path, list[tuple[str, int]]] = {}
    for sample_id in ids:
        if sample_id in finished:
            path, row = finished[sample_id]
            by_shard.setdefault(path, []).append((sample_id, row))
    failures: dict[str, tuple[str, str]] = {}
    for path, rows in by_shard.items():
        shard = _read_shard(path)
        if shard is None:  # removed or damaged since it was read: its samples stay pending
            continue
        vectors: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        for sample_id, row in rows:
            reason = str(shard["errors"][row])
            if reason:
                errors[sample_id] = reason
                failures[sample_id] = (str(shard["filepaths"][row]), reason)
            else:
                vectors[sample_id] = np.array(shard["vectors"][row], dtype=np.float32)
        if vectors:
            root.set_values(field_name, vectors, key_field="id")
            if retry_failed and root.has_sample_field(error_field):
                # A retried sample that now has an embedding no longer carries its old failure.
                root.set_values(error_field, dict.fromkeys(vectors, None), key_field="id")
            run.embedded += len(vectors)
        if errors:
            root.set_values(error_field, errors, key_field="id")
        if not run.computed:
            run.device = str(shard["device"])
    run.failures = [failures[sample_id] for sample_id in ids if sample_id in failures]


# --------------------------------------------------------------------------- neighbour graph

#: Query rows per Ray task: a task holds a (block x block) float32 tile at a time (64 MiB at 4096).
NEIGHBOR_BLOCK_ROWS = 4096


def _neighbor_block(unit: np.ndarray, start: int, stop: int, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (self excluded) of rows ``[start, stop)`` of ``unit`` against all its rows.

    The rows' own block goes first, as in :func:`curation.neighbors.compute_neighbors`, so
    each row starts with a good k-th best and later tiles mostly take the cheap path.
    """
    from curation.neighbors import _merge_tile

    queries = unit[start:stop]
    best_sim = np.full((stop - start, k), -np.inf, dtype=np.float32)
    best_idx = np.full((stop - start, k), -1, dtype=np.int64)
    chunks = [(start, stop)] + [(first, min(first + chunk, start)) for first in range(0, start, chunk)] \
        + [(first, min(first + chunk, len(unit))) for first in range(stop, len(unit), chunk)]
    for first, last in chunks:
        tile = queries @ unit[first:last].T
        if first == start:
            np.fill_diagonal(tile, -np.inf)
        _merge_tile(best_sim, best_idx, tile, first)
    return best_sim, best_idx


def compute_neighbors_with_ray(embeddings: np.ndarray, k: int = 15, *, address: str | None = None,
                               block_rows: int = NEIGHBOR_BLOCK_ROWS):
    """:func:`curation.neighbors.compute_neighbors` (``method="exact"``) as Ray tasks.

    The unit-row matrix is put in the object store once; each task takes a block of
    ``block_rows`` query rows and keeps their exact top k against the whole matrix, and the
    blocks are stacked in order. Broken rows take no part, as in-process.

    Args:
        embeddings: (N, D) real vectors (normalised here).
        k: neighbours per row, >= 1.
        address: the Ray cluster, as for :func:`embed_with_ray`.
        block_rows: query rows per task, >= 1 (1,000-8,000 work well).

    Returns:
        A :class:`curation.neighbors.NeighborGraph` with ``method="exact"``, ``backend="ray-numpy"``.

    Raises:
        ValueError: bad shape, dtype or k (as compute_neighbors).
        RayUnavailableError: Ray is not installed, or the cluster cannot be reached.
    """
    from curation.neighbors import NeighborGraph, _to_full, _unit_rows, _validate

    embeddings = _validate(embeddings, k, "exact", "cpu", block_rows)
    k, count = int(k), len(embeddings)
    unit, valid = _unit_rows(embeddings)
    rows = np.flatnonzero(valid)
    compact = np.ascontiguousarray(unit[rows])
    del unit
    if len(rows) < 2:
        best_sim = np.full((len(rows), k), -np.inf, dtype=np.float32)
        best_idx = np.full((len(rows), k), -1, dtype=np.int64)
        backend = "none"
    else:
        ray = import_ray()
        started = _connect(ray, address)
        try:
            matrix = ray.put(compact)
            task = ray.remote(num_cpus=1)(_neighbor_block)
            bounds = [(start, min(start + block_rows, len(rows))) for start in range(0, len(rows), block_rows)]
            results = ray.get([task.remote(matrix, start, stop, k, block_rows) for start, stop in bounds])
        finally:
            if started:
                ray.shutdown()
        best_sim = np.concatenate([sims for sims, _ in results])
        best_idx = np.concatenate([hits for _, hits in results])
        backend = "ray-numpy"
    indices, similarities = _to_full(best_sim, best_idx, rows, count, k)
    return NeighborGraph(indices, similarities, valid, "exact", backend)


def cache_neighbors_with_ray(dataset, *, field: str | None = None, k: int | None = None, address: str | None = None,
                             block_rows: int = NEIGHBOR_BLOCK_ROWS):
    """Compute the neighbour graph that :func:`curation.analysis.analyze` reads, on Ray.

    The graph goes into the neighbour cache under the key analyze looks up (dataset, field,
    k, ``auto``), for the same ids and normalised embeddings, so analyze finds it there and
    runs its finders on it in-process. A cache entry that already serves these embeddings is
    returned as it is. An exact graph serves ``auto`` at least as well as the one it would pick.

    Returns:
        The graph, or None when there is nothing to compute (no embedding field or no
        embedded sample: analyze then says what is missing).
    """
    from curation.analysis import DEFAULT_NEIGHBORS
    from curation.embeddings import default_embedding_field, load_embeddings
    from curation.neighbors import NeighborGraph, _cache_path, _fingerprint, _ids_digest, _read_cache, _write_cache
    from curation.projection import normalize_rows

    k = DEFAULT_NEIGHBORS if k is None else k
    field = field or default_embedding_field(dataset)
    if not field or not dataset.has_sample_field(field):
        return None
    ids, embeddings = load_embeddings(dataset, field)
    if not ids:
        return None
    embeddings = normalize_rows(embeddings)
    path = _cache_path(dataset.name, field, k, "auto")
    entry = _read_cache(path)
    if (entry is not None and entry["indices"].shape[1] == k and entry["ids_digest"] == _ids_digest(ids)
            and entry["fingerprint"] == _fingerprint(embeddings)):
        return NeighborGraph(entry["indices"], entry["similarities"], entry["valid"].astype(bool), entry["method"],
                             entry["backend"])
    graph = compute_neighbors_with_ray(embeddings, k, address=address, block_rows=block_rows)
    _write_cache(path, ids, embeddings, graph)
    return graph
