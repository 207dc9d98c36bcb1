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
from .jobs import make_executor, run_checkpoint_jobs
from .model import ModelConfig, Transformer
from .tasks import TASKS, Batch, FeatureSpec, Task, get_task
from .train import train

__all__ = [
    # tasks and model
    "TASKS", "Task", "Batch", "FeatureSpec", "get_task", "ModelConfig", "Transformer",
    # configuration and training
    "RunConfig", "TaskConfig", "TrainConfig", "CheckpointConfig", "ConfigError", "train",
    # run folders and per-checkpoint jobs
    "Run", "Checkpoint", "CheckpointError", "open_run", "run_checkpoint_jobs", "make_executor",
]
