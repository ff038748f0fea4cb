"""A small CNN that learns from the pixels of small images, compared per fold with the
frozen-feature classifier of :mod:`curation.finders.classifier`.

The out-of-fold classifier normally learns from frozen embeddings (a logistic regression or
a kNN vote on them). On small images such as MNIST digits a network trained on the pixels
themselves is far more accurate (99.0 % vs 96.4 % out of fold on the MNIST test set), and a
better classifier ranks real label errors higher (12 vs 8 of MNIST's 15 validated errors in the
top 100 of 1 - self-confidence). Training one is affordable only when the images
are small and not too many, so it is an option the cross-validation decides on:

- Eligibility (``pixel_model="auto"``): torch importable, at least ``MIN_PIXEL_SAMPLES``
  cross-validated samples, at least ``SMALL_SHARE`` of the images no larger than
  ``PIXEL_MAX_SIDE`` pixels on their longer side, and an estimated cost
  (:func:`estimated_seconds`, from the sizes alone, so deterministic) within the budget.
  Otherwise the reason is recorded and the embedding model is used alone.
- Per outer fold, on the same folds and the same inner hold-out quarter the embedding
  selection uses (:class:`PixelComparison`): the CNN trains on the outer-training samples
  outside the inner quarter, for a fixed number of epochs (no early stopping, so the inner
  quarter is never used for training decisions); the embedding model the selection chose
  is fitted on the same samples; each is temperature-scaled on the inner quarter, and the
  mixture ``w * CNN + (1 - w) * embedding`` with ``w`` in ``BLEND_WEIGHTS`` that has the
  lowest inner log loss is used for the outer held-out fold. ``w = 0`` keeps the embedding
  model's prediction exactly as without pixels. No label of the outer held-out fold is seen.
- Architecture, epochs and augmentation were chosen on Fashion-MNIST with 20 % synthetic
  flips (see ``benchmarks/bench_pixel_classifier.py``); MNIST's validated label errors were
  only the transfer check.

The CNN runs on one CPU thread by default (on the shared 2-core machine two threads were
3-4x slower than one, as for BLAS), or on the GPU when ``torch.cuda.is_available()``.
Training is deterministic for a given seed, fold and device.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

PIXEL_MODELS = ("auto", "off", "cnn")
PIXEL_MAX_SIDE = 64  # longer side, in pixels, of an image the CNN is trained on (larger ones are shrunk)
SMALL_SHARE = 0.9  # share of readable images that must be small for "auto"
MIN_PIXEL_SAMPLES = 300  # cross-validated samples below which "auto" does not train a CNN
MIN_SIDE = 8  # images are brought to at least this side
HEADER_SAMPLE = 200  # headers read first to reject a data set of large images quickly
DEFAULT_PIXEL_BUDGET = 900.0  # estimated seconds for all CNN trainings of one run (see estimated_seconds)

# The network and its training, chosen on Fashion-MNIST with 20 % flips (flip seed 101) by the
# inner hold-out log loss of outer fold 0 (benchmarks/bench_pixel_classifier.py, "sweep"):
# flattening the last feature map beat global average pooling (1.22 vs 1.28-1.33), shifts of
# 2 px beat none (1.22 vs 1.32), 32-64-64 beat 16-32-64 (1.217 vs 1.225), and 25 epochs were
# within 0.005 of 15 (1.214 vs 1.217), so the cheaper 15 (8: 1.239).
WIDTHS = (32, 64, 64)  # channels of the three conv blocks (3x3 conv, BN, ReLU; max-pool between)
HEAD = "flatten"  # "flatten": the last feature map, flattened -> linear; "gap": global average pool -> linear
DROPOUT = 0.3
BATCH_SIZE = 128
LEARNING_RATE = 3e-3  # peak of a one-cycle schedule (AdamW)
WEIGHT_DECAY = 5e-4
SHIFT = 2  # random translation of up to this many pixels (replicated border), the only augmentation
TARGET_STEPS = 700  # optimiser steps per training: epochs = TARGET_STEPS / batches per epoch ...
MIN_EPOCHS, MAX_EPOCHS = 5, 30  # ... within these bounds (15 epochs for 6,000 images)
BLEND_WEIGHTS = tuple(round(float(value), 2) for value in np.linspace(0.0, 1.0, 11))  # CNN share of the mixture
CPU_THREADS = 1
PREDICT_BATCH = 1024

# Cost model of one training image-epoch (forward + backward) on one CPU thread, fitted on
# the 2-core benchmark machine: a per-pixel overhead (BN, ReLU, pooling, copies) plus the
# convolutions' multiply-adds. A prediction costs about a third of a training pass. On purpose
# on the safe side: 600 s estimated for the 10,000 MNIST test images (5 folds), 360-380 s
# measured at a load average of 5-6.
SECONDS_PER_PIXEL = 0.6e-6
SECONDS_PER_MAC = 1.5e-10
GPU_SPEEDUP = 20.0


class PixelImages(NamedTuple):
    """Small images, one per sample, ready for the CNN.

    Attributes:
        pixels: (N, side, side, channels) uint8; zeros where not ``readable``.
        readable: (N,) bool, whether the sample's image could be decoded.
        side: the common side every image was resized to.
        channels: 1 when every readable image is grey, else 3 (RGB).
        info: counts (unreadable, large, resized) and a few reasons.
    """

    pixels: np.ndarray
    readable: np.ndarray
    side: int
    channels: int
    info: dict[str, Any]


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:  # a broken install raises more than ImportError
        return False
    return True


def device_name() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------

def _header_sizes(filepaths: Sequence[Any], rows: np.ndarray) -> np.ndarray:
    """(len(rows),) longer side from the header, 0 where unreadable."""
    from curation.images import image_info

    sides = np.zeros(len(rows), dtype=np.int64)
    for position, row in enumerate(rows):
        size = image_info(str(filepaths[row])) if filepaths[row] is not None else None
        if size is not None:
            sides[position] = max(size)
    return sides


def small_images_side(filepaths: Sequence[Any], *, max_side: int = PIXEL_MAX_SIDE) -> tuple[int | None, str]:
    """(side to train on, reason): the median longer side of the small images, or None with why not.

    Reads image headers only: first an evenly spaced sample of ``HEADER_SAMPLE`` (a data set
    of photos is rejected after that), then all of them.
    """
    count = len(filepaths)
    if count == 0:
        return None, "no images"
    sample = np.unique(np.linspace(0, count - 1, num=min(HEADER_SAMPLE, count)).round().astype(np.int64))
    for rows in (sample, np.arange(count)):
        sides = _header_sizes(filepaths, rows)
        readable = sides > 0
        if not readable.any():
            return None, f"no readable image among {len(rows)} checked"
        small = readable & (sides <= max_side)
        if small.sum() < SMALL_SHARE * readable.sum():
            return None, (f"images too large for the pixel model: {int(small.sum())} of {int(readable.sum())} readable "
                          f"images have a longer side <= {max_side} px (median {int(np.median(sides[readable]))} px)")
        if len(rows) == count:
            break
    return int(max(MIN_SIDE, np.median(sides[small]))), "ok"


def load_pixels(filepaths: Sequence[Any], side: int | None = None, *, max_side: int = PIXEL_MAX_SIDE) -> PixelImages:
    """Decode every image to a ``side`` x ``side`` uint8 array (grey kept as one channel).

    Args:
        filepaths: (N,) image paths; None or an undecodable file gives ``readable`` False.
        side: the common side; None: the median longer side of the images (at most ``max_side``).
        max_side: bound on ``side`` when it is derived.

    Images of another size are resized (bilinear, aspect ratio not kept: tiny images of one
    data set almost always share one shape). Decoding goes through
    :func:`curation.images.load_rgb`, so every mode, EXIF rotation and broken file is
    handled as for the embeddings.
    """
    from PIL import Image

    from curation.images import ImageLoadError, load_rgb

    count = len(filepaths)
    decoded: list[np.ndarray | None] = []
    reasons: dict[str, int] = {}
    sides = []
    for path in filepaths:
        if path is None:
            decoded.append(None)
            reasons["no file path"] = reasons.get("no file path", 0) + 1
            continue
        try:
            image = load_rgb(str(path), max_side=max_side)
        except ImageLoadError as error:
            decoded.append(None)
            reason = str(error).split(" (")[0]
            reasons[reason] = reasons.get(reason, 0) + 1
            continue
        sides.append(max(image.size))
        decoded.append(np.asarray(image))
    if side is None:
        side = int(np.clip(np.median(sides), MIN_SIDE, max_side)) if sides else MIN_SIDE
    readable = np.array([array is not None for array in decoded], dtype=bool)
    grey = all(np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])
               for array in decoded if array is not None)
    channels = 1 if grey else 3
    pixels = np.zeros((count, side, side, channels), dtype=np.uint8)
    resized = 0
    for row, array in enumerate(decoded):
        if array is None:
            continue
        if array.shape[:2] != (side, side):
            resized += 1
            array = np.asarray(Image.fromarray(array).resize((side, side), Image.Resampling.BILINEAR))
        pixels[row] = array[..., :1] if grey else array
    info = {"images": count, "unreadable": int((~readable).sum()), "resized": resized, "side": side,
            "channels": channels, "unreadable_reasons": dict(sorted(reasons.items(), key=lambda item: -item[1])[:5])}
    return PixelImages(pixels, readable, side, channels, info)


def as_pixel_images(pixels: Any) -> PixelImages:
    """A :class:`PixelImages` from one, or from an (N, H, W) / (N, H, W, C) array (H == W).

    Raises:
        ValueError: not such an array (the caller turns it into a FinderInputError).
    """
    if isinstance(pixels, PixelImages):
        return pixels
    array = np.asarray(pixels)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[1] != array.shape[2] or array.shape[3] not in (1, 3):
        raise ValueError(f"expected an array of shape (n_samples, side, side) or (n_samples, side, side, 1 or 3), "
                         f"got {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"expected numeric pixels, got {array.dtype}")
        scale = 255.0 if np.nanmax(np.abs(array)) <= 1.0 else 1.0  # [0, 1] floats or 0..255 values
        array = np.clip(np.nan_to_num(array.astype(np.float64) * scale), 0, 255).round().astype(np.uint8)
    return PixelImages(array, np.ones(len(array), dtype=bool), int(array.shape[1]), int(array.shape[3]),
                       {"images": len(array), "unreadable": 0, "resized": 0, "side": int(array.shape[1]),
                        "channels": int(array.shape[3]), "unreadable_reasons": {}})


# ----------------------------------------------------------------------------------------
# Cost
# ----------------------------------------------------------------------------------------

def epochs_for(n_train: int) -> int:
    """Epochs for ``n_train`` training images: about ``TARGET_STEPS`` steps, within bounds."""
    batches = max(1, math.ceil(n_train / BATCH_SIZE))
    return int(np.clip(round(TARGET_STEPS / batches), MIN_EPOCHS, MAX_EPOCHS))


def multiply_adds(side: int, channels: int) -> int:
    """Multiply-adds of one forward pass of :class:`SmallCNN` (the convolutions)."""
    total, width_in, size = 0, channels, side
    for block, width in enumerate(WIDTHS):
        total += size * size * 9 * width_in * width
        width_in = width
        if block < len(WIDTHS) - 1:
            size = max(1, size // 2)
    return total


def estimated_seconds(n_train_per_fold: Sequence[int], n_predict_per_fold: Sequence[int], side: int, channels: int,
                      device: str = "cpu") -> float:
    """Deterministic estimate of all CNN trainings and predictions of one run, in seconds.

    From the sizes alone (so the choice never depends on the machine's load): per training
    image-epoch ``SECONDS_PER_PIXEL * side**2 * channels + SECONDS_PER_MAC * multiply_adds``
    on one CPU thread; a prediction costs a third of that; ``GPU_SPEEDUP`` times less on a GPU.
    """
    per_image = SECONDS_PER_PIXEL * side * side * max(channels, 1) + SECONDS_PER_MAC * multiply_adds(side, channels)
    passes = sum(n * epochs_for(n) for n in n_train_per_fold) + sum(n_predict_per_fold) / 3.0
    seconds = per_image * passes
    return seconds / GPU_SPEEDUP if device == "cuda" else seconds


# ----------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------

def _network(channels: int, n_classes: int, side: int, widths: Sequence[int] | None = None, head: str | None = None):
    from torch import nn

    widths = WIDTHS if widths is None else widths
    head = HEAD if head is None else head
    layers: list = []
    width_in, size = channels, side
    for block, width in enumerate(widths):
        layers += [nn.Conv2d(width_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if block < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        width_in = width
    if head == "flatten":
        layers += [nn.Flatten(), nn.Dropout(DROPOUT), nn.Linear(width_in * size * size, n_classes)]
    else:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(DROPOUT), nn.Linear(width_in, n_classes)]
    return nn.Sequential(*layers)


def describe_network() -> str:
    blocks = " -> ".join(f"conv3x3 {width} + BN + ReLU" for width in WIDTHS)
    head = "flattened" if HEAD == "flatten" else "global average pool"
    return (f"CNN: {blocks} (2x2 max-pool between blocks), {head}, dropout {DROPOUT}, linear; "
            f"AdamW (one-cycle, peak lr {LEARNING_RATE:g}, weight decay {WEIGHT_DECAY:g}), batch {BATCH_SIZE}, "
            f"about {TARGET_STEPS} steps ({MIN_EPOCHS}-{MAX_EPOCHS} epochs), random shifts of up to {SHIFT} px")


def _shifted(batch, generator, shift: int):
    """Each image of ``batch`` (B, C, H, W) translated by up to ``shift`` px (border replicated)."""
    import torch
    import torch.nn.functional as F

    if shift <= 0:
        return batch
    count, _, height, width = batch.shape
    padded = F.pad(batch, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (2, count), generator=generator).to(batch.device)
    rows = offsets[0][:, None] + torch.arange(height, device=batch.device)[None, :]  # (B, H)
    cols = offsets[1][:, None] + torch.arange(width, device=batch.device)[None, :]  # (B, W)
    index = torch.arange(count, device=batch.device)[:, None, None]
    picked = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return picked.permute(0, 3, 1, 2).contiguous()


class _Threads:
    """Bound torch's intra-op threads (and make cuDNN deterministic) for a block, then restore."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        import torch

        self.previous = (torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        torch.set_num_threads(self.threads)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        return self

    def __exit__(self, *exc):
        import torch

        threads, torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.previous
        torch.set_num_threads(threads)


def train_and_predict(images: PixelImages, y: np.ndarray, train_rows: np.ndarray, predict_rows: Sequence[np.ndarray],
                      n_classes: int, *, seed: int, device: str = "cpu", threads: int = CPU_THREADS,
                      epochs: int | None = None, widths: Sequence[int] | None = None,
                      shift: int | None = None, head: str | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Train :func:`_network` on ``train_rows`` and predict every array of ``predict_rows``.

    Args:
        images: the pixels (rows index ``images.pixels``).
        y: (N,) int class indices (only ``train_rows`` are read).
        train_rows: rows to train on (all readable).
        predict_rows: row arrays to predict, each (n_i,).
        n_classes: outputs of the network.
        seed: seeds the initialisation, the batch order and the shifts.
        device: ``"cpu"`` or ``"cuda"``.
        threads: torch intra-op threads on the CPU (restored afterwards).
        epochs: None: :func:`epochs_for` the training size.
        widths, shift, head: the network's block widths, the augmentation and the head; None:
            ``WIDTHS``, ``SHIFT``, ``HEAD``.

    Returns:
        ((n_i, n_classes) float64 softmax probabilities per array of ``predict_rows``, info).
    """
    import torch
    import torch.nn.functional as F

    started = time.perf_counter()
    epochs = epochs_for(len(train_rows)) if epochs is None else int(epochs)
    shift = SHIFT if shift is None else shift
    with _Threads(threads), torch.random.fork_rng(devices=[0] if device == "cuda" else []):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.from_numpy(np.array(images.pixels.transpose(0, 3, 1, 2), copy=True, order="C"))
        train = torch.from_numpy(np.asarray(train_rows, dtype=np.int64))
        targets = torch.from_numpy(np.asarray(y, dtype=np.int64))
        values = pixels[train].float() / 255.0
        mean = values.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        std = values.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
        del values

        def batch_of(rows):
            return ((pixels[rows].float() / 255.0 - mean) / std).to(device)

        model = _network(images.channels, n_classes, images.side, widths, head).to(device)
        optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
        batches = max(1, math.ceil(len(train) / BATCH_SIZE))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LEARNING_RATE, total_steps=epochs * batches,
                                                       pct_start=0.15)
        model.train()
        last_loss = float("nan")
        for _ in range(epochs):
            order = train[torch.randperm(len(train), generator=generator)]
            for start in range(0, len(order), BATCH_SIZE):
                rows = order[start:start + BATCH_SIZE]
                batch = _shifted(batch_of(rows), generator, shift)
                loss = F.cross_entropy(model(batch), targets[rows].to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
            last_loss = float(loss.detach())
        train_seconds = time.perf_counter() - started
        model.eval()
        outputs = []
        with torch.no_grad():
            for rows in predict_rows:
                rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
                probabilities = np.zeros((len(rows), n_classes))
                for start in range(0, len(rows), PREDICT_BATCH):
                    logits = model(batch_of(rows[start:start + PREDICT_BATCH])).double()
                    probabilities[start:start + PREDICT_BATCH] = torch.softmax(logits, dim=1).cpu().numpy()
                outputs.append(probabilities)
    info = {"epochs": epochs, "train_images": int(len(train_rows)), "last_batch_loss": round(last_loss, 4),
            "train_seconds": round(train_seconds, 2), "seconds": round(time.perf_counter() - started, 2)}
    return outputs, info


# ----------------------------------------------------------------------------------------
# The per-fold comparison with the embedding model
# ----------------------------------------------------------------------------------------

def _mixture(cnn: np.ndarray, embedding: np.ndarray, weight: float) -> np.ndarray:
    if weight <= 0:
        return embedding
    if weight >= 1:
        return cnn
    return weight * cnn + (1.0 - weight) * embedding


def choice_name(weight: float) -> str:
    if weight <= 0:
        return "embedding"
    if weight >= 1:
        return "cnn"
    return f"blend w={weight:g}"


class FoldOutcome(NamedTuple):
    """What one outer fold compared and used (kept for benchmarks that wrap :meth:`PixelComparison.fold`)."""

    weight: float  # CNN share of the mixture used for the outer held-out fold
    test_rows: np.ndarray  # rows of the outer held-out fold
    embedding: np.ndarray  # the embedding model's prediction for them, exactly as without pixels
    cnn: np.ndarray | None  # the temperature-scaled CNN's (rows without pixels: the embedding's); None if not trained
    chosen: np.ndarray  # what the fold returns


class PixelComparison:
    """Per outer fold: a CNN on the pixels vs the embedding model, and their mixtures.

    Args:
        images: pixels of every sample (rows as in the embeddings).
        n_classes: number of classes.
        seed: base seed (the fold's seed is ``[seed, fold]``-derived).
        force_cnn: use the CNN alone in every fold (``pixel_model="cnn"``) instead of choosing.
        device, threads: where the CNN runs.
    """

    def __init__(self, images: PixelImages, n_classes: int, *, seed: int, force_cnn: bool = False,
                 device: str = "cpu", threads: int = CPU_THREADS, estimate: float | None = None):
        self.images, self.n_classes, self.seed = images, n_classes, seed
        self.force_cnn, self.device, self.threads, self.estimate = force_cnn, device, threads, estimate
        self.weights: list[float] = []
        self.losses: dict[str, list[float | None]] = {"embedding": [], "cnn": [], "best_blend": []}
        self.temperatures: list[float | None] = []
        self.fold_info: list[dict[str, Any]] = []
        self.unlabelled_sum: np.ndarray | None = None
        self.unlabelled_count = 0
        self.seconds = 0.0

    def fold(self, fold: int, inner_train: np.ndarray, inner_test: np.ndarray, test_rows: np.ndarray, y: np.ndarray,
             embedding_test: np.ndarray, embedding_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
             unlabelled_rows: np.ndarray) -> FoldOutcome:
        """Compare on ``inner_test`` and return the chosen prediction for ``test_rows``.

        Args:
            inner_train, inner_test: the fold's inner split (all of it, not the subsample the
                embedding candidates are compared on).
            test_rows: the outer held-out rows.
            y: (N,) class indices (-1 where unlabelled; only training rows are read for fitting).
            embedding_test: the embedding model's prediction for ``test_rows`` (what is
                returned when the embedding model wins).
            embedding_predict: ``(train_rows, predict_rows) -> probabilities`` of the embedding
                model the selection chose for this fold.
            unlabelled_rows: usable unlabelled rows, predicted with the same choice.
        """
        from curation.finders.classifier import apply_temperature, fit_temperature, log_loss

        started = time.perf_counter()
        readable = self.images.readable
        cnn_train = inner_train[readable[inner_train]]
        inner_scored = inner_test[readable[inner_test]]
        record: dict[str, Any] = {"fold": fold}
        if len(inner_scored) < 2 or len(np.unique(y[cnn_train])) < 2:
            record["skipped"] = "too few inner samples with pixels"
            return self._finish(record, 0.0, test_rows, embedding_test, None, embedding_test, None, started)

        test_pixels = test_rows[readable[test_rows]]
        unlabelled_pixels = unlabelled_rows[readable[unlabelled_rows]]
        (cnn_inner, cnn_test, cnn_unlabelled), train_info = train_and_predict(
            self.images, y, cnn_train, [inner_scored, test_pixels, unlabelled_pixels], self.n_classes,
            seed=int(np.random.SeedSequence([self.seed, fold]).generate_state(1)[0]), device=self.device,
            threads=self.threads)
        record.update(train_info)
        # The embedding model on the same training rows, so the mixture weight chosen on the
        # inner quarter is the one applied to the outer fold.
        embedding_all = embedding_predict(inner_train, np.concatenate([inner_scored, test_rows, unlabelled_rows]))
        embedding_inner = embedding_all[:len(inner_scored)]
        embedding_outer = embedding_all[len(inner_scored):len(inner_scored) + len(test_rows)]
        embedding_unlabelled = embedding_all[len(inner_scored) + len(test_rows):]
        targets = y[inner_scored]
        embedding_temperature, embedding_loss = fit_temperature(embedding_inner, targets)
        cnn_temperature, cnn_loss = fit_temperature(cnn_inner, targets)
        embedding_inner = apply_temperature(embedding_inner, embedding_temperature)
        cnn_inner = apply_temperature(cnn_inner, cnn_temperature)
        losses = {weight: log_loss(_mixture(cnn_inner, embedding_inner, weight), targets) for weight in BLEND_WEIGHTS}
        if self.force_cnn:
            weight = 1.0
        else:  # the lowest loss; ties go to the smaller CNN share (the embedding model alone first)
            weight = min(BLEND_WEIGHTS, key=lambda value: (round(losses[value], 10), value))
        blends = [losses[value] for value in BLEND_WEIGHTS if 0 < value < 1]
        record.update({"temperature_cnn": round(cnn_temperature, 4), "temperature_embedding": round(embedding_temperature, 4),
                       "inner_samples": int(len(inner_scored)),
                       "inner_log_loss": {choice_name(value): round(loss, 4) for value, loss in losses.items()}})
        self.losses["embedding"].append(embedding_loss)
        self.losses["cnn"].append(cnn_loss)
        self.losses["best_blend"].append(min(blends) if blends else None)
        self.temperatures.append(cnn_temperature)

        # Rows without pixels keep the embedding model's prediction (as if w = 0).
        has_pixels = readable[test_rows]
        cnn_scaled = embedding_test.copy()
        cnn_scaled[has_pixels] = apply_temperature(cnn_test, cnn_temperature)
        if weight > 0:
            chosen = embedding_test.copy()
            chosen[has_pixels] = _mixture(cnn_scaled[has_pixels],
                                          apply_temperature(embedding_outer[has_pixels], embedding_temperature), weight)
        else:
            chosen = embedding_test
        unlabelled = apply_temperature(embedding_unlabelled, embedding_temperature) if len(unlabelled_rows) else embedding_unlabelled
        if len(unlabelled_rows):
            has = readable[unlabelled_rows]
            unlabelled[has] = _mixture(apply_temperature(cnn_unlabelled, cnn_temperature), unlabelled[has], weight)
        return self._finish(record, weight, test_rows, embedding_test, cnn_scaled, chosen, unlabelled, started)

    def _finish(self, record, weight, test_rows, embedding_test, cnn, chosen, unlabelled, started) -> FoldOutcome:
        weight = float(weight)
        record["chosen"] = choice_name(weight)
        self.weights.append(weight)
        self.fold_info.append(record)
        if unlabelled is not None and len(unlabelled):
            self.unlabelled_sum = unlabelled if self.unlabelled_sum is None else self.unlabelled_sum + unlabelled
            self.unlabelled_count += 1
        self.seconds += time.perf_counter() - started
        return FoldOutcome(weight, test_rows, embedding_test, cnn, chosen)

    @property
    def pixel_model_won(self) -> bool:
        """Whether the CNN had a share in most folds."""
        return bool(sum(weight > 0 for weight in self.weights) * 2 > len(self.weights))

    def unlabelled_probabilities(self) -> np.ndarray | None:
        """Mean over folds of each fold's choice for the unlabelled rows, when the CNN won; else None."""
        if not self.pixel_model_won or self.unlabelled_sum is None or not self.unlabelled_count:
            return None
        return self.unlabelled_sum / self.unlabelled_count

    def summary(self) -> dict[str, Any]:
        def mean(values):
            kept = [value for value in values if value is not None]
            return round(float(np.mean(kept)), 4) if kept else None

        return {
            "used": True,
            "mode": "cnn" if self.force_cnn else "auto",
            "network": describe_network(),
            "device": self.device,
            "threads": self.threads if self.device == "cpu" else None,
            "side": self.images.side,
            "channels": self.images.channels,
            "images_without_pixels": int((~self.images.readable).sum()),
            "chosen_per_fold": [choice_name(weight) for weight in self.weights],
            "cnn_weight_per_fold": self.weights,
            "pixel_model_won": self.pixel_model_won,
            "mean_inner_log_loss": {name: mean(values) for name, values in self.losses.items()},
            "criterion": ("log loss on the selection's inner hold-out quarter of each outer training fold, after "
                          "temperature scaling, of the embedding model, the CNN and their mixtures "
                          f"(CNN share {BLEND_WEIGHTS[1]:g} to {BLEND_WEIGHTS[-2]:g}); both trained on the rest of the fold"),
            "folds": self.fold_info,
            "estimated_seconds": None if self.estimate is None else round(self.estimate, 1),
            "seconds": round(self.seconds, 1),
        }


def plan(images: PixelImages, n_samples: int, n_cross_validated: int, train_sizes: Sequence[int],
         predict_sizes: Sequence[int], *, pixel_model: str, budget: float) -> tuple[bool, str, float | None, str]:
    """(train?, reason, estimated seconds, device) for the pixel model of one run."""
    if len(images.pixels) != n_samples:
        return False, f"pixels: expected {n_samples} images to match the embeddings, got {len(images.pixels)}", None, "cpu"
    if not torch_available():
        return False, "torch is not importable", None, "cpu"
    readable = int(images.readable.sum())
    if pixel_model == "auto":
        if images.side > PIXEL_MAX_SIDE:
            return False, f"images of {images.side} px, over the {PIXEL_MAX_SIDE} px the pixel model takes", None, "cpu"
        if n_cross_validated < MIN_PIXEL_SAMPLES:
            return False, (f"{n_cross_validated} cross-validated samples, fewer than the {MIN_PIXEL_SAMPLES} "
                           "a CNN needs"), None, "cpu"
        if readable < SMALL_SHARE * n_samples:
            return False, f"only {readable} of {n_samples} images readable", None, "cpu"
    device = device_name()
    estimate = estimated_seconds(train_sizes, predict_sizes, images.side, images.channels, device)
    if pixel_model == "auto" and estimate > budget:
        return False, (f"over budget: the CNN would take about {estimate:.0f} s (estimated), the budget is "
                       f"{budget:.0f} s (pixel_budget)"), estimate, device
    return True, "ok", estimate, device


def default_threads() -> int:
    return max(1, min(CPU_THREADS, os.cpu_count() or 1))


def pixels_for_context(filepaths: Sequence[Any], n_labelled: int, n_folds: int, budget: float, pixel_model: str,
                       cache: dict) -> tuple[PixelImages | None, str]:
    """(the images of a data set, or None with why not), for :meth:`FinderContext.out_of_fold`.

    Cheap checks first (torch, the number of labelled samples, image headers, the estimated
    cost with one channel), so a data set of photos or a small one never decodes an image;
    headers and pixels are read once per ``cache`` (the context's).
    """
    if not torch_available():
        return None, "torch is not importable"
    if pixel_model == "auto" and n_labelled < MIN_PIXEL_SAMPLES:
        return None, f"{n_labelled} labelled samples, fewer than the {MIN_PIXEL_SAMPLES} a CNN needs"
    if "side" not in cache:
        cache["side"] = small_images_side(filepaths)
    side, reason = cache["side"]
    if side is None:
        return None, reason
    if pixel_model == "auto":
        folds = max(2, int(n_folds))
        inner = int(n_labelled * (1 - 1 / folds) * 0.75)
        lower_bound = estimated_seconds([inner] * folds, [], side, 1, device_name())
        if lower_bound > budget:
            return None, (f"over budget: the CNN would take at least {lower_bound:.0f} s (estimated), the budget is "
                          f"{budget:.0f} s (pixel_budget)")
    if "images" not in cache:
        cache["images"] = load_pixels(filepaths, side)
    return cache["images"], "ok"
