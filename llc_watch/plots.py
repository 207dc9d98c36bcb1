"""Figures for stage maps, LLC diagnostics, calibration sweeps and probes.

Every `plot_*` function draws on the Axes it is given and returns it; `*_figure` functions build
their own `matplotlib.figure.Figure`. Nothing here imports pyplot, so global figure state (and
whatever backend a notebook uses) is left alone.

    >>> from matplotlib.figure import Figure
    >>> from tests.synthetic_tables import synthetic_run_tables
    >>> t = synthetic_run_tables()
    >>> ax = plot_llc(Figure().subplots(), t["llc"])
    >>> ax.get_xscale()
    'symlog'
    >>> png = figure_png(stage_figure(t, None))       # the stage map is computed when not given
    >>> png[:4] == b"\\x89PNG"
    True
"""
from __future__ import annotations

import io
import json
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from .axes import set_step_axis

from .analyses.ablations import ablation_effect
from .analyses.base import tables_signals
from .analyses.llc import llc_rows as _llc_valid
from .analyses.probes import probe_control
from .probes import feature_curves
from .signals import Signal
from .stages import StageMap, smooth_signal

__all__ = ["new_figure", "plot_metrics", "plot_llc", "plot_probes", "plot_ablations", "plot_stages", "plot_boundaries",
           "stage_figure", "plot_llc_traces", "plot_llc_chains", "parse_json_list", "plot_calibration", "plot_signals",
           "calibration_figure", "plot_calibration_ladder", "plot_probe_heatmap", "probe_heatmap_figure", "figure_png", "set_step_axis"]

KIND_COLORS = {"slope-zero": "#d62728", "plateau-start": "#aec7e8", "plateau-end": "#1f77b4",
               "sharp-change": "#ff7f0e", "drop": "#17becf", "drop-end": "#9467bd", "onset": "#2ca02c",
               "peak": "#e377c2", "turning-point": "#8c564b", "cusp": "#000000"}


