"""Leakage: near duplicates that sit in different splits (the same image in train and test).

Splits come from the rule of :func:`curation.analysis.split_source`; the threshold is the
near-duplicate one (:class:`~curation.finders.duplicates.DuplicateConfig`, calibrated per
embedding field).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from curation.finders.base import FinderContext, FinderInputError, FinderResult, FinderSpec, FindingField, filepaths_of
from curation.finders.duplicates import DuplicateConfig, dataset_config, resolve_method


def find_leaks(context: FinderContext, config: DuplicateConfig = DuplicateConfig()) -> FinderResult:
    """Near duplicates that sit in different splits (the same image in train and test), decided
    as the duplicate finder decides (``config.method``; verified pairs are shared with it).

    Columns: ``score`` (the verified probability, or under the cosine method the similarity,
    of the sample's best partner in another split; 0 if none reaches the threshold),
    ``is_issue``, ``leak_id``, ``leak_similarity`` (that pair's cosine), ``leak_split``.
    """
    if context.splits is None:
        raise FinderInputError("leakage needs splits: expected a split field or train/val/test tags, found neither")
    method, fallback = resolve_method(context, config)
    if method == "verified":
        from curation.finders.verification import find_verified_leaks

        result = find_verified_leaks(context, context.duplicate_verifier, context.signatures,
                                     threshold=config.probability_threshold)
        result.info["method"] = "verified"
        return result
    result = _find_cosine_leaks(context, config)
    result.info["method"] = "cosine"
    if fallback:
        result.info["fallback_reason"] = fallback
    return result


def _find_cosine_leaks(context: FinderContext, config: DuplicateConfig) -> FinderResult:
    count = len(context)
    leak_row = np.full(count, -1, dtype=np.int64)
    leak_similarity = np.full(count, np.nan)
    for row in range(count):
        own = context.splits[row]
        if own is None:
            continue
        for j, similarity in zip(context.neighbor_indices[row], context.neighbor_similarities[row]):
            if j < 0 or similarity < config.threshold:
                break
            other = context.splits[j]
            if other is not None and other != own:
                leak_row[row], leak_similarity[row] = j, similarity
                break
    is_issue = leak_row >= 0
    table = pd.DataFrame({
        "score": np.where(is_issue, np.clip(np.nan_to_num(leak_similarity), 0, 1), 0.0),
        "is_issue": is_issue,
        "leak_id": [context.ids[j] if j >= 0 else None for j in leak_row],
        "leak_similarity": leak_similarity,
        "leak_split": [context.splits[j] if j >= 0 else None for j in leak_row],
    }, index=pd.Index(context.ids, name="id"))
    pairs = {tuple(sorted((row, int(j)))) for row, j in enumerate(leak_row) if j >= 0}
    summary = f"{len(pairs)} cross-split near-duplicate pairs ({int(is_issue.sum())} samples) at similarity >= {config.threshold:.3f}"
    return FinderResult("leakage", table, summary, {"config": asdict(config), "pairs": len(pairs)})


def leak_pairs(result: FinderResult, context: FinderContext) -> pd.DataFrame:
    """Each cross-split pair once, most similar first: ``similarity`` and per side
    ``{a,b}_id``, ``{a,b}_filepath``, ``{a,b}_split``, ``{a,b}_label``."""
    row_of = {sample_id: row for row, sample_id in enumerate(context.ids)}
    flagged = result.table[result.table["is_issue"]]
    pairs: dict[tuple[str, str], float] = {}
    for sample_id, leak in flagged.iterrows():
        key = tuple(sorted((sample_id, leak["leak_id"])))
        pairs[key] = max(pairs.get(key, 0.0), float(leak["leak_similarity"]))
    rows = []
    for (a, b), similarity in sorted(pairs.items(), key=lambda item: -item[1]):
        row = {"similarity": similarity}
        for side, sample_id in (("a", a), ("b", b)):
            index = row_of[sample_id]
            row.update({f"{side}_id": sample_id, f"{side}_filepath": context.filepaths[index],
                        f"{side}_split": context.splits[index],
                        f"{side}_label": None if context.labels is None else context.labels[index]})
        rows.append(row)
    columns = ["similarity"] + [f"{s}_{c}" for s in "ab" for c in ("id", "filepath", "split", "label")]
    return pd.DataFrame(rows, columns=columns)


def describe(row: dict) -> str:
    score = row.get("leak_score")
    score = row.get("leak_similarity") if score is None else score
    return f"same image in another split: {Path(row['leak_filepath'] or '?').name} (score {score or 0.0:.3f})"


SPEC = FinderSpec(
    name="leakage",
    title="split leak",
    find=find_leaks,
    config_type=DuplicateConfig,
    fields=(
        FindingField("leak_filepath", "str", derive=filepaths_of("leak_id")),
        FindingField("leak_similarity", "float", column="leak_similarity"),
        FindingField("leak_flag", "bool", column="is_issue"),
        FindingField("leak_score", "float", column="score"),
    ),
    flag_field="leak_flag",
    queue_score="leak_score",
    queue_fields=("leak_filepath", "leak_similarity"),
    describe=describe,
    requires=("splits",),
    dataset_config=dataset_config,
    findings_columns=("leak_filepath", "leak_similarity"),
    findings_version=1,
    added_findings_columns=((2, ("leak_score",)),),
)
