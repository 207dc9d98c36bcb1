"""Crosscoders across checkpoints: features found without labels, and when each forms
(llc_watch.crosscoder; Ge et al., arXiv 2509.17196).

A run-level analysis: one crosscoder is trained jointly on the activations of K log-spaced snapshots,
so the whole table is computed at once (`compute`, resumable inside `crosscode_run`). Its table has
one row per feature (emergence step, trajectory type, best-matching task label, ablation effect); the
side tables (decoder norms per snapshot, training curve, label correlations, top examples, ablations)
sit beside it as crosscoder_*.csv. The stage map gets the density of emergence over log step
(`crosscoder:emergence`, peaks are boundaries).

    >>> feats = compute_crosscoder("runs/addition")                      # doctest: +SKIP
    >>> feats.sort_values("emergence_step")[["feature", "emergence_step", "best_label", "best_corr"]]  # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from llc_watch.crosscoder import CrosscoderSettings, crosscode_run, emergence_signal
from llc_watch.run import Column, TableSchema, register_table
from llc_watch.signals import Signal

from .base import Analysis, run_analysis

CROSSCODER_TABLE = register_table(TableSchema("crosscoder", "crosscoder_features.csv", "llc-watch crosscode RUN", (
    Column("feature", "int"),
    Column("emergence_index", "int", "snapshot index where the decoder norm first reaches emergence_frac of its peak; -1 dead"),
    Column("emergence_step", "float", "training step of that snapshot"),
    Column("trajectory", "str", "forms_and_stays, forms_late, forms_then_fades, present_throughout, dead"),
    Column("peak_step", "float"), Column("final_relative_norm", "float"),
    Column("frequency", "float", "share of rows where the feature fires"), Column("mean_activation", "float"),
    Column("importance", "float", "mean contribution to the reconstruction"),
    Column("first_step", "float"), Column("last_step", "float"),
    Column("best_label", "str", "the task label its activation correlates with most", required=False),
    Column("best_corr", "float", "that correlation", required=False),
    Column("ablated", "bool"),
    Column("ablation_onset_step", "float", "first snapshot where removing it raises the loss by half its final effect",
           required=False),
    Column("ablation_loss_rise_final", "float", required=False),
    Column("ablation_acc_drop_final", "float", required=False),
)))


def _side_tables(run) -> dict[str, pd.DataFrame]:
    out = {}
    for name in ("norms", "training", "labels", "examples", "ablations"):
        p = run.dir / f"crosscoder_{name}.csv"
        if p.is_file() and p.stat().st_size:
            out[name] = pd.read_csv(p)
    return out


class CrosscoderAnalysis(Analysis):
    name = "crosscoder"
    command = "crosscode"
    Settings = CrosscoderSettings
    schema = CROSSCODER_TABLE
    job = None
    cli_hidden = ("positions",)
    help = "crosscoder across snapshots: features found without labels, and when each forms"
    description = ("Collect activations at one site on fixed inputs at K log-spaced checkpoints, train one sparse "
                   "crosscoder on all of them, and read each feature's emergence (decoder norm over snapshots), "
                   "trajectory type, best-matching task label and ablation effect. Writes crosscoder_features.csv "
                   "and crosscoder_*.csv side tables.")

    def checkpoints(self, run, steps, settings=None):
        return run.checkpoints()      # the crosscoder picks its K snapshots itself (log-spaced)

    def compute(self, run, settings, checkpoints, progress=True):
        return crosscode_run(run.dir, settings, progress=progress)["features"]

    def signals(self, table):
        if "emergence_step" not in table or table["emergence_step"].notna().sum() < 2:
            return {}
        steps, density = emergence_signal(table)
        return {"crosscoder:emergence": Signal("crosscoder:emergence", "emergence", steps, density, direction="up")}

    def summary(self, run, table):
        alive = table[table["trajectory"] != "dead"]
        lines = [f"{len(alive)} of {len(table)} features alive; trajectories: "
                 + ", ".join(f"{k} {v}" for k, v in alive["trajectory"].value_counts().items())]
        if "best_corr" in table:
            top = table.dropna(subset=["best_corr"]).assign(a=lambda d: d["best_corr"].abs()).sort_values("a").tail(3)
            for r in top.itertuples():
                lines.append(f"feature {r.feature}: best label {r.best_label} (corr {r.best_corr:.2f}), "
                             f"emerges at step {r.emergence_step:.0f}, {r.trajectory}")
        return lines

    def figures(self, run, table, stage_map=None):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from llc_watch.crosscoder.plots import plot_emergence, plot_norm_heatmap
        side = _side_tables(run)
        if "norms" not in side:
            return []
        fig = Figure(figsize=(12, 4.2), layout="constrained")
        FigureCanvasAgg(fig)
        a, b = fig.subplots(1, 2, width_ratios=[1.4, 1])
        plot_norm_heatmap(a, side["norms"], table)
        plot_emergence(b, table)
        if stage_map is not None:
            for st in stage_map.stages.itertuples():
                if getattr(st, "quiet", False):
                    b.axvspan(st.start_step, st.end_step, color="#ffe680", alpha=0.4, zorder=-2)
        return [{"fig": fig, "alt": "crosscoder decoder norms and emergence",
                 "caption": "Left: each feature's decoder norm per snapshot (relative to its peak), features sorted "
                            "by emergence. Right: how many features emerge when, over log step (quiet stages "
                            "shaded); its peaks are the crosscoder's stage boundaries."}]


CROSSCODER = CrosscoderAnalysis()


def compute_crosscoder(run_dir, settings=None, progress: bool = True) -> pd.DataFrame:
    """Train a crosscoder over a run's snapshots; writes crosscoder_features.csv and its side tables."""
    return run_analysis(CROSSCODER, run_dir, settings, None, None, progress)
