"""One definition each of "formed", "the drop" and "quiet", for the stage map and probes_quiet.csv.

- **formed**: a feature's probe curve (held-out balanced accuracy of the train-selected probe, see
  llc_watch.probes.feature_curves) *forms* at the onset of the rise that first takes it to
  `threshold`: the latest onset boundary at or before the first checkpoint at or above the
  threshold, with that boundary's interval. When the detector finds no onset before the crossing
  (a rise at the first checkpoints, or too few of them), the crossing itself stands in, with the
  interval (previous checkpoint, crossing). A curve at or above the threshold at its first
  checkpoint is `at_init`; one that never reaches it is `never` (a rise that stalls below the
  threshold is not a formed feature, and the stage map keeps no onset for it).
- **the drop**: llc_watch.stages.loss_drop (the loss drop nearest the rise of exact-match accuracy,
  its steepest point).
- **quiet**: an event is quiet when the loss is credibly flat (`credibly_flat`) from the start of
  the plateau it falls in (the last strong drop-end of the loss at or before it, else the first
  checkpoint) to the end of its interval. A feature is `quiet` when it forms before the drop and
  its onset is a quiet event; `early` when it forms before the drop while the loss is still
  moving; `loud` when it forms at or after the drop. `before_drop` (quiet or early) is what Naidu
  et al. call quiet (decodable before the loss drops).

    >>> import numpy as np
    >>> from llc_watch.signals import Signal
    >>> st = np.unique(np.geomspace(1, 1e4, 50).astype(int)).astype(float)
    >>> rise = 0.5 + 0.5 / (1 + np.exp(-(np.log1p(st) - np.log(300)) / 0.2))
    >>> f = formed_onset(Signal("probe:c", "onset", st, rise, direction="up"), [], threshold=0.9)
    >>> f.status, f.how, 300 < f.step < 1000
    ('formed', 'threshold crossing', True)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from llc_watch.signals import Signal

from .boundaries import Boundary
from .smoothing import Smooth, log_step

FORMED_THRESHOLD = 0.9   # held-out balanced accuracy (R^2 for numeric features) at which a feature is formed
PROBE_PREFIX = "probe:"


@dataclass(frozen=True)
class Formation:
    """When one probe signal's feature formed. status: formed, at_init or never; step/lo/hi: the onset
    and its interval (NaN unless formed); how: "onset boundary" or "threshold crossing"."""

    signal: str
    status: str
    step: float
    lo: float
    hi: float
    how: str
    threshold: float
    first_value: float
    final_value: float
    crossing_step: float

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Formation":
        return cls(**{k: (float("nan") if d.get(k) is None and k not in ("signal", "status", "how") else d[k])
                      for k in cls.__dataclass_fields__})

    def boundary(self) -> Boundary | None:
        """The formed onset as a stage-map boundary (strong: the curve reached the threshold)."""
        if self.status != "formed":
            return None
        return Boundary(self.step, self.lo, self.hi, self.signal, "onset", support=1.0,
                        strength=float(self.final_value - self.first_value), strong=True)


def formed_onset(signal: Signal, boundaries: Sequence[Boundary], threshold: float = FORMED_THRESHOLD) -> Formation:
    """The formation of `signal`'s feature (see the module docstring), given its detected boundaries."""
    order = np.argsort(signal.step)
    st, v = signal.step[order], signal.value[order]
    ok = np.isfinite(v)
    st, v = st[ok], v[ok]
    nan = float("nan")
    if not len(v):
        return Formation(signal.name, "never", nan, nan, nan, "no finite values", threshold, nan, nan, nan)
    first, final = float(v[0]), float(v[-1])
    hit = np.nonzero(v >= threshold)[0]
    if not len(hit):
        return Formation(signal.name, "never", nan, nan, nan, "", threshold, first, final, nan)
    i = int(hit[0])
    if i == 0:
        return Formation(signal.name, "at_init", nan, nan, nan, "", threshold, first, final, float(st[0]))
    cross = float(st[i])
    onsets = [b for b in boundaries if b.signal == signal.name and b.kind == "onset" and b.step <= cross]
    if onsets:
        b = max(onsets, key=lambda b: b.step)
        return Formation(signal.name, "formed", b.step, b.lo, min(b.hi, cross), "onset boundary", threshold,
                         first, final, cross)
    return Formation(signal.name, "formed", cross, float(st[i - 1]), cross, "threshold crossing", threshold,
                     first, final, cross)


