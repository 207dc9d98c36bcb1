"""Stage maps: boundaries in each signal on log(step + 1), aligned across signals, cut into stages.

The recipe follows Hoogland et al. (arXiv 2402.02364): fit a Gaussian process (hyperparameters by
marginal likelihood) to the LLC against log(step + 1) and put boundaries where its slope comes to
zero (critical points, plateau edges); intervals and support come from posterior function draws.
We add kinks, loss plateaus and drops, onsets of probe accuracy / ablation effects (Naidu et al.,
arXiv 2505.03997), emergence peaks and trajectory turning points (essential dynamics).

    smoothing.py   GP fit of one signal (Smooth, with posterior draws)
    boundaries.py  Boundary, find_boundaries, merge_boundaries, align_boundaries
    stage_map.py   stage_table, StageMap, stage_map(signals), loss_drop, quiet_events, quiet_stages
    quiet.py       the one definition of "formed" (probe onset) and "quiet"; feature_verdicts
    adaptive.py    adaptive SGLD budget (which checkpoints need more draws; the loop)
    synthetic.py   planted curves and the recall / spurious / coverage scorer

This package takes Signals and knows no file names; a run folder's stage map (each analysis's
signals from its table) is llc_watch.analyses.stage_map.run_stage_map.

    >>> import numpy as np
    >>> steps = np.unique(np.geomspace(1, 10_000, 60).astype(int))
    >>> x = np.log(steps + 1)
    >>> loss = 2.0 - 1.9 / (1 + np.exp(-(x - np.log(1000)) / 0.3))     # one drop near step 1000
    >>> [b.kind for b in find_boundaries(steps, loss, kind="loss", signal="train_loss")]
    ['plateau-end', 'drop', 'drop-end']
    >>> b = find_boundaries(steps, loss, kind="loss")[1]
    >>> 700 < b.step < 1400 and b.lo <= b.step <= b.hi
    True
"""
from .boundaries import (BOUNDARY_KINDS, CRITICAL_KINDS, Boundary, align_boundaries, find_boundaries, is_strong,
                         merge_boundaries)
from .quiet import FORMED_THRESHOLD, Formation, event_is_quiet, feature_verdicts, formed_onset
from .smoothing import Smooth, log_step, smooth_signal, step_of
from .stage_map import (LossDrop, StageMap, credibly_flat, loss_drop, quiet_events, quiet_stages, stage_map,
                        stage_table)

__all__ = [
    "Boundary", "Smooth", "smooth_signal", "find_boundaries", "align_boundaries", "stage_table",
    "StageMap", "stage_map", "BOUNDARY_KINDS", "log_step", "step_of", "CRITICAL_KINDS", "is_strong",
    "merge_boundaries", "LossDrop", "loss_drop", "quiet_events", "quiet_stages", "credibly_flat",
    "FORMED_THRESHOLD", "Formation", "event_is_quiet", "feature_verdicts", "formed_onset",
]
