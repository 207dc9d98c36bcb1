"""The LLC at every checkpoint: one resumable job per checkpoint, on the pure engine in llc_watch.llc.

    >>> df = compute_llc("runs/addition")                              # doctest: +SKIP
    >>> df[["step", "value", "stderr", "valid"]]                      # doctest: +SKIP

Settings, lowest to highest priority: LLCSettings' defaults < the run's calibration.json choice
(from `calibrate_run`) < what the caller passes. Each job is keyed by (checkpoint bytes, settings),
so changed settings write new results beside the old (results/llc/), never mixed with them.
An invalid estimate has no `value` (its per-chain values stay in `llc_per_chain`, for diagnosis).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd
import torch

from llc_watch.llc.calibrate import SHARP_WARNING, SHARPEST_STEP_MAX, sharp_step_warnings, sharpest_step
from llc_watch.llc.calibration import STATUS_RANK as CALIBRATION_STATUS_RANK
from llc_watch.llc.estimator import estimate_llc, select_params
from llc_watch.llc.sampler import PRECISIONS, SAMPLERS
from llc_watch.run import Column, Run, TableSchema, register_table
from llc_watch.signals import Signal

from .base import Analysis, run_analysis
from .warning_groups import group_step_warnings
from llc_watch.settings import SettingsBase, SettingsError

CALIBRATION_FILE = "calibration.json"
BACKENDS = ("ours", "devinterp")
# our estimator's options that devinterp's llc() has no counterpart for
DEVINTERP_UNUSED = ("steps_between_draws", "eval_size", "min_healthy_fraction", "observe_every", "observe_size",
                    "stack_checkpoints")


@dataclass(frozen=True)
class LLCSettings(SettingsBase):
    epsilon: float = 1e-4             # SGLD step size ε (calibrate: `llc-watch calibrate RUN`)
    nbeta: Optional[float] = None     # inverse temperature nβ; None: n/log n with n the data size
    gamma: float = 100.0              # localisation strength γ
    chains: int = 4                   # SGLD chains (sampled at once)
    draws: int = 200                  # draws per chain after burn-in
    burn_in: int = 100                # steps discarded before the draws
    steps_between_draws: int = 1      # thinning
    batch_size: int = 32              # minibatch size for SGLD gradients
    sampler: str = "sgld"             # update rule: sgld | rmsprop_sgld
    seed: int = 0                     # sampler seed
    n_data: int = 4096                # examples drawn for runs trained on fresh samples (n_train = 0)
    eval_size: Optional[int] = None   # examples for L_n(w*); None: all of the data
    params: Optional[tuple[str, ...]] = None  # weight-restricted LLC: names, globs or head:L.H; None: all
    device: str = "auto"              # auto | cpu | cuda (resolved where each job runs)
    threads: int = 0                  # torch CPU threads in the job; 0: leave torch's default
    min_healthy_fraction: float = 0.75  # an estimate needs this share of its chains healthy to be valid
    batch_control: bool = True        # subtract the batch loss at w* per draw (a control variate)
    per_chain_batches: bool = True    # every chain its own minibatch stream (independent chains)
    terms_per_example: Optional[float] = None  # loss terms per example; None: the task's answer tokens per
                                      # example, so nβ = terms·n/log n puts β = 1/log n on the total NLL
    observe_every: Optional[int] = None  # every k steps the loss on one fixed batch, the low-noise observable
                                      # R̂ and ESS are computed on; None: ~200 observations; 0: off (R̂/ESS
                                      # then read the minibatch trace, which hides slow mixing)
    observe_size: Optional[int] = None  # examples in that fixed batch (its forward pass is the observable's cost);
                                      # None: 1,024, fewer where that would cost over half the sampling (observe_size_for)
    probe_curvature: bool = True      # probe the loss's sharpest curvature h_max at each checkpoint (Hessian-vector
                                      # products on 128-512 examples, ~1/4 of the estimate's cost) and warn where SGLD's step along it,
                                      # ε·(nβ·h_max + γ), passes 1 (biased) or 4 (unstable)
    stack_checkpoints: Optional[bool] = None  # sample many checkpoints × chains in one pass; None: on a GPU
    precision: str = "fp32"           # matmuls while sampling: fp32 | tf32 (TF32 on CUDA; fp32 elsewhere) | bf16
                                      # (autocast); each agrees with fp32 within chain noise on exact-answer models
    backend: str = "ours"             # ours | devinterp: devinterp's reference llc() on the same checkpoints,
                                      # to cross-check (no diagnostics; valid = every chain finite)
    seed_per_checkpoint: bool = True  # every checkpoint samples with its own seed, derived from (seed, step):
                                      # independent errors across checkpoints, as the stage map's GP assumes
                                      # (the seed used is in llc.csv; stacked GPU passes keep each checkpoint's
                                      # own noise). False: `seed` everywhere (common noise across checkpoints)

    def validate(self):
        for name in ("draws", "batch_size"):
            self.at_least(name, 1)
        self.at_least("burn_in", 0)
        self.one_of("sampler", SAMPLERS)
        self.validate_shared()

    def validate_shared(self):
        """Every check but draws, burn_in, batch_size and sampler's, which a calibration may leave
        to its rule (None / "auto")."""
        for name in ("epsilon", "nbeta"):
            self.positive(name, allow_none=name == "nbeta")
        self.at_least("gamma", 0)
        for name in ("chains", "steps_between_draws", "n_data"):
            self.at_least(name, 1)
        self.at_least("threads", 0)
        self.at_least("eval_size", 1, allow_none=True)
        self.one_of("backend", BACKENDS)
        self.one_of("precision", PRECISIONS)
        if self.backend == "devinterp" and (self.params is not None or self.sampler not in ("sgld", "auto")):
            self._fail("backend", "devinterp runs plain SGLD on every weight here: leave params and sampler unset")
        if self.backend == "devinterp" and self.precision != "fp32":
            self._fail("precision", "the devinterp backend samples in fp32 only: leave precision at fp32")
        if self.backend == "devinterp":    # its llc() has no such option: refused, never ignored
            self.refuse_set(DEVINTERP_UNUSED, "the devinterp backend", ", or use backend ours")
        self.within("min_healthy_fraction", 0.0, 1.0)
        self.positive("terms_per_example", allow_none=True)
        self.at_least("observe_every", 0, allow_none=True)
        self.at_least("observe_size", 1, allow_none=True)
        self.device_name("device")

    def refuse_set(self, names, who: str, alternative: str) -> None:
        """One line naming the settings among `names` set away from their LLCSettings defaults, which
        `who` does not use (a setting a path cannot honour is refused, never silently ignored)."""
        given = [k for k in names if getattr(self, k) != LLCSettings.__dataclass_fields__[k].default]
        if given:
            self._fail(given[0], f"{who} does not use {', '.join(given)}: leave "
                                 f"{'it' if len(given) == 1 else 'them'} unset{alternative}")


ESTIMATOR_KEYS = ("epsilon", "nbeta", "gamma", "chains", "draws", "burn_in", "steps_between_draws",
                  "batch_size", "sampler", "seed", "eval_size", "params", "device",
                  "min_healthy_fraction", "batch_control", "per_chain_batches", "terms_per_example",
                  "observe_every", "observe_size", "precision")

_S, _C = "setting", "column"
LLC_TABLE = register_table(TableSchema("llc", "llc.csv", "llc-watch llc RUN", (
    Column("step", "int"), Column("measure", "str", "always 'llc'"),
    Column("value", "float", "the LLC estimate: mean over healthy chains; empty when the estimate is invalid"),
    Column("stderr", "float", "standard error over chains"), Column("valid", "bool"),
    Column("n_healthy", "int", "chains that did not fail"), Column("chains", "int", "chains sampled"),
    Column("llc_per_chain", "json", "per-chain LLC values (kept for invalid estimates too)"),
    Column("failed_chains", "json", "per chain: null or why it failed"),
    Column("init_loss", "float", "L_n(w*)"), Column("rhat", "float", "split-R-hat"), Column("ess", "float"),
    Column("drift", "float", "second-half minus first-half LLC"), Column("drifting", "bool"),
    Column("negative", "bool"), Column("warnings", "json", "list of warning lines"),
    Column("epsilon", "float", _S), Column("nbeta", "float", _S), Column("gamma", "float", _S),
    Column("draws", "int", _S), Column("burn_in", "int", _S), Column("batch_size", "int", _S),
    Column("sampler", "str", _S), Column("seed", "int", _S), Column("n", "int", _S),
    Column("n_params_sampled", "int", _S), Column("params", "json", _S),
    Column("terms_per_example", "float", _S, required=False),
    Column("nbeta_rule", "str", "how nβ was set (the definition used)", required=False),
    Column("mean_loss_trace", "json", "sampled loss per step, mean over chains"),
    Column("draws_per_chain", "int"), Column("sampling_s", "float"),
    Column("backend", "str", _S, required=False),
    Column("sgld_steps", "int", "SGLD steps spent: chains x (burn-in + draws x thinning), summed over the "
           "estimates pooled", required=False),
    Column("h_max", "float", "the loss's sharpest Hessian curvature at w* (probe_curvature)", required=False),
    Column("sharpest_step", "float", "ε·(nβ·h_max + γ), SGLD's step along that direction: biased above 1, "
           "unstable above 4 (plain SGLD only)", required=False),
    Column("estimates", "json", "adaptive runs (--adaptive): the estimates pooled at this checkpoint, each "
           "{draws, seed, value, stderr}; the row's value/stderr are their inverse-variance mean", required=False),
)))
SETTING_COLUMNS = [c.name for c in LLC_TABLE.columns if c.doc == _S] + ["chains"]


# --- the problem at one checkpoint ------------------------------------------------------------------

def llc_data(task, cfg, n_data: int):
    """The data the LLC is measured on: the run's own training set when it has one (n = its size),
    else n_data fresh examples from a seed of the run (the model trained on fresh samples)."""
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


def checkpoint_problem(checkpoint, settings: dict):
    """(settings with defaults, model, loss_fn, data) for sampling at one checkpoint: what the LLC
    job and the calibration job share."""
    s = {**LLCSettings().to_dict(), **settings}
    if s.get("threads"):
        torch.set_num_threads(int(s["threads"]))
    if hasattr(checkpoint, "llc_problem"):   # a bring-your-own checkpoint brings its own problem
        model, loss_fn, data = checkpoint.llc_problem()
        if s.get("terms_per_example") is None:
            s["terms_per_example"] = answer_terms(data)
        return s, model, loss_fn, data
    cfg = checkpoint.config()
    task = cfg.make_task()
    model = checkpoint.load_model()
    data = llc_data(task, cfg, s["n_data"])
    if s.get("terms_per_example") is None:
        s["terms_per_example"] = answer_terms(data)
    return s, model, (lambda m, b: task.loss(m(b.tokens), b)), data


def answer_terms(data) -> float:
    """Loss terms per example of a task batch: its answer tokens (the task loss is a mean over
    them, so nβ = terms·n/log n puts β = 1/log n on the data set's total NLL; see
    llc.estimator.nbeta_definition). 1 for data without a loss mask."""
    mask = getattr(data, "loss_mask", None)
    return float(mask.sum()) / len(data) if mask is not None and len(data) else 1.0


def _finite(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def devinterp_row(checkpoint, s: dict, model, loss_fn, data) -> dict:
    """The same row from devinterp's reference llc() (llc_watch.llc.devinterp_ref.devinterp_llc)."""
    import time
    from llc_watch.device import resolve_device
    from llc_watch.llc.devinterp_ref import devinterp_llc
    from llc_watch.llc.data import DataSource
    from llc_watch.llc.estimator import resolve_nbeta
    t0 = time.perf_counter()
    # the same temperature as ours: nβ = terms_per_example·n/log n unless given
    nbeta, _ = resolve_nbeta(s["nbeta"], len(DataSource(data)), s["batch_size"], s["terms_per_example"] or 1.0)
    r = devinterp_llc(model, loss_fn, data, epsilon=s["epsilon"], nbeta=nbeta, gamma=s["gamma"],
                      chains=s["chains"], draws=s["draws"], burn_in=s["burn_in"], batch_size=s["batch_size"],
                      seed=s["seed"], device=resolve_device(s["device"]))
    valid = all(math.isfinite(v) for v in r["llc_per_chain"])
    warnings = ["devinterp backend: no failed-chain, R-hat or drift diagnostics; valid = every chain finite"]
    return {
        "step": checkpoint.step, "measure": "llc", "value": _finite(r["llc_mean"]) if valid else None,
        "stderr": _finite(r["llc_stderr"]) if valid else None, "valid": valid,
        "n_healthy": sum(math.isfinite(v) for v in r["llc_per_chain"]), "chains": s["chains"],
        "llc_per_chain": json.dumps([_finite(v) for v in r["llc_per_chain"]]),
        "failed_chains": json.dumps([None if math.isfinite(v) else "non-finite" for v in r["llc_per_chain"]]),
        "init_loss": r["init_loss"], "rhat": None, "ess": None, "drift": None, "drifting": False,
        "negative": bool(valid and r["llc_mean"] < 0), "warnings": json.dumps(warnings),
        "epsilon": s["epsilon"], "nbeta": r["nbeta"], "gamma": s["gamma"], "draws": s["draws"],
        "burn_in": s["burn_in"], "batch_size": s["batch_size"], "sampler": "sgld", "seed": s["seed"], "n": r["n"],
        "n_params_sampled": sum(p.numel() for p in model.parameters()), "params": json.dumps(None),
        "mean_loss_trace": json.dumps([_finite(v) for v in r["loss_trace"]]), "draws_per_chain": s["draws"],
        "sampling_s": time.perf_counter() - t0, "backend": "devinterp", "sgld_steps": sgld_steps(s),
    }


