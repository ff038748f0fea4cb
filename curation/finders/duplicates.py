"""Exact and near duplicates (leakage between splits: :mod:`curation.finders.leakage`).

Exact duplicates share decoded pixels (a hash of the RGB array, so the same image saved as
PNG and as lossless WebP still matches) or the same file bytes. Near duplicates are pairs
whose embeddings' cosine similarity reaches a threshold; they are grouped around centres
("star" grouping): a sample joins a group only if it is directly similar to the group's
centre, so long chains of pairwise-similar images never merge unrelated ones.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from curation.finders.base import FinderContext, FinderInputError, FinderResult, FinderSpec, FindingField, filepaths_of, result_column
from curation.images import ImageLoadError, image_info, load_rgb

DEFAULT_THRESHOLD = 0.95


METHODS = ("auto", "verified", "cosine")


@dataclass(frozen=True)
class DuplicateConfig:
    """How near duplicates (and leaks between splits) are decided.

    Attributes:
        method: ``"verified"``: candidate pairs from the neighbour graph, each scored by the
            verifier calibrated on this dataset (:mod:`curation.finders.verification`);
            ``"cosine"``: pairs at or above ``threshold`` cosine similarity; ``"auto"``
            (default): verified when the context holds a calibrated verifier and the image
            signatures (``analyze`` provides both), else cosine, and the result's info says why.
        threshold: the cosine threshold of the cosine method. It depends on the model;
            ``curation calibrate`` stores one per dataset. Values in [0.90, 0.98] are
            typical for CLIP ViT-B/32.
        probability_threshold: the verified probability to flag at; None: the calibrated one.
    """

    method: str = "auto"
    threshold: float = DEFAULT_THRESHOLD
    probability_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise FinderInputError(f"duplicate method: expected one of {', '.join(METHODS)}, got {self.method!r}")


def resolve_method(context: FinderContext, config: DuplicateConfig) -> tuple[str, str | None]:
    """The method ``config`` means on ``context`` and, when auto fell back to cosine, why."""
    available = context.duplicate_verifier is not None and context.signatures is not None
    if config.method == "verified" and not available:
        raise FinderInputError("verified near duplicates need a calibrated verifier and image signatures: "
                               + (context.duplicate_verifier_note or "run `curation analyze` or `curation calibrate`"))
    if config.method == "auto":
        if available:
            return "verified", None
        return "cosine", context.duplicate_verifier_note or "no calibrated verifier in this context"
    return config.method, None


def file_digest(path: str | os.PathLike) -> str | None:
    """SHA-256 of the file's bytes, or None if unreadable."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def pixel_digest(path: str | os.PathLike) -> str | None:
    """BLAKE2 hash of the decoded, upright RGB pixels and the size, or None if undecodable."""
    try:
        image = load_rgb(path)
    except ImageLoadError:
        return None
    array = np.asarray(image, dtype=np.uint8)
    return hashlib.blake2b(array.tobytes() + str(array.shape).encode(), digest_size=16).hexdigest()


def exact_duplicate_groups(digests: list[str | None]) -> np.ndarray:
    """Group number per sample (-1 when the digest is unique or missing), numbered by first occurrence."""
    groups = np.full(len(digests), -1, dtype=np.int64)
    seen: dict[str, list[int]] = {}
    for index, digest in enumerate(digests):
        if digest is not None:
            seen.setdefault(digest, []).append(index)
    next_group = 0
    for members in seen.values():
        if len(members) > 1:
            groups[members] = next_group
            next_group += 1
    return groups


def near_duplicate_groups(indices: np.ndarray, similarities: np.ndarray, threshold: float) -> np.ndarray:
    """Star grouping of the neighbour graph: group id per row, -1 when the row has no duplicate.

    Centres are taken in order of how many near duplicates they have (ties: row order), and
    claim their unassigned neighbours at or above ``threshold``. Every member is therefore
    directly similar to its centre, whatever the chain of pairs between members.
    """
    count = len(indices)
    hits = (similarities >= threshold) & (indices >= 0)
    degree = hits.sum(axis=1)
    groups = np.full(count, -1, dtype=np.int64)
    next_group = 0
    for centre in np.argsort(-degree, kind="stable"):
        if degree[centre] == 0 or groups[centre] >= 0:
            continue
        members = [int(j) for j in indices[centre][hits[centre]] if groups[j] < 0]
        if not members:
            continue
        groups[centre] = next_group
        groups[members] = next_group
        next_group += 1
    return groups


