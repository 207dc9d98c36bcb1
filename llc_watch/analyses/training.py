"""Training curves (metrics.csv, written by `llc-watch train`) as stage-map signals.

    >>> import pandas as pd
    >>> m = pd.DataFrame({"step": [0, 10, 0, 10], "measure": ["train_loss"] * 2 + ["test_acc"] * 2,
    ...                   "value": [2.0, 0.1, 0.0, 1.0]})
    >>> {k: (s.kind, s.direction) for k, s in metrics_signals(m).items()}
    {'train_loss': ('loss', 'down'), 'test_acc': ('loss', 'up')}
"""
from __future__ import annotations

import pandas as pd

from llc_watch.signals import Signal

CURVES = ("train_loss", "test_loss", "train_acc", "test_acc")


def metrics_signals(metrics: pd.DataFrame) -> dict[str, Signal]:
    """train/test loss (direction down) and accuracy (up), one point per step."""
    out = {}
    for name in CURVES:
        s = metrics[metrics["measure"] == name].groupby("step")["value"].mean()
        if len(s):
            out[name] = Signal(name, "loss", s.index.to_numpy(float), s.to_numpy(float),
                               direction="down" if name.endswith("loss") else "up")
    return out
