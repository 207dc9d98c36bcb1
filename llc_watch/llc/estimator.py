"""estimate_llc: the local learning coefficient of any PyTorch model at its current weights w*.

    λ̂ = nβ · (E_w[L_n(w)] − L_n(w*)),   w ~ localised tempered posterior (see sampler.py)

E_w is the mean minibatch loss over SGLD draws after burn-in, per chain, then averaged over the
healthy chains. L_n(w*) is computed once, deterministically, on a fixed seeded evaluation subset of
the data (size `eval_size`, default all of it), not from one noisy batch.

By default every chain draws its own seeded minibatch stream (per_chain_batches=True), so the
chains are independent and the stderr (their spread / √chains) includes the minibatch noise; the
batch control variate subtracts each chain's batch loss at w*. With one shared stream the common
noise is not in the cross-chain stderr, so `shared_noise_stderr` measures it and warns.

Diagnostics are computed on a low-noise observable, the loss at each chain's w on one fixed
evaluation batch every few steps (`observe_every`), not on the minibatch trace (diagnostics.py).

Default nβ: terms_per_example · n / log n with n = len(data) (`nbeta_definition` says why and
how it relates to devinterp's batch_size / log(batch_size)). Pass nbeta="devinterp" for theirs,
or a number. The LLC scales with the nβ used, so compare curves only at equal nβ.

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(2000, 3); y = x @ torch.tensor([1., -2., .5]) + torch.randn(2000)
    >>> model = torch.nn.Linear(3, 1, bias=False)
    >>> model.weight.data = torch.linalg.lstsq(x, y[:, None]).solution.T   # w* = least squares
    >>> mse = lambda m, b: 0.5 * ((m(b[0]).squeeze(-1) - b[1]) ** 2).mean()
    >>> r = estimate_llc(model, mse, (x, y), epsilon=2e-4, gamma=1.0, chains=4, draws=300,
    ...                  burn_in=100, batch_size=200, seed=0)
    >>> r.valid, abs(r.llc_mean - 1.5) < 0.5          # regular model: λ = d/2 = 1.5
    (True, True)
"""
from __future__ import annotations

import copy
import fnmatch
import json
import math
import time
import warnings as pywarnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import control
from . import diagnostics as dg
from .data import ChainMinibatchStreams, DataSource, MinibatchStream, device_batches, to_device
from .sampler import (RMSPROP_EPS, FlatParams, SGLDSettings, SamplerError, check_precision, fp32_loss, make_flat_loss,
                      matmul_precision, run_chains)

ParamsSpec = "None | str | list[str] | Callable[[str], bool] | dict[str, torch.Tensor | None]"


class LLCError(ValueError):
    """An LLC setting or input that cannot work; the message names it and what to do."""