def new_figure(width: float = 8.0, height: float = 4.0) -> Figure:
    """A Figure with an Agg canvas attached, made without pyplot."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a Figure (Agg), e.g. for embedding in HTML."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _steps_and(df, col="value"):
    g = df.groupby("step")[col].mean()
    return g.index.to_numpy(float), g.to_numpy(float)


# --------------------------------------------------------------------------------------------------
# Panels of the stage-boundary figure


def plot_metrics(ax: Axes, metrics: pd.DataFrame, losses=("train_loss", "test_loss"),
                 accuracies=("train_acc", "test_acc")) -> Axes:
    """Loss (left axis, log scale when positive) and exact-match accuracy (right axis, 0-1)."""
    styles = {"train": "-", "test": "--"}
    for name in losses:
        d = metrics[metrics["measure"] == name]
        if len(d):
            x, y = _steps_and(d)
            ax.plot(x, y, styles[name.split("_")[0]], color="#1f77b4", lw=1.5, label=name)
    d = metrics[metrics["measure"].isin(losses)]
    if len(d) and (d["value"] > 0).all():
        ax.set_yscale("log")
    ax.set_ylabel("loss", color="#1f77b4")
    acc = metrics[metrics["measure"].isin(accuracies)]
    if len(acc):
        ax2 = ax.twinx()
        for name in accuracies:
            d = metrics[metrics["measure"] == name]
            if len(d):
                x, y = _steps_and(d)
                ax2.plot(x, y, styles[name.split("_")[0]], color="#2ca02c", lw=1.2, label=name)
        ax2.set_ylim(-0.03, 1.03)
        ax2.set_ylabel("exact-match acc", color="#2ca02c")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="center left", fontsize="small", frameon=False)
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small", frameon=False)
    return set_step_axis(ax)


def plot_llc(ax: Axes, llc: pd.DataFrame, smooth=None, show_smooth: bool = True) -> Axes:
    """LLC ± stderr at each valid checkpoint, the GP fit with its band, and invalid checkpoints marked.

    Invalid rows are drawn as red crosses at the bottom of the panel (their values are not to be
    trusted, and can be 1e9), with the count in the legend.
    """
    v = _llc_valid(llc)
    ok = v[v["valid"] & np.isfinite(v["value"])].sort_values("step")
    bad = v[~(v["valid"] & np.isfinite(v["value"]))]
    ax.errorbar(ok["step"], ok["value"], yerr=ok["stderr"].fillna(0), fmt="o", ms=3, color="#d62728",
                ecolor="#d62728", elinewidth=0.8, alpha=0.8, label="LLC ± s.e.")
    if show_smooth and len(ok) >= 4:
        sm = smooth or smooth_signal(ok["step"], ok["value"], ok["stderr"])
        ax.plot(sm.steps, sm.mean, color="#7f0000", lw=1.2, label="GP fit")
        ax.fill_between(sm.steps, sm.mean - 2 * sm.sd, sm.mean + 2 * sm.sd, color="#d62728", alpha=0.15, lw=0)
    if len(bad):
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.plot(bad["step"], np.full(len(bad), 0.04), "x", color="red", ms=7, mew=2, transform=trans,
                label=f"invalid ({len(bad)})", clip_on=False)
    ax.set_ylabel("LLC  λ̂")
    ax.legend(loc="best", fontsize="small", frameon=False)
    return set_step_axis(ax)


def plot_probes(ax: Axes, probes: pd.DataFrame, features: Sequence[str] | None = None,
                control: str = "shuffled") -> Axes:
    """Each feature's curve (held-out balanced accuracy of the train-selected probe, best position:
    llc_watch.probes.feature_curves, what the stage map reads); the control dotted."""
    best = feature_curves(probes, on_missing_train="test")
    measure = best["measure"].iloc[0] if len(best) and best["measure"].nunique() == 1 else "accuracy"
    ctrl = probe_control(probes, control, measure=measure)
    feats = list(features) if features is not None else sorted(best["feature"].unique())
    colors = matplotlib.colormaps["tab10"]
    for i, f in enumerate(feats):
        d = best[best["feature"] == f]
        ax.plot(d["step"], d["value"], "-o", ms=2.5, lw=1.3, color=colors(i % 10), label=f"{f}")
        c = ctrl[ctrl["feature"] == f] if len(ctrl) else ctrl
        if len(c):
            ax.plot(c["step"], c["value"], ":", lw=1, color=colors(i % 10), alpha=0.7)
    if len(ctrl):
        ax.plot([], [], ":", color="gray", label=f"{control} control")
    ax.set_ylabel("probe bal. acc" if (best["measure"] == "balanced_accuracy").any() else "probe acc")
    ax.legend(loc="best", fontsize="small", frameon=False, ncol=2)
    return set_step_axis(ax)


def plot_ablations(ax: Axes, ablations: pd.DataFrame, features: Sequence[str] | None = None) -> Axes:
    """Accuracy drop from projecting out each feature's probe direction, against the random-direction
    control (a band: random mean ± 2 sd)."""
    eff = ablation_effect(ablations)
    feats = list(features) if features is not None else sorted(eff["feature"].unique())
    colors = matplotlib.colormaps["tab10"]
    for i, f in enumerate(feats):
        d = eff[eff["feature"] == f].sort_values("step")
        ax.plot(d["step"], d["value"], "-o", ms=2.5, lw=1.3, color=colors(i % 10), label=f)
        if d["random_mean"].notna().any():
            rm, rs = d["random_mean"].to_numpy(float), np.nan_to_num(d["random_std"].to_numpy(float))
            ax.fill_between(d["step"], rm - 2 * rs, rm + 2 * rs, color=colors(i % 10), alpha=0.15, lw=0)
    ax.fill_between([], [], [], color="gray", alpha=0.2, label="random dirs ± 2 sd")
    ax.set_ylabel("acc drop")
    ax.legend(loc="best", fontsize="small", frameon=False, ncol=2)
    return set_step_axis(ax)


def plot_stages(ax: Axes, stage_map: StageMap, label: bool = False) -> Axes:
    """Shade the stages (quiet ones in yellow) and draw the stage cuts as grey lines."""
    st = stage_map.stages
    for i, r in enumerate(st.itertuples()):
        color = "#ffe680" if r.quiet else ("#f0f0f0" if i % 2 == 0 else "white")
        ax.axvspan(r.start_step, r.end_step, color=color, alpha=0.6 if r.quiet else 1.0, zorder=-10, lw=0)
        if i > 0:
            ax.axvline(r.start_step, color="0.35", lw=0.9, zorder=-5)
        if label:
            mid = np.sqrt((r.start_step + 1) * (r.end_step + 1)) - 1
            trans = blended_transform_factory(ax.transData, ax.transAxes)
            # the number only: yellow already says quiet, and "5 quiet" labels of narrow stages overlapped
            ax.text(mid, 1.02, f"{r.stage}", transform=trans,
                    ha="center", va="bottom", fontsize="small", color="0.25")
    return ax


def plot_boundaries(ax: Axes, boundaries, signals: Sequence[str] | None = None) -> Axes:
    """Each boundary as a dashed line at its step with its interval as a bar at the panel's top,
    coloured by kind. `signals` keeps only those signals (by name or "probe:" / "ablation:" prefix)."""
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    bs = [b for b in boundaries if signals is None or any(b.signal == s or b.signal.startswith(s) for s in signals)]
    seen = set()
    for j, b in enumerate(sorted(bs, key=lambda b: b.step)):
        c = KIND_COLORS.get(b.kind, "k")
        lab = b.kind if b.kind not in seen else None
        seen.add(b.kind)
        ax.axvline(b.step, color=c, ls="--", lw=0.9, alpha=0.8, zorder=-1)
        y = 0.96 - 0.05 * (j % 4)
        ax.plot([b.lo, b.hi], [y, y], color=c, lw=3, alpha=0.7, transform=trans, solid_capstyle="butt")
        ax.plot([b.step], [y], "v", color=c, ms=5, transform=trans, label=lab)
    return ax


def plot_signals(ax: Axes, signals: Sequence[Signal], ylabel: str | None = None) -> Axes:
    """Any signals on one panel, each against step (± its stderr): the panel of an analysis that has
    no dedicated one (e.g. Fourier measures), so a new analysis reaches the figure through its signals."""
    colors = matplotlib.colormaps["tab10"]
    for i, sig in enumerate(signals):
        label = sig.name.split(":", 1)[-1]
        ax.plot(sig.step, sig.value, "-o", ms=2.5, lw=1.2, color=colors(i % 10), label=label)
        if sig.stderr is not None:
            ax.fill_between(sig.step, sig.value - 2 * sig.stderr, sig.value + 2 * sig.stderr, color=colors(i % 10),
                            alpha=0.15, lw=0)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize="small", frameon=False, ncol=2)
    return set_step_axis(ax)


_DEDICATED = {"metrics": ("loss",), "llc": ("llc",), "probes": ("probe",), "ablations": ("ablation",)}


def stage_figure(tables, stage_map: StageMap | None = None, width: float = 9.0, signals=None,
                 show_all: bool = False) -> Figure:
    """The stage-boundary figure: stacked panels on one log-step axis (loss & accuracy; LLC ± s.e.;
    best probe accuracy per feature; ablation drop against random directions; one panel per other
    signal family, e.g. Fourier), stages shaded, the strong boundaries of each panel's signals drawn
    (show_all=True: every boundary; the table keeps them all either way).

    tables: {table name: DataFrame} (Run.tables() or synthetic ones); signals: the run's signals
    (default: every registered analysis's signals from `tables`).
    """
    tables = {k: v for k, v in dict(tables).items() if isinstance(v, pd.DataFrame) and len(v)}
    signals = signals if signals is not None else tables_signals(tables)
    if stage_map is None:
        from .analyses.stage_map import tables_stage_map
        stage_map = tables_stage_map(tables)
    sm = stage_map
    panels = []
    if "metrics" in tables:
        panels.append(("metrics", lambda ax: plot_metrics(ax, tables["metrics"]), ["train_loss", "test_acc"]))
    if "llc" in tables:
        panels.append(("llc", lambda ax: plot_llc(ax, tables["llc"], smooth=sm.smooths.get("llc")), ["llc"]))
    if "probes" in tables:
        panels.append(("probes", lambda ax: plot_probes(ax, tables["probes"]), ["probe:"]))
    if "ablations" in tables:
        panels.append(("ablations", lambda ax: plot_ablations(ax, tables["ablations"]), ["ablation:"]))
    families: dict[str, list[Signal]] = {}
    for sig in signals.values():
        if ":" in sig.name and sig.family not in ("probe", "ablation"):
            families.setdefault(sig.family, []).append(sig)
    for fam, sigs in families.items():
        panels.append((fam, lambda ax, sigs=sigs, fam=fam: plot_signals(ax, sigs, fam), [f"{fam}:"]))
    if not panels:
        raise ValueError("stage_figure: the run has no table to draw")
    fig = new_figure(width, 2.3 * len(panels) + 0.6)
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True))
    max_step = max(float(sm.stages["end_step"].max()) if len(sm.stages) else 1.0, 1.0)
    for i, (ax, (name, draw, sigs)) in enumerate(zip(axes, panels)):
        draw(ax)
        plot_stages(ax, sm, label=(i == 0))
        plot_boundaries(ax, sm.strong if show_all is False else sm.boundaries, sigs)
        set_step_axis(ax, max_step)
        if i < len(axes) - 1:
            ax.set_xlabel("")
    drawn = sm.strong if show_all is False else sm.boundaries
    handles = [matplotlib.lines.Line2D([], [], color=c, ls="--", marker="v", label=k) for k, c in KIND_COLORS.items()
               if any(b.kind == k for b in drawn)]
    handles.append(matplotlib.patches.Patch(color="#ffe680", alpha=0.6, label="quiet stage"))
    # in rows of at most four: one row of eight kinds is wider than the figure and was cut off
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize="small",
               frameon=False)
    return fig


# --------------------------------------------------------------------------------------------------
# LLC diagnostics


def parse_json_list(value) -> list:
    """A JSON-list cell of a table (llc.csv's llc_per_chain, mean_loss_trace) as a list; [] when empty or unreadable."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    try:
        out = json.loads(str(value))
    except (ValueError, TypeError):
        return []
    return out if isinstance(out, list) else []


def plot_llc_traces(ax: Axes, traces, burn_in: int | None = None, title: str | None = None) -> Axes:
    """Per-chain loss traces (chains × draws), the burn-in shaded; flat traces after burn-in are what
    a usable estimate looks like. Failed chains (any non-finite value) are drawn in red."""
    traces = [np.asarray(t, dtype=float) for t in traces]
    for i, t in enumerate(traces):
        bad = not np.all(np.isfinite(t))
        ax.plot(np.arange(len(t)), t, lw=0.8, color="red" if bad else matplotlib.colormaps["tab10"](i % 10),
                alpha=0.9, label=f"chain {i}" + (" (failed)" if bad else ""))
    if burn_in:
        ax.axvspan(0, burn_in, color="0.9", zorder=-10, label="burn-in")
    ax.set_xlabel("draw")
    ax.set_ylabel("sampled loss  L(w)")
    if title:
        ax.set_title(title, fontsize="medium")
    if len(traces) <= 10:
        ax.legend(loc="best", fontsize="x-small", frameon=False)
    return ax


def plot_llc_chains(ax: Axes, llc: pd.DataFrame) -> Axes:
    """Per-chain LLC values at each checkpoint (llc.csv's `llc_per_chain`), with the mean over valid
    checkpoints: the spread across chains at a glance. Invalid checkpoints' chains in red."""
    v = _llc_valid(llc)
    xs, ys, cs = [], [], []
    for r in v.itertuples():
        vals = [c for c in parse_json_list(getattr(r, "llc_per_chain", None)) if isinstance(c, (int, float))]
        xs += [r.step] * len(vals)
        ys += vals
        cs += ["#1f77b4" if r.valid else "red"] * len(vals)
    if xs:
        ys_arr = np.asarray(ys, float)
        ok = np.isfinite(ys_arr) & (np.abs(ys_arr) < 1e6)  # 1e9-size failures would flatten the panel
        ax.scatter(np.asarray(xs)[ok], ys_arr[ok], s=6, c=np.asarray(cs)[ok], alpha=0.6, lw=0, label="chains")
    good = v[v["valid"]]
    ax.plot(good["step"], good["value"], "k-", lw=1, label="mean (valid)")
    ax.set_ylabel("per-chain LLC")
    ax.legend(loc="best", fontsize="small", frameon=False)
    return set_step_axis(ax)


# --------------------------------------------------------------------------------------------------
# Calibration sweep


def plot_calibration(ax: Axes, sweep: pd.DataFrame, value: str = "llc_mean", gamma: float | None = None) -> Axes:
    """Heatmap of `value` over ε (x) × nβ (y) at one γ; invalid cells hatched and crossed, each cell
    annotated with value ± llc_std. With several γ and none given, the γ with most valid cells."""
    need = ["epsilon", "nbeta", value]
    miss = [c for c in need if c not in sweep.columns]
    if miss:
        raise ValueError(f"calibration sweep lacks columns {miss}; it has {list(sweep.columns)}")
    s = sweep.copy()
    if "gamma" in s.columns and s["gamma"].nunique() > 1:
        if gamma is None:
            valid = s.get("valid", pd.Series(True, index=s.index)).astype(bool)
            gamma = s[valid].groupby("gamma").size().idxmax() if valid.any() else s["gamma"].iloc[0]
        s = s[np.isclose(s["gamma"], gamma)]
    elif "gamma" in s.columns:
        gamma = s["gamma"].iloc[0]
    if s.duplicated(["epsilon", "nbeta"]).any():
        raise ValueError("plot_calibration: several rows per (ε, nβ) cell (several checkpoints?); pass one "
                         "checkpoint's rows, or use calibration_figure, which draws one panel per checkpoint")
    eps, nb = np.sort(s["epsilon"].unique()), np.sort(s["nbeta"].unique())
    grid = np.full((len(nb), len(eps)), np.nan)
    valid = np.zeros_like(grid, dtype=bool)
    std = np.full_like(grid, np.nan)
    for r in s.itertuples():
        i, j = int(np.searchsorted(nb, r.nbeta)), int(np.searchsorted(eps, r.epsilon))
        grid[i, j] = getattr(r, value)
        valid[i, j] = bool(getattr(r, "valid", True)) and np.isfinite(grid[i, j])
        std[i, j] = getattr(r, "llc_std", np.nan)
    shown = np.where(valid, grid, np.nan)
    im = ax.imshow(shown, origin="lower", aspect="auto", cmap="viridis")
    ax.figure.colorbar(im, ax=ax, label=value)
    for i in range(len(nb)):
        for j in range(len(eps)):
            if valid[i, j]:
                txt = f"{grid[i, j]:.3g}" + (f"\n±{std[i, j]:.2g}" if np.isfinite(std[i, j]) else "")
                ax.text(j, i, txt, ha="center", va="center", fontsize="x-small", color="w")
            else:
                ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx",
                                                          edgecolor="red", lw=0))
                ax.text(j, i, "invalid", ha="center", va="center", fontsize="x-small", color="red")
    ax.set_xticks(range(len(eps)), [f"{e:.1e}" for e in eps], rotation=30, fontsize="small")
    ax.set_yticks(range(len(nb)), [f"{b:g}" for b in nb], fontsize="small")
    ax.set_xlabel("step size ε")
    ax.set_ylabel("nβ")
    ax.set_title(f"calibration: {value}" + (f" (γ = {gamma:g})" if gamma is not None else ""), fontsize="medium")
    return ax


