"""Several annotations per sample: import them, measure agreement, find the consensus.

Storage: every vote lives on its sample in one ``fo.Classifications`` field (``annotations``
by default). Each ``fo.Classification`` in it has ``label`` (the class) and the attributes
``annotator``, ``source`` (``"<format>:<file name>"``) and ``time`` (the file's text, or
None). The FiftyOne App shows them as tags on the image and filters them by label and by
any of those attributes (sidebar: ``annotations`` -> ``annotator``).

Nothing a file supplies decides where anything is written: the target field is an argument,
annotator and label names are data only (names that look like paths, hold control
characters or run too long are refused, row by row).

Agreement: Krippendorff's alpha (nominal, missing votes allowed) and Fleiss' kappa (the
generalised form for a varying number of votes per sample), overall and per class; pairwise
Cohen's kappa (scikit-learn); the most confused class pairs.

Consensus: majority vote, Dawid-Skene (EM) and cleanlab's CROWDLAB (needs out-of-fold class
probabilities, from the embeddings). Gold samples give each annotator's accuracy with a
Wilson 95% interval.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from curation.errors import CurationInputError, MissingFieldError

DEFAULT_FIELD = "annotations"
FORMATS = ("auto", "csv", "labelstudio", "fields", "cvat")
METHODS = ("auto", "crowdlab", "dawid-skene", "majority")
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_NAME_CHARS = 200
MAX_PROBLEMS_KEPT = 50
MAX_VOTE_CELLS = 200_000_000
CSV_DELIMITERS = (",", ";", "\t", "|")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


# ---------------------------------------------------------------- import


@dataclass
class AnnotationImportReport:
    n_votes: int = 0
    n_samples: int = 0
    annotators: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the first MAX_PROBLEMS_KEPT
    n_problems: int = 0

    def problem(self, text: str) -> None:
        self.n_problems += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(text)

    def summary(self) -> str:
        text = (f"imported {self.n_votes:,} annotation(s) on {self.n_samples:,} sample(s) "
                f"from {len(self.annotators)} annotator(s)")
        if self.n_problems:
            text += f"; {self.n_problems:,} problem(s), each row named"
        return text


def _shown(text: Any, limit: int = 60) -> str:
    text = repr(str(text))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def check_name(value: Any, what: str) -> str:
    """A clean annotator or label name, or CurationInputError saying what is wrong."""
    if value is None:
        raise CurationInputError(f"{what} is missing")
    text = str(value).strip()
    if not text:
        raise CurationInputError(f"{what} is empty")
    if len(text) > MAX_NAME_CHARS:
        raise CurationInputError(f"{what} is {len(text):,} characters long; expected at most {MAX_NAME_CHARS}")
    if _CONTROL.search(text):
        raise CurationInputError(f"{what} {_shown(text)} holds control characters or bytes that are not UTF-8")
    if what.startswith("annotator") and ("/" in text or "\\" in text or text in (".", "..")):
        raise CurationInputError(f"{what} {_shown(text)} looks like a file path; expected a name")
    return text


_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_RESERVED = {"id", "_id", "filepath", "tags", "metadata", "media_type", "created_at", "last_modified_at"}


def check_field_name(dataset, name: Any, document_type: str) -> str:
    """A field name the library may write: an identifier, not a built-in field, and either new
    or already holding ``document_type`` (a dotted class path)."""
    text = str(name)
    if not _FIELD_NAME.fullmatch(text) or text in _RESERVED:
        raise CurationInputError(f"field name {_shown(text)}: expected letters, digits and '_' (not starting with a "
                                 f"digit, at most 64) and not a built-in field")
    if dataset.has_sample_field(text):
        existing = dataset.get_field(text)
        kind = getattr(existing, "document_type", None)
        full = f"{kind.__module__}.{kind.__name__}" if kind is not None else type(existing).__name__
        if full != document_type:
            raise CurationInputError(f"field {text!r} of dataset {dataset.name!r} holds {full}, not "
                                     f"{document_type.rsplit('.', 1)[-1]}; pick another field")
    return text


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CurationInputError(f"{path}: no such file")
    if not path.is_file():
        raise CurationInputError(f"{path}: expected a regular file")
    size = path.stat().st_size
    if size == 0:
        raise CurationInputError(f"{path}: the file is empty")
    if size > MAX_FILE_BYTES:
        raise CurationInputError(f"{path}: {size / 2**20:,.0f} MiB is more than the {MAX_FILE_BYTES // 2**20} MiB "
                                 f"an annotation file may have")


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    if suffix == ".json":
        return "labelstudio"
    if suffix == ".xml":
        return "cvat"
    raise CurationInputError(f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; "
                             f"pass --format csv|labelstudio|cvat")


class _SampleIndex:
    """Maps ids, file paths and file names to sample ids."""

    def __init__(self, dataset, folder: Path | None):
        ids, paths = dataset.values(["id", "filepath"])
        self.ids = set(ids)
        self.by_path = {os.path.normpath(p): i for i, p in zip(ids, paths)}
        names: dict[str, list[str]] = {}
        for i, p in zip(ids, paths):
            names.setdefault(os.path.basename(p), []).append(i)
        self.by_name = {name: found[0] for name, found in names.items() if len(found) == 1}
        self.folder = folder

    def find(self, *, sample_id: str | None = None, filepath: str | None = None) -> str | None:
        if sample_id:
            return sample_id if sample_id in self.ids else None
        if not filepath:
            return None
        from urllib.parse import parse_qs, unquote, urlsplit

        raw = filepath.strip()
        if raw.startswith("file://"):
            raw = unquote(raw[len("file://"):])
        elif "?" in raw:  # Label Studio's /data/local-files/?d=<path under its document root>
            local = parse_qs(urlsplit(raw).query).get("d")
            raw = local[0] if local else urlsplit(raw).path
        found = self.by_path.get(os.path.normpath(raw))
        if found is None and self.folder is not None and not os.path.isabs(raw):
            found = self.by_path.get(os.path.normpath(os.path.join(self.folder, raw)))
        if found is None:  # a URL or a path of another machine: the file name if it is unique
            found = self.by_name.get(os.path.basename(raw))
        if found is None and not raw.startswith("/"):  # a local-files path without its root slash
            found = self.by_path.get(os.path.normpath("/" + raw))
        return found


def _read_csv_rows(path: Path, report: AnnotationImportReport) -> tuple[list[str], list[tuple[int, list[str]]]]:
    text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise CurationInputError(f"{path}: the file has no rows; expected a header such as 'filepath,annotator,label'")
    delimiter = ","
    for candidate in CSV_DELIMITERS:
        if "annotator" in [name.strip().lower() for name in first.split(candidate)]:
            delimiter = candidate
            break
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, rows = None, []
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            report.problem(f"{path.name}:{reader.line_num}: cannot parse the row: {error}")
            continue
        if not any(v.strip() for v in values):
            continue
        if header is None:
            header = [v.strip().lower() for v in values]
        else:
            rows.append((reader.line_num, values))
    return header or [], rows


def _votes_from_csv(path: Path, report: AnnotationImportReport):
    header, rows = _read_csv_rows(path, report)
    key = "id" if "id" in header else "filepath" if "filepath" in header else None
    missing = [name for name in ("annotator", "label") if name not in header]
    if key is None or missing:
        need = (["filepath or id"] if key is None else []) + missing
        raise CurationInputError(f"{path}: the header {header[:8]} lacks the column(s) {', '.join(need)}; "
                                 f"expected 'filepath,annotator,label[,time]' or 'id,annotator,label[,time]'")
    col = {name: header.index(name) for name in header}
    for line, values in rows:
        where = f"{path.name}:{line}"
        if len(values) != len(header):
            report.problem(f"{where}: {len(values)} field(s), expected {len(header)} like the header")
            continue
        ref = values[col[key]].strip()
        time = values[col["time"]].strip() if "time" in col else None
        yield where, {key: ref}, values[col["annotator"]], values[col["label"]], time or None


def _ls_annotator(completed_by: Any) -> Any:
    if isinstance(completed_by, dict):
        return completed_by.get("email") or completed_by.get("username") or completed_by.get("id")
    return completed_by


def _ls_choice(result: Any) -> Any:
    if not isinstance(result, list):
        return None
    for item in result:
        value = item.get("value") if isinstance(item, dict) else None
        if isinstance(value, dict) and isinstance(value.get("choices"), list) and value["choices"]:
            return value["choices"][0]
    return None


def _votes_from_labelstudio(path: Path, report: AnnotationImportReport):
    try:
        tasks = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CurationInputError(f"{path}: not Label Studio JSON: {error}") from None
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise CurationInputError(f"{path}: expected a list of Label Studio tasks, got {type(tasks).__name__}")
    for number, task in enumerate(tasks, 1):
        where = f"{path.name}: task {number}"
        if not isinstance(task, dict):
            report.problem(f"{where}: expected an object, got {type(task).__name__}")
            continue
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        sample_id = data.get("sample_id") or data.get("id")
        ref: dict = {"id": str(sample_id)} if sample_id else {}
        if not ref:
            image = data.get("image") or next((v for v in data.values() if isinstance(v, str)), None)
            ref = {"filepath": str(image) if image else ""}
        annotations = task.get("annotations") or task.get("completions") or []
        if not isinstance(annotations, list) or not annotations:
            report.problem(f"{where}: has no annotations")
            continue
        for k, annotation in enumerate(annotations, 1):
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            label = _ls_choice(annotation.get("result"))
            time = annotation.get("updated_at") or annotation.get("created_at")
            yield f"{where} annotation {k}", ref, _ls_annotator(annotation.get("completed_by")), label, time


def _votes_from_cvat(path: Path, report: AnnotationImportReport):
    """CVAT for images 1.1: one file per job, or a task export with ``<image ... job_id=...>``.

    The annotator is the job's assignee (``meta/job/assignee`` or ``meta/task/assignee``), else
    the image's ``job_id``, else the file's stem."""
    try:
        root = ElementTree.fromstring(path.read_bytes())
    except ElementTree.ParseError as error:
        raise CurationInputError(f"{path}: not CVAT XML: {error}") from None
    default = root.findtext("meta/job/assignee") or root.findtext("meta/task/assignee") or root.findtext("meta/job/id")
    default = (default or path.stem).strip() or path.stem
    for number, image in enumerate(root.iter("image"), 1):
        where = f"{path.name}: image {number}"
        annotator = f"job-{image.get('job_id')}" if image.get("job_id") else default
        tags = [tag.get("label") for tag in image.findall("tag")]
        if not tags:
            continue
        yield where, {"filepath": image.get("name") or ""}, annotator, tags[0], None


def _store(dataset, votes: dict[str, dict[str, tuple[str, str | None]]], source: str, target: str) -> None:
    import fiftyone as fo

    if not dataset.has_sample_field(target):
        dataset.add_sample_field(target, fo.EmbeddedDocumentField, embedded_doc_type=fo.Classifications)
    ids = list(votes)
    current = dict(zip(*dataset.select(ids).values(["id", target])))
    values = {}
    for sample_id in ids:
        existing = current.get(sample_id)
        kept = [c for c in (existing.classifications if existing else [])
                if c["annotator"] not in votes[sample_id]]
        new = [fo.Classification(label=label, annotator=annotator, source=source, time=time)
               for annotator, (label, time) in votes[sample_id].items()]
        values[sample_id] = fo.Classifications(classifications=kept + new)
    dataset.set_values(target, values, key_field="id")


def import_annotations(dataset, source: str | os.PathLike | None = None, *, format: str = "auto",
                       fields: Sequence[str] | None = None, into: str = DEFAULT_FIELD) -> AnnotationImportReport:
    """Import several annotations per sample into ``dataset[into]`` (fo.Classifications).

    Args:
        source: a long CSV (``filepath`` or ``id``, ``annotator``, ``label``, optional ``time``),
            a Label Studio JSON export (one annotation per ``completed_by``) or a CVAT for images
            XML; None with ``format="fields"``.
        format: ``auto`` (from the extension), ``csv``, ``labelstudio``, ``cvat`` or ``fields``.
        fields: with ``format="fields"``: label fields of the dataset, each one annotator
            (named after the field).
        into: the field that holds the votes.

    A new vote of an annotator replaces that annotator's earlier vote on the sample. Rows that
    cannot be used are left out, each named in ``report.problems``; the rest are imported.
    """
    into = check_field_name(dataset, into, "fiftyone.core.labels.Classifications")
    if format not in FORMATS:
        raise CurationInputError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if dataset.has_sample_field(into):
        from fiftyone import ViewField as F

        if len(dataset.filter_labels(into, F("annotator").exists(False), only_matches=True).limit(1)):
            raise CurationInputError(f"field {into!r} of dataset {dataset.name!r} holds labels without an annotator "
                                     f"(not imported annotations); pick another field")
    report = AnnotationImportReport()
    votes: dict[str, dict[str, tuple[str, str | None]]] = {}
    if format == "fields" or (source is None and fields):
        if not fields:
            raise CurationInputError("format 'fields': name the label fields holding one annotator each")
        source_name = "fields"
        for name in fields:
            if not dataset.has_sample_field(name):
                raise MissingFieldError(f"dataset {dataset.name!r} has no field {name!r}")
            if name == into:
                raise CurationInputError(f"field {name!r} is the target field; pick another --into")
        raw = []
        for name in fields:
            ids, labels = dataset.values(["id", f"{name}.label"]) if _is_label_field(dataset, name) else \
                dataset.values(["id", name])
            for sample_id, label in zip(ids, labels):
                if label is not None:
                    raw.append((f"field {name}, sample {sample_id}", {"id": sample_id}, name, label, None))
        rows = iter(raw)
    else:
        if source is None:
            raise CurationInputError("name the annotation file to import")
        path = Path(source)
        _check_file(path)
        chosen = detect_format(path) if format == "auto" else format
        reader = {"csv": _votes_from_csv, "labelstudio": _votes_from_labelstudio, "cvat": _votes_from_cvat}[chosen]
        rows = reader(path, report)
        source_name = f"{chosen}:{path.name}"
    index = _SampleIndex(dataset, Path(source).parent if source else None)
    for where, ref, annotator, label, time in rows:
        try:
            annotator = check_name(annotator, "annotator")
            label = check_name(label, "label")
        except CurationInputError as error:
            report.problem(f"{where}: {error}")
            continue
        sample_id = index.find(sample_id=ref.get("id"), filepath=ref.get("filepath"))
        if sample_id is None:
            what = f"id {_shown(ref['id'])}" if ref.get("id") else f"file {_shown(ref.get('filepath', ''))}"
            report.problem(f"{where}: no sample of dataset {dataset.name!r} has the {what}")
            continue
        if annotator in votes.get(sample_id, {}):
            report.problem(f"{where}: annotator {_shown(annotator)} voted on this sample before; kept the later vote")
        votes.setdefault(sample_id, {})[annotator] = (label, None if time is None else str(time)[:64])
    if votes:
        _store(dataset, votes, source_name, into)
    report.n_samples = len(votes)
    report.n_votes = sum(len(v) for v in votes.values())
    report.annotators = sorted({a for v in votes.values() for a in v})
    return report


def _is_label_field(dataset, name: str) -> bool:
    import fiftyone as fo

    field_ = dataset.get_field(name)
    return isinstance(field_, fo.EmbeddedDocumentField) and issubclass(field_.document_type, fo.Classification)


# ---------------------------------------------------------------- votes


@dataclass
class Votes:
    """The votes as a matrix: ``matrix[i, a]`` is the class index annotator a gave sample i, -1 if none."""

    sample_ids: list[str]
    annotators: list[str]
    classes: list[str]
    matrix: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """(N, K) votes per class."""
        out = np.zeros((len(self.sample_ids), len(self.classes)), dtype=np.int64)
        rows, cols = np.nonzero(self.matrix >= 0)
        np.add.at(out, (rows, self.matrix[rows, cols]), 1)
        return out


def votes_from_table(rows: Sequence[tuple[str, str, str]], classes: Sequence[str] | None = None) -> Votes:
    """Votes from ``(sample_id, annotator, label)`` triples."""
    sample_ids = list(dict.fromkeys(r[0] for r in rows))
    annotators = sorted({r[1] for r in rows})
    classes = sorted(set(classes or []) | {r[2] for r in rows})
    s_index = {s: i for i, s in enumerate(sample_ids)}
    a_index = {a: i for i, a in enumerate(annotators)}
    c_index = {c: i for i, c in enumerate(classes)}
    if len(sample_ids) * len(annotators) > MAX_VOTE_CELLS:
        raise CurationInputError(f"{len(sample_ids):,} samples x {len(annotators):,} annotators is more than the "
                                 f"{MAX_VOTE_CELLS:,} sample-annotator cells this analysis holds in memory")
    matrix = np.full((len(sample_ids), len(annotators)), -1, dtype=np.int32)
    for s, a, c in rows:
        matrix[s_index[s], a_index[a]] = c_index[c]
    return Votes(sample_ids, annotators, list(classes), matrix)


def read_votes(dataset, field_name: str = DEFAULT_FIELD) -> Votes:
    """The votes stored in ``field_name`` (samples without votes are left out)."""
    if not dataset.has_sample_field(field_name):
        raise MissingFieldError(f"dataset {dataset.name!r} has no annotations field {field_name!r}; "
                                f"run `curation import-annotations` first")
    ids, labels, annotators = dataset.exists(field_name).values(
        ["id", f"{field_name}.classifications.label", f"{field_name}.classifications.annotator"])
    rows = [(s, a, c) for s, cs, as_ in zip(ids, labels, annotators) for c, a in zip(cs or [], as_ or [])
            if c is not None and a is not None]
    if not rows:
        raise CurationInputError(f"dataset {dataset.name!r} has no annotations in {field_name!r}")
    return votes_from_table(rows)


# ---------------------------------------------------------------- agreement


def krippendorff_alpha(matrix: np.ndarray, n_classes: int | None = None) -> float:
    """Nominal Krippendorff's alpha of an (N units, A coders) matrix of class indices, -1 missing.

    Units with fewer than two values are not pairable and are left out. NaN when fewer than
    two pairable values exist or every value is the same class."""
    matrix = np.asarray(matrix)
    k = int(n_classes if n_classes is not None else (matrix.max() + 1 if matrix.size else 0))
    counts = np.zeros((len(matrix), max(k, 1)))
    rows, cols = np.nonzero(matrix >= 0)
    np.add.at(counts, (rows, matrix[rows, cols]), 1)
    m = counts.sum(axis=1)
    counts, m = counts[m >= 2], m[m >= 2]
    if len(m) == 0:
        return float("nan")
    # coincidence matrix o[c, k] = sum_u n_uc (n_uk - [c == k]) / (m_u - 1)
    weighted = counts / (m - 1)[:, None]
    o = weighted.T @ counts - np.diag(weighted.sum(axis=0))
    n_c = o.sum(axis=1)
    n = n_c.sum()
    disagreement_observed = o.sum() - np.trace(o)
    disagreement_expected = (n_c.sum() ** 2 - (n_c ** 2).sum()) / (n - 1)
    if disagreement_expected <= 0:
        return float("nan")
    return float(1 - disagreement_observed / disagreement_expected)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of an (N, K) table of votes per class.

    Samples may have different numbers of votes (each needs two or more; others are left
    out): the per-sample agreement uses its own count, the class shares pool all votes."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=1)
    counts, n = counts[n >= 2], n[n >= 2]
    if len(n) == 0:
        return float("nan")
    p_i = ((counts * (counts - 1)).sum(axis=1)) / (n * (n - 1))
    p_j = counts.sum(axis=0) / counts.sum()
    p_e = (p_j ** 2).sum()
    if p_e >= 1:
        return float("nan")
    return float((p_i.mean() - p_e) / (1 - p_e))


def fleiss_kappa_per_class(counts: np.ndarray) -> np.ndarray:
    """(K,) Fleiss' kappa of each class against the rest (NaN for a class nobody chose)."""
    counts = np.asarray(counts, dtype=float)
    out = np.full(counts.shape[1], np.nan)
    for j in range(counts.shape[1]):
        binary = np.stack([counts[:, j], counts.sum(axis=1) - counts[:, j]], axis=1)
        if counts[:, j].sum() > 0:
            out[j] = fleiss_kappa(binary)
    return out


