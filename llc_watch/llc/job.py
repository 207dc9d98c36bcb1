"""The LLC at every checkpoint of a run: one resumable job per checkpoint.

    >>> df = compute_llc("runs/addition")                              # doctest: +SKIP
    >>> df[["step", "value", "stderr", "valid"]]                      # doctest: +SKIP

Settings, lowest to highest priority: DEFAULT_SETTINGS < the run's calibration.json choice (from
`calibrate_run`) < what the caller passes. Each job is keyed by (checkpoint bytes, settings), so
changed settings write new results beside the old (results/llc/), never mixed with them; a rerun
skips finished checkpoints; a killed driver loses nothing that finished (llc_watch.jobs).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import torch

from .estimator import estimate_llc

DEFAULT_SETTINGS: dict = {
    "epsilon": 1e-4,          # SGLD step size ε (calibrate: `llc-watch calibrate RUN`)
    "nbeta": None,            # None: n/log n with n = n_data (devinterp: batch/log batch)
    "gamma": 100.0,           # localisation strength γ
    "chains": 4,
    "draws": 200,
    "burn_in": 100,
    "steps_between_draws": 1,
    "batch_size": 32,
    "sampler": "sgld",        # sgld | rmsprop_sgld
    "seed": 0,
    "n_data": 4096,           # examples drawn for runs trained on fresh samples (n_train = 0)
    "eval_size": None,        # examples for L_n(w*); None = all n_data
    "params": None,           # weight restriction: names, glob patterns or "head:L.H"; None = all
    "device": "auto",         # auto | cpu | cuda
    "threads": 0,             # torch CPU threads in the job; 0 = leave torch's default
    "min_healthy_fraction": 0.75,
    "batch_control": True,    # subtract the batch loss at w* per draw (control variate)
    "per_chain_batches": True,  # every chain its own minibatch stream (independent chains)
    "terms_per_example": None,  # None: answer tokens per example of the LLC data (nβ = k·n/log n)
}
ESTIMATOR_KEYS = ("epsilon", "nbeta", "gamma", "chains", "draws", "burn_in", "steps_between_draws",
                  "batch_size", "sampler", "seed", "eval_size", "params", "device",
                  "min_healthy_fraction", "batch_control", "per_chain_batches", "terms_per_example")
CALIBRATION_FILE = "calibration.json"


def llc_data(task, cfg, n_data: int):
    """The data the LLC is measured on: the run's own training set when it has one (n = its
    size), else n_data fresh examples from a seed of the run (the model trained on fresh samples,
    so any fixed draw is as good as another)."""
    from llc_watch.tasks.base import derive_seed
    from llc_watch.train import TrainingData
    train_set = TrainingData(task, cfg).train_set
    if train_set is not None:
        return train_set
    return task.sample(int(n_data), derive_seed(cfg.seed, "llc-data"))


def head_masks(model, layer: int, head: int) -> dict[str, torch.Tensor]:
    """One attention head's weights in llc_watch's Transformer, as {parameter: bool mask}.

    W_QKV's output rows are laid out [q | k | v] × heads × d_head; W_O's input columns heads ×
    d_head. The head owns its q, k, v rows (weight and bias) and its W_O columns (W_O's bias is
    shared by all heads, so it is left out).

        >>> from llc_watch.model import ModelConfig, Transformer
        >>> m = Transformer(ModelConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=0, vocab_size=5, n_ctx=4))
        >>> {k: int(v.sum()) for k, v in head_masks(m, 0, 1).items()}   # 3·4 rows × 8, +12 bias, 8×4
        {'blocks.0.attn.W_QKV.weight': 96, 'blocks.0.attn.W_QKV.bias': 12, 'blocks.0.attn.W_O.weight': 32}
    """
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers or not 0 <= head < cfg.n_heads:
        raise ValueError(f"head:{layer}.{head} does not exist: the model has {cfg.n_layers} layers "
                         f"of {cfg.n_heads} heads")
    D, dh = cfg.d_model, cfg.d_model // cfg.n_heads
    rows = torch.zeros(3 * D, dtype=torch.bool)
    for part in range(3):
        rows[part * D + head * dh: part * D + (head + 1) * dh] = True
    cols = torch.zeros(D, dtype=torch.bool)
    cols[head * dh:(head + 1) * dh] = True
    p = f"blocks.{layer}.attn"
    return {f"{p}.W_QKV.weight": rows[:, None].expand(3 * D, D).clone(), f"{p}.W_QKV.bias": rows,
            f"{p}.W_O.weight": cols[None, :].expand(D, D).clone()}


def resolve_params(model, spec):
    """Settings' `params` -> estimate_llc's: None, or a list of names / glob patterns / "head:L.H"."""
    if spec is None:
        return None
    from .estimator import select_params
    items = [spec] if isinstance(spec, str) else list(spec)
    out: dict = {}
    for item in items:
        if item.startswith("head:"):
            try:
                layer, head = (int(x) for x in item[5:].split("."))
            except ValueError:
                raise ValueError(f"params {item!r}: write a head as head:LAYER.HEAD, e.g. head:0.1") from None
            for k, m in head_masks(model, layer, head).items():
                out[k] = m if k not in out or out[k] is None else (out[k] | m)
        else:
            out.update(select_params(model, item))
    return out


def estimator_kwargs(settings: dict, model=None) -> dict:
    kw = {k: settings[k] for k in ESTIMATOR_KEYS if k in settings}
    if kw.get("device") == "auto":
        kw["device"] = None
    if model is not None:
        kw["params"] = resolve_params(model, kw.get("params"))
    return kw


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def answer_terms(data) -> float:
    """Loss terms per example of a task batch: its answer tokens (the task loss is a mean over
    them, so nβ = terms·n/log n puts β = 1/log n on the data set's total NLL; see
    estimator.nbeta_definition). 1 for data without a loss mask."""
    mask = getattr(data, "loss_mask", None)
    return float(mask.sum()) / len(data) if mask is not None and len(data) else 1.0


def checkpoint_problem(checkpoint, settings: dict):
    """(settings with defaults, model, loss_fn, data) for sampling at one checkpoint: what the LLC
    job and the calibration job share."""
    s = {**DEFAULT_SETTINGS, **settings}
    if s.get("threads"):
        torch.set_num_threads(int(s["threads"]))
    cfg = checkpoint.config()
    task = cfg.make_task()
    model = checkpoint.load_model()
    data = llc_data(task, cfg, s["n_data"])
    if s.get("terms_per_example") is None:
        s["terms_per_example"] = answer_terms(data)
    return s, model, (lambda m, b: task.loss(m(b.tokens), b)), data


def llc_job(checkpoint, settings: dict) -> list[dict]:
    """Estimate the LLC at one checkpoint; one tidy row (measure 'llc'). Top level: picklable."""
    s, model, loss_fn, data = checkpoint_problem(checkpoint, settings)
    r = estimate_llc(model, loss_fn, data, **estimator_kwargs(s, model))
    h, d = r.hyperparameters, r.diagnostics
    draws = [[tr[t] for t in r.draw_steps] for tr in r.loss_traces]
    mean_trace = [sum(col) / len(col) for col in zip(*r.loss_traces)]
    return [{
        "step": checkpoint.step, "measure": "llc", "value": _finite(r.llc_mean),
        "stderr": _finite(r.llc_stderr), "valid": r.valid,
        "n_healthy": r.n_healthy, "chains": h["chains"],
        "llc_per_chain": json.dumps([_finite(v) for v in r.llc_per_chain]),
        "failed_chains": json.dumps([f for f in r.chain_failed]),
        "init_loss": r.init_loss, "rhat": _finite(d["rhat"]), "ess": _finite(d["ess"]),
        "drift": _finite(d["drift"]), "drifting": d["drifting"], "negative": d["negative"],
        "warnings": json.dumps(r.warnings),
        "epsilon": h["epsilon"], "nbeta": h["nbeta"], "gamma": h["gamma"], "draws": h["draws"],
        "burn_in": h["burn_in"], "batch_size": h["batch_size"], "sampler": h["sampler"],
        "seed": h["seed"], "n": h["n"], "n_params_sampled": h["n_params_sampled"],
        "terms_per_example": h["terms_per_example"], "nbeta_rule": h["nbeta_rule"],
        "params": json.dumps(h["params"]),
        "mean_loss_trace": json.dumps([_finite(v) for v in mean_trace]),
        "draws_per_chain": len(draws[0]) if draws else 0,
        "sampling_s": r.timing["sampling_s"],
    }]


def load_calibration(run_dir) -> dict | None:
    """The `choice` saved by calibrate_run, or None when the run has not been calibrated."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["choice"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{path} cannot be read ({e}); delete it and rerun `llc-watch calibrate`") from None


