"""The object map's figure (no streamlit here: the Objects page only draws what this returns)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from curation.object_images import display_label
from curation.plots import scatter_map

COLOR_CLASS = "class"
COLOR_ISSUE = "issue"
COLOR_ISSUE_SCORE = "issue score"
COLOR_MISLABEL_SCORE = "mislabel score"
COLOR_AREA = "box area (% of the image)"
COLOR_AREA_PX = "box area (pixels, log10)"
COLOR_TAGS = "tags"
COLOR_DECISION = "decision"
COLOR_OPTIONS = (COLOR_CLASS, COLOR_ISSUE, COLOR_ISSUE_SCORE, COLOR_MISLABEL_SCORE, COLOR_AREA, COLOR_AREA_PX,
                 COLOR_TAGS, COLOR_DECISION)


def object_colors(frame: pd.DataFrame, color_by: str) -> pd.Series:
    """The values to colour ``frame``'s boxes (:func:`curation.object_images.object_map`) by,
    aligned with its rows: categories for class, issue, tags and decision; numbers for the
    scores (0 where a box has no score) and areas.

    Raises:
        ValueError: unknown ``color_by`` (the message lists the options).
    """
    if color_by not in COLOR_OPTIONS:
        raise ValueError(f"unknown colour {color_by!r}. Available: {', '.join(COLOR_OPTIONS)}")
    if frame.empty:
        return pd.Series([], dtype=object, name=color_by)
    if color_by == COLOR_CLASS:
        values = frame["label"].map(display_label)
    elif color_by == COLOR_ISSUE:
        values = frame["issue"].map(lambda issue: issue if isinstance(issue, str) and issue else "(no issue)")
    elif color_by == COLOR_TAGS:
        values = frame["tags"].map(lambda tags: ", ".join(display_label(t) for t in tags) if len(tags) else "(no tags)")
    elif color_by == COLOR_DECISION:
        values = frame["decision"].map(lambda d: d if isinstance(d, str) and d else "(undecided)")
    elif color_by == COLOR_ISSUE_SCORE:
        values = frame["issue_score"].astype(float).fillna(0.0)
    elif color_by == COLOR_MISLABEL_SCORE:
        values = frame["mislabel_score"].astype(float).fillna(0.0)
    elif color_by == COLOR_AREA:
        values = (frame["area"].astype(float) * 100).fillna(0.0)
    else:
        values = np.log10(frame["area_px"].astype(float).clip(lower=1.0)).fillna(0.0)
    return pd.Series(values.to_numpy(), index=frame.index, name=color_by)


def _hover_text(frame: pd.DataFrame) -> pd.Series:
    def line(row) -> str:
        text = display_label(row.label)
        if isinstance(row.issue, str) and row.issue:
            text += f" · {row.issue} {row.issue_score:.2f}"
        suggested = row.suggested_label
        if isinstance(suggested, str) and suggested and suggested != row.label:
            text += f" → {display_label(suggested)}"
        if isinstance(row.decision, str) and row.decision:
            text += f" · {row.decision}"
        return text

    return pd.Series([line(row) for row in frame.itertuples(index=False)], index=frame.index, dtype=object)


def object_scatter(frame: pd.DataFrame, color_by: str = COLOR_CLASS) -> go.Figure:
    """WebGL scatter of the object map (lasso by default), one trace per category or a colour
    scale; each point carries its box's id in ``customdata`` so a selection maps back to boxes."""
    colors = object_colors(frame, color_by)
    points = pd.DataFrame({"x": frame["x"], "y": frame["y"], "id": frame["object_id"],
                           "label": _hover_text(frame) if len(frame) else pd.Series([], dtype=object)})
    figure = scatter_map(points, colors)
    if color_by in (COLOR_ISSUE_SCORE, COLOR_MISLABEL_SCORE) and len(frame):
        figure.update_traces(marker={"cmin": 0.0, "cmax": 1.0, "colorscale": "Plasma"})
    return figure
