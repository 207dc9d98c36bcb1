"""Executor kinds, their TOML option schema with defaults, errors, and the optional-engine import."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any


KINDS = ("serial", "process", "submitit-local", "slurm", "ray", "dask")
ALIASES = {"local": "serial"}  # `--executor local`: this machine (a process pool if --workers > 1)

# kind -> (module to import, extra that provides it)
_ENGINES = {"submitit-local": ("submitit", "slurm"), "slurm": ("submitit", "slurm"),
            "ray": ("ray", "ray"), "dask": ("distributed", "dask")}

# kind -> the TOML table its options live in (submitit-local reads [slurm], so one file tries a
# Slurm setup locally first)
SECTIONS = {"serial": "serial", "process": "process", "submitit-local": "slurm", "slurm": "slurm",
            "ray": "ray", "dask": "dask"}

# The schema: table -> {key: (default, meaning)}. Keys outside it are an error, except submitit's
# own `slurm_*` parameters, which are passed through to AutoExecutor.update_parameters.
OPTIONS: dict[str, dict[str, tuple[Any, str]]] = {
    "serial": {},
    "process": {
        "workers": (2, "worker processes"),
    },
    "slurm": {
        "folder": (None, "job logs and pickles; default RUN/logs/submitit (%j is the job id)"),
        "cpus_per_task": (1, "CPUs per job"),
        "gpus_per_node": (0, "GPUs per job"),
        "mem_gb": (None, "memory per job in GB (None: the partition's default)"),
        "timeout_min": (60, "time limit per job in minutes; a job that times out is requeued"),
        "slurm_partition": (None, "Slurm partition"),
        "slurm_array_parallelism": (256, "most array tasks running at once"),
        "max_in_flight": (None, "most jobs submitted and unfinished at once (None: all for "
                                "slurm, `workers` for submitit-local)"),
        "workers": (2, "submitit-local: jobs running at once"),
        "poll_s": (None, "seconds between status checks (default 0.5 local, 15 slurm)"),
        "setup": ([], "shell lines run before each job, e.g. ['source ~/venv/bin/activate']"),
    },
    "ray": {
        "address": (None, "cluster to join ('auto', 'ray://head:10001'); None starts a local one"),
        "num_cpus": (2, "local cluster only: CPUs it may use"),
        "num_gpus": (None, "local cluster only: GPUs it may use (None: detect)"),
        "cpus_per_job": (1, "CPUs reserved per job"),
        "gpus_per_job": (0, "GPUs reserved per job (fractions allowed)"),
        "max_retries": (3, "reruns of a job whose worker died (not of a job that raised)"),
        "runtime_env": (None, "Ray runtime_env for the workers (pip, env_vars, working_dir)"),
        "init": ({}, "other ray.init keyword arguments"),
    },
    "dask": {
        "address": (None, "scheduler to join ('tcp://host:8786'); None starts a LocalCluster"),
        "n_workers": (2, "LocalCluster only: worker processes"),
        "threads_per_worker": (1, "LocalCluster only: threads per worker"),
        "memory_limit": ("auto", "LocalCluster only: memory per worker"),
        "resources": (None, "per-job resources, e.g. {GPU = 1}; workers must advertise them"),
        "retries": (0, "reruns of a job that raised (lost workers are retried by the scheduler)"),
    },
}


class ExecutorConfigError(ValueError):
    """An executor kind or option that cannot work; the message names it and the valid choices."""


class MissingEngineError(ImportError):
    """The chosen engine's optional package is not installed; the message says which extra to install."""


class WorkerError(RuntimeError):
    """A job raised on a remote worker whose engine returns only the traceback text (submitit)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


class WorkerLostError(RuntimeError):
    """A job's worker died or the job was cancelled/timed out without a result; rerunning redoes it."""


def _require(kind: str):
    module, extra = _ENGINES[kind]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingEngineError(
            f"--executor {kind} needs the optional package {module!r}, which is not installed "
            f"({e}). Install it with: pip install 'llc_watch[{extra}]'") from None


# ---------------------------------------------------------------------------------------------
# options


def load_executor_options(path: str | Path) -> dict:
    """Read an executor config file (TOML): optional top-level `executor = KIND`, one table per engine.

        executor = "slurm"
        [slurm]
        cpus_per_task = 4
        gpus_per_node = 1
        slurm_partition = "gpu"

    Unknown tables or keys raise ExecutorConfigError naming the valid ones.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ExecutorConfigError(f"executor config {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ExecutorConfigError(f"executor config {path} is not valid TOML: {e}") from None
    for key, value in data.items():
        if key == "executor":
            if value not in KINDS and value not in ALIASES:
                raise ExecutorConfigError(f"{path}: executor = {value!r}; choose one of {', '.join(KINDS)}")
        elif key not in OPTIONS or not isinstance(value, dict):
            raise ExecutorConfigError(f"{path}: unknown table [{key}]; tables are "
                                      f"{', '.join(t for t in OPTIONS if OPTIONS[t])} (and `executor = KIND`)")
        else:
            _check_keys(key, value, where=str(path))
    return data


def _check_keys(section: str, opts: dict, where: str = "executor options") -> None:
    known = OPTIONS[section]
    bad = [k for k in opts if k not in known and not (section == "slurm" and k.startswith("slurm_"))]
    if bad:
        raise ExecutorConfigError(f"{where}: unknown [{section}] option(s) {bad}; valid: {', '.join(known)}"
                                  + (" and any submitit slurm_* parameter" if section == "slurm" else ""))


def executor_options(kind: str, options: dict | None = None) -> dict:
    """The options for `kind`, with defaults filled in. `options` is either a whole config file as
    returned by load_executor_options (the engine's table is picked) or the engine's table itself."""
    if kind not in KINDS:
        raise ExecutorConfigError(f"unknown executor {kind!r}; choose one of {', '.join(KINDS)}")
    section = SECTIONS[kind]
    options = dict(options or {})
    if any(isinstance(v, dict) and k in OPTIONS for k, v in options.items()) or "executor" in options:
        options = dict(options.get(section) or {})
    _check_keys(section, options)
    out = {k: v for k, (v, _) in OPTIONS[section].items()}
    out.update(options)
    return out


