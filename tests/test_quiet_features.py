"""studies/quiet_features.py: the claim verdicts on planted summaries, and the --quick study end to end."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "studies"))
qf = importlib.import_module("quiet_features")


def _summary(task, verdicts, ablations, drop=True):
    from llc_watch.stages import Boundary, LossDrop
    d = LossDrop("train_loss", Boundary(1000.0, 800.0, 1200.0, "train_loss", "drop", strong=True), None, None) \
        if drop else None
    return {"task": task, "verdicts": pd.DataFrame(verdicts), "ablations": pd.DataFrame(ablations), "drop": d}


def _abl(feature, drop, lo, hi, excess_lo, control=0.01):
    return dict(feature=feature, position=3, site="resid", acc_drop=drop, ci_lo=lo, ci_hi=hi, clean_acc=1.0,
                random_shift=control, random_cov=control, random_projection=control, random=control,
                excess=drop - control, excess_lo=excess_lo, excess_hi=drop, step=2500.0, all_drop=drop, all_ci_lo=lo,
                all_ci_hi=hi, all_control=control, all_excess_lo=excess_lo)


def test_claim_verdicts_follow_the_intervals():
    v = [dict(feature="carry_in", status="quiet", before_drop=True), dict(feature="a_bit", status="loud",
                                                                          before_drop=False)]
    inside = _summary("addition", v, [_abl("carry_in", 0.74, 0.70, 0.80, 0.6)])
    c = {x.id: x for x in qf.claims({"addition": inside})}
    assert c["Q1"].verdict == "reproduced" and "74.0 %" in c["Q1"].ours
    assert c["Q2"].verdict == "not tested"                       # no BFS run
    assert c["Q3"].verdict == "reproduced"                       # 74 % lies in 41-75 %
    assert c["Q-addition"].verdict == "partly"                   # carry_in quiet, a_bit loud (paper: quiet)
    small = _summary("addition", v, [_abl("carry_in", 0.20, 0.15, 0.25, 0.1)])
    c = {x.id: x for x in qf.claims({"addition": small})}
    assert c["Q1"].verdict == "partly" and c["Q3"].verdict == "partly"
    none = _summary("addition", v, [_abl("carry_in", 0.02, 0.0, 0.05, -0.02)])
    c = {x.id: x for x in qf.claims({"addition": none})}
    assert c["Q1"].verdict == "not reproduced" and c["Q3"].verdict == "not reproduced"
    unsolved = _summary("bfs", [dict(feature="in_queue_0", status="never", before_drop=False)], [], drop=False)
    c = {x.id: x for x in qf.claims({"bfs": unsolved})}
    assert c["Q-bfs"].verdict == "not tested" and "never solved" in c["Q-bfs"].why


def test_log_gap_is_zero_when_intervals_overlap():
    from llc_watch.stages import Boundary
    b = Boundary(100.0, 80.0, 130.0, "llc", "slope-zero")
    g, lo, hi = qf.log_gap(b, 120.0, 110.0, 140.0)
    assert lo == 0.0 and np.isclose(g, np.log1p(120) - np.log1p(100)) and hi > g
    g, lo, hi = qf.log_gap(b, 1000.0, 900.0, 1100.0)
    assert np.isclose(lo, np.log1p(900) - np.log1p(130)) and lo < g < hi


def test_quick_study_runs_resumes_and_agrees_with_probes_quiet(tmp_path):
    """--quick on one task: figure, table, cost; probes_quiet.csv is the stage map's verdict."""
    from llc_watch import open_run
    from llc_watch.analyses.stage_map import run_stage_map
    from llc_watch.stages import feature_verdicts
    args = ["--quick", "--tasks", "addition", "--runs", str(tmp_path / "runs"), "--figures", str(tmp_path / "fig"),
            "--quiet"]
    out = qf.main(args)
    fig, md = tmp_path / "fig" / "quiet_addition_quick.png", tmp_path / "fig" / "quiet_features_quick.md"
    assert fig.stat().st_size > 10_000
    text = md.read_text()
    assert "| addition |" in text and "| Q1 |" in text and "python studies/quiet_features.py --quick" in text
    cost = json.loads((tmp_path / "fig" / "quiet_features_quick_cost.json").read_text())
    assert cost["addition"]["train"] > 0 and cost["addition"]["total"] >= cost["addition"]["train"]
    run = open_run(tmp_path / "runs" / "addition-quick")
    pq = run.table("probes_quiet").set_index("feature")
    v = feature_verdicts(run_stage_map(run)).set_index("feature")
    assert list(pq.index) == list(v.index) and (pq["status"] == v["status"]).all()
    assert np.allclose(pq["feature_step"], v["feature_step"], equal_nan=True)
    abl = run.table("ablations")
    assert {"random_shift", "random_cov", "random_projection", "random"} <= set(abl["method"])
    p = abl[abl["method"] == "projection"]
    assert (p["ci_lo"] <= p["value"] + 1e-9).all() and (p["value"] <= p["ci_hi"] + 1e-9).all()
    # a rerun trains nothing and keeps every table (resumable run folder)
    n_rows = len(abl)
    c2 = qf.compute("addition", tmp_path / "runs" / "addition-quick", quick=True, progress=False)
    assert c2.get("train", 0.0) < 2.0 and len(open_run(tmp_path / "runs" / "addition-quick").table("ablations")) == n_rows
    assert out["addition"]["verdicts"]["feature"].tolist() == v.index.tolist()


