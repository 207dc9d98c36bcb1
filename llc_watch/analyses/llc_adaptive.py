"""`llc-watch llc RUN --adaptive`: the LLC job with its SGLD budget spent where the stage boundaries are.

The loop (llc_watch.stages.adaptive.adaptive_estimate) asks for estimates at some checkpoints with
some draws per chain; each ask runs the ordinary LLC job (llc_job) with those draws and a fresh
seed, through the same resumable driver (llc_watch.jobs): every (checkpoint, n-th estimate, draws)
is its own result file in RUN/results/llc/, keyed by its settings, so a killed adaptive run replays
the loop from the files and only samples what is missing. The estimates at one checkpoint are pooled
by inverse variance into one llc.csv row whose `draws` is the total per chain, `sgld_steps` the cost
and `estimates` the pooled ones; the stage map and report read it as they read the dense table.

    >>> table = adaptive_llc("runs/addition")                    # doctest: +SKIP
    >>> table[["step", "value", "stderr", "draws", "sgld_steps"]]  # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Mapping

import numpy as np
import pandas as pd

from llc_watch.io import atomic_write_json
from llc_watch.jobs import JobsFailed, run_checkpoint_jobs
from llc_watch.run import Run, open_run
from llc_watch.settings import SettingsError
from llc_watch.stages.adaptive import AdaptiveSettings, adaptive_estimate

from .llc import LLC_ANALYSIS, estimate_warnings, llc_job, llc_rows, sgld_steps

ADAPTIVE_FILE = "llc_adaptive.json"   # the loop's rounds, boundaries and spend, beside llc.csv


def adaptive_llc(run_dir, settings: Mapping | None = None, adaptive: AdaptiveSettings | Mapping | None = None,
                 checkpoints=None, executor=None, progress: bool = True) -> pd.DataFrame:
    """The LLC with an adaptive budget (see the module docstring); writes RUN/llc.csv and
    RUN/llc_adaptive.json and returns the table.

    settings: LLCSettings fields (their `draws` is the dense budget, the most one checkpoint gets,
        unless adaptive.full_draws says otherwise). adaptive: AdaptiveSettings fields.
    The frame's attrs hold 'settings', 'adaptive' (the resolved AdaptiveSettings), 'sgld_steps' (spent),
    'dense_sgld_steps' (what the dense job at full draws on every checkpoint would spend), 'stopped'
    and 'warnings'.
    """
    run = run_dir if isinstance(run_dir, Run) else open_run(run_dir)
    a = LLC_ANALYSIS
    s = a.settings(run, settings)
    ad = AdaptiveSettings.from_mapping(adaptive).resolved(s.draws)
    ckpts = a.checkpoints(run, checkpoints, s)
    if len(ckpts) < 4:
        raise SettingsError(f"--adaptive needs at least 4 checkpoints to read boundaries from; {run.dir} has "
                            f"{len(ckpts)} (run the dense `llc-watch llc` instead)")
    by_step = {int(c.step): c for c in ckpts}
    base = a.job_settings(run, s)
    out_dir = run.results_dir(a.name)
    estimates: dict[int, list[dict]] = {}   # step -> the rows of its estimates, in order

    def estimate(steps, draws):
        """The LLC at `steps` with `draws` per chain, each checkpoint's n-th estimate on its own seed."""
        groups: dict[int, list] = {}
        for st in steps:
            groups.setdefault(len(estimates.get(int(st), [])), []).append(by_step[int(st)])
        for repeat, group in groups.items():
            job = {**base, "draws": int(draws), "repeat": repeat}
            report = run_checkpoint_jobs(llc_job, group, job, out_dir=out_dir, executor=executor,
                                         desc=f"llc adaptive ({draws} draws)", progress=progress)
            if report.failures:
                raise JobsFailed(f"llc --adaptive ({a.schema.file} not rewritten)", report)
            for rec in report.records:
                estimates.setdefault(int(rec["step"]), []).append(rec["rows"][0])
        rows = [estimates[int(st)][-1] for st in steps]
        value = np.array([np.nan if r["value"] is None else r["value"] for r in rows], float)
        stderr = np.array([np.nan if r["stderr"] is None else r["stderr"] for r in rows], float)
        return value, stderr

    result = adaptive_estimate(estimate, sorted(by_step), ad, seed=0)
    table = pd.DataFrame([pooled_row(estimates[int(st)], v, e)
                          for st, v, e in zip(result.steps, result.values, result.stderr)])
    run.write_table(a.schema.name, table)
    table = a.schema.ordered(table)
    dense = len(ckpts) * sgld_steps({"chains": s.chains, "burn_in": s.burn_in, "draws": ad.full_draws,
                                     "steps_between_draws": s.steps_between_draws})
    spent = int(table["sgld_steps"].sum())
    atomic_write_json(run.dir / ADAPTIVE_FILE, {
        "adaptive": asdict(ad), "stopped": result.stopped, "history": result.history,
        "sgld_steps": spent, "dense_sgld_steps": dense, "checkpoints_estimated": len(table),
        "checkpoints": len(ckpts),
        "boundaries": [{"step": b.step, "lo": b.lo, "hi": b.hi, "kind": b.kind, "support": b.support,
                        "strong": bool(b.strong)} for b in result.boundaries]})
    table.attrs.update(settings=s, adaptive=ad, sgld_steps=spent, dense_sgld_steps=dense, stopped=result.stopped,
                       summary=f"{len(table)} of {len(ckpts)} checkpoints estimated, "
                               f"{sum(len(x) for x in estimates.values())} estimates; stopped: {result.stopped}")
    table.attrs["warnings"] = estimate_warnings(table)
    return table


