"""Near duplicates in two stages: candidates from the neighbour graph, then a verified score.

A fixed cosine threshold misses most real near duplicates: an object re-shot, re-cropped
or re-coloured keeps its meaning but not always a high cosine (0.67 to 0.95 on the offline
model for 39 known pairs in a 10,000-photo set), while two different objects of one class
can reach the same cosine. So:

1. **Candidates**: every sample's top ``k`` neighbours in the shared graph (5 to 10).
2. **Verification**: per candidate pair, features that duplicates share and unrelated
   look-alikes do not: the cosine, the cosine relative to how crowded both neighbourhoods
   are (``cosine_margin``, CSLS-like), and image-level similarity of low-resolution
   signatures computed once per image (:func:`compute_signatures`): grayscale and colour
   correlation maximised over the mirror image, small shifts and three centre zooms (so
   crops, shifts and flips survive), the same at half resolution (12x12), and perceptual
   hashes. A logistic regression turns them into ``probability``.
3. **Self-calibration** (:func:`calibrate_verifier`): the model is trained on the dataset
   itself. Positives are a sample of its images against edited copies of them (crops,
   shifts, zoom, flips, small rotations, hue and saturation, grayscale, contrast, JPEG,
   noise, blur; one to three edits of random strength), embedded with the dataset's own
   model. Negatives are sampled images against their nearest neighbours in the dataset,
   and the copies against the originals' neighbours. The threshold comes from out-of-fold
   probabilities (folds by sampled image), so it is chosen on pairs the model did not
   see.

Choosing the operating point. A precision measured on the calibration pairs themselves
says little about the dataset: there, a few copies per image meet a few neighbours per
image, while in a real dataset a duplicate pair is one in hundreds or thousands of
candidate pairs, so the same false-positive rate costs far more precision. The curve's
precision is therefore the one expected *on the dataset*: with ``M`` candidate pairs and
``D = duplicate_rate * N`` duplicate pairs assumed present,
``precision(t) = D * recall(t) / (D * recall(t) + M * false_positive_rate(t))``, where the
recall is measured on the copies and the false-positive rate on the dataset's own
neighbour pairs. Two corrections keep it honest: the negatives may contain the dataset's
real duplicates, so pixel-identical pairs are never negatives, and at most the ``D / M``
share of the rest that the assumed rate implies, and only those scoring above the median
copy, are set aside as probable duplicates (with the copies of one side against the other)
rather than counted as errors; and the threshold is the lowest that reaches the target precision,
which keeps the most recall, because the synthetic copies are easier than real re-shoots
and every bit of recall measured on them overstates what the dataset will see.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from curation.finders.base import FinderContext, FinderInputError, FinderResult
from curation.finders.duplicates import (
    exact_duplicate_groups, merge_exact_groups, near_duplicate_groups, nearest_neighbor_columns, suggest_keepers,
)
from curation.images import ImageLoadError, load_rgb

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# Per-image signatures
# --------------------------------------------------------------------------------------

# 24 px: on Fashion-MNIST neighbours vs edited copies, 24 px separated better than 16 (AUC
# 0.94 vs 0.89: finer alignment for shifts and crops) and as well as 32 px, at half its cost.
SIGNATURE_SIDE = 24
# Centre crops kept per image (share of each side): comparing one image's full view with
# the other's zoomed-in views lets a re-cropped copy line up with its original.
SIGNATURE_ZOOMS = (1.0, 0.85, 0.7)
HASH_NAMES = ("phash", "phash_mirror", "dhash", "dhash_mirror")
SIGNATURE_DTYPE = np.dtype([
    ("valid", np.bool_),                # False: the image could not be decoded
    ("pixel_digest", "S32"),            # same hex digest as duplicates.pixel_digest
    ("thumbnails", np.uint8, (len(SIGNATURE_ZOOMS), SIGNATURE_SIDE, SIGNATURE_SIDE, 3)),
    ("hashes", np.uint8, (len(HASH_NAMES), 8)),  # 64-bit perceptual hashes, packed
])


def _perceptual_hashes(image: Image.Image) -> np.ndarray:
    try:
        import imagehash
    except ImportError as error:
        raise ImportError("near-duplicate signatures need imagehash: `pip install imagehash`") from error
    mirror = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    hashes = [imagehash.phash(image), imagehash.phash(mirror), imagehash.dhash(image), imagehash.dhash(mirror)]
    return np.stack([np.packbits(h.hash.flatten()) for h in hashes])


def image_signature(image: Image.Image) -> np.ndarray:
    """The signature of one decoded RGB image: a 0-d array of :data:`SIGNATURE_DTYPE`."""
    image = image.convert("RGB")
    pixels = np.asarray(image, dtype=np.uint8)
    signature = np.zeros((), dtype=SIGNATURE_DTYPE)
    signature["valid"] = True
    signature["pixel_digest"] = hashlib.blake2b(pixels.tobytes() + str(pixels.shape).encode(),
                                                digest_size=16).hexdigest().encode()
    width, height = image.size
    for slot, zoom in enumerate(SIGNATURE_ZOOMS):
        box = ((1 - zoom) * width / 2, (1 - zoom) * height / 2, (1 + zoom) * width / 2, (1 + zoom) * height / 2)
        signature["thumbnails"][slot] = np.asarray(
            image.resize((SIGNATURE_SIDE, SIGNATURE_SIDE), Image.Resampling.BOX, box=box), dtype=np.uint8)
    signature["hashes"] = _perceptual_hashes(image)
    return signature


def _file_signature(path) -> tuple[np.ndarray, str | None]:
    try:
        return image_signature(load_rgb(path)), None
    except ImageLoadError as error:
        return np.zeros((), dtype=SIGNATURE_DTYPE), str(error)


def compute_signatures(filepaths: Sequence[str | os.PathLike], *, workers: int | None = None,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Low-resolution signatures of images, decoded once each (about 5 KB per image).

    Args:
        filepaths: (N,) image files.
        workers: decoding threads (default: the CPU count, at most 8).
        progress: called as ``progress(done, total)`` every 256 images.

    Returns:
        (N,) structured array of :data:`SIGNATURE_DTYPE`: ``valid``, ``pixel_digest``
        (identical to :func:`curation.finders.duplicates.pixel_digest`, so exact
        duplicates need no second pass), ``thumbnails`` (centre crops at
        :data:`SIGNATURE_ZOOMS`, 24x24 RGB) and packed perceptual ``hashes``. Rows of
        undecodable images have ``valid`` False (logged with their count and first reason);
        their pairs are never verified. Save with ``np.save`` to cache.
    """
    filepaths = list(filepaths)
    signatures = np.zeros(len(filepaths), dtype=SIGNATURE_DTYPE)
    failures: list[tuple[str, str]] = []
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for row, (signature, reason) in enumerate(pool.map(_file_signature, filepaths, chunksize=64)):
            signatures[row] = signature
            if reason is not None:
                failures.append((str(filepaths[row]), reason))
            if progress and (row + 1) % 256 == 0:
                progress(row + 1, len(filepaths))
    if progress:
        progress(len(filepaths), len(filepaths))
    if failures:
        logger.warning("signatures: %d of %d images could not be decoded (first: %s: %s); their pairs are not verified",
                       len(failures), len(filepaths), *failures[0])
    return signatures


