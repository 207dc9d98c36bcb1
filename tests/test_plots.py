"""Every figure renders headless (Agg), returns what it drew on, and leaves pyplot's state alone."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from llc_watch import plots
from llc_watch.analyses import tables_stage_map
from tests.synthetic_tables import synthetic_run_tables


@pytest.fixture(scope="module")
def run():
    t = synthetic_run_tables(seed=2)
    return t, tables_stage_map(t, resamples=10)


@pytest.fixture(autouse=True)
def pyplot_untouched():
    import matplotlib.pyplot as plt
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before, "a plot function opened a pyplot figure"


def _ax(w=6, h=3):
    return plots.new_figure(w, h).subplots()


def _png_ok(fig):
    png = plots.figure_png(fig, dpi=40)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


@pytest.mark.parametrize("name", ["metrics", "llc", "probes", "ablations", "llc_chains"])
def test_panels_return_their_axes_and_render(run, name):
    t, sm = run
    ax = _ax()
    draw = {"metrics": lambda: plots.plot_metrics(ax, t['metrics']),
            "llc": lambda: plots.plot_llc(ax, t['llc'], smooth=sm.smooths["llc"]),
            "probes": lambda: plots.plot_probes(ax, t['probes']),
            "ablations": lambda: plots.plot_ablations(ax, t['ablations']),
            "llc_chains": lambda: plots.plot_llc_chains(ax, t['llc'])}[name]
    out = draw()
    assert out is ax and ax.get_xscale() == "symlog"
    assert plots.plot_stages(ax, sm) is ax and plots.plot_boundaries(ax, sm.boundaries) is ax
    _png_ok(ax.figure)


def test_llc_panel_marks_invalid_points(run):
    t, _ = run
    ax = plots.plot_llc(_ax(), t['llc'], show_smooth=False)
    n_bad = int((~t['llc']["valid"]).sum())
    assert any(f"invalid ({n_bad})" == line.get_label() for line in ax.lines)
    assert ax.get_ylim()[1] < 1e3  # the 7.4e9 values of failed estimates do not squash the axis


def test_stage_figure_stacks_one_panel_per_table(run):
    t, sm = run
    fig = plots.stage_figure(t, sm)
    assert isinstance(fig, Figure) and len([a for a in fig.axes if a.get_ylabel() != "exact-match acc"]) == 4
    _png_ok(fig)
    only = {"metrics": t['metrics'], "llc": t['llc']}
    fig2 = plots.stage_figure(only, tables_stage_map(only, resamples=5))
    assert len([a for a in fig2.axes if a.get_ylabel() != "exact-match acc"]) == 2
    with pytest.raises(ValueError, match="no table to draw"):
        plots.stage_figure({}, sm)


def test_a_new_signal_family_gets_its_own_panel(run):
    """An analysis without a dedicated panel (e.g. Fourier measures) reaches the figure through its signals."""
    from llc_watch.signals import Signal
    t, sm = run
    steps = np.unique(t["metrics"]["step"])
    extra = {"fourier:key_power": Signal("fourier:key_power", "onset", steps, np.tanh(steps / 3000), direction="up")}
    from llc_watch.analyses import run_signals  # noqa: F401  (the same signals a run gives)
    from llc_watch.analyses.base import tables_signals
    fig = plots.stage_figure(t, sm, signals={**tables_signals(t), **extra})
    assert "fourier" in [a.get_ylabel() for a in fig.axes]


def test_traces_and_calibration_and_probe_heatmaps(run):
    t, _ = run
    rng = np.random.default_rng(0)
    traces = 1 + 0.01 * rng.standard_normal((4, 50)).cumsum(1)
    traces[2, 30:] = np.nan  # a failed chain
    ax = plots.plot_llc_traces(_ax(), traces, burn_in=10, title="step 100")
    assert any("failed" in line.get_label() for line in ax.lines)
    ax = plots.plot_calibration(_ax(), t['calibration'][t['calibration']["step"] == t['calibration']["step"].min()], gamma=100.0)
    assert "γ = 100" in ax.get_title() and any(tx.get_text() == "invalid" for tx in ax.texts)
    _png_ok(ax.figure)
    one = t['calibration'][t['calibration']["step"] == t['calibration']["step"].max()]
    ax = plots.plot_calibration(_ax(), one, gamma=100.0)
    with pytest.raises(ValueError, match="several checkpoints"):   # never two checkpoints in one cell
        plots.plot_calibration(_ax(), t['calibration'], gamma=100.0)
    fig = plots.calibration_figure(t['calibration'])
    n_steps, n_gammas = t['calibration']["step"].nunique(), t['calibration']["gamma"].nunique()
    heatmaps = [a for a in fig.axes if a.images]
    assert n_steps == 2 and len(heatmaps) == n_steps * n_gammas     # one panel per (checkpoint, γ)
    assert {a.get_title().split(":")[0] for a in heatmaps} == {f"step {s:g}" for s in t['calibration']["step"].unique()}
    _png_ok(fig)
    with pytest.raises(ValueError, match="lacks columns"):
        plots.plot_calibration(_ax(), t['calibration'].drop(columns=["nbeta"]))
    ax = plots.plot_probe_heatmap(_ax(), t['probes'], "carry", site="resid")
    assert ax.images and ax.images[0].get_array().shape == (2, 3)  # layers × positions
    fig = plots.probe_heatmap_figure(t['probes'], "carry", max_panels=3)
    assert len(fig.axes) == 4  # three panels + colorbar
    _png_ok(fig)
    with pytest.raises(ValueError, match="no 'accuracy' probe rows for feature 'nope'"):
        plots.plot_probe_heatmap(_ax(), t['probes'], "nope")


def test_parse_json_list():
    assert plots.parse_json_list("[1.0, 2.5]") == [1.0, 2.5]
    assert plots.parse_json_list("[[1, 2], [3, 4]]") == [[1, 2], [3, 4]]
    assert plots.parse_json_list(float("nan")) == [] and plots.parse_json_list("not json") == []


def test_modules_never_import_pyplot():
    code = ("import llc_watch.plots, llc_watch.report, sys; "
            "from tests.synthetic_tables import synthetic_run_tables; "
            "t = synthetic_run_tables(); "
            "llc_watch.plots.figure_png(llc_watch.plots.calibration_figure(t['calibration']), dpi=30); "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1], env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-2000:]


def test_calibration_ladder_draws_each_sampler_and_the_longer_runs_apart():
    import json
    import pandas as pd
    base = dict(step=500, gamma=1.0, valid=True, llc_se=0.5, status="untrusted",
                choice=json.dumps({"epsilon": 2e-6}), cal_llc=31.0)
    rows = [dict(role="ladder", sampler="sgld", epsilon=e, llc=v) for e, v in ((2e-6, 23.0), (6e-6, 30.0))]
    rows += [dict(role="ladder_short", sampler="sgld", epsilon=2e-6, llc=20.0),
             dict(role="ladder", sampler="rmsprop_sgld", epsilon=4e-7, llc=26.0),
             dict(role="ladder", sampler="rmsprop_sgld", epsilon=1.2e-6, llc=35.0),
             dict(role="draws_check", sampler="sgld", epsilon=2e-6, llc=29.0),
             dict(role="draws_check", sampler="sgld", epsilon=2e-6, llc=31.0),
             dict(role="settled_test", sampler="sgld", epsilon=2e-6 / 3, llc=30.5),
             dict(role="gamma_check", sampler="sgld", epsilon=2e-6, llc=30.0)]
    cells = pd.DataFrame([{**base, **r} for r in rows])
    ax = plots.plot_calibration_ladder(_ax(), cells)
    by_label = {c.get_label(): c for c in ax.containers}
    # one ladder line per sampler, each holding only its own two rungs
    assert len(by_label["ε ladder, sgld (± 2 se)"].lines[0].get_xdata()) == 2
    assert len(by_label["ε ladder, rmsprop_sgld (± 2 se)"].lines[0].get_xdata()) == 2
    assert len(by_label["draws check (longer chains)"].lines[0].get_xdata()) == 2
    assert list(by_label["settled test (longer chains)"].lines[0].get_ydata()) == [30.5]
    assert any(line.get_label() == "shorter pilots (rerun longer)" for line in ax.lines)
    assert ax.get_title() == "step 500: untrusted"
    _png_ok(ax.figure)


def test_calibration_ladder_draws_one_line_per_gamma_when_the_rule_raised_it():
    import json
    import pandas as pd
    base = dict(step=500, sampler="sgld", valid=True, llc_se=0.5, status="plateau",
                choice=json.dumps({"epsilon": 2e-6}))
    rows = [dict(role="ladder", gamma=1.0, epsilon=e, llc=v) for e, v in ((2e-6, 55.0), (6e-6, 56.0))]
    rows += [dict(role="ladder", gamma=100.0, epsilon=e, llc=v) for e, v in ((7e-7, 52.0), (2e-6, 52.5), (6e-6, 53.0))]
    ax = plots.plot_calibration_ladder(_ax(), pd.DataFrame([{**base, **r} for r in rows]))
    by_label = {c.get_label(): c for c in ax.containers}
    assert list(by_label["ε ladder, sgld, γ = 1 (± 2 se)"].lines[0].get_ydata()) == [55.0, 56.0]
    assert list(by_label["ε ladder, sgld, γ = 100 (± 2 se)"].lines[0].get_ydata()) == [52.0, 52.5, 53.0]
    _png_ok(ax.figure)