def cohen_kappa_pairs(votes: Votes, min_common: int = 2) -> list[dict]:
    """Cohen's kappa of every pair of annotators with ``min_common`` or more samples in common."""
    from sklearn.metrics import cohen_kappa_score

    out = []
    for a, b in combinations(range(len(votes.annotators)), 2):
        both = (votes.matrix[:, a] >= 0) & (votes.matrix[:, b] >= 0)
        n = int(both.sum())
        if n < min_common:
            continue
        x, y = votes.matrix[both, a], votes.matrix[both, b]
        if len(set(x) | set(y)) < 2:
            kappa = 1.0  # both gave one and the same class throughout
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                kappa = float(cohen_kappa_score(x, y))
        out.append({"a": votes.annotators[a], "b": votes.annotators[b], "kappa": kappa, "n": n,
                    "agreement": float((x == y).mean())})
    return out


def confused_pairs(votes: Votes, top: int = 10) -> list[dict]:
    """The class pairs annotators split on most often (counting pairs of votes on one sample)."""
    counts = votes.counts
    k = len(votes.classes)
    table = counts.T @ counts
    out = []
    for i in range(k):
        for j in range(i + 1, k):
            if table[i, j]:
                out.append({"a": votes.classes[i], "b": votes.classes[j], "count": int(table[i, j])})
    out.sort(key=lambda item: -item["count"])
    return out[:top]


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def agreement(votes: Votes) -> dict:
    """Agreement overall, per class and per annotator; JSON-ready.

    Keys: ``alpha``, ``kappa``, ``per_class`` (``{class, alpha, kappa, n_votes}``),
    ``pairs`` (Cohen's kappa), ``confused`` and ``annotators`` (``{annotator, quality,
    agreement, n, worst_class}``: quality is the Dawid-Skene estimate of the annotator's
    accuracy, agreement the share of their votes that match another annotator's vote on the
    same sample)."""
    counts = votes.counts
    per_class_kappa = fleiss_kappa_per_class(counts)
    per_class = []
    for j, name in enumerate(votes.classes):
        binary = np.where(votes.matrix < 0, -1, (votes.matrix == j).astype(np.int64))
        per_class.append({"class": name, "alpha": _nan_to_none(krippendorff_alpha(binary, 2)),
                          "kappa": _nan_to_none(per_class_kappa[j]), "n_votes": int(counts[:, j].sum())})
    ds = dawid_skene(votes)
    annotators = []
    for a, name in enumerate(votes.annotators):
        mine = votes.matrix[:, a] >= 0
        agree = total = 0
        for i in np.nonzero(mine)[0]:
            others = votes.matrix[i][(votes.matrix[i] >= 0) & (np.arange(len(votes.annotators)) != a)]
            agree += int((others == votes.matrix[i, a]).sum())
            total += len(others)
        annotators.append({"annotator": name, "quality": ds.annotator_quality[name],
                           "agreement": agree / total if total else None, "n": int(mine.sum()),
                           "worst_class": ds.worst_class.get(name)})
    return {
        "alpha": _nan_to_none(krippendorff_alpha(votes.matrix, len(votes.classes))),
        "kappa": _nan_to_none(fleiss_kappa(counts)),
        "n_samples": len(votes.sample_ids),
        "n_votes": int((votes.matrix >= 0).sum()),
        "per_class": per_class,
        "pairs": cohen_kappa_pairs(votes),
        "confused": confused_pairs(votes),
        "annotators": annotators,
    }


