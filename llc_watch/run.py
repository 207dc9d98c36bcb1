"""The run folder owns its layout: where every table and result lives, and what columns each table has.

    runs/NAME/
      config.json                    the run's config (RunConfig, or a bring-your-own run's source)
      checkpoints/step_*.safetensors llc_watch checkpoints (a bring-your-own run reads the user's folder)
      metrics.csv                    training curves (written by `llc-watch train`)
      <table>.csv                    one table per analysis (schema declared by the analysis)
      results/<analysis>/            one result file per (checkpoint, settings): the resumable truth

Every table has a declared `TableSchema`; `Run.write_table` refuses a frame whose columns drift from
it, and `Run.table` says which command makes a table that is not there (or is empty).

    >>> s = TableSchema("demo", "demo.csv", "llc-watch demo RUN",
    ...                 (Column("step", "int"), Column("value", "float", "the measurement")))
    >>> s.check(pd.DataFrame({"step": [0, 1], "value": [1.0, 2.0]}))
    >>> s.check(pd.DataFrame({"step": [0], "valu": [1.0]}))          # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    TableError: demo.csv: missing column(s) ['value']; undeclared column(s) ['valu'] ...
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .checkpoints import Checkpoint, CheckpointError
from .checkpoints import Run as _CheckpointRun
from .io import atomic_write_csv

COLUMN_TYPES = ("int", "float", "bool", "str", "json")


class MissingAnalysisError(FileNotFoundError):
    """A table is not in the run folder (or is empty); the message names the command that makes it."""


class TableError(ValueError):
    """A table's columns do not match its declared schema."""


@dataclass(frozen=True)
class Column:
    """One declared column. type: int, float, bool, str or json (a JSON-encoded list/dict in a str cell).
    required: a writer must provide it (optional columns may be absent, never undeclared)."""

    name: str
    type: str
    doc: str = ""
    required: bool = True

    def __post_init__(self):
        if self.type not in COLUMN_TYPES:
            raise ValueError(f"column {self.name!r}: type {self.type!r} is not one of {COLUMN_TYPES}")


@dataclass(frozen=True)
class TableSchema:
    """A table's file, the command that makes it, and its columns in order."""

    name: str
    file: str
    command: str                 # with RUN where the run folder goes
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def check(self, df: pd.DataFrame) -> None:
        """Raise TableError naming missing and undeclared columns."""
        have = set(df.columns)
        missing = [c.name for c in self.columns if c.required and c.name not in have]
        extra = sorted(have - set(self.names))
        if missing or extra:
            raise TableError(f"{self.file}: " + "; ".join(
                p for p in (f"missing column(s) {missing}" if missing else "",
                            f"undeclared column(s) {extra}" if extra else "") if p)
                + f" (declared: {self.names})")

    def ordered(self, df: pd.DataFrame) -> pd.DataFrame:
        """Columns in declared order (result files store keys sorted; fresh rows do not)."""
        return df[[c for c in self.names if c in df.columns]]

    def command_for(self, run_dir) -> str:
        return self.command.replace("RUN", str(run_dir))


SCHEMAS: dict[str, TableSchema] = {}


def register_table(schema: TableSchema) -> TableSchema:
    """Declare a table (each analysis declares its own when its module is imported)."""
    old = SCHEMAS.get(schema.name)
    if old is not None and old != schema:
        raise ValueError(f"table {schema.name!r} is declared twice, differently")
    SCHEMAS[schema.name] = schema
    return schema


METRICS = register_table(TableSchema(
    "metrics", "metrics.csv", "llc-watch train (training writes metrics.csv)",
    (Column("step", "int"), Column("measure", "str", "train_loss, test_loss, train_acc, test_acc, ..."),
     Column("value", "float"))))


def schema(name: str) -> TableSchema:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise MissingAnalysisError(f"no table named {name!r}; declared tables: {', '.join(sorted(SCHEMAS))}") from None


