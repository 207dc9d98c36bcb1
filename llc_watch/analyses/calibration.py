"""Calibrate SGLD on a run: sweep ε × nβ × γ on a few checkpoints, choose by the engine's rule
(llc_watch.llc.calibrate.choose), save the choice in RUN/calibration.json for `llc-watch llc`.

    >>> cal = calibrate_run("runs/addition")                          # doctest: +SKIP
    >>> cal.choice["epsilon"]                                          # doctest: +SKIP

The sweep is RUN/calibration_sweep.csv, one row per (step, ε, nβ, γ).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from llc_watch.io import atomic_write_json
from llc_watch.llc.calibrate import (DEFAULT_GRID, RULE, Calibration, CalibrationError, choice_warnings, choose,
                                     mark_usable, sweep)
from llc_watch.llc.estimator import default_nbeta
from llc_watch.run import Column, TableSchema, register_table

from .base import Analysis, run_analysis
from .llc import CALIBRATION_FILE, LLCSettings, checkpoint_problem, estimator_kwargs, load_calibration


@dataclass(frozen=True)
class CalibrationSettings(LLCSettings):
    epsilons: tuple[float, ...] = tuple(DEFAULT_GRID["epsilons"])  # step sizes ε to sweep
    nbetas: tuple = (None,)           # nβ values to sweep; None: n/log n
    gammas: tuple[float, ...] = (100.0,)  # localisation strengths γ to sweep

    def validate(self):
        super().validate()
        if not self.epsilons or not all(e is not None and math.isfinite(e) and e > 0 for e in self.epsilons):
            self._fail("epsilons", "give positive finite step sizes, e.g. 1e-5,1e-4,1e-3")
        if not self.nbetas or not all(b is None or (math.isfinite(b) and b > 0) for b in self.nbetas):
            self._fail("nbetas", "give positive finite values (or leave the default n/log n)")
        if not self.gammas or not all(math.isfinite(g) and g >= 0 for g in self.gammas):
            self._fail("gammas", "give finite values >= 0")


_GRID_POINT = ("epsilon", "nbeta", "gamma")
CALIBRATION_TABLE = register_table(TableSchema("calibration", "calibration_sweep.csv", "llc-watch calibrate RUN", (
    Column("step", "int"), Column("measure", "str"), Column("value", "float", "llc_mean"),
    Column("epsilon", "float"), Column("nbeta", "float"), Column("gamma", "float"),
    Column("llc_mean", "float"), Column("llc_std", "float"), Column("llc_stderr", "float"),
    Column("valid", "bool"), Column("drift", "float"), Column("rhat", "float"), Column("failed_chains", "int"),
    Column("burn_in", "int"), Column("chains", "int"), Column("draws", "int"), Column("drift_stderr", "float"),
    Column("drifting", "bool"), Column("ess", "float"), Column("mean_loss_trace", "json"), Column("n", "int"),
    Column("negative", "bool"), Column("stable", "bool"), Column("usable", "bool"),
)))


def calibration_job(checkpoint, settings: dict) -> list[dict]:
    """The sweep at one checkpoint, as tidy rows (measure 'llc'). Top level: picklable."""
    s, model, loss_fn, data = checkpoint_problem(checkpoint, settings)
    kw = {k: v for k, v in estimator_kwargs(s, model).items() if k not in _GRID_POINT}
    df = sweep(model, loss_fn, data, epsilons=s["epsilons"], nbetas=s["nbetas"], gammas=s["gammas"], **kw)
    df.insert(0, "step", checkpoint.step)
    df.insert(1, "measure", "llc")
    df["value"] = df["llc_mean"]
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in df.to_dict("records")]


def default_calibration_steps(steps: list[int]) -> list[int]:
    """The middle and the final checkpoint: the final is usually the sharpest minimum."""
    return sorted({steps[len(steps) // 2], steps[-1]})


class CalibrationAnalysis(Analysis):
    name = "calibration"
    command = "calibrate"
    Settings = CalibrationSettings
    schema = CALIBRATION_TABLE
    job = staticmethod(calibration_job)
    cli_hidden = _GRID_POINT      # the sweep sets them
    help = "sweep SGLD step size x n*beta (x gamma) and save a choice"
    description = ("Sweep epsilon x n*beta (x gamma) on a few checkpoints (default: the middle and last), mark "
                   "each cell stable or not (failed chains, drift after burn-in, split-R-hat), choose by the "
                   "documented rule and save calibration.json, which `llc-watch llc` then uses.")

    def job_settings(self, run, settings):
        d = settings.to_dict()
        for k in _GRID_POINT:
            d.pop(k)
        d["epsilons"] = sorted(d["epsilons"])
        return d

    def checkpoints(self, run, steps):
        if steps is None:
            all_steps = [c.step for c in run.checkpoints()]
            if not all_steps:
                raise CalibrationError(f"{run.dir} has no checkpoints; train it first")
            steps = default_calibration_steps(all_steps)
        return super().checkpoints(run, steps)

    def should_run(self, run, settings):
        return load_calibration(run) is None

    def finish(self, run, table, settings):
        df = mark_usable(table)
        n = int(df["n"].iloc[0])
        base = {k: v for k, v in settings.to_dict().items()
                if k not in ("threads", "device", "epsilons", "nbetas", "gammas") + _GRID_POINT}
        choice = {**base, **choose(df, n)}
        warns = choice_warnings(df, choice)
        atomic_write_json(run.dir / CALIBRATION_FILE, {
            "choice": choice, "rule": RULE, "warnings": warns, "n": n, "default_nbeta": default_nbeta(n),
            "grid": {k: list(getattr(settings, k)) for k in ("epsilons", "nbetas", "gammas")},
            "steps": sorted(int(s) for s in df["step"].unique())})
        df.attrs.update(choice=choice, choice_warnings=warns)   # plain data: attrs are copied with the frame
        return df

    def summary(self, run, table):
        choice = table.attrs.get("choice")
        cols = [c for c in ("step", "epsilon", "nbeta", "gamma", "llc_mean", "llc_std", "valid", "drift", "rhat",
                            "failed_chains", "usable") if c in table.columns]
        lines = [table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")]
        if choice is not None:
            lines.append("chosen: " + ", ".join(f"{k}={choice[k]}" for k in _GRID_POINT))
            lines += [f"warning: {w}" for w in table.attrs.get("choice_warnings") or []]
        lines.append(f"wrote {run.dir / CALIBRATION_FILE} (used by `llc-watch llc` unless overridden)")
        return lines


CALIBRATION_ANALYSIS = CalibrationAnalysis()


def calibrate_run(run_dir, *, steps: list[int] | None = None, epsilons=None, nbetas=None, gammas=None,
                  settings=None, executor=None, progress: bool = True) -> Calibration:
    """Sweep the grid on `steps` (default: middle and final checkpoints), choose, and save.

    settings: other LLC settings for the sweep (chains, draws, burn_in, batch_size, n_data, ...);
    the chosen ε, nβ, γ are saved with them in RUN/calibration.json, which `compute_llc` then uses.
    """
    given = {k: v for k, v in dict(settings or {}).items() if k not in _GRID_POINT}
    given.update({k: v for k, v in (("epsilons", epsilons), ("nbetas", nbetas), ("gammas", gammas)) if v})
    df = run_analysis(CALIBRATION_ANALYSIS, run_dir, given, steps, executor, progress)
    return Calibration(df, df.attrs["choice"], RULE, df.attrs["choice_warnings"])
