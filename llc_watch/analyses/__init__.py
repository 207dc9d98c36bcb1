"""Per-checkpoint analyses, each one module with one `Analysis` and one line below.

    base.py         Analysis, REGISTRY, run_analysis (the driver), run_signals
    llc.py          the LLC (llc.csv)
    calibration.py  the SGLD calibration sweep (calibration_sweep.csv, calibration.json)
    probes.py       linear probes (probes.csv, probes_quiet.csv)
    ablations.py    probe-direction ablations (ablations.csv)
    fourier.py      Fourier progress measures, modular addition (fourier.csv)
    essential_dynamics.py  PCA of the outputs over checkpoints (essential_dynamics.csv; run-level)
    crosscoder.py   a crosscoder over snapshots (crosscoder_features.csv + side tables; run-level)
    stage_map.py    a run's stage map from every analysis's signals

Adding an analysis: its module, and one `register` line below (in the order the pipeline runs them).
"""
from .base import REGISTRY, Analysis, get_analysis, register, run_analysis, run_signals
from . import ablations, calibration, crosscoder, essential_dynamics, fourier, llc, probes

register(calibration.CALIBRATION_ANALYSIS)
register(llc.LLC_ANALYSIS)
register(probes.PROBES)
register(ablations.ABLATIONS)
register(fourier.FOURIER)
register(essential_dynamics.ESSENTIAL_DYNAMICS)
register(crosscoder.CROSSCODER)
from .ablations import compute_ablations
from .calibration import calibrate_run
from .crosscoder import compute_crosscoder
from .essential_dynamics import compute_essential_dynamics
from .fourier import compute_fourier
from .llc import compute_llc
from .probes import compute_probes
from .stage_map import load_stage_map, run_stage_map, tables_stage_map

__all__ = ["Analysis", "REGISTRY", "register", "get_analysis", "run_analysis", "run_signals", "compute_llc",
           "calibrate_run", "compute_probes", "compute_ablations", "compute_fourier", "compute_essential_dynamics", "compute_crosscoder", "run_stage_map",
           "load_stage_map", "tables_stage_map"]
