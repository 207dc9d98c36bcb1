"""The Analysis interface, the registry, and the one driver that runs any analysis on any executor.

An analysis is one module with one subclass of `Analysis` and one line in REGISTRY (analyses/__init__.py):

    class MyAnalysis(Analysis):
        name = "mine"                      # CLI subcommand, results/mine/, default table name
        Settings = MySettings              # a frozen SettingsBase dataclass with commented defaults
        schema = register_table(TableSchema("mine", "mine.csv", "llc-watch mine RUN", (...)))
        job = staticmethod(mine_job)       # mine_job(checkpoint, settings: dict) -> list[dict], top level
        def signals(self, table): ...      # {name: Signal} for the stage map (optional)
        def applies_to(self, task): ...    # default: every task

The driver (`run_analysis`) validates the settings before any checkpoint is loaded, runs one
resumable job per checkpoint (llc_watch.jobs), and rewrites the table only from a complete,
successful set of results: a failed job leaves the previous table as it was.

    >>> from llc_watch.analyses import REGISTRY
    >>> list(REGISTRY)
    ['calibration', 'llc', 'probes', 'ablations', 'fourier', 'essential_dynamics', 'crosscoder']
    >>> REGISTRY["llc"].Settings().chains
    4
"""
from __future__ import annotations

from typing import ClassVar, Mapping, Sequence

import pandas as pd

from llc_watch.checkpoints import Checkpoint, CheckpointError
from llc_watch.jobs import JobFailure, JobsFailed, run_checkpoint_jobs
from llc_watch.run import Run, TableSchema, open_run
from llc_watch.signals import Signal

from llc_watch.settings import SettingsBase, SettingsError


class Analysis:
    """One per-checkpoint analysis. Subclasses set the class attributes and override what they need.

    name, Settings, schema, job: required (see the module docstring).
    help / description: the CLI's one-line help and its longer description.
    pipeline: whether `llc-watch pipeline` runs it (where `applies_to` the run's task).
    """

    name: ClassVar[str]
    Settings: ClassVar[type[SettingsBase]]
    schema: ClassVar[TableSchema]
    job: ClassVar = None                        # per-checkpoint analyses: fn(checkpoint, settings) -> rows
    help: ClassVar[str] = ""
    description: ClassVar[str] = ""
    pipeline: ClassVar[bool] = True
    run_level: ClassVar[tuple[str, ...]] = ()   # settings used by `finish`, not by the job (not in its key)

    # --- what it applies to, and with what -----------------------------------------------------
    def applies_to(self, task) -> bool:
        """Whether this analysis makes sense for a task (e.g. Fourier measures: modular addition)."""
        return True

    def settings(self, run: Run | None, given: Mapping | SettingsBase | None = None) -> SettingsBase:
        """Defaults < given, validated (SettingsError before any work). Override to add a run-level
        layer between them (the LLC reads the run's calibration)."""
        return self.Settings.from_mapping(given)

    def job_settings(self, run: Run, settings: SettingsBase) -> dict:
        """The dict each job receives (and is keyed by). Override to fill in run-level values."""
        d = settings.to_dict()
        for k in self.run_level:
            d.pop(k, None)
        return d

    def checkpoints(self, run: Run, steps: Sequence[int] | None, settings: SettingsBase | None = None
                    ) -> list[Checkpoint]:
        """Which checkpoints to run on: the given steps (or Checkpoints), else all."""
        if steps is None:
            return run.checkpoints()
        if all(hasattr(c, "path") and hasattr(c, "step") for c in steps):   # Checkpoint-like handles
            return list(steps)
        return run.checkpoints([int(s) for s in steps])

    def batch_job(self, run: Run, settings: SettingsBase):
        """Optionally a function (checkpoints, job settings) -> [rows | exception per checkpoint] that
        computes many checkpoints' jobs in one pass (used by the local driver; None: one job each)."""
        return None

    def should_run(self, run: Run, settings: SettingsBase) -> bool:
        """Whether the pipeline needs it on this run (calibration: not when already calibrated)."""
        return True

    # --- run-level analyses ---------------------------------------------------------------------
    def compute(self, run: Run, settings: SettingsBase, checkpoints: list[Checkpoint], progress: bool = True
                ) -> pd.DataFrame:
        """The whole table at once, for analyses that need many checkpoints together (a crosscoder over
        snapshots, PCA of outputs over checkpoints). Such an analysis sets `job = None` and overrides
        this; it must be resumable and write its side files atomically itself."""
        raise NotImplementedError(f"analysis {self.name!r} has neither a per-checkpoint job nor compute()")

    # --- after the jobs ------------------------------------------------------------------------
    def finish(self, run: Run, table: pd.DataFrame, settings: SettingsBase) -> pd.DataFrame:
        """Whole-run post-processing of the rows (controls that need every step, side tables)."""
        return table

    def signals(self, table: pd.DataFrame) -> dict[str, Signal]:
        """The curves this analysis contributes to the stage map (none by default)."""
        return {}

    def warnings(self, table: pd.DataFrame) -> list[str]:
        """Lines the stage map and report should show about this table (e.g. invalid estimates)."""
        return []

    def summary(self, run: Run, table: pd.DataFrame) -> list[str]:
        """Lines the CLI prints after a run (default: none beyond 'wrote ...')."""
        return []

    def figures(self, run: Run, table: pd.DataFrame, stage_map=None) -> list[dict]:
        """The report's section for this analysis: [{"fig": matplotlib Figure, "alt": ..., "caption": ...}]
        (none by default; the stage figure already draws every signal)."""
        return []

    def __repr__(self):
        return f"<analysis {self.name}: {self.schema.file}>"


