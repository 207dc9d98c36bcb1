"""Run tables -> signals for the stage map. (The only part of `stages` that knows file names;
it moves into each analysis's `signals()` when the analyses get one shape.)
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from llc_watch.signals import Signal

from .stage_map import StageMap, stage_map

# --------------------------------------------------------------------------------------------------
# Run tables


class MissingAnalysisError(FileNotFoundError):
    """A table the stage map needs is not in the run folder; the message names the command to run."""


TABLE_FILES = {  # table -> (its file, the command that makes it)
    "metrics": ("metrics.csv", "llc-watch train (training writes metrics.csv)"),
    "llc": ("llc.csv", "llc-watch llc RUN"),
    "probes": ("probes.csv", "llc-watch probe RUN"),
    "ablations": ("ablations.csv", "llc-watch ablate RUN"),
    "calibration": ("calibration_sweep.csv", "llc-watch calibrate RUN"),
}


@dataclass
class RunTables:
    """The per-checkpoint tables of one run; a table that is not there is None, with a note in `missing`."""

    metrics: pd.DataFrame | None = None
    llc: pd.DataFrame | None = None
    probes: pd.DataFrame | None = None
    ablations: pd.DataFrame | None = None
    calibration: pd.DataFrame | None = None
    config: dict = field(default_factory=dict)
    run_dir: Path | None = None
    missing: dict = field(default_factory=dict)


def load_run_tables(run_dir: str | Path) -> RunTables:
    """Read whatever tables the run folder holds; say which are missing and the command that makes each.

        >>> t = load_run_tables("/nonexistent-run")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        MissingAnalysisError: ...
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingAnalysisError(f"run folder {run_dir} does not exist; train a run into it first")
    t = RunTables(run_dir=run_dir)
    for name, (fname, cmd) in TABLE_FILES.items():
        p = run_dir / fname
        if p.is_file():
            setattr(t, name, pd.read_csv(p))
        else:
            t.missing[name] = f"{fname} not found in {run_dir}: run `{cmd.replace('RUN', str(run_dir))}`"
    if (run_dir / "config.json").is_file():
        t.config = json.loads((run_dir / "config.json").read_text())
    if t.metrics is None and t.llc is None and t.probes is None and t.ablations is None:
        raise MissingAnalysisError(f"{run_dir} holds none of metrics.csv, llc.csv, probes.csv, "
                                   "ablations.csv; " + "; ".join(t.missing.values()))
    return t


def _as_bool(s: pd.Series) -> pd.Series:
    if s.dtype == bool:
        return s
    return s.astype(str).str.strip().str.lower().isin(["true", "1", "yes"])


def _need(df, cols, name):
    miss = [c for c in cols if c not in df.columns]
    if miss:
        raise ValueError(f"{name} table lacks columns {miss}; it has {list(df.columns)}")


def best_probe(probes: pd.DataFrame, measure: str = "accuracy", fallback: str | None = "r2") -> pd.DataFrame:
    """Best probe per (feature, step): max `measure` over layer, site and position, control == 'probe'.

    Features with no `measure` rows (numeric features have only r2) use `fallback` instead.
    Returns columns feature, step, value, layer, site, position (of the best probe), measure.
    """
    _need(probes, ["step", "feature", "measure", "value"], "probes")
    have = set(probes.loc[probes["measure"] == measure, "feature"])
    use = np.where(probes["feature"].isin(have), measure, fallback if fallback else measure)
    p = probes[probes["measure"] == use]
    if "control" in p.columns:
        p = p[p["control"].fillna("probe") == "probe"]
    p = p[np.isfinite(p["value"].astype(float))]
    if p.empty:
        return pd.DataFrame(columns=["feature", "step", "value", "layer", "site", "position"])
    idx = p.groupby(["feature", "step"])["value"].idxmax()
    keep = [c for c in ["feature", "step", "value", "layer", "site", "position", "measure"] if c in p.columns]
    return p.loc[idx, keep].sort_values(["feature", "step"]).reset_index(drop=True)


def probe_control(probes: pd.DataFrame, control: str = "shuffled", measure: str = "accuracy") -> pd.DataFrame:
    """The control's best value per (feature, step), e.g. the shuffled-label probe."""
    if "control" not in probes.columns:
        return pd.DataFrame(columns=["feature", "step", "value"])
    p = probes[(probes["measure"] == measure) & (probes["control"] == control)]
    return p.groupby(["feature", "step"], as_index=False)["value"].max()


def ablation_effect(ablations: pd.DataFrame, measure: str = "acc_drop", method: str = "projection") -> pd.DataFrame:
    """Largest projection-ablation effect per (feature, step) with its random-direction control.

    Returns feature, step, value, random_mean, random_std, excess (value - random_mean), site, position.
    """
    _need(ablations, ["step", "feature", "method", "measure", "value"], "ablations")
    a = ablations[(ablations["method"] == method) & (ablations["measure"] == measure)].copy()
    a = a[np.isfinite(a["value"].astype(float))]
    for c in ("random_mean", "random_std"):
        if c not in a.columns:
            a[c] = np.nan
    if a.empty:
        return pd.DataFrame(columns=["feature", "step", "value", "random_mean", "random_std", "excess"])
    a["excess"] = a["value"] - a["random_mean"].fillna(0.0)
    idx = a.groupby(["feature", "step"])["excess"].idxmax()
    keep = [c for c in ["feature", "step", "value", "random_mean", "random_std", "excess", "site", "position"]
            if c in a.columns]
    return a.loc[idx, keep].sort_values(["feature", "step"]).reset_index(drop=True)


