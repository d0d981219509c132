"""Plotly figures the pages draw (not a page itself); each takes a plain table or array."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from galaxy_core.base import CLASSES

CLASS_COLOURS = {"Spiral": "#5b8def", "Elliptical": "#f2a541", "Uncertain": "#9aa0a6"}
CHANNEL_COLOURS = {"red": "#e5534b", "green": "#57ab5a", "blue": "#539bf5"}
SPLIT_COLOURS = {"train": "#7aa2f7", "validation": "#f2a541"}  # blue and orange: told apart by anyone
# From the theme's panel colour (.streamlit/config.toml) to a saturated blue: an empty cell
# melts into the dark page and light text reads on every cell.
CONFUSION_SCALE = [[0.0, "#151b2e"], [0.5, "#2c4a8a"], [1.0, "#4f7fe0"]]


def _compact(fig: go.Figure, height: int = 300) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), legend_title_text="")
    return fig


def class_counts(stages: Mapping[str, Mapping[str, int]], title: str) -> go.Figure:
    """Grouped bars: one group per class, one bar per stage (e.g. before / after balancing)."""
    frame = pd.DataFrame([{"class": c, "stage": stage, "galaxies": counts.get(c, 0)}
                          for stage, counts in stages.items() for c in CLASSES])
    fig = px.bar(frame, x="class", y="galaxies", color="stage", barmode="group", text="galaxies",
                 title=title)
    return _compact(fig)


def probabilities(probs: Mapping[str, float], height: int = 170) -> go.Figure:
    frame = pd.DataFrame({"class": list(probs), "probability": list(probs.values())})
    fig = px.bar(frame, x="probability", y="class", orientation="h", color="class",
                 color_discrete_map=CLASS_COLOURS, text=frame["probability"].map("{:.0%}".format),
                 range_x=[0, 1])
    fig.update_layout(showlegend=False, yaxis_title=None, xaxis_title=None)
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(CLASSES)))
    return _compact(fig, height)


def curves(history: pd.DataFrame, metric: str) -> go.Figure:
    """Train and validation curves of one metric against epoch."""
    part = history[history["metric"] == metric]
    fig = px.line(part, x="epoch", y="value", color="split", line_dash="split", markers=True,
                  color_discrete_map=SPLIT_COLOURS, title=metric.capitalize())
    fig.update_layout(yaxis_title=metric, xaxis=dict(dtick=max(1, len(part) // 20)))
    if metric == "accuracy":
        fig.update_yaxes(range=[0, 1])
    return _compact(fig)


def confusion(matrix: np.ndarray, normalised: bool) -> go.Figure:
    """Rows true class, columns predicted class, as on the model card."""
    text = [[f"{v:.0%}" if normalised else f"{int(v)}" for v in row] for row in matrix]
    fig = go.Figure(go.Heatmap(z=matrix, x=list(CLASSES), y=list(CLASSES), text=text,
                               texttemplate="%{text}", textfont=dict(color="#e6e9f2"),
                               colorscale=CONFUSION_SCALE, showscale=True, xgap=2, ygap=2,
                               colorbar=dict(title="share" if normalised else "galaxies", thickness=12),
                               zmin=0, zmax=1 if normalised else None))
    fig.update_layout(xaxis_title="predicted", yaxis_title="true",
                      title="Fraction of each true class" if normalised else "Galaxies")
    fig.update_yaxes(autorange="reversed")
    return _compact(fig, 360)


def reliability(bins: pd.DataFrame) -> go.Figure:
    """Accuracy against confidence per bin: on the diagonal when probabilities can be trusted."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(dash="dash", color="#888")))
    sizes = 6 + 20 * np.sqrt(bins["count"] / max(bins["count"].max(), 1))
    fig.add_trace(go.Scatter(x=bins["confidence"], y=bins["accuracy"], mode="lines+markers",
                             name="model", marker=dict(size=sizes),
                             text=bins["count"].map("{} galaxies".format)))
    fig.update_layout(xaxis_title="confidence (top-class probability)", yaxis_title="accuracy",
                      xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1]), title="Reliability")
    return _compact(fig, 360)


def pixel_histogram(frame: pd.DataFrame) -> go.Figure:
    fig = px.line(frame, x="value", y="pixels", color="channel", color_discrete_map=CHANNEL_COLOURS,
                  title="Pixel values per channel", log_y=True)
    fig.update_layout(xaxis_title="8-bit value")
    return _compact(fig)
