"""Calibrate SGLD on a run and save the choice in RUN/calibration.json for `llc-watch llc`.

Two methods (setting `method`):
  auto (default)  llc_watch.llc.calibration.calibrate_llc at an early, a middle and the last
                  checkpoint: an ε ladder from the Hessian's top curvature, the batch from the
                  gradient-noise bias relative to λ̂, a plateau of λ̂ in ε judged with its Monte-Carlo
                  error (its smaller ε chosen; else
                  an extrapolation to ε → 0 and the smallest ε), checks of batch, γ, MALA, R̂ and ESS.
                  One choice for the run: the most careful of the three (smallest ε, largest batch,
                  most draws and burn-in); its sampler is RMSProp-SGLD if any checkpoint needed it
                  (then ε is the smallest among those checkpoints: ε is a different step per sampler).
  grid            the older ε × nβ × γ sweep on the middle and last checkpoints, chosen by
                  llc_watch.llc.calibrate.choose.

    >>> cal = calibrate_run("runs/addition")                          # doctest: +SKIP
    >>> cal.choice["epsilon"]                                          # doctest: +SKIP

The sweep is RUN/calibration_sweep.csv, one row per (step, ε, nβ, γ).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

from llc_watch.io import atomic_write_json
import json

from llc_watch.llc.calibrate import (DEFAULT_GRID, RULE, CalibrationError, choice_warnings, choose,
                                     mark_usable, sweep)
from llc_watch.llc.calibration import RULE as AUTO_RULE, Calibration, calibrate_llc
from llc_watch.llc.estimator import _json_safe, default_nbeta
from llc_watch.llc.sampler import SAMPLERS
from llc_watch.run import Column, TableSchema, register_table

from .base import Analysis, run_analysis
from .llc import (CALIBRATION_FILE, LLCSettings, checkpoint_problem, estimator_kwargs, grid_status, load_calibration,
                  resolve_params, worst_status)


# what the grid sweeps at where these settings are left to the method (None / "auto")
GRID_DEFAULTS = {"sampler": "sgld", "batch_size": 32, "draws": 200, "burn_in": 100,
                 "epsilons": tuple(DEFAULT_GRID["epsilons"]), "gammas": (100.0,), "nbetas": (None,)}
# LLC settings a calibration has no use for (either method; `llc` uses them), and those only the grid
# uses (calibrate_llc has no such option): given where unused, they are an error, not ignored
UNUSED = ("stack_checkpoints", "backend", "seed_per_checkpoint")
AUTO_UNUSED = ("steps_between_draws", "eval_size", "min_healthy_fraction", "batch_control", "per_chain_batches",
               "observe_every", "observe_size", "probe_curvature", "precision")


@dataclass(frozen=True)
class CalibrationSettings(LLCSettings):
    method: str = "auto"              # auto: calibrate_llc's rule (plateau in ε, batch from the gradient
                                      # noise, checks); grid: the ε × nβ × γ sweep below
    pilot_draws: Optional[int] = None  # auto: pilot draws per rung of the ε ladder; None: calibrate_llc's own
    checks: bool = True               # auto: run the draws check and the batch ×2, γ ×3 (÷3 where localised) and MALA checks at the chosen cell
    all_checks: bool = False          # auto: run the batch and γ checks also where the status is already untrusted
                                      # (they cannot change it; run for their warnings)
    sampler: str = "auto"             # auto: SGLD, then RMSProp-SGLD where SGLD finds no plateau; sgld |
                                      # rmsprop_sgld: that sampler's ladder only (grid: auto is sgld)
    batch_size: Optional[int] = None  # None: auto chooses it from the gradient-noise bias (grid: 32); a number
                                      # fixes it (auto then caps ε by that rule instead)
    draws: Optional[int] = None       # grid: draws per chain of each cell (None: 200); auto: see pilot_draws
    burn_in: Optional[int] = None     # the pilots' (auto; None: half their draws) or each cell's (grid; None: 100) burn-in
    epsilons: Optional[tuple[float, ...]] = None  # step sizes ε: auto: a ladder to use instead of the one probed
                                      # from the Hessian; grid: to sweep (None: 1e-05,3e-05,0.0001,0.0003,0.001)
    nbetas: tuple = (None,)           # nβ values: grid: to sweep; auto: one value (None: n/log n)
    gammas: Optional[tuple[float, ...]] = None  # localisation strength γ: auto: one value used as given (None:
                                      # start at 1, raised where the chains do not localise); grid: to sweep (None: 100)

    def validate(self):
        self.refuse_set(UNUSED, "a calibration", " (an `llc-watch llc` setting)")
        self.validate_shared()
        for name in ("draws", "batch_size"):
            self.at_least(name, 1, allow_none=True)
        self.at_least("burn_in", 0, allow_none=True)
        self.one_of("sampler", ("auto",) + SAMPLERS)
        self.one_of("method", ("auto", "grid"))
        self.at_least("pilot_draws", 10, allow_none=True)
        if self.epsilons is not None and (not self.epsilons or not all(
                e is not None and math.isfinite(e) and e > 0 for e in self.epsilons)):
            self._fail("epsilons", "give positive finite step sizes, e.g. 1e-5,1e-4,1e-3")
        if not self.nbetas or not all(b is None or (math.isfinite(b) and b > 0) for b in self.nbetas):
            self._fail("nbetas", "give positive finite values (or leave the default n/log n)")
        if self.gammas is not None and (not self.gammas or not all(
                g is not None and math.isfinite(g) and g >= 0 for g in self.gammas)):
            self._fail("gammas", "give finite values >= 0")
        if self.all_checks and (self.method != "auto" or not self.checks):
            self._fail("all_checks", "runs more of method auto's checks: it needs method auto and checks on")
        if self.method == "auto":
            self._check_auto()

    def _check_auto(self):
        """Method auto runs calibrate_llc: a setting it cannot use is one line, never ignored."""
        for name in ("nbetas", "gammas"):
            if getattr(self, name) is not None and len(getattr(self, name)) > 1:
                self._fail(name, "method auto takes one value (or none: the rule's); sweeping several is "
                                 "method grid")
        if self.draws is not None:
            self._fail("draws", "method auto chooses the estimate's draws; its pilots' length is pilot_draws "
                                "(or use method grid)")
        self.refuse_set(AUTO_UNUSED, "method auto (calibrate_llc)", ", or use method grid")

    def for_grid(self) -> "CalibrationSettings":
        """The settings the grid sweeps with: what was left to the method filled with the grid's values."""
        return replace(self, **{k: v for k, v in GRID_DEFAULTS.items() if getattr(self, k) in (None, "auto")})

    def auto_kwargs(self) -> dict:
        """calibrate_llc's keyword arguments from these settings (method auto)."""
        one = lambda t: None if t is None else t[0]
        nbeta = one(self.nbetas) if one(self.nbetas) is not None else self.nbeta
        return {"sampler": self.sampler, "batch_size": self.batch_size, "burn_in": self.burn_in,
                "draws": self.pilot_draws, "epsilons": None if self.epsilons is None else list(self.epsilons),
                "gamma": one(self.gammas), "nbeta": nbeta, "chains": self.chains, "seed": self.seed,
                "checks": ("all" if self.all_checks else True) if self.checks else False}


