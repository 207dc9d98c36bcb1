"""Probe-direction ablations at every checkpoint, against random directions (editing: llc_watch.ablations).

    >>> df = compute_ablations("runs/addition")                        # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from llc_watch.ablations import AblationSettings, ablate_model
from llc_watch.run import Column, TableSchema, register_table
from llc_watch.signals import Signal

from .base import Analysis, run_analysis

ABLATIONS_TABLE = register_table(TableSchema("ablations", "ablations.csv", "llc-watch ablate RUN", (
    Column("step", "int"), Column("feature", "str"), Column("layer", "int"), Column("site", "str"),
    Column("position", "int"),
    Column("method", "str", "projection, mean, random, random_shift, random_cov, random_projection"),
    Column("measure", "str", "acc_drop, loss_rise"), Column("value", "float"),
    Column("random_mean", "float", "the matched control's mean (projection: random_shift; mean: random)"),
    Column("random_std", "float", "its standard deviation over random directions"),
    Column("ci_lo", "float", "bootstrap interval of value (examples; directions too for controls)", required=False),
    Column("ci_hi", "float", required=False),
    Column("excess", "float", "value minus the matched control, paired on the control's examples", required=False),
    Column("excess_lo", "float", "bootstrap interval of excess", required=False),
    Column("excess_hi", "float", required=False),
    Column("kind", "str", "binary or categorical feature", required=False),
    Column("rank", "int", "dimension of the ablated subspace (1 for binary, <= K-1 for K classes)", required=False),
    Column("shift", "float"), Column("clean_acc", "float"), Column("clean_loss", "float"),
    Column("n_eval", "int"), Column("n_eval_random", "int"), Column("n_random", "int"),
    Column("probe_accuracy", "float"), Column("probe_balanced_accuracy", "float"),
    Column("probe_train_log_loss", "float"),
)))


def ablate_job(checkpoint, settings: dict) -> list[dict]:
    """Every ablation at one checkpoint, as tidy rows. Top level: picklable."""
    s = AblationSettings.from_mapping(settings).to_dict()
    cfg = checkpoint.config()
    return ablate_model(checkpoint.load_model(), cfg.make_task(), s, run_seed=cfg.seed, step=checkpoint.step)


def ablation_effect(ablations: pd.DataFrame, measure: str = "acc_drop", method: str = "projection") -> pd.DataFrame:
    """Largest projection-ablation effect per (feature, step) with its random-direction control.

    Returns feature, step, value, random_mean, random_std, excess (value - matched control), site,
    position, and the bootstrap intervals (ci_lo, ci_hi, excess_lo, excess_hi) when the table has them.
    """
    a = ablations[(ablations["method"] == method) & (ablations["measure"] == measure)].copy()
    a = a[np.isfinite(a["value"].astype(float))]
    if a.empty:
        return pd.DataFrame(columns=["feature", "step", "value", "random_mean", "random_std", "excess"])
    if "excess" not in a.columns or a["excess"].isna().all():   # tables before the paired excess
        a["excess"] = a["value"] - a["random_mean"].fillna(0.0)
    idx = a.groupby(["feature", "step"])["excess"].idxmax()
    keep = ["feature", "step", "value", "random_mean", "random_std", "excess", "site", "position"]
    keep += [c for c in ("ci_lo", "ci_hi", "excess_lo", "excess_hi") if c in a.columns]
    return a.loc[idx, keep].sort_values(["feature", "step"]).reset_index(drop=True)


class Ablations(Analysis):
    name = "ablations"
    command = "ablate"
    Settings = AblationSettings
    schema = ABLATIONS_TABLE
    job = staticmethod(ablate_job)
    help = "ablate probe directions at every checkpoint, against random directions"
    description = ("Project activations onto each best probe's decision set (hyperplane; for K classes the subspace "
                   "where all class logits tie) at every checkpoint, and mean-ablate along it; compare with matched "
                   "random controls (the same displacement along random or covariance directions, random "
                   "hyperplanes with the probe's offset), with bootstrap intervals. Writes ablations.csv.")

    def applies_to(self, task):
        return any(f.kind in ("binary", "categorical") for f in task.features.values())

    def settings(self, run, given=None):
        s = self.Settings.from_mapping(given)
        if run is not None:
            s.check_task(run.task)
        return s

    def signals(self, table):
        return {f"ablation:{feat}": Signal(f"ablation:{feat}", "onset", g["step"].to_numpy(float),
                                           g["excess"].to_numpy(float), direction="up",
                                           extra={"random_std": g["random_std"].to_numpy(float)})
                for feat, g in ablation_effect(table).groupby("feature")}

    def summary(self, run, table):
        last = table[(table.step == table.step.max()) & (table.measure == "acc_drop") & (table.method == "projection")]
        if not len(last):
            return []
        top = last.sort_values("value", ascending=False).head(8)
        return ["largest projection-ablation accuracy drops at the last checkpoint (vs random directions):",
                top[["feature", "site", "position", "value", "random_mean", "random_std"]].to_string(index=False)]


ABLATIONS = Ablations()


def compute_ablations(run_dir, settings=None, checkpoints=None, executor=None, progress: bool = True) -> pd.DataFrame:
    """Ablate every checkpoint of a run; write ablations.csv (resumable)."""
    return run_analysis(ABLATIONS, run_dir, settings, checkpoints, executor, progress)
