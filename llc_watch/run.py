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


def open_run(run_dir: str | Path) -> Run:
    """The run folder at `run_dir` (a clear error when it is not one)."""
    return Run(run_dir)


__all__ = ["Run", "open_run", "Checkpoint", "TableSchema", "Column", "SCHEMAS", "register_table", "schema",
           "MissingAnalysisError", "TableError", "METRICS"]
