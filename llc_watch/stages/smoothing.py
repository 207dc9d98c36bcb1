"""GP smoothing of one signal over x = log(step + 1): posterior mean, sd, and posterior function samples.

As in Hoogland et al. (arXiv 2402.02364): a Gaussian process with a constant x squared-exponential
(RBF) kernel plus noise, hyperparameters fitted by maximising the marginal likelihood from several
starts. We add a broad linear trend to the kernel (so the fit does not bend back to the mean at both
ends, which would fake a critical point there) and each point's own standard error to the noise.

The derivative of a GP is a GP; rather than carry its covariance separately we draw whole
functions from the posterior on a fine grid (`Smooth.sample`) and differentiate each one: the
spread of slopes across draws is the posterior of d(signal)/d log(step).

    >>> s = smooth_signal([1, 10, 100, 1000, 10000], [0.0, 1.0, 2.0, 3.0, 4.0])
    >>> s.x.shape == s.mean.shape
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import cho_solve, cholesky, solve_triangular
from scipy.optimize import minimize


def log_step(step) -> np.ndarray:
    """The x axis of every stage map: log(step + 1), so step 0 is allowed."""
    return np.log(np.asarray(step, dtype=float) + 1.0)


def step_of(x) -> np.ndarray:
    return np.expm1(np.asarray(x, dtype=float))


@dataclass
class Smooth:
    """A GP fit of one signal on x = log(step + 1), evaluated on a dense grid.

    mean, sd are on `x` (the grid) in the signal's own units. `operator` maps standardised data to
    the standardised grid mean (the posterior mean is linear in the data). `root` is a square root
    of the standardised posterior covariance on the grid (grid x rank): mean + scale * root @ z is a
    posterior function draw.
    """

    x: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    lengthscale: float
    noise: np.ndarray          # per-point noise sd (stderr and fitted nugget), signal units
    fitted: np.ndarray         # posterior mean at the data points, signal units
    center: float
    scale: float
    operator: np.ndarray
    evidence_change: float = float("inf")     # log marginal likelihood gain over a constant + noise
    evidence_nonlinear: float = float("inf")  # ... over a straight line (in log step) + noise
    root: np.ndarray | None = field(default=None, repr=False)
    hyper: dict = field(default_factory=dict)  # fitted signal variance, length scale, nugget (standardised)

    @property
    def slope(self) -> np.ndarray:
        return np.gradient(self.mean, self.x)

    @property
    def curvature(self) -> np.ndarray:
        return np.gradient(self.slope, self.x)

    @property
    def steps(self) -> np.ndarray:
        return step_of(self.x)

    def at(self, step) -> np.ndarray:
        """Smoothed value at `step` (linear interpolation on the grid)."""
        return np.atleast_1d(np.interp(log_step(step), self.x, self.mean))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """`n` posterior function draws on the grid, signal units, shape (grid, n).

            >>> s = smooth_signal(np.arange(1, 50), np.sin(np.log(np.arange(1, 50))))
            >>> s.sample(3).shape == (len(s.x), 3)
            True
        """
        z = np.random.default_rng(seed).standard_normal((self.root.shape[1], n))
        return self.mean[:, None] + self.scale * (self.root @ z)


def _rbf(a, b, ell):
    d = (a[:, None] - b[None, :]) / ell
    return np.exp(-0.5 * d * d)


def _trend(a, b, center, span):
    """A constant plus a straight line in log step, both with broad priors (standardised units)."""
    return 1.0 + 10.0 * np.outer(a - center, b - center) / span**2


def smooth_signal(steps, values, stderr=None, grid: int = 300, restarts: int = 3) -> Smooth:
    """Fit a GP (constant x RBF + linear trend + per-point stderr² + a fitted nugget) over log(step + 1).

    Signal variance, length scale and nugget maximise the marginal likelihood (L-BFGS-B from
    `restarts` starting length scales), on the standardised signal, so the fit is unchanged by
    y -> a*y + b.

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
    # rounded far below any noise, so that y -> a*y + b gives bit-identical inputs to the optimiser
    # (its path would otherwise amplify round-off into 1e-5 differences)
    ys, ses = np.round((y - center) / scale, 10), np.round(se / scale, 10)

    span = float(np.ptp(x))
    dx = np.diff(np.unique(x))
    # the shortest length scale the checkpoints can resolve: two typical gaps
    ell_min = max(2.0 * float(np.median(dx)), span / 80)
    xc = float(np.mean(x))
    # hyperparameters from at most 200 evenly picked points (a 2000-checkpoint run would take
    # minutes otherwise); the final fit below uses every point
    sub = np.unique(np.linspace(0, len(x) - 1, min(len(x), 200)).round().astype(int))
    xs_, ys_, ses_ = x[sub], ys[sub], ses[sub]
    eye = np.eye(len(sub))
    trend = _trend(xs_, xs_, xc, span)
    d2 = (xs_[:, None] - xs_[None, :]) ** 2

    def lml(K):
        try:
            L = cholesky(K, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return -np.inf
        a = solve_triangular(L, ys_, lower=True, check_finite=False)
        return float(-0.5 * a @ a - np.log(np.diag(L)).sum())

    def neg(theta):  # theta = log(var), log(ell), log(nugget); returns -lml and its gradient
        var, ell, nug = np.exp(theta)
        R = np.exp(-0.5 * d2 / ell**2)
        K = var * R + trend + np.diag(ses_**2 + nug**2) + 1e-8 * eye
        try:
            L = cholesky(K, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return 1e10, np.zeros(3)
        alpha = cho_solve((L, True), ys_, check_finite=False)
        Kinv = cho_solve((L, True), eye, check_finite=False)
        W = np.outer(alpha, alpha) - Kinv
        dK = (var * R, var * R * d2 / ell**2, None)
        g = [0.5 * np.sum(W * dK[0]), 0.5 * np.sum(W * dK[1]), 0.5 * np.trace(W) * 2 * nug**2]
        ll = -0.5 * ys_ @ alpha - np.log(np.diag(L)).sum()
        return float(-ll), -np.array(g)

    nugs = (1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0)
    # the null models a boundary has to beat: a constant, a straight line (each + fitted noise)
    lml_const = max(lml(np.ones_like(trend) + np.diag(ses_**2 + n**2) + 1e-8 * eye) for n in nugs)
    lml_line = max(lml(trend + np.diag(ses_**2 + n**2) + 1e-8 * eye) for n in nugs)
    bounds = [(np.log(1e-2), np.log(1e2)), (np.log(ell_min), np.log(span)), (np.log(1e-4), np.log(3.0))]
    best = (np.inf, None)
    for ell0 in np.geomspace(ell_min * 1.5, span / 2, restarts):
        r = minimize(neg, np.log([1.0, ell0, 0.1]), jac=True, method="L-BFGS-B", bounds=bounds,
                     options={"maxiter": 100})
        if r.fun < best[0] - 1e-9:
            best = (float(r.fun), r.x)
    var, ell, nug = np.exp(best[1])
    noise_s = np.sqrt(ses**2 + nug**2)
    K = var * _rbf(x, x, ell) + _trend(x, x, xc, span) + np.diag(noise_s**2) + 1e-8 * np.eye(len(x))
    xg = np.linspace(x[0], x[-1], grid)
    Ks = var * _rbf(xg, x, ell) + _trend(xg, x, xc, span)
    L = cholesky(K, lower=True, check_finite=False)
    v = solve_triangular(L, Ks.T, lower=True, check_finite=False)
    op = solve_triangular(L.T, v, lower=False, check_finite=False).T  # grid x data: Ks K^-1
    cov = var * _rbf(xg, xg, ell) + _trend(xg, xg, xc, span) - v.T @ v
    w, U = np.linalg.eigh(0.5 * (cov + cov.T))
    keep = w > 1e-10 * max(w.max(), 1e-300)  # drop round-off directions: they would add jitter to slopes
    root = U[:, keep] * np.sqrt(w[keep])
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    Kd = var * _rbf(x, x, ell) + _trend(x, x, xc, span)
    fitted = Kd @ cho_solve((L, True), ys, check_finite=False)
    return Smooth(x=xg, mean=center + scale * (op @ ys), sd=scale * sd, lengthscale=float(ell),
                  noise=scale * noise_s, fitted=center + scale * fitted, center=center, scale=scale,
                  operator=op, evidence_change=float(max(-best[0], lml_line) - lml_const),
                  evidence_nonlinear=float(-best[0] - lml_line), root=root,
                  hyper={"variance": float(var), "lengthscale": float(ell), "nugget": float(nug)})
