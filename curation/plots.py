"""Plotly figures for the pages (no streamlit here: pages only draw what these return)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import plotly.express as px
import pandas as pd

from curation.mapview import DensityRaster, DrawConfig, density_raster, drawn_rows, is_categorical

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
    _map_layout(figure, title)
    return figure


def _map_layout(figure: go.Figure, title: str) -> None:
    figure.update_layout(
        title=title, height=640, margin={"l": 10, "r": 10, "t": 50, "b": 10},
        dragmode="lasso", plot_bgcolor="white",
        # Legend below the toolbar's row, beside the plot; UMAP axes carry no units, so the
        # plot fills the width instead of keeping a 1:1 aspect.
        legend={"itemsizing": "constant", "yanchor": "top", "y": 0.98, "x": 1.01},
        xaxis={"visible": False}, yaxis={"visible": False},
    )


# Empty cells transparent, then light to dark grey: the density shows through the points.
_DENSITY_SCALE = [[0.0, "rgba(255,255,255,0)"], [0.5 / 255, "rgba(255,255,255,0)"],
                  [1.0 / 255, "rgba(205,205,215,0.55)"], [1.0, "rgba(40,40,60,0.9)"]]


def map_figure(frame: pd.DataFrame, colors: pd.Series, drawn: np.ndarray, *,
               raster: DensityRaster | None = None, title: str = "") -> go.Figure:
    """The Map page's figure: the ``drawn`` rows of ``frame`` as WebGL points, one trace per
    category, over an optional density image of all points.

    Each point's ``customdata`` is its row position in ``frame`` (not its id: 4 bytes a
    point in the JSON instead of ~27), so a click maps back to a sample; lassos and boxes
    are resolved on the server over every row (:func:`curation.mapview.selection_mask`).
    Hover shows the colour value; the label too where at most 20,000 points are drawn.

    Args:
        frame: (N rows) ``x``, ``y``, ``label``.
        colors: (N,) values aligned with ``frame``.
        drawn: sorted row positions to draw (:func:`curation.mapview.drawn_rows`).
        raster: counts of all N points (:func:`curation.mapview.density_raster`) or None.
    """
    drawn = np.asarray(drawn, dtype=np.int64)
    size = 7 if len(drawn) <= 2_000 else 4 if len(drawn) <= 20_000 else 2.5
    with_text = len(drawn) <= 20_000
    x = frame["x"].to_numpy(dtype=np.float32)[drawn]
    y = frame["y"].to_numpy(dtype=np.float32)[drawn]
    shown = colors.iloc[drawn] if len(drawn) < len(colors) else colors
    labels = frame["label"].iloc[drawn].astype(str).to_numpy() if with_text else None
    figure = go.Figure()
    if raster is not None:
        # log counts in 1..255 as bytes (a quarter of float32's JSON); 0 stays empty
        shade = np.log1p(raster.counts) * (254.0 / max(np.log1p(raster.counts.max()), 1e-9))
        shade = np.where(raster.counts > 0, 1 + np.round(shade), 0).astype(np.uint8)
        figure.add_trace(go.Heatmap(
            z=shade, x0=raster.x0, dx=raster.dx, y0=raster.y0, dy=raster.dy, zmin=0, zmax=255,
            colorscale=_DENSITY_SCALE, showscale=False, hoverinfo="skip", name="all samples (density)",
        ))
    if is_categorical(shown):
        codes, categories = pd.factorize(shown.astype(str), sort=True)
        for index, category in enumerate(categories):
            members = np.flatnonzero(codes == index)
            figure.add_trace(go.Scattergl(
                x=x[members], y=y[members], mode="markers", name=str(category),
                marker={"size": size, "color": _PALETTE[index % len(_PALETTE)], "opacity": 0.85},
                customdata=drawn[members].astype(np.int32),
                text=labels[members] if with_text else None,
                hovertemplate="%{text}<extra>%{fullData.name}</extra>" if with_text else "%{fullData.name}<extra></extra>",
            ))
    else:
        values = pd.to_numeric(shown, errors="coerce").to_numpy(dtype=np.float64)
        figure.add_trace(go.Scattergl(
            x=x, y=y, mode="markers", name=str(colors.name or "value"),
            marker={"size": size, "color": values, "colorscale": "Viridis", "showscale": True, "opacity": 0.85},
            customdata=drawn.astype(np.int32), text=labels,
            hovertemplate=("%{text}: " if with_text else "") + "%{marker.color}<extra></extra>",
        ))
    _map_layout(figure, title)
    return figure


def map_view_figure(frame: pd.DataFrame, colors: pd.Series, config: DrawConfig = DrawConfig(), *,
                    title: str = "") -> tuple[go.Figure, int]:
    """:func:`map_figure` within ``config.point_budget`` points: every point up to the
    budget; above it a seeded (stratified) sample over a density image of all points.
    Returns the figure and how many points it draws."""
    drawn = drawn_rows(colors, config)
    raster = None
    if len(drawn) < len(frame):
        raster = density_raster(frame["x"].to_numpy(), frame["y"].to_numpy(), config.raster_bins)
    return map_figure(frame, colors, drawn, raster=raster, title=title), len(drawn)


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