def plateau_start(step: float, drop_ends: Sequence[float], first_step: float) -> float:
    """Start of the loss plateau `step` falls in: the last drop-end at or before it, else the first step."""
    return max([e for e in drop_ends if e <= step], default=first_step)


def event_is_quiet(step: float, hi: float, loss_smooth: Smooth | None, drop_ends: Sequence[float],
                   first_step: float, flat: float = 0.1) -> bool:
    """Whether an event at `step` (interval end `hi`) is quiet: the loss credibly flat from its
    plateau's start to `hi`."""
    from .stage_map import credibly_flat
    return loss_smooth is not None and credibly_flat(loss_smooth, plateau_start(step, drop_ends, first_step),
                                                     float(hi), flat)


def loss_drop_ends(boundaries: Sequence[Boundary], loss: str, strong_only: bool = True) -> list[float]:
    """Steps of the loss's drop-ends (strong ones by default): where its plateaus start."""
    return sorted(b.step for b in boundaries if b.signal == loss and b.kind == "drop-end"
                  and (b.strong or not strong_only))


VERDICT_COLUMNS = ["feature", "status", "before_drop", "feature_step", "feature_lo", "feature_hi", "formed_by",
                   "drop_step", "drop_lo", "drop_hi", "drop_rule", "plateau_end_step", "log_steps_before_drop",
                   "threshold", "value_at_first_step", "final_value", "crossing_step", "loss_flat_since"]


def feature_verdicts(sm, flat: float = 0.1) -> pd.DataFrame:
    """Per probe signal of a StageMap: quiet, early, loud, at_init or never, with the evidence.

    The one place the status of a feature is decided; probes_quiet.csv is this table.
    log_steps_before_drop: log(drop + 1) - log(onset + 1) (> 0: formed before the drop).
    """
    from .stage_map import loss_drop
    d = loss_drop(sm)
    forms = getattr(sm, "formations", {}) or {}
    loss = d.signal if d is not None else None
    ends = loss_drop_ends(sm.boundaries, loss) if loss else []
    first = float(sm.stages["start_step"].min()) if len(sm.stages) else 0.0
    sm_loss = sm.smooths.get(loss) if loss else None
    rows = []
    for name, f in sorted(forms.items()):
        status, before = f.status, False
        if f.status == "formed":
            if d is None:
                status = "formed"  # no drop to judge against
            elif f.step < d.step:
                before = True
                status = "quiet" if event_is_quiet(f.step, f.hi, sm_loss, ends, first, flat) else "early"
            else:
                status = "loud"
        nan = float("nan")
        rows.append({
            "feature": name[len(PROBE_PREFIX):] if name.startswith(PROBE_PREFIX) else name,
            "status": status, "before_drop": before, "feature_step": f.step, "feature_lo": f.lo,
            "feature_hi": f.hi, "formed_by": f.how,
            "drop_step": d.step if d else nan, "drop_lo": d.drop.lo if d else nan, "drop_hi": d.drop.hi if d else nan,
            "drop_rule": f"steepest point of the {d.signal} drop nearest the accuracy rise" if d else "no loss drop found",
            "plateau_end_step": d.plateau_end.step if d and d.plateau_end else nan,
            "log_steps_before_drop": float(log_step(d.step) - log_step(f.step)) if d and f.status == "formed" else nan,
            "threshold": f.threshold, "value_at_first_step": f.first_value, "final_value": f.final_value,
            "crossing_step": f.crossing_step,
            "loss_flat_since": plateau_start(f.step, ends, first) if f.status == "formed" and loss else nan})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


__all__ = ["FORMED_THRESHOLD", "Formation", "formed_onset", "event_is_quiet", "plateau_start", "feature_verdicts",
           "loss_drop_ends", "VERDICT_COLUMNS"]