@dataclass
class LLCResult:
    llc_mean: float                      # mean of the healthy chains' LLCs (NaN if none)
    llc_stderr: float                    # std of healthy chain LLCs / √(healthy chains)
    llc_per_chain: list[float]           # every chain's LLC (failed chains included, for show)
    chain_failed: list[str | None]       # None = healthy, else why the chain failed
    valid: bool                          # enough healthy chains and a finite estimate
    warnings: list[str]                  # what the CLI prints; empty when all is well
    init_loss: float                     # L_n(w*)
    init_loss_method: dict               # how L_n(w*) was computed (eval set size, seed)
    loss_traces: list[list[float]]       # [C][T] minibatch loss at every step, burn-in included
                                         # (raw; with batch_control the estimate uses
                                         # loss − diagnostics["center_loss_trace"] + init_loss)
    draw_steps: list[int]                # steps whose losses enter the estimate
    hyperparameters: dict                # every setting used
    diagnostics: dict                    # rhat, ess, drift, negative, mala, ...
    timing: dict = field(default_factory=dict)
    final_weights: torch.Tensor | None = field(default=None, repr=False, compare=False)
                                         # [C, D] each chain's last w (not serialised)

    @property
    def n_healthy(self) -> int:
        return sum(f is None for f in self.chain_failed)

    def to_dict(self) -> dict:
        """JSON-safe dict (NaN/Inf become None)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "final_weights"}
        return _json_safe(copy.deepcopy(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def summary(self) -> str:
        flag = "" if self.valid else "  INVALID"
        return (f"LLC {self.llc_mean:.4g} ± {self.llc_stderr:.2g} "
                f"({self.n_healthy}/{len(self.chain_failed)} healthy chains){flag}")

    def __repr__(self) -> str:
        # the dataclass's own repr printed every loss trace (10,000 characters for 2 chains × 60
        # steps): in a notebook the result should read like its summary, the fields one dot away
        h = self.hyperparameters
        run = f"{len(self.chain_failed)} chains × {h.get('draws', '?')} draws, ε={h.get('epsilon', float('nan')):.3g}"
        warn = f"; {len(self.warnings)} warning(s), first: {self.warnings[0]!r}" if self.warnings else ""
        return f"<LLCResult {self.summary()}; {run}{warn}>"


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def default_nbeta(n: int) -> float:
    """Our default nβ = n / log n (n = training-set size)."""
    if n < 2:
        raise LLCError(f"default nβ = n/log n needs n >= 2 examples, got n={n}; pass nbeta")
    return n / math.log(n)


def resolve_nbeta(nbeta, n: int, batch_size: int, terms_per_example: float = 1.0) -> tuple[float, str]:
    """(nβ, the rule in words). See `estimate_llc`'s nbeta and `nbeta_definition`."""
    k = float(terms_per_example)
    if not (math.isfinite(k) and k > 0):
        raise LLCError(f"terms_per_example={terms_per_example!r} must be a positive number")
    if nbeta is None:
        return k * default_nbeta(n), (f"terms_per_example·n/log n = {k:g}·{n}/log {n} (llc_watch "
                                      "default: β = 1/log n on the data set's total NLL)")
    if nbeta == "devinterp":
        return devinterp_nbeta(batch_size), (f"batch_size/log(batch_size), batch_size={batch_size} "
                                             "(devinterp default)")
    if isinstance(nbeta, str):
        raise LLCError(f"nbeta={nbeta!r}: pass None (n/log n), 'devinterp', or a number")
    return float(nbeta), "given"


nbeta_definition = """nβ in llc_watch: the posterior is exp(−nβ·L(w) − (γ/2)‖w − w*‖²) with L = loss_fn's value,
the mean loss. By default nβ = k·n/log n, n = len(data) (examples), k = terms_per_example
(how many terms loss_fn averages per example, e.g. answer tokens per sequence), so that
nβ·L_n = β·(total negative log-likelihood of the data set) with Watanabe's WBIC temperature
β = 1/log n. The LLC so measured is the learning coefficient of the per-example likelihood.
devinterp's default is batch_size/log(batch_size): for batch 32 that is 9.2, against 263 here
for n = 2000 (k = 1); λ̂ scales with nβ away from the asymptotic regime, so compare numbers only
at one nβ definition (the result's hyperparameters state which: nbeta, nbeta_rule, beta,
terms_per_example)."""


def devinterp_nbeta(batch_size: int) -> float:
    """devinterp's default nβ = batch_size / log(batch_size)."""
    return batch_size / math.log(batch_size) if batch_size > 1 else 1.0