def resolve_settings(run_dir, settings: dict | None = None) -> tuple[dict, str]:
    """(settings to use, where they came from): defaults < calibration.json < settings."""
    calib = load_calibration(run_dir)
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    unknown = set(given) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ValueError(f"unknown LLC setting(s) {sorted(unknown)}; known: {sorted(DEFAULT_SETTINGS)}")
    source = "calibration.json" if calib else "defaults (run `llc-watch calibrate` first)"
    merged = {**DEFAULT_SETTINGS, **(calib or {}), **given}
    return merged, source + (" + overrides" if given else "")


def _checkpoints(run, checkpoints):
    if checkpoints is None:
        return run.checkpoints()
    if all(isinstance(c, int) for c in checkpoints):
        return run.checkpoints(list(checkpoints))
    return list(checkpoints)


def compute_llc(run_dir, settings: dict | None = None, checkpoints=None, executor=None,
                progress: bool = True) -> pd.DataFrame:
    """LLC at every (or the given) checkpoint of a run; writes RUN/llc.csv and returns the table.

    checkpoints: None (all), a list of steps, or Checkpoint objects. executor: any
    concurrent.futures.Executor (default serial). The DataFrame's attrs carry 'settings',
    'settings_source', 'failures' (one line per failed checkpoint) and 'warnings'
    (one line per invalid or suspicious estimate) for the CLI to print.
    """
    from llc_watch.checkpoints import open_run
    from llc_watch.io import atomic_write_csv
    from llc_watch.jobs import run_checkpoint_jobs
    run = open_run(run_dir)
    s, source = resolve_settings(run_dir, settings)
    report = run_checkpoint_jobs(llc_job, _checkpoints(run, checkpoints), s,
                                 out_dir=Path(run_dir) / "results" / "llc", executor=executor,
                                 desc="llc", progress=progress)
    df = _ordered(report.table(), LLC_COLUMNS)
    atomic_write_csv(Path(run_dir) / "llc.csv", df)
    df.attrs.update(settings=s, settings_source=source, failures=[str(f) for f in report.failures],
                    warnings=estimate_warnings(df), summary=report.summary())
    return df


LLC_COLUMNS = ["step", "measure", "value", "stderr", "valid", "n_healthy", "chains", "llc_per_chain",
               "failed_chains", "init_loss", "rhat", "ess", "drift", "drifting", "negative", "warnings",
               "epsilon", "nbeta", "gamma", "draws", "burn_in", "batch_size", "sampler", "seed", "n",
               "n_params_sampled", "params", "mean_loss_trace", "draws_per_chain", "sampling_s"]


def _ordered(df: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    """Columns in a fixed order (result files store keys sorted; fresh rows do not)."""
    cols = [c for c in first if c in df.columns] + [c for c in df.columns if c not in first]
    return df[cols]


def estimate_warnings(df: pd.DataFrame) -> list[str]:
    """One line per checkpoint whose estimate is invalid or carries warnings."""
    out = []
    for _, row in df.iterrows():
        ws = json.loads(row["warnings"]) if isinstance(row.get("warnings"), str) else []
        if ws:
            tag = "INVALID" if not row["valid"] else "warning"
            out.append(f"step {row['step']}: {tag}: " + "; ".join(ws))
    return out