def checkpoint_seed(settings: dict, step: int) -> int:
    """The sampler seed at one checkpoint: derived from (seed, step) when seed_per_checkpoint (the
    default), so checkpoints' errors are independent; `repeat` (the n-th estimate at this checkpoint,
    set by the adaptive driver) gives a fresh seed to each repeated estimate.

        >>> checkpoint_seed({"seed": 0}, 100) == checkpoint_seed({"seed": 0}, 100)
        True
        >>> len({checkpoint_seed({"seed": 0}, 100), checkpoint_seed({"seed": 0}, 200),
        ...      checkpoint_seed({"seed": 0, "repeat": 1}, 100)})
        3
        >>> checkpoint_seed({"seed": 7, "seed_per_checkpoint": False}, 100)
        7
    """
    from llc_watch.tasks.base import derive_seed
    seed, repeat = int(settings.get("seed", 0)), int(settings.get("repeat", 0) or 0)
    # 32 bits: what every backend's generator takes (numpy's legacy seeding refuses more)
    if settings.get("seed_per_checkpoint", True):
        return derive_seed(seed, "llc-checkpoint", int(step), repeat) & 0xFFFFFFFF
    return derive_seed(seed, "llc-repeat", repeat) & 0xFFFFFFFF if repeat else seed


def llc_job(checkpoint, settings: dict) -> list[dict]:
    """Estimate the LLC at one checkpoint; one tidy row (measure 'llc'). Top level: picklable.

    Chains that continue (the adaptive driver's refinements): settings `lineage` (a name for one set
    of chains at this checkpoint) and `segment` (0: fresh chains; k > 0: continue segment k − 1's
    chains from their saved final weights, so the settings' burn_in should be 0); `_state_dir`
    (plumbing, not part of the job's key) is where each segment's final weights are kept.
    """
    s, model, loss_fn, data = checkpoint_problem(checkpoint, settings)
    s["seed"] = checkpoint_seed(s, checkpoint.step)
    if s.get("backend") == "devinterp":
        return [devinterp_row(checkpoint, s, model, loss_fn, data)]
    kw = estimator_kwargs(s, model)
    lineage, segment, state_dir = s.get("lineage"), int(s.get("segment") or 0), s.get("_state_dir")
    if segment > 0:
        kw["init_weights"] = load_chain_state(state_dir, checkpoint.step, lineage, segment - 1)
    r = estimate_llc(model, loss_fn, data, **kw)
    if state_dir is not None and lineage is not None:
        save_chain_state(state_dir, checkpoint.step, lineage, segment, r.final_weights)
    row = llc_row(checkpoint, r)
    if s.get("probe_curvature", True) and segment == 0:     # continued chains: their first segment probed
        add_sharpest_step(row, model, loss_fn, data, s)
    if lineage is not None:
        row.update(lineage=str(lineage), segment=segment)
    return [row]


