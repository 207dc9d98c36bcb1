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

Noise comes from one generator per chain, drawn as one flat [D] vector per step. The vectorised
path fills row c of its [C, D] noise from generator c; the sequential path draws the same [D]
vector from the same generator. Both paths are therefore fed identical noise by construction
(the "shared-noise" property the tests check), whichever path runs.

    >>> import torch
    >>> s = SGLDSettings(epsilon=1e-3, nbeta=100.0, gamma=10.0)
    >>> w = torch.zeros(4, 3); g = torch.ones(4, 3)                  # [C, D]
    >>> state = init_state(s, w)
    >>> w2 = sgld_update(w, g, torch.zeros(3), torch.zeros(4, 3), state, s)
    >>> round(float(w2[0, 0]), 6)                                   # −(ε/2)·nβ·g
    -0.05
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, vmap

SAMPLERS = ("sgld", "rmsprop_sgld")


class SamplerError(ValueError):
    """A sampler setting that cannot work; the message names it and what to do."""


@dataclass(frozen=True)
class SGLDSettings:
    epsilon: float                # step size ε
    nbeta: float                  # inverse temperature times n (nβ)
    gamma: float                  # localisation strength γ
    kind: str = "sgld"            # sgld | rmsprop_sgld
    rmsprop_alpha: float = 0.99   # RMSProp moving-average coefficient (devinterp's default)
    rmsprop_eps: float = 0.1      # RMSProp stability constant (devinterp's default)

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

@dataclass
class ChainRun:
    losses: torch.Tensor            # [C, T] minibatch loss at the weights before each step
    final_w: torch.Tensor           # [C, D]
    mala_accept: torch.Tensor | None  # [C] mean MALA acceptance probability over draw steps
    vectorized: bool                # which path actually ran
    center_losses: torch.Tensor | None = None  # [T] minibatch loss at w* on each step's batch


def chain_generators(seed: int, chains: int, device) -> list[torch.Generator]:
    """One noise generator per chain, seeded from (seed, chain) so chain c's noise does not
    depend on how many chains run beside it."""
    from llc_watch.tasks.base import derive_seed  # stable sha256-based seed derivation
    gens = []
    for c in range(chains):
        g = torch.Generator(device=device)
        g.manual_seed(derive_seed(seed, "sgld-noise", c))
        gens.append(g)
    return gens


def _mala_log_accept(w, w_new, drift, drift_new, u, u_new, eps):
    """log MH acceptance of the Langevin proposal w -> w_new (plain SGLD), per leading index.

    q(b|a) = N(b; a − (ε/2)·∇U(a), ε·I); U = nβ·L + (γ/2)‖w − w*‖².
    """
    fwd = (w_new - w + 0.5 * eps * drift).pow(2).sum(-1)
    bwd = (w - w_new + 0.5 * eps * drift_new).pow(2).sum(-1)
    return torch.clamp(u - u_new + (fwd - bwd) / (2 * eps), max=0.0)


def run_chains(loss_of: Callable, flat: FlatParams, s: SGLDSettings, *, chains: int,
               steps: int, get_batch: Callable[[int], object], seed: int,
               draw_steps: Iterable[int] = (), mala: bool = False, vectorized: bool = True,
               center_loss: bool = False,
               progress: Callable[[int], None] | None = None) -> ChainRun:
    """Run `chains` localised SGLD chains for `steps` steps from w*.

    get_batch(t) gives step t's minibatch (shared by every chain). Losses are recorded at every
    step (before the update), so burn-in can be inspected. With mala=True, at each step in
    draw_steps the MH acceptance of the proposal just taken is estimated on that step's batch
    (one extra gradient evaluation per draw; plain SGLD only). With center_loss=True, the loss at w*
    on each step's batch is recorded too (one forward per step, shared by all chains).
    """
    s.validate()
    w_star = flat.w_star
    device, D = w_star.device, w_star.numel()
    mask = flat.mask
    gens = chain_generators(seed, chains, device)
    draw_set = set(draw_steps) if mala and s.kind == "sgld" else set()
    losses = torch.full((chains, steps), float("nan"), device=device)
    accept_sum = torch.zeros(chains, device=device)
    centers = torch.full((steps,), float("nan"), device=device) if center_loss else None

    def record_center(t, batch):
        if centers is not None:
            with torch.no_grad():
                centers[t] = loss_of(w_star, batch).detach()

    def gv(w, batch):   # (∇L, L) for one chain's w [D]
        w = w.detach().requires_grad_(True)
        L = loss_of(w, batch)
        return torch.autograd.grad(L, w)[0], L.detach()

    def vgv(W, batch):  # (∇L, L) for all chains: a vmapped forward, one ordinary backward.
        # why not vmap(grad(...)): chains are independent, so ∂(ΣL_c)/∂W row c = ∇L_c, and plain
        # autograd through a vmapped forward has less per-step overhead than functorch's grad.
        W = W.detach().requires_grad_(True)
        L = vmap(loss_of, in_dims=(0, None))(W, batch)
        return torch.autograd.grad(L.sum(), W)[0], L.detach()

    def potential(w, loss):
        u = s.nbeta * loss
        return u + 0.5 * s.gamma * (w - w_star).pow(2).sum(-1) if s.gamma else u

    if vectorized:
        W = w_star.expand(chains, D).clone()
        state = init_state(s, W)
        noise = torch.empty(chains, D, device=device, dtype=w_star.dtype)
        for t in range(steps):
            batch = get_batch(t)
            record_center(t, batch)
            G, L = vgv(W, batch)
            losses[:, t] = L.detach()
            for c in range(chains):
                noise[c].normal_(generator=gens[c])
            W_new = sgld_update(W, G, w_star, noise, state, s, mask)
            if t in draw_set:
                G2, L2 = vgv(W_new, batch)
                d0, d1 = drift_of(W, G, w_star, s), drift_of(W_new, G2, w_star, s)
                if mask is not None:
                    d0, d1 = d0 * mask, d1 * mask
                accept_sum += _mala_log_accept(W, W_new, d0, d1, potential(W, L),
                                               potential(W_new, L2), s.epsilon).exp()
            W = W_new.detach()
            if progress:
                progress(t)
        final = W
    else:
        ws = [w_star.clone() for _ in range(chains)]
        states = [init_state(s, w) for w in ws]
        for t in range(steps):
            batch = get_batch(t)
            record_center(t, batch)
            for c in range(chains):
                g, L = gv(ws[c], batch)
                losses[c, t] = L.detach()
                xi = torch.empty(D, device=device, dtype=w_star.dtype).normal_(generator=gens[c])
                w_new = sgld_update(ws[c], g, w_star, xi, states[c], s, mask)
                if t in draw_set:
                    g2, L2 = gv(w_new, batch)
                    d0, d1 = drift_of(ws[c], g, w_star, s), drift_of(w_new, g2, w_star, s)
                    if mask is not None:
                        d0, d1 = d0 * mask, d1 * mask
                    accept_sum[c] += _mala_log_accept(ws[c], w_new, d0, d1, potential(ws[c], L),
                                                      potential(w_new, L2), s.epsilon).exp()
                ws[c] = w_new.detach()
            if progress:
                progress(t)
        final = torch.stack(ws)
    mala_accept = accept_sum / len(draw_set) if draw_set else None
    return ChainRun(losses.cpu(), final, None if mala_accept is None else mala_accept.cpu(),
                    vectorized, None if centers is None else centers.cpu())
