"""Stage maps: boundaries in each signal on log(step + 1), aligned across signals, cut into stages.

The recipe follows Hoogland et al. (arXiv 2402.02364): fit a Gaussian process (hyperparameters by
marginal likelihood) to the LLC against log(step + 1) and put boundaries where its slope comes to
zero (critical points, plateau edges); intervals and support come from posterior function draws.
We add kinks, loss plateaus and drops, onsets of probe accuracy / ablation effects (Naidu et al.,
arXiv 2505.03997), emergence peaks and trajectory turning points (essential dynamics).

    smoothing.py   GP fit of one signal (Smooth, with posterior draws)
    boundaries.py  Boundary, find_boundaries, merge_boundaries, align_boundaries
    stage_map.py   stage_table, StageMap, stage_map(signals), loss_drop, quiet_events, quiet_stages
    adaptive.py    adaptive SGLD budget (which checkpoints need more draws; the loop)
    synthetic.py   planted curves and the recall / spurious / coverage scorer
    tables.py      run folder tables -> Signals (run_signals, run_stage_map)

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
from .smoothing import Smooth, log_step, smooth_signal, step_of
from .stage_map import (LossDrop, StageMap, credibly_flat, loss_drop, quiet_events, quiet_stages,
                        stage_map as stage_map_of_signals, stage_table)
from .tables import (TABLE_FILES, MissingAnalysisError, RunTables, ablation_effect, best_probe, load_run_tables,
                     load_stage_map, probe_control, run_signals, run_stage_map)


def stage_map(source, *args, **kwargs) -> StageMap:
    """The stage map of signals ({name: Signal}), a run folder, or RunTables (see run_stage_map)."""
    if isinstance(source, dict) and all(hasattr(v, "kind") for v in source.values()):
        return stage_map_of_signals(source, *args, **kwargs)
    return run_stage_map(source, *args, **kwargs)


__all__ = [
    "Boundary", "Smooth", "smooth_signal", "find_boundaries", "align_boundaries", "stage_table",
    "StageMap", "stage_map", "stage_map_of_signals", "RunTables", "load_run_tables", "load_stage_map",
    "run_signals", "run_stage_map", "MissingAnalysisError", "BOUNDARY_KINDS", "TABLE_FILES",
    "best_probe", "probe_control", "ablation_effect", "log_step", "step_of", "CRITICAL_KINDS", "is_strong",
    "merge_boundaries", "LossDrop", "loss_drop", "quiet_events", "quiet_stages", "credibly_flat",
]