class Run(_CheckpointRun):
    """A run folder: config, checkpoints, and every declared table.

    Subclasses the checkpoint-level Run (config, task, checkpoints(), metrics()) with the layout:
    `path(name)`, `table(name)`, `write_table(name, df)`, `results_dir(analysis)`.
    """

    def path(self, name: str) -> Path:
        return self.dir / schema(name).file

    def results_dir(self, analysis: str) -> Path:
        return self.dir / "results" / analysis

    def has_table(self, name: str) -> bool:
        p = self.path(name)
        return p.is_file() and p.stat().st_size > 0

    def table(self, name: str, required: bool = True) -> pd.DataFrame | None:
        """The table, checked against its schema. Absent or empty: MissingAnalysisError naming the command
        (or None when required=False)."""
        s = schema(name)
        p = self.dir / s.file
        text = p.read_text() if p.is_file() else ""
        if not text.strip():
            if not required:
                return None
            why = "not found" if not p.is_file() else "empty"
            raise MissingAnalysisError(f"{p} {why}: run `{s.command_for(self.dir)}`")
        df = pd.read_csv(io.StringIO(text))
        try:
            s.check(df)
        except TableError as e:
            raise TableError(f"{p}: {str(e).split(': ', 1)[1]}; it was written by another version: "
                             f"rerun `{s.command_for(self.dir)}` to rewrite it") from None
        return df

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every declared table the run holds (non-empty), by name."""
        return {name: self.table(name) for name in SCHEMAS if self.has_table(name)}

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        """Validate against the schema, order the columns, write atomically."""
        s = schema(name)
        s.check(df)
        return atomic_write_csv(self.dir / s.file, s.ordered(df))

    def read_json(self, file: str) -> dict | None:
        """A JSON file of the run (config.json, calibration.json, ...), None when absent; a corrupt one
        is one clear error naming it."""
        p = self.dir / file
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{p} cannot be read ({e}); delete it and rerun the command that wrote it") from None


# --------------------------------------------------------------------------------------------------
# Bring your own run: the user's checkpoint files + a problem (llc_watch.problem)

FOREIGN_FORMAT = "llc_watch/foreign-run-1"
DEFAULT_STEP_PATTERN = r"(\d+)(?!.*\d)"   # the last number in the file name


@dataclass(frozen=True)
class ForeignCheckpoint:
    """A picklable handle on one of the user's checkpoint files (safetensors, or a torch state dict
    read with weights_only=True, so no code in it runs), with the problem that gives it a model."""

    path: str
    step: int
    problem: str

    def _fail(self, why: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path} {why}; leave it out with --checkpoints")

    def load_state(self) -> dict:
        import torch
        try:
            if self.path.endswith(".safetensors"):
                from safetensors.torch import load_file
                state = load_file(self.path)
            else:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # safetensors, pickle (weights_only refuses code) or OS errors: one line
            raise self._fail(f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise self._fail(f"holds a {type(state).__name__}, not a state dict")
        return state

    def load_model(self, device="cpu"):
        """A copy of the problem's model with this checkpoint's weights (shapes checked)."""
        import copy
        from .problem import load_problem
        model = copy.deepcopy(load_problem(self.problem).model)
        state = self.load_state()
        own = model.state_dict()
        bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if bad or missing or extra:
            what = (f"shape of {bad[0]}: {tuple(state[bad[0]].shape)} here, {tuple(own[bad[0]].shape)} in the "
                    f"problem's model" if bad else f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}")
            raise self._fail(f"does not fit the model of problem {self.problem} ({what})")
        model.load_state_dict(state)
        return model.to(device).eval()

    def llc_problem(self):
        """(model, loss, data) for the LLC at this checkpoint."""
        from .problem import load_problem
        p = load_problem(self.problem)
        return self.load_model(), p.loss, p.data

    def fingerprint(self) -> str:
        return Checkpoint.fingerprint(self)


class ForeignTask:
    """What a bring-your-own run says about its task: a name, and no feature labels."""

    def __init__(self, problem: str):
        self.name = f"problem {problem}"
        self.features: dict = {}


class ForeignRun(Run):
    """A run folder over the user's own checkpoints: config.json names the problem, the checkpoint
    folder and the step pattern; tables and results live in the run folder as for any run."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        spec = self.read_json("config.json") or {}
        if spec.get("format") != FOREIGN_FORMAT:
            raise CheckpointError(f"{self.dir} is not a bring-your-own run folder")
        self.spec = spec
        self.config = None

    @property
    def task(self):
        return ForeignTask(self.spec["problem"])

    def checkpoints(self, steps=None):
        import re
        folder = Path(self.spec["checkpoint_dir"])
        pattern = re.compile(self.spec.get("step_pattern") or DEFAULT_STEP_PATTERN)
        found: dict[int, ForeignCheckpoint] = {}
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            if p.suffix not in (".safetensors", ".pt", ".pth", ".bin") or p.name.startswith("."):
                continue
            m = pattern.search(p.name)
            if not m:
                continue
            step = int(m.group(1) if m.groups() else m.group(0))
            if step in found:
                raise CheckpointError(f"{p} and {found[step].path} both read as step {step}; "
                                      "give --step-pattern with one group that captures the step")
            found[step] = ForeignCheckpoint(str(p.resolve()), step, self.spec["problem"])
        if not found:
            raise CheckpointError(f"no checkpoint files (.safetensors, .pt, .pth, .bin) with a step in their name "
                                  f"in {folder}")
        if steps is None:
            return [found[s] for s in sorted(found)]
        missing = [s for s in steps if s not in found]
        if missing:
            raise CheckpointError(f"{folder} has no checkpoint at step(s) {missing}; available: {sorted(found)}")
        return [found[s] for s in steps]

    def metrics(self):
        raise MissingAnalysisError(f"{self.dir} is a bring-your-own run: it has no training metrics")


