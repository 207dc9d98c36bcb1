"""`llc-watch llc RUN --adaptive`: the LLC job with its SGLD budget spent where the stage boundaries are.

The loop (llc_watch.stages.adaptive.adaptive_estimate) asks for estimates at some checkpoints with
some draws per chain; each ask runs the ordinary LLC job (llc_job) through the same resumable driver
(llc_watch.jobs): every (checkpoint, n-th estimate, draws) is its own result file in
RUN/results/llc/, keyed by its settings, so a killed adaptive run replays the loop from the files
and only samples what is missing.

More draws at a checkpoint continue its chains (warm_start, the default for plain SGLD): each
estimate saves its chains' final weights (RUN/results/llc/chains/, a plain .npy per checkpoint, the
previous one deleted once its successor is written), and the next one starts there with no burn-in
and a fresh seed, so a refinement costs only its draws; each chain's LLC is then the mean over all
its draws. Where chains cannot be continued (a failed chain, RMSProp-SGLD whose preconditioner is not
saved, warm_start off, a lost state file) the new estimate is a fresh set of chains with burn-in, pooled
with the earlier ones by inverse variance. One llc.csv row per checkpoint: `draws` is the total per
chain, `sgld_steps` the cost, `estimates` the pieces; the stage map and report read it as they read
the dense table.

    >>> table = adaptive_llc("runs/addition")                    # doctest: +SKIP
    >>> table[["step", "value", "stderr", "draws", "sgld_steps"]]  # doctest: +SKIP
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Mapping

import numpy as np
import pandas as pd

from llc_watch.io import atomic_write_json
from llc_watch.jobs import JobsFailed, job_key, result_path, run_checkpoint_jobs
from llc_watch.run import Run, open_run
from llc_watch.settings import SettingsError
from llc_watch.stages.adaptive import AdaptiveSettings, adaptive_estimate

from .llc import LLC_ANALYSIS, chain_state_path, estimate_warnings, llc_job, llc_rows, sgld_steps

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
    virtual = replay_candidates(run, ad) if checkpoints is None else []
    by_step = {int(c.step): c for c in ckpts}
    base = a.job_settings(run, s)
    replayed: list[int] = []
    replay_s = [0.0]                        # seconds spent retracing training
    out_dir = run.results_dir(a.name)
    state_dir = out_dir / "chains"
    warm = bool(ad.warm_start) and s.sampler == "sgld" and s.backend == "ours"
    estimates: dict[int, list[dict]] = {}   # step -> the rows of its estimates, in order

    def next_job(st: int, draws: int) -> dict:
        """The job settings of the next estimate at `st` (`draws` per chain): its last chains continued
        when they can be (no burn-in again), else fresh chains (a new lineage, a new seed)."""
        rows = estimates.get(st, [])
        plumbing = {"_state_dir": str(state_dir)} if warm else {}
        fresh = {**base, **plumbing, "draws": int(draws), "repeat": len(rows)}
        if warm:
            fresh.update(lineage=f"r{len(rows)}", segment=0)
        last = rows[-1] if rows else None
        if not (warm and last is not None and continuable(last)):
            return fresh
        cont = {**fresh, "lineage": last["lineage"], "segment": int(last["segment"]) + 1, "burn_in": 0}
        # continue only from a saved state, or where the continuation is already done (a replay)
        done = result_path(out_dir, by_step[st], job_key(llc_job, by_step[st], cont)).is_file()
        return cont if done or state_readable(chain_state_path(state_dir, st, last["lineage"], last["segment"]),
                                              int(base["chains"])) else fresh

    def estimate(steps, draws):
        """`draws` more per chain at `steps`; each checkpoint's estimate from all its draws so far."""
        missing = [int(st) for st in steps if int(st) not in by_step]
        if missing:   # new checkpoints inside an interval: retrace training to write them
            from llc_watch.train import replay_checkpoints
            t0 = time.perf_counter()
            replayed.extend(replay_checkpoints(run.dir, missing, progress=progress))
            replay_s[0] += time.perf_counter() - t0
            by_step.update({int(c.step): c for c in run.checkpoints(missing)})
        groups: dict[str, tuple[dict, list]] = {}
        for st in steps:
            job = next_job(int(st), draws)
            groups.setdefault(json.dumps(job, sort_keys=True, default=str), (job, []))[1].append(by_step[int(st)])
        for job, group in groups.values():
            report = run_checkpoint_jobs(llc_job, group, job, out_dir=out_dir, executor=executor,
                                         desc=f"llc adaptive ({draws} draws)", progress=progress)
            if report.failures:
                raise JobsFailed(f"llc --adaptive ({a.schema.file} not rewritten)", report)
            for rec in report.records:
                row = rec["rows"][0]
                estimates.setdefault(int(rec["step"]), []).append(row)
                if int(row.get("segment") or 0) > 0:   # the chains moved on: their old state is not needed
                    chain_state_path(state_dir, rec["step"], row["lineage"], int(row["segment"]) - 1).unlink(
                        missing_ok=True)
        return np.array([pool_estimates(estimates[int(st)]) for st in steps], float).reshape(-1, 2).T

    # the loop's checkpoints: the run's own (not those an earlier replay wrote, which are candidates
    # again, so a rerun replays the same loop); the log-midpoints it may add are a last resort, for an
    # interval where no saved checkpoint can still improve (replaying training costs more)
    own = sorted(st for st in by_step if st not in set(virtual))
    result = adaptive_estimate(estimate, own, ad, last_resort=virtual, seed=0, cumulative=True)
    table = pd.DataFrame([pooled_row(estimates[int(st)], v, e)
                          for st, v, e in zip(result.steps, result.values, result.stderr)])
    run.write_table(a.schema.name, table)
    table = a.schema.ordered(table)
    dense = len(own) * sgld_steps({"chains": s.chains, "burn_in": s.burn_in, "draws": ad.full_draws,
                                     "steps_between_draws": s.steps_between_draws})
    spent = int(table["sgld_steps"].sum())
    atomic_write_json(run.dir / ADAPTIVE_FILE, {
        "adaptive": asdict(ad), "stopped": result.stopped, "history": result.history,
        "sgld_steps": spent, "dense_sgld_steps": dense, "checkpoints_estimated": len(table),
        "checkpoints": len(own), "replayed_checkpoints": sorted(set(replayed)), "replay_s": replay_s[0],
        "boundaries": [{"step": b.step, "lo": b.lo, "hi": b.hi, "kind": b.kind, "support": b.support,
                        "strong": bool(b.strong)} for b in result.boundaries]})
    table.attrs.update(settings=s, adaptive=ad, sgld_steps=spent, dense_sgld_steps=dense, stopped=result.stopped,
                       replayed=sorted(set(replayed)), replay_s=replay_s[0],
                       summary=f"{len(table)} checkpoints estimated (the run has {len(own)}"
                               + (f"; {len(set(replayed))} added by replaying training in {replay_s[0]:.0f} s"
                                  if replayed else "")
                               + f"), {sum(len(x) for x in estimates.values())} estimates; stopped: {result.stopped}")
    table.attrs["warnings"] = estimate_warnings(table)
    return table


