"""What the command line treats as the user's mistake: one line, exit status 2, no traceback."""
from __future__ import annotations

EXIT_USAGE, EXIT_FAILED = 2, 1


class UserError(Exception):
    """An error in what the user asked for; printed as one line."""


def user_errors() -> tuple[type[BaseException], ...]:
    from llc_watch.checkpoints import CheckpointError
    from llc_watch.config import ConfigError
    from llc_watch.device import DeviceError
    from llc_watch.executors import ExecutorConfigError, MissingEngineError
    from llc_watch.llc import CalibrationError, LLCError, SamplerError
    from llc_watch.model import ModelConfigError
    from llc_watch.problem import ProblemError
    from llc_watch.report import ReportError
    from llc_watch.run import MissingAnalysisError, TableError
    from llc_watch.settings import SettingsError
    from llc_watch.tasks import TaskConfigError
    return (UserError, ConfigError, CheckpointError, TaskConfigError, ModelConfigError, MissingAnalysisError,
            TableError, SettingsError, DeviceError, ReportError, ExecutorConfigError, MissingEngineError,
            CalibrationError, LLCError, SamplerError, ProblemError)
