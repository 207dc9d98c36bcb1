"""The paper-reproduction studies (studies/grokking.py, studies/icl_regression.py) and their measures.

Fast tests run the studies' table, boundary, claim and figure code on planted tables (curves whose
phase boundaries we put at known steps); the end-to-end --quick runs are slow on a shared 2-core
machine (several minutes each), so they are marked slow.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "studies"))
grokking = importlib.import_module("grokking")
icl = importlib.import_module("icl_regression")

from llc_watch.icl_behaviour import attention_rows, mse_rows, pca_trajectory  # noqa: E402
from llc_watch.model import ModelConfig, Transformer  # noqa: E402
from llc_watch.tasks import get_task  # noqa: E402


def sig(steps, at, width=0.25):
    """A smooth step in log(step + 1) centred on `at` (0 before, 1 after)."""
    return 1 / (1 + np.exp(-(np.log1p(steps) - np.log(at)) / width))


# --------------------------------------------------------------------------------------------------
# icl_behaviour


def test_lstsq_features_equal_pinv():
    """The SVD-free least-squares labels equal numpy's pseudo-inverse solution at every k."""
    task = get_task("icl_regression")
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((16, 16, 4)), rng.standard_normal((16, 4))
    y = np.einsum("bkd,bd->bk", x, w) + 0.35 * rng.standard_normal((16, 16))
    b = task.encode(w, x, y)
    for k in range(16):
        ref = np.einsum("bdk,bk->bd", np.linalg.pinv(x[:, :k]), y[:, :k]) if k else np.zeros((16, 4))
        got = np.stack([b.features[f"lstsq_{i}"][:, 2 * k].numpy() for i in range(4)], 1)
        assert np.allclose(ref, got, atol=1e-4), k


class RidgeModel(torch.nn.Module):
    """Outputs exactly the ridge prediction at x-positions (read from a lookup of the batch)."""

    def __init__(self, batch):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.out = batch.features["ridge_pred"].nan_to_num(0.0)[..., None]

    def forward(self, tokens):
        return self.out + 0 * self.p


def test_mse_rows_know_ridge():
    task = get_task("icl_regression")
    batch = task.sample(512, seed=3)
    from llc_watch.icl_behaviour import predictions
    rows = pd.DataFrame(mse_rows(predictions(RidgeModel(batch), task, batch), task, batch, step=7))
    at = lambda m, k=-1: float(rows[(rows.measure == m) & (rows.position == k)].value.iloc[0])
    assert at("model_vs_ridge") < 1e-10
    assert at("mse_model") == pytest.approx(at("mse_ridge"), rel=1e-9)
    # with no context the ridge prediction is 0, and with 15 examples close to the noise level 0.125
    assert at("mse_ridge", 0) == pytest.approx(at("mse_zero", 0), rel=1e-9)
    assert 0.1 < at("mse_ridge", 15) < 0.25 < 3.0 < at("mse_zero", 15)
    assert set(rows.position) == set(range(16)) | {-1}


def test_attention_masses_sum_to_one():
    torch.manual_seed(0)
    task = get_task("icl_regression", n_dims=2, n_examples=5)
    model = Transformer(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=16, d_in=3, d_out=1, n_ctx=9))
    rows = pd.DataFrame(attention_rows(model, task.sample(32, 0), step=0))
    wide = rows.pivot_table(index="site", columns="measure", values="value")
    assert len(wide) == 4                                         # 2 layers x 2 heads
    total = wide["attn_to_y"] + wide["attn_to_x"] + wide["attn_to_self"]
    assert np.allclose(total, 1.0, atol=1e-6)
    assert (wide["attn_entropy"] > 0).all()


def test_pca_trajectory_finds_a_planted_turn():
    steps = np.unique(np.geomspace(1, 10_000, 80).astype(int))
    t = sig(steps, 300)                                         # moves along one direction, then another
    u = sig(steps, 3000)
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal(500), rng.standard_normal(500)
    outs = np.outer(t, A) + np.outer(u, B) + 1e-3 * rng.standard_normal((len(steps), 500))
    proj, share = pca_trajectory(outs, 3)
    assert share[:2].sum() > 0.99 and share[2] < 0.01
    with pytest.raises(ValueError, match="checkpoints >= 2"):
        pca_trajectory(outs[:1])


