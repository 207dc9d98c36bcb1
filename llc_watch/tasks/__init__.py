"""Task registry: every algorithmic task by name.

    >>> from llc_watch.tasks import get_task, TASKS
    >>> get_task("addition", n_bits=4).vocab
    ['0', '1', '+', '=', '<EOS>']

A new task is one module with a `Task` subclass (a dataclass of its settings) added to TASKS.
"""
from __future__ import annotations

import dataclasses

from . import graphs, icl_regression, sequences
from .arithmetic import Addition, Multiplication
from .base import Batch, FeatureSpec, Task, TaskConfigError, derive_seed
from .modular import ModularAddition

TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (Addition, Multiplication, ModularAddition, *graphs.TASK_CLASSES,
                              *sequences.TASK_CLASSES, *icl_regression.TASK_CLASSES)
}


def get_task(name: str, **settings) -> Task:
    """Build a task by registry name; unknown names or settings give a TaskConfigError."""
    if name not in TASKS:
        raise TaskConfigError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(settings) - known
    if unknown:
        raise TaskConfigError(
            f"task {name!r} has no setting(s) {sorted(unknown)}; its settings are {sorted(known)}")
    return cls(**settings)


__all__ = ["Batch", "FeatureSpec", "Task", "TaskConfigError", "TASKS", "get_task", "derive_seed"]