def select_params(model: nn.Module, params) -> dict[str, torch.Tensor | None]:
    """Resolve a weight restriction to {parameter name: None (whole) or bool mask}.

    params: None (every trainable parameter); a name or glob pattern ("blocks.0.attn.*") or a
    list of them; a predicate name -> bool; or {name: bool mask of the parameter's shape | None}
    to sample only a slice (e.g. one head's rows of W_QKV).
    """
    named = dict(model.named_parameters())
    if params is None:
        sel = {n: None for n, p in named.items() if p.requires_grad}
    elif isinstance(params, dict):
        sel = {}
        for n, m in params.items():
            if n not in named:
                raise LLCError(f"params: no parameter named {n!r}; the model has {list(named)}")
            if m is not None:
                m = torch.as_tensor(m).bool()
                if m.shape != named[n].shape:
                    raise LLCError(f"params[{n!r}]: mask shape {tuple(m.shape)} != parameter shape "
                                   f"{tuple(named[n].shape)}")
            sel[n] = m
    elif callable(params):
        sel = {n: None for n in named if params(n)}
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        sel = {}
        for pat in patterns:
            hits = [n for n in named if n == pat or fnmatch.fnmatchcase(n, pat)]
            if not hits:
                raise LLCError(f"params: {pat!r} matches no parameter; the model has {list(named)}")
            sel.update({n: None for n in hits})
    if not sel:
        raise LLCError("params selects no parameters; nothing to sample")
    return sel


def _resolve_device(device, model):
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


OBSERVE_SIZE_MAX = 1024   # the observable's fixed batch where it is cheap (the exact-answer models' sizes)
OBSERVE_SIZE_MIN = 128    # ... and never smaller: a fixed batch this size still ranks draws by their loss
OBSERVE_COST_MAX = 0.5    # its forward passes may cost at most this share of the sampling's steps


def observe_size_for(batch_size: int, observe_every: int) -> int:
    """Examples in the observable's fixed batch when none is given: OBSERVE_SIZE_MAX, fewer where its
    forward pass, every `observe_every` steps, would cost more than OBSERVE_COST_MAX of the sampling.

    Why: a step costs a forward and a backward pass on `batch_size` examples per chain (≈ 3 forwards
    of B), an observation one forward on s examples per chain every k steps, so the share is
    s/(3·B·k). At a transformer's batch of 32 and k = 5, 1,024 examples cost more than the sampling
    itself (a calibration pilot on the addition demo's 102k-parameter model, 2 chains, one thread:
    184 ms a step against 42 ms unobserved; 58 ms with 240 examples; benchmarks/bench_observable.py). The observable is a fixed batch, a
    deterministic function of w, whatever its size: its job is to see the chains move (R̂, ESS),
    which a smaller batch does as well while it ranks the draws by their loss.

        >>> observe_size_for(32, 5), observe_size_for(32, 1), observe_size_for(2048, 5)
        (240, 128, 1024)
    """
    share = OBSERVE_COST_MAX * 3 * max(int(batch_size), 1) * max(int(observe_every), 1)
    return int(min(OBSERVE_SIZE_MAX, max(OBSERVE_SIZE_MIN, share)))


@torch.no_grad()
def compute_init_loss(loss_of, w_star, src: DataSource, *, eval_size, eval_seed, chunk, device):
    """L_n(w*) on a fixed seeded subset of the data, evaluated in chunks (size-weighted mean)."""
    n_eval = src.n if eval_size is None else min(int(eval_size), src.n)
    g = torch.Generator().manual_seed(int(eval_seed))
    idx = torch.randperm(src.n, generator=g)[:n_eval] if n_eval < src.n else torch.arange(src.n)
    total = 0.0
    for i in range(0, n_eval, chunk):
        part = idx[i:i + chunk]
        total += float(loss_of(w_star, to_device(src.batch(part), device))) * len(part)
    method = {"how": "mean loss at w* over a fixed evaluation set, computed once",
              "eval_size": n_eval, "eval_seed": int(eval_seed), "of_n": src.n, "chunk": chunk}
    return total / n_eval, method