REGISTRY: dict[str, Analysis] = {}


def register(analysis: Analysis) -> Analysis:
    """Add an analysis to the registry (its module does this with one line)."""
    if analysis.name in REGISTRY and type(REGISTRY[analysis.name]) is not type(analysis):
        raise ValueError(f"analysis {analysis.name!r} registered twice")
    REGISTRY[analysis.name] = analysis
    return analysis


def get_analysis(name: str) -> Analysis:
    try:
        return REGISTRY[name]
    except KeyError:
        raise SettingsError(f"no analysis named {name!r}; known: {', '.join(REGISTRY)}") from None


def run_analysis(analysis: Analysis | str, run_dir, settings: Mapping | SettingsBase | None = None,
                 checkpoints: Sequence | None = None, executor=None, progress: bool = True) -> pd.DataFrame:
    """Run `analysis` on every (or the given) checkpoint of a run; write its table; return it.

    Settings are validated first (SettingsError, before any checkpoint is read). Finished jobs are
    skipped on a rerun (results/<name>/). If any job fails, the table is NOT rewritten (the previous
    one stays) and JobsFailed is raised after every other job has finished and been saved.
    A checkpoint whose embedded task, architecture or seed differ from the run's config.json gets
    no job: the table is written from the run's own checkpoints, then ForeignCheckpointsError
    (a CheckpointError naming both values; its `table` is what was written) is raised.
    The returned frame's attrs hold 'settings' (the Settings object) and 'summary' (jobs run/skipped).
    """
    a = get_analysis(analysis) if isinstance(analysis, str) else analysis
    run = run_dir if isinstance(run_dir, Run) else open_run(run_dir)
    s = a.settings(run, settings)
    if not a.applies_to(run.task):
        raise SettingsError(f"analysis {a.name!r} does not apply to task {run.task.name!r}")
    ckpts = a.checkpoints(run, checkpoints, s)
    # a checkpoint from another run (task, architecture or seed) is not part of this run: it gets no
    # job and no row; the table is written from the run's own checkpoints, then the command fails
    foreign = [(c, e) for c in ckpts if (e := _foreign(c)) is not None]
    ckpts = [c for c in ckpts if all(c is not f for f, _ in foreign)]
    if a.job is None:   # a run-level analysis: one computation over all its checkpoints
        if foreign:
            raise ForeignCheckpointsError("; ".join(str(e) for _, e in foreign))
        table = a.finish(run, a.compute(run, s, ckpts, progress=progress), s)
        run.write_table(a.schema.name, table)
        attrs = dict(table.attrs)
        table = a.schema.ordered(table)
        table.attrs.update(attrs)
        table.attrs.update(settings=s, summary=f"{len(ckpts)} checkpoints, computed together", ran=len(ckpts),
                           skipped=0)
        return table
    report = run_checkpoint_jobs(a.job, ckpts, a.job_settings(run, s), out_dir=run.results_dir(a.name),
                                 executor=executor, desc=a.name, progress=progress,
                                 batch_fn=a.batch_job(run, s) if executor is None else None)
    report.failures.extend(JobFailure(c.step, c.path, str(e), retry=False) for c, e in foreign)
    if len(report.failures) > len(foreign):
        kept = "was left as it was" if run.has_table(a.schema.name) else "was not written"
        raise JobsFailed(f"{a.name} ({a.schema.file} {kept})", report)
    table = report.table()
    if not len(table):
        if foreign:
            raise ForeignCheckpointsError(f"no {a.schema.file} written: {_foreign_summary(foreign)}")
        raise SettingsError(f"{a.name}: no checkpoints to run on in {run.dir}")
    table = a.finish(run, table, s)
    run.write_table(a.schema.name, table)
    attrs = dict(table.attrs)
    table = a.schema.ordered(table)
    table.attrs.update(attrs)
    table.attrs.update(settings=s, summary=report.summary(), ran=report.ran, skipped=report.skipped)
    if foreign:
        raise ForeignCheckpointsError(f"wrote {run.path(a.schema.name)} from this run's "
                                      f"{len(ckpts)} checkpoint(s) only; {_foreign_summary(foreign)}", table)
    return table


