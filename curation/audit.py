"""Audits: estimate the share of wrong labels from a reviewed sample with known inclusion probabilities.

A design draws a stratified simple random sample without replacement (uniform is one stratum):

- ``uniform``: every labelled sample has the same chance ``n / N``.
- ``stratified``: one stratum per class, proportional allocation with at least
  ``MIN_PER_STRATUM`` draws per class, so every class gets its own estimate.
- ``score``: strata by the committed ``mislabel_score`` (quantile cuts ``SCORE_CUTS``; samples
  without a current score form their own stratum). Neyman allocation
  (``n_h`` proportional to ``N_h * sd_h``, ``sd_h`` guessed from the stratum's mean score,
  floored) oversamples high scores; every stratum keeps at least ``MIN_PER_STRATUM`` draws.
  The estimator weights each verdict by ``N_h / m_h``, so the estimate stays unbiased whatever
  the scores are; the scores only decide how narrow the interval gets.

Estimator (:func:`estimate`): the stratified (Horvitz-Thompson / Hajek) estimate
``p = sum_h W_h p_h`` with ``W_h = N_h / N``, ``p_h`` the share of wrong verdicts among the
stratum's answered samples (``unsure`` and unanswered ones are treated as missing at random
within their stratum). Variance with the finite-population correction; a domain (a class in a
design not stratified by class) uses the linearised ratio estimator. The 95% interval is a
Wilson interval on the effective sample size ``n_eff = p(1 - p) / var`` (Kish): it is
asymmetric and stays inside [0, 1] for the small counts audits have, where the Wald interval
undercovers; a stratum whose verdicts are all the same would claim zero variance, so its
variance uses ``(x + 0.5) / (m + 1)`` instead (never zero). ``benchmarks/bench_audit.py``
measures the coverage.

Storage: the audit lives in ``dataset.info['curation']['audit']`` (id, design, seed, created
time, label field, strata with sizes and draws, and per drawn sample its stratum and inclusion
probability). Drawn samples get ``audit_id``, ``audit_label`` (the label when drawn: the audit
measures the labels as they were), ``audit_verdict`` (None until answered) and
``audit_correct_label``. Starting an audit while one is open (some drawn samples unanswered)
raises :class:`AuditError` unless ``replace=True``; a new audit gets a new id, clears the old
audit's sample fields and keeps the old audit's figures in ``info['curation']['audit_history']``.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from curation.errors import CurationError, CurationInputError

DESIGNS = ("uniform", "stratified", "score")
VERDICTS = ("correct", "wrong", "unsure")
INFO_KEY = "audit"
HISTORY_KEY = "audit_history"  # summaries of earlier audits of the dataset
SCORE_FIELD = "mislabel_score"
ID_FIELD = "audit_id"
LABEL_FIELD = "audit_label"
VERDICT_FIELD = "audit_verdict"
CORRECT_LABEL_FIELD = "audit_correct_label"
SCORE_CUTS = (0.5, 0.75, 0.9, 0.95)  # quantiles of the score that bound the score strata
MIN_PER_STRATUM = 5
SD_FLOOR = 0.1  # sqrt(p(1-p)) guessed at least this (p about 1%), so a stratum is never starved
Z95 = 1.959963984540054
AUDIT_SALT = 0xA0D17


class AuditError(CurationError, RuntimeError):
    """An audit that cannot be started, answered or reported; the message says why."""


# ----------------------------------------------------------------------------- array core


def allocate(sizes: np.ndarray, n: int, sd: np.ndarray | None = None, *, min_each: int = MIN_PER_STRATUM) -> np.ndarray:
    """Integer draws per stratum summing to ``n``: at least ``min(N_h, min_each)`` each, the rest
    proportional to ``N_h * sd_h`` (Neyman; proportional when ``sd`` is None), never above ``N_h``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if n > sizes.sum():
        raise CurationInputError(f"audit size {n} is larger than the {int(sizes.sum())} samples to draw from")
    weight = sizes.astype(float) * (np.ones(len(sizes)) if sd is None else np.maximum(np.asarray(sd, float), 1e-9))
    floor = np.minimum(sizes, min_each)
    if floor.sum() > n:  # too few draws for the floor: spread them one per stratum, largest weight first
        floor = np.zeros(len(sizes), dtype=np.int64)
        for h in np.argsort(-weight, kind="stable")[:n]:
            floor[h] = 1
    counts = floor.copy()
    remaining = n - counts.sum()
    while remaining > 0:
        open_ = counts < sizes
        share = np.where(open_, weight, 0.0)
        ideal = counts + remaining * share / share.sum()
        target = np.minimum(np.floor(ideal).astype(np.int64), sizes)
        target = np.maximum(target, counts)
        added = target.sum() - counts.sum()
        if added == 0:  # largest remainders take the last draws one by one
            order = np.argsort(-(ideal - np.floor(ideal)) * open_, kind="stable")
            for h in order:
                if remaining == 0:
                    break
                if counts[h] < sizes[h]:
                    counts[h] += 1
                    remaining -= 1
            continue
        counts = target
        remaining = n - counts.sum()
    return counts


