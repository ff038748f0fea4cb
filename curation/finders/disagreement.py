"""Disagreement: samples whose annotators split, or whose consensus contradicts the label.

Needs several votes per sample (``curation import-annotations``; ``analyze`` reads them
into ``context.annotator_votes``). The consensus is the one ``curation consensus`` computes
with its default method (:func:`curation.annotators.consensus`, ``auto``): CROWDLAB on
out-of-fold probabilities of the shared classifier fitted to the embeddings, which weighs
each annotator by estimated quality. Per sample with votes:

- ``consensus_label`` and ``consensus_quality`` (in [0, 1], the method's confidence),
- ``annotator_agreement``: the share of its votes that agree with the consensus,
- ``score`` = 1 - ``consensus_quality``;
- ``is_issue``: the votes split and the consensus quality is below ``quality_threshold``,
  or the consensus differs from the dataset's label (when the sample has one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from curation.finders.base import FinderContext, FinderInputError, FinderResult, FinderSpec, FindingField


@dataclass(frozen=True)
class DisagreementConfig:
    """``method``: consensus method (``auto``, ``crowdlab``, ``dawid-skene``, ``majority``);
    ``quality_threshold``: split votes below this consensus quality are flagged."""

    method: str = "auto"
    quality_threshold: float = 0.8


def find_disagreement(context: FinderContext, config: DisagreementConfig = DisagreementConfig()) -> FinderResult:
    """Score the samples that have annotator votes (see the module docstring); samples
    without votes get NaN scores and are never flagged.

    Raises:
        FinderInputError: no votes in the context, or a bad setting.
    """
    from curation.annotators import consensus

    votes = context.annotator_votes
    if votes is None:
        raise FinderInputError("disagreement needs annotator votes: run `curation import-annotations` first")
    if not 0 < config.quality_threshold <= 1:
        raise FinderInputError(f"disagreement quality_threshold: expected a value in (0, 1], got {config.quality_threshold}")
    row_of = {str(sample_id): row for row, sample_id in enumerate(context.ids)}
    present = [index for index, sample_id in enumerate(votes.sample_ids) if sample_id in row_of]
    if not present:
        raise FinderInputError("disagreement: none of the voted samples is among the analysed (embedded) samples")
    rows = np.array([row_of[votes.sample_ids[index]] for index in present])
    votes = type(votes)([votes.sample_ids[i] for i in present], votes.annotators, votes.classes, votes.matrix[present])
    embeddings = context.embeddings[rows] if config.method in ("auto", "crowdlab") else None
    try:
        result = consensus(votes, config.method, embeddings=embeddings)
    except ValueError as error:  # CurationInputError: a method the votes cannot support
        raise FinderInputError(f"disagreement: {error}") from error
    class_index = {name: position for position, name in enumerate(votes.classes)}
    chosen = np.array([class_index.get(label, -1) for label in result.labels])
    voted = votes.matrix >= 0
    n_votes = voted.sum(axis=1)
    agreeing = ((votes.matrix == chosen[:, None]) & voted).sum(axis=1)
    count = len(context)
    label = np.full(count, None, dtype=object)
    quality = np.full(count, np.nan)
    agreement = np.full(count, np.nan)
    split = np.zeros(count, dtype=bool)
    label[rows] = result.labels
    quality[rows] = np.clip(np.asarray(result.quality, dtype=float), 0.0, 1.0)
    agreement[rows] = agreeing / np.maximum(n_votes, 1)
    split[rows] = agreeing < n_votes
    given = context.labels
    contradicts = np.zeros(count, dtype=bool)
    if given is not None:
        contradicts = np.array([g is not None and c is not None and str(g) != str(c) for g, c in zip(given, label)])
    is_issue = (split & (quality < config.quality_threshold)) | contradicts
    table = pd.DataFrame({
        "score": 1.0 - quality, "is_issue": is_issue, "consensus_label": label, "consensus_quality": quality,
        "annotator_agreement": agreement,
    }, index=pd.Index(context.ids, name="id"))
    summary = (f"{int(is_issue.sum())} of {len(rows)} voted samples flagged ({int(split.sum())} with split votes, "
               f"{int(contradicts.sum())} whose consensus differs from the label); consensus by {result.method}"
               + (f" ({result.note})" if result.note else ""))
    info = {"config": asdict(config), "method": result.method, "voted_samples": int(len(rows)),
            "annotators": {name: round(float(value), 4) for name, value in result.annotator_quality.items()},
            "split": int(split.sum()), "contradicts_label": int(contradicts.sum())}
    return FinderResult("disagreement", table, summary, info)


def describe(row: dict) -> str:
    agreement = row.get("annotator_agreement")
    share = f"{agreement:.0%} of the votes agree" if agreement is not None else "votes split"
    return f"annotators disagree: consensus {row.get('consensus_label')!r} ({share})"


SPEC = FinderSpec(
    name="disagreement",
    title="annotator disagreement",
    find=find_disagreement,
    config_type=DisagreementConfig,
    fields=(
        FindingField("consensus_label", "str", column="consensus_label"),
        FindingField("consensus_quality", "float", column="consensus_quality"),
        FindingField("annotator_agreement", "float", column="annotator_agreement"),
        FindingField("disagreement_score", "float", column="score"),
        FindingField("disagreement_flag", "bool", column="is_issue"),
    ),
    flag_field="disagreement_flag",
    queue_score="disagreement_score",
    queue_fields=("consensus_label", "annotator_agreement"),
    describe=describe,
    requires=("votes",),
    context_needs=("annotator_votes",),
    findings_columns=("consensus_label", "consensus_quality", "annotator_agreement"),
)