# ---------------------------------------------------------------- consensus


@dataclass
class ConsensusResult:
    method: str
    sample_ids: list[str]
    labels: list[str]
    quality: np.ndarray  # (N,) in [0, 1]
    annotator_quality: dict[str, float]
    worst_class: dict[str, str | None]
    probabilities: np.ndarray | None = None  # (N, K) where the method gives them
    classes: list[str] = field(default_factory=list)
    note: str | None = None


def majority_vote(votes: Votes, seed: int = 0) -> ConsensusResult:
    """The most voted class (ties broken at random, seeded); quality = share of votes for it."""
    counts = votes.counts.astype(float)
    rng = np.random.default_rng(seed)
    jitter = rng.random(counts.shape) * 1e-3
    winners = np.argmax(counts + jitter * (counts == counts.max(axis=1, keepdims=True)), axis=1)
    totals = counts.sum(axis=1)
    quality = counts[np.arange(len(counts)), winners] / np.maximum(totals, 1)
    a_quality, worst = _quality_against(votes, winners)
    return ConsensusResult("majority", votes.sample_ids, [votes.classes[w] for w in winners], quality,
                           a_quality, worst, counts / np.maximum(totals, 1)[:, None], votes.classes)


def _quality_against(votes: Votes, consensus: np.ndarray) -> tuple[dict, dict]:
    quality, worst = {}, {}
    for a, name in enumerate(votes.annotators):
        mine = votes.matrix[:, a] >= 0
        right = votes.matrix[mine, a] == consensus[mine]
        quality[name] = float(right.mean()) if mine.any() else float("nan")
        per_class = {}
        for j in np.unique(consensus[mine]):
            sel = consensus[mine] == j
            per_class[votes.classes[j]] = right[sel].mean()
        worst[name] = min(per_class, key=per_class.get) if per_class else None
    return quality, worst


