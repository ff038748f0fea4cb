"""Out-of-fold class probabilities from the embeddings, for label checks and uncertainty.

A multinomial logistic regression on the PCA-reduced embeddings, fitted
with stratified K-fold cross-validation, so that no labelled sample is scored by a model
that saw its label: that is what confident learning (cleanlab) needs from its
``pred_probs``. Samples without a label never train; they get probabilities from one more
model fitted on every labelled sample (for uncertainty and "label next" queues).

Design choices, measured in ``benchmarks/bench_mislabels.py`` (see benchmarks/README.md):

- PCA to ``dimensions`` (128) components before the regression. PCA is fitted on every
  usable embedding, labelled or not; it never sees a label, so the out-of-fold property
  holds, and fitting it once (not per fold) makes 10,000 x 1280 take seconds on 2 cores.
  On those embeddings it is also more accurate than the regression on all 1280 dimensions.
- BLAS runs on one thread (see :func:`compute_out_of_fold_predictions`).
- Samples whose class has a single usable sample cannot be cross-validated (holding it out
  removes its class from training). They always train, are never held out, and get the
  class prior as their row, with ``checkable`` False, so callers can tell "no evidence"
  from "evidence against". The same holds for labelled samples with a broken (NaN or
  all-zero) embedding, which never train.
- Folds are drawn on the samples sorted by ``sample_keys`` (ids) when given, and every fit
  runs in that order, so the result does not depend on the order of the input.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Sequence

import numpy as np

from curation.finders.base import FinderInputError

DEFAULT_DIMENSIONS = 128
DEFAULT_C = 0.1
DEFAULT_MAX_ITER = 200


class OutOfFoldPredictions(NamedTuple):
    """What :func:`compute_out_of_fold_predictions` returns.

    Attributes:
        pred_probs: (N_labelled, C) float64, rows sum to 1; row i belongs to the i-th labelled
            sample in input order. Out-of-fold where ``checkable``, the class prior elsewhere.
        classes: the C class names, sorted; column j of every probability array is classes[j].
        labelled: (N,) bool, which input samples have a label.
        checkable: (N_labelled,) bool, whether the row is a genuine out-of-fold prediction.
        unlabelled_probs: (N_unlabelled, C) probabilities of the unlabelled samples from a
            model fitted on all labelled samples (the prior for broken embeddings).
        info: settings and counts (folds used, dimensions, uncheckable samples and why).
    """

    pred_probs: np.ndarray
    classes: list[str]
    labelled: np.ndarray
    checkable: np.ndarray
    unlabelled_probs: np.ndarray
    info: dict[str, Any]


def usable_rows(embeddings: np.ndarray) -> np.ndarray:
    """(N,) bool: rows that are finite and not all zero (the context stores broken vectors as zeros)."""
    finite = np.isfinite(embeddings).all(axis=1)
    norms = np.zeros(len(embeddings))
    norms[finite] = np.linalg.norm(embeddings[finite], axis=1)
    return finite & (norms > 0)


def label_mask(labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    """(N,) bool: which labels are present (not None, not NaN, not empty)."""
    def present(value: Any) -> bool:
        if value is None:
            return False
        if isinstance(value, float) and np.isnan(value):
            return False
        return str(value) != ""

    return np.fromiter((present(value) for value in labels), dtype=bool, count=len(labels))


def _validate(embeddings: Any, labels: Any, n_folds: int, dimensions: int | None, C: float) -> tuple[np.ndarray, np.ndarray]:
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.number):
        raise FinderInputError(f"embeddings: expected a numeric array of shape (n_samples, dimension), got shape {embeddings.shape} of {embeddings.dtype}")
    if labels is None:
        raise FinderInputError("labels: expected one label per sample (None where unlabelled), got None: the dataset has no label field")
    labels = np.asarray(labels, dtype=object)
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise FinderInputError(f"labels: expected shape ({len(embeddings)},) to match the embeddings, got {labels.shape}")
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise FinderInputError(f"n_folds: expected an integer >= 2, got {n_folds!r}")
    if dimensions is not None and (not isinstance(dimensions, (int, np.integer)) or dimensions < 1):
        raise FinderInputError(f"dimensions: expected a positive integer or None (no PCA), got {dimensions!r}")
    if not (isinstance(C, (int, float)) and np.isfinite(C) and C > 0):
        raise FinderInputError(f"C: expected a positive inverse regularisation strength, got {C!r}")
    return embeddings, labels


@dataclass
class _Model:
    """PCA (optional) -> one global scale -> multinomial logistic regression, fitted in canonical order."""

    dimensions: int | None
    C: float
    max_iter: int
    seed: int
    standardize: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def fit_features(self, vectors: np.ndarray) -> np.ndarray:
        """Reduce and scale ``vectors`` (unsupervised: labels are never seen here)."""
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        features = vectors.astype(np.float64, copy=False)
        components = None if self.dimensions is None else min(self.dimensions, features.shape[0], features.shape[1])
        if components is not None and components < features.shape[1]:
            # With more samples than dimensions, the eigendecomposition of the D x D covariance
            # is exact, deterministic and the fastest (0.8 s for 10,000 x 1280 on one core).
            if features.shape[0] >= features.shape[1]:
                solver = "covariance_eigh"
            else:
                solver = "randomized" if components < 0.8 * min(features.shape) else "full"
            pca = PCA(n_components=components, svd_solver=solver, random_state=self.seed)
            features = pca.fit_transform(features)
            self.info["pca_components"] = int(components)
            self.info["pca_explained_variance"] = round(float(pca.explained_variance_ratio_.sum()), 4)
        else:
            self.info["pca_components"] = None
        if self.standardize:
            return StandardScaler().fit_transform(features)
        # One scale for all components (mean per-component variance 1), so C means the same
        # for any model, and the weak trailing components stay weak instead of being blown up
        # to unit variance like the leading ones: per-component standardising halved the
        # out-of-fold accuracy on small data (0.33 vs 0.58 on 60 images of 10 classes).
        features = features - features.mean(axis=0)
        spread = float(np.sqrt((features ** 2).mean()))
        return features / spread if spread > 0 else features

    def fit_predict(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int) -> np.ndarray:
        """(len(test_x), n_classes) probabilities; classes absent from training get 0."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        present = np.unique(train_y)
        probabilities = np.zeros((len(test_x), n_classes))
        if len(test_x) == 0:
            return probabilities
        if len(present) == 1:  # a one-class training set predicts that class (sklearn would refuse)
            probabilities[:, present[0]] = 1.0
            return probabilities
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=1e-4, random_state=self.seed)
        with warnings.catch_warnings():
            # A few hundred lbfgs iterations reach a ranking as good as full convergence
            # (measured in benchmarks/bench_mislabels.py); the warning would only be noise.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(train_x, train_y)
        probabilities[:, model.classes_] = model.predict_proba(test_x)
        return probabilities


