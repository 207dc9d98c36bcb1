"""Diagnostics that say when an LLC estimate cannot be trusted.

Inputs are per-chain loss traces after burn-in, `draws` [C, N] (numpy), plus L_n(w*) and nβ.

Failed chains (never averaged in), `chain_failures`. A chain fails when
  1. a loss or a final weight is NaN/Inf ("non-finite");
  2. one draw's excess nβ·(L_t − L_n(w*)) exceeds 100·d, d = number of sampled weights
     ("exploding": a transient blow-up no posterior of d weights can produce);
  3. its LLC λ_c = nβ·(mean_t L_t − L_n(w*)) exceeds d, twice the largest possible LLC d/2
     ("exploding"). This is what catches devinterp 2.0.1's silent 7.4e9 at too large an ε.

Validity, `is_valid`: at least max(1, ceil(min_healthy_fraction·C)) healthy chains (default
fraction 0.75) and a finite mean. Convergence problems below are warnings, not invalidity.

Convergence warnings:
  - split-R̂ (Gelman et al. 2013, BDA3 §11.4) of the loss traces across healthy chains > 1.1;
  - effective sample size of the traces (Geyer initial positive sequence over the
    chain-averaged autocorrelation) below ESS_MIN = 50 in total;
  - drift: LLC of the second half of the draws minus that of the first half, averaged over
    chains; flagged when |drift| > 3 standard errors (across chains) *and* > 10 % of max(|λ̂|, 1);
  - negative LLC: w* is not a local minimum of the loss at this resolution (the sampler found
    lower loss), e.g. an untrained checkpoint.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(4, 400))                         # [C, N] well-mixed traces
    >>> 0.98 < split_rhat(x) < 1.02, ess(x) > 1000
    (True, True)
"""
from __future__ import annotations

import math

import numpy as np

RHAT_MAX = 1.1
ESS_MIN = 50
DRIFT_Z, DRIFT_REL = 3.0, 0.1


def chain_failures(draws: np.ndarray, all_losses: np.ndarray, final_finite: np.ndarray,
                   init_loss: float, nbeta: float, n_sampled: int) -> list[str | None]:
    """Per chain: None when healthy, else the reason it failed (see the module docstring).

    draws: [C, N] post-burn-in losses; all_losses: [C, T] every step; final_finite: [C] bool.
    """
    reasons: list[str | None] = []
    d = max(n_sampled, 1)
    for c in range(draws.shape[0]):
        if not np.isfinite(all_losses[c]).all() or not final_finite[c]:
            bad = ~np.isfinite(all_losses[c])
            reasons.append(f"non-finite loss from step {int(np.argmax(bad))}" if bad.any()
                           else "non-finite weights")
            continue
        excess = nbeta * (draws[c] - init_loss)
        if excess.max() > 100 * d:
            reasons.append(f"exploding: a draw's excess nβ·(L−L*)={excess.max():.3g} > 100·d={100 * d}")
        elif excess.mean() > d:
            reasons.append(f"exploding: chain LLC {excess.mean():.3g} > d={d} (an LLC is at most d/2)")
        else:
            reasons.append(None)
    return reasons


def min_healthy(chains: int, fraction: float) -> int:
    return max(1, math.ceil(fraction * chains))


def split_rhat(x: np.ndarray) -> float:
    """Split-R̂ of traces x [C, N]; NaN when there is too little to split."""
    C, N = x.shape
    half = N // 2
    if half < 2 or C < 1:
        return float("nan")
    s = np.concatenate([x[:, :half], x[:, N - half:]], axis=0)   # [2C, half]
    means, vars_ = s.mean(1), s.var(1, ddof=1)
    W = vars_.mean()
    B = half * means.var(ddof=1)
    if W <= 0:
        return float("nan") if B <= 0 else float("inf")
    var_plus = (half - 1) / half * W + B / half
    return float(np.sqrt(var_plus / W))


def _autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each row of x [C, N] at lags 0..N-1 (FFT)."""
    C, N = x.shape
    xc = x - x.mean(1, keepdims=True)
    f = np.fft.rfft(xc, n=2 * N, axis=1)
    return np.fft.irfft(f * np.conj(f), axis=1)[:, :N] / N


def ess(x: np.ndarray) -> float:
    """Effective sample size of traces x [C, N] (multi-chain, Geyer initial positive sequence)."""
    C, N = x.shape
    if N < 4:
        return float("nan")
    acov = _autocov(x)
    W = (acov[:, 0] * N / (N - 1)).mean()
    if W <= 0:
        return float("nan")
    var_plus = W * (N - 1) / N + (x.mean(1).var(ddof=1) if C > 1 else 0.0)
    rho = 1.0 - (W - acov.mean(0)) / var_plus                      # [N]
    rho[0] = 1.0
    total, t = 0.0, 0
    while t + 1 < N:
        pair = rho[t] + rho[t + 1]
        if pair < 0:
            break
        total += pair
        t += 2
    tau = max(-1.0 + 2.0 * total, 1.0 / math.log10(max(C * N, 10)))
    return float(C * N / tau)


def shared_noise_stderr(draws: np.ndarray, nbeta: float) -> float:
    """Standard error of the LLC from the chain-averaged trace's own time series (via its ESS).

    Chains share the minibatch stream, so minibatch noise is common to all of them and invisible to
    the cross-chain standard error; this one sees it (and is conservative when the draws cover whole
    epochs, where sampling without replacement makes the batch noise cancel).
    """
    m = draws.mean(0, keepdims=True)                               # [1, N]
    e = ess(m)
    if not math.isfinite(e) or e <= 0:
        return float("nan")
    return float(nbeta * m.std(ddof=1) / math.sqrt(e))


def drift(draws: np.ndarray, init_loss: float, nbeta: float) -> tuple[float, float]:
    """(second-half LLC − first-half LLC averaged over chains, its standard error)."""
    N = draws.shape[1]
    if N < 4:
        return float("nan"), float("nan")
    h = N // 2
    d = nbeta * (draws[:, N - h:].mean(1) - draws[:, :h].mean(1))   # [C]
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return float(d.mean()), float(se)


def drift_flag(value: float, se: float, llc: float) -> bool:
    if not math.isfinite(value):
        return False
    big = abs(value) > DRIFT_REL * max(abs(llc), 1.0)
    significant = (not math.isfinite(se)) or abs(value) > DRIFT_Z * se
    return bool(big and significant)
