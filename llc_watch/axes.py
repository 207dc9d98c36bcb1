"""Axis conventions every figure shares (kept apart from plots.py so that low-level packages such as
crosscoder/ can draw on the same step axis without importing the run-level plotting module).

    >>> from matplotlib.figure import Figure
    >>> set_step_axis(Figure().add_subplot(), 1000).get_xscale()
    'symlog'
"""
from __future__ import annotations

from matplotlib.axes import Axes


def set_step_axis(ax: Axes, max_step: float | None = None) -> Axes:
    """Symlog x axis (linear below step 1, log above): log(step + 1) up to a smooth join, and step 0 fits."""
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    if max_step is not None:
        ax.set_xlim(0, max_step * 1.05)
    else:  # steps are never negative: without this, symlog's autoscale pads into -10^k
        ax.set_xlim(left=0)
    ax.set_xlabel("step")
    return ax
