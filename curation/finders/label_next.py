"""What to label next: uncertain samples, chosen so that they are not copies of one hard case.

Uncertainty comes from the same cross-validated classifier as the label checks (margin
between the two most likely classes: 1 = a coin toss, 0 = certain). Unlabelled samples use
a model fitted on every labelled one; labelled samples use their out-of-fold prediction,
so a confidently wrong label does not look certain. The list is built greedily: each pick
maximises ``uncertainty x (1 - similarity to the closest sample already picked)``, so a
cluster of near-identical hard cases contributes one sample, not fifty. With no labels at
all, or too few to train a classifier (one class, or a single example of each), every
sample is equally uncertain and the list is a diverse cover of the data (k-centre greedy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from curation.finders.base import FinderContext, FinderInputError, FinderResult, FinderSpec, FindingField
from curation.finders.classifier import label_mask, uncertainty_scores, usable_rows


@dataclass(frozen=True)
class LabelNextConfig:
    """``budget``: how many samples to propose; ``include_labelled``: also propose labelled
    samples whose own label the classifier is unsure of (relabel candidates)."""

    budget: int = 50
    include_labelled: bool = True
    seed: int = 0


def sample_uncertainty(context: FinderContext, seed: int = 0) -> np.ndarray:
    """(N,) uncertainty in [0, 1]; NaN for broken vectors. All ones when no classifier can be
    cross-validated: nothing is labelled, only one class is, or no class has two samples with
    a usable embedding (the cold start: one example of each class)."""
    count = len(context)
    usable = usable_rows(context.embeddings)
    labels = context.labels if context.labels is not None else np.full(count, None, dtype=object)
    has_label = label_mask(labels)
    uncertainty = np.where(usable, 1.0, np.nan)
    class_sizes = pd.Series([str(label) for label in labels[has_label & usable]], dtype=object).value_counts()
    if len(class_sizes) < 2 or class_sizes.max() < 2:
        return uncertainty
    predictions = context.out_of_fold(seed=seed)  # shared with the mislabel finder and the balance report
    labelled_rows = np.flatnonzero(predictions.labelled)
    unlabelled_rows = np.flatnonzero(~predictions.labelled)
    if len(labelled_rows):
        uncertainty[labelled_rows] = np.where(predictions.checkable, uncertainty_scores(predictions.pred_probs), np.nan)
    if len(unlabelled_rows):
        uncertainty[unlabelled_rows] = uncertainty_scores(predictions.unlabelled_probs)
    return np.where(usable, uncertainty, np.nan)


def find_label_next(context: FinderContext, config: LabelNextConfig = LabelNextConfig()) -> FinderResult:
    """Propose ``budget`` samples to label next. Columns: ``score`` (uncertainty),
    ``is_issue`` (proposed), ``label_next_rank`` (1 = first; NaN when not proposed)."""
    if config.budget < 1:
        raise FinderInputError(f"label-next budget: expected at least 1, got {config.budget}")
    count = len(context)
    uncertainty = sample_uncertainty(context, config.seed)
    labels = context.labels if context.labels is not None else np.full(count, None, dtype=object)
    eligible = np.isfinite(uncertainty)
    if not config.include_labelled:
        eligible &= ~label_mask(labels)
    ranks = np.full(count, np.nan)
    closest = np.full(count, -1.0)  # cosine similarity to the nearest picked sample
    weight = np.nan_to_num(uncertainty, nan=0.0)
    for rank in range(1, min(config.budget, int(eligible.sum())) + 1):
        gain = np.where(eligible & np.isnan(ranks), weight * (1.0 - np.maximum(closest, 0.0)) + 1e-12, -np.inf)
        pick = int(np.argmax(gain))
        ranks[pick] = rank
        closest = np.maximum(closest, context.embeddings @ context.embeddings[pick])
    table = pd.DataFrame({"score": uncertainty, "is_issue": np.isfinite(ranks), "label_next_rank": ranks},
                         index=pd.Index(context.ids, name="id"))
    proposed = int(np.isfinite(ranks).sum())
    unlabelled = int((~label_mask(labels) & np.isfinite(ranks)).sum())
    summary = f"{proposed} samples proposed for labelling ({unlabelled} unlabelled, {proposed - unlabelled} to re-check)"
    return FinderResult("label_next", table, summary, {"config": asdict(config)})


SPEC = FinderSpec(
    name="label_next",
    title="label next",
    find=find_label_next,
    config_type=LabelNextConfig,
    fields=(
        # Defined for unlabelled samples too, hence its own field and not the mislabel finder's.
        FindingField("uncertainty_score", "float", column="score"),
        FindingField("label_next_rank", "int", column="label_next_rank"),
        FindingField("label_next_flag", "bool", column="is_issue"),
    ),
    flag_field="label_next_flag",
    queue_score="uncertainty_score",
    # A proposal is advice: on its own it never outranks a confident finding (uncertainty is often ~1).
    queue_weight=0.5,
    describe=lambda row: f"worth labelling next (uncertainty {row['uncertainty_score']:.2f})",
    findings_columns=("uncertainty_score",),
    findings_version=1,
)
