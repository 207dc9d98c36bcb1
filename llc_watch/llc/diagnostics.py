"""Diagnostics that say when an LLC estimate cannot be trusted.

Inputs are per-chain traces after burn-in, [C, N] numpy arrays, plus L_n(w*) and nβ.

Convergence (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021, "Rank-normalization, folding,
and localization: an improved R̂", Bayesian Analysis 16(2)), the definitions arviz and Stan use:
  - `rhat`: rank-normalised split-R̂, the larger of the bulk R̂ (split chains, pooled ranks mapped
    to normal scores) and the tail R̂ (the same on |x − median|). Threshold RHAT_MAX = 1.01 (the
    paper's recommendation).
  - `ess_bulk`: ESS of the rank-normalised split chains; `ess_tail`: the smaller ESS of the 5 % and
    95 % quantile indicators. Geyer's initial monotone sequence over the multi-chain
    autocorrelation (BDA3 §11.5). Threshold ESS_MIN_PER_CHAIN = 100 per chain (the paper asks for
    400 over 4 chains).
They are meant for a LOW-NOISE observable: the loss at each chain's weights on one fixed
evaluation batch (`observed` in the estimator). On the minibatch loss trace, batch-to-batch noise
is independent from step to step and makes slow chains look mixed (a d = 3 model with unmixed
chains reads R̂ 1.01 / ESS 537 on batch-32 traces and R̂ 1.28 / ESS 7 at full batch).

Failed chains (never averaged in), `chain_failures`. A chain fails when
  1. a loss or a final weight is NaN/Inf ("non-finite");
  2. one draw's excess nβ·(L_t − L_n(w*)) exceeds 100·d, d = number of sampled weights, or its LLC
     exceeds d, twice the largest possible LLC d/2 ("exploding": catches devinterp 2.0.1's silent
     7.4e9 at too large an ε);
  3. relative to the other chains ("left the basin"; needs C >= 3): its LLC sits above the median
     chain by more than OUTLIER_Z robust standard deviations (1.4826·MAD of the chain LLCs) and
     by more than OUTLIER_REL of the median's size (at least 1), so an absolute threshold that
     never fires at 10⁵ parameters is not all there is.
Any excluded chain marks the estimate for review (the estimator says so).

Validity, `min_healthy`: at least max(1, ceil(min_healthy_fraction·C)) healthy chains (default
fraction 0.75) and a finite mean. Convergence problems are warnings, not invalidity.

Other warnings: drift (LLC of the second half of the draws minus the first half, flagged when
|drift| > 3 standard errors across chains *and* > 10 % of max(|λ̂|, 1)); a negative LLC.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(4, 400))                         # [C, N] well-mixed traces
    >>> rhat(x) < 1.01, ess_bulk(x) > 1000, ess_tail(x) > 800
    (True, True, True)
    >>> y = x + np.arange(4)[:, None]                         # chains at different levels
    >>> rhat(y) > 1.01
    True
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

RHAT_MAX = 1.01               # Vehtari et al. 2021
ESS_MIN_PER_CHAIN = 100       # Vehtari et al. 2021: bulk and tail ESS > 100 per chain
ESS_MIN = ESS_MIN_PER_CHAIN   # (name kept for callers of the old rule)
DRIFT_Z, DRIFT_REL = 3.0, 0.1
OUTLIER_Z, OUTLIER_REL = 6.0, 0.5


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
    ok = [c for c, r in enumerate(reasons) if r is None]
    if len(ok) >= 3:
        lam = nbeta * (draws[ok].mean(1) - init_loss)
        med = float(np.median(lam))
        scale = 1.4826 * float(np.median(np.abs(lam - med)))
        bar = med + max(OUTLIER_Z * scale, OUTLIER_REL * max(abs(med), 1.0))
        for c, v in zip(ok, lam):
            if v > bar:
                reasons[c] = (f"left the basin: chain LLC {v:.4g} > {bar:.4g} (median of the chains "
                              f"{med:.4g} + max({OUTLIER_Z:g} robust sd, {OUTLIER_REL:.0%} of it))")
    return reasons


def min_healthy(chains: int, fraction: float) -> int:
    return max(1, math.ceil(fraction * chains))


# --- rank-normalised R̂ and ESS (Vehtari et al. 2021) -------------------------------------------

def _split(x: np.ndarray) -> np.ndarray:
    """[C, N] -> [2C, N // 2]: first and last halves of every chain (the middle draw of an odd N
    is dropped)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def _normal_scores(x: np.ndarray) -> np.ndarray:
    """Pooled ranks (ties averaged) mapped to normal quantiles, Blom's offsets (r − 3/8)/(S + 1/4)."""
    r = stats.rankdata(x, method="average").reshape(x.shape)
    return stats.norm.ppf((r - 0.375) / (x.size + 0.25))


def _basic_rhat(x: np.ndarray) -> float:
    C, N = x.shape
    W = x.var(axis=1, ddof=1).mean()
    B = N * x.mean(axis=1).var(ddof=1)
    if not W > 0:
        return float("nan") if not B > 0 else float("inf")
    return float(math.sqrt(((N - 1) / N * W + B / N) / W))