def merge_exact_groups(near: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Exact copies are near duplicates too: fold each exact group into one near group.

    An exact group joins the near group of its first member that has one, else it becomes a
    new group numbered after the near groups. Returns a new array; the inputs are unchanged.
    """
    near = np.array(near, dtype=np.int64, copy=True)
    offset = near.max() + 1 if len(near) else 0
    for group in np.unique(exact[exact >= 0]):
        members = np.flatnonzero(exact == group)
        existing = near[members][near[members] >= 0]
        near[members] = existing[0] if existing.size else offset + group
    return near


def suggest_keepers(groups: np.ndarray, filepaths: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """True for the sample to keep in each group: labelled first, then most pixels, then largest file."""
    keep = np.zeros(len(groups), dtype=bool)
    for group in np.unique(groups[groups >= 0]):
        members = np.flatnonzero(groups == group)

        def rank(index: int):
            size = image_info(filepaths[index]) or (0, 0)
            try:
                nbytes = os.path.getsize(filepaths[index])
            except OSError:
                nbytes = 0
            labelled = labels is not None and labels[index] is not None
            return (labelled, size[0] * size[1], nbytes, -index)

        keep[max(members, key=rank)] = True
    return keep


def nearest_neighbor_columns(context: FinderContext) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's most similar other sample in the shared graph: its row (-1 if none) and
    the cosine similarity (NaN if none)."""
    count = len(context)
    if not (count and context.neighbor_indices.shape[1]):
        return np.full(count, -1), np.full(count, np.nan)
    nearest = context.neighbor_indices[:, 0]
    return nearest, np.where(nearest >= 0, context.neighbor_similarities[:, 0], np.nan).astype(float)


def find_duplicates(context: FinderContext, config: DuplicateConfig = DuplicateConfig(),
                    *, pixel_digests: list[str | None] | None = None) -> FinderResult:
    """Near-duplicate groups, plus exact (pixel-identical) groups, by ``config.method``.

    Columns: ``score`` (the verified probability of the sample's most probable partner, or
    under the cosine method its similarity to the most similar other sample, in [0, 1]),
    ``is_issue`` (in a group and not its suggested keeper), ``near_duplicate_group``,
    ``exact_duplicate_group``, ``keep``, ``nearest_neighbor_id``, ``nearest_neighbor_similarity``,
    ``duplicate_partner_id`` (the partner ``score`` refers to). The verified method adds
    ``duplicate_probability``; ``info["method"]`` says which ran and, after a fallback, why.
    """
    method, fallback = resolve_method(context, config)
    if method == "verified":
        from curation.finders.verification import find_verified_duplicates

        result = find_verified_duplicates(context, context.duplicate_verifier, context.signatures,
                                          threshold=config.probability_threshold, pixel_digests=pixel_digests)
        result.info["method"] = "verified"
        return result
    result = _find_cosine_duplicates(context, config, pixel_digests)
    result.info["method"] = "cosine"
    if fallback:
        result.info["fallback_reason"] = fallback
        result.summary += f" (cosine threshold: {fallback})"
    return result


def _find_cosine_duplicates(context: FinderContext, config: DuplicateConfig,
                            pixel_digests: list[str | None] | None) -> FinderResult:
    if not 0 < config.threshold <= 1:
        raise FinderInputError(f"duplicate threshold: expected a cosine similarity in (0, 1], got {config.threshold}")
    count = len(context)
    if context.neighbor_indices.shape[0] != count:
        raise FinderInputError(f"neighbour graph has {context.neighbor_indices.shape[0]} rows for {count} samples")
    near = near_duplicate_groups(context.neighbor_indices, context.neighbor_similarities, config.threshold)
    if pixel_digests is None:
        pixel_digests = context.pixel_digests
    exact = exact_duplicate_groups(pixel_digests) if pixel_digests is not None else np.full(count, -1)
    near = merge_exact_groups(near, exact)
    keep = suggest_keepers(near, context.filepaths, context.labels)
    nearest, nearest_similarity = nearest_neighbor_columns(context)
    table = pd.DataFrame({
        "score": np.clip(np.nan_to_num(nearest_similarity, nan=0.0), 0, 1),
        "is_issue": (near >= 0) & ~keep,
        "near_duplicate_group": near,
        "exact_duplicate_group": exact,
        "keep": keep | (near < 0),
        "nearest_neighbor_id": [context.ids[j] if j >= 0 else None for j in nearest],
        "nearest_neighbor_similarity": nearest_similarity.astype(float),
        "duplicate_partner_id": [context.ids[j] if j >= 0 else None for j in nearest],
    }, index=pd.Index(context.ids, name="id"))
    groups = int(len(np.unique(near[near >= 0])))
    in_groups = int((near >= 0).sum())
    exact_groups = int(len(np.unique(exact[exact >= 0])))
    summary = (f"{groups} near-duplicate groups ({in_groups} samples, {int(table['is_issue'].sum())} suggested for removal) "
               f"at similarity >= {config.threshold:.3f}; {exact_groups} exact-duplicate groups")
    return FinderResult("duplicates", table, summary, {"config": asdict(config), "groups": groups})


def group_members(result: FinderResult, context: FinderContext) -> pd.DataFrame:
    """One row per sample in a near-duplicate group, groups largest first.

    Columns: ``group``, ``id``, ``filepath``, ``label``, ``keep`` (suggested keeper),
    ``similarity`` (cosine to the group's suggested keeper; 1.0 for the keeper itself).
    """
    table = result.table
    in_group = table[table["near_duplicate_group"] >= 0]
    if in_group.empty:
        return pd.DataFrame(columns=["group", "id", "filepath", "label", "keep", "similarity"])
    row_of = {sample_id: row for row, sample_id in enumerate(context.ids)}
    rows = []
    for group, members in in_group.groupby("near_duplicate_group", sort=False):
        keeper = members.index[members["keep"].to_numpy()][0] if members["keep"].any() else members.index[0]
        keeper_vector = context.embeddings[row_of[keeper]]
        for sample_id, member in members.iterrows():
            row = row_of[sample_id]
            rows.append({
                "group": int(group), "id": sample_id, "filepath": context.filepaths[row],
                "label": None if context.labels is None else context.labels[row], "keep": bool(member["keep"]),
                "similarity": float(context.embeddings[row] @ keeper_vector),
            })
    frame = pd.DataFrame(rows)
    sizes = frame.groupby("group")["id"].transform("size")
    frame = frame.assign(_size=sizes).sort_values(["_size", "group", "keep", "similarity"], ascending=[False, True, False, False])
    return frame.drop(columns="_size").reset_index(drop=True)


def dataset_config(dataset, context: FinderContext) -> DuplicateConfig:
    """The config ``analyze`` uses on ``dataset``: verified when ``analyze`` calibrated a
    verifier (``method="auto"``); the cosine fallback at the threshold stored for the embedding
    field by an earlier cosine calibration, else :data:`DEFAULT_THRESHOLD`. Shared by leakage."""
    from curation.analysis import stored_threshold

    return DuplicateConfig(threshold=stored_threshold(dataset, context.embedding_field) or DEFAULT_THRESHOLD)


def _groups(result: FinderResult, context: FinderContext) -> list:
    return [None if (g is None or g < 0) else int(g) for g in result_column(result, "near_duplicate_group", context.ids)]


def _keepers(result: FinderResult, context: FinderContext) -> list:
    """The suggested keeper flag of each sample in a group; None outside groups."""
    keep = result_column(result, "keep", context.ids)
    return [bool(k) if group is not None else None for k, group in zip(keep, _groups(result, context))]


def describe(row: dict) -> str:
    partner = row.get("duplicate_partner_filepath") or row.get("nearest_neighbor_filepath") or "?"
    score = row.get("duplicate_score")
    if score is None:
        score = row.get("nearest_neighbor_similarity") or 0.0
    return f"near duplicate of {Path(partner).name} (score {score:.3f}), not the suggested keeper"


SPEC = FinderSpec(
    name="duplicates",
    title="near duplicate",
    find=find_duplicates,
    config_type=DuplicateConfig,
    fields=(
        FindingField("near_duplicate_group", "int", derive=_groups),
        FindingField("nearest_neighbor_filepath", "str", derive=filepaths_of("nearest_neighbor_id")),
        FindingField("nearest_neighbor_similarity", "float", column="nearest_neighbor_similarity"),
        FindingField("duplicate_flag", "bool", column="is_issue"),
        FindingField("duplicate_keeper", "bool", derive=_keepers),
        FindingField("duplicate_score", "float", column="score"),
        FindingField("duplicate_partner_filepath", "str", derive=filepaths_of("duplicate_partner_id")),
    ),
    flag_field="duplicate_flag",
    queue_score="duplicate_score",
    queue_fields=("duplicate_partner_filepath", "nearest_neighbor_filepath", "nearest_neighbor_similarity"),
    describe=describe,
    context_needs=("pixel_digests", "signatures", "duplicate_verifier"),
    dataset_config=dataset_config,
    findings_columns=("near_duplicate_group", "nearest_neighbor_filepath", "nearest_neighbor_similarity"),
    findings_version=1,
    added_findings_columns=((2, ("duplicate_score", "duplicate_partner_filepath")),),
)
