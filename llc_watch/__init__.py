"""llc_watch: watch a small transformer develop.

task -> model -> training -> per-checkpoint analyses -> tidy tables -> stages -> plots and report.

    >>> import llc_watch as lw
    >>> cfg = lw.RunConfig.from_preset("addition-tiny")
    >>> run = lw.train(cfg, "runs/tiny")                 # doctest: +SKIP
    >>> llc = lw.compute_llc("runs/tiny")                # doctest: +SKIP  one row per checkpoint

The public API is exactly the names in __all__.
"""
from .checkpoints import Checkpoint, CheckpointError, Run, open_run
from .config import CheckpointConfig, ConfigError, RunConfig, TaskConfig, TrainConfig
from .ablations import compute_ablations
from .executors import get_executor
from .jobs import make_executor, run_checkpoint_jobs
from .llc import Calibration, CalibrationError, LLCError, LLCResult, calibrate_run, compute_llc, estimate_llc, exact
from .pipeline import PipelineSettings, run_pipeline
from .probes import compute_probes, quiet_or_loud
from .report import write_report
from .stages import Boundary, StageMap, align_boundaries, find_boundaries, load_run_tables, stage_map
from .model import ModelConfig, Transformer
from .tasks import TASKS, Batch, FeatureSpec, Task, get_task
from .train import train

__all__ = [
    # tasks and model
    "TASKS", "Task", "Batch", "FeatureSpec", "get_task", "ModelConfig", "Transformer",
    # configuration and training
    "RunConfig", "TaskConfig", "TrainConfig", "CheckpointConfig", "ConfigError", "train",
    # run folders and per-checkpoint jobs
    "Run", "Checkpoint", "CheckpointError", "open_run", "run_checkpoint_jobs", "make_executor", "get_executor",
    # the LLC engine (any nn.Module, loss and data) and its calibration
    "estimate_llc", "LLCResult", "LLCError", "compute_llc", "calibrate_run", "Calibration", "CalibrationError",
    "exact",
    # probes and ablations
    "compute_probes", "quiet_or_loud", "compute_ablations",
    # stages, plots, report, the whole pipeline
    "find_boundaries", "align_boundaries", "stage_map", "StageMap", "Boundary", "load_run_tables",
    "write_report", "run_pipeline", "PipelineSettings",
]