def dawid_skene(votes: Votes, *, max_iter: int = 100, tol: float = 1e-6, smoothing: float = 0.01) -> ConsensusResult:
    """Dawid & Skene (1979): EM over each annotator's class confusion matrix and the class prior.

    Starts from the vote shares; ``smoothing`` is a small pseudo-count in every confusion cell.
    Annotator quality = the prior-weighted diagonal of their confusion matrix (their expected
    accuracy); worst class = the class with the lowest diagonal entry among those they saw."""
    n, a_count = votes.matrix.shape
    k = len(votes.classes)
    counts = votes.counts.astype(float)
    posterior = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    rows, cols = np.nonzero(votes.matrix >= 0)  # one entry per vote: sample, annotator, given class
    given = votes.matrix[rows, cols]
    previous = None
    for _ in range(max_iter):
        prior = np.clip(posterior.mean(axis=0), 1e-6, None)
        prior /= prior.sum()
        confusion = np.full((a_count, k, k), smoothing)  # (annotator, true, given)
        for j in range(k):
            np.add.at(confusion[:, j, :], (cols, given), posterior[rows, j])
        confusion /= confusion.sum(axis=2, keepdims=True)
        log_post = np.tile(np.log(prior), (n, 1))
        np.add.at(log_post, rows, np.log(confusion[cols, :, given]))
        log_post -= log_post.max(axis=1, keepdims=True)
        posterior = np.exp(log_post)
        posterior /= posterior.sum(axis=1, keepdims=True)
        if previous is not None and np.abs(posterior - previous).max() < tol:
            break
        previous = posterior
    winners = posterior.argmax(axis=1)
    quality, worst = {}, {}
    seen = np.zeros((a_count, k), dtype=bool)
    seen[cols, given] = True  # classes an annotator gave
    expected_true = np.zeros((a_count, k))  # how often each true class reached them
    np.add.at(expected_true, cols, posterior[rows])
    for a, name in enumerate(votes.annotators):
        diagonal = np.diag(confusion[a])
        quality[name] = float((prior * diagonal).sum())
        candidates = [j for j in range(k) if expected_true[a, j] >= 0.5 or seen[a, j]]
        worst[name] = votes.classes[min(candidates, key=lambda j: diagonal[j])] if candidates else None
    return ConsensusResult("dawid-skene", votes.sample_ids, [votes.classes[w] for w in winners],
                           posterior.max(axis=1), quality, worst, posterior, votes.classes)