def compute_out_of_fold_predictions(
    embeddings: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    n_folds: int = 5,
    seed: int = 0,
    C: float = DEFAULT_C,
    dimensions: int | None = DEFAULT_DIMENSIONS,
    max_iter: int = DEFAULT_MAX_ITER,
    sample_keys: Sequence[Any] | np.ndarray | None = None,
    standardize: bool = False,
) -> OutOfFoldPredictions:
    """Cross-validated class probabilities for every labelled sample, and predictions for the rest.

    Args:
        embeddings: (N, D) float array; rows with NaN or all zeros are treated as broken.
        labels: (N,) class names, None where unlabelled.
        n_folds: folds of the stratified split, >= 2 (5 by default; reduced to the size of
            the largest class when that is smaller).
        seed: seeds the fold shuffle, PCA and the regression.
        C: inverse L2 strength of the logistic regression on the scaled PCA features;
            values in [0.1, 10] work well, 0.1 is the benchmarked default.
        dimensions: PCA components before the regression (128; 64-256 measured within 0.005
            average precision of each other); None keeps all dimensions (slower and worse).
        max_iter: lbfgs iterations per fit.
        sample_keys: (N,) stable keys (sample ids); when given, folds and fits use the order
            of the sorted keys, so the output does not depend on the input order.
        standardize: scale every PCA component to unit variance instead of one global scale
            (worse in our measurements; kept for comparison).

    Returns:
        An :class:`OutOfFoldPredictions`.

    Raises:
        FinderInputError: malformed input, fewer than two classes, or no class with at least
            two usable samples (nothing can be cross-validated).
    """
    embeddings, labels = _validate(embeddings, labels, n_folds, dimensions, C)
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these matrices are small, and on a shared CPU OpenBLAS's spinning
    # threads made the whole run 5-15x slower (PCA 8.9 vs 1.8 CPU-s, each fit 6.4 vs 0.4).
    with threadpool_limits(limits=1, user_api="blas"):
        return _compute(embeddings, labels, n_folds=n_folds, seed=seed, C=C, dimensions=dimensions,
                        max_iter=max_iter, sample_keys=sample_keys, standardize=standardize)


