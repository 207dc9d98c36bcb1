"""Linear probes for every task feature at every checkpoint (fitting: llc_watch.probes).

Writes probes.csv (tidy: one row per step × feature × layer × site × position × measure × control,
with step-0 controls added once every step is in) and probes_quiet.csv (quiet-or-loud per feature).

    >>> df = compute_probes("runs/addition")                            # doctest: +SKIP
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from llc_watch.probes import FORMED_REDUCE, ProbeSettings, add_step0_control, feature_curves, fit_checkpoint_probes
from llc_watch.stages import FORMED_THRESHOLD, feature_verdicts, stage_map
from llc_watch.stages.quiet import VERDICT_COLUMNS
from llc_watch.run import Column, TableSchema, register_table
from llc_watch.signals import Signal

from .base import Analysis, run_analysis

PROBES_TABLE = register_table(TableSchema("probes", "probes.csv", "llc-watch probe RUN", (
    Column("step", "int"), Column("feature", "str"), Column("layer", "int"), Column("site", "str"),
    Column("position", "int", "position after '=' (-1: pooled over positions)"),
    Column("measure", "str", "accuracy, balanced_accuracy, log_loss, r2, selectivity, baseline"),
    Column("value", "float"), Column("control", "str", "probe, shuffled, majority, step0"),
    Column("kind", "str", "binary, categorical, numeric"), Column("n_train", "int"), Column("n_test", "int"),
    Column("train_log_loss", "float", required=False),
    Column("train_value", "float", "the same measure on the probe's train rows (what selects the best probe)",
           required=False),
)))
_QUIET_TYPES = {"feature": "str", "status": "str", "before_drop": "bool", "formed_by": "str", "drop_rule": "str"}
QUIET_TABLE = register_table(TableSchema("probes_quiet", "probes_quiet.csv", "llc-watch probe RUN", tuple(
    Column(c, _QUIET_TYPES.get(c, "float"),
           "quiet, early, loud, at_init, never (llc_watch.stages.quiet)" if c == "status" else "")
    for c in VERDICT_COLUMNS)))


@dataclass(frozen=True)
class ProbeRunSettings(ProbeSettings):
    threshold: float = FORMED_THRESHOLD   # held-out balanced accuracy (R^2) at which a feature counts as formed

    def validate(self):
        super().validate()
        self.within("threshold", 0.0, 1.0)


def probe_job(checkpoint, settings: dict) -> list[dict]:
    """Every probe of every feature at one checkpoint, as tidy rows. Top level: picklable."""
    s = ProbeSettings.from_mapping(settings).to_dict()
    cfg = checkpoint.config()
    model = checkpoint.load_model()
    return fit_checkpoint_probes(model, cfg.make_task(), s, run_seed=cfg.seed, step=checkpoint.step).rows


def best_probe(probes: pd.DataFrame, measure: str = "accuracy", fallback: str | None = "r2") -> pd.DataFrame:
    """Best probe per (feature, step): max `measure` over layer, site and position, control == 'probe'.

    Features with no `measure` rows (numeric features have only r2) use `fallback` instead.
    Returns columns feature, step, value, layer, site, position (of the best probe), measure.
    """
    have = set(probes.loc[probes["measure"] == measure, "feature"])
    use = np.where(probes["feature"].isin(have), measure, fallback if fallback else measure)
    p = probes[probes["measure"] == use]
    if "control" in p.columns:
        p = p[p["control"].fillna("probe") == "probe"]
    p = p[np.isfinite(p["value"].astype(float))]
    if p.empty:
        return pd.DataFrame(columns=["feature", "step", "value", "layer", "site", "position"])
    idx = p.groupby(["feature", "step"])["value"].idxmax()
    keep = [c for c in ["feature", "step", "value", "layer", "site", "position", "measure"] if c in p.columns]
    return p.loc[idx, keep].sort_values(["feature", "step"]).reset_index(drop=True)


def probe_control(probes: pd.DataFrame, control: str = "shuffled", measure: str = "accuracy") -> pd.DataFrame:
    """The control's best value per (feature, step), e.g. the shuffled-label probe."""
    p = probes[(probes["measure"] == measure) & (probes["control"] == control)]
    return p.groupby(["feature", "step"], as_index=False)["value"].max()