def crowdlab(votes: Votes, pred_probs: np.ndarray, pred_classes: Sequence[str] | None = None) -> ConsensusResult:
    """cleanlab's CROWDLAB (``get_label_quality_multiannotator``) with out-of-fold ``pred_probs``.

    ``pred_probs`` rows follow ``votes.sample_ids``; its columns follow ``pred_classes``
    (default ``votes.classes``). Classes missing on either side get a tiny probability."""
    import pandas as pd
    from cleanlab.multiannotator import get_label_quality_multiannotator

    pred_classes = list(pred_classes or votes.classes)
    classes = sorted(set(votes.classes) | set(pred_classes))
    probs = np.full((len(votes.sample_ids), len(classes)), 1e-6)
    for j, name in enumerate(pred_classes):
        probs[:, classes.index(name)] = np.asarray(pred_probs)[:, j]
    probs /= probs.sum(axis=1, keepdims=True)
    remap = np.array([classes.index(c) for c in votes.classes])
    labels = np.where(votes.matrix >= 0, remap[np.maximum(votes.matrix, 0)], -1).astype(float)
    labels[votes.matrix < 0] = np.nan
    frame = pd.DataFrame(labels, columns=votes.annotators)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = get_label_quality_multiannotator(frame, probs, verbose=False)
        except ValueError as error:
            raise CurationInputError(f"CROWDLAB cannot use these votes: {error}; try --method dawid-skene") from None
    table, stats = result["label_quality"], result["annotator_stats"]
    consensus = table["consensus_label"].to_numpy().astype(int)
    quality = {str(name): float(stats.loc[name, "annotator_quality"]) for name in stats.index}
    worst = {str(name): classes[int(stats.loc[name, "worst_class"])] for name in stats.index}
    return ConsensusResult("crowdlab", votes.sample_ids, [classes[c] for c in consensus],
                           table["consensus_quality_score"].to_numpy(dtype=float), quality, worst, None, classes)