# --------------------------------------------------------------------------------------------------
# grokking: planted tables


def planted_grokking_run(tmp_path: Path, ends=(1400, 9400, 13000)) -> Path:
    """A run folder holding only tables, with memorisation ending at ends[0], the test loss, weight
    norm and restricted loss falling from ends[1] to ends[2], and the LLC bending there too."""
    b1, b2, b3 = ends
    steps = np.unique(np.r_[0, np.geomspace(1, 20_000, 60).astype(int), np.linspace(500, 20_000, 40).astype(int)])
    rng = np.random.default_rng(0)
    mid = np.sqrt(b2 * b3)
    drop = sig(steps, mid, 0.12)
    train_loss = np.exp(np.log(4.7) - 12 * sig(steps, b1 / 2.2, 0.3))
    test_loss = np.exp(np.log(4.7) + 1.2 * sig(steps, 300) - 9 * drop)
    train_acc, test_acc = sig(steps, b1 / 3, 0.2), 0.01 + 0.99 * drop
    m = pd.concat([pd.DataFrame({"step": steps, "measure": k, "value": v}) for k, v in
                   (("train_loss", train_loss), ("test_loss", test_loss), ("train_acc", train_acc),
                    ("test_acc", test_acc))])
    restricted = np.exp(np.log(4.7) - 8 * sig(steps, mid / 1.3, 0.12))
    excluded = np.exp(np.log(1e-5) + 14 * sig(steps, np.sqrt(b1 * b2), 0.3))
    rows = []
    for split in ("train", "test", "all"):
        rows += [pd.DataFrame({"step": steps, "measure": "restricted_loss", "split": split, "value": restricted}),
                 pd.DataFrame({"step": steps, "measure": "excluded_loss", "split": split, "value": excluded})]
    for meas in ("embed_key_power", "mlp_key_power"):
        rows.append(pd.DataFrame({"step": steps, "measure": meas, "split": "all", "value": 0.1 + 0.7 * drop}))
    f = pd.concat(rows)
    f["frequency"], f["site"], f["key_freqs"] = -1, "logits", "14 35 41"
    wn = pd.DataFrame({"step": steps, "value": 1800 + 1800 * sig(steps, 150) - 2300 * drop})
    llc_v = 80 + 2400 * sig(steps, 120) - 2000 * drop + rng.normal(0, 5, len(steps))
    llc = pd.DataFrame({"step": steps, "measure": "llc", "value": llc_v, "stderr": 5.0, "valid": True,
                        "warnings": "[]", "epsilon": 1e-4, "gamma": 100.0, "nbeta": 464.3, "n": 3831,
                        "chains": 4, "draws": 200, "burn_in": 100, "batch_size": 512})
    run = tmp_path / "grok"
    run.mkdir()
    m.to_csv(run / "metrics.csv", index=False)
    f.to_csv(run / "fourier.csv", index=False)
    wn.to_csv(run / "weight_norm.csv", index=False)
    llc.to_csv(run / "llc.csv", index=False)
    (run / "config.json").write_text(json.dumps(grokking.FULL))
    return run


def test_grokking_report_finds_planted_phases(tmp_path):
    run = planted_grokking_run(tmp_path)
    md = grokking.report(run, tmp_path / "fig", quick=False)
    for name in ("grokking.png", "grokking_claims.md", "grokking_boundaries.md"):
        assert (tmp_path / "fig" / name).stat().st_size > 500
    c = grokking.curves(grokking.load_tables(run))
    bs = grokking.boundaries_by_signal(c)
    phases = grokking.consensus(grokking.phase_table(bs))
    b1, b2, b3 = (phases[k] for k in grokking.PAPER_PHASES)
    assert b1 < b2 < b3
    mid = np.sqrt(9400 * 13000)
    assert b2 < mid < b3 and 1.0 < b3 / b2 < 6
    claims = {c.id: c.verdict for c in grokking.claims(c, bs, grokking.phase_table(bs), phases, "14 35 41", 113, False)}
    assert claims["N1"] == "reproduced" and claims["N2"] == "reproduced" and claims["N5"] == "reproduced"
    assert claims["N7"] == "reproduced"
    assert "| N3 |" in md and "| L1 |" in md


