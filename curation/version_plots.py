"""Figures and display tables for the Versions and Quality pages.

No streamlit here: pages draw what these return; every number comes from
:mod:`curation.snapshots` (snapshot lists, :class:`~curation.snapshots.Diff`, the trend).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from curation.snapshots import CURRENT, Diff, SnapshotRef

NONE_SHOWN = "—"
ARROW = "→"
# The diff's counts, as the Versions page shows them (key of Diff.counts(), label).
DIFF_COUNTS = (("relabelled", "Relabelled"), ("decisions_changed", "Decisions changed"),
               ("split_moves", "Split moves"), ("tag_changes", "Tag changes"), ("added", "Added"),
               ("removed", "Removed"), ("files_changed", "Files changed"))
# The galleries of what changed (attribute of Diff, title), in the order shown.
GALLERIES = (("relabelled", "Relabelled"), ("decisions_changed", "Decision changes"),
             ("split_moves", "Split moves"), ("tag_changes", "Tag changes"))
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
CURRENT_COLOR = "#111111"


# ---------------------------------------------------------------------------------------------
# Small formatters


def format_time(iso: str | None) -> str:
    """``2024-05-01T12:03:09+00:00`` as ``2024-05-01 12:03 UTC`` (the text as given if it is not ISO)."""
    if not iso:
        return ""
    try:
        moment = dt.datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc)
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def format_size(count: int | None) -> str:
    """Bytes as ``812 B``, ``3.4 KB``, ``1.2 MB``."""
    value = float(count or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    return NONE_SHOWN if _missing(value) else str(value)


# ---------------------------------------------------------------------------------------------
# Versions page


def snapshot_table(refs: list[SnapshotRef]) -> pd.DataFrame:
    """The snapshot list as shown: name, created (UTC), kind, note (or, for an automatic one,
    why it was taken), samples, size; oldest first as listed."""
    rows = [{"name": ref.name, "created": format_time(ref.created_at), "kind": ref.kind,
             "note / reason": ref.note or ref.reason, "samples": int(ref.samples), "size": format_size(ref.size_bytes)}
            for ref in refs]
    return pd.DataFrame(rows, columns=["name", "created", "kind", "note / reason", "samples", "size"])


def snapshot_choice_label(ref: SnapshotRef) -> str:
    """A picker's text for a snapshot: its name, time and note (or reason)."""
    what = ref.note or ref.reason
    text = f"{ref.name} · {format_time(ref.created_at)}"
    return f"{text} · {what[:60]}" if what else text


# (quality key, label, lower is better, format: "int" | "percent" | "ratio")
QUALITY_CHANGES = (("suspected_mislabels", "Suspected mislabels", True, "int"),
                   ("duplicate_groups", "Duplicate groups", True, "int"),
                   ("leaks", "Leaks", True, "int"),
                   ("audit_error_rate", "Audited error rate", True, "percent"),
                   ("agreement_alpha", "Agreement (alpha)", False, "ratio"),
                   ("decisions_made", "Decisions made", None, "int"))


def _formatted(value: Any, kind: str) -> str:
    if _missing(value):
        return NONE_SHOWN
    if kind == "percent":
        return f"{float(value):.1%}"
    if kind == "ratio":
        return f"{float(value):.2f}"
    return f"{int(value):,}"


def quality_changes(quality_a: dict, quality_b: dict) -> list[dict]:
    """The quality figures of B with their change from A, for metrics: ``label``, ``value``
    (text), ``delta`` (signed text, None when either side is unknown or nothing changed) and
    ``delta_color`` (``inverse`` where lower is better: fewer suspected mislabels show green)."""
    rows = []
    for key, label, lower_is_better, kind in QUALITY_CHANGES:
        before, after = quality_a.get(key), quality_b.get(key)
        delta = None
        if not _missing(before) and not _missing(after) and float(after) != float(before):
            change = float(after) - float(before)
            if kind == "percent":
                delta = f"{change:+.1%}"
            elif kind == "ratio":
                delta = f"{change:+.2f}"
            else:
                delta = f"{int(change):+,}"
        rows.append({"key": key, "label": label, "value": _formatted(after, kind), "delta": delta,
                     "delta_color": "off" if lower_is_better is None else ("inverse" if lower_is_better else "normal")})
    return rows