class ForeignCheckpointsError(CheckpointError):
    """Some checkpoints come from another run; `table` is what was written from the run's own ones
    (None when there were none)."""

    def __init__(self, message: str, table: pd.DataFrame | None = None):
        super().__init__(message)
        self.table = table


def _foreign(checkpoint) -> CheckpointError | None:
    check = getattr(checkpoint, "foreign", None)   # bring-your-own checkpoints check shapes when loaded
    return check() if check is not None else None


def _foreign_summary(foreign: list) -> str:
    first = str(foreign[0][1])
    more = f" (and {len(foreign) - 1} more, steps {[c.step for c, _ in foreign[1:]]})" if len(foreign) > 1 else ""
    return first + more


def tables_signals(tables: Mapping[str, pd.DataFrame], task=None) -> dict[str, Signal]:
    """Every signal in {table name: DataFrame}: training curves from 'metrics', then each registered
    analysis's `signals` from its table (where it applies to `task`, when given)."""
    from .training import metrics_signals
    out: dict[str, Signal] = {}
    if tables.get("metrics") is not None:
        out.update(metrics_signals(tables["metrics"]))
    for a in REGISTRY.values():
        t = tables.get(a.schema.name)
        if t is not None and len(t) and (task is None or a.applies_to(task)):
            out.update(a.signals(t))
    return out


def run_signals(run: Run | str) -> tuple[dict[str, Signal], list[str], dict[str, str]]:
    """(signals, warnings, missing) of a run: training curves plus every registered analysis's
    signals from its table where the run has one. `missing` maps a table to the command that makes it."""
    run = run if isinstance(run, Run) else open_run(run)
    tables = run.tables()
    warnings: list[str] = []
    missing: dict[str, str] = {}
    if "metrics" not in tables and getattr(run, "config", None) is not None:   # bring-your-own runs have none
        missing["metrics"] = f"{run.path('metrics')} not found: run `llc-watch train`"
    for a in REGISTRY.values():
        if not a.applies_to(run.task):
            continue
        t = tables.get(a.schema.name)
        if t is None:
            missing[a.schema.name] = f"{run.path(a.schema.name)} not found: run `{a.schema.command_for(run.dir)}`"
        else:
            warnings.extend(a.warnings(t))
    return tables_signals(tables, run.task), warnings, missing