def _file_stamp(path: str) -> tuple[int, int]:
    """(mtime in ns, size) of a file, (-1, -1) when it cannot be stat'ed (never matches a cache row)."""
    try:
        status = os.stat(path)
    except OSError:
        return -1, -1
    return int(status.st_mtime_ns), int(status.st_size)


def _signature_cache_path(key: str):
    from curation.paths import cache_dir

    return cache_dir() / "signatures" / (hashlib.sha1(json.dumps(["signatures-v1", key]).encode()).hexdigest() + ".npz")


def _read_signature_cache(path) -> dict | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            entry = {name: stored[name] for name in stored.files}
        blob = entry["paths"].tobytes().decode()
        entry["paths"] = blob.split("\n") if blob else []
        if entry["signatures"].dtype != SIGNATURE_DTYPE or entry["signatures"].shape != (len(entry["paths"]),) \
                or entry["stamps"].shape != (len(entry["paths"]), 2):
            raise ValueError("arrays do not match the stored paths")
        return entry
    except Exception as error:  # noqa: BLE001 - any unreadable cache file is a miss, recomputed
        logger.warning("ignoring unreadable signature cache %s: %s", path, error)
        return None


def cached_signatures(key: str, filepaths: Sequence[str | os.PathLike], *, workers: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """:func:`compute_signatures`, read from / written to a disk cache named by ``key``
    (the dataset's name), under ``$CURATION_CACHE_DIR/signatures``.

    A cached row is reused when its file has the same path, modification time and size;
    only new or changed files are decoded. Files are never written; the cache file is
    replaced atomically, so a reader never sees half of it; an unreadable cache is logged
    and rebuilt.
    """
    from curation.files import atomic_file

    filepaths = [str(path) for path in filepaths]
    stamps = np.array([_file_stamp(path) for path in filepaths], dtype=np.int64).reshape(len(filepaths), 2)
    path = _signature_cache_path(key)
    entry = _read_signature_cache(path)
    signatures = np.zeros(len(filepaths), dtype=SIGNATURE_DTYPE)
    missing = np.ones(len(filepaths), dtype=bool)
    if entry is not None:
        cached = {(p, int(a), int(b)): row for row, (p, (a, b)) in enumerate(zip(entry["paths"], entry["stamps"]))}
        for row, (filepath, (mtime, size)) in enumerate(zip(filepaths, stamps)):
            hit = cached.get((filepath, int(mtime), int(size))) if mtime >= 0 else None
            if hit is not None:
                signatures[row] = entry["signatures"][hit]
                missing[row] = False
    if missing.any():
        rows = np.flatnonzero(missing)
        signatures[rows] = compute_signatures([filepaths[row] for row in rows], workers=workers, progress=progress)
        keep = stamps[:, 0] >= 0
        with atomic_file(path, make_parents=True) as partial:
            np.savez(partial, signatures=signatures[keep], stamps=stamps[keep],
                     paths=np.frombuffer("\n".join(np.array(filepaths, dtype=object)[keep]).encode(), dtype=np.uint8))
    elif progress:
        progress(len(filepaths), len(filepaths))
    return signatures


def signature_digests(signatures: np.ndarray) -> list[str | None]:
    """Pixel digests from signatures (None where undecodable), for exact-duplicate groups."""
    return [digest.decode() if valid else None for digest, valid in zip(signatures["pixel_digest"], signatures["valid"])]


def _validate_signatures(signatures, count: int) -> None:
    if not isinstance(signatures, np.ndarray) or signatures.dtype != SIGNATURE_DTYPE:
        got = type(signatures).__name__ if not isinstance(signatures, np.ndarray) else f"array of dtype {signatures.dtype}"
        raise FinderInputError(f"signatures: expected the array compute_signatures returns (dtype SIGNATURE_DTYPE), got {got}")
    if signatures.shape != (count,):
        raise FinderInputError(f"signatures: expected one per sample, shape ({count},), got shape {signatures.shape}")


# --------------------------------------------------------------------------------------
# Pair features
# --------------------------------------------------------------------------------------

FEATURE_NAMES = ("cosine", "cosine_margin", "gray_correlation", "color_correlation", "coarse_correlation",
                 "phash_similarity", "dhash_similarity")
DEFAULT_FEATURES = FEATURE_NAMES
_EMBEDDING_FEATURES = ("cosine", "cosine_margin")
DENSITY_NEIGHBOURS = 5
# Alignments searched for the image correlations: zoom of a, zoom of b (indices into
# SIGNATURE_ZOOMS), both directions so either image may be the cropped one.
_ZOOM_PAIRS = ((0, 0), (0, 1), (1, 0), (0, 2), (2, 0))
# Shifts searched at half resolution (12 px): up to 3 px, a quarter of the side.
_COARSE_SHIFTS = tuple((dy, dx) for dy in range(-3, 4) for dx in range(-3, 4))
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_CHUNK = 4096


def _window(shift: int, side: int) -> tuple[slice, slice]:
    return (slice(shift, side), slice(0, side - shift)) if shift >= 0 else (slice(0, side + shift), slice(-shift, side))


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of (P, F) arrays; 0 where either row is flat."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    numerator = np.einsum("ij,ij->i", a, b)
    denominator = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 1e-6)