def replay_candidates(run, ad) -> list[int]:
    """Steps refinement may add by replaying training: the log-midpoint of every pair of consecutive
    checkpoints in the run's schedule (from its config, so the same on every rerun) not already a
    scheduled step. Empty for runs llc_watch did not train (nothing to replay) or new_checkpoints off.

        >>> class R: config = None
        >>> replay_candidates(R(), AdaptiveSettings())
        []
    """
    from llc_watch.checkpoints import checkpoint_steps
    cfg = getattr(run, "config", None)
    if not ad.new_checkpoints or cfg is None or not hasattr(cfg, "checkpoints"):
        return []
    sched = checkpoint_steps(cfg.train.steps, cfg.checkpoints.n_log, cfg.checkpoints.n_linear)
    mids = {int(round(np.expm1(0.5 * (np.log1p(a) + np.log1p(b))))) for a, b in zip(sched, sched[1:])}
    return sorted(mids - set(sched))


def state_readable(path, chains: int) -> bool:
    """Whether a saved chain state can be continued from: a finite [chains, D] array. A torn or
    foreign file is deleted (the next estimate there starts fresh chains instead of failing on it)."""
    if not path.is_file():
        return False
    try:
        w = np.load(path, allow_pickle=False)
        if w.ndim == 2 and w.shape[0] == chains and np.isfinite(w).all():
            return True
    except (OSError, ValueError):
        pass
    path.unlink(missing_ok=True)
    return False


def continuable(row: dict) -> bool:
    """Whether an estimate's chains can be continued: a lineage of ours, valid, every chain healthy
    (a failed chain's final weights are no place to start from)."""
    failed = json.loads(row["failed_chains"]) if isinstance(row.get("failed_chains"), str) else row.get("failed_chains")
    return (row.get("lineage") is not None and bool(row.get("valid")) and row.get("backend", "ours") == "ours"
            and failed is not None and all(f is None for f in failed))