def test_grokking_tables_only_refuses_missing_tables(tmp_path):
    with pytest.raises(SystemExit, match="missing"):
        grokking.load_tables(tmp_path)


# --------------------------------------------------------------------------------------------------
# in-context regression: planted tables


def planted_icl_run(tmp_path: Path) -> Path:
    """Tables of a run whose MSE leaves the predict-zero level at ~1k (ICL), whose LLC rises to a
    peak at ~3k and falls after, and whose outputs turn there."""
    steps = np.unique(np.r_[0, np.geomspace(1, 16_000, 70).astype(int)])
    rng = np.random.default_rng(0)
    icl_on = sig(steps, 1500, 0.3)
    rows = []
    K = 16
    for k in range(K):
        zero = 4.2
        ridge = 0.125 + 4.0 * 4 / (4 + k)
        model = zero - (zero - ridge * 1.2) * icl_on
        for meas, v in (("mse_model", model), ("mse_zero", np.full_like(model, zero)),
                        ("mse_ridge", np.full_like(model, ridge)), ("model_vs_ridge", np.abs(model - ridge))):
            rows.append(pd.DataFrame({"step": steps, "measure": meas, "position": k, "site": "output", "value": v}))
    b = pd.concat(rows)
    mean = b.groupby(["step", "measure"], as_index=False)["value"].mean()
    mean["position"], mean["site"] = -1, "output"
    ln = pd.DataFrame({"step": steps, "measure": "ln_weight_sq", "position": -1, "site": "ln_final",
                       "value": 64 - 30 * sig(steps, 8000)})
    att = pd.DataFrame({"step": steps, "measure": "attn_to_y", "position": -1, "site": "L0H0", "value": 0.5 * icl_on})
    b = pd.concat([b, mean, ln, att])
    llc_v = 2 + 30 * sig(steps, 800, 0.3) - 12 * sig(steps, 6000, 0.3) + rng.normal(0, 0.2, len(steps))
    llc = pd.DataFrame({"step": steps, "measure": "llc", "value": llc_v, "stderr": 0.2, "valid": True,
                        "warnings": "[]", "epsilon": 1e-4, "nbeta": 60.0, "gamma": 6.0, "chains": 4,
                        "draws": 200, "burn_in": 200, "batch_size": 1024, "n": 8192})
    m = pd.DataFrame({"step": steps, "measure": "train_loss", "value": mean[mean.measure == "mse_model"].value.to_numpy()})
    A, B = rng.standard_normal(300), rng.standard_normal(300)
    outs = np.outer(icl_on, A) + np.outer(sig(steps, 6000, 0.3), B)
    run = tmp_path / "icl"
    run.mkdir()
    b.to_csv(run / "behaviour.csv", index=False)
    llc.to_csv(run / "llc.csv", index=False)
    m.to_csv(run / "metrics.csv", index=False)
    np.savez(run / "ed_outputs.npz", steps=steps, outputs=outs)
    (run / "config.json").write_text(json.dumps(icl.FULL))
    return run


def test_icl_report_on_planted_tables(tmp_path):
    run = planted_icl_run(tmp_path)
    md = icl.report(run, tmp_path / "fig", quick=False)
    for name in ("icl_regression.png", "icl_regression_ed.png", "icl_regression_claims.md"):
        assert (tmp_path / "fig" / name).stat().st_size > 500
    a = icl.analyse(icl.load_tables(run))
    assert a["bs_llc"], "the planted LLC rise and fall give boundaries"
    st = icl.stage_rows(icl.load_tables(run), a)
    assert set(st["LLC"]) == {"rises", "falls"}                  # a rising and a falling stage
    assert "ln_final" in " ".join(st["LN weights shrinking (>20 %)"])
    assert any(bs for bs in a["bs_ed"].values()), "the planted turn of the outputs is found"
    for row in ("| LR1 |", "| LR2 |", "| LR3 |", "| H2 |", "| H3 |"):
        assert row in md
    assert "| LR3 | " in md and "not tested" in md.split("| LR3 |")[1].split("\n")[0]


