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
- Settings are chosen per data set by default (``C="auto"``, ``dimensions="auto"``): settings
  fixed on one data set did not transfer (PCA-128 with C = 0.1, chosen on Fashion-MNIST, was
  5 points less accurate than a plain regression on all dimensions on a set of real photos).
  Inside every outer training fold a stratified quarter is held out; each candidate
  (logistic regression over a grid of C and PCA sizes, and a cosine k-nearest-neighbour vote)
  is fitted on the rest and scored by the log loss of its temperature-scaled probabilities
  on that quarter; the best is refitted on the whole outer training fold, and its
  probabilities for the outer held-out fold are temperature-scaled with the temperature
  fitted on the inner quarter. No label of the outer held-out fold is seen by the
  selection, the temperature or the model, so the out-of-fold property holds. What was
  tried, what won and how long it took is in ``info["selection"]``. Explicit numbers for
  both ``C`` and ``dimensions`` keep the earlier fixed behaviour (no selection, no scaling).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Sequence

import numpy as np

from curation.finders.base import FinderInputError
from curation.finders.pixel_classifier import DEFAULT_PIXEL_BUDGET

AUTO = "auto"
FIXED_DIMENSIONS = 128  # the settings used before per-data-set selection (chosen on Fashion-MNIST)
FIXED_C = 0.1
DEFAULT_DIMENSIONS: int | None | str = AUTO
DEFAULT_C: float | str = AUTO
DEFAULT_MAX_ITER = 200
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)  # 0.01 won at the edge on Fashion-MNIST with (0.01..10); 0.001 ~ plain C=1 on raw unit vectors
DIMENSION_GRID: tuple[int | None, ...] = (64, 128, 256, None)  # None: all dimensions, no PCA
NEIGHBOR_GRID = (10, 30)
SELECTION_HOLDOUT = 0.25  # share of each outer training fold held out to compare candidates
SELECTION_MAX_TRAIN = 3000  # candidates are compared on at most this many inner training samples ...
SELECTION_MAX_TEST = 2000  # ... and this many held-out ones (the winner is refitted on the whole fold)
MIN_SELECTION_SAMPLES = 200  # below this the held-out quarter is too small to choose on: fixed settings
DEFAULT_SELECTION_BUDGET = 30.0  # estimated single-thread seconds for all candidate fits (see _estimated_seconds)
KNN_SMOOTHING = 0.5  # pseudo-votes per class, so a class no neighbour has keeps a finite log probability


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


def _validate(embeddings: Any, labels: Any, n_folds: int, dimensions: int | None | str, C: float | str) -> tuple[np.ndarray, np.ndarray]:
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
    if dimensions is not None and dimensions != AUTO and (not isinstance(dimensions, (int, np.integer)) or dimensions < 1):
        raise FinderInputError(f"dimensions: expected a positive integer or None (no PCA), got {dimensions!r} (or 'auto' to choose it on the data)")
    if C != AUTO and not (isinstance(C, (int, float)) and np.isfinite(C) and C > 0):
        raise FinderInputError(f"C: expected a positive inverse regularisation strength, got {C!r} (or 'auto' to choose it on the data)")
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


def fit_temperature(probabilities: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """The temperature T that minimises the log loss of ``softmax(log(probabilities) / T)``.

    Args:
        probabilities: (N, C) held-out probabilities (rows need not be calibrated).
        targets: (N,) int class indices in [0, C).

    Returns:
        (T, log loss at T). T > 1 softens an over-confident model, T < 1 sharpens an
        under-confident one; T is searched in [0.05, 20].
    """
    from scipy.optimize import minimize_scalar

    log_probabilities = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, None))
    rows = np.arange(len(targets))

    def loss(log_temperature: float) -> float:
        scaled = log_probabilities / np.exp(log_temperature)
        scaled -= scaled.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(scaled).sum(axis=1)) - scaled[rows, targets]))

    best = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-3})
    # Keep T = 1 unless scaling actually helps (a flat loss must not move the probabilities).
    if loss(0.0) <= best.fun:
        return 1.0, loss(0.0)
    return float(np.exp(best.x)), float(best.fun)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """(N, C) ``softmax(log(probabilities) / temperature)``; zero columns stay (almost) zero."""
    log_probabilities = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, None)) / temperature
    log_probabilities -= log_probabilities.max(axis=1, keepdims=True)
    scaled = np.exp(log_probabilities)
    return scaled / scaled.sum(axis=1, keepdims=True)