def test_llc_column_says_how_the_settings_were_chosen():
    auto = {"method": "calibrate_llc", "choice": {"epsilon": 3e-5, "sampler": "rmsprop_sgld"},
            "per_checkpoint": {"2000": {"status": "extrapolated"}, "500": {"status": "plateau"}}}
    assert qf.calibration_text(auto) == "rmsprop_sgld ε=3e-05 (plateau at 500; extrapolated at 2,000)"
    grid = {"choice": {"epsilon": 3e-6}, "warnings": ["UNTRUSTED: no cell of the grid was stable"]}
    assert "UNTRUSTED" in qf.calibration_text(grid)
    assert qf.calibration_text(None) == "not calibrated"
    llc = pd.DataFrame({"step": [0, 100, 1000], "measure": "llc", "value": [-50.0, 20.0, np.nan],
                        "stderr": [1.0, 2.0, np.nan], "valid": [True, True, False]})
    text = qf.llc_text({"calibration": grid, "llc_table": llc})
    assert "λ̂ -50 at 0 → 20 ± 2 at 100" in text and "2/3 valid" in text and "1 negative" in text
    assert qf.llc_text({"calibration": None, "llc_table": None}) == "not calibrated; no LLC computed"


def test_graph_tasks_probe_their_state_not_every_edge_and_ablate_a_bounded_family():
    import llc_watch as lw
    for task, family in (("topo-sort", "available_"), ("path", "visited_")):
        t = lw.RunConfig.from_dict(qf.task_config(task, False)).make_task()
        probed = qf.probed_features(t)
        assert probed and not any(f.startswith("edge_") for f in probed) and len(probed) < len(t.features)
        ablated = qf.ablated_features(task, t)
        assert ablated and all(f.startswith(family) for f in ablated) and set(ablated) <= set(probed)
    add = lw.RunConfig.from_dict(qf.task_config("addition", False)).make_task()
    assert qf.probed_features(add) is None          # nothing to leave out: every feature is probed


def test_tables_only_leaves_out_an_unfinished_run_with_one_line(tmp_path, capsys):
    """A task whose folder has not finished (no report.html) is named and left out, never a traceback."""
    (tmp_path / "runs" / "addition-quick").mkdir(parents=True)      # trained at most: nothing analysed
    out = qf.main(["--quick", "--tables-only", "--tasks", "addition", "--runs", str(tmp_path / "runs"),
                   "--figures", str(tmp_path / "fig"), "--quiet"])
    assert out == {}
    assert "is not finished (no report.html)" in capsys.readouterr().out
    assert "| addition |" not in (tmp_path / "fig" / "quiet_features_quick.md").read_text()
