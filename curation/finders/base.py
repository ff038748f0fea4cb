"""The contract every finder follows (after cleanlab's issue managers).

Input: a :class:`FinderContext` (ids, normalised embeddings, labels, splits, the shared
neighbour graph) and a frozen config dataclass. Output: a :class:`FinderResult` whose
``table`` has one row per sample id with ``score`` in [0, 1] (higher = more likely a
problem), ``is_issue``, and finder-specific columns; a one-line ``summary``; and an
``info`` dict with the thresholds and settings used, so a result can be explained and
reproduced. Finders validate their input once and raise :class:`FinderInputError` with
what was expected and what arrived.

A finder module also exports ``SPEC``, a frozen :class:`FinderSpec`: its name, title, the
function and config type, the sample fields it writes (:class:`FindingField`), its flag,
how it ranks and explains a sample in the review queue, what it requires of the data and
which findings-CSV columns it contributes. The analysis, the findings CSV, the review queue
and the pages iterate the registered specs (:func:`curation.finders.finder_specs`), so a
new finder is one module plus one registry line.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from curation.errors import CurationError


class FinderInputError(CurationError, ValueError):
    """The finder cannot run on this input; the message says what was expected and what arrived."""


@dataclass
class FinderResult:
    name: str
    table: pd.DataFrame  # index: sample id; columns: score, is_issue, ...
    summary: str
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "score" in self.table and len(self.table):
            scores = self.table["score"].to_numpy(dtype=float)
            finite = scores[~np.isnan(scores)]
            if finite.size and (finite.min() < 0 or finite.max() > 1):
                raise AssertionError(f"finder {self.name!r} produced scores outside [0, 1]")


@dataclass
class FinderContext:
    """Everything finders share, computed once per (dataset, embedding field).

    Attributes:
        ids: sample ids, aligned with every array below (N,).
        embeddings: (N, D) float32, L2-normalised (zero rows for broken vectors).
        labels: (N,) object array of class names, None where unlabelled; or None if the
            dataset has no label field.
        splits: (N,) object array of split names (train/val/test), None where unknown; or None.
        filepaths: (N,) file paths.
        neighbor_indices: (N, k) int64 row indices of each sample's nearest other samples,
            most similar first (-1 where fewer than k exist).
        neighbor_similarities: (N, k) float32 cosine similarities matching ``neighbor_indices``.
        model_name: the embedding model's registry name (zero-shot needs a text encoder).
        embedding_field, label_field: the sample fields the embeddings and labels came from.
        split_source: where the splits came from, in words (``"field 'split'"``, ``"none"``).
        pixel_digests: (N,) hashes of the decoded pixels (None where undecodable), for exact
            duplicates; None when not computed.
        class_text_embeddings: {class name: (D,) text embedding} for the zero-shot signal of
            the mislabel finder without loading a model; None to use the model's encoder.
        signatures: (N,) low-resolution image signatures
            (:func:`curation.finders.verification.compute_signatures`) for verifying near
            duplicates; None when not computed.
        duplicate_verifier: the near-duplicate verifier calibrated on this dataset and
            embedding field (:meth:`VerifierCalibration.to_dict`); None when there is none,
            and then ``duplicate_verifier_note`` says why (the duplicate and leakage finders
            fall back to a cosine threshold).
        annotator_votes: several annotators' votes on the samples
            (:class:`curation.annotators.Votes`), or None when the dataset has none.
        extras: free-form inputs of callers outside this package (kept for compatibility:
            ``extras["class_text_embeddings"]`` is read when the typed field is None).

    The out-of-fold classifier predictions are computed once per context and settings, and
    shared by every finder that needs them: :meth:`out_of_fold`.
    """

    ids: np.ndarray
    embeddings: np.ndarray
    filepaths: np.ndarray
    neighbor_indices: np.ndarray
    neighbor_similarities: np.ndarray
    labels: np.ndarray | None = None
    splits: np.ndarray | None = None
    model_name: str | None = None
    embedding_field: str | None = None
    label_field: str | None = None
    split_source: str | None = None
    pixel_digests: Sequence[str | None] | None = None
    class_text_embeddings: dict[str, np.ndarray] | None = None
    signatures: np.ndarray | None = None
    duplicate_verifier: dict[str, Any] | None = None
    duplicate_verifier_note: str | None = None
    annotator_votes: Any = None
    extras: dict[str, Any] = field(default_factory=dict)
    # Not an __init__ argument, so ``dataclasses.replace`` (which may change the labels) starts empty.
    _out_of_fold_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # The decoded small images for the pixel model, read once from ``filepaths`` (see out_of_fold).
    _pixel_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    # Verified candidate pairs, shared by the duplicate and leakage finders of one analysis.
    _pairs_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def out_of_fold(self, **settings):
        """Out-of-fold predictions of the cross-validated classifier on this context's
        embeddings and labels (:func:`curation.finders.classifier.compute_out_of_fold_predictions`
        with ``settings`` such as ``n_folds``, ``seed``, ``C``, ``dimensions``), fitted once per
        distinct settings and shared: the mislabel and label-next finders and the balance
        report of one analysis use one fit.

        The pixel model: unless ``pixel_model="off"``, explicit ``C`` and ``dimensions`` or
        explicit ``pixels``, the images of ``filepaths`` are passed as ``pixels`` when they
        are small and the data set eligible (decoded once per context,
        :func:`curation.finders.pixel_classifier.pixels_for_context`); otherwise the reason
        is in ``info["pixel_model"]``.

        The cache key is the settings after the function's own defaults are applied (so
        ``seed=0`` and nothing mean the same), the identity of the embedding, label and pixel
        arrays and the labels themselves (a context whose labels were replaced refits).

        Raises:
            FinderInputError: as the classifier (fewer than two classes, ...); not cached.
        """
        from curation.finders import classifier, pixel_classifier

        labels = self.labels if self.labels is not None else np.full(len(self), None, dtype=object)
        present = classifier.label_mask(labels)
        given = np.array([str(value) if keep else None for value, keep in zip(labels, present)], dtype=object)
        keys = [str(i) for i in self.ids]
        bound = inspect.signature(classifier.compute_out_of_fold_predictions).bind(
            self.embeddings, given, sample_keys=keys, **settings)
        bound.apply_defaults()
        arguments = bound.arguments
        pixel_reason = None
        if (arguments.get("pixels") is None and arguments.get("pixel_model", "off") != "off"
                and classifier.AUTO in (arguments.get("C"), arguments.get("dimensions"))):
            images, pixel_reason = pixel_classifier.pixels_for_context(
                self.filepaths, int(present.sum()), arguments["n_folds"], arguments["pixel_budget"],
                arguments["pixel_model"], self._pixel_cache)
            if images is not None:
                arguments["pixels"] = images
            elif arguments["pixel_model"] == "cnn":
                raise FinderInputError(f"pixel_model: 'cnn' needs the images, and they cannot be used: {pixel_reason}")
        pixels = arguments.get("pixels")
        fixed = {name: value for name, value in arguments.items()
                 if name not in ("embeddings", "labels", "sample_keys", "pixels")}
        key = (id(self.embeddings), id(self.labels), tuple(given), tuple(sorted(fixed.items())),
               None if pixels is None else id(pixels))
        if key not in self._out_of_fold_cache:
            result = classifier.compute_out_of_fold_predictions(*bound.args, **bound.kwargs)
            if pixels is None and pixel_reason is not None:
                result.info["pixel_model"] = {"used": False, "reason": pixel_reason}
            self._out_of_fold_cache[key] = result
        return self._out_of_fold_cache[key]


# ----------------------------------------------------------------------------------------
# Finder specs
# ----------------------------------------------------------------------------------------

FIELD_KINDS = ("float", "int", "str", "bool", "list")
# What a finder may require of the context, and the reason recorded when it is missing.
REQUIREMENTS: dict[str, tuple[Callable[[FinderContext], bool], str]] = {
    "labels": (lambda context: context.labels is not None, "no label field"),
    "votes": (lambda context: context.annotator_votes is not None,
              "no annotator votes: import several annotations per sample with `curation import-annotations`"),
    "splits": (lambda context: context.splits is not None,
               "no splits: no split field named, none written by `curation split`, no `split` field, "
               "no train/val/test tags"),
}


@dataclass(frozen=True)
class FindingField:
    """One sample field a finder writes.

    Attributes:
        name: the sample field.
        kind: ``float``, ``int``, ``str``, ``bool`` or ``list`` (of strings).
        column: the column of the finder's result table the values come from (NaN and
            missing rows become None; ``int`` values are made ints, ``bool`` values bools
            with None as False, ``list`` values lists).
        derive: instead of ``column``, ``derive(result, context) -> list`` aligned with
            ``context.ids`` (for values computed from several columns or the context).
    """

    name: str
    kind: str
    column: str | None = None
    derive: Callable[[FinderResult, FinderContext], list] | None = None

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"field {self.name!r}: kind must be one of {', '.join(FIELD_KINDS)}, got {self.kind!r}")
        if (self.column is None) == (self.derive is None):
            raise ValueError(f"field {self.name!r}: give exactly one of column and derive")

    def values(self, result: FinderResult, context: FinderContext) -> list:
        """The field's value per sample of ``context`` (None where it does not apply)."""
        if self.derive is not None:
            return list(self.derive(result, context))
        column = result_column(result, self.column, context.ids)
        if self.kind == "int":
            return [None if v is None else int(v) for v in column]
        if self.kind == "bool":
            return [bool(v) for v in column]
        if self.kind == "list":
            return [None if v is None else list(v) for v in column]
        return column


