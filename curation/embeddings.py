"""Computing, caching and reading image embeddings.

Embeddings live in a FiftyOne sample field per model (``embeddings_<model>``), so FiftyOne
Brain can use them too (``embeddings="embeddings_clip_vit_b32_openai"``). A run embeds only
samples that have neither an embedding nor a recorded failure, and writes what it computed
every few seconds (``WRITE_SECONDS``) or every ``WRITE_EVERY`` samples, whichever comes
first: rerunning is free, new samples cost only themselves, and a run that is killed (even
with ``kill -9``, where no handler runs) loses seconds of work at most and resumes where it
stopped. Files that cannot be decoded, or are larger than ``MAX_EMBED_PIXELS``, get a reason
in ``embeddings_<model>_error`` and never stop the run.

Input size: for models that take any size (EfficientNet-Lite), ``image_size="auto"`` picks it
from the data (:func:`curation.models.auto_image_size` on the median longer side of up to
``SIZE_SAMPLE`` images): 28 px images are embedded at 160 px, large photos at the native size.
The size, crop and flip TTA are stored in the run record (``dataset.info["curation"]
["embeddings"][field]``), and a field is never mixed: later runs on it reuse what the record
says. :func:`embedder_for_field` loads the model exactly as a field was embedded.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from curation.datasets import curation_info, now_iso, update_curation_info
from curation.images import ImageLoadError, image_info, load_rgb
from curation.models import (
    DEFAULT_MODEL,
    LEGACY_CROP,
    LEGACY_IMAGE_SIZE,
    Embedder,
    ModelSpec,
    ModelUnavailableError,
    auto_image_size,
    load_embedder,
    resolve_model,
)
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
# Images whose header sizes decide image_size="auto" (their median longer side).
SIZE_SAMPLE = 200


class NoEmbeddingRecordError(ModelUnavailableError):
    """A field has no run record saying which model (and input) made its embeddings."""


@dataclass
class EmbeddingRun:
    """What one call of :func:`compute_embeddings` did.

    ``image_size``, ``crop`` and ``flip_tta`` are the input the field's embeddings were made
    with (see :meth:`curation.models.Embedder.input_config`); ``input_reason`` says why.
    """

    field: str
    model: str
    requested_model: str
    fallback_reason: str | None
    device: str
    embedded: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (filepath, reason)
    already_done: int = 0
    image_size: int | None = None
    crop: float | None = None
    flip_tta: bool = False
    input_reason: str = ""


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


def typical_image_side(filepaths: list[str], sample: int = SIZE_SAMPLE, seed: int = 0) -> tuple[float | None, int]:
    """Median longer side (px) over a seeded sample of up to ``sample`` images, from their
    headers alone; and how many headers were readable. (None, 0) when none was."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(filepaths), size=min(sample, len(filepaths)), replace=False) if filepaths else []
    sides = [max(size) for size in (image_info(filepaths[index]) for index in sorted(chosen)) if size]
    return (float(np.median(sides)), len(sides)) if sides else (None, 0)


def recorded_input(record: dict | None, embedder: Embedder) -> tuple[int | None, float | None, bool]:
    """(image_size, crop, flip_tta) a field was embedded with, from its run record.

    Records written before input sizes existed have none: those fields were embedded with the
    old preprocess (shorter side 256, centre crop 224; CLIP: its own), without flip TTA.
    """
    record = record or {}
    if "image_size" in record:
        return record["image_size"], record.get("crop"), bool(record.get("flip_tta", False))
    if embedder.resizable:
        return LEGACY_IMAGE_SIZE, LEGACY_CROP, False
    return embedder.image_size, embedder.crop, False


