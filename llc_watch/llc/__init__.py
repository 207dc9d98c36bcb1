"""The LLC engine: localised SGLD over chains at once, diagnostics, exact answers, calibration.

    >>> from llc_watch.llc import estimate_llc, exact
    >>> exact.rrr(4, 3, 5, 0)
    5.5

Modules, each about one thing:
    sampler      the SGLD / RMSProp-SGLD update and the chains (vectorised and sequential)
    data         the data forms the estimator accepts; the seeded minibatch stream
    estimator    estimate_llc -> LLCResult
    diagnostics  failed chains, split-R̂, ESS, drift, validity rule
    exact        exact learning coefficients and models that have them
    calibration  calibrate_llc: settings at which the LLC is right, with the evidence
    calibrate    run-level sweeps (sweep/choose/calibrate_run, calibrate_run_auto); calibration.json
    job          llc_job (one checkpoint) and compute_llc (a run) -> llc.csv
"""
from . import diagnostics, exact
from .calibrate import Calibration, CalibrationError, calibrate_run, calibrate_run_auto, choose, sweep
from .calibration import calibrate_llc
from .estimator import LLCError, LLCResult, default_nbeta, devinterp_nbeta, estimate_llc, select_params
from .job import DEFAULT_SETTINGS, compute_llc, llc_job, resolve_settings
from .sampler import SGLDSettings, SamplerError

__all__ = ["estimate_llc", "LLCResult", "LLCError", "SamplerError", "SGLDSettings",
           "default_nbeta", "devinterp_nbeta", "select_params",
           "compute_llc", "llc_job", "resolve_settings", "DEFAULT_SETTINGS",
           "calibrate_run", "calibrate_run_auto", "calibrate_llc", "sweep", "choose", "Calibration", "CalibrationError",
           "diagnostics", "exact"]