def transition_figure(matrix: pd.DataFrame) -> go.Figure:
    """Relabelled samples per class pair: from-class rows x to-class columns
    (``Diff.transition_matrix()``), counts written in the cells; empty cells blank."""
    rows, columns = [str(name) for name in matrix.index], [str(name) for name in matrix.columns]
    values = matrix.to_numpy(dtype=float)
    shown = [[None if value == 0 else value for value in row] for row in values]
    text = [["" if value == 0 else f"{int(value)}" for value in row] for row in values]
    figure = go.Figure(go.Heatmap(
        z=shown, x=columns, y=rows, text=text, texttemplate="%{text}", colorscale="Blues", zmin=0,
        zmax=max(float(values.max()) if values.size else 1.0, 1.0),
        xgap=2, ygap=2, hovertemplate="%{y} " + ARROW + " %{x}: %{z} samples<extra></extra>",
        colorbar={"title": "samples"}))
    size = max(len(rows), len(columns))
    figure.update_layout(height=min(180 + 36 * len(rows), 720), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         xaxis={"title": "to (B)", "side": "top", "type": "category", "tickangle": -30 if size > 8 else 0},
                         yaxis={"title": "from (A)", "autorange": "reversed", "type": "category"})
    return figure


def _arrow(before: Any, after: Any) -> str:
    return f"{_text(before)} {ARROW} {_text(after)}"


def _tag_caption(added: list, removed: list) -> str:
    return " ".join([*(f"+{tag}" for tag in added), *(f"−{tag}" for tag in removed)]) or NONE_SHOWN


def change_gallery(diff: Diff, kind: str, filepaths: dict[str, str] | None = None, *,
                   limit: int = 24) -> tuple[pd.DataFrame, int]:
    """The first ``limit`` changes of one kind (``relabelled``, ``decisions_changed``,
    ``split_moves`` or ``tag_changes``) as gallery rows, and how many there are in all.

    Rows: ``id``, ``filepath`` (from the diff, else from ``filepaths`` {id: path}, else None),
    ``caption`` (``from → to``; a decision change also names the label, a split move its field
    when the dataset has several, a tag change ``+added −removed``).
    """
    if kind not in dict(GALLERIES):
        raise ValueError(f"change_gallery: expected one of {', '.join(dict(GALLERIES))}, got {kind!r}")
    frame: pd.DataFrame = getattr(diff, kind)
    filepaths = filepaths or {}
    part = frame.head(limit)
    rows = []
    several_fields = kind == "split_moves" and frame["field"].nunique() > 1
    for record in part.to_dict(orient="records"):
        sample_id = record["id"]
        if kind == "relabelled":
            caption = _arrow(record["from"], record["to"])
        elif kind == "decisions_changed":
            caption = _arrow(record["from"], record["to"])
            if not _missing(record.get("label")):
                caption += f" · {record['label']}"
        elif kind == "split_moves":
            caption = (f"{record['field']}: " if several_fields else "") + _arrow(record["from"], record["to"])
        else:
            caption = _tag_caption(record["added"], record["removed"])
        path = record.get("filepath")
        rows.append({"id": sample_id, "filepath": path if isinstance(path, str) and path else filepaths.get(sample_id),
                     "caption": caption})
    return pd.DataFrame(rows, columns=["id", "filepath", "caption"]), int(len(frame))


# ---------------------------------------------------------------------------------------------
# Quality page: the trend


@dataclass(frozen=True)
class TrendChart:
    """One line chart of the trend: ``series`` are (column, legend name); ``interval`` the
    (low, high) columns drawn as error bars on the first series."""

    key: str
    title: str
    series: tuple[tuple[str, str], ...]
    empty: str
    percent: bool = False
    interval: tuple[str, str] | None = None