_GRID_POINT = ("epsilon", "nbeta", "gamma")
_FIELDS = set(CalibrationSettings.__dataclass_fields__)
_O = dict(required=False)
CALIBRATION_TABLE = register_table(TableSchema("calibration", "calibration_sweep.csv", "llc-watch calibrate RUN", (
    Column("step", "int"), Column("measure", "str"), Column("value", "float", "the cell's λ̂"),
    Column("epsilon", "float"), Column("nbeta", "float"), Column("gamma", "float"),
    Column("valid", "bool"), Column("failed_chains", "int"), Column("rhat", "float"),
    Column("method", "str", "auto (calibrate_llc) or grid", **_O),
    # grid sweep
    Column("llc_mean", "float", **_O), Column("llc_std", "float", **_O), Column("llc_stderr", "float", **_O),
    Column("drift", "float", **_O), Column("burn_in", "int", **_O), Column("chains", "int", **_O),
    Column("draws", "int", **_O), Column("drift_stderr", "float", **_O), Column("drifting", "bool", **_O),
    Column("ess", "float", **_O), Column("mean_loss_trace", "json", **_O), Column("n", "int", **_O),
    Column("negative", "bool", **_O), Column("stable", "bool", **_O), Column("usable", "bool", **_O),
    Column("h_max", "float", "the loss's sharpest Hessian curvature at w* (this checkpoint's probe)", **_O),
    Column("sharpest_step", "float", "ε·(nβ·h_max + γ): SGLD is unstable along that direction above 4", **_O),
    # calibrate_llc's cells
    Column("role", "str", "ladder, ladder_short, draws_check, settled_test, batch_check, gamma_check, gamma_check_short, mala_check",
           **_O),
    Column("batch_size", "int", **_O), Column("sampler", "str", **_O), Column("llc", "float", **_O),
    Column("llc_se", "float", "Monte-Carlo standard error", **_O), Column("llc_observed", "float", **_O),
    Column("ess_bulk", "float", **_O), Column("ess_tail", "float", **_O), Column("mixed", "bool", **_O),
    Column("mala", "float", **_O), Column("grad_evals", "float", **_O), Column("seconds", "float", **_O),
    Column("comparable", "bool", "the pilot mixed: its λ̂ may enter the plateau test", **_O),
    Column("obs_drift", "float", "second − first half λ̂ on the observable", **_O),
    Column("obs_drift_se", "float", **_O),
    Column("flat_step", "float", "the step along directions felt only through the localisation (ε; ε·P for "
           "RMSProp-SGLD): it times their relaxation, 2/(flat_step·γ)", **_O),
    Column("warm_start", "bool", "the cell started where an earlier run's chains ended, not at w*", **_O),
    Column("continued", "bool", "the run continued the chains of the shorter run it lengthens (the draws "
           "check); its burn_in counts their steps", **_O),
    Column("status", "str", "this checkpoint's verdict: plateau, extrapolated, untrusted", **_O),
    Column("choice", "json", "this checkpoint's chosen estimate_llc settings", **_O),
    Column("cal_llc", "float", "the calibration's own λ̂ at this checkpoint", **_O),
    Column("cal_llc_stderr", "float", **_O),
    Column("evidence", "json", "why the cell won: probes, plateau test, checks, cost", **_O),
    Column("cal_warnings", "json", **_O),
)))