def out_of_fold_probs(embeddings: np.ndarray, labels: Sequence[str], **kwargs) -> tuple[np.ndarray, list[str]]:
    """Out-of-fold class probabilities from the project's shared classifier."""
    from curation.finders.classifier import compute_out_of_fold_predictions

    oof = compute_out_of_fold_predictions(embeddings, list(labels), **kwargs)
    return oof.pred_probs, list(oof.classes)


def consensus(votes: Votes, method: str = "auto", *, embeddings: np.ndarray | None = None,
              pred_probs: np.ndarray | None = None, pred_classes: Sequence[str] | None = None) -> ConsensusResult:
    """The consensus by ``method``; ``auto`` picks CROWDLAB when embeddings (or pred_probs) are
    given for every sample, else Dawid-Skene when some samples have two or more votes, else
    majority vote. ``embeddings`` rows follow ``votes.sample_ids``."""
    if method not in METHODS:
        raise CurationInputError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    multi = (votes.matrix >= 0).sum(axis=1) >= 2
    note = None
    if method == "auto":
        if pred_probs is not None or embeddings is not None:
            method = "crowdlab"
        elif multi.any():
            method = "dawid-skene"
            note = "no embeddings: used Dawid-Skene (CROWDLAB needs embeddings)"
        else:
            method = "majority"
    if method == "majority":
        result = majority_vote(votes)
    elif method == "dawid-skene":
        result = dawid_skene(votes)
    else:
        if pred_probs is None:
            if embeddings is None:
                raise CurationInputError("method crowdlab needs embeddings; run `curation embed` or pick "
                                         "--method dawid-skene")
            first = majority_vote(votes).labels
            pred_probs, pred_classes = out_of_fold_probs(embeddings, first)
        if len(votes.annotators) < 2:
            raise CurationInputError("method crowdlab needs two or more annotators")
        result = crowdlab(votes, pred_probs, pred_classes)
    result.note = note
    return result


