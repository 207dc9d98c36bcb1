"""llc_watch: watch a small transformer develop.

task -> model -> training -> per-checkpoint analyses -> tidy tables -> stages -> plots and report.

    >>> import llc_watch as lw
    >>> cfg = lw.RunConfig.from_preset("addition-tiny")
    >>> run = lw.train(cfg, "runs/tiny")                 # doctest: +SKIP
    >>> llc = lw.compute_llc("runs/tiny")                # doctest: +SKIP
    >>> sorted(lw.REGISTRY)                              # every registered analysis
    ['ablations', 'calibration', 'crosscoder', 'essential_dynamics', 'fourier', 'llc', 'probes']

The public API is exactly the names in __all__.
"""
from .checkpoints import Checkpoint, CheckpointError
from .config import CheckpointConfig, ConfigError, RunConfig, TaskConfig, TrainConfig
from .run import MissingAnalysisError, Run, TableSchema, open_run
from .settings import SettingsError
from .analyses import (REGISTRY, Analysis, calibrate_run, compute_ablations, compute_crosscoder,
                       compute_essential_dynamics, compute_fourier, compute_llc, compute_probes, load_stage_map,
                       run_analysis, run_stage_map)
from . import crosscoder
from .executors import get_executor
from .jobs import make_executor, run_checkpoint_jobs
from .llc import Calibration, CalibrationError, LLCError, LLCResult, calibrate_llc, estimate_llc, exact
from .llc.batched import estimate_llc_many
from .pipeline import PipelineSettings, run_pipeline
from .analyses.probes import quiet_or_loud
from .report import write_report
from .signals import Signal
from .stages import Boundary, StageMap, align_boundaries, find_boundaries, stage_map
from .model import ModelConfig, Transformer
from .tasks import TASKS, Batch, FeatureSpec, Task, get_task
from .train import train

__all__ = [
    # tasks and model
    "TASKS", "Task", "Batch", "FeatureSpec", "get_task", "ModelConfig", "Transformer",
    # configuration and training
    "RunConfig", "TaskConfig", "TrainConfig", "CheckpointConfig", "ConfigError", "train",
    # run folders and per-checkpoint jobs
    "Run", "Checkpoint", "CheckpointError", "open_run", "TableSchema", "MissingAnalysisError",
    "run_checkpoint_jobs", "make_executor", "get_executor",
    # analyses: one interface, one registry, one driver
    "Analysis", "REGISTRY", "run_analysis", "SettingsError",
    # the LLC engine (any nn.Module, loss and data) and its calibration
    "estimate_llc", "estimate_llc_many", "LLCResult", "LLCError", "calibrate_llc", "compute_llc", "calibrate_run",
    "Calibration", "CalibrationError", "exact",
    # features without labels, and a behavioural witness of stages
    "crosscoder", "compute_crosscoder", "compute_essential_dynamics",
    # probes, ablations, Fourier measures
    "compute_probes", "quiet_or_loud", "compute_ablations", "compute_fourier",
    # stages, plots, report, the whole pipeline
    "Signal", "find_boundaries", "align_boundaries", "stage_map", "StageMap", "Boundary", "run_stage_map",
    "load_stage_map", "write_report", "run_pipeline", "PipelineSettings",
]
