"""The per-checkpoint LLC driver and calibration on a tiny trained run."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from llc_watch.config import RunConfig
from llc_watch.analyses.calibration import calibrate_run
from llc_watch.analyses.llc import LLC_ANALYSIS, compute_llc, load_calibration
from llc_watch.jobs import JobsFailed
from llc_watch.llc.calibrate import CalibrationError, choose, mark_usable
from llc_watch.run import open_run
from llc_watch.settings import SettingsError
from llc_watch.train import train

torch.set_num_threads(1)
TINY = {"chains": 2, "draws": 12, "burn_in": 4, "n_data": 128, "batch_size": 32, "threads": 1,
        "epsilon": 1e-4, "gamma": 100.0}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "tiny"
    cfg = RunConfig.from_preset("addition-tiny").with_overrides(
        ["train.steps=40", "checkpoints.n_log=2", "checkpoints.n_linear=2", "train.threads=1"])
    train(cfg, d, progress=False)
    return d


def fresh_copy(run_dir, tmp_path):
    import shutil
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("results", "llc.csv", "calibration*"))
    return dst


def test_llc_job_row_and_table(run_dir, tmp_path):
    d = fresh_copy(run_dir, tmp_path)
    df = compute_llc(d, TINY, progress=False)
    steps = sorted(int(p.stem.split("_")[1]) for p in (d / "checkpoints").glob("step_*.safetensors"))
    assert df["step"].tolist() == steps and set(df["measure"]) == {"llc"}
    assert {"value", "stderr", "valid", "llc_per_chain", "rhat", "ess", "drift", "epsilon", "nbeta"} <= set(df.columns)
    assert len(json.loads(df["llc_per_chain"].iloc[0])) == 2
    assert (d / "llc.csv").is_file()
    assert pd.read_csv(d / "llc.csv")["step"].tolist() == steps
    assert load_calibration(d) is None and df.attrs["settings"].chains == 2
    # every checkpoint's sharpest curvature, and SGLD's step along it
    assert (df["h_max"] > 0).all()
    assert np.allclose(df["sharpest_step"], df["epsilon"] * (df["nbeta"] * df["h_max"] + df["gamma"]))


def test_a_step_past_the_sharpest_direction_is_said_per_checkpoint(run_dir, tmp_path):
    from llc_watch.analyses.llc import LLC_ANALYSIS
    d = fresh_copy(run_dir, tmp_path)
    small = compute_llc(d, {**TINY, "epsilon": 1e-7}, checkpoints=[40], progress=False)
    h, nb, g = (float(small[k].iloc[0]) for k in ("h_max", "nbeta", "gamma"))
    assert small["sharpest_step"].iloc[0] < 1 and not any("sharpest" in w for w in LLC_ANALYSIS.warnings(small))
    eps = 2.0 / (nb * h + g)                  # a step of 2 along the sharpest direction: biased, not yet unstable
    d2 = fresh_copy(run_dir, tmp_path / "b")
    big = compute_llc(d2, {**TINY, "epsilon": eps}, checkpoints=[40], progress=False)
    assert abs(big["h_max"].iloc[0] - h) < 1e-6 * h          # the probe does not depend on ε
    row = json.loads(big["warnings"].iloc[0])
    assert any(w.startswith("ε=") and "sharpest curvature" in w and "≈ 50%" in w for w in row)
    lines = [w for w in LLC_ANALYSIS.warnings(big) if "sharpest direction" in w]   # one line for the run
    assert len(lines) == 1 and lines[0].startswith("LLC at 1 of 1 checkpoints (steps 40)") and "at most 2" in lines[0]
    off = compute_llc(fresh_copy(run_dir, tmp_path / "c"), {**TINY, "epsilon": eps, "probe_curvature": False},
                      checkpoints=[40], progress=False)
    assert "h_max" not in off.columns or off["h_max"].isna().all()


def test_rerun_skips_and_changed_settings_do_not_mix(run_dir, tmp_path):
    d = fresh_copy(run_dir, tmp_path)
    a = compute_llc(d, TINY, progress=False)
    n_files = len(list((d / "results" / "llc").glob("*.json")))
    b = compute_llc(d, TINY, progress=False)
    assert "0 ran" in b.attrs["summary"]
    pd.testing.assert_frame_equal(a, b)
    c = compute_llc(d, {**TINY, "seed": 1}, progress=False)
    assert len(list((d / "results" / "llc").glob("*.json"))) == 2 * n_files
    # every checkpoint samples with its own seed, derived from (seed, step) and recorded
    from llc_watch.analyses.llc import checkpoint_seed
    assert c["seed"].tolist() == [checkpoint_seed({"seed": 1}, s) for s in c["step"]] and len(c) == len(a)
    assert c["seed"].nunique() == len(c) and not set(c["seed"]) & set(a["seed"])


def test_killed_driver_resumes_to_the_same_table(run_dir, tmp_path):
    d = fresh_copy(run_dir, tmp_path)
    ref = compute_llc(fresh_copy(run_dir, tmp_path / "ref"), TINY, progress=False)
    code = ("import torch; torch.set_num_threads(1); from llc_watch.analyses.llc import compute_llc; "
            f"compute_llc({str(d)!r}, {TINY!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    out = d / "results" / "llc"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.json"))) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("*.json")))
    assert 1 <= done
    df = compute_llc(d, TINY, progress=False)
    pd.testing.assert_frame_equal(df.drop(columns=["sampling_s"]), ref.drop(columns=["sampling_s"]))


def test_corrupt_checkpoint_fails_alone(run_dir, tmp_path):
    d = fresh_copy(run_dir, tmp_path)
    ckpts = sorted((d / "checkpoints").glob("step_*.safetensors"))
    before = compute_llc(d, TINY, progress=False)
    table = (d / "llc.csv").read_bytes()
    ckpts[1].write_bytes(b"not a checkpoint")
    with pytest.raises(JobsFailed) as e:
        compute_llc(d, {**TINY, "seed": 3}, progress=False)
    failures = e.value.report.failures
    assert len(failures) == 1 and "CheckpointError" in failures[0].error and str(ckpts[1]) in str(failures[0])
    assert "llc.csv was left as it was" in str(e.value)
    assert (d / "llc.csv").read_bytes() == table and len(before) == len(ckpts)   # a failed command empties nothing
    assert len(list((d / "results" / "llc").glob("*.json"))) == 2 * len(ckpts) - 1  # finished jobs are kept


def test_calibrate_then_llc_uses_the_choice(run_dir, tmp_path):
    d = fresh_copy(run_dir, tmp_path)
    sweep_settings = {**TINY, "chains": 4, "draws": 100, "burn_in": 100}
    cal = calibrate_run(d, steps=[40], epsilons=[1e-4, 3e-3, 10.0], settings=sweep_settings, progress=False)
    assert {"epsilon", "nbeta", "gamma", "llc_mean", "llc_std", "valid", "drift", "rhat",
            "failed_chains", "stable", "usable", "step", "h_max", "sharpest_step"} <= set(cal.sweep.columns)
    sw = cal.sweep
    assert sw["h_max"].nunique() == 1 and sw["h_max"].iloc[0] > 0        # one probe per checkpoint
    assert np.allclose(sw["sharpest_step"], sw["epsilon"] * (sw["nbeta"] * sw["h_max"] + sw["gamma"]))
    assert cal.choice["epsilon"] == 3e-3         # 1e-4 mixes too slowly (R̂); ε = 10 diverges
    assert not cal.sweep.query("epsilon == 10.0")["stable"].any()
    saved = json.loads((d / "calibration.json").read_text())
    assert saved["choice"] == cal.choice and "largest" in saved["rule"]
    assert saved["warnings"] == cal.warnings and isinstance(cal.warnings, list)
    s = LLC_ANALYSIS.settings(open_run(d), {"chains": 2})
    assert s.epsilon == cal.choice["epsilon"] and s.chains == 2
    df = compute_llc(d, {"threads": 1, "draws": 12, "burn_in": 4, "n_data": 128}, checkpoints=[0], progress=False)
    assert df["epsilon"].iloc[0] == cal.choice["epsilon"]


def test_calibrate_auto_hands_the_users_settings_to_calibrate_llc(run_dir, tmp_path, monkeypatch):
    # method auto: the sampler, batch, ε ladder, γ, nβ and pilots' burn-in a user gives reach
    # calibrate_llc (they were once ignored); left unset, the rule's own defaults (None / auto)
    import types
    import llc_watch.analyses.calibration as ac
    seen = []

    def fake(model, loss_fn, data, **kw):
        seen.append(kw)
        choice = dict(epsilon=1e-5, gamma=kw["gamma"] or 1.0, nbeta=50.0, batch_size=kw["batch_size"] or 64,
                      draws=300, burn_in=150, sampler="sgld" if kw["sampler"] == "auto" else kw["sampler"], chains=4)
        sweep = pd.DataFrame([dict(role="ladder", epsilon=1e-5, nbeta=50.0, gamma=choice["gamma"], valid=True,
                                   failed_chains=0, rhat=1.0, batch_size=choice["batch_size"],
                                   sampler=choice["sampler"], llc=3.0, llc_se=0.1)])
        return types.SimpleNamespace(status="plateau", choice=choice, llc=3.0, llc_stderr=0.1, evidence={},
                                     warnings=[], sweep=sweep)

    monkeypatch.setattr(ac, "calibrate_llc", fake)
    d = fresh_copy(run_dir, tmp_path)
    given = {"n_data": 128, "chains": 2, "sampler": "rmsprop_sgld", "batch_size": 48, "epsilons": [1e-5, 3e-5],
             "gammas": [10.0], "nbetas": [20.0], "burn_in": 80, "pilot_draws": 60, "checks": False}
    cal = calibrate_run(d, steps=[40], settings=given, progress=False)
    kw = seen[-1]
    assert (kw["sampler"], kw["batch_size"], kw["epsilons"], kw["gamma"], kw["nbeta"]) == (
        "rmsprop_sgld", 48, [1e-5, 3e-5], 10.0, 20.0)
    assert (kw["burn_in"], kw["draws"], kw["chains"], kw["checks"]) == (80, 60, 2, False)
    assert cal.choice["sampler"] == "rmsprop_sgld" and cal.choice["batch_size"] == 48
    d2 = fresh_copy(run_dir, tmp_path / "defaults")
    calibrate_run(d2, steps=[40], settings={"n_data": 128}, progress=False)
    kw = seen[-1]
    assert (kw["sampler"], kw["batch_size"], kw["epsilons"], kw["gamma"], kw["nbeta"], kw["burn_in"],
            kw["draws"]) == ("auto", None, None, None, None, None, None)


def test_devinterp_backend_drops_the_calibrations_options_it_cannot_use(run_dir, tmp_path):
    # a grid calibration saves every sampling option; `llc --backend devinterp` must not be refused
    # for options the user never gave (they came from calibration.json), nor pass them on
    from llc_watch.io import atomic_write_json
    d = fresh_copy(run_dir, tmp_path)
    atomic_write_json(d / "calibration.json", {"choice": {"epsilon": 3e-4, "observe_every": 10, "observe_size": 128,
                                                          "draws": 50}})
    s = LLC_ANALYSIS.settings(open_run(d), {"backend": "devinterp"})
    assert (s.epsilon, s.draws, s.observe_every, s.observe_size) == (3e-4, 50, None, None)
    assert LLC_ANALYSIS.settings(open_run(d), {}).observe_size == 128        # our backend keeps them
    with pytest.raises(SettingsError, match="devinterp backend does not use observe_size"):
        LLC_ANALYSIS.settings(open_run(d), {"backend": "devinterp", "observe_size": 64})
    # a calibration that chose RMSProp-SGLD: its ε is not plain SGLD's, so devinterp's llc() needs both given
    atomic_write_json(d / "calibration.json", {"choice": {"epsilon": 3e-6, "sampler": "rmsprop_sgld"}})
    with pytest.raises(SettingsError, match="chose rmsprop_sgld, whose ε is not plain SGLD's"):
        LLC_ANALYSIS.settings(open_run(d), {"backend": "devinterp"})
    s = LLC_ANALYSIS.settings(open_run(d), {"backend": "devinterp", "sampler": "sgld", "epsilon": 1e-4})
    assert (s.sampler, s.epsilon) == ("sgld", 1e-4)


def test_choose_rule():
    rows = []
    # (ε, stable, failed chains): 1e-6 mixes too slowly (unstable, no failure), 1e-3 diverges
    for eps, stable, failed in [(1e-6, False, 0), (1e-5, True, 0), (1e-4, True, 0), (1e-3, False, 2),
                                (1e-2, True, 0)]:
        for step in (1, 2):
            rows.append({"step": step, "epsilon": eps, "nbeta": 100.0, "gamma": 100.0, "stable": stable,
                         "valid": True, "failed_chains": failed, "llc_mean": 10.0, "llc_stderr": 0.1})
    rows.append({"step": 1, "epsilon": 1e-4, "nbeta": 1000.0, "gamma": 100.0, "stable": True, "valid": True,
                 "failed_chains": 0, "llc_mean": 10.0, "llc_stderr": 0.1})
    rows.append({"step": 2, "epsilon": 1e-4, "nbeta": 1000.0, "gamma": 100.0, "stable": False, "valid": True,
                 "failed_chains": 0, "llc_mean": 10.0, "llc_stderr": 0.1})
    df = pd.DataFrame(rows)
    # 1e-2 is stable but above a diverging 1e-3: not usable; nβ=1000 unstable on step 2;
    # 1e-4 agrees with 1e-5 (a plateau): the larger of the two
    assert choose(df, n=500) == {"epsilon": 1e-4, "nbeta": 100.0, "gamma": 100.0}
    # no plateau (the LLC grows with ε on step 2): the smallest usable ε, never the largest
    moved = df.assign(llc_mean=np.where((df["epsilon"] == 1e-4) & (df["step"] == 2), 13.0, 10.0))
    assert choose(moved, n=500) == {"epsilon": 1e-5, "nbeta": 100.0, "gamma": 100.0}
    marked = mark_usable(df)
    assert not marked.query("epsilon == 0.01")["usable"].any()
    assert marked.query("epsilon == 1e-5")["usable"].all()
    # nothing stable: the smallest ε at which every chain stayed healthy, marked untrusted (and said)
    from llc_watch.llc.calibrate import choice_warnings
    fallback = choose(df.assign(stable=False), n=500)
    assert fallback == {"epsilon": 1e-6, "nbeta": 100.0, "gamma": 100.0, "untrusted": True}
    assert any(w.startswith("UNTRUSTED") for w in choice_warnings(df.assign(stable=False), fallback))
    with pytest.raises(CalibrationError, match="smaller"):     # not even a healthy cell: no choice
        choose(df.assign(stable=False, failed_chains=1), n=500)


def test_choice_warnings_no_plateau_and_grid_edge():
    from llc_watch.llc.calibrate import choice_warnings
    df = pd.DataFrame([{"step": 5, "epsilon": e, "nbeta": 10.0, "gamma": 1.0, "llc_mean": v, "llc_stderr": 1.0}
                       for e, v in [(1e-4, 10.0), (1e-3, 30.0)]])
    ws = choice_warnings(df, {"epsilon": 1e-3, "nbeta": 10.0, "gamma": 1.0})
    assert any("largest ε" in w for w in ws) and any("no plateau" in w for w in ws)
    flat = df.assign(llc_mean=[10.0, 10.5])
    assert not any("no plateau" in w for w in choice_warnings(flat, {"epsilon": 1e-3, "nbeta": 10.0, "gamma": 1.0}))


def test_the_grid_says_when_its_choice_steps_past_the_sharpest_direction():
    # regular d = 2 (Hessian ≈ I, so h_max ≈ 1): ε·(nβ·h_max + γ) ≈ 1.8 at ε = 1e-2 inflates each
    # direction's spread by 1/(1 − ε·c/4) ≈ 1.8; at ε = 1e-3 (0.18) it is within 5 %
    from llc_watch.llc import exact
    from llc_watch.llc.calibrate import SHARPEST_STEP_MAX, choice_warnings, sweep
    model, loss_fn, data, lam = exact.make_regular(2, 500)
    df = sweep(model, loss_fn, data, epsilons=[1e-3, 1e-2], gammas=[100.0], chains=4, draws=400, burn_in=100,
               batch_size=500, seed=0).assign(step=0)
    assert abs(df["h_max"].iloc[0] - 1.0) < 0.2
    small, big = (df[np.isclose(df["epsilon"], e)].iloc[0] for e in (1e-3, 1e-2))
    assert small["sharpest_step"] < SHARPEST_STEP_MAX < big["sharpest_step"] < 4
    # the warning fires where λ̂ is measurably biased, not where it is not
    assert big["llc_mean"] - small["llc_mean"] > 3 * math.hypot(big["llc_stderr"], small["llc_stderr"])
    warn = [w for w in choice_warnings(df, {"epsilon": 1e-2, "nbeta": big["nbeta"], "gamma": 100.0})
            if "sharpest curvature" in w]
    assert len(warn) == 1 and warn[0].startswith("step 0: ε=0.01") and "discretisation bias" in warn[0]
    assert not any("sharpest curvature" in w for w in
                   choice_warnings(df, {"epsilon": 1e-3, "nbeta": small["nbeta"], "gamma": 100.0}))


def test_sharpest_step_lines_make_one_run_line_even_without_the_column():
    # pooled (adaptive) rows or older tables may lack sharpest_step: the line is still made, without its worst
    from llc_watch.analyses.llc import LLC_ANALYSIS
    w = json.dumps(["ε=0.001 is 2/(nβ·h_max + γ) (h_max = 3, the loss's sharpest curvature at w*): ..."])
    base = {"measure": "llc", "valid": True, "value": 1.0, "stderr": 0.1, "warnings": w}
    bare = LLC_ANALYSIS.warnings(pd.DataFrame([{**base, "step": 5}, {**base, "step": 6, "warnings": "[]"}]))
    assert len(bare) == 1 and bare[0].startswith("LLC at 1 of 2 checkpoints (steps 5)") and "at most" not in bare[0]
    full = LLC_ANALYSIS.warnings(pd.DataFrame([{**base, "step": 5, "sharpest_step": 2.0},
                                               {**base, "step": 6, "sharpest_step": 3.5}]))
    assert len(full) == 1 and "(steps 5, 6)" in full[0] and "at most 3.5, step 6" in full[0]


def test_a_warning_seen_at_many_checkpoints_is_one_line_with_its_range():
    # the addition demo printed 94 per-checkpoint lines (mostly 4 kinds × 23 checkpoints) that hid the one
    # that differed; one line per kind, each varying number as its range, and the odd one kept whole
    from llc_watch.analyses.llc import LLC_ANALYSIS
    rows = []
    for step, rhat in [(0, 1.707), (10, 2.121), (20, 1.055)]:
        lines = [f"rank-normalised split-R̂ = {rhat} > 1.01 on the observed: the chains have not mixed",
                 f"negative LLC {-4000 + 100 * step:g}: w* is not a local minimum"]
        if step == 10:
            lines.append("chain 3 failed (left the basin); excluded from the mean")
        rows.append({"measure": "llc", "step": step, "valid": True, "value": 1.0, "stderr": 0.1,
                     "warnings": json.dumps(lines)})
    rows.append({"measure": "llc", "step": 30, "valid": True, "value": 1.0, "stderr": 0.1, "warnings": "[]"})
    out = LLC_ANALYSIS.warnings(pd.DataFrame(rows))
    assert out == [
        "LLC at 3 of 4 checkpoints (steps 0, 10, 20): rank-normalised split-R̂ = 1.055 to 2.121 > 1.01 on the "
        "observed: the chains have not mixed",
        "LLC at 3 of 4 checkpoints (steps 0, 10, 20): negative LLC -4000 to -2000: w* is not a local minimum",
        "LLC at step 10: chain 3 failed (left the basin); excluded from the mean"]


def test_unknown_setting_is_named(run_dir):
    with pytest.raises(SettingsError, match="chainz"):
        LLC_ANALYSIS.settings(open_run(run_dir), {"chainz": 3})


@pytest.mark.parametrize("given,words", [
    ({"chains": 0}, "chains=0: must be >= 1"), ({"draws": 0}, "draws=0"), ({"epsilon": float("nan")}, "finite"),
    ({"epsilon": -1.0}, "epsilon=-1.0: must be > 0"), ({"epsilon": 0.0}, "must be > 0"),
    ({"epsilon": float("inf")}, "finite"), ({"nbeta": -1.0}, "nbeta"), ({"batch_size": 0}, "batch_size"),
    ({"eval_size": 0}, "eval_size"), ({"sampler": "hmc"}, "sampler"), ({"device": "tpu"}, "device"),
])
def test_bad_settings_are_refused_before_any_checkpoint_is_loaded(run_dir, tmp_path, given, words, monkeypatch):
    import llc_watch.checkpoints as C
    d = fresh_copy(run_dir, tmp_path)
    compute_llc(d, TINY, checkpoints=[0], progress=False)
    table = (d / "llc.csv").read_bytes()
    loaded = []
    monkeypatch.setattr(C.Checkpoint, "load_model", lambda self, *a, **k: loaded.append(self))
    with pytest.raises(SettingsError, match=words):
        compute_llc(d, {**TINY, **given}, progress=False)
    assert loaded == [] and (d / "llc.csv").read_bytes() == table


def test_the_summary_names_where_the_settings_came_from_and_the_calibrations_status(tmp_path):
    # a user reading `llc-watch llc`'s output must see whether its levels were calibrated, and nβ's value
    from llc_watch.analyses.llc import LLCSettings
    from tests.synthetic_tables import write_synthetic_run
    run = open_run(write_synthetic_run(tmp_path / "r", tables=("metrics", "llc")))
    table = run.table("llc")
    table.attrs["settings"] = LLCSettings()
    first = LLC_ANALYSIS.summary(run, table)[0]
    nbeta = pd.to_numeric(table["nbeta"], errors="coerce").dropna().iloc[0]
    assert first.startswith("settings from defaults [not calibrated] + given:")
    assert f"nbeta={nbeta:.5g} (default)" in first
    (run.dir / "calibration.json").write_text(json.dumps({"choice": {"epsilon": 1e-4, "untrusted": True},
                                                          "warnings": []}))
    assert LLC_ANALYSIS.summary(run, table)[0].startswith("settings from calibration.json [UNTRUSTED] + given:")