def _compute(embeddings: np.ndarray, labels: np.ndarray, *, n_folds: int, seed: int, C: float,
             dimensions: int | None, max_iter: int, sample_keys: Sequence[Any] | np.ndarray | None,
             standardize: bool) -> OutOfFoldPredictions:
    from sklearn.model_selection import StratifiedKFold

    n_samples = len(labels)
    labelled = label_mask(labels)
    if not labelled.any():
        raise FinderInputError(f"labels: expected at least some labelled samples, got {n_samples} samples and none labelled")
    label_names = np.array([str(value) for value in labels[labelled]], dtype=object)
    classes = sorted(set(label_names))
    if len(classes) < 2:
        raise FinderInputError(
            f"labels: expected at least 2 classes to compare samples against, got a single class {classes[0]!r} "
            f"({labelled.sum()} labelled samples)"
        )
    class_index = {name: position for position, name in enumerate(classes)}
    y_labelled = np.array([class_index[name] for name in label_names], dtype=np.int64)

    usable = usable_rows(embeddings)
    usable_labelled = usable[labelled]
    counts = np.bincount(y_labelled[usable_labelled], minlength=len(classes))
    if counts.max(initial=0) < 2:
        raise FinderInputError(
            "labels: expected at least one class with 2 or more samples with a usable embedding to cross-validate, "
            f"got class sizes {dict(zip(classes, counts.tolist()))}"
        )
    prior = np.bincount(y_labelled, minlength=len(classes)) / len(y_labelled)

    # Canonical order: everything below runs on the samples sorted by key.
    if sample_keys is not None:
        keys = np.asarray(sample_keys, dtype=object).astype(str)
        if len(keys) != n_samples:
            raise FinderInputError(f"sample_keys: expected {n_samples} keys to match the embeddings, got {len(keys)}")
        order = np.argsort(keys, kind="stable")
    else:
        order = np.arange(n_samples)
    labelled_rows = np.flatnonzero(labelled)  # input positions of labelled samples
    position_in_labelled = np.full(n_samples, -1)
    position_in_labelled[labelled_rows] = np.arange(len(labelled_rows))

    model = _Model(dimensions=dimensions, C=float(C), max_iter=int(max_iter), seed=seed, standardize=standardize)
    usable_ordered = order[usable[order]]
    reduced = model.fit_features(embeddings[usable_ordered])
    features = np.zeros((n_samples, reduced.shape[1]))
    features[usable_ordered] = reduced

    y_full = np.full(n_samples, -1, dtype=np.int64)
    y_full[labelled_rows] = y_labelled
    trainable = order[labelled[order] & usable[order]]  # labelled + usable, canonical order
    singleton_class = counts[y_full[trainable]] < 2
    cross_validated = trainable[~singleton_class]
    always_train = trainable[singleton_class]

    folds = int(min(n_folds, np.bincount(y_full[cross_validated]).max()))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred_probs = np.tile(prior, (len(labelled_rows), 1))
    checkable = np.zeros(len(labelled_rows), dtype=bool)
    with warnings.catch_warnings():
        # "The least populated class in y has only N members": expected for small classes; each
        # of their samples still lands in a different fold, so the class is in every training set.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(np.zeros(len(cross_validated)), y_full[cross_validated]))
    for train, test in splits:
        train_rows = np.concatenate([cross_validated[train], always_train])
        test_rows = cross_validated[test]
        probabilities = model.fit_predict(features[train_rows], y_full[train_rows], features[test_rows], len(classes))
        pred_probs[position_in_labelled[test_rows]] = probabilities
        checkable[position_in_labelled[test_rows]] = True

    unlabelled_rows = np.flatnonzero(~labelled)
    unlabelled_probs = np.tile(prior, (len(unlabelled_rows), 1))
    predictable = unlabelled_rows[usable[unlabelled_rows]]
    if len(predictable):
        # Predictions are per row, so only the training order needs to be canonical.
        probabilities = model.fit_predict(features[trainable], y_full[trainable], features[predictable], len(classes))
        unlabelled_probs[usable[unlabelled_rows]] = probabilities

    small = [classes[index] for index in np.flatnonzero(counts == 1)]
    info = {
        "model": "multinomial logistic regression (lbfgs) on PCA features" + (", standardised" if standardize else ""),
        "n_folds": folds,
        "n_folds_requested": int(n_folds),
        "seed": seed,
        "C": float(C),
        "max_iter": int(max_iter),
        "pca_components": model.info.get("pca_components"),
        "pca_explained_variance": model.info.get("pca_explained_variance"),
        "n_labelled": int(len(labelled_rows)),
        "n_unlabelled": int(len(unlabelled_rows)),
        "n_uncheckable": int((~checkable).sum()),
        "single_sample_classes": small,
        "broken_embeddings": int((~usable).sum()),
    }
    return OutOfFoldPredictions(pred_probs, classes, labelled, checkable, unlabelled_probs, info)