# --------------------------------------------------------------------------------------------------
# end to end (slow on a shared CPU: several minutes each)


@pytest.mark.slow
def test_grokking_quick_end_to_end(tmp_path):
    grokking.main(["--quick", "--run", str(tmp_path / "run"), "--figures", str(tmp_path / "fig"), "--quiet"])
    text = (tmp_path / "fig" / "grokking_quick_claims.md").read_text()
    assert "| N1 | " in text and "reproduced" in text
    llc = pd.read_csv(tmp_path / "run" / "llc.csv")
    assert llc["valid"].all()
    # a rerun reuses every result: nothing is recomputed
    before = {p: p.stat().st_mtime for p in (tmp_path / "run" / "results").rglob("*.json")}
    grokking.main(["--quick", "--run", str(tmp_path / "run"), "--figures", str(tmp_path / "fig"), "--quiet"])
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "run" / "results").rglob("*.json")}


@pytest.mark.slow
def test_icl_quick_end_to_end(tmp_path):
    icl.main(["--quick", "--run", str(tmp_path / "run"), "--figures", str(tmp_path / "fig"), "--quiet"])
    text = (tmp_path / "fig" / "icl_regression_quick_claims.md").read_text()
    assert "| LR1 |" in text
    b = pd.read_csv(tmp_path / "run" / "behaviour.csv")
    last = b[(b.measure == "mse_model") & (b.position == -1)].sort_values("step").value.iloc[-1]
    zero = b[(b.measure == "mse_zero") & (b.position == -1)].value.iloc[0]
    assert last < zero            # it has started to learn in context


