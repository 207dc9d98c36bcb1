"""Essential dynamics: the model's outputs on one fixed batch at every checkpoint, projected on their
first principal components over checkpoints; the path's turning points and cusps mark stages.

Hoogland et al. (arXiv 2402.02364) and Carroll et al. (arXiv 2501.17745) use this as a behavioural
witness of the stages the LLC shows, independent of SGLD. The pieces are pure functions:

    outputs [checkpoints, features] --pca_trajectory--> EssentialDynamics (PC scores per checkpoint)
    EssentialDynamics --trajectory_signal--> Signal(kind="trajectory") for the stage map
    EssentialDynamics --plot_trajectory--> PC_i-PC_j path coloured by stage

and `model_outputs(run_dir)` collects the outputs from a run's checkpoints.

    >>> import numpy as np
    >>> steps = np.unique(np.geomspace(1, 1e4, 50).astype(int))
    >>> t = np.log1p(steps)
    >>> path = np.stack([np.minimum(t, 5), np.maximum(t - 5, 0)], 1)     # turns at log step 5
    >>> out = path @ np.random.default_rng(0).standard_normal((2, 40))
    >>> ed = pca_trajectory(steps, out, n_components=2)
    >>> round(float(ed.explained[:2].sum()), 3)
    1.0
    >>> [(b.kind, abs(b.x - 5.0) < 0.15) for b in trajectory_boundaries(ed)]
    [('cusp', True)]
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from llc_watch.signals import Signal


@dataclass(frozen=True)
class EssentialDynamics:
    """PCA of outputs over checkpoints.

    steps: [n] checkpoint steps; scores: [n, k] the path (PC coordinates of each checkpoint);
    explained: [k] share of the outputs' variance over checkpoints on each PC; components: [k, features].
    """

    steps: np.ndarray
    scores: np.ndarray
    explained: np.ndarray
    components: np.ndarray

    @property
    def n_components(self) -> int:
        return self.scores.shape[1]


def pca_trajectory(steps, outputs, n_components: int = 3) -> EssentialDynamics:
    """PCA over checkpoints of `outputs` [checkpoints, features] (each feature centred over checkpoints).

    Raises ValueError with the shapes when outputs and steps disagree or are too few.
    """
    steps = np.asarray(steps, float)
    X = np.asarray(outputs, float)
    if X.ndim != 2 or X.shape[0] != len(steps):
        raise ValueError(f"outputs must be [checkpoints, features] with one row per step; got {X.shape} "
                         f"for {len(steps)} steps")
    if len(steps) < 4:
        raise ValueError(f"essential dynamics needs at least 4 checkpoints, got {len(steps)}")
    if not np.all(np.isfinite(X)):
        raise ValueError("outputs hold non-finite values; check the checkpoints (a diverged model?)")
    order = np.argsort(steps, kind="stable")
    steps, X = steps[order], X[order]
    Xc = X - X.mean(0)
    U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    k = min(n_components, len(S))
    total = float((S**2).sum()) or 1.0
    # fix each PC's sign so the path starts at a negative coordinate: reproducible plots
    sign = np.where(U[0, :k] > 0, -1.0, 1.0)
    return EssentialDynamics(steps=steps, scores=U[:, :k] * S[:k] * sign, explained=S[:k] ** 2 / total,
                             components=Vt[:k] * sign[:, None])


def trajectory_signal(ed: EssentialDynamics, name: str = "ed:trajectory") -> Signal:
    """The path as one stage-map Signal of kind "trajectory": value = PC1, extra["components"] = all PCs."""
    return Signal(name, "trajectory", ed.steps, ed.scores[:, 0], extra={"components": ed.scores})


def trajectory_boundaries(ed: EssentialDynamics, name: str = "ed:trajectory", resamples: int = 100,
                          seed: int = 0, **detect):
    """Turning points (one PC changes course) and cusps (two or more at once) of the path, as Boundary."""
    from llc_watch.stages.boundaries import find_boundaries
    return find_boundaries(ed.steps, ed.scores[:, 0], kind="trajectory", signal=name, components=ed.scores,
                           resamples=resamples, seed=seed, **detect)


# --------------------------------------------------------------------------------------------------
# Collecting outputs from a run


def model_outputs(source, n_inputs: int = 256, seed: int = 12345, steps: Sequence[int] | None = None,
                  device: str = "cpu"):
    """(steps, outputs [checkpoints, features]): each checkpoint's log-probabilities at the answer
    positions of one fixed batch of `n_inputs` examples (the task's `sample(n_inputs, seed)`), flattened;
    continuous-output tasks give their raw outputs there.

    source: a run folder, or a list of llc_watch.checkpoints.Checkpoint.
    """
    import torch

    from llc_watch.checkpoints import Checkpoint, open_run
    if isinstance(source, (str, Path)):
        cks = open_run(source).checkpoints(list(steps) if steps is not None else None)
    else:
        cks = [c for c in source if isinstance(c, Checkpoint)]
    if len(cks) < 4:
        raise ValueError(f"essential dynamics needs at least 4 checkpoints, found {len(cks)}; "
                         "train with more checkpoints (n_log / n_linear)")
    task = cks[0].config().make_task()
    batch = task.sample(n_inputs, seed)
    mask = batch.loss_mask
    rows = []
    with torch.no_grad():
        for ck in cks:
            model = ck.load_model(device)
            out = model(batch.tokens.to(device)).float().cpu()
            if task.output != "continuous":
                out = torch.log_softmax(out, dim=-1)
            rows.append(out[mask].reshape(-1).numpy().astype(np.float64))
    return np.array([c.step for c in cks], float), np.stack(rows)


# --------------------------------------------------------------------------------------------------
# Plots (take and return Axes)


def _stage_index(steps, stage_map) -> np.ndarray:
    if stage_map is None or not len(stage_map.stages):
        return np.zeros(len(steps), int)
    ends = stage_map.stages["end_step"].to_numpy(float)[:-1]
    return np.searchsorted(ends, steps, side="right")


def plot_trajectory(ax, ed: EssentialDynamics, pcs: tuple[int, int] = (0, 1), stage_map=None,
                    boundaries: Sequence = (), cmap: str = "viridis"):
    """The path in the plane of two PCs: checkpoints coloured by stage (or by log step without a
    stage map), joined in order; `boundaries` (e.g. trajectory_boundaries(ed)) starred at their step.

        >>> import matplotlib; matplotlib.use("Agg")
        >>> from matplotlib.figure import Figure
        >>> steps = np.arange(1, 60); t = np.log1p(steps)
        >>> ed = pca_trajectory(steps, np.stack([t, np.sin(t), t**2], 1))
        >>> ax = plot_trajectory(Figure().subplots(), ed)
        >>> ax.get_xlabel().startswith("PC1 (")
        True
    """
    import matplotlib
    i, j = pcs
    if max(i, j) >= ed.n_components:
        raise ValueError(f"pcs {pcs} asked for, but the trajectory has {ed.n_components} components")
    a, b = ed.scores[:, i], ed.scores[:, j]
    ax.plot(a, b, "-", color="0.6", lw=0.8, zorder=1)
    if stage_map is not None:
        c = _stage_index(ed.steps, stage_map)
        cm = matplotlib.colormaps["tab10"]
        for k in np.unique(c):
            sel = c == k
            ax.scatter(a[sel], b[sel], s=14, color=cm(int(k) % 10), zorder=2, label=f"stage {k + 1}")
    else:
        sc = ax.scatter(a, b, s=14, c=np.log1p(ed.steps), cmap=cmap, zorder=2)
        ax.figure.colorbar(sc, ax=ax, label="log(step + 1)")
    for bd in boundaries:
        xa, xb = np.interp(np.log1p(bd.step), np.log1p(ed.steps), a), np.interp(np.log1p(bd.step), np.log1p(ed.steps), b)
        ax.plot([xa], [xb], "*", ms=11, color="#d62728" if getattr(bd, "strong", True) else "#ff9896",
                mec="k", mew=0.5, zorder=3)
        ax.annotate(f"{bd.step:.0f}", (xa, xb), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.plot([a[0]], [b[0]], "o", mfc="none", mec="k", ms=8, zorder=3)
    ax.set_xlabel(f"PC{i + 1} ({100 * ed.explained[i]:.0f}%)")
    ax.set_ylabel(f"PC{j + 1} ({100 * ed.explained[j]:.0f}%)")
    if stage_map is not None:
        ax.legend(loc="best", fontsize="x-small", frameon=False)
    return ax


def plot_pcs_over_steps(ax, ed: EssentialDynamics, boundaries: Sequence = ()):
    """Each PC's coordinate against step (log axis), with boundaries as dashed lines."""
    for k in range(ed.n_components):
        ax.plot(ed.steps + 1, ed.scores[:, k], "-o", ms=2, lw=1, label=f"PC{k + 1}")
    for bd in boundaries:
        ax.axvline(bd.step + 1, ls="--", lw=0.8, color="#d62728" if getattr(bd, "strong", True) else "0.6")
    ax.set_xscale("log")
    ax.set_xlabel("step + 1")
    ax.set_ylabel("PC coordinate")
    ax.legend(loc="best", fontsize="x-small", frameon=False)
    return ax


__all__ = ["EssentialDynamics", "pca_trajectory", "trajectory_signal", "trajectory_boundaries", "model_outputs",
           "plot_trajectory", "plot_pcs_over_steps"]