TREND_CHARTS = (
    TrendChart("mislabels", "Suspected mislabels", (("suspected_mislabels", "suspected mislabels"),),
               "no finder results yet: run the finders on the Findings page (or curation analyze)"),
    TrendChart("duplicates", "Duplicate groups and leaks", (("duplicate_groups", "duplicate groups"),
                                                            ("leaks", "leaks between splits")),
               "no finder results yet: run the finders on the Findings page (or curation analyze)"),
    TrendChart("audit", "Audited error rate (95% interval)", (("audit_error_rate", "error rate"),),
               "no audit yet: start one on the Audit page", percent=True, interval=("audit_ci_low", "audit_ci_high")),
    TrendChart("agreement", "Annotator agreement", (("agreement_alpha", "Krippendorff's alpha"),
                                                    ("agreement_kappa", "Fleiss' kappa")),
               "no votes from several annotators yet (Annotators page)"),
    TrendChart("decisions", "Decisions made", (("decisions_made", "decisions"), ("relabelled", "relabelled"),
                                               ("removed", "removed")), "no decisions recorded"),
    TrendChart("samples", "Samples", (("samples", "samples"), ("active_samples", "not removed")), "no samples"),
    TrendChart("classes", "Classes and imbalance", (("classes", "classes"),
                                                    ("imbalance_ratio", "imbalance (largest / smallest class)")),
               "no labels"),
    TrendChart("outliers", "Outliers", (("outliers", "outliers"),),
               "no finder results yet: run the finders on the Findings page (or curation analyze)"),
)


def _numbers(column: pd.Series) -> list[float | None]:
    return [None if _missing(value) else float(value) for value in column.astype(object)]


def trend_has_data(table: pd.DataFrame, chart: TrendChart) -> bool:
    """Whether any point of the chart has a value."""
    return any(value is not None for column, _ in chart.series if column in table
               for value in _numbers(table[column]))


def trend_figure(table: pd.DataFrame, chart: TrendChart) -> go.Figure:
    """One line chart of the trend (``snapshots.trend()``): one point per row, oldest first;
    the current state (the row named ``current``) is drawn as a star after a dotted segment,
    on a shaded band labelled "now". Missing values leave gaps; a chart without any value says
    what would fill it."""
    names = [str(name) for name in table["name"]]
    positions = list(range(len(table)))
    is_current = [kind == CURRENT for kind in table["kind"]]
    stored = [i for i, current in enumerate(is_current) if not current]
    hover_times = ["now" if current else format_time(created) for current, created in zip(is_current, table["created_at"])]
    value_format = ".1%" if chart.percent else ",.4~g"
    figure = go.Figure()
    for number, (column, legend) in enumerate(chart.series):
        color = COLORS[number % len(COLORS)]
        values = _numbers(table[column]) if column in table else [None] * len(table)
        error = None
        if chart.interval and number == 0:
            low = _numbers(table[chart.interval[0]])
            high = _numbers(table[chart.interval[1]])
            error = {"type": "data", "symmetric": False, "thickness": 1.5, "width": 6, "color": color,
                     "array": [None if v is None or h is None else h - v for v, h in zip(values, high)],
                     "arrayminus": [None if v is None or lo is None else v - lo for v, lo in zip(values, low)]}
        custom = list(zip(names, hover_times))
        template = (f"%{{customdata[0]}} (%{{customdata[1]}})<br>{legend}: %{{y:{value_format}}}<extra></extra>")

        def part(indexes: list[int], **style) -> go.Scatter:
            trace = go.Scatter(x=[positions[i] for i in indexes], y=[values[i] for i in indexes],
                               customdata=[custom[i] for i in indexes], hovertemplate=template, name=legend,
                               legendgroup=column, cliponaxis=False, **style)
            if error is not None:
                trace.error_y = {**error, "array": [error["array"][i] for i in indexes],
                                 "arrayminus": [error["arrayminus"][i] for i in indexes]}
            return trace

        figure.add_trace(part(stored, mode="lines+markers", line={"color": color, "width": 2},
                              marker={"size": 8, "color": color}, connectgaps=False,
                              showlegend=len(chart.series) > 1))
        current_at = [i for i, current in enumerate(is_current) if current]
        if current_at:
            last = current_at[-1]
            previous = [i for i in stored if i < last][-1:]
            figure.add_trace(part([*previous, last], mode="lines+markers", line={"color": color, "width": 2, "dash": "dot"},
                                  marker={"size": [9] * len(previous) + [17], "symbol": ["circle"] * len(previous) + ["star"],
                                          "color": color, "line": {"color": CURRENT_COLOR, "width": 1}},
                                  showlegend=False))
    for index, current in enumerate(is_current):
        if current:
            figure.add_vrect(x0=index - 0.4, x1=index + 0.4, fillcolor="#f2c14e", opacity=0.18, line_width=0,
                             annotation_text="now", annotation_position="top left")
    has_data = trend_has_data(table, chart)
    if not has_data:
        figure.add_annotation(text=chart.empty, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                              font={"size": 13, "color": "#666"})
    figure.update_layout(
        title={"text": chart.title, "x": 0, "font": {"size": 15}}, height=290,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1},
        xaxis={"tickmode": "array", "tickvals": positions,
               "ticktext": [f"<b>{name}</b>" if current else name for name, current in zip(names, is_current)],
               "range": [-0.5, max(len(positions) - 0.5, 0.5)]},
        yaxis={"tickformat": ".0%" if chart.percent else None, "rangemode": "tozero", "visible": has_data})
    return figure