def pooled_row(rows: list[dict], value: float, stderr: float) -> dict:
    """One llc.csv row from a checkpoint's estimates: the loop's inverse-variance pooled value and
    stderr, draws and SGLD steps summed, diagnostics from the largest estimate, every warning kept.

        >>> r = {"step": 5, "value": 1.0, "stderr": 0.5, "valid": True, "draws": 10, "draws_per_chain": 10,
        ...      "seed": 1, "sgld_steps": 40, "warnings": "[]", "rhat": 1.0, "ess": 20.0, "sampling_s": 1.0,
        ...      "n_healthy": 2, "negative": False, "drifting": False}
        >>> p = pooled_row([r, {**r, "value": 2.0, "draws": 30, "draws_per_chain": 30, "seed": 2}], 1.8, 0.2)
        >>> p["value"], p["draws"], p["sgld_steps"], p["seed"], len(json.loads(p["estimates"]))
        (1.8, 40, 80, 1, 2)
    """
    main = max(rows, key=lambda r: r["draws"])
    ok = bool(np.isfinite(value)) and any(r["valid"] for r in rows)
    warnings = []
    for i, r in enumerate(rows):
        ws = json.loads(r["warnings"]) if isinstance(r.get("warnings"), str) else (r.get("warnings") or [])
        warnings += [f"estimate {i + 1} of {len(rows)} ({r['draws']} draws): {w}" for w in ws]
    if not all(r["valid"] for r in rows) and ok:
        warnings.append(f"{sum(not r['valid'] for r in rows)} of {len(rows)} estimates invalid, left out of the pool")
    finite = [x for x in (r.get("rhat") for r in rows) if x is not None and np.isfinite(x)]
    ess = [x for x in (r.get("ess") for r in rows) if x is not None and np.isfinite(x)]
    return {
        **main, "value": float(value) if ok else None, "stderr": float(stderr) if ok else None, "valid": ok,
        "seed": rows[0]["seed"], "draws": sum(int(r["draws"]) for r in rows),
        "draws_per_chain": sum(int(r["draws_per_chain"]) for r in rows),
        "sgld_steps": sum(int(r["sgld_steps"]) for r in rows),
        "sampling_s": sum(float(r["sampling_s"]) for r in rows),
        "n_healthy": min(int(r["n_healthy"]) for r in rows),
        "rhat": max(finite) if finite else None, "ess": sum(ess) if ess else None,
        "negative": bool(ok and value < 0), "drifting": any(bool(r["drifting"]) for r in rows),
        "warnings": json.dumps(warnings),
        "estimates": json.dumps([{"draws": int(r["draws"]), "seed": int(r["seed"]), "value": r["value"],
                                  "stderr": r["stderr"]} for r in rows]),
    }


def dense_sgld_steps(table: pd.DataFrame) -> int:
    """SGLD steps behind an llc.csv (its sgld_steps column, or chains x (burn-in + draws) per row)."""
    if "sgld_steps" in table and table["sgld_steps"].notna().all():
        return int(table["sgld_steps"].sum())
    return int((table["chains"] * (table["burn_in"] + table["draws"])).sum())


def llc_signal_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The valid (step, value, stderr) rows of an llc table, as the stage map reads them."""
    v = llc_rows(table)
    return v[v["valid"]].groupby("step", as_index=False).agg(value=("value", "mean"), stderr=("stderr", "mean"))