def lineage_estimate(segments: list[dict]) -> tuple[float, float]:
    """(value, stderr) of one set of chains sampled in segments (each continuing the last): each
    chain's LLC is the draw-weighted mean of its segments' (the mean over all its draws), the value
    the mean over chains healthy in every segment, the stderr their spread / √chains.

        >>> seg = lambda per, d: {"llc_per_chain": json.dumps(per), "failed_chains": json.dumps([None] * len(per)),
        ...                       "draws_per_chain": d, "valid": True}
        >>> v, e = lineage_estimate([seg([1.0, 3.0], 10), seg([4.0, 6.0], 30)])   # chains: 3.25, 5.25
        >>> round(v, 3), round(e, 3)
        (4.25, 1.0)
    """
    per = np.array([[np.nan if x is None else x for x in json.loads(r["llc_per_chain"])] for r in segments], float)
    failed = np.array([[f is not None for f in json.loads(r["failed_chains"])] for r in segments], bool)
    d = np.array([float(r["draws_per_chain"]) for r in segments])
    lam = (per * d[:, None]).sum(0) / d.sum()
    ok = ~failed.any(0) & np.isfinite(lam)
    if not all(bool(r["valid"]) for r in segments) or ok.sum() < 1:
        return float("nan"), float("nan")
    h = lam[ok]
    return float(h.mean()), float(h.std(ddof=1) / np.sqrt(h.size)) if h.size > 1 else float("nan")


def pool_estimates(rows: list[dict]) -> tuple[float, float]:
    """(value, stderr) of a checkpoint's estimates: segments of one set of chains combine
    into one estimate (`lineage_estimate`); independent sets of chains (fresh seeds) are pooled by
    inverse variance. An invalid one adds nothing; none valid: (nan, nan).

        >>> r = {"llc_per_chain": "[1.0, 3.0]", "failed_chains": "[null, null]", "draws_per_chain": 10,
        ...      "valid": True, "value": 2.0, "stderr": 1.0}
        >>> pool_estimates([{**r, "lineage": "r0", "segment": 0}, {**r, "lineage": "r1", "segment": 0}])
        (2.0, 0.7071067811865475)
    """
    by_lineage: dict = {}
    for i, r in enumerate(rows):   # rows without a lineage (fresh estimates of older runs) stand alone
        by_lineage.setdefault(r.get("lineage") if r.get("lineage") is not None else f"#{i}", []).append(r)
    vals, ses = [], []
    for segs in by_lineage.values():
        if len(segs) == 1 and segs[0].get("lineage") is None:
            r = segs[0]
            v, e = (r["value"], r["stderr"]) if r["valid"] else (None, None)
            v, e = (np.nan if v is None else float(v)), (np.nan if e is None else float(e))
        else:
            v, e = lineage_estimate(sorted(segs, key=lambda r: int(r.get("segment") or 0)))
        if np.isfinite(v) and np.isfinite(e) and e > 0:
            vals.append(v)
            ses.append(e)
    if not vals:
        return float("nan"), float("nan")
    w = 1 / np.array(ses) ** 2
    return float((w * np.array(vals)).sum() / w.sum()), float(1 / np.sqrt(w.sum()))


def pooled_row(rows: list[dict], value: float, stderr: float) -> dict:
    """One llc.csv row from a checkpoint's estimates: the value and stderr given (`pool_estimates`),
    draws and SGLD steps summed, diagnostics from the largest estimate, every warning kept.

        >>> r = {"step": 5, "value": 1.0, "stderr": 0.5, "valid": True, "draws": 10, "draws_per_chain": 10, "burn_in": 4,
        ...      "seed": 1, "sgld_steps": 40, "warnings": "[]", "rhat": 1.0, "ess": 20.0, "sampling_s": 1.0,
        ...      "n_healthy": 2, "negative": False, "drifting": False}
        >>> p = pooled_row([r, {**r, "value": 2.0, "draws": 30, "draws_per_chain": 30, "seed": 2}], 1.8, 0.2)
        >>> p["value"], p["draws"], p["sgld_steps"], p["seed"], len(json.loads(p["estimates"]))
        (1.8, 40, 80, 1, 2)
    """
    main = {k: v for k, v in max(rows, key=lambda r: r["draws"]).items() if k not in ("lineage", "segment")}
    ok = bool(np.isfinite(value)) and any(r["valid"] for r in rows)
    warnings = []
    for i, r in enumerate(rows):
        ws = json.loads(r["warnings"]) if isinstance(r.get("warnings"), str) else (r.get("warnings") or [])
        warnings += [f"estimate {i + 1} of {len(rows)} ({r['draws']} draws): {w}" for w in ws]
    if not all(r["valid"] for r in rows) and ok:
        warnings.append(f"{sum(not r['valid'] for r in rows)} of {len(rows)} estimates invalid, left out of the pool")
    finite = [x for x in (r.get("rhat") for r in rows) if x is not None and np.isfinite(x)]
    ess = [x for x in (r.get("ess") for r in rows) if x is not None and np.isfinite(x)]
    # the curvature probe runs on a lineage's first segment only: carry it from whichever row has it
    probed = [r for r in rows if r.get("h_max") is not None and np.isfinite(r["h_max"])]
    if probed:
        main.update(h_max=probed[0]["h_max"], sharpest_step=probed[0].get("sharpest_step"))
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
                                  "stderr": r["stderr"], "burn_in": int(r["burn_in"]),
                                  "lineage": r.get("lineage"), "segment": r.get("segment")} for r in rows]),
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