def _choose_input(root, dataset, field_name: str, embedder: Embedder, image_size, flip_tta: bool | None,
                  pending_paths: list[str]) -> tuple[int | None, float | None, bool, str]:
    """(image_size, crop, flip_tta, reason) for this run: what the field already holds, else the choice."""
    if not (image_size == "auto" or embedder.resizable or image_size == embedder.image_size):
        raise CurationInputError(f"image_size: {embedder.spec.name} takes a fixed {embedder.image_size} px input "
                                 f"(its own preprocess); got {image_size!r} (use 'auto')")
    if image_size != "auto" and embedder.resizable:
        image_size = int(image_size) if not isinstance(image_size, bool) and isinstance(image_size, (int, np.integer)) \
            else image_size
        if not isinstance(image_size, int):
            raise CurationInputError(f"image_size: expected a whole number of pixels or 'auto', got {image_size!r}")
    holds_vectors = root.has_sample_field(field_name) and len(root.exists(field_name).limit(1)) > 0
    if holds_vectors:
        record = curation_info(root).get("embeddings", {}).get(field_name)
        size, crop, flip = recorded_input(record, embedder)
        legacy = "image_size" not in (record or {})
        if image_size != "auto" and embedder.resizable and image_size != size:
            raise CurationInputError(
                f"image_size: {field_name} already holds embeddings made at {size} px, and one field never mixes "
                f"sizes; delete the field to re-embed at {image_size} px, or use image_size='auto' to add to it")
        if flip_tta is not None and bool(flip_tta) != flip:
            raise CurationInputError(
                f"flip_tta: {field_name} already holds embeddings made with flip_tta={flip}, and one field never mixes "
                f"them; delete the field to re-embed with flip_tta={bool(flip_tta)}, or leave flip_tta unset")
        reason = f"the field's earlier run{' (recorded before input sizes: shorter side 256, centre crop 224)' if legacy else ''}"
        return size, crop, flip, reason
    flip = embedder.flip_tta if flip_tta is None else bool(flip_tta)
    if not embedder.resizable:
        return embedder.image_size, embedder.crop, flip, "fixed by the model"
    if image_size != "auto":
        return image_size, embedder.crop, flip, "asked for"
    paths = pending_paths or dataset.limit(10 * SIZE_SAMPLE).values("filepath")
    typical, count = typical_image_side(list(paths))
    size = auto_image_size(embedder.native_size, typical)
    if typical is None:
        return size, embedder.crop, flip, "auto: no readable image header; the model's native size"
    return size, embedder.crop, flip, f"auto: median longer side {typical:g} px over {count} images"


def resolve_embedder(model: str | ModelSpec | None, checkpoint: str | None, embedder: Embedder | None, *,
                     device: str = "auto", allow_fallback: bool = True) -> tuple[ModelSpec, Embedder]:
    """(the model asked for, the embedder to use), as :func:`compute_embeddings` takes them.

    ``model`` None with a ready ``embedder`` means the model that embedder was loaded for;
    None without one means ``DEFAULT_MODEL``. A ready embedder must be the model asked for
    (or what :func:`~curation.models.load_embedder` fell back to for it).

    Raises:
        CurationInputError: ``embedder`` is another model than ``model``.
    """
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
    return spec, embedder


