"""Localised SGLD over many chains at once: the sampler behind the LLC estimate.

Target (the localised tempered posterior at w*):

    p(w) ∝ exp(−nβ·L_n(w) − (γ/2)‖w − w*‖²)

One step, per chain, with a minibatch gradient g = ∇L_batch(w):

    drift = nβ·g + γ·(w − w*)                      # ∇ of the potential above
    sgld:          Δw = −(ε/2)·drift + √ε·ξ,            ξ ~ N(0, I)
    rmsprop_sgld:  v ← αv + (1−α)·g²;  P = 1/(√v + eps)
                   Δw = −(ε/2)·P·drift + √(ε·P)·ξ

These are devinterp's `SGMCMC.sgld` / `SGMCMC.rmsprop_sgld` update rules (same drift, same
noise scale, RMSProp statistics of the raw loss gradient, a mask multiplying drift and noise).
devinterp applies them in place, parameter by parameter, to one chain's `p.grad`; that cannot run
under `vmap`, so here the rule is a pure elementwise function of tensors with any leading shape.
The same function serves the vectorised path (w: [C, D]) and the sequential one (w: [D]);
devinterp's own pipeline is the reference in tests/test_llc_parity.py.

All sampled weights live in one flat vector per chain (`FlatParams`), so a step is a handful of
elementwise ops on a [C, D] tensor, not a Python loop over parameter tensors.

Noise comes from one generator per chain, seeded from (seed, chain id) so chain c's noise does
not depend on how many chains run beside it. To keep the Python loop over chains out of the step,
each generator draws a block of NOISE_BLOCK steps' noise at once ([NOISE_BLOCK, D] per chain, one
call per chain every NOISE_BLOCK steps); step t uses row t mod NOISE_BLOCK of block t // NOISE_BLOCK.
The vectorised and the sequential paths read the same `ChainNoise` blocks, so both are fed
identical noise by construction (the "shared-noise" property the tests check). (A counter-based
hash per (chain, step, coordinate) would remove even the per-block calls but costs ~20 integer
ops per element per step outside a compiled kernel; the block scheme costs nothing extra.)

    >>> import torch
    >>> s = SGLDSettings(epsilon=1e-3, nbeta=100.0, gamma=10.0)
    >>> w = torch.zeros(4, 3); g = torch.ones(4, 3)                  # [C, D]
    >>> state = init_state(s, w)
    >>> w2 = sgld_update(w, g, torch.zeros(3), torch.zeros(4, 3), state, s)
    >>> round(float(w2[0, 0]), 6)                                   # −(ε/2)·nβ·g
    -0.05
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from .data import DataError, batch_leaves, chain_batch

SAMPLERS = ("sgld", "rmsprop_sgld")
# matmul precisions the sampler accepts; each non-default one is offered only because
# tests/test_llc_precision.py shows its LLC agreeing with fp32's within chain noise on the
# exact-answer models (a regular model, a deep linear network)
PRECISIONS = ("fp32", "tf32", "bf16")


# RMSProp's stability constant (devinterp's default): the preconditioner P = 1/(√v + eps) is at
# most 1/RMSPROP_EPS, reached where the gradient vanishes (a model's flat directions)
RMSPROP_EPS = 0.1


class SamplerError(ValueError):
    """A sampler setting that cannot work; the message names it and what to do."""


@dataclass(frozen=True)
class SGLDSettings:
    epsilon: float                # step size ε
    nbeta: float                  # inverse temperature times n (nβ)
    gamma: float                  # localisation strength γ
    kind: str = "sgld"            # sgld | rmsprop_sgld
    rmsprop_alpha: float = 0.99   # RMSProp moving-average coefficient (devinterp's default)
    rmsprop_eps: float = RMSPROP_EPS  # RMSProp stability constant (devinterp's default)

    def validate(self) -> None:
        if self.kind not in SAMPLERS:
            raise SamplerError(f"sampler={self.kind!r}: choose one of {SAMPLERS}")
        for name in ("epsilon", "nbeta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise SamplerError(f"{name}={v!r} must be a positive finite number")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise SamplerError(f"gamma={self.gamma!r} must be >= 0 (0 = no localisation)")
        if not 0 <= self.rmsprop_alpha < 1 or self.rmsprop_eps <= 0:
            raise SamplerError("rmsprop_alpha must be in [0, 1) and rmsprop_eps > 0")


def init_state(s: SGLDSettings, w: torch.Tensor) -> dict:
    """Per-chain sampler state shaped like w (RMSProp's running mean of g²; empty for SGLD)."""
    return {"v": torch.zeros_like(w)} if s.kind == "rmsprop_sgld" else {}


def drift_of(w, g, center, s: SGLDSettings) -> torch.Tensor:
    """∇ of the potential nβ·L + (γ/2)‖w − w*‖², given the loss gradient g."""
    d = s.nbeta * g
    return d + s.gamma * (w - center) if s.gamma else d


def sgld_update(w: torch.Tensor, g: torch.Tensor, center: torch.Tensor, noise: torch.Tensor,
                state: dict, s: SGLDSettings, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One localised (preconditioned) SGLD step, elementwise; returns the new w.

    w, g, noise: [..., D]; center, mask: [D] (broadcast over chains). `state` is updated in place.
    """
    drift = drift_of(w, g, center, s)
    if s.kind == "rmsprop_sgld":
        v = state["v"].mul_(s.rmsprop_alpha).addcmul_(g, g, value=1 - s.rmsprop_alpha)
        precond = 1.0 / (v.sqrt() + s.rmsprop_eps)
        step = precond * drift * (-0.5 * s.epsilon) + precond.sqrt() * noise * math.sqrt(s.epsilon)
    else:
        step = drift * (-0.5 * s.epsilon) + noise * math.sqrt(s.epsilon)
    if mask is not None:
        step = step * mask    # weights outside the restriction stay exactly at w*
    return w + step


# --- matmul precision -------------------------------------------------------------------------

def check_precision(precision) -> None:
    """One clear line for a precision the sampler does not offer.

        >>> check_precision("fp16")                                     # doctest: +ELLIPSIS
        Traceback (most recent call last):
        llc_watch.llc.sampler.SamplerError: precision='fp16': choose one of ('fp32', 'tf32', 'bf16') ...
    """
    if precision not in PRECISIONS:
        raise SamplerError(f"precision={precision!r}: choose one of {PRECISIONS} (fp32 is exact; tf32 "
                           "uses TF32 matmuls on CUDA and is fp32 elsewhere; bf16 autocasts matmuls to bfloat16)")


@contextlib.contextmanager
def matmul_precision(precision: str, device):
    """The block's matmuls at `precision` on `device`; everything is restored on exit.

    fp32: nothing changes. tf32: CUDA matmuls in TF32 (10-bit mantissa inputs, fp32 accumulate);
    on any other device a no-op, so the numbers are fp32's exactly (CPU matmuls are left alone:
    torch.set_float32_matmul_precision would also switch oneDNN's CPU matmuls). bf16: autocast to
    bfloat16 (matmuls and linear layers in bf16, reductions and losses in fp32), on CPU too; the
    autocast cache is off, since the chains' weights change every step (and CUDA graphs need it off).

        >>> a = torch.randn(8, 8)
        >>> with matmul_precision("bf16", "cpu"):
        ...     (a @ a).dtype
        torch.bfloat16
        >>> with matmul_precision("tf32", "cpu"):
        ...     torch.equal(a @ a, a @ a)
        True
    """
    check_precision(precision)
    dev = torch.device(device)
    if precision == "bf16":
        with torch.autocast(dev.type, dtype=torch.bfloat16, cache_enabled=False):
            yield
    elif precision == "tf32" and dev.type == "cuda":
        m = torch.backends.cuda.matmul
        if hasattr(m, "fp32_precision"):          # torch >= 2.9: the new API (mixing the two raises)
            before = m.fp32_precision
            m.fp32_precision = "tf32"
            try:
                yield
            finally:
                m.fp32_precision = before
        else:
            before = m.allow_tf32
            m.allow_tf32 = True
            try:
                yield
            finally:
                m.allow_tf32 = before
    else:
        yield


def fp32_loss(loss_of: Callable) -> Callable:
    """loss_of with its value in float32 (under bf16 autocast a loss may come back in bf16; the
    traces are kept in fp32)."""
    def f(w, batch):
        return loss_of(w, batch).float()
    return f


# --- parameters as one flat vector ------------------------------------------------------------

class FlatParams:
    """The sampled parameters of a model as one flat vector; the rest held fixed at w*.

    selection: name -> None (whole tensor) or a bool mask of the tensor's shape (a slice of it,
    e.g. one attention head). Masked-out entries are carried in the vector but never move.

        >>> from torch import nn
        >>> fp = FlatParams(nn.Linear(3, 2), {"weight": None})
        >>> fp.w_star.shape, fp.n_sampled                           # [D], sampled count
        (torch.Size([6]), 6)
    """

    def __init__(self, model: nn.Module, selection: dict[str, torch.Tensor | None]):
        named = dict(model.named_parameters())
        self.names = list(selection)
        self.shapes = [named[n].shape for n in self.names]
        self.sizes = [named[n].numel() for n in self.names]
        self.w_star = torch.cat([named[n].detach().reshape(-1) for n in self.names]).clone()
        # held-fixed parameters enter functional_call as constants (not vmapped)
        self.frozen = {n: p.detach() for n, p in named.items() if n not in selection}
        masks = [selection[n] for n in self.names]
        if all(m is None for m in masks):
            self.mask = None
        else:
            self.mask = torch.cat([
                torch.ones(sz, dtype=self.w_star.dtype, device=self.w_star.device) if m is None
                else m.to(self.w_star.device).reshape(-1).to(self.w_star.dtype)
                for m, sz in zip(masks, self.sizes)])
        self.n_sampled = int(self.w_star.numel() if self.mask is None else self.mask.sum().item())

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """w: [D] -> {name: view of w with the parameter's shape} plus the fixed parameters."""
        out = dict(self.frozen)
        out.update({n: t.view(s) for n, t, s in zip(self.names, w.split(self.sizes), self.shapes)})
        return out


class _LossModule(nn.Module):
    """Wraps (model, loss_fn) as one module so functional_call can swap the model's weights
    under a user loss that calls `model(...)` itself."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def make_flat_loss(model: nn.Module, loss_fn: Callable, flat: FlatParams) -> Callable:
    """(w [D], batch) -> scalar loss of `model` with its sampled weights set to w."""
    wrapper = _LossModule(model, loss_fn)

    def loss_of(w, batch):
        params = {"model." + k: v for k, v in flat.unflatten(w).items()}
        return functional_call(wrapper, params, (batch,))

    return loss_of


# --- the chains -------------------------------------------------------------------------------

NOISE_BLOCK = 8   # steps of noise each chain's generator draws at once (part of the noise's definition)


@dataclass
class ChainRun:
    losses: torch.Tensor            # [C, T] minibatch loss at the weights before each step
    final_w: torch.Tensor           # [C, D]
    mala_accept: torch.Tensor | None  # [C] mean MALA acceptance probability over draw steps
    vectorized: bool                # which path actually ran
    center_losses: torch.Tensor | None = None  # minibatch loss at w* on each step's batch:
                                    # [T] when every chain shares w* and the batch, else [C, T]
    observed: torch.Tensor | None = None       # [C, K] loss on observe_batch at observe_steps
    observe_steps: list[int] = field(default_factory=list)  # steps t of the observations (before
                                    # step t's update, as for losses)
    captured: bool = False          # whether the step ran as a captured CUDA graph


def chain_generators(seed: int, chains: int, device, chain_ids=None, row_seeds=None) -> list[torch.Generator]:
    """One noise generator per chain, seeded from (seed, chain id) so chain c's noise does not
    depend on how many chains run beside it. chain_ids: the id of each row (default 0..C−1);
    row_seeds: the seed of each row (default `seed` for all; the stacked checkpoint path gives
    each checkpoint's rows that checkpoint's seed)."""
    from llc_watch.tasks.base import derive_seed  # stable sha256-based seed derivation
    ids = list(range(chains)) if chain_ids is None else list(chain_ids)
    seeds = [seed] * len(ids) if row_seeds is None else list(row_seeds)
    if len(seeds) != len(ids):
        raise SamplerError(f"row_seeds has {len(seeds)} entries for {len(ids)} chains")
    gens = []
    for sd, c in zip(seeds, ids):
        g = torch.Generator(device=device)
        g.manual_seed(derive_seed(int(sd), "sgld-noise", int(c)))
        gens.append(g)
    return gens


class ChainNoise:
    """Every chain's N(0, I) noise, drawn NOISE_BLOCK steps at a time per chain.

    `at(t)` -> [C, D] (a view, valid until the next block is drawn). The block buffer is refilled
    in place, so a captured step can read it at a fixed address.

        >>> n3, n1 = ChainNoise(0, 3, 5, "cpu"), ChainNoise(0, 1, 5, "cpu")
        >>> bool((n3.at(9)[0] == n1.at(9)[0]).all())          # chain 0 alone or beside others
        True
    """

    def __init__(self, seed: int, chains: int, D: int, device, dtype=torch.float32, chain_ids=None,
                 block: int = NOISE_BLOCK, row_seeds=None):
        self.gens = chain_generators(seed, chains, device, chain_ids, row_seeds)
        self.block = block
        self.buf = torch.empty(chains, block, D, device=device, dtype=dtype)
        self.filled = -1

    def fill_for(self, t: int) -> None:
        """Make sure the buffer holds step t's block (blocks are drawn in order, none skipped)."""
        b = t // self.block
        while self.filled < b:
            for c, g in enumerate(self.gens):
                self.buf[c].normal_(generator=g)
            self.filled += 1

    def at(self, t: int) -> torch.Tensor:
        self.fill_for(t)
        return self.buf[:, t % self.block]


def _mala_log_accept(w, w_new, drift, drift_new, u, u_new, eps):
    """log MH acceptance of the Langevin proposal w -> w_new (plain SGLD), per leading index.

    q(b|a) = N(b; a − (ε/2)·∇U(a), ε·I); U = nβ·L + (γ/2)‖w − w*‖².
    """
    fwd = (w_new - w + 0.5 * eps * drift).pow(2).sum(-1)
    bwd = (w - w_new + 0.5 * eps * drift_new).pow(2).sum(-1)
    return torch.clamp(u - u_new + (fwd - bwd) / (2 * eps), max=0.0)


def _unique_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct rows [K, D], index [C] with x[i] == rows[index[i]]), first-seen order.

    Why: many chains share a centre (chains of one checkpoint); the loss at the centre is then
    computed once per distinct centre, not once per chain."""
    C = x.shape[0]
    index = torch.arange(C)
    rows: list[int] = []
    for i in range(C):
        for k, j in enumerate(rows):
            if x[i].data_ptr() == x[j].data_ptr() or torch.equal(x[i], x[j]):
                index[i] = k
                break
        else:
            index[i] = len(rows)
            rows.append(i)
    return x[rows], index.to(x.device)


# Why a context variable: the batched checkpoint path (llc/batched.py) lets estimate_llc prepare
# each checkpoint as usual and takes over its run_chains call, so preparation and result assembly
# stay in one place (the estimator) while the sampling of many checkpoints happens in one pass.
_INTERCEPT: contextvars.ContextVar = contextvars.ContextVar("llc_watch_run_chains_intercept", default=None)


@contextlib.contextmanager
def intercept_runs(handler: Callable):
    """Within the block, run_chains(*args, **kwargs) returns handler(*args, **kwargs) instead.

        >>> with intercept_runs(lambda *a, **k: "taken over"):
        ...     run_chains(None, None, None, chains=1, steps=1, get_batch=None, seed=0)
        'taken over'
    """
    token = _INTERCEPT.set(handler)
    try:
        yield
    finally:
        _INTERCEPT.reset(token)


CAPTURE_WARMUP = 3   # eager steps before a CUDA graph is captured (lets autograd and cuBLAS settle)


def run_chains(loss_of: Callable, flat: FlatParams, s: SGLDSettings, *, chains: int,
               steps: int, get_batch: Callable[[int], object], seed: int,
               draw_steps: Iterable[int] = (), mala: bool = False, vectorized: bool = True,
               center_loss: bool = False, progress: Callable[[int], None] | None = None,
               centers: torch.Tensor | None = None, per_chain_batches: bool = False,
               observe_batch=None, observe_every: int = 0,
               chain_ids: Sequence[int] | None = None, capture: bool | None = None,
               precision: str = "fp32", row_seeds: Sequence[int] | None = None,
               start: torch.Tensor | None = None) -> ChainRun:
    """Run `chains` localised SGLD chains for `steps` steps, chain c from its centre (or `start`).

    get_batch(t) gives step t's minibatch, shared by every chain; with per_chain_batches=True it
    gives a chain-stacked batch (every tensor [C, ...], row c chain c's own minibatch; see
    data.stack_batches / data.ChainMinibatchStreams). Losses are recorded at every step (before
    the update), so burn-in can be inspected.
    centers: [C, D] per-chain w* (start point and localisation centre); default flat.w_star for all.
    mala: at each step in draw_steps, the MH acceptance of the proposal just taken is estimated on
        that step's batch (one extra gradient evaluation per draw; plain SGLD only).
    center_loss: also record the loss at each chain's centre on its step's batch (one forward per
        distinct (centre, batch) per step).
    observe_batch / observe_every: a fixed evaluation batch (shared by all chains); at every step
        t that is a multiple of observe_every, the loss at each chain's current w (before step t's
        update) on it is recorded -> ChainRun.observed [C, K], observe_steps [K].
    chain_ids: the noise identity of each row (default 0..C−1): row i draws the noise of chain
        chain_ids[i] (the batched checkpoint path gives chain c of every checkpoint the noise
        estimate_llc gives chain c).
    row_seeds: the noise seed of each row (default `seed` for every row): stacked checkpoints
        sampled with their own seeds keep their own noise.
    start: [C, D] where each chain starts (default: its centre). A chain continued from an earlier
        run's final w (ChainRun.final_w) needs no burn-in again; localisation stays at the centre.
    capture: run the vectorised step as a captured CUDA graph (None: when on CUDA). The captured
        and the eager step run the same operations, so they give the same numbers.
    precision: the matmuls' precision during sampling, "fp32" (default), "tf32" or "bf16" (see
        `matmul_precision`); losses, noise, weights and the update stay fp32.

    Nothing in the vectorised step waits on the host: batches are fetched ahead into a device
    buffer (blocks of steps), noise is drawn in blocks, losses and observations are accumulated
    on the device and copied to the host once at the end.
    """
    handler = _INTERCEPT.get()
    if handler is not None:   # the handler runs with the intercept lifted, so it may call run_chains
        token = _INTERCEPT.set(None)
        try:
            return handler(loss_of, flat, s, chains=chains, steps=steps, get_batch=get_batch, seed=seed,
                           draw_steps=draw_steps, mala=mala, vectorized=vectorized,
                           center_loss=center_loss, progress=progress, centers=centers,
                           per_chain_batches=per_chain_batches, observe_batch=observe_batch,
                           observe_every=observe_every, chain_ids=chain_ids, capture=capture,
                           precision=precision, row_seeds=row_seeds, start=start)
        finally:
            _INTERCEPT.reset(token)
    s.validate()
    check_precision(precision)
    if precision != "fp32":
        loss_of = fp32_loss(loss_of)
    w_star = flat.w_star
    device, D = w_star.device, w_star.numel()
    if centers is not None:
        centers = torch.as_tensor(centers).to(device=device, dtype=w_star.dtype)
        if centers.shape != (chains, D):
            raise SamplerError(f"centers has shape {tuple(centers.shape)}; it must be [chains, D] = "
                               f"[{chains}, {D}] (one w* per chain)")
    if start is not None:
        start = torch.as_tensor(start).to(device=device, dtype=w_star.dtype)
        if start.shape != (chains, D) or not torch.isfinite(start).all():
            raise SamplerError(f"start has shape {tuple(start.shape)}{'' if torch.isfinite(start).all() else ' and non-finite entries'}; "
                               f"it must be finite, [chains, D] = [{chains}, {D}] (one start per chain)")
    if chain_ids is not None and len(chain_ids) != chains:
        raise SamplerError(f"chain_ids has {len(chain_ids)} entries for {chains} chains")
    if observe_every < 0 or (observe_every > 0) != (observe_batch is not None):
        raise SamplerError("observe_batch and observe_every > 0 go together: pass both (a fixed "
                           "evaluation batch and how often to evaluate on it) or neither")
    r = _Run(s=s, loss_of=loss_of, mask=flat.mask, w_star=w_star, centers=centers,
             C0=w_star.expand(chains, D) if centers is None else centers, start=start,
             per_chain_batches=per_chain_batches,
             noise=ChainNoise(seed, chains, D, device, w_star.dtype, chain_ids, row_seeds=row_seeds),
             get_batch=get_batch, steps=steps,
             draw_set=set(draw_steps) if mala and s.kind == "sgld" else set(),
             observe_steps=list(range(0, steps, observe_every)) if observe_every else [],
             observe_batch=observe_batch, progress=progress)
    r.losses = torch.full((chains, steps), float("nan"), device=device)
    if r.observe_steps:
        r.observed = torch.full((chains, len(r.observe_steps)), float("nan"), device=device)
    r.accept_sum = torch.zeros(chains, device=device)
    if center_loss:
        shared = centers is None and not per_chain_batches
        r.center_losses = torch.full((steps,) if shared else (chains, steps), float("nan"), device=device)
    captured = False
    with matmul_precision(precision, device):
        if vectorized:
            final, captured = _vectorised(r, capture)
        else:
            final = _sequential(r)
    n_draws = len(r.draw_set)
    return ChainRun(r.losses.cpu(), final, (r.accept_sum / n_draws).cpu() if n_draws else None,
                    vectorized, None if r.center_losses is None else r.center_losses.cpu(),
                    None if r.observed is None else r.observed.cpu(), r.observe_steps, captured)


@dataclass
class _Run:
    """One run_chains call's inputs and its device-side accumulators."""
    s: SGLDSettings
    loss_of: Callable
    mask: torch.Tensor | None
    w_star: torch.Tensor
    centers: torch.Tensor | None
    C0: torch.Tensor                      # [C, D] every chain's centre (a view when shared)
    start: torch.Tensor | None            # [C, D] where the chains start; None: at C0
    per_chain_batches: bool
    noise: ChainNoise
    get_batch: Callable
    steps: int
    draw_set: set
    observe_steps: list
    observe_batch: object
    progress: Callable | None
    losses: torch.Tensor | None = None
    observed: torch.Tensor | None = None
    accept_sum: torch.Tensor | None = None
    center_losses: torch.Tensor | None = None

    @property
    def observe_at(self) -> dict:
        return {t: k for k, t in enumerate(self.observe_steps)}

    def potential(self, w, loss, center):
        u = self.s.nbeta * loss
        return u + 0.5 * self.s.gamma * (w - center).pow(2).sum(-1) if self.s.gamma else u