def probe_size(row: dict) -> int:
    """Examples for one checkpoint's curvature probe: a quarter of the estimate's own cost, between
    128 and 512. Why: the probe is up to 30 Hessian-vector products (each ≈ 2 gradients) on `size`
    examples, the estimate chains·SGLD steps·batch per-example gradients; the demo's 4 chains ×
    150 steps × 32 would spend 1.6× the estimate on a 512-example probe (5–23 s a checkpoint of its
    102k-parameter model), and a 128-example probe still reads h_max within 2× of it (345, 272,
    1,746 against 399, 280, 2,897 at steps 168, 378, 921): enough to say a step is past 1 or 4.

        >>> small = {"chains": 4, "draws": 100, "burn_in": 50, "batch_size": 32}
        >>> probe_size(small), probe_size({**small, "draws": 2000, "burn_in": 1000, "batch_size": 512})
        (128, 512)
    """
    work = int(row["chains"]) * (int(row["burn_in"]) + int(row["draws"])) * int(row["batch_size"])
    return int(min(512, max(128, work / (4 * 30 * 2))))


def add_sharpest_step(row: dict, model, loss_fn, data, s: dict) -> dict:
    """Probe the checkpoint's sharpest curvature h_max into its llc.csv row, with SGLD's step along
    that direction, ε·(nβ·h_max + γ), and a warning where it passes SHARPEST_STEP_MAX (1): a step
    that large biases λ̂ along that direction (≈ step/4 of its spread), and past 4 SGLD is unstable
    there, so λ̂ reflects the step size as much as the landscape. RMSProp-SGLD rescales every
    direction's step, so only h_max is recorded for it."""
    from llc_watch.llc.calibration import sharpest_curvature
    h = sharpest_curvature(model, loss_fn, data, params=resolve_params(model, s.get("params")),
                           device=None if s.get("device") == "auto" else s.get("device"), seed=int(s.get("seed", 0)),
                           size=probe_size(row))
    row["h_max"] = _finite(h)
    if row.get("sampler") != "sgld" or row["h_max"] is None:
        row["sharpest_step"] = None
        return row
    row["sharpest_step"] = sharpest_step(row["epsilon"], row["nbeta"], h, row["gamma"])
    cell = pd.DataFrame([{k: row[k] for k in ("epsilon", "nbeta", "gamma", "h_max", "sharpest_step")}])
    extra = sharp_step_warnings(cell)
    if extra:
        row["warnings"] = json.dumps(json.loads(row["warnings"]) + extra)
    return row


