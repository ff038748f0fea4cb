"""Mislabels: samples whose given label the data itself argues against.

Three signals, each a "label quality" in [0, 1] (the support for the given label):

- classifier: cleanlab's ``get_label_quality_scores`` (self-confidence) on out-of-fold
  probabilities of a logistic regression over the embeddings
  (:mod:`curation.finders.classifier`);
- neighbours: the similarity-weighted share of the k nearest labelled neighbours (from the
  context's shared graph) whose label is the given one, relative to the share the class
  could reach (a class of n samples has at most n - 1 neighbours of its own);
- zero-shot (only for models with a text encoder, i.e. CLIP): the softmax probability of
  the given class among "a photo of a {label}" prompts, temperature 100 as in CLIP.

``score`` = 1 - the weighted mean of the available qualities (weights renormalised over
the signals a sample has), in [0, 1]. With self-confidence this is 1 - P(given label)
under the weighted mixture of the signals' class distributions; ``suggested_label`` is
the mixture's most likely class and ``suggested_confidence`` its probability.
cleanlab's ``find_label_issues`` (confident learning, prune by noise rate) runs on that
mixture (both parts are out-of-sample) and fills ``cleanlab_issue``.

``is_issue`` = ``score >= threshold`` and the suggestion differs from the given label;
with ``use_cleanlab_flag=True`` also every ``cleanlab_issue`` (the OR rule).

The classifier and neighbour weights are chosen per dataset (:func:`choose_signal_weights`):
the weighting whose combined label quality best predicts the given labels out of sample
(lowest log loss; every signal is out of sample). On the benchmarks it picks classifier 1.0
on MNIST (3/5/8 validated errors in the top 15/50/100, AP 0.087, against 1/5/5 and 0.068
for the earlier fixed 0.75/0.25) and 0.75 or 1.0 on Fashion-MNIST flips (AP within 0.001
of the best weighting). Fewer than 200 scored samples keep the fixed 0.75/0.25.

Other defaults, chosen on Fashion-MNIST (10,000 test images, EfficientNet-Lite0 embeddings,
10/20/40% uniform flips, flip seed 101) by mean F1 of the flagged set, and reported on a
different flip draw and on MNIST's validated errors (benchmarks/bench_mislabels.py,
benchmarks/README.md): k = 15, threshold 0.9: mean F1 0.892, against 0.823 for the OR rule
and 0.811 for cleanlab's flag alone (cleanlab's estimate of the noise also counts the
classes the embedding cannot tell apart, e.g. shirt vs t-shirt). The zero-shot weight
(0.25) could not be calibrated here (no CLIP weights offline): it matches the fixed
neighbour weight.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from curation.finders.base import FinderContext, FinderInputError, FinderResult, FinderSpec, FindingField
from curation.finders.classifier import DEFAULT_C, DEFAULT_DIMENSIONS, label_mask, uncertainty_scores, usable_rows


FILTER_METHODS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")
CLEANLAB_SOURCES = ("combined", "classifier")
QUALITY_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
TEXT_EMBEDDINGS_KEY = "class_text_embeddings"  # context.extras key read when context.class_text_embeddings is None
AUTO = "auto"
# Weights chosen per dataset (see choose_signal_weights): the classifier's share of the
# classifier + neighbour weight, tried in this order (ties keep the earlier: the prior default).
CLASSIFIER_SHARE_GRID = (0.75, 1.0, 0.5, 0.25)
FALLBACK_WEIGHTS = (0.75, 0.25)  # the fixed weights, chosen on Fashion-MNIST; used below MIN_WEIGHT_SAMPLES
MIN_WEIGHT_SAMPLES = 200


@dataclass(frozen=True)
class MislabelConfig:
    """Settings of :func:`find_mislabels`.

    Attributes:
        classifier_weight, neighbor_weight, zero_shot_weight: relative weights of the
            three signals in ``score`` (>= 0, not all 0); a signal a sample lacks is left
            out and the others renormalised. ``"auto"`` (the default) for both the classifier
            and the neighbour weight: chosen per dataset by the out-of-sample log loss of
            the given labels (:func:`choose_signal_weights`), recorded in ``info["weights"]``; with only one
            of them given, the other is its fixed default (0.75 classifier, 0.25 neighbours).
        threshold: ``score`` at or above which a sample is flagged (when its suggestion
            differs); 0.9 had the best mean F1 on the benchmark, 0.85 favours recall at high
            noise (F1 0.93 at 40%), 0.95 precision at low noise.
        use_cleanlab_flag: also flag what cleanlab's ``find_label_issues`` flags (the OR
            rule: more recall, lower precision; mean F1 0.823 vs 0.892 on the benchmark).
        cleanlab_on: ``"combined"`` runs ``find_label_issues`` on the weighted mixture of the
            signals' class distributions, ``"classifier"`` on the classifier's alone.
        require_other_suggestion: the threshold flags a sample only when
            ``suggested_label`` differs from the given label.
        filter_by: cleanlab's ``find_label_issues`` method.
        quality_method: cleanlab's ``get_label_quality_scores`` method for the classifier signal.
        n_neighbors: neighbours that vote (at most the graph's k; 15 is what the app builds
            and was the best of 5/10/15).
        n_folds, seed, C, dimensions: cross-validation settings of the classifier; ``"auto"``
            (the default) chooses C and the PCA size per dataset by held-out log loss
            (:func:`curation.finders.classifier.compute_out_of_fold_predictions`).
        zero_shot: True to require the zero-shot signal, False to skip it, None to use it
            when the model has a text encoder or the context holds class text embeddings.
        prompt_template: zero-shot prompt; ``{label}`` is the class name with _ as spaces.
        zero_shot_temperature: multiplies cosine similarities before the softmax (CLIP's 100).
        max_disagreeing_neighbors: ids listed in ``disagreeing_neighbors``.
    """

    classifier_weight: float | str = AUTO
    neighbor_weight: float | str = AUTO
    zero_shot_weight: float = 0.25
    threshold: float = 0.9
    use_cleanlab_flag: bool = False
    cleanlab_on: str = "combined"
    require_other_suggestion: bool = True
    filter_by: str = "prune_by_noise_rate"
    quality_method: str = "self_confidence"
    n_neighbors: int = 15
    n_folds: int = 5
    seed: int = 0
    C: float = DEFAULT_C
    dimensions: int | None = DEFAULT_DIMENSIONS
    zero_shot: bool | None = None
    prompt_template: str = "a photo of a {label}"
    zero_shot_temperature: float = 100.0
    max_disagreeing_neighbors: int = 5


def _auto_weights(config: MislabelConfig) -> bool:
    return config.classifier_weight == AUTO and config.neighbor_weight == AUTO


def _validate_config(config: MislabelConfig) -> None:
    weights = (config.classifier_weight, config.neighbor_weight, config.zero_shot_weight)
    numbers = [weight for weight in weights if weight != AUTO]
    bad = [weight for weight in numbers if isinstance(weight, (str, bool)) or not isinstance(weight, (int, float))
           or not np.isfinite(weight) or weight < 0]
    fixed = [FALLBACK_WEIGHTS[0] if config.classifier_weight == AUTO else config.classifier_weight,
             FALLBACK_WEIGHTS[1] if config.neighbor_weight == AUTO else config.neighbor_weight, config.zero_shot_weight]
    if bad or config.zero_shot_weight == AUTO or (not bad and not _auto_weights(config) and sum(fixed) <= 0):
        raise FinderInputError(f"mislabel weights: expected non-negative numbers, not all zero, got classifier={weights[0]!r}, "
                               f"neighbor={weights[1]!r}, zero_shot={weights[2]!r} (classifier and neighbour may be 'auto')")
    if not 0 < config.threshold <= 1:
        raise FinderInputError(f"mislabel threshold: expected a value in (0, 1], got {config.threshold}")
    if config.filter_by not in FILTER_METHODS:
        raise FinderInputError(f"mislabel filter_by: expected one of {', '.join(FILTER_METHODS)}, got {config.filter_by!r}")
    if config.cleanlab_on not in CLEANLAB_SOURCES:
        raise FinderInputError(f"mislabel cleanlab_on: expected one of {', '.join(CLEANLAB_SOURCES)}, got {config.cleanlab_on!r}")
    if config.quality_method not in QUALITY_METHODS:
        raise FinderInputError(f"mislabel quality_method: expected one of {', '.join(QUALITY_METHODS)}, got {config.quality_method!r}")
    if config.n_neighbors < 1:
        raise FinderInputError(f"mislabel n_neighbors: expected at least 1, got {config.n_neighbors}")
    if config.n_folds < 2:
        raise FinderInputError(f"mislabel n_folds: expected at least 2, got {config.n_folds}")
    if "{label}" not in config.prompt_template:
        raise FinderInputError(f"mislabel prompt_template: expected a '{{label}}' placeholder, got {config.prompt_template!r}")


def _validate_context(context: FinderContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    count = len(context.ids)
    embeddings = np.asarray(context.embeddings)
    if embeddings.ndim != 2 or len(embeddings) != count:
        raise FinderInputError(f"embeddings: expected shape ({count}, dimension) to match the ids, got {embeddings.shape}")
    if context.labels is None:
        raise FinderInputError("labels: the mislabel finder needs a label field, and this dataset has none")
    labels = np.asarray(context.labels, dtype=object)
    if labels.shape != (count,):
        raise FinderInputError(f"labels: expected shape ({count},) to match the ids, got {labels.shape}")
    if count == 0:
        raise FinderInputError("the dataset is empty: expected at least 2 labelled samples of each of 2 classes")
    if not label_mask(labels).any():
        raise FinderInputError(f"labels: all {count} samples are unlabelled; label some samples to check labels")
    indices = np.asarray(context.neighbor_indices)
    similarities = np.asarray(context.neighbor_similarities)
    if indices.ndim != 2 or len(indices) != count or similarities.shape != indices.shape:
        raise FinderInputError(
            f"neighbour graph: expected neighbor_indices and neighbor_similarities of shape ({count}, k), "
            f"got {indices.shape} and {similarities.shape}"
        )
    if indices.size and (not np.issubdtype(indices.dtype, np.integer) or indices.min() < -1 or indices.max() >= count):
        raise FinderInputError(f"neighbour graph: expected integer row indices in [-1, {count}), "
                               f"got {indices.dtype} values in [{indices.min()}, {indices.max()}]")
    return embeddings, labels, indices


# ----------------------------------------------------------------------------------------
# Zero-shot
# ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _model_text_embeddings(model_name: str, template: str, classes: tuple[str, ...]) -> tuple[np.ndarray | None, str]:
    """(C, D) prompt embeddings from the model's text encoder, or None and why not (cached per process)."""
    from curation.models import ModelUnavailableError, UnknownModelError, load_embedder, resolve_model

    try:
        spec = resolve_model(model_name)
    except UnknownModelError as error:
        return None, str(error)
    if spec.family != "open_clip":
        # Only open_clip models carry a text encoder in this registry; no need to load the others.
        return None, f"{model_name} has no text encoder"
    try:
        embedder = load_embedder(spec, allow_fallback=False)
    except (ModelUnavailableError, ImportError) as error:
        return None, f"cannot load {model_name}'s text encoder: {error}"
    if not embedder.supports_text:
        return None, f"{model_name} has no text encoder"
    prompts = [template.format(label=name.replace("_", " ")) for name in classes]
    return embedder.encode_texts(prompts), f"{model_name} text encoder, prompt {template!r}"


def _zero_shot_probabilities(context: FinderContext, classes: list[str], config: MislabelConfig,
                             dimension: int) -> tuple[np.ndarray | None, str]:
    """(N, C) zero-shot class probabilities, or None and why the signal is skipped."""
    if config.zero_shot is False or config.zero_shot_weight == 0:
        return None, "skipped: turned off"
    provided, where = context.class_text_embeddings, "class_text_embeddings"
    if provided is None:
        provided, where = context.extras.get(TEXT_EMBEDDINGS_KEY), f"extras[{TEXT_EMBEDDINGS_KEY!r}]"
    if provided is not None:
        missing = [name for name in classes if name not in provided]
        if missing:
            raise FinderInputError(f"{where}: expected a text embedding for every class, missing {missing}")
        text = np.stack([np.asarray(provided[name], dtype=np.float32).ravel() for name in classes])
        source = f"text embeddings from context.{where}"
    elif context.model_name:
        text, source = _model_text_embeddings(context.model_name, config.prompt_template, tuple(classes))
    else:
        text, source = None, "the context names no embedding model"
    if text is None:
        if config.zero_shot:
            raise FinderInputError(f"zero_shot=True but no class text embeddings are available: {source}")
        return None, f"skipped: {source}"
    if text.shape[1] != dimension:
        raise FinderInputError(f"class text embeddings: expected dimension {dimension} like the image embeddings, got {text.shape[1]}")
    norms = np.linalg.norm(text, axis=1, keepdims=True)
    text = np.divide(text, norms, out=np.zeros_like(text), where=norms > 0)
    return text, source


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------
# The finder
# ----------------------------------------------------------------------------------------

def _neighbor_votes(indices: np.ndarray, similarities: np.ndarray, class_of_row: np.ndarray, usable: np.ndarray,
                    n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Similarity-weighted class votes of each sample's labelled neighbours.

    Returns (N, C) vote shares (rows of zeros without voters), (N, C) unweighted counts and
    the (N, k) mask of neighbours that voted.
    """
    count, k = indices.shape
    rows = np.arange(count)
    safe = np.where(indices >= 0, indices, 0)
    voter = (indices >= 0) & (safe != rows[:, None]) & (class_of_row[safe] >= 0) & usable[safe] & usable[:, None]
    # Cosine similarities of true neighbours are positive; the floor keeps a voter's weight above zero.
    weights = np.where(voter, np.clip(np.nan_to_num(similarities, nan=0.0), 1e-6, None), 0.0)
    votes = np.zeros((count, n_classes))
    counts = np.zeros((count, n_classes))
    for column in range(k):
        mask = voter[:, column]
        np.add.at(votes, (rows[mask], class_of_row[safe[mask, column]]), weights[mask, column])
        np.add.at(counts, (rows[mask], class_of_row[safe[mask, column]]), 1.0)
    totals = votes.sum(axis=1, keepdims=True)
    shares = np.divide(votes, totals, out=np.zeros_like(votes), where=totals > 0)
    return shares, counts, voter


def _describe(given: str | None, classes: list[str], classifier: np.ndarray | None, neighbor_counts: np.ndarray | None,
              zero_shot: np.ndarray | None, cleanlab_flag: bool) -> str:
    """One line per sample: what each signal says about the given label."""
    parts = []
    given_index = classes.index(given) if given is not None else None
    if classifier is not None:
        top = int(np.argmax(classifier))
        if given_index is None:
            parts.append(f"classifier suggests {classes[top]!r} {classifier[top]:.2f}")
        elif top == given_index:
            parts.append(f"classifier agrees with {given!r} {classifier[top]:.2f}")
        else:
            parts.append(f"classifier gives {classes[top]!r} {classifier[top]:.2f} vs given {given!r} {classifier[given_index]:.2f}")
    if neighbor_counts is not None and neighbor_counts.sum() > 0:
        total = int(neighbor_counts.sum())
        top = int(np.argmax(neighbor_counts))
        if given_index is None or top != given_index:
            parts.append(f"{int(neighbor_counts[top])} of {total} nearest neighbours are {classes[top]!r}")
        else:
            parts.append(f"{int(neighbor_counts[given_index])} of {total} nearest neighbours are also {given!r}")
    if zero_shot is not None:
        top = int(np.argmax(zero_shot))
        if given_index is None or top == given_index:
            parts.append(f"zero-shot text match {classes[top]!r} {zero_shot[top]:.2f}")
        else:
            parts.append(f"zero-shot text match prefers {classes[top]!r} {zero_shot[top]:.2f} vs given {zero_shot[given_index]:.2f}")
    if cleanlab_flag:
        parts.append("cleanlab flags it")
    return "; ".join(parts)


class _Signal(NamedTuple):
    """One signal: per-sample quality of the given label (N,) and class distribution (N, C), NaN where missing."""

    quality: np.ndarray
    distribution: np.ndarray


def _classifier_signal(oof, quality_method: str, class_of_row: np.ndarray, labelled: np.ndarray,
                       usable: np.ndarray) -> tuple[_Signal, np.ndarray]:
    """The classifier signal: cleanlab's label quality on the out-of-fold predictions ``oof``.

    Labelled samples with a genuine out-of-fold prediction get a quality
    (``get_label_quality_scores`` with ``quality_method``) and their probabilities;
    unlabelled usable samples get the probabilities of the model fitted on every labelled
    sample (no quality: they have no label). Returns the signal and the rows checked.
    """
    from cleanlab.rank import get_label_quality_scores

    count = len(class_of_row)
    labelled_rows = np.flatnonzero(labelled)
    unlabelled_rows = np.flatnonzero(~labelled)
    probs = np.full((count, len(oof.classes)), np.nan)
    probs[labelled_rows[oof.checkable]] = oof.pred_probs[oof.checkable]
    probs[unlabelled_rows[usable[unlabelled_rows]]] = oof.unlabelled_probs[usable[unlabelled_rows]]
    quality = np.full(count, np.nan)
    checked_rows = labelled_rows[oof.checkable]
    if len(checked_rows):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # cleanlab's "few examples" warnings: see info
            quality[checked_rows] = get_label_quality_scores(class_of_row[checked_rows], probs[checked_rows],
                                                             method=quality_method)
    return _Signal(quality, probs), checked_rows


class _Neighbours(NamedTuple):
    signal: _Signal
    counts: np.ndarray  # (N, C) unweighted votes, for the reason
    has_voters: np.ndarray  # (N,)
    indices: np.ndarray  # (N, k) the neighbours that were asked
    voter: np.ndarray  # (N, k) which of them voted
    k: int


def _neighbor_signal(context: FinderContext, config: MislabelConfig, class_of_row: np.ndarray, labelled: np.ndarray,
                     usable: np.ndarray, n_classes: int) -> _Neighbours:
    """The neighbour signal: agreement of the ``config.n_neighbors`` nearest labelled
    neighbours (similarity-weighted) with the given label, relative to the share the class
    could reach. A class of n samples can have at most n - 1 neighbours of its own, so small
    classes are not mislabelled for being small, and a class of one cannot be judged by its
    neighbours at all (quality NaN)."""
    indices = np.asarray(context.neighbor_indices)
    k = min(config.n_neighbors, indices.shape[1])
    neighbor_indices = indices[:, :k].astype(np.int64)
    neighbor_similarities = np.asarray(context.neighbor_similarities, dtype=np.float64)[:, :k]
    shares, counts, voter = _neighbor_votes(neighbor_indices, neighbor_similarities, class_of_row, usable, n_classes)
    voters = counts.sum(axis=1)
    has_voters = voters > 0
    class_sizes = np.bincount(class_of_row[labelled & usable], minlength=n_classes)
    labelled_rows = np.flatnonzero(labelled)
    agreement = np.full(len(class_of_row), np.nan)
    voted = labelled_rows[has_voters[labelled_rows] & usable[labelled_rows]]
    reachable = np.minimum(class_sizes[class_of_row[voted]] - 1, voters[voted]) / np.maximum(voters[voted], 1)
    judged = reachable > 0
    voted, reachable = voted[judged], reachable[judged]
    agreement[voted] = np.minimum(1.0, shares[voted, class_of_row[voted]] / reachable)
    signal = _Signal(agreement, np.where(has_voters[:, None], shares, np.nan))
    return _Neighbours(signal, counts, has_voters, neighbor_indices, voter, int(k))


def _zero_shot_signal(context: FinderContext, config: MislabelConfig, classes: list[str], embeddings: np.ndarray,
                      class_of_row: np.ndarray, labelled: np.ndarray, usable: np.ndarray) -> tuple[_Signal | None, str]:
    """The zero-shot signal: softmax over the class prompts' text embeddings (temperature
    ``config.zero_shot_temperature``) of each usable sample; quality = the given class's
    probability. None (and why) when there are no text embeddings or it is turned off."""
    text, source = _zero_shot_probabilities(context, classes, config, embeddings.shape[1])
    if text is None:
        return None, source
    count = len(class_of_row)
    probs = np.full((count, len(classes)), np.nan)
    vectors = np.nan_to_num(embeddings[usable].astype(np.float64))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    probs[usable] = _softmax(config.zero_shot_temperature * vectors @ text.T)
    quality = np.full(count, np.nan)
    scored = np.flatnonzero(labelled & usable)
    quality[scored] = probs[scored, class_of_row[scored]]
    return _Signal(quality, probs), source


class _Combined(NamedTuple):
    score: np.ndarray  # (N,) 1 - weighted mean quality, NaN where no signal has one
    scored: np.ndarray  # (N,) bool
    mixture: np.ndarray  # (N, C) weighted mean class distribution
    has_mixture: np.ndarray  # (N,) bool
    suggested_index: np.ndarray  # (N,) -1 without a mixture


def _combine(weighted: list[tuple[float, _Signal]], count: int, n_classes: int) -> _Combined:
    """The weighted mean of the available qualities (``score`` = 1 - it) and of the class
    distributions (the mixture whose most likely class is the suggestion); a signal a sample
    lacks is left out and the weights renormalised over the others."""
    quality_sum = np.zeros(count)
    quality_weight = np.zeros(count)
    mixture = np.zeros((count, n_classes))
    mixture_weight = np.zeros(count)
    for weight, signal in weighted:
        if weight == 0:
            continue
        has_quality = np.isfinite(signal.quality)
        quality_sum[has_quality] += weight * signal.quality[has_quality]
        quality_weight[has_quality] += weight
        has_distribution = np.isfinite(signal.distribution).all(axis=1)
        mixture[has_distribution] += weight * signal.distribution[has_distribution]
        mixture_weight[has_distribution] += weight
    score = np.full(count, np.nan)
    scored = quality_weight > 0
    score[scored] = np.clip(1.0 - quality_sum[scored] / quality_weight[scored], 0.0, 1.0)
    has_mixture = mixture_weight > 0
    mixture[has_mixture] /= mixture_weight[has_mixture, None]
    suggested_index = np.where(has_mixture, np.argmax(mixture, axis=1), -1)
    return _Combined(score, scored, mixture, has_mixture, suggested_index)


def _cleanlab_flags(probs: np.ndarray, class_of_row: np.ndarray, labelled: np.ndarray, ids: np.ndarray,
                    filter_by: str) -> np.ndarray:
    """Confident learning's flag (cleanlab's ``find_label_issues``) on out-of-sample
    probabilities (the classifier's or the mixture), over the labelled rows that have them,
    in id order so the result does not depend on the input order."""
    from cleanlab.filter import find_label_issues

    labelled_rows = np.flatnonzero(labelled)
    rows = labelled_rows[np.isfinite(probs[labelled_rows]).all(axis=1)]
    rows = rows[np.argsort(ids[rows].astype(str), kind="stable")]
    issue = np.zeros(len(class_of_row), dtype=bool)
    if len(rows) and len(np.unique(class_of_row[rows])) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            issue[rows] = find_label_issues(class_of_row[rows], probs[rows], filter_by=filter_by, n_jobs=1)
    return issue


def find_mislabels(context: FinderContext, config: MislabelConfig = MislabelConfig()) -> FinderResult:
    """Score every labelled sample by how strongly the data argues against its label.

    Args:
        context: ids, L2-normalised embeddings (N, D), labels (N,) with None for unlabelled
            samples, and the shared kNN graph (N, k). ``context.class_text_embeddings`` (or,
            for older callers, ``context.extras["class_text_embeddings"]``) may hold
            {class: (D,) vector} to enable zero-shot without loading a model.
        config: a :class:`MislabelConfig`.

    Returns:
        A :class:`FinderResult` whose table (index: sample id) has ``score`` in [0, 1] (NaN
        for unlabelled samples and those no signal can judge), ``is_issue``, ``given_label``,
        ``suggested_label``, ``suggested_confidence`` in [0, 1], ``classifier_quality``,
        ``neighbor_agreement``, ``zero_shot_quality`` (each in [0, 1] or NaN where that
        signal is missing), ``cleanlab_issue``, ``uncertainty_score`` (1 - margin of the
        classifier, also for unlabelled samples: a "label next" queue), ``reason`` (one
        line) and ``disagreeing_neighbors`` (ids of the most similar neighbours whose label
        differs). ``info`` holds the settings, the classifier's, and which signals ran.

    Raises:
        FinderInputError: no labels, a single class, no class with two usable samples,
            malformed arrays or settings.
    """
    _validate_config(config)
    embeddings, labels, _ = _validate_context(context)
    count = len(labels)
    ids = np.asarray(context.ids, dtype=object)
    labelled = label_mask(labels)
    given = np.array([str(value) if present else None for value, present in zip(labels, labelled)], dtype=object)
    usable = usable_rows(embeddings)

    # The classifier's out-of-fold predictions fix the classes (shared with label-next and balance).
    oof = context.out_of_fold(n_folds=config.n_folds, seed=config.seed, C=config.C, dimensions=config.dimensions)
    classes = oof.classes
    n_classes = len(classes)
    class_index = {name: position for position, name in enumerate(classes)}
    class_of_row = np.array([class_index[name] if name is not None else -1 for name in given], dtype=np.int64)

    classifier, checked_rows = _classifier_signal(oof, config.quality_method, class_of_row, labelled, usable)
    neighbours = _neighbor_signal(context, config, class_of_row, labelled, usable, n_classes)
    zero_shot, zero_shot_source = _zero_shot_signal(context, config, classes, embeddings, class_of_row, labelled, usable)
    if _auto_weights(config):
        weights_info = choose_signal_weights(context, config, classifier, neighbours.signal, zero_shot, labelled)
        classifier_weight, neighbor_weight = weights_info["classifier"], weights_info["neighbors"]
    else:  # one given: the other keeps its fixed default
        classifier_weight = FALLBACK_WEIGHTS[0] if config.classifier_weight == AUTO else config.classifier_weight
        neighbor_weight = FALLBACK_WEIGHTS[1] if config.neighbor_weight == AUTO else config.neighbor_weight
        weights_info = {"classifier": classifier_weight, "neighbors": neighbor_weight, "chosen_by": "given"}
    weights_info["zero_shot"] = config.zero_shot_weight if zero_shot is not None else None
    weighted = [(classifier_weight, classifier), (neighbor_weight, neighbours.signal)]
    if zero_shot is not None:
        weighted.append((config.zero_shot_weight, zero_shot))
    combined = _combine(weighted, count, n_classes)
    suggested_label = np.array([classes[index] if index >= 0 else None for index in combined.suggested_index], dtype=object)
    suggested_confidence = np.where(combined.has_mixture, combined.mixture.max(axis=1), np.nan)

    # Confident learning's flag, on the classifier's probabilities or on the mixture (both are
    # out-of-sample: the classifier is cross-validated, a sample never votes for itself).
    cleanlab_probs = (classifier.distribution if config.cleanlab_on == "classifier"
                      else np.where(combined.has_mixture[:, None], combined.mixture, np.nan))
    cleanlab_issue = _cleanlab_flags(cleanlab_probs, class_of_row, labelled, ids, config.filter_by)

    # The threshold flags only where the evidence names another class: a sample that every
    # signal finds hard (near-uniform probabilities) is uncertain, not mislabelled.
    above_threshold = combined.scored & (combined.score >= config.threshold)
    if config.require_other_suggestion:
        above_threshold &= combined.suggested_index != class_of_row
    is_issue = above_threshold | (cleanlab_issue if config.use_cleanlab_flag else False)

    uncertainty = np.full(count, np.nan)
    has_classifier = np.isfinite(classifier.distribution).all(axis=1)
    if has_classifier.any():
        uncertainty[has_classifier] = uncertainty_scores(classifier.distribution[has_classifier], kind="margin")

    reasons, disagreeing = _reasons(given, classes, class_of_row, ids, usable, combined.scored, classifier, has_classifier,
                                    neighbours, zero_shot, cleanlab_issue, config.max_disagreeing_neighbors)
    table = pd.DataFrame(
        {
            "score": combined.score,
            "is_issue": is_issue,
            "given_label": given,
            "suggested_label": suggested_label,
            "suggested_confidence": suggested_confidence,
            "classifier_quality": classifier.quality,
            "neighbor_agreement": neighbours.signal.quality,
            "zero_shot_quality": zero_shot.quality if zero_shot is not None else np.full(count, np.nan),
            "cleanlab_issue": cleanlab_issue,
            "uncertainty_score": uncertainty,
            "reason": reasons,
            "disagreeing_neighbors": disagreeing,
        },
        index=pd.Index(ids, name="id"),
    )
    labelled_rows = np.flatnonzero(labelled)
    used = ["classifier (cleanlab)", "neighbours"] + (["zero-shot"] if zero_shot is not None else [])
    flagged = int(is_issue.sum())
    summary = (f"{flagged} of {len(labelled_rows)} labelled samples look mislabelled "
               f"(cleanlab flags {int(cleanlab_issue.sum())}, score >= {config.threshold:g}: {int(above_threshold.sum())}); "
               f"signals: {', '.join(used)}")
    unscored = int(len(labelled_rows) - combined.scored[labelled_rows].sum())
    if unscored:
        summary += f"; {unscored} labelled samples could not be checked"
    # How often the out-of-fold classifier picks the given label: when it is low (few samples
    # per class, an embedding that does not separate the classes), every flag is weak evidence.
    agreement = (float(np.mean(np.argmax(classifier.distribution[checked_rows], axis=1) == class_of_row[checked_rows]))
                 if len(checked_rows) else None)
    if agreement is not None:
        summary += f"; the classifier agrees with {agreement:.0%} of the given labels"
    info = {
        "config": asdict(config),
        "classes": classes,
        "signals": used,
        "zero_shot": zero_shot_source,
        "neighbors_used": neighbours.k,
        "classifier": oof.info,
        "weights": weights_info,
        "classifier_agreement": agreement,
        "flagged": flagged,
        "cleanlab_flagged": int(cleanlab_issue.sum()),
        "above_threshold": int(above_threshold.sum()),
        "unscored_labelled": unscored,
        "unlabelled": int((~labelled).sum()),
        "score": "1 - weighted mean of the available label qualities (classifier self-confidence, "
                 "neighbour agreement, zero-shot probability)",
    }
    return FinderResult("mislabels", table, summary, info)


def choose_signal_weights(context: FinderContext, config: MislabelConfig, classifier: _Signal,
                          neighbours: _Signal, zero_shot: _Signal | None, labelled: np.ndarray) -> dict:
    """The classifier and neighbour weights whose combination best predicts this dataset's
    given labels out of sample.

    Each weighting of :data:`CLASSIFIER_SHARE_GRID` gives every labelled sample a combined
    label quality (``1 - score``: the weighted mean of the signals' support for the given
    label); the weighting with the lowest mean log loss of the given labels wins (ties: the
    earlier in the grid). Every signal is out of sample (the classifier is cross-validated,
    a sample never votes for itself among its neighbours), so this is an honest inner
    validation: most labels are right, and the combination that predicts them best is the
    one whose low quality best marks the ones that are not. Measured (benchmarks/README.md):
    it picks the weighting with the best average precision on MNIST's validated errors and
    on Fashion-MNIST at 10 and 20% flips, and one within 0.001 of it at 40%. (Synthetic
    flips injected into the labels chose worse: see the README.) Below
    :data:`MIN_WEIGHT_SAMPLES` scored samples the fixed :data:`FALLBACK_WEIGHTS` are used.

    Returns ``{"classifier", "neighbors", "chosen_by", "log_loss_by_classifier_share"}``.
    """
    count, n_classes = len(labelled), classifier.distribution.shape[1]
    extra = [(config.zero_shot_weight, zero_shot)] if zero_shot is not None else []
    losses = {}
    for share in CLASSIFIER_SHARE_GRID:
        combined = _combine([(share, classifier), (1.0 - share, neighbours), *extra], count, n_classes)
        rows = np.flatnonzero(labelled & combined.scored)
        if len(rows) < MIN_WEIGHT_SAMPLES:
            return {"classifier": FALLBACK_WEIGHTS[0], "neighbors": FALLBACK_WEIGHTS[1],
                    "chosen_by": f"fixed: {len(rows)} scored samples, fewer than {MIN_WEIGHT_SAMPLES} to choose on"}
        losses[share] = float(-np.mean(np.log(np.clip(1.0 - combined.score[rows], 1e-6, 1.0))))
    best = min(CLASSIFIER_SHARE_GRID, key=lambda share: (losses[share], CLASSIFIER_SHARE_GRID.index(share)))
    return {"classifier": best, "neighbors": round(1.0 - best, 6),
            "chosen_by": "lowest out-of-sample log loss of the given labels",
            "log_loss_by_classifier_share": {str(share): round(value, 5) for share, value in losses.items()}}


def _reasons(given: np.ndarray, classes: list[str], class_of_row: np.ndarray, ids: np.ndarray, usable: np.ndarray,
             scored: np.ndarray, classifier: _Signal, has_classifier: np.ndarray, neighbours: _Neighbours,
             zero_shot: _Signal | None, cleanlab_issue: np.ndarray, limit: int) -> tuple[list[str], list[list[str]]]:
    """Per sample, the one-line reason (:func:`_describe`, or why it was not checked) and the
    ids of up to ``limit`` most similar voting neighbours whose label differs."""
    reasons, disagreeing = [], []
    for row in range(len(given)):
        label = given[row]
        reason = _describe(
            label, classes,
            classifier.distribution[row] if has_classifier[row] else None,
            neighbours.counts[row] if neighbours.has_voters[row] else None,
            zero_shot.distribution[row] if zero_shot is not None and usable[row] else None,
            bool(cleanlab_issue[row]),
        )
        if label is None:
            reason = "unlabelled" + (f": {reason}" if reason else "")
        elif not scored[row]:
            why = "no usable embedding" if not usable[row] else f"class {label!r} has a single sample"
            reason = f"cannot be checked: {why}"
        reasons.append(reason)
        if label is None or limit == 0:
            disagreeing.append([])
            continue
        mine = class_of_row[row]
        asked = neighbours.indices[row][neighbours.voter[row]]
        disagreeing.append([str(ids[other]) for other in asked if class_of_row[other] != mine][:limit])
    return reasons, disagreeing


def describe(row: dict) -> str:
    """Why a review-queue row is a suspected mislabel."""
    return row.get("mislabel_reason") or f"mislabel score {row['mislabel_score']:.2f}"


SPEC = FinderSpec(
    name="mislabels",
    title="suspected mislabel",
    find=find_mislabels,
    config_type=MislabelConfig,
    fields=(
        FindingField("mislabel_score", "float", column="score"),
        FindingField("suggested_label", "str", column="suggested_label"),
        FindingField("suggested_confidence", "float", column="suggested_confidence"),
        FindingField("mislabel_reason", "str", column="reason"),
        FindingField("mislabel_disagreeing_ids", "list", column="disagreeing_neighbors"),
        FindingField("mislabel_flag", "bool", column="is_issue"),
    ),
    flag_field="mislabel_flag",
    queue_score="mislabel_score",
    queue_fields=("mislabel_reason", "suggested_label"),
    describe=describe,
    requires=("labels",),
    findings_columns=("mislabel_score", "suggested_label"),
    findings_version=1,
)