@pytest.mark.parametrize("study", [grokking, icl])
def test_a_malformed_llc_option_is_one_line_and_exit_2(study, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        study.main(["--llc", "chains", "--tables-only", "--run", str(tmp_path / "none")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--llc 'chains': give key=number" in err.strip().splitlines()[-1] and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# llc_accuracy: a saved calibration is reused, and only by the code and case that made it

def test_llc_accuracy_reuses_a_saved_calibration_and_only_its_own(tmp_path, monkeypatch, capsys):
    import llc_watch.llc as llc_pkg
    import llc_watch.llc.calibration as calibration
    accuracy = importlib.import_module("llc_accuracy")
    calls, given, real_estimate = [], [], llc_pkg.estimate_llc

    def fake_calibrate(model, loss_fn, data, gamma=None, **kw):   # the real one takes ~30 s here
        calls.append(gamma)
        choice = dict(epsilon=1.234567891e-4, gamma=gamma or 1.0, nbeta=263.1, batch_size=64, draws=60,
                      burn_in=20, sampler="sgld", chains=2)
        return calibration.Calibration(choice, pd.DataFrame(), {"cost": {"ratio": 1.5}},
                                       ["UNTRUSTED: planted"], "untrusted", 1.5, 0.1)

    def estimate(*a, **kw):
        given.append(kw)
        return real_estimate(*a, **kw)

    monkeypatch.setattr(calibration, "calibrate_llc", fake_calibrate)
    monkeypatch.setattr(llc_pkg, "estimate_llc", estimate)
    run = lambda **kw: accuracy.run_case("regular_d3", devinterp=False, cal_dir=tmp_path, **kw)  # noqa: E731
    first = run()
    saved = json.loads((tmp_path / "regular_d3.json").read_text())
    assert len(calls) == 1 and saved["choice"]["epsilon"] == 1.234567891e-4 and saved["status"] == "untrusted"
    again = run()                                       # reused: the same choice, so the same estimate
    assert len(calls) == 1 and "calibration reused from" in capsys.readouterr().out
    assert given[1] == given[0]                         # the estimate is given the very same settings
    keep = ("status", "cal_warnings", "epsilon", "gamma", "batch", "draws", "cost_ratio", "calib_s")
    assert {k: again[k] for k in keep} == {k: first[k] for k in keep}
    # and lands on the same λ̂ up to the last bits of float32 sums, which vary between two calls in one
    # process (seen: 3e-6 of λ̂, 1 run in 5; the BLAS's buffer alignment is the likely cause), far
    # inside its standard error
    assert abs(again["llc"] - first["llc"]) < 1e-3 * first["llc_se"]
    run(gamma=10.0)                                     # another γ: its own calibration
    assert calls == [None, 10.0] and "made for gamma=None" in capsys.readouterr().out
    run(gamma=10.0, recalibrate=True)
    assert calls == [None, 10.0, 10.0]
    (tmp_path / "regular_d3.json").write_text("{not json")    # a torn or edited file: one line, calibrate again
    run(gamma=10.0)
    out = capsys.readouterr().out
    assert len(calls) == 4 and "is not used: it is unreadable (JSONDecodeError)" in out and "Traceback" not in out
    saved = json.loads((tmp_path / "regular_d3.json").read_text())
    saved["key"]["code"] = "0" * 16                    # made by other code: never finished with its choice
    (tmp_path / "regular_d3.json").write_text(json.dumps(saved))
    run(gamma=10.0)
    assert len(calls) == 5 and "made for code='0000000000000000'" in capsys.readouterr().out
    monkeypatch.setitem(accuracy.CASES, "regular_d3", ("regular", dict(d=3), 4000, True))   # a redefined case
    run(gamma=10.0)
    assert len(calls) == 6 and "made for spec=\"('regular', {'d': 3}, 2000)\"" in capsys.readouterr().out


@pytest.mark.parametrize("argv,says", [(["--threads", "0"], "--threads must be at least 1, got 0"),
                                       (["--cases", "dln_nope"], "unknown case(s) ['dln_nope']")])
def test_llc_accuracy_refuses_a_bad_argument_in_one_line(argv, says, capsys):
    assert_refused_in_one_line(importlib.import_module("llc_accuracy").main, argv, says, capsys)


def assert_refused_in_one_line(main, argv, says, capsys):
    """main(argv) exits 2 with `says` on the last line of stderr and no traceback."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err.strip().splitlines()[-1] and "Traceback" not in err


# dln_long_chains: the stationary λ̂ (windows after two relaxations) and its line to ε → 0

def test_dln_long_chains_stationary_windows_and_extrapolation(capsys):
    import re
    from llc_watch.llc.calibration import extrapolate_to_zero
    chains = importlib.import_module("dln_long_chains")
    t = np.concatenate([np.zeros((3, 4000)), np.full((3, 6000), 2.0)], 1)
    assert np.allclose(chains.stationary_llc(t, 1500.0), 2.0)       # from step 3,000: window 4,000–10,000
    assert np.allclose(chains.stationary_llc(t, 400.0), 4 / 3)      # from 800: 3,000 steps of 0, 6,000 of 2
    assert chains.stationary_llc(t, 6000.0) is None                 # two relaxations outlast the run
    chains.main(["--widths", "3,2,3", "--rank", "1", "--n", "2000", "--sampler", "sgld", "--batch", "256",
                 "--gamma", "100", "--epsilon", "1e-4,3e-4", "--draws", "1500"])
    out = capsys.readouterr().out
    st = [float(m) for m in re.findall(r"stationary λ̂ \(windows from 2 relaxations on\): per chain [^;]*; "
                                       r"([0-9.]+) ± ", out)]
    se = [float(m) for m in re.findall(r"per chain [^;]*; [0-9.]+ ± ([0-9.]+)", out)]
    assert len(st) == 2 and all(0 < v < 10 for v in st)
    line = re.search(r"extrapolated to ε → 0: (-?[0-9.]+) ± ([0-9.]+)", out)
    l0, s0 = extrapolate_to_zero([1e-4, 3e-4], st, se)
    # from the printed (2-decimal) values: the line through ε and 3ε reads (3·λ̂₁ − λ̂₂)/2 at 0, so
    # the rounding (±0.005 each, ±0.005 printed) moves it by at most 0.015; 0.03 allows twice that
    assert line and abs(float(line.group(1)) - l0) < 0.03 and abs(float(line.group(2)) - s0) < 0.03


def test_dln_long_chains_refuses_a_bad_epsilon_in_one_line(capsys):
    chains = importlib.import_module("dln_long_chains")
    with pytest.raises(SystemExit) as e:
        chains.main(["--epsilon", "1e-4,-3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--epsilon" in err and "positive numbers" in err and "Traceback" not in err


# finite_n_targets: the accuracy cases' finite-n targets by exact HMC (llc_watch.llc.finite_n)

def test_finite_n_targets_writes_resumes_and_scans(tmp_path, capsys):
    import doctest
    ft = importlib.import_module("finite_n_targets")
    assert doctest.testmod(ft).failed == 0
    out = tmp_path / "t.csv"
    argv = ["--cases", "rrr_5_2_4_r1", "--iters", "60", "--chains", "2", "--out", str(out)]
    ft.main(argv)
    row = pd.read_csv(out).iloc[0]
    assert row["case"] == "rrr_5_2_4_r1" and row["true_llc"] == 5.5 and row["n"] == 2000
    assert row["gamma"] == ft.chosen_gamma("rrr_5_2_4_r1") and 0 < row["target"] < 27 / 2 and row["target_se"] > 0
    capsys.readouterr()
    ft.main(argv)                                  # done with the same settings: skipped, not rerun
    assert "already with these settings" in capsys.readouterr().out and len(pd.read_csv(out)) == 1
    scan = tmp_path / "s.csv"
    ft.main(["--cases", "rrr_5_2_4_r1", "--iters", "60", "--chains", "2", "--scan-n", "500,1000",
             "--scan-gamma", "1,10", "--out", str(scan)])
    df = pd.read_csv(scan)
    assert sorted(zip(df["n"], df["gamma"])) == [(500, 1.0), (500, 10.0), (1000, 1.0), (1000, 10.0)]
    assert np.allclose(df["nbeta"], df["n"] / np.log(df["n"]))
    assert "finite-n target by n (rows) and γ (columns)" in capsys.readouterr().out


@pytest.mark.parametrize("argv,says", [(["--cases", "regular_d3"], "not a linear case"),
                                       (["--iters", "10"], "--iters must be at least 50"),
                                       (["--scan-n", "2e4"], "--scan-n runs one case"),
                                       (["--cases", "dln_5_4_3_5_r1", "--scan-gamma", "0"], "positive numbers")])
def test_finite_n_targets_refuses_a_bad_argument_in_one_line(argv, says, capsys):
    assert_refused_in_one_line(importlib.import_module("finite_n_targets").main, argv, says, capsys)


def test_llc_accuracy_table_joins_finite_n_targets_at_the_same_gamma(tmp_path, monkeypatch, capsys):
    accuracy = importlib.import_module("llc_accuracy")
    rows = pd.DataFrame({"case": ["rrr_5_2_4_r1", "dln_5_4_3_5_r1"], "params": [18, 47], "n": [2000, 20000],
                         "true_llc": [5.5, 7.5], "target": [5.5, 7.5], "target_kind": ["λ", "λ"],
                         "llc": [6.0, 8.4], "llc_se": [0.1, 0.3], "rel_error": [0.5 / 5.5, 0.9 / 7.5],
                         "status": ["extrapolated"] * 2, "sampler": ["rmsprop_sgld"] * 2, "gamma": [1.0, 1.0],
                         "devinterp_llc": [1.0, 0.4], "cost_ratio": [2.0, 3.0], "calib_s": [1.0, 2.0],
                         "estimate_s": [1.0, 1.0]})
    out = tmp_path / "acc"
    rows.to_csv(out.with_suffix(".csv"), index=False)
    targets = tmp_path / "t.csv"
    pd.DataFrame({"case": ["rrr_5_2_4_r1", "dln_5_4_3_5_r1"], "gamma": [1.0, 10.0], "target": [5.0, 6.0],
                  "target_se": [0.05, 0.05]}).to_csv(targets, index=False)
    monkeypatch.setattr(accuracy, "FINITE_N", targets)
    accuracy.main(["--table", "--out", str(out)])
    text = capsys.readouterr().out
    rrr = next(line for line in text.splitlines() if line.startswith("| rrr_5_2_4_r1"))
    dln = next(line for line in text.splitlines() if line.startswith("| dln_5_4_3_5_r1"))
    assert "| 5 ± 0.05 | +20.0 % |" in rrr and "| – | – |" in dln     # dln's target is at another γ
    assert "against the finite-n targets (1 case): worst rrr_5_2_4_r1 +20.0 %" in text
    assert out.with_suffix(".png").exists()