def vote_embeddings(dataset, votes: Votes, field_name: str) -> np.ndarray | None:
    """(N, D) embeddings of the voted samples in ``votes.sample_ids`` order from ``field_name``,
    or None when any of them has none (CROWDLAB needs every one)."""
    vectors = dataset.select(votes.sample_ids, ordered=True).values(field_name)
    if len(vectors) != len(votes.sample_ids) or any(vector is None for vector in vectors):
        return None
    return np.asarray(vectors, dtype=float)


def write_consensus(dataset, result: ConsensusResult, into: str = "consensus") -> None:
    """Store the consensus as ``fo.Classification`` in ``into`` (with ``confidence`` = quality and
    ``method``) and its quality in ``<into>_quality`` (``consensus_quality`` by default)."""
    import fiftyone as fo

    into = check_field_name(dataset, into, "fiftyone.core.labels.Classification")
    if dataset.has_sample_field(into) and len(dataset.exists(into).exists(f"{into}.method", False).limit(1)):
        raise CurationInputError(f"field {into!r} of dataset {dataset.name!r} holds labels no consensus wrote "
                                 f"(a ground truth?); pick another field")
    if dataset.has_sample_field(f"{into}_quality") and \
            type(dataset.get_field(f"{into}_quality")).__name__ not in ("FloatField", "IntField"):
        raise CurationInputError(f"field {into + '_quality'!r} exists and holds something else than numbers; pick another --into")
    values = {s: fo.Classification(label=label, confidence=float(q), method=result.method)
              for s, label, q in zip(result.sample_ids, result.labels, result.quality)}
    dataset.set_values(into, values, key_field="id")
    dataset.set_values(f"{into}_quality", dict(zip(result.sample_ids, map(float, result.quality))), key_field="id")


