"""The report on a REAL tiny run (trained here, every analysis run through the driver), not only on
synthetic tables: the three defects once hidden by a drifted fixture stay fixed."""
import shutil

import numpy as np
import pytest

from llc_watch import plots
from llc_watch.analyses import calibrate_run, compute_llc, compute_probes
from llc_watch.report import write_report
from llc_watch.run import SCHEMAS, open_run

LLC = {"chains": 2, "draws": 12, "burn_in": 4, "n_data": 128, "batch_size": 32}


def _real_run(tiny_run, tmp_path_factory, calibration: dict):
    d = tmp_path_factory.mktemp("real") / "run"
    shutil.copytree(tiny_run.dir, d)
    steps = [c.step for c in open_run(d).checkpoints()]
    calibrate_run(d, steps=[steps[len(steps) // 2], steps[-1]], settings=calibration, progress=False)
    compute_llc(d, {**LLC, "epsilon": 1e-4}, checkpoints=steps[::3], progress=False)
    compute_probes(d, {"n_train": 128, "n_test": 64, "features": ["carry_in"]}, checkpoints=steps[::4], progress=False)
    path = write_report(d)
    return open_run(d), path.read_text()


@pytest.fixture(scope="module")
def real_run(tiny_run, tmp_path_factory):
    """Calibrated by the grid method (seconds); the auto method's ladder is the slow fixture below
    (minutes on 2 cores: its unmixed pilots are rerun longer and the ladder climbs)."""
    return _real_run(tiny_run, tmp_path_factory,
                     {**LLC, "method": "grid", "epsilons": [1e-4, 1e-3], "gammas": [100.0]})


@pytest.fixture(scope="module")
def real_run_auto(tiny_run, tmp_path_factory):
    # calibrate_llc chooses the batch, draws and burn-in itself (the LLC's draws would be refused)
    return _real_run(tiny_run, tmp_path_factory, {"chains": LLC["chains"], "n_data": LLC["n_data"],
                                                  "pilot_draws": 40, "checks": False})


def test_tables_follow_their_schemas(real_run):
    run, _ = real_run
    for name in ("metrics", "llc", "calibration", "probes", "probes_quiet"):
        df = run.table(name)                      # validated on read
        assert [c for c in SCHEMAS[name].names if c in df.columns] == list(df.columns)


def test_per_chain_llc_section_is_drawn(real_run):
    run, text = real_run
    llc = run.table("llc")
    assert llc["chains"].dtype.kind == "i"        # a count, and the values are in llc_per_chain
    assert "No per-chain data to draw" not in text
    assert 'alt="per-chain LLC"' in text and 'alt="LLC loss traces"' in text


def test_hyperparameter_table_lists_settings_not_data(real_run):
    _, text = real_run
    settings = text.split("LLC estimator (llc.csv)")[1].split("Stage detection")[0]
    for s in ("epsilon", "nbeta", "gamma", "draws", "burn_in", "batch_size", "sampler"):
        assert f"<td>{s}</td>" in settings, s
    for data_column in ("llc_per_chain", "mean_loss_trace", "failed_chains", "rhat", "sampling_s"):
        assert data_column not in settings, data_column


@pytest.mark.slow
def test_calibration_draws_each_checkpoint_apart(real_run_auto):
    """calibrate_llc's cells (the default method): one panel per checkpoint, each holding only that
    checkpoint's ladder, titled with its verdict; the report states the rule and the choice."""
    run, text = real_run_auto
    sweep = run.table("calibration")
    assert sweep["step"].nunique() == 2 and sweep["method"].eq("auto").all()
    fig = plots.calibration_figure(sweep)
    panels = [a for a in fig.axes if a.get_title().startswith("step ")]
    assert len(panels) == 2
    for ax in panels:
        step = float(ax.get_title().split(":")[0].removeprefix("step "))
        one = sweep[(sweep["step"] == step) & (sweep["role"] == "ladder")]   # shorter pilots: apart
        drawn = sum(len(c.lines[0].get_xdata()) for c in ax.containers if c.get_label().startswith("ε ladder"))
        ok = one["valid"].astype(bool) & np.isfinite(one["llc"].astype(float))
        assert drawn == int(ok.sum())
        assert ax.get_title().split(": ")[1] in ("plateau", "extrapolated", "untrusted")
    assert 'alt="calibration sweep"' in text and "Rule:" in text and "Chosen settings" in text


def test_grid_calibration_draws_each_checkpoint_apart(tiny_run, tmp_path):
    """The grid method's heatmaps: one per (checkpoint, γ), no cell holding two checkpoints."""
    from llc_watch.analyses.calibration import calibration_job
    from llc_watch.run import open_run as _open
    steps = [c.step for c in _open(tiny_run.dir).checkpoints()]
    rows = []
    for c in _open(tiny_run.dir).checkpoints([steps[len(steps) // 2], steps[-1]]):
        rows += calibration_job(c, {**LLC, "method": "grid", "epsilons": [1e-4, 1e-3], "nbetas": [None],
                                    "gammas": [100.0]})
    import pandas as pd
    sweep = pd.DataFrame(rows)
    fig = plots.calibration_figure(sweep)
    heatmaps = [a for a in fig.axes if a.images]
    assert len(heatmaps) == 2 * sweep["gamma"].nunique()
    for ax in heatmaps:                           # each panel holds one checkpoint's cells, none overwritten
        step = float(ax.get_title().split(":")[0].removeprefix("step "))
        one = sweep[sweep["step"] == step]
        shown = ax.images[0].get_array()
        assert np.isfinite(np.asarray(shown, float)).sum() == int((one["valid"] & np.isfinite(one["llc_mean"])).sum())


def test_invalid_estimates_have_no_value(real_run):
    run, _ = real_run
    llc = run.table("llc")
    assert llc.loc[~llc["valid"].astype(bool), "value"].isna().all()
    assert llc.loc[llc["valid"].astype(bool), "value"].notna().all()