def trend_metrics(table: pd.DataFrame) -> list[dict]:
    """The current state's headline figures with their change since the last stored snapshot
    (the same rows as :func:`quality_changes`); without a snapshot, no changes."""
    rows = table.to_dict(orient="records")
    if not rows:
        return []
    current = rows[-1]
    before = next((row for row in reversed(rows[:-1]) if row.get("kind") != CURRENT), None) if len(rows) > 1 else None
    return quality_changes(before or {}, current)


def trend_table(table: pd.DataFrame) -> pd.DataFrame:
    """The trend as shown under the charts: one row per snapshot and the current state last;
    the audit interval as text."""
    def interval(row) -> str:
        if _missing(row["audit_ci_low"]) or _missing(row["audit_ci_high"]):
            return ""
        return f"{float(row['audit_ci_low']):.1%} – {float(row['audit_ci_high']):.1%}"

    shown = pd.DataFrame({
        "name": table["name"],
        "created": ["now" if kind == CURRENT else format_time(created)
                    for kind, created in zip(table["kind"], table["created_at"])],
        "kind": ["current state" if kind == CURRENT else kind for kind in table["kind"]],
        "note": table["note"].fillna(""),
        "samples": table["samples"], "not removed": table["active_samples"], "classes": table["classes"],
        "imbalance": table["imbalance_ratio"],
        "suspected mislabels": table["suspected_mislabels"], "duplicate groups": table["duplicate_groups"],
        "leaks": table["leaks"], "outliers": table["outliers"],
        "audited error rate": table["audit_error_rate"],
        "95% interval": [interval(row) for row in table.to_dict(orient="records")],
        "alpha": table["agreement_alpha"], "kappa": table["agreement_kappa"],
        "decisions": table["decisions_made"], "relabelled": table["relabelled"], "removed": table["removed"],
        "embedding model": table["embedding_model"],
    })
    for column in ("samples", "not removed", "classes", "suspected mislabels", "duplicate groups", "leaks", "outliers",
                   "decisions", "relabelled", "removed"):
        shown[column] = pd.array(_numbers(shown[column]), dtype="Float64").round().astype("Int64")
    for column in ("imbalance", "audited error rate", "alpha", "kappa"):
        shown[column] = pd.array(_numbers(shown[column]), dtype="Float64")
    return shown.reset_index(drop=True)