def pending_samples(dataset, root, field_name: str, error_field: str, retry_failed: bool) -> tuple[list[str], list[str]]:
    """``(ids, filepaths)`` of the samples an embedding run still has to do: no vector yet,
    and (unless ``retry_failed``) no recorded failure. The rule of every engine."""
    pending = dataset.exists(field_name, False)
    if root.has_sample_field(error_field) and not retry_failed:
        pending = pending.exists(error_field, False)
    ids, filepaths = pending.values(["id", "filepath"])
    return ids, filepaths


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
    image_size: int | str = "auto",
    flip_tta: bool | None = None,
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
        image_size: input side in pixels for models that take any size (EfficientNet-Lite,
            also when CLIP fell back to it), or ``"auto"`` (default): from the median longer
            side of up to ``SIZE_SAMPLE`` images (:func:`curation.models.auto_image_size`:
            28 px images -> 160 px, photos -> the native size). A given ``embedder`` is
            re-sized to it (weights shared). CLIP takes only its own size.
        flip_tta: embed each image as the normalised mean of it and its mirror (2x the cost);
            None (default): as the field was embedded before, else as ``embedder`` is set
            (off unless it was loaded with ``flip_tta=True``).

    A field that already holds embeddings keeps the input size, crop and flip TTA of its run
    record (``"auto"`` and None reuse them; an explicit different value is an error), so its
    vectors stay comparable.

    Returns:
        An :class:`EmbeddingRun` with counts, the model actually used, its input and per-file failures.

    Raises:
        CurationInputError: an ``image_size`` or ``flip_tta`` that differs from what the field
            already holds, or a size for a fixed-size model.
    """
    import torch
    from torch.utils.data import DataLoader

    spec, embedder = resolve_embedder(model, checkpoint, embedder, device=device, allow_fallback=allow_fallback)
    used = embedder.spec
    field_name, error_field = used.field_name, f"{used.field_name}_error"
    root = dataset._root_dataset if hasattr(dataset, "_root_dataset") else dataset

    ids, filepaths = pending_samples(dataset, root, field_name, error_field, retry_failed)
    size, crop, flip, input_reason = _choose_input(root, dataset, field_name, embedder, image_size, flip_tta, filepaths)
    embedder = embedder.with_input(image_size=size, crop=crop, flip_tta=flip)
    run = EmbeddingRun(field_name, used.name, spec.name, embedder.fallback_reason, embedder.device,
                       already_done=len(dataset) - len(ids), image_size=embedder.image_size, crop=embedder.crop,
                       flip_tta=embedder.flip_tta, input_reason=input_reason)
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
        "image_size": run.image_size,
        "crop": run.crop,
        "flip_tta": run.flip_tta,
        "input_reason": run.input_reason,
        "updated_at": now_iso(),
    }
    update_curation_info(dataset, embeddings=runs, default_embeddings=run.field)


def recorded_spec(record: dict, what: str) -> ModelSpec:
    """The model a run record (``model_spec``) says made ``what`` (a field name, for messages).

    Raises:
        ModelUnavailableError: the recorded checkpoint file no longer exists.
    """
    import dataclasses

    known = {item.name for item in dataclasses.fields(ModelSpec)}
    spec = ModelSpec(**{key: value for key, value in record["model_spec"].items() if key in known})
    if spec.checkpoint and not os.path.isfile(spec.checkpoint):
        raise ModelUnavailableError(f"{what} was embedded with the checkpoint {spec.checkpoint}, which no longer exists")
    return spec


def embedder_for_field(dataset, field_name: str, *, device: str = "auto") -> Embedder:
    """The model loaded exactly as ``field_name`` was embedded, from its run record.

    The model actually used (the fallback, if CLIP fell back; its checkpoint, if any), the
    input size, crop and flip TTA: ``embedder.encode_images(torch.stack([embedder.preprocess(
    image), ...]))`` gives vectors comparable with the stored ones (for an image decoded
    like the run's, ``load_rgb(path, max_side=512)``).

    Raises:
        NoEmbeddingRecordError: the dataset has no record of the model behind the field.
        ModelUnavailableError: the recorded model (or its checkpoint file) cannot be loaded here.
    """
    root = dataset._root_dataset if hasattr(dataset, "_root_dataset") else dataset
    record = curation_info(root).get("embeddings", {}).get(field_name)
    if not record or "model_spec" not in record:
        raise NoEmbeddingRecordError(
            f"no record of the model behind {field_name!r} on dataset {root.name!r}; re-run `curation embed --dataset {root.name}`")
    spec = recorded_spec(record, field_name)
    embedder = load_embedder(spec, device=device, allow_fallback=False)
    size, crop, flip = recorded_input(record, embedder)
    if embedder.resizable:
        return embedder.with_input(image_size=size, crop=crop, flip_tta=flip)
    return embedder.with_input(flip_tta=flip)


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
    Streamed: the vectors are decoded straight into one preallocated matrix, a batch of
    documents at a time, so the peak memory is the matrix plus the ids (``values()`` followed
    by ``np.stack`` held a list of N arrays as well: twice the matrix).
    """
    if not dataset.has_sample_field(field_name):
        raise MissingFieldError(f"dataset {dataset.name!r} has no embedding field {field_name!r}; run `curation embed` first")
    import fiftyone.core.utils as fou

    view = dataset.exists(field_name)
    expected = view.count()
    ids: list[str] = []
    matrix: np.ndarray | None = None
    cursor = view._aggregate(pipeline=[{"$project": {field_name: 1}}])
    for row, document in enumerate(cursor):
        value = document.get(field_name)
        vector = fou.deserialize_numpy_array(value) if isinstance(value, bytes) else np.asarray(value)
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if matrix is None:
            matrix = np.empty((max(expected, 1), vector.size), dtype=np.float32)
        elif vector.size != matrix.shape[1]:
            raise CurationInputError(f"dataset {dataset.name!r}, field {field_name!r}: sample {document['_id']} "
                                     f"holds a vector of {vector.size} values, expected {matrix.shape[1]} like "
                                     f"the others; run `curation embed` again for this field")
        if row >= len(matrix):  # samples added since the count
            matrix = np.concatenate([matrix, np.empty_like(matrix)])
        matrix[row] = vector
        ids.append(str(document["_id"]))
    if matrix is None:
        return [], np.zeros((0, 0), dtype=np.float32)
    return ids, matrix[:len(ids)]


def embedding_failures(dataset, field_name: str) -> list[tuple[str, str]]:
    """(filepath, reason) for every sample whose image could not be embedded."""
    error_field = f"{field_name}_error"
    if not dataset.has_sample_field(error_field):
        return []
    paths, reasons = dataset.exists(error_field).values(["filepath", error_field])
    return list(zip(paths, reasons))