def _sequential(r: _Run) -> torch.Tensor:
    """One chain at a time (the reference path, and the fallback for models vmap cannot run)."""
    s, loss_of, C0, mask = r.s, r.loss_of, r.C0, r.mask
    chains = C0.shape[0]
    per_chain_center = r.center_losses is not None and r.center_losses.dim() == 2
    observe_at = r.observe_at

    def gv(w, batch):   # (∇L, L) for one chain's w [D]
        w = w.detach().requires_grad_(True)
        L = loss_of(w, batch)
        return torch.autograd.grad(L, w)[0], L.detach()

    W0 = C0 if r.start is None else r.start
    ws = [W0[c].clone() for c in range(chains)]
    states = [init_state(s, w) for w in ws]
    for t in range(r.steps):
        batch = r.get_batch(t)
        xi = r.noise.at(t)
        if r.per_chain_batches:
            _check_chain_stacked(batch, chains)
        for c in range(chains):
            b_c = chain_batch(batch, c) if r.per_chain_batches else batch
            with torch.no_grad():
                if r.center_losses is not None:
                    if per_chain_center:
                        r.center_losses[c, t] = loss_of(C0[c], b_c)
                    elif c == 0:
                        r.center_losses[t] = loss_of(r.w_star, batch)
                if t in observe_at:
                    r.observed[c, observe_at[t]] = loss_of(ws[c], r.observe_batch)
            g, L = gv(ws[c], b_c)
            r.losses[c, t] = L
            w_new = sgld_update(ws[c], g, C0[c], xi[c], states[c], s, mask)
            if t in r.draw_set:
                g2, L2 = gv(w_new, b_c)
                d0, d1 = drift_of(ws[c], g, C0[c], s), drift_of(w_new, g2, C0[c], s)
                if mask is not None:
                    d0, d1 = d0 * mask, d1 * mask
                r.accept_sum[c] += _mala_log_accept(ws[c], w_new, d0, d1, r.potential(ws[c], L, C0[c]),
                                                    r.potential(w_new, L2, C0[c]), s.epsilon).exp()
            ws[c] = w_new.detach()
        if r.progress:
            r.progress(t)
    return torch.stack(ws)