def chain_state_path(state_dir, step: int, lineage, segment: int):
    """Where one segment's final chain weights are kept: STATE_DIR/step_0000100-LINEAGE-SEGMENT.npy."""
    from pathlib import Path
    return Path(state_dir) / f"step_{int(step):07d}-{lineage}-{int(segment)}.npy"


def save_chain_state(state_dir, step: int, lineage, segment: int, weights) -> None:
    """Write a segment's final weights [chains, D] atomically (a plain .npy: loads without pickle)."""
    import io
    from llc_watch.io import atomic_write_bytes
    buf = io.BytesIO()
    np.save(buf, np.asarray(weights.detach().cpu().numpy() if hasattr(weights, "detach") else weights,
                            dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(chain_state_path(state_dir, step, lineage, segment), buf.getvalue())


def load_chain_state(state_dir, step: int, lineage, segment: int) -> torch.Tensor:
    """A saved segment's final weights, to continue its chains; a clear error when absent or unreadable."""
    path = None if state_dir is None else chain_state_path(state_dir, step, lineage, segment)
    try:
        if path is None:
            raise FileNotFoundError("no _state_dir given")
        return torch.from_numpy(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot continue the chains of step {step} ({lineage}, segment {segment}): their "
                         f"saved state {path} is missing or unreadable ({e}); rerun to start fresh chains") from None


def llc_row(checkpoint, r) -> dict:
    """The llc.csv row of one estimate (an LLCResult) at one checkpoint."""
    h, d = r.hyperparameters, r.diagnostics
    draws = [[tr[t] for t in r.draw_steps] for tr in r.loss_traces]
    mean_trace = [sum(col) / len(col) for col in zip(*r.loss_traces)]
    return {
        "step": checkpoint.step, "measure": "llc", "value": _finite(r.llc_mean) if r.valid else None,
        "stderr": _finite(r.llc_stderr) if r.valid else None, "valid": r.valid,
        "n_healthy": r.n_healthy, "chains": h["chains"],
        "llc_per_chain": json.dumps([_finite(v) for v in r.llc_per_chain]),
        "failed_chains": json.dumps([f for f in r.chain_failed]),
        "init_loss": r.init_loss, "rhat": _finite(d["rhat"]), "ess": _finite(d["ess"]),
        "drift": _finite(d["drift"]), "drifting": d["drifting"], "negative": d["negative"],
        "warnings": json.dumps(r.warnings),
        "epsilon": h["epsilon"], "nbeta": h["nbeta"], "gamma": h["gamma"], "draws": h["draws"],
        "burn_in": h["burn_in"], "batch_size": h["batch_size"], "sampler": h["sampler"],
        "seed": h["seed"], "n": h["n"], "n_params_sampled": h["n_params_sampled"],
        "params": json.dumps(h["params"]),
        "terms_per_example": h.get("terms_per_example"), "nbeta_rule": h.get("nbeta_rule"),
        "mean_loss_trace": json.dumps([_finite(v) for v in mean_trace]),
        "draws_per_chain": len(draws[0]) if draws else 0,
        "sampling_s": r.timing["sampling_s"], "backend": "ours",
        "sgld_steps": sgld_steps(h),
    }


def sgld_steps(h: dict) -> int:
    """SGLD steps behind one estimate: chains x (burn-in + draws x thinning)."""
    return int(h["chains"]) * (int(h["burn_in"]) + int(h["draws"]) * int(h.get("steps_between_draws", 1) or 1))


def estimate_checkpoints(checkpoints, settings: dict, *, block_size: int | None = None,
                         return_exceptions: bool = True) -> list:
    """The LLC at checkpoints of one run with the LLC job's settings, stacked: what
    `llc_job` computes for each checkpoint, as a list of LLCResult (or, with
    return_exceptions, the exception a checkpoint raised, in its place).

    For a driver: group the checkpoints whose jobs are not finished, call this once per group
    (on a GPU, all of them), then write each result through the job's own row builder and
    atomic result file, so resume and kill -9 behave as with one job per checkpoint.
    """
    checkpoints = list(checkpoints)
    if not checkpoints:
        return []
    problems = [checkpoint_problem(c, settings) for c in checkpoints]
    configs = {c.config().to_json() for c in checkpoints}
    if len(configs) != 1:
        raise ValueError("estimate_checkpoints: the checkpoints come from runs with different configs; "
                       "group them by run")
    s, model0, loss_fn, data = problems[0]
    kwargs = estimator_kwargs(s, model0)
    from llc_watch.llc.batched import estimate_llc_many
    # every checkpoint keeps its own seed (independent errors) and still shares the stacked pass:
    # its rows draw its own noise and minibatches (same results as llc_job at that checkpoint)
    seeds = [checkpoint_seed(s, c.step) for c in checkpoints]
    return estimate_llc_many([p[1] for p in problems], loss_fn, data, block_size=block_size,
                             return_exceptions=return_exceptions, seeds=seeds, **kwargs)


# --- run level -----------------------------------------------------------------------------------

def load_saved_calibration(run_dir) -> dict | None:
    """calibration.json as calibrate_run saved it (choice, warnings, per-checkpoint verdicts), or
    None when the run has not been calibrated; one without a choice is one line naming the fix."""
    from llc_watch.run import open_run
    run = run_dir if isinstance(run_dir, Run) else open_run(run_dir)
    data = run.read_json(CALIBRATION_FILE)
    if data is None:
        return None
    if not isinstance(data, dict) or "choice" not in data:
        from llc_watch.checkpoints import CheckpointError
        raise CheckpointError(f"{run.dir / CALIBRATION_FILE} has no 'choice'; delete it and rerun "
                              f"`llc-watch calibrate {run.dir}`")
    return data


def load_calibration(run_dir) -> dict | None:
    """The `choice` saved by calibrate_run, or None when the run has not been calibrated."""
    saved = load_saved_calibration(run_dir)
    return None if saved is None else saved["choice"]


# calibration statuses, best (0) to worst (calibrate_llc's, and the grid's no_plateau beside
# extrapolated): a run's status is its worst checkpoint's
STATUS_RANK = {**CALIBRATION_STATUS_RANK, "no_plateau": CALIBRATION_STATUS_RANK["extrapolated"]}


def worst_status(statuses) -> str:
    """The worst of several checkpoints' calibration statuses (an unknown one counts as untrusted)."""
    return max(statuses, key=lambda s: STATUS_RANK.get(s, 2))


def grid_status(choice: dict, warnings) -> str:
    """The grid method's status (llc.calibrate's rule): untrusted, no_plateau or plateau."""
    return ("untrusted" if choice.get("untrusted") else
            "no_plateau" if any("no plateau" in w for w in warnings) else "plateau")


def saved_calibration_status(saved: dict) -> str:
    """The status of a saved calibration.json (either method): plateau, no_plateau, extrapolated or
    untrusted, the worst over its checkpoints.

        >>> saved_calibration_status({"choice": {"untrusted": True}, "warnings": []})
        'untrusted'
        >>> saved_calibration_status({"choice": {}, "per_checkpoint": {"10": {"status": "plateau"},
        ...                                                           "90": {"status": "extrapolated"}}})
        'extrapolated'
    """
    per = saved.get("per_checkpoint")
    if per:
        return worst_status(p.get("status", "untrusted") for p in per.values())
    return grid_status(saved.get("choice") or {}, saved.get("warnings") or [])


def _as_bool(s: pd.Series) -> pd.Series:
    if s.dtype == bool:
        return s
    return s.astype(str).str.strip().str.lower().isin(["true", "1", "yes"])


def llc_rows(llc: pd.DataFrame) -> pd.DataFrame:
    """llc.csv with numeric value/stderr and a boolean `valid` (invalid rows have no value)."""
    v = llc.copy()
    v["value"] = pd.to_numeric(v["value"], errors="coerce")
    v["stderr"] = pd.to_numeric(v["stderr"], errors="coerce") if "stderr" in v else np.nan
    v["valid"] = (_as_bool(v["valid"]) if "valid" in v else True) & np.isfinite(v["value"])
    return v


def warning_lines(w) -> list[str]:
    """llc.csv stores each checkpoint's warnings as a JSON list."""
    if w is None or (isinstance(w, float) and np.isnan(w)) or str(w).strip() in ("", "[]", "nan"):
        return []
    try:
        parsed = json.loads(w) if isinstance(w, str) else w
    except json.JSONDecodeError:
        return [str(w)]
    return [str(x) for x in parsed] if isinstance(parsed, list) else [str(parsed)]


def estimate_warnings(df: pd.DataFrame) -> list[str]:
    """One line per checkpoint whose estimate is invalid or carries warnings."""
    out = []
    for _, row in df.iterrows():
        ws = warning_lines(row.get("warnings"))
        if ws:
            tag = "INVALID" if not _as_bool(pd.Series([row["valid"]])).iloc[0] else "warning"
            out.append(f"step {row['step']}: {tag}: " + "; ".join(ws))
    return out


class LLC(Analysis):
    name = "llc"
    Settings = LLCSettings
    schema = LLC_TABLE
    job = staticmethod(llc_job)
    run_level = ("stack_checkpoints",)   # how the jobs are computed, not what: same results, same keys
    help = "estimate the local learning coefficient at every checkpoint"
    description = ("Estimate the LLC at every checkpoint with localised SGLD, chains batched. Resumable: "
                   "finished checkpoints are skipped; changed settings are stored beside the old ones. "
                   "Settings default to the run's calibration.json (from `llc-watch calibrate`). Writes "
                   "llc.csv; an invalid estimate has no value, and a warning is printed for it.")

    def settings(self, run, given=None):
        calib = load_calibration(run) if run is not None else None
        if calib and isinstance(given, Mapping) and given.get("backend") == "devinterp":
            # the calibration's sampling options devinterp's llc() has no counterpart for are ours to drop
            calib = {k: v for k, v in calib.items() if k not in DEVINTERP_UNUSED}
            if calib.get("sampler", "sgld") != "sgld" and not {"sampler", "epsilon"} <= set(given):
                raise SettingsError(f"backend='devinterp': the run's calibration ({CALIBRATION_FILE}) chose "
                                    f"{calib['sampler']}, whose ε is not plain SGLD's; give --sampler sgld and an "
                                    "--epsilon for devinterp's llc(), or calibrate with --sampler sgld")
        return self.Settings.from_mapping(given, base=calib)

    def batch_job(self, run, settings):
        from llc_watch.device import resolve_device
        stack = settings.stack_checkpoints
        if stack is None:
            stack = resolve_device(settings.device).type == "cuda"
        if not stack or settings.backend != "ours":
            return None
        return llc_batch


    def cli_modes(self) -> dict:
        """Other ways the CLI runs this analysis: {flag: (help, its Settings, runner(run, settings,
        mode settings, checkpoints=, executor=, progress=) -> table)}."""
        from llc_watch.stages.adaptive import AdaptiveSettings
        from .llc_adaptive import adaptive_llc
        return {"adaptive": ("spend SGLD where the stage boundaries are: few draws everywhere, then more draws "
                             "(and skipped checkpoints) only where a boundary's interval is wide or its existence "
                             "uncertain; --draws is the most one checkpoint gets", AdaptiveSettings, adaptive_llc)}

    def signals(self, table):
        v = llc_rows(table)
        v = v[v["valid"]]
        g = v.groupby("step").agg(value=("value", "mean"), stderr=("stderr", "mean"))
        if not len(g):
            return {}
        return {"llc": Signal("llc", "llc", g.index.to_numpy(float), g["value"].to_numpy(float),
                              g["stderr"].to_numpy(float))}

    def invalid_steps(self, table) -> list[float]:
        v = llc_rows(table)
        return sorted(float(s) for s in v.loc[~v["valid"], "step"].unique())

    def warnings(self, table):
        v = llc_rows(table)
        out = []
        bad = self.invalid_steps(table)
        if bad:
            out.append(f"{len(bad)} of {v['step'].nunique()} LLC checkpoints are invalid and were left out of "
                       f"the LLC fit (steps {', '.join(f'{s:g}' for s in bad[:10])}{', ...' if len(bad) > 10 else ''})")
        sharp, per_step = [], []   # one line per kind of warning over every checkpoint, not one each
        for step, w in zip(v["step"], v["warnings"] if "warnings" in v else []):
            lines = warning_lines(w)
            sharp += [step for line in lines if SHARP_WARNING in line]
            per_step += [(step, line) for line in lines if SHARP_WARNING not in line]
        out += group_step_warnings(per_step, "LLC", v["step"].nunique())
        if sharp:
            sharp = sorted(set(sharp))
            col = v.loc[v["step"].isin(sharp)].get("sharpest_step")
            steps_ = None if col is None else pd.to_numeric(col, errors="coerce")
            worst = ("" if steps_ is None or not steps_.notna().any() else
                     f"at most {steps_.max():.3g}, step {v.loc[steps_.idxmax(), 'step']:g}; ")
            out.append(f"LLC at {len(sharp)} of {v['step'].nunique()} checkpoints (steps "
                       f"{', '.join(f'{s:g}' for s in sharp[:10])}{', ...' if len(sharp) > 10 else ''}): SGLD's step "
                       f"along the loss's sharpest direction, ε·(nβ·h_max + γ), is above {SHARPEST_STEP_MAX:g} ({worst}"
                       "above 4 SGLD is unstable there): those LLC levels reflect the step size as much as the "
                       "landscape (llc.csv: h_max, sharpest_step, warnings)")
        return out

    def stage_map_kwargs(self, table) -> dict:
        return {"llc_invalid_steps": self.invalid_steps(table)}

    def summary(self, run, table):
        s = table.attrs.get("settings")
        lines = []
        if "dense_sgld_steps" in table.attrs:   # an adaptive run: what it spent
            spent, dense = table.attrs["sgld_steps"], table.attrs["dense_sgld_steps"]
            lines.append(f"adaptive: {spent} SGLD steps = {spent / dense:.0%} of the dense run's {dense} "
                         f"({table.attrs.get('summary', '')}; see llc_adaptive.json)")
        if s is not None:
            saved = load_saved_calibration(run)
            source = (f"calibration.json [{saved_calibration_status(saved).replace('_', ' ').upper()}]" if saved
                      else "defaults [not calibrated]")
            def shown(k):   # a setting left to the estimator (nβ: n/log n) as the value llc.csv records
                v = getattr(s, k)
                if v is None and k in table.columns:
                    vals = pd.to_numeric(table[k], errors="coerce").dropna().unique()
                    v = "/".join(f"{x:.5g}" for x in vals[:3]) + (" (default)" if len(vals) else "")
                return f"{k}={v}"
            lines.append(f"settings from {source} + given: "
                         + ", ".join(shown(k) for k in ("epsilon", "nbeta", "gamma", "chains", "draws", "burn_in",
                                                        "batch_size", "sampler")))
        cols = [c for c in ("step", "value", "stderr", "valid", "rhat", "drift") if c in table.columns]
        if "dense_sgld_steps" in table.attrs:
            cols.insert(4, "draws")
        lines.append(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        return lines


def llc_batch(checkpoints, settings: dict) -> list:
    """llc_job for many checkpoints at once: checkpoints × chains stacked in one SGLD pass (per-chain
    values equal to one job per checkpoint on the same noise; tests/test_llc_batched.py)."""
    results = estimate_checkpoints(checkpoints, settings, return_exceptions=True)
    out = []
    for c, r in zip(checkpoints, results):
        if isinstance(r, BaseException):
            out.append(r)
            continue
        row = llc_row(c, r)
        if settings.get("probe_curvature", True):     # the model again: the stacked pass kept none
            s, model, loss_fn, data = checkpoint_problem(c, settings)
            add_sharpest_step(row, model, loss_fn, data, {**s, "seed": checkpoint_seed(s, c.step)})
        out.append([row])
    return out


LLC_ANALYSIS = LLC()


def compute_llc(run_dir, settings=None, checkpoints=None, executor=None, progress: bool = True) -> pd.DataFrame:
    """LLC at every (or the given) checkpoint of a run; writes RUN/llc.csv and returns the table.

    settings: a mapping of LLCSettings fields (or an LLCSettings). The frame's attrs carry
    'settings' and 'warnings' (one line per invalid or suspicious estimate).
    """
    df = run_analysis(LLC_ANALYSIS, run_dir, settings, checkpoints, executor, progress)
    df.attrs["warnings"] = estimate_warnings(df)
    return df
