"""GP smoothing of one signal over x = log(step + 1): the posterior mean, its sd, slope and curvature.

    >>> s = smooth_signal([1, 10, 100, 1000, 10000], [0.0, 1.0, 2.0, 3.0, 4.0])
    >>> s.x.shape == s.mean.shape
    True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_solve, cholesky, solve_triangular

def log_step(step) -> np.ndarray:
    """The x axis of every stage map: log(step + 1), so step 0 is allowed."""
    return np.log(np.asarray(step, dtype=float) + 1.0)


def step_of(x) -> np.ndarray:
    return np.expm1(np.asarray(x, dtype=float))



@dataclass
class Smooth:
    """A GP fit of one signal on x = log(step + 1), evaluated on a dense grid.

    mean, sd, slope, curvature are on `x` (the grid) in the signal's own units. `operator` maps
    standardised data to the standardised grid mean (the posterior mean is linear in the data), so
    resampled curves cost one matrix product.
    """

    x: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    lengthscale: float
    noise: np.ndarray          # per-point noise sd used for resampling, signal units
    fitted: np.ndarray         # posterior mean at the data points, signal units
    center: float
    scale: float
    operator: np.ndarray
    evidence_change: float = float("inf")     # log marginal likelihood gain over a constant + noise
    evidence_nonlinear: float = float("inf")  # ... over a straight line (in log step) + noise

    @property
    def slope(self) -> np.ndarray:
        return np.gradient(self.mean, self.x)  # central differences, as Hoogland et al.

    @property
    def curvature(self) -> np.ndarray:
        return np.gradient(self.slope, self.x)

    @property
    def steps(self) -> np.ndarray:
        return step_of(self.x)

    def at(self, step) -> np.ndarray:
        """Smoothed value at `step` (linear interpolation on the grid)."""
        return np.atleast_1d(np.interp(log_step(step), self.x, self.mean))



def _kernel(a, b, ell, var, center=0.0, span=1.0):
    """Matérn 5/2 plus a broad linear trend.

    Matérn 5/2 is smooth enough for a slope and a curvature but rounds kinks off less than the
    squared-exponential kernel (peaks stay put); the linear term stops the fit from bending back to
    the mean at both ends, which would fake a boundary there."""
    r = np.sqrt(5.0) * np.abs(a[:, None] - b[None, :]) / ell
    trend = 1.0 + 10.0 * np.outer(a - center, b - center) / span**2
    return var * (1.0 + r + r * r / 3.0) * np.exp(-r) + trend


def smooth_signal(steps, values, stderr=None, grid: int = 400) -> Smooth:
    """Fit a GP (Matérn 5/2 kernel, per-point noise stderr² + a fitted nugget) to values over log(step + 1).

    Hyperparameters (length scale, signal variance, nugget) maximise the marginal likelihood over a
    small grid, on the standardised signal, so the fit is unchanged by y -> a*y + b.

        >>> s = smooth_signal([1, 10, 100, 1000, 10000], [0.0, 1.0, 2.0, 3.0, 4.0])
        >>> bool(abs(s.at(100)[0] - 2.0) < 0.2)
        True
    """
    x = log_step(steps)
    y = np.asarray(values, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"steps and values must be 1-D and the same length, got {x.shape} and {y.shape}")
    se = np.zeros_like(y) if stderr is None else np.nan_to_num(np.asarray(stderr, dtype=float), nan=0.0)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, se = x[ok], y[ok], np.abs(se[ok])
    order = np.argsort(x, kind="stable")
    x, y, se = x[order], y[order], se[order]
    if len(x) < 4 or np.ptp(x) == 0:
        raise ValueError(f"need at least 4 checkpoints at distinct steps to smooth a signal, got {len(x)}")
    center, scale = float(np.mean(y)), float(np.std(y))
    if scale == 0 or not np.isfinite(scale):
        scale = 1.0  # a constant signal: nothing to find, but keep the fit well defined
    ys, ses = (y - center) / scale, se / scale

    span = float(np.ptp(x))
    dx = np.diff(np.unique(x))
    ell_min = max(2.0 * float(np.median(dx)), span / 60)
    xc = float(np.mean(x))
    # hyperparameters from at most 200 evenly picked points: 300 Cholesky factorisations of a
    # 2000-checkpoint run would take minutes; the final fit below uses every point
    sub = np.unique(np.linspace(0, len(x) - 1, min(len(x), 200)).round().astype(int))
    xs_, ys_, ses_ = x[sub], ys[sub], ses[sub]
    eye = np.eye(len(sub))
    trend = _kernel(xs_, xs_, 1.0, 0.0, xc, span)

    def lml(K):
        try:
            L = cholesky(K, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return -np.inf
        a = solve_triangular(L, ys_, lower=True, check_finite=False)
        return -0.5 * a @ a - np.log(np.diag(L)).sum()

    nugs = (1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0)
    # the null models a boundary has to beat: a constant, a straight line (each + fitted noise)
    lml_const = max(lml(np.ones_like(trend) + np.diag(ses_**2 + n**2) + 1e-9 * eye) for n in nugs)
    lml_line = max(lml(trend + np.diag(ses_**2 + n**2) + 1e-9 * eye) for n in nugs)
    best = (-np.inf, None)
    for ell in np.geomspace(ell_min, span, 14):
        base = _kernel(xs_, xs_, ell, 1.0, xc, span) - trend
        for var in (0.25, 1.0, 4.0):
            for nug in nugs:
                ll = lml(var * base + trend + np.diag(ses_**2 + nug**2) + 1e-9 * eye)
                if ll > best[0] + 1e-9:  # ties go to the first, i.e. the shortest length scale
                    best = (ll, (ell, var, nug))
    ell, var, nug = best[1]
    noise_s = np.sqrt(ses**2 + nug**2)
    K = _kernel(x, x, ell, var, xc, span) + np.diag(noise_s**2) + 1e-9 * np.eye(len(x))
    xg = np.linspace(x[0], x[-1], grid)
    Ks = _kernel(xg, x, ell, var, xc, span)
    L = cholesky(K, lower=True, check_finite=False)
    v = solve_triangular(L, Ks.T, lower=True, check_finite=False)
    op = solve_triangular(L.T, v, lower=False, check_finite=False).T  # grid x data: Ks K^-1
    prior = var + 1.0 + 10.0 * (xg - xc) ** 2 / span**2  # the kernel's diagonal on the grid
    sd = np.sqrt(np.clip(prior - (v**2).sum(0), 0, None))
    fitted = _kernel(x, x, ell, var, xc, span) @ cho_solve((L, True), ys, check_finite=False)
    return Smooth(x=xg, mean=center + scale * (op @ ys), sd=scale * sd, lengthscale=float(ell),
                  noise=scale * noise_s, fitted=center + scale * fitted, center=center, scale=scale,
                  operator=op, evidence_change=float(max(best[0], lml_line) - lml_const),
                  evidence_nonlinear=float(best[0] - lml_line))

