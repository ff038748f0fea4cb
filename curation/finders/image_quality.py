"""Image quality: dark, overexposed, low-contrast, low-information, blurred, noisy,
near-constant, unusually small, odd aspect ratio and grayscale-in-a-colour-set images.

Every image is decoded once, shrunk (:func:`curation.images.load_rgb` with ``max_side``),
and measured (:func:`image_properties`); the measurements are cached on disk, a row reused
while its file keeps its path, modification time and size. Thresholds are never fixed
constants: each property is compared with its own distribution in the dataset by a robust
z-score, ``(value - median) / scale`` with ``scale`` the larger of 1.4826 MAD and the
one-sided spread on the problem side ((median - 10th percentile) / 1.2816; IQR / 1.349 when both
are zero, and a small per-property floor when that is zero too, e.g. every image the same size), and an image is flagged when it is more than ``ImageQualityConfig.mads`` scales out on
the side that means a problem. Each flag says which property and how far out ("blurred:
sharpness 4.1 MAD below the dataset's median").

The cleanvision blur failure (flat and very large images called blurred) is guarded against:
sharpness is measured on a fixed-size grayscale downscale, normalised by the image's own
contrast, and an image whose pixels are (nearly) constant is "near_constant", never "blurred".
A darkened or overexposed image is reported as such, not also as low-contrast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from curation.finders.base import FinderContext, FinderInputError, FinderResult, FinderSpec, FindingField

logger = logging.getLogger(__name__)

# Decoded no smaller than this on either side (a whole-factor shrink) before measuring.
DECODE_SIDE = 256
# Sharpness is measured on a grayscale resize to this fixed size, whatever the image's size.
SHARPNESS_SIDE = 64
PROPERTY_NAMES = ("brightness", "dark_end", "bright_end", "contrast", "entropy", "sharpness", "noise",
                  "colourfulness", "width", "height", "log_area", "log_aspect")
PROPERTIES_DTYPE = np.dtype([(name, np.float64) for name in PROPERTY_NAMES] + [("valid", np.bool_)])
ISSUES = ("near_constant", "dark", "overexposed", "low_contrast", "low_information", "blurred", "noisy",
          "small", "odd_aspect_ratio", "grayscale")
CACHE_VERSION = "image-quality-v1"


@dataclass(frozen=True)
class ImageQualityConfig:
    """``mads``: how many robust scales (1.4826 MAD) from the dataset's median a property must
    be to flag (per issue); ``min_images``: below this many readable images no distribution
    is trusted and nothing is flagged; ``grayscale_share``: a set is a colour set (so a gray
    image in it is an issue) when at most this share of its images is gray; ``workers``:
    decoding threads (None: the CPU count, at most 8); ``cache``: reuse measurements on disk."""

    mads: float = 4.0
    min_images: int = 20
    grayscale_share: float = 0.2
    workers: int | None = None
    cache: bool = True


# ----------------------------------------------------------------------------------------
# Measuring one image
# ----------------------------------------------------------------------------------------

def _laplacian_variance(gray: np.ndarray) -> float:
    lap = (-4.0 * gray[1:-1, 1:-1] + gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:])
    return float(lap.var()) if lap.size else 0.0


def _noise_sigma(gray: np.ndarray) -> float:
    """After Immerkaer (1996), sigma = sqrt(pi / 2) / 6 * |I * N| (N the 3x3 second-difference
    mask), with the median of |I * N| in place of its mean, so edges and texture do not count."""
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    g = gray
    response = (g[:-2, :-2] - 2 * g[:-2, 1:-1] + g[:-2, 2:] - 2 * g[1:-1, :-2] + 4 * g[1:-1, 1:-1] - 2 * g[1:-1, 2:]
                + g[2:, :-2] - 2 * g[2:, 1:-1] + g[2:, 2:])
    return float(np.sqrt(np.pi / 2) / 6 * np.median(np.abs(response)))


def image_properties(path: str | os.PathLike) -> np.void:
    """The measured properties of one image (a row of ``PROPERTIES_DTYPE``; ``valid`` False and
    NaN values when the file cannot be decoded).

    brightness: mean luminance in [0, 1]; dark_end / bright_end: its 5th / 99th percentiles;
    contrast: luminance std; entropy: of the 256-bin luminance histogram (bits); sharpness:
    log of the Laplacian variance over the luminance variance on a ``SHARPNESS_SIDE`` square
    resize (at the image's own size when smaller, never enlarged; NaN for a constant image);
    noise: Immerkaer's fast noise estimate (with a median) (sigma, in [0, 1] units) on the decoded luminance;
    colourfulness: mean channel spread (max - min) in [0, 1];
    width, height: the stored upright size; log_area, log_aspect: their logs.
    """
    from PIL import Image

    from curation.images import ImageLoadError, image_info, load_rgb

    row = np.zeros((), dtype=PROPERTIES_DTYPE)
    for name in PROPERTY_NAMES:
        row[name] = np.nan
    try:
        size = image_info(path)
        image = load_rgb(path, max_side=DECODE_SIDE)
    except ImageLoadError:
        return row
    except Exception as error:  # noqa: BLE001 - a hostile file is "unreadable", never a crash
        logger.warning("image quality: cannot measure %s: %s", path, error)
        return row
    width, height = size if size else image.size
    rgb = np.asarray(image, dtype=np.float64) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114])
    histogram = np.bincount(np.clip(np.round(gray * 255), 0, 255).astype(np.int64).ravel(), minlength=256)
    probabilities = histogram[histogram > 0] / histogram.sum()
    fixed = (min(SHARPNESS_SIDE, image.width), min(SHARPNESS_SIDE, image.height))
    small = np.asarray(image.convert("L").resize(fixed, Image.Resampling.BOX), dtype=np.float64) / 255.0
    variance = float(small.var())
    laplacian = _laplacian_variance(small)
    row["brightness"] = gray.mean()
    row["dark_end"], row["bright_end"] = np.percentile(gray, [5, 99])
    row["contrast"] = gray.std()
    row["entropy"] = float(-(probabilities * np.log2(probabilities)).sum())
    row["sharpness"] = np.log((laplacian + 1e-12) / variance) if variance > 1e-8 else np.nan
    row["noise"] = _noise_sigma(gray)
    row["colourfulness"] = float((rgb.max(axis=2) - rgb.min(axis=2)).mean())
    row["width"], row["height"] = width, height
    row["log_area"] = np.log(max(width * height, 1))
    row["log_aspect"] = np.log(max(width, 1) / max(height, 1))
    row["valid"] = True
    return row


def compute_properties(filepaths: Sequence[str | os.PathLike], *, workers: int | None = None,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """:func:`image_properties` of every file, decoded in a thread pool."""
    filepaths = [str(p) for p in filepaths]
    out = np.zeros(len(filepaths), dtype=PROPERTIES_DTYPE)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, row in enumerate(pool.map(image_properties, filepaths, chunksize=64)):
            out[index] = row
            if progress and (index + 1) % 500 == 0:
                progress(index + 1, len(filepaths))
    if progress:
        progress(len(filepaths), len(filepaths))
    return out


def _cache_path(filepaths: list[str]):
    from curation.paths import cache_dir

    key = hashlib.sha1(json.dumps([CACHE_VERSION, filepaths]).encode()).hexdigest()
    return cache_dir() / "image_quality" / f"{key}.npz"


def cached_properties(filepaths: Sequence[str | os.PathLike], *, workers: int | None = None,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """:func:`compute_properties`, read from / written to a disk cache (under
    ``$CURATION_CACHE_DIR/image_quality``, named by the list of paths); a row is reused when
    its file has the same path, modification time and size. The cache file is replaced
    atomically; an unreadable one is recomputed."""
    from curation.files import atomic_file
    from curation.finders.verification import _file_stamp

    filepaths = [str(p) for p in filepaths]
    stamps = np.array([_file_stamp(p) for p in filepaths], dtype=np.int64).reshape(len(filepaths), 2)
    path = _cache_path(filepaths)
    properties = np.zeros(len(filepaths), dtype=PROPERTIES_DTYPE)
    missing = np.ones(len(filepaths), dtype=bool)
    try:
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as stored:
                cached, cached_stamps = stored["properties"], stored["stamps"]
            if cached.dtype != PROPERTIES_DTYPE or cached.shape != (len(filepaths),) or cached_stamps.shape != stamps.shape:
                raise ValueError("arrays do not match the paths")
            same = (cached_stamps == stamps).all(axis=1) & (stamps[:, 0] >= 0)
            properties[same] = cached[same]
            missing &= ~same
    except Exception as error:  # noqa: BLE001 - an unreadable cache is a miss
        logger.warning("ignoring unreadable image-quality cache %s: %s", path, error)
    if missing.any():
        rows = np.flatnonzero(missing)
        properties[rows] = compute_properties([filepaths[r] for r in rows], workers=workers, progress=progress)
        try:
            with atomic_file(path, make_parents=True) as partial:
                np.savez(partial, properties=properties, stamps=stamps)
        except OSError as error:
            logger.warning("image-quality cache not written to %s: %s", path, error)
    return properties


# ----------------------------------------------------------------------------------------
# Robust thresholds
# ----------------------------------------------------------------------------------------

# Each issue's statistic is a property on the scale where its spread is comparable across
# images (logs for intensities: a darkened image is a factor, not an offset, from its origin).
_EPS = 1.0 / 255


# Noise below about 4 grey levels is quantisation and texture, not noise: added before the log
# so images with no measurable noise do not pile up far below the rest.
NOISE_FLOOR = 4.0 / 255


def _log(values: np.ndarray) -> np.ndarray:
    return np.log(np.clip(values, 0, None) + _EPS)


# Issue -> (property, transform, side, words, floor): side -1 flags values below the median, +1
# above, 0 either way; ``floor`` is the smallest scale allowed when the MAD and IQR are both zero
# (every image alike): a guard against dividing by zero, not a threshold.
RULES = {
    "dark": ("bright_end", _log, -1, "brightest pixels (99th percentile, log)", 0.05),
    "overexposed": ("dark_end", lambda v: -_log(1 - v), +1, "darkest pixels (5th percentile, log of 1 - value)", 0.05),
    "low_contrast": ("contrast", _log, -1, "contrast (log std)", 0.05),
    "low_information": ("entropy", lambda v: v, -1, "entropy", 0.05),
    "blurred": ("sharpness", lambda v: v, -1, "sharpness", 0.05),
    "noisy": ("noise", lambda v: np.log(np.clip(v, 0, None) + NOISE_FLOOR), +1, "noise (log sigma)", 0.05),
    "small": ("log_area", lambda v: v, -1, "pixel count (log)", 0.1),
    "odd_aspect_ratio": ("log_aspect", lambda v: v, 0, "aspect ratio (log)", 0.05),
    "grayscale": ("colourfulness", _log, -1, "colourfulness (log)", 0.05),
}
# A near-constant (or gray) image's contrast (colourfulness) is also below this share of the
# dataset's median: far out *and* a small fraction of the typical value.
CONSTANT_SHARE = 0.05
GRAY_SHARE = 0.05


def robust_stats(values: np.ndarray, floor: float, side: int = 0) -> tuple[float, float]:
    """(median, scale) of the finite ``values``. The scale is the larger of 1.4826 MAD and, on
    the problem side (``side`` -1: below the median, +1: above), the distance from the median to
    the 10th (90th) percentile / 1.2816 (both equal the standard deviation of a normal
    distribution; the one-sided one widens a skewed, long-tailed side, so its ordinary tail is
    not flagged); else IQR / 1.349; at least ``floor``."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return np.nan, np.nan
    median = float(np.median(finite))
    scale = 1.4826 * float(np.median(np.abs(finite - median)))
    q10, q25, q75, q90 = np.percentile(finite, [10, 25, 75, 90])
    if side < 0:
        scale = max(scale, (median - float(q10)) / 1.2816)
    elif side > 0:
        scale = max(scale, (float(q90) - median) / 1.2816)
    if scale <= 0:
        scale = float(q75 - q25) / 1.349
    return median, max(scale, floor)


def find_image_quality(context: FinderContext, config: ImageQualityConfig = ImageQualityConfig(),
                       properties: np.ndarray | None = None) -> FinderResult:
    """Flag images whose properties sit far out of this dataset's own distribution.

    ``properties`` (one ``PROPERTIES_DTYPE`` row per sample) may be passed to skip decoding;
    else the images of ``context.filepaths`` are measured (cached). The table holds the
    properties, ``issues`` (comma-joined issue names, "" when none), ``reasons`` (each with its
    property and distance in robust scales), ``score`` (1 - 0.5 ** (z / mads) of the worst
    issue: 0.5 at the threshold, toward 1 farther out; below 0.5 for an unflagged image, by its
    property nearest to a threshold; NaN for unreadable files) and ``is_issue``.
    """
    if not config.mads > 0:
        raise FinderInputError(f"image quality mads: expected a positive number, got {config.mads}")
    if not 0 <= config.grayscale_share <= 1:
        raise FinderInputError(f"image quality grayscale_share: expected a value in [0, 1], got {config.grayscale_share}")
    count = len(context)
    if properties is None:
        properties = (cached_properties if config.cache else compute_properties)(
            list(context.filepaths), workers=config.workers)
    if properties.dtype != PROPERTIES_DTYPE or properties.shape != (count,):
        raise FinderInputError(f"image quality properties: expected {count} rows of PROPERTIES_DTYPE, "
                               f"got shape {properties.shape}")
    valid = properties["valid"].astype(bool)
    readable = int(valid.sum())
    z = {}
    thresholds = {}
    for issue, (prop, transform, side, _, floor) in RULES.items():
        with np.errstate(all="ignore"):
            values = np.where(valid, transform(properties[prop]), np.nan)
        median, scale = robust_stats(values, floor, side)
        thresholds[issue] = {"property": prop, "median": median, "scale": scale,
                             "limit": None if not np.isfinite(median) else
                             (median + side * config.mads * scale if side else config.mads * scale)}
        deviation = (values - median) / scale if np.isfinite(scale) else np.full(count, np.nan)
        z[issue] = np.abs(deviation) if side == 0 else side * deviation
    colour_median = float(np.median(properties["colourfulness"][valid])) if readable else 0.0
    contrast_median = float(np.median(properties["contrast"][valid])) if readable else 0.0
    is_gray = properties["colourfulness"] <= GRAY_SHARE * colour_median
    gray_share = float(np.mean(is_gray[valid])) if readable else 1.0
    colour_set = bool(readable) and colour_median > 0 and gray_share <= config.grayscale_share
    trusted = readable >= config.min_images
    issues_of, reasons_of, scores = [], [], np.full(count, np.nan)
    for row in range(count):
        if not valid[row]:
            issues_of.append("")
            reasons_of.append("")
            continue
        found: dict[str, float] = {}
        if trusted:
            for issue in RULES:
                value = z[issue][row]
                if np.isfinite(value) and value > config.mads:
                    found[issue] = float(value)
            if "grayscale" in found and not (colour_set and is_gray[row]):
                del found["grayscale"]
            constant = (properties["contrast"][row] <= CONSTANT_SHARE * contrast_median
                        and "low_contrast" in found) or not np.isfinite(properties["sharpness"][row])
            if constant:  # the one photometric verdict: not also blurred, dark, noisy, ...
                found = {"near_constant": max(float(z["low_contrast"][row]) if np.isfinite(z["low_contrast"][row])
                                              else config.mads, config.mads),
                         **{k: v for k, v in found.items() if k in ("small", "odd_aspect_ratio")}}
            if "dark" in found or "overexposed" in found:  # the cause, not its symptoms
                for symptom in ("low_contrast", "low_information", "grayscale"):
                    found.pop(symptom, None)
            if "small" in found:  # a tiny image has little detail to be sharp with
                found.pop("blurred", None)
        if found:
            scores[row] = float(1 - 0.5 ** (max(found.values()) / config.mads))
        else:  # how close to a threshold the nearest property is, below the flagged range
            worst = max([0.0] + [float(v[row]) for k, v in z.items()
                                 if np.isfinite(v[row]) and trusted and (k != "grayscale" or colour_set)])
            scores[row] = min(float(1 - 0.5 ** (worst / config.mads)), 0.49)
        ordered = [issue for issue in ISSUES if issue in found]
        issues_of.append(",".join(ordered))
        reasons = []
        for issue in ordered:
            if issue == "near_constant":
                reasons.append(f"near_constant: contrast {properties['contrast'][row]:.3f}, "
                               f"{found[issue]:.1f} MAD below the dataset's median")
                continue
            prop, transform, side, words, _ = RULES[issue]
            direction = "below" if side < 0 or (side == 0 and transform(properties[prop][row]) < thresholds[issue]["median"]) \
                else "above"
            reasons.append(f"{issue}: {words} {found[issue]:.1f} MAD {direction} the dataset's median")
        reasons_of.append("; ".join(reasons))
    table = pd.DataFrame({name: properties[name] for name in PROPERTY_NAMES}, index=pd.Index(context.ids, name="id"))
    table.insert(0, "score", scores)
    table.insert(1, "is_issue", [bool(i) for i in issues_of])
    table.insert(2, "issues", issues_of)
    table.insert(3, "reasons", reasons_of)
    flagged = int(table["is_issue"].sum())
    counts = {issue: sum(issue in i.split(",") for i in issues_of) for issue in ISSUES}
    summary = f"{flagged} images with a quality issue (over {config.mads:g} MAD from the dataset's median)"
    named = ", ".join(f"{n} {issue}" for issue, n in counts.items() if n)
    if named:
        summary += f": {named}"
    if count - readable:
        summary += f"; {count - readable} unreadable images not measured"
    if not trusted and readable:
        summary += f"; only {readable} readable images (fewer than {config.min_images}): nothing flagged"
    info = {"config": asdict(config), "thresholds": thresholds, "counts": counts, "colour_set": colour_set,
            "grayscale_share": gray_share, "unreadable": count - readable}
    return FinderResult("image_quality", table, summary, info)


def images_by_issue(dataset) -> dict[str, pd.DataFrame]:
    """The flagged images of the committed ``image_quality`` run, per issue type (in
    :data:`ISSUES` order, only types that occur): ``id``, ``filepath``, ``image_issue_reason``,
    ``image_quality_score``, worst first. For the per-issue galleries of the Findings page."""
    from fiftyone import ViewField as F

    from curation.analysis import current_values

    if not dataset.has_sample_field("image_issue"):
        return {}
    # Only the flagged samples leave the database (a page rerun must not read every sample).
    flagged = dataset.exists("image_issue").match(F("image_issue") != "")
    values = current_values(flagged, ["image_issue", "image_issue_reason", "image_quality_score"])
    ids, paths = flagged.values(["id", "filepath"])
    table = pd.DataFrame({"id": ids, "filepath": paths, **values})
    table = table[table["image_issue"].fillna("") != ""]
    groups = {}
    for issue in ISSUES:
        members = table[table["image_issue"].map(lambda issues: issue in issues.split(","))]
        if len(members):
            groups[issue] = members.sort_values("image_quality_score", ascending=False).reset_index(drop=True)
    return groups


def _describe(row: dict) -> str:
    issues = row.get("image_issue") or ""
    reasons = row.get("image_issue_reason") or ""
    return reasons or (f"image quality: {issues}" if issues else "image quality")


SPEC = FinderSpec(
    name="image_quality",
    title="image quality issue",
    find=find_image_quality,
    config_type=ImageQualityConfig,
    fields=(FindingField("image_issue", "str", column="issues"),
            FindingField("image_issue_reason", "str", column="reasons"),
            FindingField("image_quality_score", "float", column="score"),
            FindingField("image_quality_flag", "bool", column="is_issue")),
    flag_field="image_quality_flag",
    queue_score="image_quality_score",
    queue_weight=0.6,  # a bad picture may still be a correct sample
    queue_fields=("image_issue", "image_issue_reason"),
    describe=_describe,
    findings_columns=("image_issue", "image_quality_score"),
)
