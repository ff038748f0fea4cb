"""Plotly figures for the pages (no streamlit here: pages only draw what these return)."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.express as px
import pandas as pd

from curation.mapview import is_categorical

_PALETTE = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24


def scatter_map(frame: pd.DataFrame, colors: pd.Series, *, title: str = "", point_size: float | None = None) -> go.Figure:
    """WebGL scatter of ``frame`` (``x``, ``y``, ``id``, ``label``), one trace per category.

    Each point carries its sample id in ``customdata`` so a selection maps back to samples.
    Point size shrinks with the number of points so 100,000 stay readable.
    """
    size = point_size or (7 if len(frame) <= 2_000 else 4 if len(frame) <= 20_000 else 2.5)
    figure = go.Figure()
    hover = "%{customdata}<br>%{text}<extra></extra>"
    if is_categorical(colors):
        categories = sorted(colors.astype(str).unique())
        as_text = colors.astype(str)
        for index, category in enumerate(categories):
            mask = (as_text == category).to_numpy()
            part = frame[mask]
            figure.add_trace(go.Scattergl(
                x=part["x"], y=part["y"], mode="markers", name=category,
                marker={"size": size, "color": _PALETTE[index % len(_PALETTE)], "opacity": 0.85},
                customdata=part["id"], text=part["label"].astype(str), hovertemplate=hover,
            ))
    else:
        figure.add_trace(go.Scattergl(
            x=frame["x"], y=frame["y"], mode="markers", name=str(colors.name or "value"),
            marker={"size": size, "color": colors, "colorscale": "Viridis", "showscale": True, "opacity": 0.85},
            customdata=frame["id"], text=frame["label"].astype(str), hovertemplate=hover,
        ))
    figure.update_layout(
        title=title, height=640, margin={"l": 10, "r": 10, "t": 50, "b": 10},
        dragmode="lasso", plot_bgcolor="white",
        # Legend below the toolbar's row, beside the plot; UMAP axes carry no units, so the
        # plot fills the width instead of keeping a 1:1 aspect.
        legend={"itemsizing": "constant", "yanchor": "top", "y": 0.98, "x": 1.01},
        xaxis={"visible": False}, yaxis={"visible": False},
    )
    return figure


def class_count_bar(counts: dict[str, int], *, title: str = "Samples per class") -> go.Figure:
    labels = [str(label) if label is not None else "(unlabelled)" for label in counts]
    figure = go.Figure(go.Bar(x=labels, y=list(counts.values()), marker_color="#3b6ea5"))
    figure.update_layout(title=title, height=360, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                         xaxis_title="class", yaxis_title="samples")
    return figure


def precision_recall_figure(curve: dict | pd.DataFrame, chosen_threshold: float, *,
                            x_title: str = "similarity threshold") -> go.Figure:
    """Precision and recall against the threshold, with the chosen threshold marked."""
    curve = pd.DataFrame(curve)
    figure = go.Figure([
        go.Scatter(x=curve["threshold"], y=curve["precision"], name="precision", mode="lines"),
        go.Scatter(x=curve["threshold"], y=curve["recall"], name="recall", mode="lines"),
    ])
    figure.add_vline(x=chosen_threshold, line_dash="dash", annotation_text=f"{chosen_threshold:.3f}")
    figure.update_layout(height=300, margin={"l": 10, "r": 10, "t": 20, "b": 10},
                         xaxis_title=x_title, yaxis_range=[0, 1.02])
    return figure


def confusion_heatmap(confusion: pd.DataFrame) -> go.Figure:
    """Row-normalised confusion matrix: given class (rows) against predicted class (columns)."""
    figure = go.Figure(go.Heatmap(z=confusion.to_numpy(), x=list(confusion.columns), y=list(confusion.index),
                                  colorscale="Blues", zmin=0, zmax=1, text=confusion.round(2).to_numpy(),
                                  texttemplate="%{text}", hovertemplate="given %{y}<br>predicted %{x}: %{z:.0%}<extra></extra>"))
    figure.update_layout(height=max(320, 28 * len(confusion) + 120), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         xaxis_title="predicted (cross-validated)", yaxis_title="given label", yaxis_autorange="reversed")
    return figure


def cluster_mix_bar(mix: pd.DataFrame) -> go.Figure:
    """Stacked bars: samples of each class in each k-means cluster of the embedding space."""
    figure = go.Figure([go.Bar(x=[f"cluster {c}" for c in mix.index], y=mix[name], name=str(name),
                               marker_color=_PALETTE[i % len(_PALETTE)]) for i, name in enumerate(mix.columns)])
    figure.update_layout(barmode="stack", height=380, margin={"l": 10, "r": 10, "t": 30, "b": 10}, yaxis_title="samples")
    return figure


def split_distribution_bar(distribution: pd.DataFrame, split_names: list[str] | tuple[str, ...]) -> go.Figure:
    """Grouped bars: samples per class in each split (``distribution``: index class, a column per split)."""
    figure = go.Figure()
    for index, split in enumerate(split_names):
        if split in distribution:
            figure.add_trace(go.Bar(x=distribution.index.astype(str), y=distribution[split], name=split,
                                    marker_color=_PALETTE[index % len(_PALETTE)]))
    figure.update_layout(barmode="group", height=360, margin={"l": 10, "r": 10, "t": 60, "b": 10},
                         title="Samples per class in each split",
                         legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"})
    return figure