def out_of_fold_probabilities(
    embeddings: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    n_folds: int = 5,
    seed: int = 0,
    C: float = DEFAULT_C,
    dimensions: int | None = DEFAULT_DIMENSIONS,
    sample_keys: Sequence[Any] | np.ndarray | None = None,
) -> tuple[np.ndarray, list[str]]:
    """(N_labelled, C) out-of-fold probabilities and the class names of their columns.

    A shortcut for :func:`compute_out_of_fold_predictions` (see it for the arguments, the
    handling of tiny classes and broken rows, and the predictions for unlabelled samples).
    """
    result = compute_out_of_fold_predictions(embeddings, labels, n_folds=n_folds, seed=seed, C=C,
                                             dimensions=dimensions, sample_keys=sample_keys)
    return result.pred_probs, result.classes


def uncertainty_scores(pred_probs: np.ndarray, kind: Literal["margin", "entropy"] = "margin") -> np.ndarray:
    """(N,) uncertainty in [0, 1] from (N, C) probabilities; higher = less sure.

    ``margin``: 1 - (top probability - second probability); ``entropy``: Shannon entropy
    divided by log(C). Both are 0 for a one-hot row and 1 for a uniform row.

    Raises:
        FinderInputError: ``pred_probs`` is not a 2-d array with at least 2 columns, or
            ``kind`` is unknown.
    """
    probabilities = np.asarray(pred_probs, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise FinderInputError(f"pred_probs: expected shape (n_samples, n_classes >= 2), got {probabilities.shape}")
    if kind not in ("margin", "entropy"):
        raise FinderInputError(f"kind: expected 'margin' or 'entropy', got {kind!r}")
    if len(probabilities) == 0:
        return np.zeros(0)
    probabilities = np.clip(probabilities, 0.0, None)
    totals = probabilities.sum(axis=1, keepdims=True)
    probabilities = np.divide(probabilities, totals, out=np.full_like(probabilities, 1.0 / probabilities.shape[1]), where=totals > 0)
    if kind == "margin":
        top_two = -np.partition(-probabilities, 1, axis=1)[:, :2]
        scores = 1.0 - (top_two[:, 0] - top_two[:, 1])
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(probabilities > 0, probabilities * np.log(probabilities), 0.0)
        scores = -terms.sum(axis=1) / np.log(probabilities.shape[1])
    return np.clip(scores, 0.0, 1.0)
