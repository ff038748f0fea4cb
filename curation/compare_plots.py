"""Figures and display tables for the Compare page.

No streamlit here: the page draws what these return; every number comes from
:mod:`curation.compare`.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from curation.compare import Comparison

COLOR_A = "#3b6ea5"
COLOR_B = "#e07b39"
_MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}


def class_share_figure(comparison: Comparison) -> go.Figure:
    """Grouped bars: each class's share of A's and of B's labelled samples (hover: counts)."""
    table = comparison.classes
    names = [str(name) for name in table["class"]]
    figure = go.Figure([
        go.Bar(x=names, y=table["share_a"], name=f"A: {comparison.name_a}", marker_color=COLOR_A,
               customdata=table["count_a"], hovertemplate="%{x}<br>A: %{y:.1%} (%{customdata} samples)<extra></extra>"),
        go.Bar(x=names, y=table["share_b"], name=f"B: {comparison.name_b}", marker_color=COLOR_B,
               customdata=table["count_b"], hovertemplate="%{x}<br>B: %{y:.1%} (%{customdata} samples)<extra></extra>"),
    ])
    figure.update_layout(barmode="group", height=380, margin=_MARGIN, title="Share of each dataset's labelled samples",
                         yaxis={"tickformat": ".0%", "title": "share"}, xaxis_title="class",
                         legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"})
    return figure


def class_table(comparison: Comparison) -> pd.DataFrame:
    """Classes side by side with a status column (missing from B, new in B)."""
    table = comparison.classes.rename(columns={"count_a": "A", "share_a": "A share", "count_b": "B",
                                               "share_b": "B share", "residual": "adjusted residual"}).copy()
    missing, new = set(comparison.missing_in_b), set(comparison.new_in_b)
    table["status"] = ["missing from B" if name in missing else "new in B" if name in new else ""
                       for name in table["class"]]
    return table[["class", "A", "A share", "B", "B share", "adjusted residual", "status"]]


def coverage_figure(comparison: Comparison) -> go.Figure:
    """Share of each B class far from everything in A, with the share expected if B were like A."""
    coverage = comparison.coverage
    table = coverage["per_class"]
    names = ["(unlabelled)" if name is None else str(name) for name in table["class"]]
    figure = go.Figure(go.Bar(x=names, y=table["share_far"], marker_color=COLOR_B, customdata=table[["far", "count"]],
                              hovertemplate="%{x}: %{y:.1%} far (%{customdata[0]} of %{customdata[1]})<extra></extra>"))
    expected = coverage["expected_share_if_alike"]
    figure.add_hline(y=expected, line_dash="dash", annotation_text=f"{expected:.0%} expected if B were drawn like A",
                     annotation_position="top right")
    figure.update_layout(height=340, margin=_MARGIN, title="Share of B's samples far from everything in A, per class",
                         yaxis={"tickformat": ".0%", "title": "far from A", "rangemode": "tozero"}, xaxis_title="class in B")
    return figure


def coverage_table(comparison: Comparison) -> pd.DataFrame:
    table = comparison.coverage["per_class"].copy()
    table["class"] = ["(unlabelled)" if name is None else name for name in table["class"]]
    return table.rename(columns={"count": "B samples", "far": "far from A", "share_far": "share far",
                                 "median_distance": "median distance to A"})


def _region_name(row) -> str:
    dominant = row["dominant_classes"]
    return f"region {row['region']}" + (f" ({dominant[0][0]})" if dominant else "")


def region_share_figure(comparison: Comparison) -> go.Figure:
    """Grouped bars per k-means region of A: A's share and B's share; regions B lacks first."""
    table = comparison.regions["table"]
    names = [_region_name(row) + (" ✱" if row["lacking"] else "") for _, row in table.iterrows()]
    figure = go.Figure([
        go.Bar(x=names, y=table["share_a"], name=f"A: {comparison.name_a}", marker_color=COLOR_A,
               customdata=table["count_a"], hovertemplate="%{x}<br>A: %{y:.1%} (%{customdata})<extra></extra>"),
        go.Bar(x=names, y=table["share_b"], name=f"B: {comparison.name_b}", marker_color=COLOR_B,
               customdata=table["count_b"], hovertemplate="%{x}<br>B: %{y:.1%} (%{customdata})<extra></extra>"),
    ])
    figure.update_layout(barmode="group", height=380, margin=_MARGIN,
                         title="Share of each dataset in A's regions (✱: B lacks it)",
                         yaxis={"tickformat": ".0%", "title": "share"},
                         legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"})
    return figure


def region_table(comparison: Comparison, *, lacking_only: bool = True) -> pd.DataFrame:
    table = comparison.regions["table"]
    if lacking_only:
        table = table[table["lacking"]]
    return pd.DataFrame({
        "region": table["region"],
        "A samples": table["count_a"], "A share": table["share_a"],
        "B samples": table["count_b"], "B share": table["share_b"],
        "main classes in A": [", ".join(f"{name} {share:.0%}" for name, share in dominant) or "unlabelled"
                              for dominant in table["dominant_classes"]],
        "p-value": table["p_value"],
    }).reset_index(drop=True)


def shift_table(comparison: Comparison) -> pd.DataFrame:
    """Domain-classifier AUC overall and within each class."""
    shift = comparison.shift
    rows = [{"classes": "all", "AUC": shift.get("auc"), "p-value": shift.get("p_value"), "A samples": shift.get("n_a"),
             "B samples": shift.get("n_b")}]
    for row in shift["per_class"].itertuples(index=False):
        rows.append({"classes": row[0], "AUC": row.auc, "p-value": row.p_value, "A samples": row.n_a,
                     "B samples": row.n_b})
    return pd.DataFrame(rows)
