"""The LLC engine: localised SGLD over chains at once, diagnostics, exact answers, calibration rule.

It knows nothing of run folders: any nn.Module, loss and data. (Running it on every checkpoint of a
run is llc_watch.analyses.llc / .calibration.)

    >>> from llc_watch.llc import estimate_llc, exact
    >>> exact.rrr(4, 3, 5, 0)
    5.5

Modules, each about one thing:
    sampler      the SGLD / RMSProp-SGLD update and the chains (vectorised and sequential)
    data         the data forms the estimator accepts; the seeded minibatch stream
    estimator    estimate_llc -> LLCResult
    diagnostics  failed chains, split-R̂, ESS, drift, validity rule
    exact        exact learning coefficients and models that have them
    finite_n     what an exact sampler reads at finite n and γ, for linear networks (exact HMC)
    calibration  calibrate_llc: settings at which the LLC is right, with the evidence
    calibrate    ε × nβ × γ sweeps and the grid selection rule
"""
from . import diagnostics, exact, finite_n
from .calibrate import CalibrationError, choose, sweep
from .calibration import Calibration, calibrate_llc
from .estimator import LLCError, LLCResult, default_nbeta, devinterp_nbeta, estimate_llc, select_params
from .sampler import SGLDSettings, SamplerError

__all__ = ["estimate_llc", "LLCResult", "LLCError", "SamplerError", "SGLDSettings",
           "default_nbeta", "devinterp_nbeta", "select_params",
           "calibrate_llc", "sweep", "choose", "Calibration", "CalibrationError",
           "diagnostics", "exact", "finite_n"]
