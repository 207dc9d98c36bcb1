"""What the command line treats as the user's mistake: one line, exit status 2, no traceback."""
from __future__ import annotations

import errno

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


# errno -> (what it means for the path, what to do, whether it is the user's to fix: exit 2, else 1)
_OS_ADVICE = {
    errno.EROFS: ("is on a read-only file system", "use a writable folder (copy the run folder there and "
                  "run on the copy)", True),
    errno.EACCES: ("cannot be written or read (permission denied)", "fix its permissions (chmod u+rw) or use "
                   "a folder you own", True),
    errno.EPERM: ("cannot be changed (operation not permitted)", "fix its permissions or use a folder you own",
                  True),
    errno.ENOSPC: ("could not be written: no space left on the device", "free some space and rerun the same "
                   "command", False),
    errno.EDQUOT: ("could not be written: disk quota exceeded", "free some space and rerun the same command",
                   False),
    errno.EISDIR: ("is a folder where a file is needed", "give a file path", True),
    errno.ENOTDIR: ("is not a folder (a part of the path is a file)", "give a folder path", True),
    errno.EEXIST: ("already exists and is not a folder", "give a folder path, or move the file away", True),
    errno.ENOENT: ("does not exist", "check the path", True),
    errno.ENAMETOOLONG: ("is too long a name", "give a shorter path", True),
}


def describe_os_error(e: OSError) -> tuple[str, int]:
    """One line naming the path and what to do, and the exit status (2 for what the user can fix in
    what they asked for; 1 for the machine's trouble, e.g. a full disk).

    >>> describe_os_error(OSError(errno.EROFS, "Read-only file system", "/runs/a/llc.csv"))[0]
    '/runs/a/llc.csv is on a read-only file system: use a writable folder (copy the run folder there and run on the copy). Finished results are kept.'
    >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/runs/a/x.json"))[1]
    1
    """
    path = e.filename if e.filename is not None else "a file"
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    what, todo, users = _OS_ADVICE.get(e.errno, (f"failed: {e.strerror or e}", "check the path and rerun", False))
    return f"{path} {what}: {todo}. Finished results are kept.", (EXIT_USAGE if users else EXIT_FAILED)
