"""Figures of a crosscoder analysis: functions that take an Axes and return it (no pyplot state).

    >>> import pandas as pd
    >>> from llc_watch.plots import new_figure
    >>> norms = pd.DataFrame({"feature": [0, 0, 1, 1], "step": [0, 100, 0, 100],
    ...                       "relative_norm": [0.0, 1.0, 1.0, 1.0]})
    >>> feats = pd.DataFrame({"feature": [0, 1], "emergence_step": [100, 0],
    ...                       "trajectory": ["forms_and_stays", "present_throughout"]})
    >>> ax = plot_norm_heatmap(new_figure().add_subplot(), norms, feats)
    >>> ax.get_ylabel()
    'feature (sorted by emergence)'
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from ..axes import set_step_axis
from .features import emergence_signal


def _ordered(features: pd.DataFrame, drop_dead: bool = True) -> pd.DataFrame:
    f = features[features["trajectory"] != "dead"] if drop_dead else features
    return f.sort_values(["emergence_step", "feature"], na_position="last")


def plot_norm_heatmap(ax: Axes, norms: pd.DataFrame, features: pd.DataFrame, value: str = "relative_norm",
                      label_features: dict[int, str] | None = None, cmap: str = "viridis") -> Axes:
    """Decoder norm per (feature, snapshot): features as rows sorted by emergence, snapshots as columns.

    `label_features` {feature: text} annotates rows (e.g. the best-matching label) on the right.
    Columns are snapshots in order (log-spaced checkpoints), labelled with their steps.
    """
    order = _ordered(features)["feature"].tolist()
    grid = norms.pivot_table(index="feature", columns="step", values=value).reindex(order)
    im = ax.imshow(grid.to_numpy(float), aspect="auto", interpolation="nearest", cmap=cmap, vmin=0,
                   vmax=1 if value == "relative_norm" else None)
    steps = grid.columns.to_numpy()
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{int(steps[t])}" for t in ticks], rotation=45, ha="right")
    ax.set_xlabel("checkpoint step (snapshots, log-spaced)")
    ax.set_ylabel("feature (sorted by emergence)")
    ax.set_yticks([])
    for feat, text in (label_features or {}).items():
        if feat in order:
            y = order.index(feat)
            ax.annotate(text, (len(steps) - 0.5, y), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=7, annotation_clip=False)
    ax.figure.colorbar(im, ax=ax, label="decoder norm / its peak" if value == "relative_norm" else value)
    return ax


def plot_emergence(ax: Axes, features: pd.DataFrame, bandwidth: float = 0.15,
                   boundaries: Sequence[float] = (), max_step: float | None = None) -> Axes:
    """Histogram of emergence steps (features that form after the first snapshot) with its density.

    `boundaries` (e.g. the stage map's) are drawn as vertical lines for alignment.
    """
    steps, dens = emergence_signal(features, bandwidth=bandwidth)
    formed = features[~features["trajectory"].isin(["present_throughout", "fades", "dead"])]
    x = formed["emergence_step"].to_numpy(float)
    if len(x):
        edges = np.expm1(np.linspace(np.log1p(steps[0]), np.log1p(steps[-1]), 25))
        counts, _ = np.histogram(x, bins=edges)
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", alpha=0.4, color="C0",
               label=f"features forming ({len(x)})")
    ax2 = ax.twinx()
    ax2.plot(steps, dens, color="C0")
    ax2.set_ylabel("emergence density (per unit log step)")
    ax2.set_ylim(bottom=0)
    for b in boundaries:
        ax.axvline(b, color="0.3", ls="--", lw=0.8)
    set_step_axis(ax, max_step or float(steps[-1]))
    ax.set_ylabel("features emerging")
    if len(x):
        ax.legend(loc="upper left", fontsize=8)
    return ax


def plot_feature_trajectories(ax: Axes, norms: pd.DataFrame, features: Sequence[int],
                              labels: dict[int, str] | None = None) -> Axes:
    """Relative decoder norm against step for a few features (e.g. those matching carry labels)."""
    for f in features:
        g = norms[norms["feature"] == f].sort_values("step")
        ax.plot(g["step"], g["relative_norm"], marker=".", label=(labels or {}).get(f, f"feature {f}"))
    set_step_axis(ax, float(norms["step"].max()))
    ax.set_ylabel("decoder norm / its peak")
    ax.set_ylim(0, 1.05)
    if len(features):
        ax.legend(fontsize=8)
    return ax


__all__ = ["plot_norm_heatmap", "plot_emergence", "plot_feature_trajectories"]
