"""Computing, caching and reading image embeddings.

Embeddings live in a FiftyOne sample field per model (``embeddings_<model>``), so FiftyOne
Brain can use them too (``embeddings="embeddings_clip_vit_b32_openai"``). A run embeds only
samples that have neither an embedding nor a recorded failure, and writes what it computed
every few seconds (``WRITE_SECONDS``) or every ``WRITE_EVERY`` samples, whichever comes
first: rerunning is free, new samples cost only themselves, and a run that is killed (even
with ``kill -9``, where no handler runs) loses seconds of work at most and resumes where it
stopped. Files that cannot be decoded, or are larger than ``MAX_EMBED_PIXELS``, get a reason
in ``embeddings_<model>_error`` and never stop the run.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from curation.datasets import curation_info, now_iso, update_curation_info
from curation.images import ImageLoadError, load_rgb
from curation.models import DEFAULT_MODEL, Embedder, ModelSpec, load_embedder, resolve_model
from curation.errors import CurationInputError, MissingFieldError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
WRITE_EVERY = 512  # samples per database write at most
# Seconds between database writes at most: what a killed run can lose. A write of a few
# hundred vectors takes milliseconds, so frequent writes cost nothing noticeable.
WRITE_SECONDS = 5.0
# Images with more pixels are not embedded (reason stored): decoding one, even shrunk,
# first needs its stored pixels in memory (~160 MB for 40 Mpx RGB), in every decode worker.
MAX_EMBED_PIXELS = 40_000_000


@dataclass
class EmbeddingRun:
    """What one call of :func:`compute_embeddings` did."""

    field: str
    model: str
    requested_model: str
    fallback_reason: str | None
    device: str
    embedded: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (filepath, reason)
    already_done: int = 0


class _ImageFiles:
    """Map-style torch dataset: decode + preprocess in DataLoader workers."""

    def __init__(self, filepaths: list[str], preprocess: Callable):
        self.filepaths = filepaths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.filepaths)

    def __getitem__(self, index: int):
        try:
            image = load_rgb(self.filepaths[index], max_side=512, max_pixels=MAX_EMBED_PIXELS)
            return index, self.preprocess(image), None
        except ImageLoadError as error:
            return index, None, str(error)
        except Exception as error:  # a preprocess failure on one odd file must not end the run
            return index, None, f"cannot preprocess image: {type(error).__name__}: {error}"


def _collate(items):
    import torch

    good = [(index, tensor) for index, tensor, _ in items if tensor is not None]
    bad = [(index, reason) for index, _, reason in items if reason is not None]
    indices = [index for index, _ in good]
    batch = torch.stack([tensor for _, tensor in good]) if good else None
    return indices, batch, bad


def default_batch_size(device: str) -> int:
    return 256 if device.startswith("cuda") else 32


def default_workers(device: str) -> int:
    cpus = os.cpu_count() or 1
    # On the GPU, decoding is the bottleneck: use every core. On the CPU the model needs the
    # cores; one worker decoding ahead is enough to hide decode time.
    return min(8, cpus) if device.startswith("cuda") else (1 if cpus > 1 else 0)


def _encode_adaptive(embedder: Embedder, batch) -> np.ndarray:
    """Encode, halving the batch on CUDA out-of-memory instead of failing."""
    import torch

    try:
        return embedder.encode_images(batch)
    except torch.cuda.OutOfMemoryError:
        if len(batch) == 1:
            raise
        torch.cuda.empty_cache()
        middle = len(batch) // 2
        logger.warning("GPU out of memory at batch %d; splitting", len(batch))
        return np.concatenate([_encode_adaptive(embedder, batch[:middle]), _encode_adaptive(embedder, batch[middle:])])


def compute_embeddings(
    dataset,
    *,
    model: str | ModelSpec | None = None,
    checkpoint: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    allow_fallback: bool = True,
    retry_failed: bool = False,
    embedder: Embedder | None = None,
    progress: ProgressCallback | None = None,
) -> EmbeddingRun:
    """Embed every sample of ``dataset`` that has no embedding for this model yet.

    Args:
        dataset: a FiftyOne dataset (or view: only its samples are embedded).
        model: registry name (see ``curation.models.MODEL_REGISTRY``) or a spec; default
            the model of ``embedder`` when one is given, else ``DEFAULT_MODEL``.
        checkpoint: local weights file for the model (air-gapped use).
        device: ``auto`` (cuda, then cpu), ``cpu`` or ``cuda[:N]``.
        batch_size: images per forward pass; default 256 on GPU (halved on OOM), 32 on CPU.
        num_workers: DataLoader decode workers; default all cores (GPU) or 1 (CPU).
        allow_fallback: use the offline model when the CLIP weights cannot be had.
        retry_failed: also retry samples whose image failed to decode before.
        embedder: an already loaded model (skips loading); it must be the model asked for
            (or what :func:`~curation.models.load_embedder` fell back to for it).
        progress: called with (done, total) after each batch.

    Returns:
        An :class:`EmbeddingRun` with counts, the model actually used and per-file failures.
    """
    import torch
    from torch.utils.data import DataLoader

    # The run records what was asked for; for a ready embedder, what it was loaded for.
    loaded_for = getattr(embedder, "requested_spec", None) or getattr(embedder, "spec", None)
    if model is None and embedder is not None:
        spec = loaded_for
    else:
        spec = model if isinstance(model, ModelSpec) else resolve_model(model or DEFAULT_MODEL, checkpoint)
    if embedder is None:
        embedder = load_embedder(spec, device=device, allow_fallback=allow_fallback)
    elif spec not in (embedder.spec, loaded_for):
        raise CurationInputError(f"embedder: expected a loaded {spec.name!r} (model=), got {embedder.spec.name!r}")
    used = embedder.spec
    field_name, error_field = used.field_name, f"{used.field_name}_error"
    root = dataset._root_dataset if hasattr(dataset, "_root_dataset") else dataset

    pending = dataset.exists(field_name, False)
    if root.has_sample_field(error_field) and not retry_failed:
        pending = pending.exists(error_field, False)
    ids, filepaths = pending.values(["id", "filepath"])
    run = EmbeddingRun(field_name, used.name, spec.name, embedder.fallback_reason, embedder.device,
                       already_done=len(dataset) - len(ids))
    _record_run(root, run, used, spec)
    if not ids:
        return run

    batch_size = batch_size or default_batch_size(embedder.device)
    workers = default_workers(embedder.device) if num_workers is None else num_workers
    loader = DataLoader(
        _ImageFiles(filepaths, embedder.preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=embedder.device.startswith("cuda"),
        persistent_workers=False,
    )
    if not embedder.device.startswith("cuda"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1)))

    vectors: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    done = 0
    last_write = time.monotonic()

    def flush() -> None:
        nonlocal last_write
        if vectors:
            root.set_values(field_name, dict(vectors), key_field="id")
            if retry_failed and root.has_sample_field(error_field):
                # A retried sample that now has an embedding no longer carries its old failure.
                root.set_values(error_field, dict.fromkeys(vectors, None), key_field="id")
            vectors.clear()
        if errors:
            root.set_values(error_field, dict(errors), key_field="id")
            errors.clear()
        last_write = time.monotonic()

    try:
        for indices, batch, bad in loader:
            for index, reason in bad:
                errors[ids[index]] = reason
                run.failures.append((filepaths[index], reason))
            if batch is not None:
                encoded = _encode_adaptive(embedder, batch)
                for index, vector in zip(indices, encoded):
                    vectors[ids[index]] = vector
                run.embedded += len(indices)
            done += len(indices) + len(bad)
            if len(vectors) + len(errors) >= WRITE_EVERY or time.monotonic() - last_write >= WRITE_SECONDS:
                flush()
            if progress:
                progress(done, len(ids))
    except BaseException:
        # Interrupted (Ctrl-C, a failing batch): keep what is already computed, then stop.
        try:
            flush()
        except Exception:
            logger.exception("could not save the embeddings computed before the interruption")
        raise
    flush()
    _record_run(root, run, used, spec)
    return run


def _record_run(dataset, run: EmbeddingRun, used: ModelSpec, requested: ModelSpec) -> None:
    runs = dict(curation_info(dataset).get("embeddings", {}))
    runs[run.field] = {
        "model": used.name,
        "model_spec": used.to_dict(),
        "requested_model": requested.name,
        "fallback_reason": run.fallback_reason,
        "device": run.device,
        "updated_at": now_iso(),
    }
    update_curation_info(dataset, embeddings=runs, default_embeddings=run.field)


def default_embedding_field(dataset) -> str | None:
    """The embedding field the app should use: the last one computed, if it still exists."""
    info = curation_info(dataset)
    candidate = info.get("default_embeddings")
    if candidate and dataset.has_sample_field(candidate):
        return candidate
    for name in info.get("embeddings", {}):
        if dataset.has_sample_field(name):
            return name
    return None


def load_embeddings(dataset, field_name: str) -> tuple[list[str], np.ndarray]:
    """Sample ids and the (N, D) float32 matrix for samples that have an embedding.

    Raises:
        KeyError: the dataset has no such field.
    """
    if not dataset.has_sample_field(field_name):
        raise MissingFieldError(f"dataset {dataset.name!r} has no embedding field {field_name!r}; run `curation embed` first")
    ids, vectors = dataset.exists(field_name).values(["id", field_name])
    if not ids:
        return [], np.zeros((0, 0), dtype=np.float32)
    return ids, np.stack(vectors).astype(np.float32, copy=False)


def embedding_failures(dataset, field_name: str) -> list[tuple[str, str]]:
    """(filepath, reason) for every sample whose image could not be embedded."""
    error_field = f"{field_name}_error"
    if not dataset.has_sample_field(error_field):
        return []
    paths, reasons = dataset.exists(error_field).values(["filepath", error_field])
    return list(zip(paths, reasons))
