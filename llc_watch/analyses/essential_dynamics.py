"""Essential dynamics: the model's outputs on one fixed batch at every checkpoint, PCA over checkpoints
(llc_watch.essential_dynamics). A behavioural witness of stages that needs no SGLD.

A run-level analysis: the PCA needs every checkpoint's outputs at once, so it computes the whole
table in one go (`compute`) instead of one job per checkpoint. The table is tidy: one row per
checkpoint × principal component, with the component's share of the variance.

    >>> ed = compute_essential_dynamics("runs/addition")              # doctest: +SKIP
    >>> ed.pivot(index="step", columns="measure", values="value")     # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llc_watch.essential_dynamics import (EssentialDynamics, model_outputs, pca_trajectory, plot_pcs_over_steps,
                                          plot_trajectory, trajectory_boundaries, trajectory_signal)
from llc_watch.run import Column, TableSchema, register_table
from llc_watch.settings import SettingsBase

from .base import Analysis, run_analysis

ED_TABLE = register_table(TableSchema("essential_dynamics", "essential_dynamics.csv",
                                      "llc-watch essential-dynamics RUN", (
    Column("step", "int"), Column("measure", "str", "pc1, pc2, ...: the checkpoint's coordinate on that component"),
    Column("value", "float"), Column("explained", "float", "the component's share of the outputs' variance"),
)))


@dataclass(frozen=True)
class EDSettings(SettingsBase):
    n_inputs: int = 256             # fixed inputs whose outputs (log-probabilities at answer positions) are compared
    seed: int = 12345               # which inputs (the task's sample(n_inputs, seed))
    n_components: int = 3           # principal components kept (the paper draws PC1-PC2 and PC2-PC3)
    device: str = "cpu"             # where the checkpoints are evaluated: cpu | cuda | auto

    def validate(self):
        self.at_least("n_inputs", 1)
        self.at_least("n_components", 2)
        self.device_name()


def _ed_from_table(table: pd.DataFrame) -> EssentialDynamics:
    wide = table.pivot_table(index="step", columns="measure", values="value").sort_index()
    pcs = sorted(wide.columns, key=lambda c: int(str(c)[2:]))
    expl = table.groupby("measure")["explained"].first().reindex(pcs).to_numpy(float)
    return EssentialDynamics(steps=wide.index.to_numpy(float), scores=wide[pcs].to_numpy(float), explained=expl,
                             components=np.empty((len(pcs), 0)))


class EssentialDynamicsAnalysis(Analysis):
    name = "essential_dynamics"
    command = "essential-dynamics"
    Settings = EDSettings
    schema = ED_TABLE
    job = None
    help = "essential dynamics: PCA of the outputs over checkpoints (a stage witness without SGLD)"
    description = ("The model's outputs on one fixed batch at every checkpoint, flattened; PCA over checkpoints; "
                   "turning points and cusps of the path become stage boundaries. Writes essential_dynamics.csv.")

    def compute(self, run, settings, checkpoints, progress=True):
        from llc_watch.device import resolve_device
        steps, outputs = model_outputs(checkpoints, n_inputs=settings.n_inputs, seed=settings.seed,
                                       device=str(resolve_device(settings.device)))
        ed = pca_trajectory(steps, outputs, settings.n_components)
        rows = [{"step": int(s), "measure": f"pc{k + 1}", "value": float(ed.scores[i, k]),
                 "explained": float(ed.explained[k])}
                for i, s in enumerate(ed.steps) for k in range(ed.n_components)]
        return pd.DataFrame(rows)

    def signals(self, table):
        if table["step"].nunique() < 4:
            return {}
        return {"ed:trajectory": trajectory_signal(_ed_from_table(table))}

    def figures(self, run, table, stage_map=None):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        ed = _ed_from_table(table)
        bs = [b for b in (stage_map.boundaries if stage_map is not None else []) if b.signal == "ed:trajectory"]
        fig = Figure(figsize=(12, 3.8), layout="constrained")
        FigureCanvasAgg(fig)
        a, b, c = fig.subplots(1, 3)
        plot_trajectory(a, ed, (0, 1), stage_map=stage_map, boundaries=bs)
        if ed.n_components >= 3:
            plot_trajectory(b, ed, (1, 2), stage_map=stage_map, boundaries=bs)
        plot_pcs_over_steps(c, ed, bs)
        return [{"fig": fig, "alt": "essential dynamics trajectory",
                 "caption": "Essential dynamics: the outputs' path over checkpoints in PC1-PC2 and PC2-PC3, coloured "
                            "by stage; stars: the path's turning points and cusps (boundaries of ed:trajectory)."}]


ESSENTIAL_DYNAMICS = EssentialDynamicsAnalysis()


def compute_essential_dynamics(run_dir, settings=None, checkpoints=None, progress: bool = True) -> pd.DataFrame:
    """PCA of the outputs over a run's checkpoints; writes essential_dynamics.csv."""
    return run_analysis(ESSENTIAL_DYNAMICS, run_dir, settings, checkpoints, None, progress)