def draw(strata: np.ndarray, counts: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Simple random sampling without replacement within each stratum.

    Returns (indices drawn, sorted; their inclusion probabilities ``n_h / N_h``)."""
    strata = np.asarray(strata)
    # Salted, so an audit with seed s never repeats another seed-s draw (e.g. the noise a
    # benchmark planted with np.random.default_rng(s).choice).
    rng = np.random.default_rng([int(seed), AUDIT_SALT])
    chosen, probs = [], []
    for h, count in enumerate(counts):
        members = np.flatnonzero(strata == h)
        if count:
            chosen.append(rng.choice(members, size=int(count), replace=False))
            probs.append(np.full(int(count), count / len(members)))
    if not chosen:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    indices, pis = np.concatenate(chosen), np.concatenate(probs)
    order = np.argsort(indices)
    return indices[order], pis[order]


def score_strata(scores: np.ndarray, cuts: tuple[float, ...] = SCORE_CUTS) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Strata of ``scores`` (NaN: no score) by rank quantiles; returns (stratum per sample, names,
    guessed sd per stratum from the stratum's mean score, clipped to [0, 1] and floored)."""
    scores = np.asarray(scores, dtype=float)
    known = np.isfinite(scores)
    strata = np.full(len(scores), -1, dtype=np.int64)
    order = np.flatnonzero(known)[np.argsort(scores[known], kind="stable")]
    edges = [0] + [int(round(cut * len(order))) for cut in cuts] + [len(order)]
    names, sds = [], []
    h = 0
    for low, high in zip(edges[:-1], edges[1:]):
        if high <= low:
            continue
        strata[order[low:high]] = h
        part = np.clip(scores[order[low:high]], 0, 1)
        mean = float(part.mean())
        names.append(f"score {scores[order[low]]:.3g}-{scores[order[high - 1]]:.3g}")
        sds.append(max(math.sqrt(mean * (1 - mean)), SD_FLOOR))
        h += 1
    if (~known).any():
        strata[~known] = h
        names.append("no score")
        sds.append(0.5)
    return strata, names, np.asarray(sds)


def design_strata(design: str, labels: np.ndarray, scores: np.ndarray | None = None
                  ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """(stratum per sample, stratum names, sd guesses or None for proportional allocation)."""
    labels = np.asarray(labels, dtype=object)
    if design == "uniform":
        return np.zeros(len(labels), dtype=np.int64), ["all"], None
    if design == "stratified":
        names = sorted({str(label) for label in labels})
        index = {name: h for h, name in enumerate(names)}
        return np.array([index[str(label)] for label in labels], dtype=np.int64), names, None
    if design == "score":
        if scores is None:
            raise CurationInputError("the score design needs mislabel scores")
        return score_strata(scores)
    raise CurationInputError(f"unknown audit design {design!r}. Available: {', '.join(DESIGNS)}")


def plan(design: str, labels: np.ndarray, size: int, *, scores: np.ndarray | None = None, seed: int = 0,
         min_each: int = MIN_PER_STRATUM) -> dict[str, Any]:
    """Draw an audit on arrays: ``strata``, ``names``, ``sizes``, ``counts``, ``indices``, ``pi``."""
    if int(size) != size or size < 1:
        raise CurationInputError(f"audit size: expected a whole number >= 1, got {size!r}")
    strata, names, sd = design_strata(design, labels, scores)
    sizes = np.bincount(strata, minlength=len(names))
    counts = allocate(sizes, int(size), sd, min_each=min_each)
    indices, pi = draw(strata, counts, seed)
    return {"strata": strata, "names": names, "sizes": sizes, "counts": counts, "indices": indices, "pi": pi}


def wilson(p: float, n_eff: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a share ``p`` seen on ``n_eff`` (possibly fractional) trials."""
    if n_eff <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n_eff
    centre = (p + z * z / (2 * n_eff)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p), 0.0) / n_eff + z * z / (4 * n_eff * n_eff))
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate(strata: np.ndarray, wrong: np.ndarray, sizes: np.ndarray, *, domain: np.ndarray | None = None,
             z: float = Z95) -> dict[str, Any]:
    """Share of wrong labels from answered verdicts of a stratified sample.

    Args:
        strata: (m,) stratum of each answered verdict (unsure ones left out by the caller).
        wrong: (m,) bool, the verdict was ``wrong``.
        sizes: (H,) population size of each stratum.
        domain: (m,) bool, the verdicts in the sub-population to estimate (a class); None: all.

    Returns ``rate``, ``ci_low``, ``ci_high``, ``variance``, ``n_eff``, ``n`` (verdicts used),
    ``wrong`` (wrong verdicts used) and ``population`` (estimated size of the domain).
    Strata without verdicts are left out (their share is reweighted onto the others:
    ``strata_missing`` counts them; the estimate is then not design-unbiased).
    """
    strata = np.asarray(strata, dtype=np.int64)
    y = np.asarray(wrong, dtype=float)
    sizes = np.asarray(sizes, dtype=float)
    d = np.ones(len(y), dtype=float) if domain is None else np.asarray(domain, dtype=float)
    m_h = np.bincount(strata, minlength=len(sizes)).astype(float)
    answered = m_h > 0
    covered = sizes[answered].sum()
    missing = int((~answered & (sizes > 0)).sum())
    n_used = int(d.sum())
    result = {"n": n_used, "wrong": int((y * d).sum()), "strata_missing": missing}
    if n_used == 0:
        return {**result, "rate": None, "ci_low": None, "ci_high": None, "variance": None, "n_eff": 0.0,
                "population": 0.0}
    w = (sizes / np.where(answered, m_h, 1))[strata]  # expansion weight N_h / m_h of each verdict
    if domain is not None:
        w = w * (sizes.sum() / covered)  # reweight strata without verdicts away
    pop_d = float((w * d).sum())
    rate = float((w * y * d).sum() / pop_d)
    if domain is None:
        # sum_h W_h^2 (1 - f_h) s_h^2 / m_h, s_h^2 from a smoothed share where verdicts agree.
        variance = 0.0
        for h in np.flatnonzero(answered):
            x, m = y[strata == h].sum(), m_h[h]
            share = x / m if 0 < x < m else (x + 0.5) / (m + 1)
            s2 = share * (1 - share) * (m / (m - 1) if m > 1 else 1.0)
            variance += (sizes[h] / covered) ** 2 * max(0.0, 1 - m / sizes[h]) * s2 / m
    else:
        # Linearised ratio: z_i = d_i (y_i - R) / N_d; var = sum_h (1-f_h) m_h/(m_h-1) sum (w z - mean)^2.
        u = w * d * (y - rate) / pop_d
        variance = 0.0
        for h in np.flatnonzero(answered):
            part, m = u[strata == h], m_h[h]
            if m > 1:
                variance += max(0.0, 1 - m / sizes[h]) * m / (m - 1) * float(((part - part.mean()) ** 2).sum())
    pq = rate * (1 - rate)
    n_eff = pq / variance if variance > 0 and pq > 0 else float(n_used)
    low, high = wilson(rate, n_eff, z)
    return {**result, "rate": rate, "ci_low": low, "ci_high": high, "variance": float(variance),
            "n_eff": float(n_eff), "population": pop_d}


def verdicts_for_margin(rate: float | None, n_answered: int, n_eff: float, margin: float, z: float = Z95,
                        population: int | None = None) -> int | None:
    """Verdicts (in total, same design) for a 95% half-width of about ``margin``: the needed
    effective size ``z^2 p(1-p) / margin^2`` times the design effect seen so far
    (``n_answered / n_eff``); before any verdict, p = 0.5 and no design effect. With the
    ``population`` size, the finite-population correction ``n / (1 + (n - 1) / N)`` applies,
    so it never asks for more verdicts than there are samples."""
    if not margin > 0:
        return None
    p = 0.5 if rate is None else min(max(rate, 0.01), 0.99)
    deff = n_answered / n_eff if n_answered and n_eff > 0 else 1.0
    needed = z * z * p * (1 - p) / margin ** 2 * deff
    if population:
        needed = needed / (1 + (needed - 1) / population)
    return int(math.ceil(needed))


# ----------------------------------------------------------------------------- datasets


def _fo():
    import fiftyone as fo

    return fo


def current_audit(dataset) -> dict | None:
    from curation.datasets import curation_info

    dataset._doc.reload("info")
    audit = curation_info(dataset).get(INFO_KEY)
    return dict(audit) if audit else None


def _require_audit(dataset) -> dict:
    """The current audit, or AuditError saying how to start one."""
    audit = current_audit(dataset)
    if not audit:
        raise AuditError(f"dataset {dataset.name!r} has no audit; start one with `curation audit start`")
    return audit


def _label_field(dataset) -> str:
    from curation.datasets import default_label_field

    label_field = default_label_field(dataset)
    if not label_field:
        raise AuditError(f"dataset {dataset.name!r} has no classification field to audit")
    return label_field


def _ensure_fields(dataset) -> None:
    fo = _fo()
    for name in (ID_FIELD, LABEL_FIELD, VERDICT_FIELD, CORRECT_LABEL_FIELD):
        if not dataset.has_sample_field(name):
            dataset.add_sample_field(name, fo.StringField)


def _audit_samples(dataset, audit_id: str):
    from fiftyone import ViewField as F

    return dataset.match(F(ID_FIELD) == audit_id)


@dataclass
class AuditStart:
    audit_id: str
    design: str
    ids: list[str]
    strata: list[dict]


def start_audit(dataset, size: int, design: str = "uniform", seed: int = 0, *, replace: bool = False) -> AuditStart:
    """Draw ``size`` labelled samples for review with the given design; see the module doc.

    Raises:
        AuditError: an audit is open (some drawn samples unanswered) and ``replace`` is False,
            no labelled samples, or no current mislabel scores for the score design.
        CurationInputError: unknown design, size not in 1..labelled samples.
    """
    from curation.datasets import curation_info, now_iso, update_curation_info

    if design not in DESIGNS:
        raise CurationInputError(f"unknown audit design {design!r}. Available: {', '.join(DESIGNS)}")
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise CurationInputError(f"audit size: expected a whole number >= 1, got {size!r}")
    existing = current_audit(dataset)
    if existing and not replace:
        pending = _audit_samples(dataset, existing["id"]).exists(VERDICT_FIELD, False).count() \
            if dataset.has_sample_field(ID_FIELD) else 0
        if pending:
            raise AuditError(f"audit {existing['id']} is open ({pending} of {len(existing['samples'])} drawn samples "
                             "unanswered); answer them, or start again with --replace to discard it")
    label_field = _label_field(dataset)
    labelled = dataset.exists(f"{label_field}.label")
    fields = ["id", f"{label_field}.label"]
    if design == "score":
        from curation.analysis import current_values

        ids, labels = labelled.values(fields)
        scores = current_values(labelled, [SCORE_FIELD])[SCORE_FIELD]
        scores = np.array([np.nan if s is None else float(s) for s in scores], dtype=float)
        if not np.isfinite(scores).any():
            raise AuditError(f"the score design needs current mislabel scores; run `curation analyze --dataset {dataset.name}` first")
    else:
        ids, labels = labelled.values(fields)
        scores = None
    if not ids:
        raise AuditError(f"dataset {dataset.name!r} has no labelled samples in {label_field!r} to audit")
    if size > len(ids):
        raise CurationInputError(f"audit size {size} is larger than the {len(ids)} labelled samples")
    drawn = plan(design, np.array(labels, dtype=object), int(size), scores=scores, seed=int(seed))
    history = list(curation_info(dataset).get(HISTORY_KEY) or [])
    if existing:  # keep the old audit's figures; its per-sample marks make way for the new draw
        old = audit_report(dataset)
        history.append({key: old[key] for key in ("audit_id", "design", "created_at", "n_drawn", "n_answered",
                                                  "n_wrong", "error_rate", "ci_low", "ci_high")})
        _clear(dataset, existing["id"])
    audit_id = uuid.uuid4().hex[:12]
    chosen = [ids[i] for i in drawn["indices"]]
    strata = [{"name": name, "size": int(n), "drawn": int(c)}
              for name, n, c in zip(drawn["names"], drawn["sizes"], drawn["counts"])]
    record = {"id": audit_id, "design": design, "seed": int(seed), "size": int(size), "created_at": now_iso(),
              "label_field": label_field, "population": len(ids), "strata": strata,
              "samples": {sample_id: [int(drawn["strata"][i]), float(pi)]
                          for sample_id, i, pi in zip(chosen, drawn["indices"], drawn["pi"])}}
    _ensure_fields(dataset)
    dataset.set_values(ID_FIELD, {sample_id: audit_id for sample_id in chosen}, key_field="id")
    dataset.set_values(LABEL_FIELD, {sample_id: str(labels[i]) for sample_id, i in zip(chosen, drawn["indices"])},
                       key_field="id")
    update_curation_info(dataset, **{INFO_KEY: record, HISTORY_KEY: history[-50:]})
    return AuditStart(audit_id, design, chosen, strata)


def _clear(dataset, audit_id: str) -> None:
    ids = _audit_samples(dataset, audit_id).values("id") if dataset.has_sample_field(ID_FIELD) else []
    for name in (ID_FIELD, LABEL_FIELD, VERDICT_FIELD, CORRECT_LABEL_FIELD):
        if ids and dataset.has_sample_field(name):
            dataset.set_values(name, dict.fromkeys(ids), key_field="id")


@dataclass
class AnswerResult:
    recorded: int = 0
    relabeled: int = 0
    rejected: list[str] = field(default_factory=list)


def answer(dataset, verdicts: Iterable[Mapping[str, Any]], *, relabel: bool = True) -> AnswerResult:
    """Record reviewer verdicts: rows with ``id``, ``verdict`` (correct|wrong|unsure) and an
    optional ``label`` (the right class, for ``wrong``). Bad rows are rejected with a message
    naming the row (1-based, as in the file after its header) and the rest are recorded; a row
    repeated for the same id: the last one counts. With ``relabel``, a wrong verdict with a
    label relabels the sample (a ``relabel`` decision with source ``audit``).

    Raises:
        AuditError: no audit started.
    """
    from curation.decisions import is_sample_id, record_decision

    audit = _require_audit(dataset)
    members = audit["samples"]
    result = AnswerResult()
    accepted: dict[str, tuple[str, str | None]] = {}
    candidates = []
    for row_number, row in enumerate(verdicts, start=1):
        if not isinstance(row, Mapping):
            result.rejected.append(f"row {row_number}: expected columns id, verdict, label")
            continue
        sample_id = str(row.get("id") or "").strip()
        verdict = str(row.get("verdict") or "").strip().lower()
        label = row.get("label")
        label = " ".join(str(label).split()) if label is not None else ""
        shown = sample_id if len(sample_id) <= 40 else sample_id[:40] + "..."
        if not is_sample_id(sample_id):
            result.rejected.append(f"row {row_number}: id {shown!r} is not a sample id")
        elif sample_id not in members:
            candidates.append((len(result.rejected), row_number, sample_id))
            result.rejected.append(f"row {row_number}: sample {sample_id} is not in audit {audit['id']}")
        elif verdict not in VERDICTS:
            result.rejected.append(f"row {row_number}: verdict {verdict[:40]!r} is not one of {', '.join(VERDICTS)}")
        elif len(label) > 200:
            result.rejected.append(f"row {row_number}: label longer than 200 characters")
        else:
            accepted[sample_id] = (verdict, label if verdict == "wrong" and label else None)
    if candidates:  # say which ids do not exist at all rather than only "not in the audit"
        known = set(dataset.select(list({sid for _, _, sid in candidates})).values("id"))
        for index, row_number, sample_id in candidates:
            if sample_id not in known:
                result.rejected[index] = f"row {row_number}: no sample {sample_id} in dataset {dataset.name!r}"
    if not accepted:
        return result
    _ensure_fields(dataset)
    present = set(_audit_samples(dataset, audit["id"]).select(list(accepted)).values("id"))
    for sample_id in [sid for sid in accepted if sid not in present]:
        result.rejected.append(f"sample {sample_id}: no longer in the dataset or audit; skipped")
        accepted.pop(sample_id)
    dataset.set_values(VERDICT_FIELD, {sid: v for sid, (v, _) in accepted.items()}, key_field="id")
    dataset.set_values(CORRECT_LABEL_FIELD, {sid: label for sid, (_, label) in accepted.items()}, key_field="id")
    result.recorded = len(accepted)
    if relabel:
        drawn_labels = dict(zip(*_audit_samples(dataset, audit["id"]).select(list(accepted)).values(["id", LABEL_FIELD])))
        by_label: dict[str, list[str]] = {}
        for sample_id, (verdict, label) in accepted.items():
            if verdict == "wrong" and label and label != drawn_labels.get(sample_id):
                by_label.setdefault(label, []).append(sample_id)
        for label, sample_ids in sorted(by_label.items()):
            result.relabeled += record_decision(dataset, sample_ids, "relabel", reason=f"audit {audit['id']}",
                                                source="audit", label_field=audit["label_field"], new_label=label)
    return result


def audit_report(dataset, *, margin: float = 0.02) -> dict[str, Any]:
    """The audit's estimate of the share of wrong labels, overall and per class (see the module
    doc for the estimator and interval). Keys: ``audit_id``, ``design``, ``population``,
    ``n_drawn``, ``n_answered`` (correct + wrong), ``n_unsure``, ``n_pending``, ``n_wrong``,
    ``error_rate``, ``ci_low``, ``ci_high``, ``projected_wrong`` (with ``_low``/``_high``),
    ``margin``, ``verdicts_for_margin`` (total), ``more_verdicts_for_margin``, ``per_class``
    (class -> the same estimate keys), ``method``, ``strata``.

    Raises:
        AuditError: no audit started.
    """
    audit = _require_audit(dataset)
    samples = audit["samples"]
    if dataset.has_sample_field(ID_FIELD):
        ids, labels, verdicts = _audit_samples(dataset, audit["id"]).values(["id", LABEL_FIELD, VERDICT_FIELD])
    else:
        ids, labels, verdicts = [], [], []
    rows = [(samples[sid][0], label, verdict) for sid, label, verdict in zip(ids, labels, verdicts) if sid in samples]
    sizes = np.array([s["size"] for s in audit["strata"]], dtype=float)
    used = [(h, label, verdict == "wrong") for h, label, verdict in rows if verdict in ("correct", "wrong")]
    strata = np.array([h for h, _, _ in used], dtype=np.int64)
    wrong = np.array([w for _, _, w in used], dtype=bool)
    overall = estimate(strata, wrong, sizes)
    population = int(audit["population"])
    per_class = {}
    for name in sorted({str(label) for _, label, _ in used}):
        domain = np.array([str(label) == name for _, label, _ in used])
        part = estimate(strata, wrong, sizes, domain=domain)
        per_class[name] = {"error_rate": part["rate"], "ci_low": part["ci_low"], "ci_high": part["ci_high"],
                           "n_answered": part["n"], "n_wrong": part["wrong"],
                           "population_estimate": round(part["population"] * population / sizes.sum(), 1),
                           "projected_wrong": None if part["rate"] is None
                           else round(part["rate"] * part["population"] * population / sizes.sum(), 1)}
    n_answered = overall["n"]
    needed = verdicts_for_margin(overall["rate"], n_answered, overall["n_eff"], margin, population=population)
    rate = overall["rate"]
    return {
        "audit_id": audit["id"], "design": audit["design"], "seed": audit.get("seed"),
        "created_at": audit.get("created_at"), "label_field": audit.get("label_field"),
        "population": population, "n_drawn": len(samples), "n_answered": n_answered,
        "n_wrong": overall["wrong"], "n_unsure": sum(1 for _, _, v in rows if v == "unsure"),
        "n_pending": sum(1 for _, _, v in rows if v not in VERDICTS),
        "error_rate": rate, "ci_low": overall["ci_low"], "ci_high": overall["ci_high"],
        "n_eff": round(overall["n_eff"], 1),
        "projected_wrong": None if rate is None else round(rate * population),
        "projected_wrong_low": None if rate is None else round(overall["ci_low"] * population),
        "projected_wrong_high": None if rate is None else round(overall["ci_high"] * population),
        "margin": margin, "verdicts_for_margin": needed,
        "more_verdicts_for_margin": None if needed is None else max(0, needed - n_answered),
        "strata_without_verdicts": overall["strata_missing"],
        "per_class": per_class, "strata": audit["strata"],
        "method": "stratified (Horvitz-Thompson) estimate, Wilson 95% interval on the effective sample size; "
                  "unsure verdicts excluded",
    }