def result_column(result: FinderResult | None, column: str, ids: np.ndarray) -> list:
    """``result.table[column]`` aligned with ``ids``; None for NaN, missing rows or a missing column."""
    if result is None or column not in result.table:
        return [None] * len(ids)
    values = result.table[column].reindex(ids)
    return [None if (isinstance(v, float) and np.isnan(v)) else v for v in values.tolist()]


def filepaths_of(column: str) -> Callable[[FinderResult, FinderContext], list]:
    """A ``derive`` for :class:`FindingField`: the file path of the sample whose id is in ``column``."""

    def derive(result: FinderResult, context: FinderContext) -> list:
        row_of = {sample_id: row for row, sample_id in enumerate(context.ids)}
        return [None if sample_id is None else context.filepaths[row_of[sample_id]]
                for sample_id in result_column(result, column, context.ids)]

    return derive


@dataclass(frozen=True)
class FinderSpec:
    """Everything the product needs to know about one finder; each finder module exports one
    as ``SPEC`` and the registry (:data:`curation.finders.FINDER_REGISTRY`) lists the modules.

    Attributes:
        name: registry name (``curation analyze --finders NAME``); the owner of its fields.
        title: a short noun for the pages ("suspected mislabel").
        find: ``find(context, config) -> FinderResult`` (``find(context)`` without a config).
        config_type: the frozen config dataclass ``find`` takes, or None.
        fields: the sample fields it writes (:class:`FindingField`), flag included.
        flag_field: the boolean field of :attr:`fields` that says "this is an issue" (the
            result's ``is_issue``); the review queue is the samples with any flag.
        queue_score: the field that ranks a flagged sample in the review queue, in [0, 1].
        queue_weight: how much that score counts in the queue's priority (noisy-OR).
        describe: ``describe(row) -> str``, why a queue row is flagged, in words; ``row`` is
            a dict of the sample's fields (:attr:`queue_fields` among them).
        queue_fields: the sample fields ``describe`` reads besides :attr:`queue_score`.
        requires: what the context must hold (keys of :data:`REQUIREMENTS`); else the finder
            is skipped with the requirement's reason.
        context_needs: context attributes the analysis fills before the finder runs
            (``"pixel_digests"``).
        dataset_config: ``dataset_config(dataset, context) -> config``: the config to use on
            this dataset when the caller gives none (e.g. a calibrated threshold), or None.
        findings_columns: the sample fields it contributes to the findings CSV, in order.
        findings_version: the version of the findings CSV contract that added its columns:
            version 1 columns sit before ``cluster``; later ones after it, so the documented
            columns never move (new finders keep the default 2).
        added_findings_columns: ``((version, columns), ...)``: columns an existing finder
            added in a later contract version; they go after every column of earlier versions.
    """

    name: str
    title: str
    find: Callable[..., FinderResult]
    fields: tuple[FindingField, ...]
    flag_field: str
    queue_score: str
    describe: Callable[[dict], str]
    config_type: type | None = None
    queue_weight: float = 1.0
    queue_fields: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    context_needs: tuple[str, ...] = ()
    dataset_config: Callable[[Any, FinderContext], Any] | None = None
    findings_columns: tuple[str, ...] = ()
    findings_version: int = 2
    added_findings_columns: tuple[tuple[int, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"finder {self.name!r}: a field is listed twice in {names}")
        flag = {f.name: f for f in self.fields}.get(self.flag_field)
        if flag is None or flag.kind != "bool":
            raise ValueError(f"finder {self.name!r}: flag_field {self.flag_field!r} must be one of its bool fields")
        added = [c for _, columns in self.added_findings_columns for c in columns]
        missing = [c for c in (self.queue_score, *self.findings_columns, *added) if c not in names]
        if missing:
            raise ValueError(f"finder {self.name!r}: {missing} are not among its fields {names}")
        unknown = [r for r in self.requires if r not in REQUIREMENTS]
        if unknown:
            raise ValueError(f"finder {self.name!r}: unknown requirement {unknown[0]!r}; known: {', '.join(REQUIREMENTS)}")
        if not 0 <= self.queue_weight <= 1:
            raise ValueError(f"finder {self.name!r}: queue_weight must be in [0, 1], got {self.queue_weight}")

    @property
    def field_kinds(self) -> dict[str, str]:
        """{sample field: kind}, in declaration order."""
        return {f.name: f.kind for f in self.fields}

    def missing_requirement(self, context: FinderContext) -> str | None:
        """Why this finder cannot run on ``context`` (the first unmet requirement), or None."""
        for requirement in self.requires:
            present, reason = REQUIREMENTS[requirement]
            if not present(context):
                return reason
        return None

    @property
    def function(self) -> Callable[..., FinderResult]:
        """:attr:`find` as its module holds it now (so replacing the module's function, as
        tests do to make a finder fail, is honoured)."""
        module = sys.modules.get(getattr(self.find, "__module__", ""), None)
        current = getattr(module, getattr(self.find, "__name__", ""), None) if module is not None else None
        return current if callable(current) else self.find

    def run(self, context: FinderContext, config: Any = None) -> FinderResult:
        function = self.function
        return function(context) if config is None else function(context, config)