def plot_calibration_ladder(ax: Axes, cells: pd.DataFrame) -> Axes:
    """calibrate_llc's cells at one checkpoint: λ̂ ± its Monte-Carlo error against ε (log axis) for the
    ε ladder (one line per sampler; pilots rerun longer drawn faintly apart), the draws check's longer
    runs at the chosen ε and the settled plateau test's rung below, the batch and γ checks beside
    them, the chosen ε marked; the title says the verdict (plateau, extrapolated or untrusted)."""
    roles = cells["role"].astype(str)
    samplers = cells["sampler"].astype(str) if "sampler" in cells else pd.Series("sgld", index=cells.index)
    gammas = (cells["gamma"] if "gamma" in cells else pd.Series(0.0, index=cells.index)).astype(float).fillna(0.0)
    lines = sorted({(s_, g_) for s_, g_ in zip(samplers[roles == "ladder"], gammas[roles == "ladder"])},
                   key=lambda sg: (sg[1], sg[0]))
    several_gammas = len({g_ for _, g_ in lines}) > 1
    for (samp, g), colour in zip(lines, ("#1f77b4", "#17becf", "#393b79", "#6b6ecf")):
        # one line per sampler (an RMSProp-SGLD ε is a different step from an SGLD one) and per γ
        # (rule step 8 calibrates again at a larger γ where the chains did not localise)
        lad = cells[(roles == "ladder") & (samplers == samp) & (gammas == g)].sort_values("epsilon")
        ok = lad["valid"].astype(bool) & np.isfinite(lad["llc"].astype(float))
        label = f"ε ladder, {samp}" + (f", γ = {g:g}" if several_gammas else "") + " (± 2 se)"
        ax.errorbar(lad.loc[ok, "epsilon"], lad.loc[ok, "llc"], yerr=2 * lad.loc[ok, "llc_se"].fillna(0),
                    fmt="o-", color=colour, capsize=3, label=label)
        if (~ok).any():
            ax.plot(lad.loc[~ok, "epsilon"], np.zeros((~ok).sum()), "x", color="#d62728",
                    label="invalid / diverged")
    short = cells[roles == "ladder_short"]
    if len(short):   # pilots superseded by longer ones: shown faintly, not joined to the ladder
        ax.plot(short["epsilon"], short["llc"], "o", mfc="none", color="#1f77b4", alpha=0.4,
                label="shorter pilots (rerun longer)")
    # the draws check (λ̂ at the chosen ε as the chains run 4×, 16× longer), the settled test's rung
    # below, and the batch and γ checks, each beside the ladder
    for role, mk, c, note in (("draws_check", "D", "#ff7f0e", " (longer chains)"),
                              ("settled_test", "v", "#8c564b", " (longer chains)"),
                              ("batch_check", "s", "#2ca02c", ""), ("gamma_check", "^", "#9467bd", "")):
        r = cells[roles == role]
        if len(r):
            ax.errorbar(r["epsilon"], r["llc"], yerr=2 * r["llc_se"].fillna(0), fmt=mk, color=c, capsize=3,
                        label=role.replace("_", " ") + note)
    status = str(cells["status"].iloc[0]) if "status" in cells else ""
    if "choice" in cells and isinstance(cells["choice"].iloc[0], str):
        eps = json.loads(cells["choice"].iloc[0]).get("epsilon")
        if eps:
            ax.axvline(eps, color="k", ls=":", lw=1, label=f"chosen ε = {eps:.2g}")
    if "cal_llc" in cells and np.isfinite(float(cells["cal_llc"].iloc[0])) and status == "extrapolated":
        ax.axhline(float(cells["cal_llc"].iloc[0]), color="#ff7f0e", ls="--", lw=1, label="extrapolated to ε → 0")
    ax.set_xscale("log")
    ax.set_xlabel("SGLD step size ε")
    ax.set_ylabel("λ̂")
    ax.set_title(f"step {cells['step'].iloc[0]:g}: {status}", fontsize="medium")
    ax.legend(fontsize="x-small", frameon=False)
    return ax


