"""Calibrate SGLD: sweep ε × nβ × γ on chosen checkpoints and pick settings by a documented rule.

Selection rule (`choose`):
  1. A cell (ε, nβ, γ) is *stable* on a checkpoint when its estimate is valid, no chain failed,
     the traces are flat after burn-in (no drift flag: second-half − first-half LLC within
     3 standard errors or 10 % of max(|λ̂|, 1)) and the rank-normalised R̂ of the fixed-batch
     observable is <= 1.05 (sweep-length chains; the final estimate is held to 1.01). A negative LLC does not make a
     cell unstable (an untrained checkpoint's LLC is negative at every ε).
  2. A cell is *usable* when it is stable on every chosen checkpoint *and* no smaller ε of the grid
     at the same (nβ, γ) diverged (a failed chain or an invalid estimate) on any of them: a lucky
     large step above a diverging one is not picked. (A smaller ε that merely mixes too slowly,
     flagged by R̂ or drift, does not disqualify larger ones: that is what a larger ε cures.)
  3. Among usable cells: nβ closest to the default n/log n (in log scale), then the smallest γ;
     then the largest ε whose LLC agrees with the next smaller usable ε (within 2 combined
     stderrs + 5 %) on every checkpoint (a plateau in ε); with no such pair, the SMALLEST usable
     ε (the least biased; `choice_warnings` says there is no plateau). The old rule took the
     largest stable ε, the most biased one (issue 10). For a fuller rule with a gradient-noise
     check, MCSE and extrapolation, see calibration.calibrate_llc.
No usable cell: no choice; the message says to lower the ε grid or raise γ.

The run-level driver (sweep a run's checkpoints, save calibration.json) is
llc_watch.analyses.calibration.calibrate_run; it returns the same `Calibration` as calibrate_llc
(llc_watch.llc.calibration), with `status` "plateau", "no_plateau" or "untrusted" for this rule.

The sweep is a tidy DataFrame, one row per (step, ε, nβ, γ): columns epsilon, nbeta, gamma,
llc_mean, llc_std, llc_stderr, valid, drift, rhat, failed_chains, stable, usable, step, ...
(llc_watch/plots.py draws it).
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .calibration import Calibration, sharpest_curvature  # noqa: F401 - Calibration: the one result type (re-exported)
from .estimator import default_nbeta, estimate_llc
from . import diagnostics as dg

DEFAULT_GRID = {
    "epsilons": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
    "nbetas": [None],          # None = n/log n
    "gammas": [100.0],
}
STABLE_RHAT = 1.05   # rank-normalised R̂ on the fixed-batch observable, sweep-length chains
RULE = ("stable = valid, no failed chain, no drift after burn-in, rank-normalised R̂ <= 1.05 on the "
        "fixed-batch observable (negative LLC "
        "allowed); usable = stable on every chosen checkpoint and no smaller ε at the same (nβ, γ) "
        "diverged (failed chain or invalid) on any; choose nβ closest to n/log n, then the smallest γ, "
        "then the largest ε on a plateau (LLC within 2 se + 5 % of the next smaller ε), else the "
        "smallest usable ε")


class CalibrationError(RuntimeError):
    """No grid cell is usable; the message says how to widen the grid."""


def cell_row(r, **extra) -> dict:
    """One sweep row from an LLCResult."""
    h, d = r.hyperparameters, r.diagnostics
    healthy = [v for v, f in zip(r.llc_per_chain, r.chain_failed) if f is None]
    if "h_max" in extra:            # the step along the sharpest direction (`sweep`'s probe)
        extra = {**extra, "sharpest_step": sharpest_step(h["epsilon"], h["nbeta"], extra["h_max"], h["gamma"])}
    stable = bool(r.valid and d["n_failed"] == 0 and not d["drifting"]
                  and not (math.isfinite(d["rhat"]) and d["rhat"] > STABLE_RHAT))
    return {**extra, "epsilon": h["epsilon"], "nbeta": h["nbeta"], "gamma": h["gamma"],
            "llc_mean": r.llc_mean, "llc_std": float(np.std(healthy, ddof=1)) if len(healthy) > 1 else float("nan"),
            "llc_stderr": r.llc_stderr, "valid": r.valid, "drift": d["drift"],
            "drift_stderr": d["drift_stderr"], "drifting": d["drifting"], "rhat": d["rhat"],
            "ess": d["ess"], "failed_chains": d["n_failed"], "negative": d["negative"],
            "stable": stable, "n": h["n"], "chains": h["chains"], "draws": h["draws"],
            "burn_in": h["burn_in"], "mean_loss_trace": json.dumps(
                [float(np.mean(col)) if np.isfinite(col).all() else None
                 for col in zip(*r.loss_traces)])}


def sweep(model, loss_fn, data, *, epsilons, nbetas=(None,), gammas=(100.0,), probe_curvature: bool = True,
          **estimator_kw) -> pd.DataFrame:
    """Estimate the LLC at every (ε, nβ, γ) of the grid; one tidy row per cell.

    probe_curvature: probe the loss's sharpest curvature h_max at w* once (`sharpest_curvature`,
    a few Hessian-vector products) and give every cell its `sharpest_step` ε·(nβ·h_max + γ), which
    `choice_warnings` reads: SGLD is unstable along that direction above 4 and biased there above 1."""
    h_max = (sharpest_curvature(model, loss_fn, data, params=estimator_kw.get("params"),
                                device=estimator_kw.get("device"), seed=estimator_kw.get("seed", 0))
             if probe_curvature else float("nan"))
    rows = []
    for eps, nb, g in itertools.product(epsilons, nbetas, gammas):
        r = estimate_llc(model, loss_fn, data, epsilon=eps, nbeta=nb, gamma=g, **estimator_kw)
        rows.append(cell_row(r, h_max=h_max))
    return mark_usable(pd.DataFrame(rows))


def mark_usable(df: pd.DataFrame) -> pd.DataFrame:
    """Add the `usable` column (rule steps 1-2)."""
    diverged = ~df["valid"].astype(bool) | (df["failed_chains"] > 0)
    cell = (df.assign(diverged=diverged).groupby(["nbeta", "gamma", "epsilon"])
            .agg(cell_stable=("stable", "all"), diverged=("diverged", "any")).reset_index()
            .sort_values(["nbeta", "gamma", "epsilon"]))
    # diverged at some smaller ε of the same (nβ, γ): shift the running "any" by one cell
    before = cell.groupby(["nbeta", "gamma"])["diverged"].transform(
        lambda s: s.astype(int).cummax().shift(1, fill_value=0).astype(bool))
    cell["usable"] = cell["cell_stable"] & ~before
    out = df.drop(columns=["usable"], errors="ignore").merge(
        cell[["nbeta", "gamma", "epsilon", "usable"]], on=["nbeta", "gamma", "epsilon"], how="left")
    return out


def choose(df: pd.DataFrame, n: int) -> dict:
    """Apply the selection rule (module docstring) to a sweep over one or more checkpoints."""
    usable = mark_usable(df).query("usable")[["nbeta", "gamma", "epsilon"]].drop_duplicates()
    untrusted = usable.empty
    if untrusted:
        # nothing mixed well enough to call stable: fall back to the smallest ε at which every chain
        # stayed healthy on every checkpoint, and say the choice is untrusted (never silently)
        cell = ["nbeta", "gamma", "epsilon"]
        ok = df.assign(_h=df["valid"].astype(bool) & (pd.to_numeric(df["failed_chains"]).fillna(1) == 0))
        healthy = ok.groupby(cell)["_h"].all()
        usable = healthy[healthy].reset_index()[cell]
        if usable.empty:
            raise CalibrationError(
                "no (ε, nβ, γ) cell of the grid is stable on every chosen checkpoint, and none kept every "
                "chain healthy; add smaller epsilons or larger gammas to the grid, or more burn-in")
        usable = usable[np.isclose(usable["epsilon"], usable["epsilon"].min())]
    target = math.log(default_nbeta(n))
    nb, g, _ = min(usable.itertuples(index=False, name=None),
                   key=lambda c: (round(abs(math.log(c[0]) - target), 9), c[1]))
    eps = sorted(usable[np.isclose(usable["nbeta"], nb) & np.isclose(usable["gamma"], g)]["epsilon"])
    same = df[np.isclose(df["nbeta"], nb) & np.isclose(df["gamma"], g)]
    # the largest ε whose LLC agrees with the next smaller usable ε on every checkpoint (a
    # plateau); none: the smallest usable ε (the least biased), never the largest
    e = eps[0]
    for lo, hi in zip(eps[:-1], eps[1:]):
        if _agree_on_all_steps(same, hi, lo):
            e = hi
    choice = {"epsilon": float(e), "nbeta": float(nb), "gamma": float(g)}
    if untrusted:
        choice["untrusted"] = True
    return choice


def _agree_on_all_steps(df: pd.DataFrame, e_hi: float, e_lo: float) -> bool:
    """LLC at e_hi within 2 combined stderrs + 5 % of the LLC at e_lo, on every checkpoint."""
    steps = df.groupby("step") if "step" in df.columns else [(None, df)]
    for _, grp in steps:
        a = grp[np.isclose(grp["epsilon"], e_hi)]
        b = grp[np.isclose(grp["epsilon"], e_lo)]
        if a.empty or b.empty:
            return False
        a, b = a.iloc[0], b.iloc[0]
        se = math.hypot(float(a["llc_stderr"] or 0.0), float(b["llc_stderr"] or 0.0))
        if not abs(a["llc_mean"] - b["llc_mean"]) <= 2 * se + 0.05 * max(abs(a["llc_mean"]), abs(b["llc_mean"])):
            return False
    return True


SHARPEST_STEP_MAX = 1.0   # ε·(nβ·h_max + γ) above this: the sharpest direction's discretisation bias
                          # passes ~25 % (ε·c/4, rule step 1 of calibrate_llc); above 4 SGLD is unstable there
SHARP_WARNING = "sharpest curvature"   # words every `sharp_step_warnings` line carries (a run gathers them)


def sharpest_step(epsilon: float, nbeta: float, h_max: float, gamma: float) -> float:
    """SGLD's step along the loss's sharpest direction, ε·(nβ·h_max + γ) (stable below 4).

        >>> round(sharpest_step(3e-6, 4924.4, 280.0, 100.0), 2)
        4.14
    """
    return float(epsilon) * (float(nbeta) * float(h_max) + float(gamma))


def sharp_step_warnings(cells: pd.DataFrame) -> list[str]:
    """A warning per checkpoint where the chosen cell's step along the sharpest direction,
    ε·(nβ·h_max + γ), is above SHARPEST_STEP_MAX; the largest ε that would not be is named.

        >>> cells = pd.DataFrame({"step": [378], "epsilon": [3e-6], "nbeta": [4924.4], "gamma": [100.0],
        ...                       "h_max": [280.0], "sharpest_step": [sharpest_step(3e-6, 4924.4, 280.0, 100.0)]})
        >>> print(sharp_step_warnings(cells)[0][:139])
        step 378: ε=3e-06 is 4.1/(nβ·h_max + γ) (h_max = 280, the loss's sharpest curvature at w*): SGLD is unstable along that direction (above 4)
    """
    out = []
    if "sharpest_step" not in cells.columns:
        return out
    for _, c in (cells.sort_values("step") if "step" in cells.columns else cells).iterrows():
        k = float(c["sharpest_step"])
        if not (math.isfinite(k) and k > SHARPEST_STEP_MAX):
            continue
        limit = c["epsilon"] / k * SHARPEST_STEP_MAX
        what = ("SGLD is unstable along that direction (above 4)" if k >= 4 else
                f"its discretisation bias there is ≈ {k / 4:.0%} of that direction's spread")
        where = f"step {int(c['step'])}: " if "step" in c.index else ""
        out.append(f"{where}ε={c['epsilon']:g} is {k:.2g}/(nβ·h_max + γ) (h_max = {c['h_max']:.3g}, "
                   f"the loss's {SHARP_WARNING} at w*): {what}, so λ̂ there reflects the step size as much as "
                   f"the landscape; ε <= {limit:.2g} keeps that step under {SHARPEST_STEP_MAX:g} (and needs "
                   "longer chains to mix: `llc-watch calibrate RUN` with the default method finds a setting or says why not)")
    return out


def choice_warnings(df: pd.DataFrame, choice: dict) -> list[str]:
    """Caveats about a choice: the LLC still moving with ε (no plateau), or the grid's edge."""
    out = []
    if choice.get("untrusted"):
        out.append("UNTRUSTED: no cell of the grid was stable (R̂ on the observable, drift, failed chains) on "
                   f"every checkpoint; the smallest ε at which every chain stayed healthy ({choice['epsilon']:g}) "
                   "is used. LLCs at these settings are not to be trusted: widen the grid to smaller ε, or "
                   "give more draws and burn-in")
    same = df[(np.isclose(df["nbeta"], choice["nbeta"])) & (np.isclose(df["gamma"], choice["gamma"]))]
    eps_grid = sorted(same["epsilon"].unique())
    e = choice["epsilon"]
    out += sharp_step_warnings(same[np.isclose(same["epsilon"], e)])
    if np.isclose(e, eps_grid[-1]):
        out.append(f"the largest ε of the grid ({e:g}) was chosen; larger ones were not tried")
    smaller = [x for x in eps_grid if x < e and not np.isclose(x, e)]
    if smaller:
        e0 = smaller[-1]
        for step, grp in same.groupby("step"):
            a = grp[np.isclose(grp["epsilon"], e)].iloc[0]
            b = grp[np.isclose(grp["epsilon"], e0)].iloc[0]
            diff = a["llc_mean"] - b["llc_mean"]
            se = math.hypot(a["llc_stderr"] or 0.0, b["llc_stderr"] or 0.0)
            if abs(diff) > 3 * se and abs(diff) > 0.2 * max(abs(a["llc_mean"]), 1.0):
                out.append(f"step {step}: LLC {a['llc_mean']:.4g} at ε={e:g} vs {b['llc_mean']:.4g} at "
                           f"ε={e0:g}: no plateau in ε, so the LLC's level depends on ε; compare LLCs only "
                           "at one calibrated ε (or sweep longer chains / a finer grid)")
    return out