def create_foreign_run(out: str | Path, problem: str, checkpoint_dir: str | Path,
                       step_pattern: str | None = None) -> ForeignRun:
    """Make (or reopen) a run folder over the user's checkpoints. The problem is imported and checked,
    and the checkpoints listed, before anything is written.

        >>> run = create_foreign_run("runs/mine", "mypkg.problem:make", "ckpts/")   # doctest: +SKIP
        >>> compute_llc(run)                                                         # doctest: +SKIP
    """
    from .io import atomic_write_json
    from .problem import load_problem
    load_problem(problem)
    out = Path(out)
    spec = {"format": FOREIGN_FORMAT, "problem": problem, "checkpoint_dir": str(Path(checkpoint_dir).resolve()),
            "step_pattern": step_pattern}
    old = Run.read_json(_Folder(out), "config.json") if (out / "config.json").is_file() else None
    if old is not None and old != spec:
        raise CheckpointError(f"{out} already holds a different run ({old.get('problem') or 'an llc_watch run'}); "
                              "give another --out")
    probe = ForeignRun.__new__(ForeignRun)
    probe.dir, probe.spec, probe.config = out, spec, None
    probe.checkpoints()                      # a clear error before the folder is made
    if old is None:
        atomic_write_json(out / "config.json", spec)
    return ForeignRun(out)


class _Folder:
    def __init__(self, d):
        self.dir = Path(d)


def open_run(run_dir: str | Path) -> Run:
    """The run folder at `run_dir`: an llc_watch run, or a bring-your-own one (a clear error when neither)."""
    p = Path(run_dir) / "config.json"
    if p.is_file():
        try:
            if json.loads(p.read_text()).get("format") == FOREIGN_FORMAT:
                return ForeignRun(run_dir)
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass   # Run says what is wrong with it
    return Run(run_dir)


__all__ = ["Run", "open_run", "ForeignRun", "ForeignCheckpoint", "create_foreign_run", "Checkpoint", "TableSchema", "Column", "SCHEMAS", "register_table", "schema",
           "MissingAnalysisError", "TableError", "METRICS"]
