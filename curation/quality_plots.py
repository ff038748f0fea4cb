"""Figures and display tables for the label-quality pages (Annotators, Audit).

No streamlit here: pages draw what these return; every number comes from
:mod:`curation.annotators` and :mod:`curation.audit`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from curation.annotators import Votes


def kappa_heatmap(annotators: list[str], pairs: list[dict]) -> go.Figure:
    """Annotator-vs-annotator Cohen's kappa (``pairs`` from ``agreement()['pairs']``); blank
    where two annotators share fewer than two samples; the diagonal is 1."""
    index = {name: i for i, name in enumerate(annotators)}
    size = len(annotators)
    kappa = np.full((size, size), np.nan)
    common = np.zeros((size, size), dtype=int)
    np.fill_diagonal(kappa, 1.0)
    for pair in pairs:
        a, b = index.get(pair["a"]), index.get(pair["b"])
        if a is None or b is None:
            continue
        kappa[a, b] = kappa[b, a] = pair["kappa"]
        common[a, b] = common[b, a] = pair["n"]
    text = [["" if np.isnan(value) else f"{value:.2f}" for value in row] for row in kappa]
    figure = go.Figure(go.Heatmap(
        z=kappa, x=annotators, y=annotators, zmin=-1, zmax=1, colorscale="RdBu", text=text,
        texttemplate="%{text}" if size <= 20 else None, customdata=common,
        hovertemplate="%{y} vs %{x}<br>kappa %{z:.3f}<br>%{customdata} samples in common<extra></extra>",
        colorbar={"title": "Cohen's kappa"}))
    figure.update_layout(height=min(160 + 40 * size, 700), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         yaxis={"autorange": "reversed"})
    return figure


def annotator_table(agreement: dict, gold: list[dict] | None = None) -> pd.DataFrame:
    """The annotator table: quality, agreement, samples done, worst class and, with ``gold``
    (from ``gold_accuracy``), the gold accuracy and its 95% interval."""
    rows = []
    by_name = {row["annotator"]: row for row in gold or []}
    for row in agreement["annotators"]:
        item = {"annotator": row["annotator"], "quality": row["quality"], "agreement": row["agreement"],
                "samples": row["n"], "worst class": row["worst_class"]}
        if gold is not None:
            mine = by_name.get(row["annotator"], {})
            item["gold samples"] = mine.get("n", 0)
            item["gold accuracy"] = mine.get("accuracy")
            item["gold 95% interval"] = (f"{mine['ci_low']:.2f} – {mine['ci_high']:.2f}" if mine.get("n") else "")
        rows.append(item)
    return pd.DataFrame(rows).sort_values("quality", ascending=False, na_position="last").reset_index(drop=True)


def per_class_table(agreement: dict) -> pd.DataFrame:
    return pd.DataFrame(agreement["per_class"], columns=["class", "alpha", "kappa", "n_votes"]).rename(
        columns={"n_votes": "votes"})


def disagreements(votes: Votes) -> pd.DataFrame:
    """Samples whose votes are split: ``id``, ``votes`` (``[(annotator, label)]``), ``n_votes``,
    ``top_share`` (share of the most voted class); most split first."""
    counts = votes.counts
    totals = counts.sum(axis=1)
    top = counts.max(axis=1) if counts.size else np.zeros(len(totals))
    split = np.nonzero((totals >= 2) & (top < totals))[0]
    rows = []
    for i in split:
        given = [(votes.annotators[a], votes.classes[c]) for a, c in enumerate(votes.matrix[i]) if c >= 0]
        rows.append({"id": votes.sample_ids[i], "votes": given, "n_votes": int(totals[i]),
                     "top_share": float(top[i] / totals[i])})
    frame = pd.DataFrame(rows, columns=["id", "votes", "n_votes", "top_share"])
    return frame.sort_values(["top_share", "n_votes"], ascending=[True, False], kind="stable").reset_index(drop=True)


def audit_class_table(report: dict) -> pd.DataFrame:
    """The report's per-class estimates as a table (most wrong first)."""
    rows = [{"class": name, "error rate": part["error_rate"], "95% low": part["ci_low"], "95% high": part["ci_high"],
             "answered": part["n_answered"], "wrong": part["n_wrong"], "projected wrong": part["projected_wrong"]}
            for name, part in report.get("per_class", {}).items()]
    frame = pd.DataFrame(rows, columns=["class", "error rate", "95% low", "95% high", "answered", "wrong",
                                        "projected wrong"])
    return frame.sort_values("error rate", ascending=False, na_position="last").reset_index(drop=True)


def audit_class_figure(report: dict) -> go.Figure:
    """Per-class error rate with its 95% interval as error bars."""
    table = audit_class_table(report).dropna(subset=["error rate"])
    figure = go.Figure(go.Bar(
        x=table["class"], y=table["error rate"],
        error_y={"type": "data", "symmetric": False, "array": table["95% high"] - table["error rate"],
                 "arrayminus": table["error rate"] - table["95% low"]},
        customdata=table["answered"], hovertemplate="%{x}: %{y:.1%} wrong (%{customdata} answered)<extra></extra>"))
    if report.get("error_rate") is not None:
        figure.add_hline(y=report["error_rate"], line_dash="dot")  # the overall rate (named in the title)
    figure.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10}, yaxis={"tickformat": ".0%"},
                         title="Estimated share of wrong labels per class (95% interval; dotted: overall)")
    return figure