def rhat(x: np.ndarray) -> float:
    """Rank-normalised split-R̂ of traces x [C, N]: max of bulk and tail (folded) R̂; NaN when
    there is too little to split or the traces are constant."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[1] < 4 or not np.isfinite(x).all():
        return float("nan")
    if np.ptp(x) == 0:
        return float("nan")
    bulk = _basic_rhat(_normal_scores(_split(x)))
    folded = np.abs(x - np.median(x))
    tail = _basic_rhat(_normal_scores(_split(folded)))
    return float(max(bulk, tail))


split_rhat = rhat   # the old name; now rank-normalised (bulk and tail)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each row of x [C, N] at lags 0..N-1 (FFT; divided by N)."""
    C, N = x.shape
    xc = x - x.mean(1, keepdims=True)
    f = np.fft.rfft(xc, n=2 * N, axis=1)
    return np.fft.irfft(f * np.conj(f), n=2 * N, axis=1)[:, :N] / N


def _ess(x: np.ndarray) -> float:
    """Multi-chain ESS of x [C, N] (BDA3 §11.5): autocorrelations from the within-chain
    autocovariances and var⁺, summed in pairs while positive (Geyer's initial positive sequence),
    the pairs made monotone (initial monotone sequence), τ bounded below by 1/log10(C·N)."""
    C, N = x.shape
    if N < 4 or not np.isfinite(x).all():
        return float("nan")
    acov = _autocov(x)
    W = acov[:, 0].mean() * N / (N - 1)
    var_plus = W * (N - 1) / N + (x.mean(1).var(ddof=1) if C > 1 else 0.0)
    if not var_plus > 0:
        return float("nan")
    rho = 1.0 - (W - acov.mean(0)) / var_plus                     # [N]
    rho[0] = 1.0
    # pair sums P_k = ρ_2k + ρ_2k+1, computed while the previous one is positive
    pairs = [rho[0] + rho[1]]
    while 2 * len(pairs) - 1 < N - 3 and pairs[-1] > 0:
        k = len(pairs)
        pairs.append(rho[2 * k] + rho[2 * k + 1])
    K = len(pairs) - 1          # the last computed pair is cut; its even lag counts if positive
    kept = np.minimum.accumulate(np.array(pairs[:K])) if K else np.zeros(0)
    tau = -1.0 + 2.0 * kept.sum() + max(rho[2 * K], 0.0)
    tau = max(tau, 1.0 / math.log10(C * N))
    return float(C * N / tau)


def _ess_input(x) -> np.ndarray | None:
    """x as float traces [C, N], or None where no ESS can be read (too short, non-finite, constant)."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[1] < 8 or not np.isfinite(x).all() or np.ptp(x) == 0:
        return None
    return x


def ess_bulk(x: np.ndarray) -> float:
    """Bulk ESS: the ESS of the rank-normalised split chains."""
    x = _ess_input(x)
    return float("nan") if x is None else _ess(_normal_scores(_split(x)))


def ess_tail(x: np.ndarray) -> float:
    """Tail ESS: the smaller ESS of the split-chain indicators x <= q05 and x <= q95."""
    x = _ess_input(x)
    if x is None:
        return float("nan")
    out = []
    for q in (0.05, 0.95):
        ind = (x <= np.quantile(x, q)).astype(float)
        out.append(_ess(_split(ind)) if np.ptp(ind) > 0 else float("nan"))
    return float(min(out))


def ess_mean(x: np.ndarray) -> float:
    """ESS of the mean: the split chains' ESS without rank normalisation (arviz's method="mean").
    The one for a mean's Monte Carlo error; the bulk ESS describes the ranks and reads high for a
    heavy right tail, such as nβ·(L − L(w*)) at a singular w*."""
    x = _ess_input(x)
    return float("nan") if x is None else _ess(_split(x))


ess = ess_bulk      # the old name; now the bulk ESS of Vehtari et al.


def mixing(x: np.ndarray) -> dict:
    """R̂ and bulk/tail ESS of traces [C, N], and whether they pass the thresholds."""
    C = x.shape[0] if np.ndim(x) == 2 else 0
    r, eb, et = rhat(x), ess_bulk(x), ess_tail(x)
    need = ESS_MIN_PER_CHAIN * max(C, 1)
    ok = bool(math.isfinite(r) and r <= RHAT_MAX and math.isfinite(eb) and eb >= need
              and math.isfinite(et) and et >= need)
    return {"rhat": r, "ess_bulk": eb, "ess_tail": et, "ess_needed": need, "mixed": ok}


def shared_noise_stderr(draws: np.ndarray, nbeta: float) -> float:
    """Standard error of the LLC from the chain-averaged trace's own time series (via its ESS).

    Chains share the minibatch stream, so minibatch noise is common to all of them and invisible to
    the cross-chain standard error; this one sees it (and is conservative when the draws cover whole
    epochs, where sampling without replacement makes the batch noise cancel).
    """
    m = draws.mean(0, keepdims=True)                               # [1, N]
    e = _ess(m)
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
