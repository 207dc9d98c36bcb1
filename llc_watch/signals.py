"""Signal: one measured curve over training steps, the unit every stage-map input comes in.

Each analysis turns its table into Signals; the stage map takes Signals and knows no file names.

    >>> import numpy as np
    >>> s = Signal("llc", kind="llc", step=np.array([0, 10, 100]), value=np.array([1.0, 5.0, 7.0]))
    >>> s.family, len(s)
    ('llc', 3)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SIGNAL_KINDS = ("llc", "loss", "onset", "emergence", "trajectory")


@dataclass(frozen=True)
class Signal:
    """One curve over training steps.

    name: unique within a run, "<family>:<detail>" or a bare family ("llc", "train_loss",
      "probe:carry_in", "ablation:carry_out", "crosscoder:emergence", "ed:pc1").
    kind: how boundaries are read from it (see SIGNAL_KINDS): "llc" critical points and kinks;
      "loss" plateau ends and drops; "onset" the first rise to a level; "emergence" peaks of a
      density of events; "trajectory" cusps and turning points of a path.
    direction: "up", "down" or "auto": which way a "loss"/"onset" signal moves when things happen.
    step, value: 1-D arrays of equal length; stderr: per-point standard error or None.
    extra: per-point side arrays a reader may need (e.g. a control's spread), same length.
    """

    name: str
    kind: str
    step: np.ndarray
    value: np.ndarray
    stderr: np.ndarray | None = None
    direction: str = "auto"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in SIGNAL_KINDS:
            raise ValueError(f"signal {self.name!r}: kind {self.kind!r} is not one of {SIGNAL_KINDS}")
        if self.direction not in ("up", "down", "auto"):
            raise ValueError(f"signal {self.name!r}: direction must be up, down or auto")
        step, value = np.asarray(self.step, float), np.asarray(self.value, float)
        if step.shape != value.shape or step.ndim != 1:
            raise ValueError(f"signal {self.name!r}: step and value must be 1-D and equally long, "
                             f"got {step.shape} and {value.shape}")
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "value", value)
        if self.stderr is not None:
            object.__setattr__(self, "stderr", np.asarray(self.stderr, float))

    @property
    def family(self) -> str:
        """'llc', 'loss' (bare metric names), or the part before ':' ('probe', 'ablation', ...)."""
        if self.name.startswith("llc"):
            return "llc"
        return self.name.split(":", 1)[0] if ":" in self.name else "loss"

    def __len__(self) -> int:
        return len(self.step)