def calibration_figure(sweep: pd.DataFrame, value: str = "llc_mean") -> Figure:
    """One calibration panel per checkpoint (never two checkpoints in one cell): calibrate_llc's ε
    ladder per checkpoint, or, for the grid method, one heatmap per (checkpoint, γ)."""
    if "role" in sweep.columns and sweep["role"].notna().any():
        steps = np.sort(sweep["step"].unique())
        fig = new_figure(4.2 * len(steps), 3.4)
        for ax, st in zip(np.atleast_1d(fig.subplots(1, len(steps), squeeze=False)).ravel(), steps):
            plot_calibration_ladder(ax, sweep[sweep["step"] == st])
        return fig
    steps = np.sort(sweep["step"].unique()) if "step" in sweep.columns else [None]
    gammas = np.sort(sweep["gamma"].unique()) if "gamma" in sweep.columns else [None]
    fig = new_figure(4.5 * len(gammas), 3.4 * len(steps))
    axes = np.atleast_2d(fig.subplots(len(steps), len(gammas), squeeze=False))
    for i, st in enumerate(steps):
        part = sweep if st is None else sweep[sweep["step"] == st]
        for j, g in enumerate(gammas):
            ax = axes[i, j]
            plot_calibration(ax, part if g is None else part[part["gamma"] == g], value=value, gamma=g)
            if st is not None:
                ax.set_title(f"step {st:g}: {value}" + (f" (γ = {g:g})" if g is not None else ""), fontsize="medium")
    return fig