def settings_method(settings) -> str:
    return getattr(settings, "method", "auto") if settings is not None else "auto"


def calibration_job(checkpoint, settings: dict) -> list[dict]:
    """The calibration at one checkpoint, as tidy rows (measure 'llc'). Top level: picklable."""
    s, model, loss_fn, data = checkpoint_problem(checkpoint, settings)
    if s.get("method", "auto") == "auto":
        return auto_rows(checkpoint, s, model, loss_fn, data)
    kw = {k: v for k, v in estimator_kwargs(s, model).items() if k not in _GRID_POINT}
    df = sweep(model, loss_fn, data, epsilons=s["epsilons"], nbetas=s["nbetas"], gammas=s["gammas"],
               probe_curvature=s.get("probe_curvature", True), **kw)
    df.insert(0, "step", checkpoint.step)
    df.insert(1, "measure", "llc")
    df["value"] = df["llc_mean"]
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            for row in df.to_dict("records")]


def _clean(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def auto_rows(checkpoint, s: dict, model, loss_fn, data) -> list[dict]:
    """calibrate_llc at one checkpoint: its cells as rows, each carrying the checkpoint's verdict."""
    settings = CalibrationSettings.from_mapping({k: v for k, v in s.items() if k in _FIELDS})
    cal = calibrate_llc(model, loss_fn, data, terms_per_example=s["terms_per_example"],
                        params=resolve_params(model, s["params"]),
                        device=None if s["device"] == "auto" else s["device"], **settings.auto_kwargs())
    verdict = {"method": "auto", "status": cal.status, "choice": json.dumps(_json_safe(cal.choice)),
               "cal_llc": _clean(float(cal.llc)), "cal_llc_stderr": _clean(float(cal.llc_stderr)),
               "evidence": json.dumps(_json_safe(cal.evidence)), "cal_warnings": json.dumps(cal.warnings)}
    rows = []
    for r in cal.sweep.to_dict("records"):
        row = {k: _clean(v) for k, v in r.items()}
        rows.append({"step": checkpoint.step, "measure": "llc", "value": row.get("llc"), **row, **verdict})
    return rows


def default_auto_steps(steps: list[int]) -> list[int]:
    """Early (a quarter in), middle and final checkpoints: the LLC's range over training."""
    return sorted({steps[len(steps) // 4], steps[len(steps) // 2], steps[-1]})


def default_calibration_steps(steps: list[int]) -> list[int]:
    """The middle and the final checkpoint: the final is usually the sharpest minimum."""
    return sorted({steps[len(steps) // 2], steps[-1]})


class CalibrationAnalysis(Analysis):
    name = "calibration"
    command = "calibrate"
    Settings = CalibrationSettings
    schema = CALIBRATION_TABLE
    job = staticmethod(calibration_job)
    cli_hidden = _GRID_POINT      # the sweep sets them
    help = "choose SGLD settings at which the LLC is right (or say none can be trusted) and save them"
    description = ("Choose the settings `llc-watch llc` then uses (saved in calibration.json), at a few checkpoints. "
                   "--method auto (default; early, middle and last checkpoints): calibrate_llc's rule, an epsilon "
                   "ladder from the Hessian's top curvature, the batch from the gradient-noise bias, a plateau of "
                   "the LLC in epsilon judged with its Monte-Carlo error (else an extrapolation to epsilon -> 0, "
                   "else untrusted), checks of draws, batch, gamma and MALA; each checkpoint's verdict and evidence "
                   "are saved. --method grid (middle and last): the older epsilon x n*beta x gamma sweep, each cell "
                   "marked stable or not (failed chains, drift after burn-in, split-R-hat).")
    checkpoints_help = "early, middle and last (method auto); middle and last (grid)"

    def settings(self, run, given=None):
        s = super().settings(run, given)
        return s.for_grid() if s.method == "grid" else s

    def checkpoints(self, run, steps, settings=None):
        if steps is None:
            all_steps = [c.step for c in run.checkpoints()]
            if not all_steps:
                raise CalibrationError(f"{run.dir} has no checkpoints; train it first")
            steps = (default_auto_steps if settings_method(settings) == "auto" else default_calibration_steps)(all_steps)
        return super().checkpoints(run, steps, settings)

    def job_settings(self, run, settings):
        d = settings.to_dict()
        for k in ("epsilon", "gamma"):       # the sweep's grid or the rule sets them
            d.pop(k)
        if d["epsilons"] is not None:
            d["epsilons"] = sorted(d["epsilons"])
        if d["method"] == "grid":
            for k in ("pilot_draws", "checks", "all_checks"):
                d.pop(k)
        # (auto keeps its None / "auto" entries: they stand over the LLC defaults the job merges in)
        return d

    def should_run(self, run, settings):
        return load_calibration(run) is None

    def finish(self, run, table, settings):
        if settings.method == "auto":
            return self._finish_auto(run, table, settings)
        df = mark_usable(table)
        n = int(df["n"].iloc[0])
        base = {k: v for k, v in settings.to_dict().items()
                if k not in ("threads", "device", "epsilons", "nbetas", "gammas") + _GRID_POINT}
        choice = {**base, **choose(df, n)}
        warns = choice_warnings(df, choice)
        atomic_write_json(run.dir / CALIBRATION_FILE, {
            "choice": choice, "rule": RULE, "warnings": warns, "n": n, "default_nbeta": default_nbeta(n),
            "grid": {k: list(getattr(settings, k)) for k in ("epsilons", "nbetas", "gammas")},
            "steps": sorted(int(s) for s in df["step"].unique())})
        df.attrs.update(choice=choice, choice_warnings=warns)   # plain data: attrs are copied with the frame
        return df

    def _finish_auto(self, run, table, settings):
        per, choices, warns = {}, [], []
        for step, g in table.groupby("step", sort=True):
            r0 = g.iloc[0]
            choice = json.loads(r0["choice"])
            choices.append(choice)
            per[str(int(step))] = {"status": r0["status"], "choice": choice, "llc": r0["cal_llc"],
                                   "llc_stderr": r0["cal_llc_stderr"], "evidence": json.loads(r0["evidence"])}
            warns += [f"step {int(step)}: {w}" for w in json.loads(r0["cal_warnings"])]
            if r0["status"] != "plateau":
                warns.append(f"step {int(step)}: no plateau of λ̂ in ε ({r0['status']}); λ̂ there was extrapolated "
                             "to ε → 0 and the smallest ε taken" if r0["status"] == "extrapolated" else
                             f"step {int(step)}: calibration untrusted ({r0['status']})")
        # ε means a different step for each sampler: the run's ε is the smallest among the checkpoints
        # that chose the run's sampler. RMSProp-SGLD is chosen only where SGLD's ladder had no plateau,
        # so one such checkpoint makes it the run's sampler (said in a warning).
        samplers = {c.get("sampler", "sgld") for c in choices}
        run_sampler = "rmsprop_sgld" if "rmsprop_sgld" in samplers else choices[0].get("sampler", "sgld")
        same = [c for c in choices if c.get("sampler", "sgld") == run_sampler]
        if len(samplers) > 1:
            warns.append(f"checkpoints chose different samplers ({', '.join(sorted(samplers))}); the run uses "
                         f"{run_sampler} (plain SGLD found no plateau somewhere) at the ε of the checkpoints "
                         "that chose it; at the others that sampler's ε was not calibrated")
        choice = dict(same[0])
        # γ: the largest chosen (rule step 8 raises it only where chains did not localise at the smaller,
        # and a larger γ localises every checkpoint at least as well); said where they differ
        gammas = sorted({float(c.get("gamma", 1.0)) for c in choices})
        if len(gammas) > 1:
            warns.append(f"checkpoints chose different γ ({', '.join(f'{g:g}' for g in gammas)}: the chains did not "
                         f"localise at the smaller somewhere); the run uses γ = {gammas[-1]:g}")
        choice.update(epsilon=min(c["epsilon"] for c in same), batch_size=max(c["batch_size"] for c in choices),
                      draws=max(c["draws"] for c in choices), burn_in=max(c["burn_in"] for c in choices),
                      gamma=gammas[-1])
        choice = {k: v for k, v in choice.items() if k in LLCSettings.__dataclass_fields__}
        atomic_write_json(run.dir / CALIBRATION_FILE, _json_safe({
            "choice": choice, "rule": AUTO_RULE, "method": "calibrate_llc", "warnings": warns,
            "steps": sorted(int(s) for s in table["step"].unique()), "per_checkpoint": per}))
        table = table.copy()
        table.attrs.update(choice=choice, choice_warnings=warns)
        return table

    def summary(self, run, table):
        choice = table.attrs.get("choice")
        cols = [c for c in ("step", "epsilon", "nbeta", "gamma", "llc_mean", "llc_std", "valid", "drift", "rhat",
                            "failed_chains", "usable") if c in table.columns]
        lines = [table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")]
        if "role" in table.columns and table["role"].notna().any():
            cols = [c for c in ("step", "role", "epsilon", "gamma", "batch_size", "draws", "llc", "llc_se", "valid",
                                "rhat", "mixed", "status") if c in table.columns]
            lines = [table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")]
        if choice is not None:
            lines.append("chosen: " + ", ".join(f"{k}={choice[k]}" for k in
                                                ("epsilon", "nbeta", "gamma", "batch_size", "draws", "burn_in", "sampler")
                                                if k in choice))
            lines += [f"warning: {w}" for w in table.attrs.get("choice_warnings") or []]
        lines.append(f"wrote {run.dir / CALIBRATION_FILE} (used by `llc-watch llc` unless overridden)")
        return lines


CALIBRATION_ANALYSIS = CalibrationAnalysis()


def calibrate_run(run_dir, *, steps: list[int] | None = None, epsilons=None, nbetas=None, gammas=None,
                  settings=None, executor=None, progress: bool = True) -> Calibration:
    """Sweep the grid on `steps` (default: middle and final checkpoints), choose, and save.

    settings: other LLC settings for the sweep (chains, draws, burn_in, batch_size, n_data, ...);
    the chosen ε, nβ, γ are saved with them in RUN/calibration.json, which `compute_llc` then uses.
    """
    given = {k: v for k, v in dict(settings or {}).items() if k not in _GRID_POINT}
    if epsilons or nbetas or gammas:
        given.setdefault("method", "grid")      # a grid was asked for
    given.update({k: v for k, v in (("epsilons", epsilons), ("nbetas", nbetas), ("gammas", gammas)) if v})
    df = run_analysis(CALIBRATION_ANALYSIS, run_dir, given, steps, executor, progress)
    method = df["method"].iloc[0] if "method" in df.columns else "grid"
    return run_calibration_result(df, method)


def run_calibration_result(df, method: str) -> Calibration:
    """The run's calibration as the one `Calibration` type: the run-level choice, every cell, each
    checkpoint's verdict in evidence['per_checkpoint'] (auto), and the worst status over them."""
    choice, warns = df.attrs["choice"], list(df.attrs["choice_warnings"] or [])
    if method == "auto":
        per = {}
        for step, g in df.groupby("step", sort=True):
            r0 = g.iloc[0]
            per[str(int(step))] = {"status": r0["status"], "llc": r0["cal_llc"], "llc_stderr": r0["cal_llc_stderr"],
                                   "evidence": json.loads(r0["evidence"])}
        status = worst_status(p["status"] for p in per.values())
        evidence = {"method": "calibrate_llc", "per_checkpoint": per, "steps": sorted(int(s) for s in per)}
        return Calibration(choice, df, evidence, warns, status, rule=AUTO_RULE)
    status = grid_status(choice, warns)
    evidence = {"method": "grid", "steps": sorted(int(s) for s in df["step"].unique())}
    return Calibration(choice, df, evidence, warns, status, rule=RULE)