def _pool(images: np.ndarray) -> np.ndarray:
    """Halve the last two axes by 2x2 means."""
    *lead, height, width = images.shape
    return images.reshape(*lead, height // 2, 2, width // 2, 2).mean(axis=(-3, -1))


def _aligned_correlations(gray_a: np.ndarray, gray_b: np.ndarray, color_a: np.ndarray,
                          color_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlations of P image pairs at their best alignment, found coarse to fine.

    The search covers every zoom pair of :data:`_ZOOM_PAIRS`, b and b's mirror, and shifts
    of up to a quarter of the side, at half resolution; the best alignment is then refined
    by one pixel either way at full resolution.

    Args:
        gray_a, gray_b: (P, Z, S, S) grayscale thumbnails; color_a, color_b: (P, Z, S, S, 3).

    Returns:
        ``coarse`` (the aligned windows pooled 2x2: tolerant of noise and blur), ``gray``
        and ``color`` (full resolution), all at the refined alignment, each (P,) in [-1, 1].
    """
    count, side = len(gray_a), gray_a.shape[-1]
    half_a, half_b = _pool(gray_a), _pool(gray_b)
    half = side // 2
    best_half = np.full(count, -1.0, dtype=np.float32)
    alignment = np.zeros((count, 5), dtype=np.int64)  # zoom_a, zoom_b, mirror, dy, dx (half resolution)
    for zoom_a, zoom_b in _ZOOM_PAIRS:
        for mirror in (0, 1):
            b = half_b[:, zoom_b, :, ::-1] if mirror else half_b[:, zoom_b]
            for dy, dx in _COARSE_SHIFTS:
                (ya, yb), (xa, xb) = _window(dy, half), _window(dx, half)
                correlation = _pearson(half_a[:, zoom_a, ya, xa].reshape(count, -1), b[:, yb, xb].reshape(count, -1))
                better = correlation > best_half
                best_half[better] = correlation[better]
                alignment[better] = (zoom_a, zoom_b, mirror, dy, dx)
    gray = np.full(count, -1.0, dtype=np.float32)
    color = np.zeros(count, dtype=np.float32)
    coarse = np.zeros(count, dtype=np.float32)
    keys, groups = np.unique(alignment, axis=0, return_inverse=True)
    for group, (zoom_a, zoom_b, mirror, dy, dx) in enumerate(keys):
        rows = np.flatnonzero(groups.reshape(-1) == group)
        a_gray, a_color = gray_a[rows, zoom_a], color_a[rows, zoom_a]
        b_gray = gray_b[rows, zoom_b, :, ::-1] if mirror else gray_b[rows, zoom_b]
        b_color = color_b[rows, zoom_b, :, ::-1] if mirror else color_b[rows, zoom_b]
        for fine_y in (2 * dy - 1, 2 * dy, 2 * dy + 1):
            for fine_x in (2 * dx - 1, 2 * dx, 2 * dx + 1):
                (ya, yb), (xa, xb) = _window(fine_y, side), _window(fine_x, side)
                window_a, window_b = a_gray[:, ya, xa], b_gray[:, yb, xb]
                correlation = _pearson(window_a.reshape(len(rows), -1), window_b.reshape(len(rows), -1))
                better = correlation > gray[rows]
                if not better.any():
                    continue
                chosen, size = rows[better], int(better.sum())
                gray[chosen] = correlation[better]
                color[chosen] = _pearson(a_color[better, ya, xa].reshape(size, -1), b_color[better, yb, xb].reshape(size, -1))
                # Pooled after aligning at full resolution, so a half-pixel offset at 12 px costs nothing.
                height, width = (window_a.shape[1] // 2) * 2, (window_a.shape[2] // 2) * 2
                coarse[chosen] = _pearson(_pool(window_a[better, :height, :width]).reshape(size, -1),
                                          _pool(window_b[better, :height, :width]).reshape(size, -1))
    return coarse, gray, color


def _hash_similarity(hashes_a: np.ndarray, hashes_b: np.ndarray, slot: int) -> np.ndarray:
    """1 - Hamming distance / 64 between a's hash and the closer of b's hash and b's mirror's."""
    direct = np.unpackbits(hashes_a[:, slot] ^ hashes_b[:, slot], axis=1).sum(axis=1)
    mirrored = np.unpackbits(hashes_a[:, slot] ^ hashes_b[:, slot + 1], axis=1).sum(axis=1)
    return 1.0 - np.minimum(direct, mirrored) / 64.0


def _fisher(values: np.ndarray) -> np.ndarray:
    # Correlations crowd near 1 for duplicates: Fisher's z spreads 0.97 from 0.995.
    return np.arctanh(np.clip(values, -0.995, 0.995)).astype(np.float32)


def pair_features(signatures_a: np.ndarray, signatures_b: np.ndarray, cosine: np.ndarray,
                  density_a: np.ndarray, density_b: np.ndarray) -> pd.DataFrame:
    """Every verification feature of P pairs, in :data:`FEATURE_NAMES` order, plus ``verifiable``.

    Args:
        signatures_a, signatures_b: (P,) signatures of each pair's two images.
        cosine: (P,) cosine similarity of their embeddings.
        density_a, density_b: (P,) mean cosine of each image's nearest other samples,
            its partner excluded (:data:`DENSITY_NEIGHBOURS` of them).

    Image features are Fisher-z correlations (``arctanh``) and hash similarities in [0, 1];
    they are 0 where either image is undecodable (``verifiable`` False).
    """
    count = len(cosine)
    columns = {
        "cosine": np.asarray(cosine, dtype=np.float32),
        "cosine_margin": (np.asarray(cosine) - (np.asarray(density_a) + np.asarray(density_b)) / 2).astype(np.float32),
    }
    for name in FEATURE_NAMES[2:]:
        columns[name] = np.zeros(count, dtype=np.float32)
    verifiable = signatures_a["valid"] & signatures_b["valid"]
    for start in range(0, count, _CHUNK):
        part = slice(start, min(start + _CHUNK, count))
        color_a = signatures_a["thumbnails"][part].astype(np.float32)
        color_b = signatures_b["thumbnails"][part].astype(np.float32)
        gray_a, gray_b = color_a @ _LUMA, color_b @ _LUMA
        coarse, gray, color = _aligned_correlations(gray_a, gray_b, color_a, color_b)
        columns["gray_correlation"][part] = _fisher(gray)
        columns["color_correlation"][part] = _fisher(color)
        columns["coarse_correlation"][part] = _fisher(coarse)
        hashes_a, hashes_b = signatures_a["hashes"][part], signatures_b["hashes"][part]
        columns["phash_similarity"][part] = _hash_similarity(hashes_a, hashes_b, 0)
        columns["dhash_similarity"][part] = _hash_similarity(hashes_a, hashes_b, 2)
    for name in FEATURE_NAMES[2:]:
        columns[name][~verifiable] = 0.0
    frame = pd.DataFrame(columns)
    frame["verifiable"] = verifiable
    return frame


# --------------------------------------------------------------------------------------
# Candidates from the graph
# --------------------------------------------------------------------------------------


def candidate_pairs(neighbor_indices: np.ndarray, neighbor_similarities: np.ndarray,
                    k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique unordered pairs among every row's top ``k`` neighbours.

    Returns:
        ``row_a``, ``row_b`` (``row_a < row_b``, sorted) and their cosine ``similarity``.
    """
    count = len(neighbor_indices)
    top = neighbor_indices[:, :k]
    rows = np.repeat(np.arange(count), top.shape[1])
    partners = top.reshape(-1)
    similarity = neighbor_similarities[:, :k].reshape(-1)
    keep = (partners >= 0) & (partners != rows)
    low, high = np.minimum(rows, partners)[keep], np.maximum(rows, partners)[keep]
    unique, first = np.unique(low.astype(np.int64) * max(count, 1) + high, return_index=True)
    return unique // max(count, 1), unique % max(count, 1), similarity[keep][first].astype(np.float32)


def neighbourhood_density(neighbor_indices: np.ndarray, neighbor_similarities: np.ndarray, rows: np.ndarray,
                          exclude: np.ndarray, m: int = DENSITY_NEIGHBOURS) -> np.ndarray:
    """Mean cosine of each row's first ``m`` neighbours other than ``exclude`` (its pair partner)."""
    indices = neighbor_indices[rows]
    similarities = neighbor_similarities[rows].astype(np.float32)
    usable = (indices >= 0) & (indices != np.asarray(exclude)[:, None]) & np.isfinite(similarities)
    usable &= np.cumsum(usable, axis=1) <= m
    counts = usable.sum(axis=1)
    totals = np.where(usable, similarities, 0.0).sum(axis=1)
    return np.divide(totals, counts, out=np.zeros(len(rows), dtype=np.float32), where=counts > 0)


def _graph_arrays(source) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(source, FinderContext):
        return source.neighbor_indices, source.neighbor_similarities
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return np.asarray(source[0]), np.asarray(source[1])
    raise FinderInputError("expected a FinderContext or a (neighbor_indices, neighbor_similarities) pair of arrays, "
                           f"got {type(source).__name__}")


def _validate_graph(indices: np.ndarray, similarities: np.ndarray, k: int) -> None:
    if indices.ndim != 2 or similarities.shape != indices.shape:
        raise FinderInputError("neighbour graph: expected (N, k) neighbor_indices and neighbor_similarities of one shape, "
                               f"got {indices.shape} and {similarities.shape}")
    if not 1 <= k <= indices.shape[1]:
        raise FinderInputError(f"k: expected 1 to {indices.shape[1]} (the graph's neighbours per sample), got {k}")


# --------------------------------------------------------------------------------------
# Self-calibration
# --------------------------------------------------------------------------------------

CALIBRATION_EDITS = ("flip", "crop", "shift", "zoom_out", "rotate", "hue", "grayscale", "contrast", "jpeg", "noise", "blur")


def _border_colour(image: Image.Image) -> tuple[int, ...]:
    pixels = np.asarray(image, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return tuple(int(round(v)) for v in border.mean(axis=0))


def calibration_edit(image: Image.Image, name: str, strength: float, rng: np.random.Generator) -> Image.Image:
    """One duplicate-making edit of an RGB image at ``strength`` in [0, 1]; the size is kept."""
    width, height = image.size
    if name == "flip":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if name == "crop":  # 95% down to 82% of each side, anywhere in the frame
        side = 0.95 - 0.13 * strength
        crop_w, crop_h = width * side, height * side
        left, top = rng.uniform(0, width - crop_w), rng.uniform(0, height - crop_h)
        return image.resize((width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    if name == "shift":  # up to 8% of the side, the uncovered edge filled with the border colour
        reach = 0.02 + 0.06 * strength
        dx, dy = (rng.choice([-1, 1], 2) * reach * np.array([width, height])).round()
        return image.transform(image.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=_border_colour(image))
    if name == "zoom_out":  # shrunk to 95%..85% on its border colour
        scale = 0.95 - 0.10 * strength
        small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", image.size, _border_colour(image))
        canvas.paste(small, ((width - small.width) // 2, (height - small.height) // 2))
        return canvas
    if name == "rotate":  # 1 to 7 degrees either way
        angle = float(rng.choice([-1, 1])) * (1 + 6 * strength)
        return image.rotate(angle, Image.Resampling.BICUBIC, fillcolor=_border_colour(image))
    if name == "hue":  # hue turned by 3%..28% of the circle, saturation scaled
        hsv = np.asarray(image.convert("HSV"), dtype=np.int16).copy()
        hsv[..., 0] = (hsv[..., 0] + int(255 * (0.03 + 0.25 * strength))) % 256
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.4), 0, 255)
        return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    if name == "grayscale":
        return ImageOps.grayscale(image).convert("RGB")
    if name == "contrast":  # contrast and brightness each by up to 40%
        contrast = 1 + float(rng.choice([-1, 1])) * (0.05 + 0.35 * strength)
        brightness = 1 + float(rng.choice([-1, 1])) * (0.05 + 0.35 * strength) * rng.uniform(0, 1)
        return ImageEnhance.Brightness(ImageEnhance.Contrast(image).enhance(contrast)).enhance(brightness)
    if name == "jpeg":  # quality 60 down to 15
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(round(60 - 45 * strength)))
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")
    if name == "noise":  # Gaussian, sigma 2 to 14 grey levels
        pixels = np.asarray(image, dtype=np.float32)
        noisy = pixels + rng.normal(0, 2 + 12 * strength, pixels.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))
    if name == "blur":  # radius 0.3% to 1.3% of the longer side, at least 0.3 px
        radius = max(0.3, (0.3 + strength) * max(width, height) / 100)
        return image.filter(ImageFilter.GaussianBlur(radius))
    raise FinderInputError(f"unknown calibration edit {name!r}. Available: {', '.join(CALIBRATION_EDITS)}")


def calibration_copy(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, tuple[str, ...]]:
    """A self-calibration positive: one to three edits of random strength, in random order."""
    count = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    names = tuple(str(name) for name in rng.choice(CALIBRATION_EDITS, size=count, replace=False))
    copy = image.convert("RGB")
    for name in names:
        copy = calibration_edit(copy, name, float(rng.uniform()), rng)
    return copy, names


@dataclass
class CalibrationPairs:
    """Labelled pairs made from a dataset for fitting a verifier (:func:`collect_calibration_pairs`).

    ``pairs`` has every column of :func:`pair_features`, plus ``label`` (True: image vs its
    own edited copy), ``kind`` (``copy``; ``neighbour``: a sampled image vs one of its top
    ``k`` neighbours, the dataset's own candidate pairs; ``copy_neighbour``: a copy vs its
    original's neighbours), ``group`` (the sampled row; folds never split a group),
    ``row_a``, ``row_b`` (dataset rows; -1 for a copy) and ``edits`` ("+"-joined, copies only).
    Pairs of pixel-identical images are left out: exact duplicates are no negatives.
    """

    pairs: pd.DataFrame
    dataset_size: int
    candidate_pairs: int
    k: int
    sample_size: int
    copies_per_image: int
    model_name: str | None = None


def collect_calibration_pairs(filepaths: Sequence[str], embeddings: np.ndarray, neighbor_indices: np.ndarray,
                              neighbor_similarities: np.ndarray, embedder, *, signatures: np.ndarray | None = None,
                              k: int = 10, sample_size: int = 200, copies_per_image: int = 4,
                              negative_sample_size: int = 5000, batch_size: int = 32, seed: int = 0,
                              progress: Callable[[int, int], None] | None = None) -> CalibrationPairs:
    """Make the labelled pairs for :func:`fit_verifier` from the dataset itself.

    Args:
        filepaths: (N,) the dataset's images, aligned with ``embeddings``.
        embeddings: (N, D) L2-normalised embeddings from ``embedder``.
        neighbor_indices, neighbor_similarities: (N, K) the shared graph, K >= ``k``.
        embedder: the model that made ``embeddings`` (:class:`curation.models.Embedder`).
        signatures: (N,) from :func:`compute_signatures`; computed here when None.
        k: candidate neighbours per sample, as the verifier will use them (5 to 15; 10 held
            53% and 78% of the planted copies in MNIST and Fashion-MNIST, 5 held 47% and 68%).
        sample_size: images that get edited copies; 200 x 4 copies = 800 embeddings
            (about 1 to 2 minutes on a CPU, seconds on a GPU).
        copies_per_image: edited copies per sampled image.
        negative_sample_size: images whose top ``k`` pairs are negatives (no embedding
            needed, so cheap; more of them resolve a lower false-positive rate).
        seed: sampling, edits and strengths.
        progress: called as ``progress(done, total)`` over the copies to embed.
    """
    import torch

    count = len(filepaths)
    if embeddings.ndim != 2 or len(embeddings) != count:
        raise FinderInputError(f"embeddings: expected ({count}, D) for {count} filepaths, got shape {embeddings.shape}")
    if neighbor_indices.shape[0] != count:
        raise FinderInputError(f"neighbour graph: expected {count} rows, got {neighbor_indices.shape[0]}")
    _validate_graph(neighbor_indices, neighbor_similarities, k)
    for name, value in (("sample_size", sample_size), ("copies_per_image", copies_per_image)):
        if value < 1:
            raise FinderInputError(f"{name}: expected at least 1, got {value}")
    if signatures is None:
        signatures = compute_signatures(filepaths)
    _validate_signatures(signatures, count)
    rng = np.random.default_rng(seed)
    usable = signatures["valid"] & np.any(embeddings != 0, axis=1) & (neighbor_indices[:, 0] >= 0)
    order = rng.permutation(count)
    order = order[usable[order]]

    # Positives and copy-neighbour negatives: edited copies of sampled images.
    copies: list[tuple[int, Image.Image, tuple[str, ...]]] = []
    sampled: list[int] = []
    for row in order:
        if len(sampled) >= sample_size:
            break
        try:
            image = load_rgb(filepaths[row], max_side=512)
        except ImageLoadError as error:  # valid signature but unreadable now: the file changed since
            logger.warning("calibration: skipping %s: %s", filepaths[row], error)
            continue
        sampled.append(int(row))
        for _ in range(copies_per_image):
            copy, edits = calibration_copy(image, rng)
            copies.append((int(row), copy, edits))
    if not sampled:
        raise FinderInputError(f"calibration: none of the {count} images could be decoded and has an embedding and neighbours")
    copy_vectors = []
    for start in range(0, len(copies), batch_size):
        batch = torch.stack([embedder.preprocess(copy) for _, copy, _ in copies[start:start + batch_size]])
        copy_vectors.append(embedder.encode_images(batch))
        if progress:
            progress(min(start + batch_size, len(copies)), len(copies))
    copy_vectors = np.concatenate(copy_vectors)
    copy_signatures = np.stack([image_signature(copy) for _, copy, _ in copies])

    blocks = []
    for index, (row, _, edits) in enumerate(copies):
        vector = copy_vectors[index]
        # The copy's own neighbourhood lies within its original's two hops.
        hop = neighbor_indices[row][neighbor_indices[row] >= 0]
        around = np.unique(np.concatenate([[row], hop, neighbor_indices[hop].reshape(-1)]))
        around = around[around >= 0]
        similarity = embeddings[around] @ vector
        ranked = np.argsort(-similarity, kind="stable")
        around, similarity = around[ranked], similarity[ranked]

        def copy_density(partner: int) -> float:
            others = similarity[around != partner][:DENSITY_NEIGHBOURS]
            return float(others.mean()) if others.size else 0.0

        partners = [row] + [int(j) for j in neighbor_indices[row][:k] if j >= 0]
        cos = embeddings[partners] @ vector
        density_partner = neighbourhood_density(neighbor_indices, neighbor_similarities, np.array(partners),
                                                np.full(len(partners), -1))
        blocks.append(pd.DataFrame({
            "row_a": partners, "row_b": -1, "copy": index, "cosine": cos,
            "density_a": density_partner, "density_b": [copy_density(p) for p in partners],
            "label": [True] + [False] * (len(partners) - 1),
            "kind": ["copy"] + ["copy_neighbour"] * (len(partners) - 1),
            "group": row, "edits": ["+".join(edits)] + [""] * (len(partners) - 1),
        }))
    copy_frame = pd.concat(blocks, ignore_index=True)

    # Dataset negatives: sampled rows first, then more random rows, against their top k.
    extra = order[~np.isin(order, sampled)][: max(0, negative_sample_size - len(sampled))]
    negative_rows = np.concatenate([np.array(sampled), extra]).astype(np.int64)
    rows = np.repeat(negative_rows, k)
    partners = neighbor_indices[negative_rows, :k].reshape(-1)
    cosine = neighbor_similarities[negative_rows, :k].reshape(-1)
    keep = partners >= 0
    rows, partners, cosine = rows[keep], partners[keep], cosine[keep]
    # An unordered pair met from both sides counts once.
    key = np.minimum(rows, partners) * count + np.maximum(rows, partners)
    _, first = np.unique(key, return_index=True)
    first.sort()
    rows, partners, cosine = rows[first], partners[first], cosine[first]
    negative_frame = pd.DataFrame({
        "row_a": rows, "row_b": partners, "copy": -1, "cosine": cosine,
        "density_a": neighbourhood_density(neighbor_indices, neighbor_similarities, rows, partners),
        "density_b": neighbourhood_density(neighbor_indices, neighbor_similarities, partners, rows),
        "label": False, "kind": "neighbour", "group": rows, "edits": "",
    })

    frame = pd.concat([copy_frame, negative_frame], ignore_index=True)
    # Pixel-identical images are exact duplicates, found by their digests: never negatives here.
    digests = signatures["pixel_digest"]
    other = np.where(frame["kind"] == "neighbour", frame["row_b"], frame["group"]).astype(np.int64)
    identical = (frame["kind"].to_numpy() != "copy") & (digests[frame["row_a"].to_numpy()] == digests[other])
    frame = frame[~identical].reset_index(drop=True)
    side_b = np.where(frame["copy"].to_numpy() >= 0,
                      copy_signatures[np.maximum(frame["copy"].to_numpy(), 0)],
                      signatures[np.maximum(frame["row_b"].to_numpy(), 0)])
    features = pair_features(signatures[frame["row_a"].to_numpy()], side_b, frame["cosine"].to_numpy(),
                             frame["density_a"].to_numpy(), frame["density_b"].to_numpy())
    frame = pd.concat([frame.drop(columns=["cosine", "density_a", "density_b"]), features], axis=1)
    top_k, _, _ = candidate_pairs(neighbor_indices, neighbor_similarities, k)
    return CalibrationPairs(pairs=frame, dataset_size=count, candidate_pairs=len(top_k), k=k,
                            sample_size=len(sampled), copies_per_image=copies_per_image,
                            model_name=getattr(getattr(embedder, "spec", None), "name", None))


@dataclass
class VerifierCalibration:
    """A fitted verifier: a logistic regression on pair features and its calibrated threshold.

    ``probability`` is the regression's output with the prior set to the assumed share of
    duplicates among candidate pairs (``duplicate_rate * dataset_size / candidate_pairs``),
    so it reads as "chance this candidate pair is a duplicate". ``curve`` holds threshold,
    precision (expected on the dataset, see the module docstring), recall (of the edited
    copies) and false_positive_rate (of the dataset's neighbour pairs), all out-of-fold.
    """

    features: tuple[str, ...]
    mean: list[float]
    scale: list[float]
    coefficients: list[float]
    intercept: float
    threshold: float
    precision: float
    recall: float
    target_precision: float
    duplicate_rate: float
    k: int
    dataset_size: int
    candidate_pairs: int
    sample_size: int
    copies_per_image: int
    positive_pairs: int
    negative_pairs: int
    set_aside_negatives: int
    curve: pd.DataFrame = field(repr=False)
    recall_by_edit: dict[str, float] = field(default_factory=dict)
    model_name: str | None = None
    version: int = 1

    def probability(self, features: pd.DataFrame) -> np.ndarray:
        """(P,) duplicate probability of pairs whose features hold this verifier's columns."""
        missing = [name for name in self.features if name not in features]
        if missing:
            raise FinderInputError(f"pair features: expected columns {list(self.features)}, missing {missing}")
        values = features[list(self.features)].to_numpy(dtype=np.float64)
        logit = ((values - np.array(self.mean)) / np.array(self.scale)) @ np.array(self.coefficients) + self.intercept
        probability = 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))
        if "verifiable" in features and set(self.features) - set(_EMBEDDING_FEATURES):
            # Image features of an undecodable image are placeholders: such a pair is never verified.
            probability = np.where(features["verifiable"].to_numpy(dtype=bool), probability, 0.0)
        return probability

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (plain floats, lists and strings), for the dataset's info."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "curve"}
        data["features"] = list(self.features)
        data["curve"] = {column: [float(v) for v in self.curve[column]] for column in self.curve}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VerifierCalibration":
        """The inverse of :meth:`to_dict`.

        Raises:
            FinderInputError: fields are missing or the feature lists disagree in length.
        """
        if not isinstance(data, dict):
            raise FinderInputError(f"verifier: expected the dict VerifierCalibration.to_dict returns, got {type(data).__name__}")
        required = [name for name, spec in cls.__dataclass_fields__.items()
                    if spec.default is MISSING and spec.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise FinderInputError(f"verifier: stored calibration lacks {missing}; recalibrate the dataset")
        if data.get("version", 1) != 1:
            raise FinderInputError(f"verifier: expected calibration version 1, got {data.get('version')}; recalibrate")
        unknown = [name for name in data["features"] if name not in FEATURE_NAMES]
        if unknown:
            raise FinderInputError(f"verifier: unknown features {unknown}. Available: {', '.join(FEATURE_NAMES)}")
        lengths = {len(data[name]) for name in ("features", "mean", "scale", "coefficients")}
        if len(lengths) != 1:
            raise FinderInputError("verifier: features, mean, scale and coefficients must have one length, got "
                                   f"{[len(data[name]) for name in ('features', 'mean', 'scale', 'coefficients')]}")
        values = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        values["features"] = tuple(data["features"])
        values["curve"] = pd.DataFrame(data["curve"])
        return cls(**values)

    def summary(self) -> str:
        return (f"verified probability >= {self.threshold:.3f} (expected precision {self.precision:.2f} at "
                f"{self.duplicate_rate:g} duplicate pairs per image; recall {self.recall:.2f} of edited copies; "
                f"k={self.k}; features: {', '.join(self.features)})")


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _dataset_curve(positives: np.ndarray, negatives: np.ndarray, expected_duplicates: float,
                   candidate_count: int) -> pd.DataFrame:
    cuts = np.unique(np.concatenate([np.quantile(positives, np.linspace(0, 1, 401)), [1.0]]))
    recall = (positives[None, :] >= cuts[:, None]).mean(axis=1)
    false_rate = (negatives[None, :] >= cuts[:, None]).mean(axis=1) if negatives.size else np.zeros(len(cuts))
    true_expected, false_expected = expected_duplicates * recall, candidate_count * false_rate
    flagged = true_expected + false_expected
    precision = np.divide(true_expected, flagged, out=np.ones(len(cuts)), where=flagged > 0)
    return pd.DataFrame({"threshold": cuts, "precision": precision, "recall": recall, "false_positive_rate": false_rate})


# Bounds of the estimated duplicate rate (duplicate pairs per image): at least half a pair in
# the dataset, so a clean dataset still gets a finite, strict threshold; at most one pair per
# four images.
MIN_EXPECTED_DUPLICATES = 0.5
MAX_DUPLICATE_RATE = 0.25


def estimate_duplicate_share(log_ratios: np.ndarray, *, floor: float, ceiling: float = 0.5,
                             iterations: int = 200) -> float:
    """The share of duplicates among candidate pairs, by expectation-maximisation of the
    prior (Saerens, Latinne and Decaestecker, 2002): given each pair's likelihood ratio
    (duplicate vs not, from a model fitted with balanced classes), the prior ``pi`` that
    maximises the likelihood of the observed pairs satisfies ``pi = mean(posterior(pi))``.
    Clipped to ``[floor, ceiling]``."""
    log_ratios = np.asarray(log_ratios, dtype=np.float64)
    if not log_ratios.size:
        return floor
    share = min(max(0.01, floor), ceiling)
    for _ in range(iterations):
        posterior = 1.0 / (1.0 + np.exp(-np.clip(log_ratios + _logit(share), -50, 50)))
        updated = min(max(float(posterior.mean()), floor), ceiling)
        if abs(updated - share) < 1e-9:
            break
        share = updated
    return share


def fit_verifier(pairs: CalibrationPairs, *, features: Sequence[str] = DEFAULT_FEATURES, target_precision: float = 0.9,
                 duplicate_rate: float | str = "auto", folds: int = 5, regularization: float = 1.0) -> VerifierCalibration:
    """Fit the pair model on calibration pairs and choose its threshold out of fold.

    Args:
        pairs: from :func:`collect_calibration_pairs`.
        features: a subset of :data:`FEATURE_NAMES` (``("cosine",)`` is a calibrated
            cosine threshold, the baseline).
        target_precision: in (0, 1); the expected precision on the dataset to reach.
        duplicate_rate: duplicate pairs per image assumed present, in (0, 0.5], or ``"auto"``
            (default): estimated from the dataset's own candidate pairs by
            :func:`estimate_duplicate_share` on their out-of-fold likelihood ratios, between
            half a pair in the dataset and :data:`MAX_DUPLICATE_RATE`.
        folds: cross-validation folds by sampled image for the out-of-fold curve.
        regularization: the logistic regression's inverse regularisation strength ``C``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    features = tuple(features)
    unknown = [name for name in features if name not in FEATURE_NAMES]
    if unknown or not features:
        raise FinderInputError(f"features: expected a non-empty subset of {list(FEATURE_NAMES)}, got {list(features)}")
    if not 0 < target_precision < 1:
        raise FinderInputError(f"target_precision: expected a value in (0, 1), got {target_precision}")
    if duplicate_rate != "auto" and (isinstance(duplicate_rate, (str, bool)) or not 0 < duplicate_rate <= 0.5):
        raise FinderInputError(f"duplicate_rate: expected duplicate pairs per image in (0, 0.5] or 'auto', got {duplicate_rate!r}")
    frame = pairs.pairs
    labels = frame["label"].to_numpy(dtype=bool)
    if labels.all() or not labels.any():
        raise FinderInputError(f"calibration pairs: expected positives and negatives, got {int(labels.sum())} and "
                               f"{int((~labels).sum())}")
    values = frame[list(features)].to_numpy(dtype=np.float64)
    groups = frame["group"].to_numpy()
    kind = frame["kind"].to_numpy()
    candidates = max(pairs.candidate_pairs, 1)

    def fit(rows: np.ndarray):
        mean, scale = values[rows].mean(axis=0), values[rows].std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        model = LogisticRegression(C=regularization, class_weight="balanced", max_iter=1000)
        model.fit((values[rows] - mean) / scale, labels[rows])
        return mean, scale, model

    def log_ratio(fitted, rows: np.ndarray) -> np.ndarray:
        mean, scale, model = fitted
        return model.decision_function((values[rows] - mean) / scale)

    raw = np.zeros(len(frame))  # out-of-fold log likelihood ratios (balanced classes: no prior in them)
    splitter = GroupKFold(n_splits=max(2, min(folds, len(np.unique(groups)))))
    for train, test in splitter.split(values, labels, groups):
        if labels[train].all() or not labels[train].any():
            raise FinderInputError("calibration pairs: a fold lacks positives or negatives; raise sample_size")
        raw[test] = log_ratio(fit(train), test)
    if duplicate_rate == "auto":
        floor = min(MIN_EXPECTED_DUPLICATES / candidates, 0.5)
        ceiling = min(max(MAX_DUPLICATE_RATE * pairs.dataset_size / candidates, floor), 0.5)
        share = estimate_duplicate_share(raw[kind == "neighbour"], floor=floor, ceiling=ceiling)
        duplicate_rate = share * candidates / pairs.dataset_size
    share = min(duplicate_rate * pairs.dataset_size / candidates, 0.5)
    expected_duplicates = share * candidates
    prior = _logit(share)
    out_of_fold = 1.0 / (1.0 + np.exp(-np.clip(raw + prior, -50, 50)))

    # The dataset's neighbour pairs may hold its real duplicates: set aside at most the share
    # the estimated rate implies, and only those scoring like the copies.
    positives = out_of_fold[labels]
    neighbour = np.flatnonzero(kind == "neighbour")
    allowance = int(round(share * len(neighbour)))
    ranked = neighbour[np.argsort(-out_of_fold[neighbour], kind="stable")][:allowance]
    set_aside = ranked[out_of_fold[ranked] >= np.median(positives)]
    counted = np.setdiff1d(neighbour, set_aside)
    # A copy of a probable duplicate's partner is no negative either.
    probable = {frozenset(pair) for pair in zip(frame["row_a"].to_numpy()[set_aside], frame["row_b"].to_numpy()[set_aside])}
    copy_rows = np.flatnonzero(kind == "copy_neighbour")
    also = [row for row, a, group in zip(copy_rows, frame["row_a"].to_numpy()[copy_rows], groups[copy_rows])
            if frozenset((int(a), int(group))) in probable]
    curve = _dataset_curve(positives, out_of_fold[counted], expected_duplicates, pairs.candidate_pairs)
    good = curve[curve["precision"] >= target_precision]
    chosen = good.iloc[0] if len(good) else curve.loc[curve["precision"].idxmax()]

    train_rows = np.setdiff1d(np.arange(len(frame)), np.concatenate([set_aside, np.array(also, dtype=np.int64)]))
    mean, scale, model = fit(train_rows)
    threshold = float(chosen["threshold"])
    edits = frame.loc[labels, "edits"].to_numpy()
    recall_by_edit = {}
    for name in CALIBRATION_EDITS:
        has = np.array([name in e.split("+") for e in edits])
        if has.any():
            recall_by_edit[name] = float((positives[has] >= threshold).mean())
    return VerifierCalibration(
        features=features, mean=[float(v) for v in mean], scale=[float(v) for v in scale],
        coefficients=[float(v) for v in model.coef_[0]], intercept=float(model.intercept_[0] + prior),
        threshold=threshold, precision=float(chosen["precision"]), recall=float(chosen["recall"]),
        target_precision=float(target_precision), duplicate_rate=float(duplicate_rate), k=pairs.k,
        dataset_size=pairs.dataset_size, candidate_pairs=pairs.candidate_pairs, sample_size=pairs.sample_size,
        copies_per_image=pairs.copies_per_image, positive_pairs=int(labels.sum()), negative_pairs=int((~labels).sum()),
        set_aside_negatives=int(len(set_aside) + len(also)), curve=curve, recall_by_edit=recall_by_edit, model_name=pairs.model_name,
    )


def calibrate_verifier(filepaths: Sequence[str], embeddings: np.ndarray, neighbor_indices: np.ndarray,
                       neighbor_similarities: np.ndarray, embedder, *, signatures: np.ndarray | None = None, k: int = 10,
                       sample_size: int = 200, copies_per_image: int = 4, negative_sample_size: int = 5000,
                       target_precision: float = 0.9, duplicate_rate: float | str = "auto",
                       features: Sequence[str] = DEFAULT_FEATURES, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None) -> VerifierCalibration:
    """Self-calibrate the near-duplicate verifier on this dataset (see the module docstring).

    :func:`collect_calibration_pairs` then :func:`fit_verifier`; the arguments are theirs.
    Store ``result.to_dict()`` with the dataset; it is valid for this embedding field and k.
    """
    pairs = collect_calibration_pairs(filepaths, embeddings, neighbor_indices, neighbor_similarities, embedder,
                                      signatures=signatures, k=k, sample_size=sample_size,
                                      copies_per_image=copies_per_image, negative_sample_size=negative_sample_size,
                                      seed=seed, progress=progress)
    return fit_verifier(pairs, features=features, target_precision=target_precision, duplicate_rate=duplicate_rate)


# --------------------------------------------------------------------------------------
# Scoring a dataset, and the finders
# --------------------------------------------------------------------------------------


def _validate_verifier(verifier) -> VerifierCalibration:
    if isinstance(verifier, dict):
        return VerifierCalibration.from_dict(verifier)
    if not isinstance(verifier, VerifierCalibration):
        raise FinderInputError(f"verifier: expected a VerifierCalibration or its to_dict(), got {type(verifier).__name__}")
    return verifier


def verified_pairs(source, signatures: np.ndarray, verifier: VerifierCalibration | dict,
                   k: int | None = None) -> pd.DataFrame:
    """Every candidate pair of the graph with its features and verified probability.

    Args:
        source: a :class:`FinderContext`, or ``(neighbor_indices, neighbor_similarities)``.
        signatures: (N,) from :func:`compute_signatures`, aligned with the graph's rows.
        verifier: from :func:`calibrate_verifier` (or its ``to_dict()``).
        k: candidate neighbours per sample; default the verifier's own (its threshold was
            chosen for that k).

    Returns:
        One row per unordered pair (``row_a`` < ``row_b``), most probable first: ``row_a``,
        ``row_b``, every feature of :data:`FEATURE_NAMES`, ``verifiable`` and ``probability``.
    """
    indices, similarities = _graph_arrays(source)
    verifier = _validate_verifier(verifier)
    k = verifier.k if k is None else int(k)
    _validate_graph(indices, similarities, k)
    _validate_signatures(signatures, len(indices))
    row_a, row_b, cosine = candidate_pairs(indices, similarities, k)
    density_a = neighbourhood_density(indices, similarities, row_a, row_b)
    density_b = neighbourhood_density(indices, similarities, row_b, row_a)
    features = pair_features(signatures[row_a], signatures[row_b], cosine, density_a, density_b)
    frame = pd.concat([pd.DataFrame({"row_a": row_a, "row_b": row_b}), features], axis=1)
    frame["probability"] = verifier.probability(frame)
    return frame.sort_values("probability", ascending=False, kind="stable").reset_index(drop=True)


def _check_context(context: FinderContext) -> None:
    if not isinstance(context, FinderContext):
        raise FinderInputError(f"context: expected a FinderContext, got {type(context).__name__}")
    if context.neighbor_indices.shape[0] != len(context):
        raise FinderInputError(f"neighbour graph has {context.neighbor_indices.shape[0]} rows for {len(context)} samples")


def _threshold(verifier: VerifierCalibration, threshold: float | None) -> float:
    threshold = verifier.threshold if threshold is None else float(threshold)
    if not 0 < threshold <= 1:
        raise FinderInputError(f"threshold: expected a verified probability in (0, 1], got {threshold}")
    return threshold


def _partner_arrays(count: int, row_a: np.ndarray, row_b: np.ndarray, probability: np.ndarray):
    """Symmetric (N, width) partner rows and probabilities (-1 / NaN padding), for star grouping."""
    both_rows = np.concatenate([row_a, row_b])
    both_partners = np.concatenate([row_b, row_a])
    both_probability = np.concatenate([probability, probability])
    width = max(int(np.bincount(both_rows, minlength=count).max()) if len(both_rows) else 0, 1)
    indices = np.full((count, width), -1, dtype=np.int64)
    values = np.full((count, width), np.nan)
    order = np.lexsort((-both_probability, both_rows))
    both_rows, both_partners, both_probability = both_rows[order], both_partners[order], both_probability[order]
    starts = np.searchsorted(both_rows, both_rows, side="left")
    slot = np.arange(len(both_rows)) - starts
    indices[both_rows, slot] = both_partners
    values[both_rows, slot] = both_probability
    return indices, values


def _pairs_for(context, signatures, verifier, k, pairs):
    """``pairs`` as given (after checking ``signatures``), or :func:`verified_pairs`, computed
    once per context, verifier and k (the duplicate and leakage finders of one analysis share them)."""
    if pairs is not None:
        _validate_signatures(signatures, len(context))
        return pairs
    key = (id(signatures), json.dumps(verifier.to_dict(), sort_keys=True, default=str), k)
    cache = context._pairs_cache
    if key not in cache:
        cache.clear()  # one verifier per analysis: keep only the latest
        cache[key] = verified_pairs(context, signatures, verifier, k)
    return cache[key]


def find_verified_duplicates(context: FinderContext, verifier: VerifierCalibration | dict, signatures: np.ndarray,
                             *, k: int | None = None, threshold: float | None = None,
                             pixel_digests: list[str | None] | None = None,
                             pairs: pd.DataFrame | None = None) -> FinderResult:
    """Near-duplicate groups from verified candidate pairs, plus exact (pixel-identical) groups.

    Args:
        context: the shared finder context.
        verifier: from :func:`calibrate_verifier` (or its ``to_dict()``), for this
            embedding field.
        signatures: (N,) from :func:`compute_signatures`, aligned with ``context``.
        k: candidate neighbours per sample (default the verifier's).
        threshold: verified probability to flag at (default the calibrated one).
        pixel_digests: exact-duplicate digests; default those in the signatures.
        pairs: :func:`verified_pairs` already computed for this context (shared with
            :func:`find_verified_leaks`).

    Returns:
        The columns of :func:`curation.finders.duplicates.find_duplicates` (``score`` is
        the sample's highest verified probability, 1 for exact copies) plus
        ``duplicate_probability`` and ``duplicate_partner_id`` (the most probable partner).
        Groups are stars: every member is a verified pair with its centre.
    """
    _check_context(context)
    verifier = _validate_verifier(verifier)
    threshold = _threshold(verifier, threshold)
    count = len(context)
    pairs = _pairs_for(context, signatures, verifier, k, pairs)
    k = verifier.k if k is None else int(k)
    row_a, row_b = pairs["row_a"].to_numpy(), pairs["row_b"].to_numpy()
    probability = pairs["probability"].to_numpy(dtype=float)
    partner_rows, partner_probability = _partner_arrays(count, row_a, row_b, probability)
    near = near_duplicate_groups(partner_rows, partner_probability, threshold)
    if pixel_digests is None:
        pixel_digests = context.pixel_digests or signature_digests(signatures)
    exact = exact_duplicate_groups(pixel_digests)
    near = merge_exact_groups(near, exact)
    keep = suggest_keepers(near, context.filepaths, context.labels)
    best = np.where(partner_rows[:, 0] >= 0, np.nan_to_num(partner_probability[:, 0]), 0.0)
    best = np.where(exact >= 0, 1.0, best)
    nearest, nearest_similarity = nearest_neighbor_columns(context)
    table = pd.DataFrame({
        "score": np.clip(best, 0, 1),
        "is_issue": (near >= 0) & ~keep,
        "near_duplicate_group": near,
        "exact_duplicate_group": exact,
        "keep": keep | (near < 0),
        "nearest_neighbor_id": [context.ids[j] if j >= 0 else None for j in nearest],
        "nearest_neighbor_similarity": nearest_similarity,
        "duplicate_probability": best,
        "duplicate_partner_id": [context.ids[j] if j >= 0 else None for j in partner_rows[:, 0]],
    }, index=pd.Index(context.ids, name="id"))
    groups = int(len(np.unique(near[near >= 0])))
    flagged_pairs = int((probability >= threshold).sum())
    exact_groups = int(len(np.unique(exact[exact >= 0])))
    summary = (f"{groups} near-duplicate groups ({int((near >= 0).sum())} samples, {int(table['is_issue'].sum())} "
               f"suggested for removal) from {flagged_pairs} verified pairs at probability >= {threshold:.3f}; "
               f"{exact_groups} exact-duplicate groups")
    info = {"config": {"method": "verified", "threshold": threshold, "k": k}, "groups": groups,
            "verified_pairs": flagged_pairs, "verifier": {key: value for key, value in verifier.to_dict().items()
                                                          if key != "curve"}}
    return FinderResult("duplicates", table, summary, info)


def find_verified_leaks(context: FinderContext, verifier: VerifierCalibration | dict, signatures: np.ndarray,
                        *, k: int | None = None, threshold: float | None = None,
                        pairs: pd.DataFrame | None = None) -> FinderResult:
    """Verified near duplicates that sit in different splits (the same image in train and test).

    Arguments as :func:`find_verified_duplicates`. Columns as
    :func:`curation.finders.leakage.find_leaks` (``score``: the verified probability of
    the sample's most probable partner in another split, 0 if none reaches the threshold;
    ``leak_similarity``: that pair's cosine) plus ``leak_probability``.
    """
    _check_context(context)
    if context.splits is None:
        raise FinderInputError("leakage needs splits: expected a split field or train/val/test tags, found neither")
    verifier = _validate_verifier(verifier)
    threshold = _threshold(verifier, threshold)
    count = len(context)
    pairs = _pairs_for(context, signatures, verifier, k, pairs)
    leak_row = np.full(count, -1, dtype=np.int64)
    leak_similarity = np.full(count, np.nan)
    leak_probability = np.zeros(count)
    flagged = pairs[pairs["probability"] >= threshold]  # most probable first, so the first hit per row is its best
    splits = context.splits
    for a, b, cosine, probability in zip(flagged["row_a"], flagged["row_b"], flagged["cosine"], flagged["probability"]):
        if splits[a] is None or splits[b] is None or splits[a] == splits[b]:
            continue
        for row, other in ((a, b), (b, a)):
            if leak_row[row] < 0:
                leak_row[row], leak_similarity[row], leak_probability[row] = other, cosine, probability
    is_issue = leak_row >= 0
    table = pd.DataFrame({
        "score": np.where(is_issue, np.clip(leak_probability, 0, 1), 0.0),
        "is_issue": is_issue,
        "leak_id": [context.ids[j] if j >= 0 else None for j in leak_row],
        "leak_similarity": leak_similarity,
        "leak_split": [splits[j] if j >= 0 else None for j in leak_row],
        "leak_probability": leak_probability,
    }, index=pd.Index(context.ids, name="id"))
    leak_count = len({tuple(sorted((row, int(j)))) for row, j in enumerate(leak_row) if j >= 0})
    summary = (f"{leak_count} cross-split verified near-duplicate pairs ({int(is_issue.sum())} samples) at "
               f"probability >= {threshold:.3f}")
    info = {"config": {"method": "verified", "threshold": threshold, "k": verifier.k if k is None else int(k)},
            "pairs": leak_count}
    return FinderResult("leakage", table, summary, info)