class Probes(Analysis):
    name = "probes"
    command = "probe"
    Settings = ProbeRunSettings
    schema = PROBES_TABLE
    job = staticmethod(probe_job)
    run_level = ("threshold",)
    help = "linear probes for the task's features at every checkpoint"
    description = ("Fit linear probes for every task feature at every checkpoint, per layer, site and position, "
                   "with controls (majority class, shuffled labels, step 0); classify each feature as quiet or "
                   "loud. Writes probes.csv and probes_quiet.csv.")

    def applies_to(self, task):
        return bool(task.features)

    def settings(self, run, given=None):
        s = self.Settings.from_mapping(given)
        if run is not None:
            s.check_task(run.task)
        return s

    def checkpoints(self, run, steps, settings=None):
        ckpts = super().checkpoints(run, steps, settings)
        if 0 not in {c.step for c in ckpts}:  # step 0 is the untrained-model control
            ckpts = [c for c in run.checkpoints() if c.step == 0] + ckpts
        return ckpts

    def finish(self, run, table, settings):
        df = add_step0_control(table)
        try:
            metrics = run.metrics()
            run.write_table("probes_quiet", quiet_or_loud(df, metrics, threshold=settings.threshold))
        except Exception as e:  # the table is still useful without the verdict
            warnings.warn(f"quiet-or-loud classification skipped: {e}")
        return df

    def signals(self, table):
        return probe_signals(table)

    def summary(self, run, table):
        q = run.table("probes_quiet", required=False)
        return [] if q is None else [q.to_string(index=False, max_colwidth=40)]


PROBES = Probes()


def compute_probes(run_dir, settings=None, checkpoints=None, executor=None, progress: bool = True,
                   threshold: float | None = None) -> pd.DataFrame:
    """Probe every checkpoint of a run (step 0 too, as the untrained control); write probes.csv and
    probes_quiet.csv. Finished checkpoints are skipped on a rerun (results/probes/)."""
    given = dict(settings or {})
    if threshold is not None:
        given["threshold"] = threshold
    return run_analysis(PROBES, run_dir, given, checkpoints, executor, progress)


def probe_signals(probes: pd.DataFrame, reduce: str = FORMED_REDUCE) -> dict[str, Signal]:
    """"probe:<feature>" onset signals: each feature's train-selected held-out curve
    (llc_watch.probes.feature_curves). The stage map and probes_quiet.csv both read these."""
    curves = feature_curves(probes, reduce=reduce, on_missing_train="test")
    return {f"probe:{feat}": Signal(f"probe:{feat}", "onset", g["step"].to_numpy(float),
                                    g["value"].to_numpy(float), direction="up")
            for feat, g in curves.groupby("feature")}


def quiet_or_loud(probes: pd.DataFrame, metrics: pd.DataFrame, threshold: float = FORMED_THRESHOLD,
                  reduce: str = FORMED_REDUCE, resamples: int = 100, seed: int = 0) -> pd.DataFrame:
    """probes_quiet.csv: per feature, quiet / early / loud / at_init / never, decided by
    llc_watch.stages.feature_verdicts on the stage map of the training curves and the probe signals,
    i.e. the same "formed", "drop" and "quiet" as the run's stage map (same detector settings).

        >>> q = quiet_or_loud(run.table("probes"), run.metrics())          # doctest: +SKIP
    """
    from .training import metrics_signals
    signals = {**metrics_signals(metrics), **probe_signals(probes, reduce)}
    sm = stage_map(signals, resamples=resamples, seed=seed, formed_threshold=threshold)
    return feature_verdicts(sm)
