"""Choosing the near-duplicate threshold on the dataset itself.

Cosine similarities mean different things for different models, so no fixed threshold
fits all. We take a sample of the dataset's own images, make transformed copies a person
would call duplicates (horizontal flip, a 90% centre crop, JPEG recompression at quality
30, +30% brightness), and embed them. Positive pairs are (image, its copy); negative pairs
are each sampled image and its most similar *other* image in the dataset (the hardest
unrelated pair there is; true duplicates among them make the choice conservative). The
threshold is the lowest one whose precision reaches ``target_precision``, which maximises
recall at that precision; the whole precision/recall curve is returned for the user.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from curation.images import ImageLoadError, load_rgb
from curation.errors import CurationInputError

TRANSFORMS = ("flip", "crop", "jpeg", "brightness")


def transformed_copies(image: Image.Image) -> dict[str, Image.Image]:
    """The four duplicate-making edits of ``image`` (RGB)."""
    width, height = image.size
    dx, dy = round(width * 0.05), round(height * 0.05)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=30)
    buffer.seek(0)
    return {
        "flip": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "crop": image.crop((dx, dy, width - dx, height - dy)).resize((width, height), Image.Resampling.BICUBIC),
        "jpeg": Image.open(buffer).convert("RGB"),
        "brightness": ImageEnhance.Brightness(image).enhance(1.3),
    }


@dataclass
class Calibration:
    threshold: float
    precision: float
    recall: float
    target_precision: float
    sample_size: int
    curve: pd.DataFrame = field(repr=False)  # threshold, precision, recall
    recall_by_transform: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["curve"] = self.curve.to_dict(orient="list")
        return data


def precision_recall_curve(positives: np.ndarray, negatives: np.ndarray, thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """Precision and recall of "similarity >= t" at each threshold t."""
    if thresholds is None:
        thresholds = np.round(np.arange(0.50, 1.0001, 0.005), 3)
    true_positive = (positives[None, :] >= thresholds[:, None]).sum(axis=1)
    false_positive = (negatives[None, :] >= thresholds[:, None]).sum(axis=1)
    flagged = true_positive + false_positive
    precision = np.divide(true_positive, flagged, out=np.ones(len(thresholds)), where=flagged > 0)
    recall = true_positive / max(len(positives), 1)
    return pd.DataFrame({"threshold": thresholds, "precision": precision, "recall": recall})


def choose_threshold(curve: pd.DataFrame, target_precision: float) -> pd.Series:
    """The lowest threshold reaching ``target_precision`` (the highest-precision one if none does)."""
    good = curve[curve["precision"] >= target_precision]
    return good.iloc[0] if len(good) else curve.loc[curve["precision"].idxmax()]


def calibrate_threshold(filepaths: list[str], embeddings: np.ndarray, neighbor_similarities: np.ndarray, embedder,
                        *, sample_size: int = 100, target_precision: float = 0.95, seed: int = 0) -> Calibration:
    """Calibrate the near-duplicate threshold for ``embedder`` on these images.

    Args:
        filepaths: (N,) the dataset's images, aligned with ``embeddings``.
        embeddings: (N, D) their L2-normalised embeddings from ``embedder``.
        neighbor_similarities: (N, k) cosine similarity of each sample's nearest other samples.
        embedder: the loaded model that made ``embeddings`` (:class:`curation.models.Embedder`).
        sample_size: images to transform; 100 gives 400 positive pairs (~30 s on a CPU).
        target_precision: in (0, 1]; 0.95 keeps 1 in 20 flagged pairs at most unrelated.
    """
    import torch

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(filepaths))
    positives: dict[str, list[float]] = {name: [] for name in TRANSFORMS}
    negatives: list[float] = []
    used = 0
    for row in order:
        if used >= sample_size:
            break
        try:
            image = load_rgb(filepaths[row], max_side=512)
        except ImageLoadError:
            continue
        if not np.any(embeddings[row]) or np.isnan(neighbor_similarities[row, 0]):
            continue
        copies = transformed_copies(image)
        batch = torch.stack([embedder.preprocess(copy) for copy in copies.values()])
        encoded = embedder.encode_images(batch)
        for name, vector in zip(copies, encoded):
            positives[name].append(float(vector @ embeddings[row]))
        negatives.append(float(neighbor_similarities[row, 0]))
        used += 1
    if used == 0:
        raise CurationInputError("calibration: none of the sampled images could be decoded and embedded")
    all_positives = np.concatenate([np.array(v) for v in positives.values()])
    curve = precision_recall_curve(all_positives, np.array(negatives))
    best = choose_threshold(curve, target_precision)
    threshold = float(best["threshold"])
    return Calibration(
        threshold=threshold, precision=float(best["precision"]), recall=float(best["recall"]),
        target_precision=target_precision, sample_size=used, curve=curve,
        recall_by_transform={name: float(np.mean(np.array(v) >= threshold)) for name, v in positives.items()},
    )