def _check_chain_stacked(batch, chains: int) -> None:
    for x in batch_leaves(batch)[0]:
        if x.dim() == 0 or x.shape[0] != chains:
            raise SamplerError(f"per_chain_batches=True: every tensor of get_batch(t) must have a "
                               f"leading chain dimension of {chains}; got shape {tuple(x.shape)} "
                               "(stack the chains' batches with llc.data.stack_batches)")


def _vmapped_loss(loss_of, w_dim, per_chain_batches):
    """(W, batch) -> [C] losses, vmapped over W's rows (w_dim=0) and/or the batch's chain dim."""
    if not per_chain_batches:
        return vmap(loss_of, in_dims=(w_dim, None))

    def f(W, batch):
        leaves, rebuild = batch_leaves(batch)
        inner = lambda w, *ls: loss_of(w, rebuild(list(ls)))
        return vmap(inner, in_dims=(w_dim,) + (0,) * len(leaves))(W, *leaves)
    return f


class _FormChanged(Exception):
    """get_batch(t) gave a batch of another form or shape than get_batch(0)."""


class _BatchFeed:
    """Step batches fetched ahead into a device ring buffer, read by a device-side step index.

    get_batch(t) is called for a block of steps at once (outside the step), the block stacked into
    static device tensors [P, ...]; the step reads row t mod P with an index tensor, so it has no
    host work and can be captured. None when the batches cannot be stacked (shapes vary by step).
    """
    BUDGET_BYTES = 256 * 2**20   # device memory for prefetched batches

    def __init__(self, get_batch, steps):
        self.get_batch, self.steps = get_batch, steps
        first = get_batch(0)
        leaves, self.rebuild = batch_leaves(first)
        per_step = sum(x.numel() * x.element_size() for x in leaves)
        self.P = int(max(1, min(steps, self.BUDGET_BYTES // max(per_step, 1))))
        self.ring = [torch.empty((self.P, *x.shape), dtype=x.dtype, device=x.device) for x in leaves]
        self.filled_block = -1
        self._first = leaves

    @classmethod
    def make(cls, get_batch, steps):
        try:
            return cls(get_batch, steps)
        except DataError:
            return None

    def fill_for(self, t: int) -> None:
        b = t // self.P
        if b == self.filled_block:
            return
        t0 = b * self.P
        for i, t_ in enumerate(range(t0, min(t0 + self.P, self.steps))):
            leaves = self._first if t_ == 0 else batch_leaves(self.get_batch(t_))[0]
            if len(leaves) != len(self.ring) or any(x.shape != r.shape[1:] for x, r in zip(leaves, self.ring)):
                raise _FormChanged(t_)
            for r, x in zip(self.ring, leaves):
                r[i].copy_(x)
        self._first = None if t0 > 0 else self._first
        self.filled_block = b

    def at(self, t_dev: torch.Tensor):
        return self.rebuild([r.index_select(0, t_dev % self.P).squeeze(0) for r in self.ring])


def _vectorised(r: _Run, capture: bool | None) -> tuple[torch.Tensor, bool]:
    """All chains at once: a vmapped forward and one ordinary backward per step, every per-step
    value kept on the device; on CUDA the step is captured once and replayed. Returns (final W,
    whether the step ran captured)."""
    s, loss_of, mask, C0 = r.s, r.loss_of, r.mask, r.C0
    chains, device = C0.shape[0], C0.device
    vloss = _vmapped_loss(loss_of, 0, r.per_chain_batches)
    vloss_shared_w = _vmapped_loss(loss_of, None, True)     # w* shared, per-chain batches
    plain = vmap(loss_of, in_dims=(0, None))
    uniq = uniq_index = None
    if r.centers is not None and r.center_losses is not None and not r.per_chain_batches:
        uniq, uniq_index = _unique_rows(r.centers)          # loss at each distinct centre once
    center = r.w_star if r.centers is None else r.centers
    # batches already on the device, indexable by a device step (data.DeviceBatches), are read
    # in place; any other get_batch is fetched ahead into a device ring
    feed = r.get_batch if hasattr(r.get_batch, "at") else _BatchFeed.make(r.get_batch, r.steps)
    if r.per_chain_batches:
        _check_chain_stacked(r.get_batch(0), chains)
    t_dev = torch.zeros(1, dtype=torch.long, device=device)  # the step index, on the device
    W = (C0 if r.start is None else r.start).clone()
    state = init_state(s, W)
    noise = r.noise

    def vgv(Wx, batch):  # (∇L, L) for all chains.
        # why not vmap(grad(...)): chains are independent, so ∂(ΣL_c)/∂W row c = ∇L_c, and plain
        # autograd through a vmapped forward has less per-step overhead than functorch's grad.
        Wx = Wx.detach().requires_grad_(True)
        L = vloss(Wx, batch)
        return torch.autograd.grad(L.sum(), Wx)[0], L.detach()

    def step(t: int, mala: bool) -> None:
        batch = feed.at(t_dev) if feed else r.get_batch(t)
        if r.center_losses is not None:
            with torch.no_grad():
                if r.centers is None and not r.per_chain_batches:
                    cl = loss_of(r.w_star, batch).reshape(1)
                elif r.centers is None:
                    cl = vloss_shared_w(r.w_star, batch)
                elif r.per_chain_batches:
                    cl = vloss(r.centers, batch)
                else:
                    cl = plain(uniq, batch)[uniq_index]
                r.center_losses.index_copy_(-1, t_dev, cl.reshape(*r.center_losses.shape[:-1], 1))
        G, L = vgv(W, batch)
        r.losses.index_copy_(1, t_dev, L.reshape(chains, 1))
        xi = noise.buf.index_select(1, t_dev % noise.block).squeeze(1)
        W_new = sgld_update(W, G, center, xi, state, s, mask)
        if mala:
            G2, L2 = vgv(W_new, batch)
            d0, d1 = drift_of(W, G, center, s), drift_of(W_new, G2, center, s)
            if mask is not None:
                d0, d1 = d0 * mask, d1 * mask
            r.accept_sum.add_(_mala_log_accept(W, W_new, d0, d1, r.potential(W, L, center),
                                               r.potential(W_new, L2, center), s.epsilon).exp())
        W.copy_(W_new)
        t_dev.add_(1)

    want = (device.type == "cuda" and feed is not None) if capture is None else bool(capture)
    if want and (device.type != "cuda" or feed is None):
        raise SamplerError("capture=True needs a CUDA device and batches of one shape at every step")
    graph, side = None, None
    if want and r.steps > CAPTURE_WARMUP:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
    observe_at = r.observe_at
    for t in range(r.steps):
        noise.fill_for(t)
        if isinstance(feed, _BatchFeed):
            try:
                feed.fill_for(t)
            except _FormChanged:     # batch shapes vary: fetch each step's batch directly from now
                feed = graph = None
        if t in observe_at:
            with torch.no_grad():
                r.observed[:, observe_at[t]] = plain(W, r.observe_batch)
        if graph is not None and t not in r.draw_set:
            graph.replay()
        elif side is not None and graph is None:      # warm-up steps run on the side stream
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                step(t, t in r.draw_set)
            torch.cuda.current_stream(device).wait_stream(side)
            if t == CAPTURE_WARMUP - 1:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=side):
                    step(t + 1, False)                  # recorded, not run: replayed from t + 1
        else:
            step(t, t in r.draw_set)
        if r.progress:
            r.progress(t)
    return W, graph is not None