def run_signals(tables: RunTables) -> dict[str, Signal]:
    """Every signal of a run, by name.

    Names: "llc" (valid rows only), train_loss/test_loss/train_acc/test_acc, "probe:<feature>" (best
    probe accuracy), "ablation:<feature>" (projection acc drop minus the random-direction mean).
    """
    out = {}
    if tables.metrics is not None and len(tables.metrics):
        m = tables.metrics
        _need(m, ["step", "measure", "value"], "metrics")
        for name in ("train_loss", "test_loss", "train_acc", "test_acc"):
            s = m[m["measure"] == name].groupby("step")["value"].mean()
            if len(s):
                out[name] = Signal(name, "loss", s.index.to_numpy(float), s.to_numpy(float),
                                   direction="down" if name.endswith("loss") else "up")
    if tables.llc is not None and len(tables.llc):
        v = _llc_valid(tables.llc)
        v = v[v["valid"] & np.isfinite(v["value"])]
        g = v.groupby("step").agg(value=("value", "mean"), stderr=("stderr", "mean"))
        if len(g):
            out["llc"] = Signal("llc", "llc", g.index.to_numpy(float), g["value"].to_numpy(float),
                                g["stderr"].to_numpy(float))
    if tables.probes is not None and len(tables.probes):
        for feat, g in best_probe(tables.probes).groupby("feature"):
            out[f"probe:{feat}"] = Signal(f"probe:{feat}", "onset", g["step"].to_numpy(float),
                                          g["value"].to_numpy(float), direction="up")
    if tables.ablations is not None and len(tables.ablations):
        for feat, g in ablation_effect(tables.ablations).groupby("feature"):
            out[f"ablation:{feat}"] = Signal(f"ablation:{feat}", "onset", g["step"].to_numpy(float),
                                             g["excess"].to_numpy(float), direction="up",
                                             extra={"random_std": g["random_std"].to_numpy(float)})
    return out


def _llc_valid(llc: pd.DataFrame) -> pd.DataFrame:
    _need(llc, ["step", "value"], "llc")
    v = llc.copy()
    v["value"] = pd.to_numeric(v["value"], errors="coerce")
    v["stderr"] = pd.to_numeric(v["stderr"], errors="coerce") if "stderr" in v else np.nan
    v["valid"] = _as_bool(v["valid"]) if "valid" in v else True
    if "measure" in v.columns:
        v = v[v["measure"].fillna("llc") == "llc"]
    return v


def _warning_lines(w) -> list[str]:
    """llc.csv stores each checkpoint's warnings as a JSON list; older tables as plain text."""
    if w is None or (isinstance(w, float) and np.isnan(w)) or str(w).strip() in ("", "[]", "nan"):
        return []
    try:
        parsed = json.loads(w) if isinstance(w, str) else w
    except json.JSONDecodeError:
        return [str(w)]
    return [str(x) for x in parsed] if isinstance(parsed, list) else [str(parsed)]


def run_stage_map(source, tolerance: float = 0.35, resamples: int = 100, seed: int = 0,
                  save: bool = False, **detect) -> StageMap:
    """The stage map of a run folder (str/Path) or a RunTables; `save=True` writes it into the run folder.

    Signals with too few points are skipped with a warning; invalid LLC checkpoints are left out of
    the fit and listed in `llc_invalid_steps`.
    """
    tables = source if isinstance(source, RunTables) else load_run_tables(source)
    warnings = list(tables.missing[k] for k in ("metrics", "llc", "probes", "ablations") if k in tables.missing)
    invalid_steps = []
    if tables.llc is not None and len(tables.llc):
        v = _llc_valid(tables.llc)
        bad = v[~v["valid"] | ~np.isfinite(v["value"])]
        invalid_steps = sorted(float(s) for s in bad["step"].unique())
        if invalid_steps:
            warnings.append(f"{len(invalid_steps)} of {v['step'].nunique()} LLC checkpoints are invalid and were "
                            f"left out of the LLC fit (steps {', '.join(f'{s:g}' for s in invalid_steps[:10])}"
                            f"{', ...' if len(invalid_steps) > 10 else ''})")
        if "warnings" in v.columns:
            for step, w in zip(v["step"], v["warnings"]):
                for line in _warning_lines(w):
                    warnings.append(f"LLC at step {step:g}: {line}")
    try:
        out = stage_map(run_signals(tables), tolerance, resamples, seed, warnings=warnings,
                        llc_invalid_steps=invalid_steps, **detect)
    except ValueError as e:
        raise MissingAnalysisError(f"{e}; " + "; ".join(tables.missing.values())) from None
    if save:
        if tables.run_dir is None:
            raise ValueError("save=True needs a run folder; pass its path, or call .save(run_dir)")
        out.save(tables.run_dir)
    return out


def load_stage_map(run_dir: str | Path) -> StageMap:
    """Read stage_map.json from a run folder (written by stage_map(..., save=True))."""
    p = Path(run_dir) / "stage_map.json"
    if not p.is_file():
        raise MissingAnalysisError(f"{p} not found: run `llc-watch stages {run_dir}`")
    return StageMap.from_dict(json.loads(p.read_text()))