# ---------------------------------------------------------------- gold


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a binomial proportion."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def gold_labels(dataset, *, field_name: str | None = None, tag: str | None = None,
                label_field: str = "ground_truth") -> dict[str, str]:
    """The known answers: ``{sample id: label}`` from ``field_name`` (a Classification or string
    field, samples where it is set), or from ``label_field`` of the samples tagged ``tag``."""
    view = dataset
    if tag is not None:
        view = dataset.match_tags(tag)
        field_name = field_name or label_field
    if not field_name:
        raise CurationInputError("gold samples: name a gold field or a tag")
    if not dataset.has_sample_field(field_name):
        raise MissingFieldError(f"dataset {dataset.name!r} has no field {field_name!r}")
    path = f"{field_name}.label" if _is_label_field(dataset, field_name) else field_name
    ids, labels = view.exists(field_name).values(["id", path])
    return {s: str(label) for s, label in zip(ids, labels) if label is not None}


def gold_accuracy(votes: Votes, gold: dict[str, str]) -> list[dict]:
    """Each annotator's accuracy on the gold samples they labelled, with a Wilson 95% interval."""
    rows = [i for i, s in enumerate(votes.sample_ids) if s in gold]
    out = []
    for a, name in enumerate(votes.annotators):
        n = correct = 0
        for i in rows:
            given = votes.matrix[i, a]
            if given >= 0:
                n += 1
                correct += votes.classes[given] == gold[votes.sample_ids[i]]
        low, high = wilson_interval(correct, n)
        out.append({"annotator": name, "n": n, "correct": correct,
                    "accuracy": correct / n if n else None, "ci_low": low, "ci_high": high})
    return out