def log_loss(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log probability of the target class (probabilities clipped at 1e-12)."""
    picked = np.asarray(probabilities, dtype=np.float64)[np.arange(len(targets)), targets]
    return float(-np.mean(np.log(np.clip(picked, 1e-12, None))))


@dataclass(frozen=True)
class Candidate:
    """One setting the selection compares: a logistic regression or a k-nearest-neighbour vote."""

    kind: Literal["logistic", "knn"]
    dimensions: int | None  # PCA components of the features; None = all dimensions
    C: float | None = None  # logistic only
    n_neighbors: int | None = None  # knn only

    @property
    def name(self) -> str:
        features = "all dims" if self.dimensions is None else f"PCA-{self.dimensions}"
        if self.kind == "logistic":
            return f"logistic C={self.C:g} {features}"
        return f"kNN k={self.n_neighbors} cosine {features}"


def _estimated_seconds(candidate: Candidate, n_train: int, n_test: int, width: int, n_classes: int, max_iter: int) -> float:
    """Rough single-thread seconds of one fit + prediction, from sizes alone (deterministic).

    lbfgs: about 4 flops per (sample, feature, class) per iteration, at ~2 GFLOP/s; warm
    starts along the C path make most fits stop well before ``max_iter``: a fifth of it
    matched the measured times (0.3 s for 1,800 x 256, 2.4 s for 1,800 x 1,280, 10 classes,
    on a loaded 2-core machine). kNN: one similarity product at ~10 GFLOP/s (float32).
    """
    if candidate.kind == "logistic":
        return 4.0 * n_train * (width + 1) * n_classes * (max_iter / 5) / 2e9
    return 2.0 * n_train * n_test * width / 1e10


class _Selector:
    """Per-outer-fold choice among candidates by held-out log loss, then temperature scaling.

    Features are built once from every usable embedding (no label is used): one PCA whose
    leading components serve every PCA size (components are nested), and the centred raw
    embeddings for "all dims"; each matrix has one global scale, as in :class:`_Model`.
    """

    def __init__(self, vectors: np.ndarray, rows: np.ndarray, n_samples: int, n_classes: int, *, seed: int,
                 max_iter: int, standardize: bool, C: float | str, dimensions: int | None | str):
        self.seed, self.max_iter, self.n_classes, self.standardize = seed, max_iter, n_classes, standardize
        self.n_samples, self.width_all = n_samples, vectors.shape[1]
        c_values = C_GRID if C == AUTO else (float(C),)
        requested = DIMENSION_GRID if dimensions == AUTO else (dimensions,)
        limit = min(vectors.shape)
        sizes: list[int | None] = []
        for size in requested:  # sizes at or above the data's rank are "all dims"
            effective = None if size is None or size >= min(limit, self.width_all) else int(size)
            if effective not in sizes:
                sizes.append(effective)
        self.sizes = sizes
        self.candidates = [Candidate("logistic", size, C=value) for size in sizes for value in c_values]
        if dimensions == AUTO:
            neighbour_size = max((size for size in sizes if size is not None), default=None)
            self.candidates += [Candidate("knn", neighbour_size, n_neighbors=k) for k in NEIGHBOR_GRID]
        self.pca_info: dict[str, Any] = {}
        self.features = self._features(vectors, rows)
        self.left_out: list[str] = []
        self.budget_total = 0.0
        self.chosen: list[Candidate] = []
        self.temperatures: list[float] = []
        self.scores: dict[str, list[float]] = {candidate.name: [] for candidate in self.candidates}
        self.raw_scores: dict[str, list[float]] = {candidate.name: [] for candidate in self.candidates}
        self.seconds: dict[str, float] = {candidate.name: 0.0 for candidate in self.candidates}
        self.selection_seconds = 0.0

    def _features(self, vectors: np.ndarray, rows: np.ndarray) -> dict[int | None, np.ndarray]:
        from sklearn.decomposition import PCA

        started = time.perf_counter()
        vectors = vectors.astype(np.float64, copy=False)
        features: dict[int | None, np.ndarray] = {}
        largest = max((size for size in self.sizes if size is not None), default=None)
        if largest is not None:
            solver = "covariance_eigh" if vectors.shape[0] >= vectors.shape[1] else "randomized"
            pca = PCA(n_components=largest, svd_solver=solver, random_state=self.seed)
            reduced = pca.fit_transform(vectors)
            cumulative = np.cumsum(pca.explained_variance_ratio_)
            for size in self.sizes:
                if size is not None:
                    features[size] = self._scaled(reduced[:, :size], rows)
                    self.pca_info[str(size)] = round(float(cumulative[size - 1]), 4)
        if None in self.sizes or any(candidate.dimensions is None for candidate in self.candidates):
            features[None] = self._scaled(vectors, rows)
        self.feature_seconds = time.perf_counter() - started
        return features

    def _scaled(self, matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
        matrix = matrix - matrix.mean(axis=0)
        if self.standardize:
            spread = matrix.std(axis=0)
            matrix = matrix / np.where(spread > 0, spread, 1.0)
        else:
            spread = float(np.sqrt((matrix ** 2).mean()))
            matrix = matrix / spread if spread > 0 else matrix
        placed = np.zeros((self.n_samples, matrix.shape[1]))
        placed[rows] = matrix
        return placed

    def _predict(self, candidate: Candidate, train_rows: np.ndarray, y: np.ndarray, test_rows: np.ndarray,
                 warm: dict | None = None) -> np.ndarray:
        features = self.features[candidate.dimensions]
        if candidate.kind == "knn":
            return _knn_probabilities(features[train_rows], y[train_rows], features[test_rows], self.n_classes,
                                      candidate.n_neighbors)
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        train_y = y[train_rows]
        probabilities = np.zeros((len(test_rows), self.n_classes))
        present = np.unique(train_y)
        if len(present) == 1:
            probabilities[:, present[0]] = 1.0
            return probabilities
        key = candidate.dimensions
        model = warm.get(key) if warm is not None else None
        if model is None:
            model = LogisticRegression(C=candidate.C, max_iter=self.max_iter, tol=1e-4, random_state=self.seed,
                                       warm_start=warm is not None)
            if warm is not None:
                warm[key] = model
        model.set_params(C=candidate.C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(features[train_rows], train_y)
        probabilities[:, model.classes_] = model.predict_proba(features[test_rows])
        return probabilities

    def _holdout(self, fold: int, train_rows: np.ndarray, y: np.ndarray, full: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """A stratified share of ``train_rows`` to compare candidates on (classes of 1 stay in training).

        ``full``: the whole split, before the bounded subsample the candidates are compared on
        (the pixel model trains and is compared on it).
        """
        rng = np.random.default_rng([self.seed, fold])
        held = np.zeros(len(train_rows), dtype=bool)
        for value in np.unique(y[train_rows]):
            members = np.flatnonzero(y[train_rows] == value)
            take = min(int(round(SELECTION_HOLDOUT * len(members))), len(members) - 1)
            if take > 0:
                held[rng.choice(members, size=take, replace=False)] = True
        inner_train, inner_test = train_rows[~held], train_rows[held]
        if full:
            return inner_train, inner_test
        # Comparing candidates on a bounded sample keeps the selection's cost flat in N; the
        # ranking of settings is what matters here, and the winner is refitted on everything.
        if len(inner_train) > SELECTION_MAX_TRAIN:
            inner_train = np.sort(rng.choice(inner_train, size=SELECTION_MAX_TRAIN, replace=False))
        if len(inner_test) > SELECTION_MAX_TEST:
            inner_test = np.sort(rng.choice(inner_test, size=SELECTION_MAX_TEST, replace=False))
        return inner_train, inner_test

    def _affordable(self, n_train: int, n_test: int, budget: float) -> list[Candidate]:
        """Candidates in order of estimated cost, cheapest first, while the fold's budget lasts."""
        def cost(candidate: Candidate) -> float:
            width = self.width_all if candidate.dimensions is None else candidate.dimensions
            return _estimated_seconds(candidate, n_train, n_test, width, self.n_classes, self.max_iter)

        kept, spent = [], 0.0
        for candidate in sorted(self.candidates, key=cost):
            if kept and spent + cost(candidate) > budget:
                if candidate.name not in self.left_out:
                    self.left_out.append(candidate.name)
                continue
            kept.append(candidate)
            spent += cost(candidate)
        self.budget_total += spent
        # Back to the declared order: logistic C ascending per size (warm starts), then kNN;
        # ties in loss go to the earlier, simpler candidate.
        return [candidate for candidate in self.candidates if candidate in kept]

    def fit_predict_fold(self, fold: int, train_rows: np.ndarray, y: np.ndarray, test_rows: np.ndarray,
                         budget: float) -> np.ndarray:
        """Choose on a hold-out inside ``train_rows``, refit the winner on all of them, predict ``test_rows``."""
        started = time.perf_counter()
        inner_train, inner_test = self._holdout(fold, train_rows, y)
        candidates = self._affordable(len(inner_train), len(inner_test), budget)
        if len(inner_test) == 0:  # nothing to compare on (every class has one training sample): first candidate, no scaling
            candidates = candidates[:1]
        warm: dict = {}
        best: tuple[float, int, Candidate, float] | None = None
        for position, candidate in enumerate(candidates):
            fit_started = time.perf_counter()
            probabilities = self._predict(candidate, inner_train, y, inner_test, warm=warm)
            temperature, loss = fit_temperature(probabilities, y[inner_test]) if len(inner_test) else (1.0, 0.0)
            self.seconds[candidate.name] += time.perf_counter() - fit_started
            self.scores[candidate.name].append(loss)
            self.raw_scores[candidate.name].append(log_loss(probabilities, y[inner_test]) if len(inner_test) else 0.0)
            if best is None or loss < best[0]:
                best = (loss, position, candidate, temperature)
        assert best is not None
        _, _, chosen, temperature = best
        self.chosen.append(chosen)
        self.temperatures.append(temperature)
        self.selection_seconds += time.perf_counter() - started
        return apply_temperature(self._predict(chosen, train_rows, y, test_rows), temperature)

    def most_chosen(self) -> tuple[Candidate, float]:
        """The candidate chosen in most folds (ties: the declared order) and its median temperature."""
        tally = {candidate: sum(1 for chosen in self.chosen if chosen == candidate) for candidate in self.candidates}
        winner = max(self.candidates, key=lambda candidate: tally[candidate])
        temperatures = [value for chosen, value in zip(self.chosen, self.temperatures) if chosen == winner]
        return winner, float(np.median(temperatures))

    def fit_predict_all(self, train_rows: np.ndarray, y: np.ndarray, test_rows: np.ndarray) -> np.ndarray:
        """Predictions for samples without a label: the most chosen setting, fitted on every labelled sample."""
        winner, temperature = self.most_chosen()
        return apply_temperature(self._predict(winner, train_rows, y, test_rows), temperature)

    def summary(self) -> dict[str, Any]:
        winner, temperature = self.most_chosen()
        rows = []
        for candidate in self.candidates:
            losses = self.scores[candidate.name]
            rows.append({
                "name": candidate.name, "kind": candidate.kind, "dimensions": candidate.dimensions, "C": candidate.C,
                "n_neighbors": candidate.n_neighbors,
                "mean_log_loss": round(float(np.mean(losses)), 4) if losses else None,
                "mean_log_loss_before_scaling": round(float(np.mean(self.raw_scores[candidate.name])), 4) if losses else None,
                "folds_chosen": sum(1 for chosen in self.chosen if chosen == candidate),
                "seconds": round(self.seconds[candidate.name], 2),
            })
        kind = ("multinomial logistic regression (lbfgs)" if winner.kind == "logistic"
                else "k-nearest-neighbour vote (cosine)")
        features = "all dimensions" if winner.dimensions is None else f"PCA-{winner.dimensions} features"
        return {
            "model": f"{kind} on {features}, temperature-scaled; chosen per fold by held-out log loss",
            "C": winner.C,
            "dimensions": winner.dimensions,
            "n_neighbors": winner.n_neighbors,
            "pca_components": winner.dimensions,
            "pca_explained_variance": self.pca_info.get(str(winner.dimensions)),
            "temperature": round(temperature, 4),
            "selection": {
                "chosen": winner.name,
                "chosen_per_fold": [candidate.name for candidate in self.chosen],
                "temperature_per_fold": [round(value, 4) for value in self.temperatures],
                "criterion": (f"log loss after temperature scaling on a stratified {SELECTION_HOLDOUT:.0%} of each outer "
                              "training fold (the outer held-out fold's labels are never seen)"),
                "candidates": rows,
                "left_out_for_budget": self.left_out,
                "estimated_seconds": round(self.budget_total, 1),
                "feature_seconds": round(self.feature_seconds, 2),
                "selection_seconds": round(self.selection_seconds, 2),
            },
        }


def _knn_probabilities(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int,
                       n_neighbors: int, block: int = 1024) -> np.ndarray:
    """(len(test_x), n_classes) smoothed vote shares of each test row's ``n_neighbors`` most cosine-similar training rows."""
    def normalised(matrix: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    train_unit, test_unit = normalised(train_x), normalised(test_x)
    k = int(min(n_neighbors, len(train_x)))
    votes = np.zeros((len(test_x), n_classes))
    for start in range(0, len(test_x), block):
        similarities = test_unit[start:start + block] @ train_unit.T
        nearest = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
        labels = train_y[nearest]
        flat = (np.arange(len(labels))[:, None] * n_classes + labels).ravel()
        votes[start:start + block] = np.bincount(flat, minlength=len(labels) * n_classes).reshape(len(labels), n_classes)
    votes += KNN_SMOOTHING
    return votes / votes.sum(axis=1, keepdims=True)


def compute_out_of_fold_predictions(
    embeddings: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    n_folds: int = 5,
    seed: int = 0,
    C: float | str = DEFAULT_C,
    dimensions: int | None | str = DEFAULT_DIMENSIONS,
    max_iter: int = DEFAULT_MAX_ITER,
    sample_keys: Sequence[Any] | np.ndarray | None = None,
    standardize: bool = False,
    selection_budget: float = DEFAULT_SELECTION_BUDGET,
    pixels: Any = None,
    pixel_model: str = "auto",
    pixel_budget: float = DEFAULT_PIXEL_BUDGET,
) -> OutOfFoldPredictions:
    """Cross-validated class probabilities for every labelled sample, and predictions for the rest.

    Args:
        embeddings: (N, D) float array; rows with NaN or all zeros are treated as broken.
        labels: (N,) class names, None where unlabelled.
        n_folds: folds of the stratified split, >= 2 (5 by default; reduced to the size of
            the largest class when that is smaller).
        seed: seeds the fold shuffle, PCA, the inner hold-out and the regression.
        C: inverse L2 strength of the logistic regression on the scaled features, or
            ``"auto"`` (default): chosen per outer fold from ``C_GRID`` (0.01 to 10) by
            held-out log loss. 0.1 was the best fixed value on Fashion-MNIST, 1 on real photos.
        dimensions: PCA components before the regression, None for all dimensions, or
            ``"auto"`` (default): chosen from ``DIMENSION_GRID`` (64, 128, 256, all), with a
            cosine k-nearest-neighbour vote (``NEIGHBOR_GRID``) as a non-linear alternative.
            With either setting ``"auto"`` the probabilities are also temperature-scaled
            (one temperature per outer fold, fitted on the inner hold-out). Both explicit:
            the earlier fixed model, no selection, no scaling. Fewer than
            ``MIN_SELECTION_SAMPLES`` cross-validated samples: the fixed settings (C 0.1,
            128 dimensions) replace ``"auto"``.
        max_iter: lbfgs iterations per fit.
        sample_keys: (N,) stable keys (sample ids); when given, folds and fits use the order
            of the sorted keys, so the output does not depend on the input order.
        standardize: scale every PCA component to unit variance instead of one global scale
            (worse in our measurements; kept for comparison).
        selection_budget: bound on the candidate fits, in estimated single-thread seconds
            for the whole run (a deterministic estimate from the array sizes, so the choice
            does not depend on the machine's load); the most expensive candidates are left
            out first and listed in ``info["selection"]["left_out_for_budget"]``.
        pixels: the images themselves, for a small CNN compared per fold with the embedding
            model (:mod:`curation.finders.pixel_classifier`): a
            :class:`~curation.finders.pixel_classifier.PixelImages`, or an (N, side, side) or
            (N, side, side, 1 or 3) array in input order; None (default): embeddings only,
            exactly as before. Needs the selection (``C`` or ``dimensions`` ``"auto"``).
        pixel_model: ``"auto"`` (default): when ``pixels`` are given, the images small, the
            data set large enough and the estimated cost within ``pixel_budget``, train the
            CNN per fold and use, per fold, the embedding model, the CNN or their mixture,
            whichever has the lowest log loss on the inner hold-out; ``"cnn"``: the CNN alone
            in every fold (no size or budget rule); ``"off"``: never. What was chosen, the
            inner losses, the time, or why it was skipped: ``info["pixel_model"]``.
        pixel_budget: bound on the CNN's estimated seconds for the whole run (a deterministic
            estimate from the sizes, see ``pixel_classifier.estimated_seconds``).

    Returns:
        An :class:`OutOfFoldPredictions`.

    Raises:
        FinderInputError: malformed input, fewer than two classes, or no class with at least
            two usable samples (nothing can be cross-validated); ``pixel_model="cnn"``
            without ``pixels``.
    """
    embeddings, labels = _validate(embeddings, labels, n_folds, dimensions, C)
    if not (isinstance(selection_budget, (int, float)) and np.isfinite(selection_budget) and selection_budget > 0):
        raise FinderInputError(f"selection_budget: expected a positive number of estimated seconds, got {selection_budget!r}")
    images = _validate_pixels(pixels, pixel_model, pixel_budget, len(embeddings))
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these matrices are small, and on a shared CPU OpenBLAS's spinning
    # threads made the whole run 5-15x slower (PCA 8.9 vs 1.8 CPU-s, each fit 6.4 vs 0.4).
    with threadpool_limits(limits=1, user_api="blas"):
        return _compute(embeddings, labels, n_folds=n_folds, seed=seed, C=C, dimensions=dimensions,
                        max_iter=max_iter, sample_keys=sample_keys, standardize=standardize,
                        selection_budget=float(selection_budget), images=images, pixel_model=pixel_model,
                        pixel_budget=float(pixel_budget))


def _validate_pixels(pixels: Any, pixel_model: str, pixel_budget: float, n_samples: int):
    """The pixels as a PixelImages (or None); FinderInputError for malformed ones."""
    from curation.finders import pixel_classifier

    if pixel_model not in pixel_classifier.PIXEL_MODELS:
        raise FinderInputError(f"pixel_model: expected one of {', '.join(pixel_classifier.PIXEL_MODELS)}, got {pixel_model!r}")
    if not (isinstance(pixel_budget, (int, float)) and np.isfinite(pixel_budget) and pixel_budget > 0):
        raise FinderInputError(f"pixel_budget: expected a positive number of estimated seconds, got {pixel_budget!r}")
    if pixels is None:
        if pixel_model == "cnn":
            raise FinderInputError("pixel_model: 'cnn' needs the images: pixels is None")
        return None
    try:
        images = pixel_classifier.as_pixel_images(pixels)
    except ValueError as error:
        raise FinderInputError(f"pixels: {error}") from None
    if len(images.pixels) != n_samples or len(images.readable) != n_samples:
        raise FinderInputError(f"pixels: expected {n_samples} images to match the embeddings, got {len(images.pixels)}")
    return images


def _pixel_comparison(images, pixel_model: str, pixel_budget: float, selector: "_Selector", splits, cross_validated,
                      always_train, y_full: np.ndarray, n_samples: int, n_predict: int, n_classes: int, seed: int):
    """(PixelComparison or None, the reason when None) for this run."""
    from curation.finders import pixel_classifier

    if images is None:
        return None, "no pixels given"
    if pixel_model == "off":
        return None, "off (pixel_model='off')"
    readable = images.readable
    train_sizes, predict_sizes = [], []
    for fold, (train, test) in enumerate(splits):
        train_rows = np.concatenate([cross_validated[train], always_train])
        inner_train, inner_test = selector._holdout(fold, train_rows, y_full, full=True)
        train_sizes.append(int(readable[inner_train].sum()))
        predict_sizes.append(int(readable[inner_test].sum() + readable[cross_validated[test]].sum()) + n_predict)
    use, reason, estimate, device = pixel_classifier.plan(
        images, n_samples, len(cross_validated), train_sizes, predict_sizes, pixel_model=pixel_model, budget=pixel_budget)
    if not use:
        return None, reason
    return pixel_classifier.PixelComparison(images, n_classes, seed=seed, force_cnn=pixel_model == "cnn", device=device,
                                            threads=pixel_classifier.default_threads(), estimate=estimate), "ok"


def _compute(embeddings: np.ndarray, labels: np.ndarray, *, n_folds: int, seed: int, C: float | str,
             dimensions: int | None | str, max_iter: int, sample_keys: Sequence[Any] | np.ndarray | None,
             standardize: bool, selection_budget: float, images=None, pixel_model: str = "auto",
             pixel_budget: float = DEFAULT_PIXEL_BUDGET) -> OutOfFoldPredictions:
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

    y_full = np.full(n_samples, -1, dtype=np.int64)
    y_full[labelled_rows] = y_labelled
    trainable = order[labelled[order] & usable[order]]  # labelled + usable, canonical order
    singleton_class = counts[y_full[trainable]] < 2
    cross_validated = trainable[~singleton_class]
    always_train = trainable[singleton_class]
    usable_ordered = order[usable[order]]

    folds = int(min(n_folds, np.bincount(y_full[cross_validated]).max()))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pred_probs = np.tile(prior, (len(labelled_rows), 1))
    checkable = np.zeros(len(labelled_rows), dtype=bool)
    with warnings.catch_warnings():
        # "The least populated class in y has only N members": expected for small classes; each
        # of their samples still lands in a different fold, so the class is in every training set.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(np.zeros(len(cross_validated)), y_full[cross_validated]))
    unlabelled_rows = np.flatnonzero(~labelled)
    unlabelled_probs = np.tile(prior, (len(unlabelled_rows), 1))
    predictable = unlabelled_rows[usable[unlabelled_rows]]
    small = [classes[index] for index in np.flatnonzero(counts == 1)]
    common = {
        "n_folds": folds,
        "n_folds_requested": int(n_folds),
        "seed": seed,
        "max_iter": int(max_iter),
        "n_labelled": int(len(labelled_rows)),
        "n_unlabelled": int(len(unlabelled_rows)),
        "single_sample_classes": small,
        "broken_embeddings": int((~usable).sum()),
    }

    wants_selection = C == AUTO or dimensions == AUTO
    if wants_selection and len(cross_validated) >= MIN_SELECTION_SAMPLES:
        selector = _Selector(embeddings[usable_ordered], usable_ordered, n_samples, len(classes), seed=seed,
                             max_iter=int(max_iter), standardize=standardize, C=C, dimensions=dimensions)
        comparison, pixel_reason = _pixel_comparison(images, pixel_model, pixel_budget, selector, splits, cross_validated,
                                                     always_train, y_full, n_samples, len(predictable), len(classes), seed)
        for fold, (train, test) in enumerate(splits):
            train_rows = np.concatenate([cross_validated[train], always_train])
            test_rows = cross_validated[test]
            probabilities = selector.fit_predict_fold(fold, train_rows, y_full, test_rows, budget=selection_budget / folds)
            if comparison is not None:
                inner_train, inner_test = selector._holdout(fold, train_rows, y_full, full=True)
                chosen = selector.chosen[-1]

                def embedding_predict(train_part, predict_part, chosen=chosen):
                    return selector._predict(chosen, train_part, y_full, predict_part)

                probabilities = comparison.fold(fold, inner_train, inner_test, test_rows, y_full, probabilities,
                                                embedding_predict, predictable).chosen
            pred_probs[position_in_labelled[test_rows]] = probabilities
            checkable[position_in_labelled[test_rows]] = True
        if len(predictable):
            unlabelled_probs[usable[unlabelled_rows]] = selector.fit_predict_all(trainable, y_full, predictable)
            mixed = comparison.unlabelled_probabilities() if comparison is not None else None
            if mixed is not None:
                unlabelled_probs[usable[unlabelled_rows]] = mixed
        info = {**selector.summary(), **common, "n_uncheckable": int((~checkable).sum())}
        if comparison is not None:
            info["pixel_model"] = comparison.summary()
            if any(weight > 0 for weight in comparison.weights):
                info["model"] += "; per fold mixed with a small CNN on the pixels where the inner hold-out preferred it"
        else:
            info["pixel_model"] = {"used": False, "reason": pixel_reason}
        return OutOfFoldPredictions(pred_probs, classes, labelled, checkable, unlabelled_probs, info)

    fixed_C = FIXED_C if C == AUTO else C
    fixed_dimensions = FIXED_DIMENSIONS if dimensions == AUTO else dimensions
    model = _Model(dimensions=fixed_dimensions, C=float(fixed_C), max_iter=int(max_iter), seed=seed, standardize=standardize)
    reduced = model.fit_features(embeddings[usable_ordered])
    features = np.zeros((n_samples, reduced.shape[1]))
    features[usable_ordered] = reduced
    for train, test in splits:
        train_rows = np.concatenate([cross_validated[train], always_train])
        test_rows = cross_validated[test]
        probabilities = model.fit_predict(features[train_rows], y_full[train_rows], features[test_rows], len(classes))
        pred_probs[position_in_labelled[test_rows]] = probabilities
        checkable[position_in_labelled[test_rows]] = True

    if len(predictable):
        # Predictions are per row, so only the training order needs to be canonical.
        probabilities = model.fit_predict(features[trainable], y_full[trainable], features[predictable], len(classes))
        unlabelled_probs[usable[unlabelled_rows]] = probabilities

    if images is None:
        pixel_reason = "no pixels given"
    elif pixel_model == "off":
        pixel_reason = "off (pixel_model='off')"
    elif wants_selection:
        pixel_reason = (f"{len(cross_validated)} cross-validated samples, too few to compare the pixel model "
                        f"(the selection needs {MIN_SELECTION_SAMPLES})")
    else:
        pixel_reason = "explicit C and dimensions: no inner selection to compare the pixel model on"
    info = {
        "model": "multinomial logistic regression (lbfgs) on PCA features" + (", standardised" if standardize else ""),
        **common,
        "C": float(fixed_C),
        "dimensions": fixed_dimensions,
        "pca_components": model.info.get("pca_components"),
        "pca_explained_variance": model.info.get("pca_explained_variance"),
        "n_uncheckable": int((~checkable).sum()),
        "temperature": None,
        "selection": (f"skipped: {len(cross_validated)} cross-validated samples, fewer than the {MIN_SELECTION_SAMPLES} "
                      f"needed to choose settings; used C={fixed_C}, dimensions={fixed_dimensions}")
                     if wants_selection else "off: explicit C and dimensions",
        "pixel_model": {"used": False, "reason": pixel_reason},
    }
    return OutOfFoldPredictions(pred_probs, classes, labelled, checkable, unlabelled_probs, info)


def out_of_fold_probabilities(
    embeddings: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    *,
    n_folds: int = 5,
    seed: int = 0,
    C: float | str = DEFAULT_C,
    dimensions: int | None | str = DEFAULT_DIMENSIONS,
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