def estimate_llc(model: nn.Module, loss_fn: Callable, data, *, epsilon: float = 1e-4,
                 nbeta: float | str | None = None, gamma: float = 100.0, chains: int = 4,
                 draws: int = 200, burn_in: int = 100, steps_between_draws: int = 1,
                 batch_size: int = 32, sampler: str = "sgld", seed: int = 0, params=None,
                 eval_size: int | None = None, eval_seed: int = 0, device=None,
                 vectorized: bool = True, mala: bool = False, min_healthy_fraction: float = 0.75,
                 rmsprop_alpha: float = 0.99, rmsprop_eps: float = RMSPROP_EPS,
                 batch_control: bool = True, per_chain_batches: bool = True,
                 terms_per_example: float = 1.0, observe_every: int | None = None,
                 observe_size: int | None = None, progress: bool = False,
                 precision: str = "fp32", init_weights: torch.Tensor | None = None) -> LLCResult:
    """Estimate the local learning coefficient of `model` at its current weights.

    model: any nn.Module; it is copied (to `device`), never modified. Sampled in eval() mode.
    loss_fn: (model, batch) -> scalar mean loss (the per-example negative log-likelihood).
    data: a tensor, tuple/list/dict of tensors, Dataset, DataLoader, or index-tensor-indexable
        object (a task Batch); len(data) is n.
    nbeta: the multiplier of loss_fn's value in the posterior exp(−nβ·L − (γ/2)‖w − w*‖²).
        None -> terms_per_example · n / log n (ours: β = 1/log n, and nβ·L_n = β·(the data set's
        total negative log-likelihood); see `nbeta_definition`); "devinterp" ->
        batch_size / log(batch_size); or a number (used as given).
    terms_per_example: how many terms loss_fn averages per example (e.g. answer tokens of a
        sequence, when loss_fn is a mean over tokens and n counts sequences). 1 when loss_fn is
        the mean per-example negative log-likelihood.
    params: weight restriction (see `select_params`); the rest are held at w*.
    eval_size / eval_seed: the fixed evaluation subset for L_n(w*) (None = all the data).
    vectorized: all chains in one vmapped forward/backward; falls back (with a warning) to the
        sequential path when the model cannot be vmapped. Both are fed the same noise.
    mala: also estimate the MALA acceptance probability at draw steps (plain SGLD; costs one more
        gradient per draw).
    min_healthy_fraction: the estimate is valid only if at least ceil(fraction·chains) (>= 1)
        chains are healthy; failed chains are never averaged in.
    batch_control: subtract each draw's batch loss at w* (a control variate; read from every
        example's loss at w*, computed once, when loss_fn is a mean of per-example terms and that
        pass is cheaper than one forward at w* per step and stream, which is the fallback). The
        estimate's expectation is unchanged (E_b L_b(w*) = L_n(w*)) but the minibatch noise
        common to all chains cancels, so the estimate is tighter and its cross-chain stderr
        honest. False gives devinterp's estimator exactly.
    per_chain_batches: every chain draws its own seeded minibatch stream (independent chains, so
        the cross-chain stderr includes the minibatch noise). False: one stream shared by all
        chains (devinterp's default; cheaper when the forward pass dominates).
    observe_every / observe_size: every k steps record the loss at each chain's w on one fixed
        evaluation batch of observe_size examples (seeded by eval_seed): the low-noise observable
        the R̂ / ESS diagnostics and `llc_observed` use. observe_every None = about 200
        observations over the draws; 0 = off. observe_size None = `observe_size_for` (1,024
        examples, fewer where that forward pass would cost more than half the sampling's).
    precision: "fp32" (default); "tf32": TF32 matmuls on CUDA, identical to fp32 on any other
        device; "bf16": matmuls autocast to bfloat16, on CPU too. Both agree with fp32 within chain
        noise on the exact-answer models (tests/test_llc_precision.py). L_n(w*) and the observable
        are computed at the same precision as the draws, so a rounding shift of the loss cancels.
    init_weights: [chains, D] where the chains start (default: at w*), e.g. an earlier estimate's
        `final_weights` at the same checkpoint and settings: those chains are continued, so their
        burn-in is already spent (pass burn_in=0) and the new draws extend the old ones (D: the
        selected parameters' flat size, as in final_weights). Localisation stays at w*.
    """
    t_start = time.perf_counter()
    for name, v in (("chains", chains), ("draws", draws), ("steps_between_draws", steps_between_draws),
                    ("batch_size", batch_size)):
        if not isinstance(v, int) or v < 1:
            raise LLCError(f"{name}={v!r} must be a positive integer")
    if not isinstance(burn_in, int) or burn_in < 0:
        raise LLCError(f"burn_in={burn_in!r} must be an integer >= 0")
    src = DataSource(data)
    n = len(src)
    nbeta_value, nbeta_rule = resolve_nbeta(nbeta, n, batch_size, terms_per_example)
    settings = SGLDSettings(float(epsilon), nbeta_value, float(gamma), sampler,
                            rmsprop_alpha, rmsprop_eps)
    try:
        settings.validate()
        check_precision(precision)
    except SamplerError as e:
        raise LLCError(str(e)) from None

    dev = _resolve_device(device, model)
    work = copy.deepcopy(model).to(dev).eval()   # why: never move or mutate the caller's model
    selection = select_params(work, params)
    flat = FlatParams(work, selection)
    loss_of = make_flat_loss(work, loss_fn, flat)
    # why the same precision as the draws: without the batch control variate λ̂ = nβ·(E L(w) − L_n(w*)),
    # and a rounding shift of the loss cancels only when both terms are computed alike
    loss_at_precision = loss_of if precision == "fp32" else fp32_loss(loss_of)

    steps = burn_in + (draws - 1) * steps_between_draws + 1
    # the batch control variate's L_b(w*) from every example's loss at w*, computed once, where
    # that pass costs no more than the per-step forwards at w* it replaces (control.py)
    example_loss = None
    if batch_control and control.worth_caching(n, steps, chains if per_chain_batches else 1, batch_size):
        with matmul_precision(precision, dev):
            example_loss = control.example_losses(loss_at_precision, flat.w_star, src,
                                                  chunk=max(batch_size, 512), device=dev)
    if example_loss is not None and (eval_size is None or eval_size >= n):
        init_loss = float(example_loss.double().mean())
        init_method = {"how": "mean of every example's loss at w*, computed once", "eval_size": n,
                       "eval_seed": int(eval_seed), "of_n": n, "chunk": max(batch_size, 512)}
    else:
        with matmul_precision(precision, dev):
            init_loss, init_method = compute_init_loss(
                loss_at_precision, flat.w_star, src, eval_size=eval_size, eval_seed=eval_seed,
                chunk=max(batch_size, 512), device=dev)
    warn: list[str] = []
    if not math.isfinite(init_loss):
        raise LLCError(f"L_n(w*) = {init_loss} is not finite: the model's loss at its own "
                       "weights is NaN/Inf; check the checkpoint and loss_fn")

    from llc_watch.tasks.base import derive_seed
    if batch_size > n:
        warn.append(f"batch_size={batch_size} > n={n}: using full batches of {n}")
    if per_chain_batches:
        stream = ChainMinibatchStreams(n, batch_size, derive_seed(seed, "batches"), chains)
        get_batch = device_batches(src, stream, steps, dev)
        probe_batch = lambda: to_device(src.batch(stream.streams[0].indices(0)), dev)
    else:
        stream = MinibatchStream(n, batch_size, derive_seed(seed, "batches"))
        get_batch = device_batches(src, stream, steps, dev)
        probe_batch = lambda: get_batch(0)
    draw_steps = list(range(burn_in, steps, steps_between_draws))
    if observe_every is None:
        observe_every = max(1, (steps - burn_in) // 200)
    if not isinstance(observe_every, int) or observe_every < 0:
        raise LLCError(f"observe_every={observe_every!r} must be an integer >= 0 (0 = off)")
    if observe_size is not None and (not isinstance(observe_size, int) or observe_size < 1):
        raise LLCError(f"observe_size={observe_size!r} must be an integer >= 1 (None: `observe_size_for`)")
    observe_batch, observe_init = None, float("nan")
    if observe_every:
        n_obs = min(observe_size_for(min(batch_size, n), observe_every) if observe_size is None
                    else int(observe_size), n)
        g_obs = torch.Generator().manual_seed(int(eval_seed) + 1)
        obs_idx = torch.randperm(n, generator=g_obs)[:n_obs] if n_obs < n else torch.arange(n)
        observe_batch = to_device(src.batch(obs_idx), dev)
        with torch.no_grad(), matmul_precision(precision, dev):
            observe_init = float(loss_at_precision(flat.w_star, observe_batch))

    if init_weights is not None:
        init_weights = torch.as_tensor(init_weights, dtype=flat.w_star.dtype)
        if tuple(init_weights.shape) != (chains, flat.w_star.numel()):
            raise LLCError(f"init_weights has shape {tuple(init_weights.shape)}; continuing chains needs "
                           f"[chains, D] = [{chains}, {flat.w_star.numel()}] (the final_weights of "
                           "an estimate at the same checkpoint with the same chains and params)")
        if not torch.isfinite(init_weights).all():
            raise LLCError("init_weights has non-finite entries: a failed chain cannot be continued; "
                           "start afresh (init_weights=None, with burn-in)")
        init_weights = init_weights.to(dev)

    used_vectorized = vectorized
    if vectorized:
        try:   # probe: can this model's loss be vmapped?
            from torch.func import vmap
            W = flat.w_star.expand(2, -1).clone().requires_grad_(True)
            torch.autograd.grad(vmap(loss_of, in_dims=(0, None))(W, probe_batch()).sum(), W)
        except Exception as e:  # noqa: BLE001 - any vmap failure means: use the fallback
            used_vectorized = False
            warn.append(f"vectorised sampling failed ({type(e).__name__}: {str(e)[:200]}); "
                        "ran chains sequentially instead")

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="sgld", leave=False)
    t0 = time.perf_counter()
    run = run_chains(loss_of, flat, settings, chains=chains, steps=steps, get_batch=get_batch,
                     seed=seed, draw_steps=draw_steps, mala=mala, vectorized=used_vectorized,
                     center_loss=batch_control and example_loss is None, per_chain_batches=per_chain_batches,
                     observe_batch=observe_batch, observe_every=observe_every,
                     progress=(lambda t: bar.update(1)) if bar else None, precision=precision,
                     start=init_weights)
    t_sample = time.perf_counter() - t0
    if bar:
        bar.close()

    losses = run.losses.double().numpy()                         # [C, T]
    if batch_control:   # L_b(w) − L_b(w*) + L_n(w*): same mean, without the shared batch noise
        centers = (control.center_trace(example_loss, stream.indices, steps) if example_loss is not None
                   else run.center_losses.double()).numpy()      # [T] shared, or [C, T]
        c2 = centers if centers.ndim == 2 else centers[None, :]
        losses_used = losses - c2 + init_loss
        batch_offset = float(nbeta_value * (c2[:, draw_steps].mean() - init_loss))
    else:
        centers, losses_used, batch_offset = None, losses, float("nan")
    draws_arr = losses_used[:, draw_steps]                       # [C, N]
    final_finite = torch.isfinite(run.final_w).all(dim=1).cpu().numpy()
    per_chain = nbeta_value * (draws_arr.mean(axis=1) - init_loss)
    failed = dg.chain_failures(draws_arr, losses_used, final_finite, init_loss, nbeta_value, flat.n_sampled)
    healthy = np.array([f is None for f in failed])
    need = dg.min_healthy(chains, min_healthy_fraction)
    h = per_chain[healthy]
    mean = float(h.mean()) if h.size else float("nan")
    stderr = float(h.std(ddof=1) / math.sqrt(h.size)) if h.size > 1 else float("nan")
    valid = bool(healthy.sum() >= need and math.isfinite(mean))

    for c, f in enumerate(failed):
        if f is not None:
            warn.append(f"chain {c} failed ({f}); excluded from the mean")
    if not valid:
        warn.append(f"INVALID: {int(healthy.sum())}/{chains} healthy chains, need {need}; "
                    "lower epsilon (see `llc-watch calibrate`)")
    hd = draws_arr[healthy]
    # R̂ / ESS on the low-noise observable (fixed evaluation batch) when recorded: minibatch noise,
    # independent from step to step, makes slow chains look mixed on the batch trace
    obs_stats = {"llc_observed": float("nan"), "llc_observed_stderr": float("nan"),
                 "observe_every": observe_every, "observe_size": None, "observe_steps": []}
    if run.observed is not None:
        ob_all = run.observed.double().numpy()                       # [C, K]
        keep = [k for k, t in enumerate(run.observe_steps) if t >= burn_in]
        ob = ob_all[healthy][:, keep]
        mix_on, trace = "observed", ob
        lam_obs = nbeta_value * (ob.mean(1) - observe_init) if ob.size else np.array([])
        obs_stats.update(
            llc_observed=float(lam_obs.mean()) if lam_obs.size else float("nan"),
            llc_observed_stderr=(float(lam_obs.std(ddof=1) / math.sqrt(lam_obs.size))
                                 if lam_obs.size > 1 else float("nan")),
            observe_size=int(len(DataSource(observe_batch)) if observe_batch is not None else 0),
            observe_init_loss=observe_init, observe_steps=list(run.observe_steps),
            observed=ob_all.tolist())
    else:
        mix_on, trace = "minibatch trace (no observable recorded)", hd
    mix = dg.mixing(trace) if trace.shape[0] >= 1 and trace.shape[1] >= 8 else \
        {"rhat": float("nan"), "ess_bulk": float("nan"), "ess_tail": float("nan"),
         "ess_needed": dg.ESS_MIN_PER_CHAIN * max(int(healthy.sum()), 1), "mixed": False}
    rhat, ess = mix["rhat"], mix["ess_bulk"]
    drift, drift_se = dg.drift(hd, init_loss, nbeta_value) if hd.shape[0] >= 1 else (float("nan"),) * 2
    drifting = dg.drift_flag(drift, drift_se, mean)
    shared_se = dg.shared_noise_stderr(hd, nbeta_value) if hd.shape[0] >= 1 else float("nan")
    if (not per_chain_batches and math.isfinite(shared_se) and math.isfinite(stderr)
            and shared_se > 2 * stderr):
        warn.append(f"the chains' shared minibatch noise (stderr ≈ {shared_se:.2g} from the averaged "
                    f"trace) exceeds the cross-chain stderr {stderr:.2g}: use draws covering whole "
                    "epochs (n / batch_size steps each), a larger batch, or per_chain_batches=True")
    # gradient noise (v: per-example gradient variance per weight, at w* and at the first healthy
    # chain's final w, the larger): ρ = ε·nβ²·v·(1/B − 1/n)/4 against the injected noise, per
    # weight; it inflates λ̂ by ε·nβ²·D·v·(1/B − 1/n)/8 = ρ·D/2 (`calibration.noise_bias`), which
    # is judged against λ̂ itself. 16 small gradients: cheap.
    from .calibration import NOISE_RATIO_MAX, gradient_variance, noise_bias, noise_ratio
    v_at = [gradient_variance(loss_of, flat, src, dev, seed=seed)["v"]]
    if healthy.any():
        c0 = int(np.argmax(healthy))
        if torch.isfinite(run.final_w[c0]).all():
            v_at.append(gradient_variance(loss_of, flat, src, dev, seed=seed, at=run.final_w[c0])["v"])
    B_used = min(batch_size, n)
    rho = noise_ratio(float(epsilon), nbeta_value, max(v_at), B_used, n)
    bias = noise_bias(float(epsilon), nbeta_value, max(v_at), flat.n_sampled, B_used, n)
    if bias == 0:
        bias_rel = 0.0
    elif math.isfinite(mean) and mean != 0:
        bias_rel = bias / abs(mean)
    else:               # no λ̂ to compare with: any inflation counts
        bias_rel = float("inf")
    if sampler == "sgld" and bias_rel > NOISE_RATIO_MAX:
        warn.append(f"gradient-noise ratio ρ = {rho:.2g}: minibatch noise inflates λ̂ by about {bias:.3g} "
                    f"(ε·nβ²·D·v·(1/B − 1/n)/8, {100 * min(bias_rel, 10):.0f} % of λ̂ > "
                    f"{100 * NOISE_RATIO_MAX:.1f} %); use a larger batch or a smaller epsilon "
                    "(calibrate_llc picks both)")
    review = bool((~healthy).any())
    if review:
        warn.append("REVIEW: a chain was excluded; the estimate rests on the others")
    negative = bool(math.isfinite(mean) and mean < 0)
    if math.isfinite(rhat) and rhat > dg.RHAT_MAX:
        warn.append(f"rank-normalised split-R̂ = {rhat:.3f} > {dg.RHAT_MAX} on the {mix_on}: the "
                    "chains have not mixed; more draws or burn-in, or a larger epsilon")
    for kind in ("ess_bulk", "ess_tail"):
        v = mix[kind]
        if math.isfinite(v) and v < mix["ess_needed"]:
            warn.append(f"{kind.replace('_', '-')} {v:.0f} < {mix['ess_needed']} "
                        f"({dg.ESS_MIN_PER_CHAIN} per chain) on the {mix_on}: more draws")
    if drifting:
        warn.append(f"loss traces drift after burn-in (second-half − first-half LLC = {drift:.3g} "
                    f"± {drift_se:.2g}): more burn-in, or a smaller epsilon/larger gamma")
    if negative:
        warn.append(f"negative LLC {mean:.3g}: w* is not a local minimum at this resolution "
                    "(the sampler found lower loss); e.g. an untrained checkpoint")
    if h.size == 1:
        warn.append("only one healthy chain: no standard error")

    hyper = dict(epsilon=float(epsilon), nbeta=nbeta_value, nbeta_rule=nbeta_rule,
                 gamma=float(gamma), chains=chains, draws=draws, burn_in=burn_in,
                 steps_between_draws=steps_between_draws, batch_size=min(batch_size, n),
                 sampler=sampler, seed=seed, eval_size=init_method["eval_size"], eval_seed=eval_seed,
                 n=n, n_params_sampled=flat.n_sampled,
                 params=[k if m is None else f"{k}[mask]" for k, m in selection.items()],
                 vectorized=used_vectorized, device=str(dev),
                 min_healthy_fraction=min_healthy_fraction, mala=mala, batch_control=batch_control,
                 per_chain_batches=per_chain_batches, terms_per_example=float(terms_per_example),
                 precision=precision, continued=init_weights is not None,
                 beta=1.0 / math.log(n) if n > 1 else float("nan"))
    if sampler == "rmsprop_sgld":
        hyper.update(rmsprop_alpha=rmsprop_alpha, rmsprop_eps=rmsprop_eps)
    diag = dict(rhat=rhat, ess=ess, ess_bulk=mix["ess_bulk"], ess_tail=mix["ess_tail"],
                ess_needed=mix["ess_needed"], mixed=mix["mixed"], mixing_on=mix_on, review=review,
                **obs_stats, noise_ratio=rho, noise_bias=bias, noise_bias_rel=bias_rel,
                shared_noise_stderr=shared_se, batch_offset=batch_offset,
                drift=drift, drift_stderr=drift_se, drifting=drifting,
                negative=negative, n_failed=int((~healthy).sum()), min_healthy=need,
                mala_acceptance=(None if run.mala_accept is None else run.mala_accept.tolist()),
                mala_acceptance_mean=(None if run.mala_accept is None
                                      else float(run.mala_accept[torch.as_tensor(healthy)].mean())
                                      if healthy.any() else None))
    diag["center_loss_trace"] = None if centers is None else centers.tolist()
    diag["center_loss_method"] = (None if centers is None else "per-example losses at w*, computed once"
                                  if example_loss is not None else "a forward pass at w* per step")
    timing = dict(sampling_s=t_sample, total_s=time.perf_counter() - t_start, steps=steps,
                  grad_evals=steps * chains + (len(draw_steps) * chains if mala and sampler == "sgld" else 0))
    return LLCResult(mean, stderr, per_chain.tolist(), failed, valid, warn, init_loss, init_method,
                     losses.tolist(), draw_steps, hyper, diag, timing, run.final_w.detach().cpu())