# --------------------------------------------------------------------------------------------------
# Probe heatmaps


def plot_probe_heatmap(ax: Axes, probes: pd.DataFrame, feature: str, step: float | None = None,
                       site: str | None = None, measure: str = "accuracy", vmin=None, vmax=None) -> Axes:
    """Probe `measure` for one feature as a layer (y) × position (x) grid at one step (default: last).
    Several sites: the best over sites, unless `site` picks one."""
    p = probes[(probes["feature"] == feature) & (probes["measure"] == measure)]
    if "control" in p.columns:
        p = p[p["control"].fillna("probe") == "probe"]
    if p.empty:
        raise ValueError(f"no {measure!r} probe rows for feature {feature!r}; features: "
                         f"{sorted(probes['feature'].unique())}")
    step = p["step"].max() if step is None else step
    p = p[p["step"] == step]
    if site is not None:
        p = p[p["site"] == site]
    g = p.groupby(["layer", "position"])["value"].max().unstack("position")
    ax.imshow(g.to_numpy(float), origin="lower", aspect="auto", cmap="magma",
                   vmin=vmin if vmin is not None else (0 if measure.endswith("accuracy") else None),
                   vmax=vmax if vmax is not None else (1 if measure.endswith("accuracy") else None))
    ax.set_xticks(range(g.shape[1]), [str(c) for c in g.columns], fontsize="small")
    ax.set_yticks(range(g.shape[0]), [str(c) for c in g.index], fontsize="small")
    ax.set_xlabel("position after '='")
    ax.set_ylabel("layer")
    ax.set_title(f"{feature} @ step {step:g}" + (f" ({site})" if site else ""), fontsize="small")
    return ax


def probe_heatmap_figure(probes: pd.DataFrame, feature: str, steps: Sequence[float] | None = None,
                         site: str | None = None, max_panels: int = 6) -> Figure:
    """Layer × position probe accuracy for one feature at several steps (log-spaced picks by default)."""
    all_steps = np.sort(probes.loc[probes["feature"] == feature, "step"].unique())
    if steps is None:
        # log-spaced picks in step, snapped to the steps that exist, always ending with the last
        k = min(max_panels, len(all_steps))
        want = np.geomspace(max(all_steps[all_steps > 0].min(initial=1), 1), max(all_steps.max(), 1), k)
        steps = np.unique([all_steps[np.argmin(np.abs(np.log1p(all_steps) - np.log1p(w)))] for w in want])
    fig = new_figure(2.4 * len(steps) + 1.0, 2.6)
    axes = np.atleast_1d(fig.subplots(1, len(steps), sharey=True))
    for ax, s in zip(axes, steps):
        plot_probe_heatmap(ax, probes, feature, s, site=site)
        if ax is not axes[0]:
            ax.set_ylabel("")
    fig.colorbar(axes[-1].images[0], ax=list(axes), label="probe acc")
    return fig
