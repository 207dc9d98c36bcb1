"""Study: quiet features across the algorithmic tasks (Naidu et al. 2025, arXiv 2505.03997), and
whether the LLC sees them.

    python studies/quiet_features.py                        # every task at the suite's sizes (slow on a CPU)
    python studies/quiet_features.py --tasks addition,max-subarray
    python studies/quiet_features.py --quick                # two tiny tasks in about a minute (the test uses it)
    python studies/quiet_features.py --tasks bfs --calibration grid --workers 1   # what a shared 2-core CPU affords

Tasks can be run one call at a time: the table covers every task of the study whose run folder is
finished, and its command line names them all. --calibration auto (the default) is calibrate_llc's
plateau rule, which on these ~100k-parameter models did not finish one checkpoint in 19 minutes on
one core (measured on the max-subarray preset); --calibration grid is the demo's ε sweep (cheap, and
it says UNTRUSTED when no cell is stable).

Per task, one run folder runs/quiet/<task>[-quick] (resumable: a rerun skips finished work), made
by llc_watch.run_pipeline: training, the grid calibration of SGLD (full mode), the LLC at log-spaced
checkpoints with the calibrated settings, probes (selected by train log-loss, read as held-out
balanced accuracy), ablations of each feature's best probe against matched random controls (the
same displacement along random and covariance directions, random hyperplanes with the probe's
offset; bootstrap intervals), essential dynamics, and the stage map (one definition of "formed",
"the drop" and "quiet": llc_watch.stages.quiet). Then:

    figures/quiet_<task>[_quick].png   loss, accuracy, probe curves with formed onsets, ablation
                                       effects against the matched control, LLC, stages, on one
                                       log-step axis
    figures/quiet_features[_quick].md  the per-task table and the paper's claims, reproduced /
                                       partly / not, with our number beside the paper's
    figures/quiet_features[_quick]_cost.json   wall time per task and step

Our sizes are smaller than the paper's (16-bit operands, 11-node graphs, 4-16 layers): they are the
suite presets' (`llc-watch presets`, each >= 95 % exact match except mst, which is not in the study),
which train in minutes on a CPU; multiplication has no preset (MULTIPLICATION below: 5-bit
operands, 98.9 % exact match); the table says which. Graph tasks probe every feature except the
per-pair edge indicators, and ablate the paper's families where it names them (else the algorithm's
working set: available nodes in topological sort, visited nodes in shortest path).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Claim, claims_markdown, frame_markdown, write_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------
# Tasks: our configuration, the paper's size, and what the paper calls quiet / loud

PAPER = {
    "addition": {"size": "16-bit operands (and 64-bit)", "quiet": ("carry_in", "carry_out", "a_bit"), "loud": (),
                 "ablation": ("carry", 0.751)},
    "multiplication": {"size": "16-bit operands", "quiet": ("pp_carry_",), "loud": ()},
    "bfs": {"size": "11-node connected graphs", "quiet": ("in_queue_",), "loud": ("adj_",),
            "ablation": ("in_queue_", 0.436)},
    # no claim in the paper for these two: we ablate the algorithm's own working set
    "path": {"size": "11-node connected graphs", "quiet": (), "loud": (), "ablate": ("visited_",)},
    "topo-sort": {"size": "11-node DAGs", "quiet": (), "loud": (), "ablate": ("available_",)},
    "max-subarray": {"size": "length 64", "quiet": ("prev_negative",), "loud": ("max_ending_here",)},
}
PAPER_RANGE = (0.41, 0.75)   # ablation accuracy drops of quiet features, as summarised

# Multiplication has no suite preset. 5-bit operands (the paper: 16-bit): 1,024 distinct problems,
# each seen ~750 times in 6,000 × 128 fresh samples, so "held-out" accuracy here is not
# generalisation; the study asks when the features form, which this still shows. Measured (seed 0,
# one core, OMP_NUM_THREADS=1): 98.9 % test exact match at step 6,000 (≥ 95 % from step ~4,700),
# test loss 0.0034, in 612 s of training. The loss has no long flat plateau: a slow stretch
# (0.27 → 0.19, steps ~330-1,400) then the fall to 0.002 by step ~5,100. The previous setting
# (6-bit operands, lr 1e-3) reached only 66 % in 6,000 steps (710 s): underfit.
MULTIPLICATION = {
    "task": {"name": "multiplication", "settings": {"n_bits": 5}},
    "model": {"n_layers": 3, "d_model": 64, "n_heads": 4, "d_mlp": 256},
    "train": {"steps": 6000, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.1, "warmup_frac": 0.1,
              "schedule": "cosine"},
    "checkpoints": {"n_log": 25, "n_linear": 15},
}

QUICK = {
    "addition": {
        "task": {"name": "addition", "settings": {"n_bits": 4}},
        "model": {"n_layers": 1, "d_model": 32, "n_heads": 4, "d_mlp": 64},
        "train": {"steps": 500, "batch_size": 64, "lr": 3e-3, "eval_size": 256, "threads": 1},
        "checkpoints": {"n_log": 8, "n_linear": 4},
    },
    "max-subarray": {
        "task": {"name": "max_subarray", "settings": {"length": 6, "max_value": 3}},
        "model": {"n_layers": 1, "d_model": 32, "n_heads": 4, "d_mlp": 64},
        "train": {"steps": 300, "batch_size": 64, "lr": 3e-3, "eval_size": 256, "threads": 1},
        "checkpoints": {"n_log": 8, "n_linear": 4},
    },
}


def task_config(task: str, quick: bool) -> dict:
    """The run config (a dict) of one task of the study."""
    if quick:
        if task not in QUICK:
            raise SystemExit(f"--quick runs only {', '.join(QUICK)}; {task!r} is a full-mode task")
        return QUICK[task]
    if task == "multiplication":
        return MULTIPLICATION
    from llc_watch.presets import all_presets
    presets = all_presets()
    if task not in presets:
        raise SystemExit(f"unknown task {task!r}; the study's tasks: {', '.join(PAPER)}")
    return presets[task]["config"]


def pipeline_settings(quick: bool, features=None, workers: int = 1, calibration: str = "auto", probed=None):
    """What each task's run computes (full: the demo's SGLD budget; quick: seconds).

    calibration: "auto" (calibrate_llc's rule at an early, a middle and the last checkpoint: a plateau
    of λ̂ in ε, else an extrapolation to ε → 0, else untrusted; the LLC column says which) or "grid"
    (the demo's sweep)."""
    from llc_watch.pipeline import PipelineSettings
    abl = {"controls": ["shift", "cov", "projection"], "n_random": 32}
    if quick:
        return PipelineSettings(
            settings={"llc": {"chains": 2, "draws": 30, "burn_in": 10, "batch_size": 32, "n_data": 256,
                              "epsilon": 1e-4, "observe_size": 64, "observe_every": 10},
                      "probes": {"n_train": 256, "n_test": 128},
                      "ablations": {**abl, "n_train": 256, "n_test": 128, "n_random": 8, "random_eval": 32,
                                    "n_boot": 200},
                      "essential_dynamics": {"n_inputs": 64}},
            checkpoints={"llc": 6, "probes": 6, "ablations": 3},
            skip=("calibration", "crosscoder", "fourier"))
    # the demo's SGLD settings (its grid calibration chooses ε, nβ, γ per run), at fewer checkpoints:
    # what a shared 2-core CPU affords for several tasks in an evening
    llc = {"chains": 4, "draws": 100, "burn_in": 50, "batch_size": 32, "n_data": 4096, "observe_every": 10,
           "observe_size": 128}
    # auto: calibrate_llc chooses the batch, draws and burn-in itself (the LLC settings above
    # that it has no use for would be an error, not ignored)
    cal = ({**llc, "method": "grid", "epsilons": [3e-6, 1e-5, 3e-5, 1e-4]} if calibration == "grid" else
           {"chains": llc["chains"], "n_data": llc["n_data"], "method": "auto"})
    return PipelineSettings(
        settings={"calibration": cal, "llc": llc,
                  "probes": {"n_train": 1024, "n_test": 256, **({"features": list(probed)} if probed else {})},
                  "ablations": {**abl, "n_train": 1024, "n_test": 256, "random_eval": 64, "n_boot": 500,
                                **({"features": list(features)} if features else {})}},
        checkpoints={"llc": 12, "probes": 14, "ablations": 6},
        skip=("crosscoder", "fourier"), workers=workers)


def probed_features(task_obj) -> list[str] | None:
    """Every feature except the per-pair edge indicators (edge_i_j) of graph tasks: n² binary labels
    that restate the adjacency rows (adj_i, probed) and would multiply the probes' cost ~3×."""
    feats = [f for f in task_obj.features if not f.startswith("edge_")]
    return None if len(feats) == len(task_obj.features) else feats


def ablated_features(task: str, task_obj) -> list[str] | None:
    """Features whose directions are ablated (each costs forward passes at every ablated checkpoint):
    the paper's quiet and loud families where the task has them, else all binary/categorical ones."""
    fams = PAPER.get(task, {})
    pats = tuple(fams.get("quiet", ())) + tuple(fams.get("loud", ())) + tuple(fams.get("ablate", ()))
    feats = [f for f, spec in task_obj.features.items() if spec.kind in ("binary", "categorical")
             and any(f == p or f.startswith(p) for p in pats)]
    return feats or None


# --------------------------------------------------------------------------------------------------
# Compute: one resumable run folder per task


def compute(task: str, run_dir: Path, quick: bool, progress: bool = True, workers: int = 1,
            calibration: str = "auto") -> dict:
    """Train and analyse one task into run_dir (resumable); return {step: seconds} of this call."""
    import llc_watch as lw
    cfg = lw.RunConfig.from_dict(task_config(task, quick))
    t = cfg.make_task()
    s = pipeline_settings(quick, None if quick else ablated_features(task, t), workers, calibration,
                          None if quick else probed_features(t))
    timings = {}
    t0 = time.perf_counter()

    def log(msg):
        if progress:
            print(f"[{task}] {msg}", flush=True)
        if msg.strip().startswith(tuple(f"{k}:" for k in ("train", "calibration", "llc", "probes", "ablations",
                                                           "essential_dynamics", "stages", "report"))):
            name, rest = msg.strip().split(":", 1)
            if rest.strip().endswith(" s"):
                timings[name] = float(rest.strip()[:-2])
    lw.run_pipeline(cfg, run_dir, s, progress=False, log=log)
    timings["total"] = time.perf_counter() - t0
    return timings


# --------------------------------------------------------------------------------------------------
# Read: one row per task


def _matches(feature: str, patterns) -> bool:
    return any(feature == p or feature.startswith(p) or (p == "carry" and "carry" in feature) for p in patterns)


def llc_events(sm) -> list:
    """The LLC's boundaries in a stage map (critical points, plateau edges, kinks)."""
    return sorted((b for b in sm.boundaries if b.signal == "llc"), key=lambda b: b.step)


def log_gap(b, step: float, lo: float, hi: float) -> tuple[float, float, float]:
    """(distance, min, max) in log(step + 1) between boundary b and an event [lo, hi] at `step`."""
    x = math.log1p(step)
    ends = [abs(math.log1p(p) - math.log1p(q)) for p in (b.lo, b.hi) for q in (lo, hi)]
    overlap = not (b.hi < lo or hi < b.lo)
    return abs(b.x - x), 0.0 if overlap else min(ends), max(ends)


def final_ablations(abl: pd.DataFrame) -> pd.DataFrame:
    """Per feature at the last ablated checkpoint: the position whose projection costs most accuracy,
    with its bootstrap interval, the matched controls there, and the paired excess interval."""
    if abl is None or not len(abl):
        return pd.DataFrame()
    a = abl[(abl["measure"] == "acc_drop") & (abl["step"] == abl["step"].max())]
    proj = a[a["method"] == "projection"]
    whole = a[a["method"] == "projection_all"].set_index("feature")
    whole_ctrl = a[a["method"] == "random_shift_all"].set_index("feature")["value"]
    rows = []
    for feat, d in proj.groupby("feature"):
        top = d.loc[d["value"].idxmax()]
        ctrl = a[(a["feature"] == feat) & (a["position"] == top["position"])].set_index("method")["value"]
        w = whole.loc[feat] if feat in whole.index else None
        if w is not None:   # the feature ablated at all its positions at once (the paper's protocol)
            all_cols = {"all_drop": float(w["value"]), "all_ci_lo": float(w["ci_lo"]), "all_ci_hi": float(w["ci_hi"]),
                        "all_control": float(whole_ctrl.get(feat, np.nan)), "all_excess_lo": float(w["excess_lo"])}
        else:               # one position only: the same numbers
            all_cols = {"all_drop": float(top["value"]), "all_ci_lo": float(top.get("ci_lo", np.nan)),
                        "all_ci_hi": float(top.get("ci_hi", np.nan)), "all_control": float(ctrl.get("random_shift", np.nan)),
                        "all_excess_lo": float(top.get("excess_lo", np.nan))}
        rows.append({"feature": feat, "position": int(top["position"]), "site": top["site"],
                     "acc_drop": float(top["value"]), "ci_lo": float(top.get("ci_lo", np.nan)),
                     "ci_hi": float(top.get("ci_hi", np.nan)), "clean_acc": float(top["clean_acc"]),
                     **{f"{m}": float(ctrl.get(m, np.nan)) for m in ("random_shift", "random_cov", "random_projection",
                                                                    "random")},
                     "excess": float(top.get("excess", np.nan)), "excess_lo": float(top.get("excess_lo", np.nan)),
                     "excess_hi": float(top.get("excess_hi", np.nan)), "step": float(top["step"]), **all_cols})
    return pd.DataFrame(rows)


def task_summary(task: str, run_dir: Path) -> dict:
    """Everything the table needs about one task's run (reads the run folder's tables)."""
    import llc_watch as lw
    from llc_watch.analyses.stage_map import run_stage_map
    from llc_watch.stages import feature_verdicts, loss_drop
    run = lw.open_run(run_dir)
    m = run.metrics()
    acc = m[m["measure"] == "test_acc"].sort_values("step")
    sm = run_stage_map(run)
    v = feature_verdicts(sm)
    d = loss_drop(sm)
    first = float(acc["step"].min())
    plateau = (float("nan"), float("nan"))
    if d is not None:
        ends = [b.step for b in sm.boundaries if b.signal == d.signal and b.kind == "drop-end" and b.strong
                and b.step < (d.plateau_end.step if d.plateau_end else d.step)]
        plateau = (max(ends, default=first), d.plateau_end.step if d.plateau_end else float("nan"))
    llc = llc_events(sm)
    formed = v[v["before_drop"]]
    gaps = []
    for r in formed.itertuples():
        if llc:
            b = min(llc, key=lambda b: abs(b.x - math.log1p(r.feature_step)))
            g, glo, ghi = log_gap(b, r.feature_step, r.feature_lo, r.feature_hi)
            gaps.append({"feature": r.feature, "llc_step": b.step, "llc_kind": b.kind, "gap": g, "gap_lo": glo,
                         "gap_hi": ghi})
    in_plateau = [b for b in llc if d is not None and plateau[0] <= b.step <= (plateau[1] if math.isfinite(plateau[1])
                                                                               else d.step)]
    calib = run.read_json("calibration.json") if hasattr(run, "read_json") else None
    cfg = run.config
    return {"task": task, "run": str(run_dir), "config": cfg, "final_acc": float(acc["value"].iloc[-1]) if len(acc) else
            float("nan"), "steps": int(m["step"].max()), "drop": d, "plateau": plateau, "verdicts": v,
            "ablations": final_ablations(run.table("ablations", required=False)), "llc": llc,
            "llc_in_plateau": in_plateau, "gaps": pd.DataFrame(gaps), "stage_map": sm,
            "calibration": calib, "llc_table": run.table("llc", required=False)}


# --------------------------------------------------------------------------------------------------
# Figure: one per task, every panel on one log-step axis


def plot_formed(ax: Axes, verdicts: pd.DataFrame, drop_step: float | None) -> Axes:
    """Formed onsets (with intervals) as ticks at the top of the panel, quiet ones green, loud red."""
    from matplotlib.transforms import blended_transform_factory
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    colors = {"quiet": "#2ca02c", "early": "#bcbd22", "loud": "#d62728"}
    for i, r in enumerate(verdicts[verdicts["status"].isin(colors)].itertuples()):
        y = 0.95 - 0.06 * (i % 8)
        ax.plot([r.feature_lo, r.feature_hi], [y, y], color=colors[r.status], lw=2, transform=trans, alpha=0.7)
        ax.plot([r.feature_step], [y], "|", color=colors[r.status], ms=8, transform=trans)
    if drop_step is not None and math.isfinite(drop_step):
        ax.axvline(drop_step, color="k", ls="--", lw=0.8, label="loss drop")
    return ax


def draw(summary: dict, tables: dict):
    """The task's figure: loss, accuracy, probes (formed onsets), ablations vs control, LLC, stages."""
    from llc_watch.plots import (new_figure, plot_ablations, plot_llc, plot_metrics, plot_probes, plot_stages)
    sm, d = summary["stage_map"], summary["drop"]
    panels = ["loss", "acc", "probes"] + (["ablations"] if tables.get("ablations") is not None else []) + \
        (["llc"] if tables.get("llc") is not None else [])
    fig = new_figure(9.0, 2.1 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, what in zip(axes, panels):
        plot_stages(ax, sm)
        if what == "loss":
            plot_metrics(ax, tables["metrics"], losses=("train_loss", "test_loss"), accuracies=())
        elif what == "acc":
            plot_metrics(ax, tables["metrics"], losses=(), accuracies=("train_acc", "test_acc"))
            ax.set_ylabel("")
        elif what == "probes":
            feats = sorted(summary["verdicts"].loc[summary["verdicts"]["status"].isin(["quiet", "early", "loud"]),
                                                   "feature"])[:10] or None
            plot_probes(ax, tables["probes"], features=feats)
            plot_formed(ax, summary["verdicts"], d.step if d else None)
        elif what == "ablations":
            plot_ablations(ax, tables["ablations"])
        elif what == "llc":
            plot_llc(ax, tables["llc"])
        if d is not None:
            ax.axvline(d.step, color="k", ls="--", lw=0.8)
    axes[0].set_title(f"{summary['task']}: quiet features, ablations and the LLC (dashed: the loss drop)")
    return fig


# --------------------------------------------------------------------------------------------------
# Table


def _pct(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f} %"


def _ci(lo, hi) -> str:
    return "" if not (np.isfinite(lo) and np.isfinite(hi)) else f" [{100 * lo:.1f}, {100 * hi:.1f}]"


def calibration_text(cal: dict | None) -> str:
    """How the run's SGLD settings were chosen, and whether they can be trusted.

    >>> calibration_text({"method": "calibrate_llc", "choice": {"epsilon": 1e-5, "sampler": "sgld"},
    ...                   "per_checkpoint": {"900": {"status": "plateau"}, "2000": {"status": "extrapolated"}}})
    'sgld ε=1e-05 (plateau at 900; extrapolated at 2,000)'
    >>> calibration_text(None)
    'not calibrated'
    """
    if not cal:
        return "not calibrated"
    c = cal.get("choice", {})
    head = f"{c.get('sampler', 'sgld')} ε={c.get('epsilon', float('nan')):.3g}"
    if cal.get("method") == "calibrate_llc":
        per = cal.get("per_checkpoint", {})
        return head + " (" + "; ".join(f"{v['status']} at {int(k):,}" for k, v in
                                       sorted(per.items(), key=lambda kv: int(kv[0]))) + ")"
    untrusted = any(str(w).startswith("UNTRUSTED") for w in cal.get("warnings", ()))
    return head + (" (grid: UNTRUSTED, no stable cell)" if untrusted else " (grid: a stable cell)")


def llc_text(s: dict) -> str:
    """The LLC over the run in one cell: calibration, first and last valid values, what was flagged."""
    from llc_watch.analyses.llc import llc_rows
    head = calibration_text(s.get("calibration"))
    t = s.get("llc_table")
    if t is None or not len(t):
        return head + "; no LLC computed"
    r = llc_rows(t[t["measure"] == "llc"] if "measure" in t else t).sort_values("step")
    ok = r[r["valid"]]
    if not len(ok):
        return head + f"; no valid estimate at {len(r)} checkpoints"
    first, last = ok.iloc[0], ok.iloc[-1]
    neg = int((ok["value"] < 0).sum())
    return (head + f"; λ̂ {first['value']:,.0f} at {int(first['step']):,} → {last['value']:,.0f} ± "
            f"{last['stderr']:,.0f} at {int(last['step']):,} ({len(ok)}/{len(r)} valid"
            + (f", {neg} negative: w* not a minimum there" if neg else "") + ")")


def task_row(s: dict) -> dict:
    """One markdown row of the per-task table."""
    v, d, abl = s["verdicts"], s["drop"], s["ablations"]
    before = sorted(v.loc[v["before_drop"], "feature"])
    loud = sorted(v.loc[v["status"] == "loud", "feature"])
    quiet_strict = sorted(v.loc[v["status"] == "quiet", "feature"])
    t = s["config"].task
    a_txt = "–"
    if len(abl):
        top = abl.sort_values("all_drop", ascending=False).head(4)
        a_txt = "; ".join(f"{r.feature} {_pct(r.all_drop)}{_ci(r.all_ci_lo, r.all_ci_hi)} vs matched {_pct(r.all_control)}"
                          f" (one position: {_pct(r.acc_drop)} vs {_pct(r.random_shift)}; random hyperplane "
                          f"{_pct(r.random_projection)})" for r in top.itertuples())
    gaps = s["gaps"]
    g_txt = "–" if not len(gaps) else "; ".join(
        f"{r.feature}: {r.gap:.2f} [{r.gap_lo:.2f}, {r.gap_hi:.2f}]" for r in gaps.head(4).itertuples())
    p0, p1 = s["plateau"]
    return {
        "task": s["task"], "ours (paper)": f"{t.name} {json.dumps(t.settings)} ({PAPER.get(s['task'], {}).get('size', '')})",
        "final exact match": _pct(s["final_acc"]),
        "loss plateau": "–" if d is None else f"{p0:,.0f}–{p1:,.0f} ({math.log1p(p1) - math.log1p(p0):.2f} log-steps)"
        if np.isfinite(p1) else f"{p0:,.0f}–?",
        "loss drop": "none found" if d is None else f"{d.step:,.0f} [{d.drop.lo:,.0f}–{d.drop.hi:,.0f}]",
        "formed before the drop (quiet*)": ", ".join(f"{f}{'*' if f in quiet_strict else ''}" for f in before) or "none",
        "formed after (loud)": ", ".join(loud) or "none",
        "ablation (last ckpt)": a_txt,
        "LLC (calibration)": llc_text(s),
        "LLC boundary in the plateau": ("–" if not s["llc"] else
                                        ", ".join(f"{b.kind} {b.step:,.0f}" for b in s["llc_in_plateau"]) or "no"),
        "log-step gap LLC–probe onset": g_txt,
    }


def claims(summaries: dict[str, dict]) -> list[Claim]:
    """The paper's claims, with our number beside each."""
    out = []

    def abl_of(task, pattern):
        s = summaries.get(task)
        if s is None or not len(s["ablations"]):
            return None
        a = s["ablations"]
        a = a[[_matches(f, (pattern,)) for f in a["feature"]]]
        return a.sort_values("all_drop", ascending=False).iloc[0] if len(a) else None

    for cid, task, pat, paper in (("Q1", "addition", "carry", 0.751), ("Q2", "bfs", "in_queue_", 0.436)):
        r = abl_of(task, pat)
        claim = f"ablating {pat.strip('_')} in {task} costs accuracy"
        if r is None:
            out.append(Claim(cid, claim, f"−{100 * paper:.1f} %", "not run", "not tested",
                             f"no {task} run with ablations in this study"))
            continue
        ours = (f"−{_pct(r.all_drop)}{_ci(r.all_ci_lo, r.all_ci_hi)} ({r.feature} at all positions; matched random "
                f"control −{_pct(r.all_control)}); one position: −{_pct(r.acc_drop)} (position {r.position}), "
                f"paper-style random hyperplane there −{_pct(r.random_projection)}")
        if np.isfinite(r.all_excess_lo) and r.all_excess_lo > 0 and r.all_ci_lo <= paper <= r.all_ci_hi:
            verdict, why = "reproduced", "the paper's number lies in our interval and the matched control costs less"
        elif np.isfinite(r.all_excess_lo) and r.all_excess_lo > 0:
            verdict, why = "partly", ("the feature matters beyond the matched control, but the size differs "
                                      "(smaller model and operands than the paper's)")
        else:
            verdict, why = "not reproduced", "the drop is not above the matched random control"
        out.append(Claim(cid, claim, f"−{100 * paper:.1f} %", ours, verdict, why))

    drops = []
    for task, s in summaries.items():
        q = set(s["verdicts"].loc[s["verdicts"]["before_drop"], "feature"])
        a = s["ablations"]
        if len(a):
            drops += [(task, r) for r in a.itertuples() if r.feature in q]
    if drops:
        vals = [r.all_drop for _, r in drops]
        inside = sum(PAPER_RANGE[0] <= x <= PAPER_RANGE[1] for x in vals)
        above = sum(np.isfinite(r.all_excess_lo) and r.all_excess_lo > 0 for _, r in drops)
        ours = (f"{_pct(min(vals))} to {_pct(max(vals))} over {len(vals)} features formed before the drop; "
                f"{inside} inside 41–75 %; {above} above the matched control")
        verdict = "reproduced" if inside == len(vals) else ("partly" if inside or above else "not reproduced")
        out.append(Claim("Q3", "ablating quiet features costs 41–75 % of accuracy", "41–75 %", ours, verdict,
                         "each feature ablated at all its answer positions at the last ablated checkpoint"))
    else:
        out.append(Claim("Q3", "ablating quiet features costs 41–75 % of accuracy", "41–75 %",
                         "no feature formed before the drop was ablated", "not tested", ""))

    for task, s in summaries.items():
        exp = PAPER.get(task, {})
        if not exp.get("quiet") and not exp.get("loud"):
            continue
        v = s["verdicts"]
        got_q = [f for f in v.loc[v["before_drop"], "feature"] if _matches(f, exp.get("quiet", ()))]
        exp_q = [f for f in v["feature"] if _matches(f, exp.get("quiet", ()))]
        got_l = [f for f in v.loc[v["status"] == "loud", "feature"] if _matches(f, exp.get("loud", ()))]
        exp_l = [f for f in v["feature"] if _matches(f, exp.get("loud", ()))]
        n_ok, n_all = len(got_q) + len(got_l), len(exp_q) + len(exp_l)
        verdict = "not tested" if n_all == 0 else ("reproduced" if n_ok == n_all else
                                                    "partly" if n_ok else "not reproduced")
        why = "formed = onset of the rise to held-out balanced accuracy 0.9 (train-selected probes)"
        if s["drop"] is None:
            verdict = "not tested"
        elif not s["drop"].drop.strong and verdict == "reproduced":
            # "before the drop" means little when the loss never drops sharply: the features then
            # form during a slow fall, which the paper's two-phase picture does not describe
            verdict = "partly"
            why = (f"the features form before the drop, but the loss drop found is weak (strength "
                   f"{s['drop'].drop.strength:.2f}, not a strong boundary): no sharp plateau-then-drop at this size")
        paper = f"quiet: {', '.join(exp.get('quiet', ())) or '–'}; loud: {', '.join(exp.get('loud', ())) or '–'}"
        ours = (f"before the drop: {', '.join(got_q) or 'none'} of {len(exp_q)}; loud: {', '.join(got_l) or 'none'} of "
                f"{len(exp_l)}")
        out.append(Claim(f"Q-{task}", f"{task}: which features are quiet", paper, ours, verdict,
                         why if s["drop"] is not None else "no loss drop found: the run never solved the task"))
    return out


def report(summaries: dict[str, dict], costs: dict, quick: bool, command: str) -> str:
    rows = pd.DataFrame([task_row(s) for s in summaries.values()])
    lines = [f"# Quiet features (Naidu et al. 2025) and the LLC{' — quick mode' if quick else ''}", "",
             f"Command: `{command}`", "",
             "Per task (quiet*: formed before the drop while the loss was credibly flat; without *: formed "
             "before the drop while the loss was still falling). Ablation: exact-match accuracy drop at the last "
             "ablated checkpoint from projecting each position's best probe out at all the feature's answer "
             "positions at once, 90 % bootstrap interval, against the matched control (the same displacement along "
             "random directions); then the single position that costs most, and the paper's random hyperplane "
             "with the probe's offset there. Gap: log(step+1) distance from "
             "a formed onset to the nearest LLC boundary, [min, max] over their intervals.", "",
             frame_markdown(rows), "", "## The paper's claims", "", claims_markdown(claims(summaries)), "",
             "## Cost", "", "| task | " + " | ".join(["train", "calibration", "llc", "probes", "ablations", "stages",
                                                      "total"]) + " |", "|---" * 8 + "|"]
    reused = False
    for task in summaries:          # the table's order; a task drawn but never computed here has no row
        c = costs.get(task)
        if c is None:
            continue
        cells = [f"{c[k]:.0f} s" if k in c else "–" for k in
                 ("train", "calibration", "llc", "probes", "ablations", "stages", "total")]
        if c.get("train", 0) < 5:   # the folder was trained before the study's call
            cells[0] += " †"
            reused = True
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if reused:
        lines += ["", "† the run folder was already trained when the study ran (the preset's measurement run, same "
                      "config; its training cost is in the README's Tasks table)."]
    return "\n".join(lines) + "\n"


def read_costs(path: Path) -> dict:
    """{task: {step: seconds}} as written so far (empty before the first task finishes)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two tiny tasks in about a minute (the test uses it)")
    ap.add_argument("--tasks", default=None, help=f"comma-separated (default: {', '.join(PAPER)}; quick: "
                                                  f"{', '.join(QUICK)})")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "quiet")
    ap.add_argument("--figures", type=Path, default=ROOT / "figures")
    ap.add_argument("--tables-only", action="store_true", help="draw from the run folders without computing")
    ap.add_argument("--quiet", action="store_true", help="less progress output")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes for each task's analyses (default 1: one core; 2 on an otherwise idle 2-core machine)")
    ap.add_argument("--calibration", choices=("auto", "grid"), default="auto",
                    help="auto: calibrate_llc's plateau rule (default; the LLC column says plateau, extrapolated or "
                         "untrusted); grid: the demo's ε sweep")
    a = ap.parse_args(argv)
    if a.workers < 1:
        ap.error(f"--workers {a.workers}: give 1 or more")
    study = list(QUICK if a.quick else PAPER)
    tasks = a.tasks.split(",") if a.tasks else study
    for t in tasks:
        task_config(t, a.quick)   # unknown names fail before any work

    def run_dir_of(task: str) -> Path:
        return a.runs / (task + ("-quick" if a.quick else ""))

    def finished(run_dir: Path) -> bool:   # run_pipeline writes the report last
        return (run_dir / "report.html").is_file()

    # the table covers every task of the study whose run folder exists, not only those run in this call:
    # tasks are computed one call at a time on a small machine, and the table is the study's
    table_tasks = [t for t in study if t in tasks or finished(run_dir_of(t))]
    suffix = "_quick" if a.quick else ""
    a.figures.mkdir(parents=True, exist_ok=True)
    cost_file = a.figures / f"quiet_features{suffix}_cost.json"
    summaries = {}
    import llc_watch as lw
    from llc_watch.io import atomic_write_json
    for t in table_tasks:
        run_dir = run_dir_of(t)
        if a.tables_only and not finished(run_dir):
            print(f"[{t}] {run_dir} is not finished (no report.html): left out of the table; "
                  f"`python studies/quiet_features.py --tasks {t}` finishes it")
            continue
        if t in tasks and not a.tables_only:
            c = compute(t, run_dir, a.quick, progress=not a.quiet, workers=a.workers, calibration=a.calibration)
            # read just before writing: another call may have finished a task meanwhile
            costs = read_costs(cost_file)
            # each step's time from the call that computed it (a resumed call skips finished steps in ~0 s)
            merged = dict(costs.get(t, {}))
            merged.update({k: v for k, v in c.items() if k != "total" and (v > 1 or k not in merged)})
            merged["total"] = sum(v for k, v in merged.items() if k != "total")
            costs[t] = merged
            atomic_write_json(cost_file, costs)
        s = task_summary(t, run_dir)
        summaries[t] = s
        run = lw.open_run(run_dir)
        tables = {"metrics": run.metrics(), "probes": run.table("probes", required=False),
                  "ablations": run.table("ablations", required=False), "llc": run.table("llc", required=False)}
        fig = draw(s, tables)
        fig.savefig(a.figures / f"quiet_{t}{suffix}.png", dpi=90)
        print(f"[{t}] figure: {a.figures / f'quiet_{t}{suffix}.png'}")
    # a rerun skips finished work, so this one command redraws (or finishes) every task in the table
    command = "python studies/quiet_features.py" + (" --quick" if a.quick else "") + \
        (f" --tasks {','.join(summaries)}" if list(summaries) != study else "") + \
        (f" --calibration {a.calibration}" if a.calibration != "auto" else "")
    text = report(summaries, read_costs(cost_file), a.quick, command)
    path = write_markdown(a.figures / f"quiet_features{suffix}.md", text)
    print(text)
    print(f"table: {path}")
    return summaries


if __name__ == "__main__":
    main()
