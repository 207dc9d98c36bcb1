"""A run's stage map: the signals of training and of every registered analysis, into stages.stage_map.

    >>> sm = run_stage_map("runs/addition", save=True)                # doctest: +SKIP
    >>> print(sm.summary())                                            # doctest: +SKIP
"""
from __future__ import annotations


from llc_watch.run import MissingAnalysisError, Run, open_run
from llc_watch.stages.stage_map import StageMap, stage_map

from .base import REGISTRY, run_signals, tables_signals

STAGE_MAP_FILE = "stage_map.json"


def tables_stage_map(tables, task=None, tolerance: float = 0.35, resamples: int = 100, seed: int = 0,
                     warnings=(), **detect) -> StageMap:
    """The stage map of {table name: DataFrame}: every registered analysis's signals, warnings and
    stage-map arguments (e.g. the LLC's invalid steps) from its table."""
    signals = tables_signals(tables, task)
    warnings = list(warnings)
    kwargs = {}
    for a in REGISTRY.values():
        t = tables.get(a.schema.name)
        if t is None or not len(t) or (task is not None and not a.applies_to(task)):
            continue
        warnings += a.warnings(t)
        extra = getattr(a, "stage_map_kwargs", None)
        if extra is not None:
            kwargs.update(extra(t))
    if not signals:
        raise MissingAnalysisError("no table to find stages in")
    return stage_map(signals, tolerance, resamples, seed, warnings=warnings, **kwargs, **detect)


def run_stage_map(source, tolerance: float = 0.35, resamples: int = 100, seed: int = 0,
                  save: bool = False, **detect) -> StageMap:
    """The stage map of a run folder; `save=True` writes stages.csv, boundaries.csv and stage_map.json into it.

    Missing tables become warnings naming the command that makes them; signals with too few points
    are skipped with a warning; invalid LLC checkpoints are left out of the fit.
    """
    run = source if isinstance(source, Run) else open_run(source)
    _, _, missing = run_signals(run)
    try:
        out = tables_stage_map(run.tables(), run.task, tolerance, resamples, seed,
                               warnings=list(missing.values()), **detect)
    except (ValueError, MissingAnalysisError) as e:
        raise MissingAnalysisError(f"{run.dir}: {e}; " + "; ".join(missing.values())) from None
    if save:
        out.save(run.dir)
    return out


def load_stage_map(run_dir) -> StageMap:
    """Read stage_map.json from a run folder (written by run_stage_map(..., save=True))."""
    run = run_dir if isinstance(run_dir, Run) else open_run(run_dir)
    d = run.read_json(STAGE_MAP_FILE)
    if d is None:
        raise MissingAnalysisError(f"{run.dir / STAGE_MAP_FILE} not found: run `llc-watch stages {run.dir}`")
    return StageMap.from_dict(d)
