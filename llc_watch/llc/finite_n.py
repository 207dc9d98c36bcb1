"""Finite-n targets for linear networks: what an exact sampler reads at this n and γ.

A learning coefficient λ is a limit n → ∞. What λ̂ = nβ·(E_w[L_n(w)] − L_n(w*)) estimates at a
finite n is the expectation under the localised posterior exp(−nβ·L_n(w) − (γ/2)‖w − w*‖²) at that
nβ and γ; at a singular w* the two can differ by more than any sampler's error (normal crossing:
`exact.normal_crossing_expected_llc`, by quadrature). For a network of bias-free linear layers
with y's noise orthogonal to x (`exact.make_dln`, `exact.make_rrr`) the whole data enter the loss
through S = xᵀx/n:

    L_n(w) − L_n(w*) = ½ tr((P(w) − P*) S (P(w) − P*)ᵀ),    P(w) = W_L ⋯ W_1,

so the full-data gradient costs a few small matrix products, whatever n. On that potential,
Hamiltonian Monte Carlo with a Metropolis test has no step-size bias and no minibatch noise: its
mean is the finite-n target up to Monte Carlo error, which split-R̂ and the bulk ESS of the
per-trajectory trace measure (`diagnostics`). Each trajectory lasts about a quarter period of the
γ-confined flat directions, so those directions decorrelate in a few trajectories, not in the
2/(εγ) steps of Langevin dynamics.

    >>> from llc_watch.llc import exact
    >>> model, _, (x, _), lam = exact.make_rrr(3, 2, 3, 2, n=2000)   # a full-rank true map: λ = 4
    >>> t = linear_expected_llc(model, x, nbeta=2000 / math.log(2000), gamma=1.0, chains=4, iters=500)
    >>> t.draws.shape, lam, round(t.value), t.trusted               # [chains, trajectories kept]
    ((4, 500), 4.0, 4, True)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from . import diagnostics as dg

RHAT_MAX = 1.01              # Vehtari et al. 2021, as the estimator's diagnostics
ESS_MIN_PER_CHAIN = 100
TARGET_ACCEPT = 0.8          # HMC's step is tuned towards this mean acceptance during warm-up
MAX_LEAPFROG = 20000         # a trajectory longer than this is cut (and the run says so)


@dataclass
class FiniteNTarget:
    value: float             # E[nβ·(L_n(w) − L_n(w*))] under the localised posterior
    stderr: float            # Monte Carlo error: the larger of sd / √(ESS of the mean) and the chain means' se
    rhat: float              # rank-normalised split-R̂ of the per-trajectory trace
    ess_bulk: float
    acceptance: float        # mean Metropolis acceptance after warm-up
    step: float              # leapfrog step (median over chains)
    leapfrog: int            # mean leapfrog steps per trajectory
    nbeta: float
    gamma: float
    chains: int
    iters: int               # trajectories per chain after warm-up
    seconds: float
    warnings: list[str] = field(default_factory=list)
    draws: np.ndarray | None = field(default=None, repr=False, compare=False)   # [chains, iters] the trace

    @property
    def trusted(self) -> bool:
        return (self.rhat <= RHAT_MAX and self.ess_bulk >= ESS_MIN_PER_CHAIN * self.chains
                and not self.warnings)


def _layers(model) -> list[np.ndarray]:
    mods = [model] if isinstance(model, nn.Linear) else list(model)
    if not mods or not all(isinstance(m, nn.Linear) and m.bias is None for m in mods):
        raise ValueError("linear_expected_llc takes an nn.Linear or an nn.Sequential of nn.Linear layers "
                         "without biases (exact.make_dln, exact.make_rrr)")
    return [m.weight.detach().double().cpu().numpy() for m in mods]


def _t(a):
    return np.swapaxes(a, -1, -2)


def _heads(ws: list[np.ndarray]) -> list[np.ndarray]:
    """The products of the first layers: heads[i] = W_i ⋯ W_0 (heads[-1] is the network's map)."""
    heads = [ws[0]]
    for W in ws[1:]:
        heads.append(W @ heads[-1])
    return heads


class _Potential:
    """U(w) = nβ·½ tr(D S Dᵀ) + (γ/2)‖w − w*‖², D = P(w) − P*, for chains stacked on axis 0."""

    def __init__(self, w_star: list[np.ndarray], S: np.ndarray, nbeta: float, gamma: float):
        self.w_star, self.S, self.nbeta, self.gamma = [w[None] for w in w_star], S, nbeta, gamma
        self.P_star = _heads(w_star)[-1]

    def __call__(self, ws: list[np.ndarray]):
        """(U [C], nβ·(L_n(w) − L_n(w*)) [C], ∇U per layer)."""
        heads = _heads(ws)
        DS = (heads[-1] - self.P_star) @ self.S
        excess = self.nbeta * 0.5 * np.einsum("coi,coi->c", DS, heads[-1] - self.P_star)
        grads, tail = [None] * len(ws), None              # tail = W_L ⋯ W_{i+1}
        for i in range(len(ws) - 1, -1, -1):
            g = DS if tail is None else _t(tail) @ DS
            if i > 0:
                g = g @ _t(heads[i - 1])
            grads[i] = self.nbeta * g + self.gamma * (ws[i] - self.w_star[i])
            tail = ws[i] if tail is None else tail @ ws[i]
        prior = sum(((W - W0) ** 2).sum((1, 2)) for W, W0 in zip(ws, self.w_star))
        return excess + 0.5 * self.gamma * prior, excess, grads


def linear_expected_llc(model, x, nbeta: float, gamma: float, *, chains: int = 8, iters: int = 2000,
                        warmup: int | None = None, seed: int = 0, progress: bool = False) -> FiniteNTarget:
    """E[nβ·(L_n(w) − L_n(w*))] under the localised tempered posterior at the model's weights w*,
    by exact HMC on the full-data loss (module docstring). x: the inputs [n, H_0] (y is not needed:
    its noise is orthogonal to x). iters: trajectories per chain kept after `warmup` (iters/2 by
    default), during which the step is tuned towards TARGET_ACCEPT; the chains start at w*."""
    t0 = time.perf_counter()
    if not (nbeta > 0 and gamma > 0 and math.isfinite(nbeta) and math.isfinite(gamma)):
        raise ValueError(f"nbeta={nbeta!r}, gamma={gamma!r}: both must be positive and finite")
    if chains < 2 or iters < 8:
        raise ValueError(f"chains={chains}, iters={iters}: split-R̂ needs at least 2 chains and 8 kept trajectories")
    w_star = _layers(model)
    X = np.asarray(x.detach().double().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != w_star[0].shape[1]:
        raise ValueError(f"x has shape {X.shape}; expected [n, {w_star[0].shape[1]}] (the first layer's inputs)")
    pot = _Potential(w_star, X.T @ X / len(X), float(nbeta), float(gamma))
    warmup = iters // 2 if warmup is None else int(warmup)
    rng = np.random.default_rng(seed)
    ws = [np.repeat(w[None], chains, 0) for w in w_star]
    U, excess, grads = pot(ws)
    # start the step at the stiffest direction's stability bound, 1/√(nβ·‖S‖·‖P*‖-ish), and let
    # warm-up find the rest: too large a first step only costs rejected trajectories
    scale = max(float(np.linalg.norm(pot.S, 2)) * max(float(np.linalg.norm(w, 2)) for w in w_star) ** 2, 1.0)
    eps = np.full(chains, 0.5 / math.sqrt(nbeta * scale + gamma))
    period = 0.5 * math.pi / math.sqrt(gamma)               # a quarter period of the flat directions
    trace = np.empty((chains, iters))
    acc_sum, steps_sum, cut = 0.0, 0, 0
    total = warmup + iters
    for t in range(total):
        e = eps[:, None, None]
        L = int(math.ceil(period / float(np.median(eps)) * rng.uniform(0.5, 1.0)))  # jittered: no resonance
        if L > MAX_LEAPFROG:
            L, cut = MAX_LEAPFROG, cut + (t >= warmup)
        p = [rng.standard_normal(W.shape) for W in ws]
        H0 = U + 0.5 * sum((q ** 2).sum((1, 2)) for q in p)
        q, g = [W.copy() for W in ws], grads
        with np.errstate(over="ignore", invalid="ignore"):
            p = [pp - 0.5 * e * gg for pp, gg in zip(p, g)]
            for step in range(L):
                q = [qq + e * pp for qq, pp in zip(q, p)]
                U1, ex1, g = pot(q)
                p = [pp - (e if step < L - 1 else 0.5 * e) * gg for pp, gg in zip(p, g)]
            H1 = U1 + 0.5 * sum((pp ** 2).sum((1, 2)) for pp in p)
        log_a = np.where(np.isfinite(H1), np.minimum(H0 - H1, 0.0), -np.inf)
        a_prob = np.exp(log_a)
        take = rng.random(chains) < a_prob
        ws = [np.where(take[:, None, None], qq, W) for qq, W in zip(q, ws)]
        grads = [np.where(take[:, None, None], gg, g0) for gg, g0 in zip(g, grads)]
        U, excess = np.where(take, U1, U), np.where(take, ex1, excess)
        if t < warmup:   # Robbins-Monro on log ε, faster at first
            eps = eps * np.exp((0.5 if t < 20 else 0.05) * (a_prob - TARGET_ACCEPT))
        else:
            trace[:, t - warmup] = excess
            acc_sum += float(a_prob.mean())
            steps_sum += L
        if progress and (t + 1) % max(total // 20, 1) == 0:
            kept = trace[:, :t - warmup + 1]
            what = f"running mean {kept.mean():.4g}" if t >= warmup else f"warm-up (now {float(excess.mean()):.4g})"
            print(f"  trajectory {t + 1}/{total}: L={L} ε={float(np.median(eps)):.3g} {what} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    r, ess = dg.rhat(trace), dg.ess_bulk(trace)
    # the larger of two Monte Carlo errors, from the autocorrelation and from the chains' means. Both
    # can still be short: on rrr 4-3-5, r = 0 (1,000 trajectories × 8 chains) seven seeds spread
    # 0.074 against ~0.048 from either; excursions along the arms are rarer than one run sees
    sd = float(trace.std(ddof=1))
    se = max(sd / math.sqrt(max(dg.ess_mean(trace), 1.0)), float(trace.mean(1).std(ddof=1)) / math.sqrt(chains))
    warnings = []
    if cut:
        warnings.append(f"{cut} kept trajectories were cut at {MAX_LEAPFROG} leapfrog steps (shorter than a quarter "
                        "period of the flat directions): mixing there is slower than planned")
    return FiniteNTarget(value=float(trace.mean()), stderr=se, rhat=float(r),
                         ess_bulk=float(ess), acceptance=acc_sum / iters, step=float(np.median(eps)),
                         leapfrog=round(steps_sum / iters), nbeta=float(nbeta), gamma=float(gamma), chains=chains,
                         iters=iters, seconds=time.perf_counter() - t0, warnings=warnings,
                          draws=trace)
