"""Stage maps: boundaries in each signal on log(step + 1), aligned across signals, cut into stages.

The recipe follows Hoogland et al. (arXiv 2402.02364): fit a Gaussian process to the LLC against
log(step + 1), take the derivative of the posterior mean by central differences, and put a boundary
where the smoothed slope crosses zero. We add kinks (the slope changes sharply), loss plateaus and
drops, and onsets of probe accuracy / ablation effects (Naidu et al., arXiv 2505.03997).

Every boundary carries an interval: the signal is resampled within its standard errors (or the GP's
fitted noise when there are none), re-smoothed with the same GP, and the detection repeated.

    >>> import numpy as np
    >>> steps = np.unique(np.geomspace(1, 10_000, 60).astype(int))
    >>> x = np.log(steps + 1)
    >>> loss = 2.0 - 1.9 / (1 + np.exp(-(x - np.log(1000)) / 0.3))     # one drop near step 1000
    >>> [b.kind for b in find_boundaries(steps, loss, kind="loss", signal="train_loss")]
    ['plateau-end', 'drop', 'drop-end']
    >>> b = find_boundaries(steps, loss, kind="loss")[1]
    >>> 700 < b.step < 1400 and b.lo <= b.step <= b.hi
    True

Detection is unchanged under y -> a*y + b (a > 0): the signal (and its standard errors) is
standardised first and every threshold is relative.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.linalg import cho_solve, cholesky, solve_triangular
from scipy.signal import find_peaks, peak_widths

__all__ = [
    "Boundary", "Smooth", "smooth_signal", "find_boundaries", "align_boundaries", "stage_table",
    "StageMap", "stage_map", "RunTables", "load_run_tables", "load_stage_map", "run_signals",
    "MissingAnalysisError", "BOUNDARY_KINDS",
]

BOUNDARY_KINDS = ("slope-zero", "sharp-change", "plateau-end", "drop", "drop-end", "onset")
_CUT_KINDS = ("slope-zero", "sharp-change", "plateau-end", "drop-end")  # kinds that cut stages


def log_step(step) -> np.ndarray:
    """The x axis of every stage map: log(step + 1), so step 0 is allowed."""
    return np.log(np.asarray(step, dtype=float) + 1.0)


def step_of(x) -> np.ndarray:
    return np.expm1(np.asarray(x, dtype=float))


# --------------------------------------------------------------------------------------------------
# Boundaries


@dataclass(frozen=True)
class Boundary:
    """One boundary in one signal.

    step: where (a float; boundaries fall between checkpoints); lo, hi: its 90 % interval in steps;
    signal: e.g. "llc", "train_loss", "probe:carry"; kind: one of BOUNDARY_KINDS;
    support: fraction of resamples in which it was found again (near 1: solid; below 0.5: shaky).
    """

    step: float
    lo: float
    hi: float
    signal: str
    kind: str
    support: float = 1.0
    strength: float = float("nan")  # size of the change, as a fraction of the signal's range

    @property
    def x(self) -> float:
        return float(np.log1p(self.step))

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Boundary":
        d = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if d.get("strength") is None:
            d["strength"] = float("nan")
        return cls(**d)


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


def _interp_x(xg, idx):
    """x at a fractional grid index."""
    return np.interp(idx, np.arange(len(xg)), xg)


def _curvature_runs(xg, s, small):
    """Split the grid into runs of one curvature sign: [(i0, i1, slope change)], runs whose slope
    change is below `small` merged into their neighbours."""
    sign = np.sign(np.gradient(s, xg))
    cuts = np.flatnonzero(np.diff(sign) != 0) + 1
    bounds = [0, *cuts.tolist(), len(xg) - 1]
    runs = [[a, b, s[b] - s[a]] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    changed = True
    while changed and len(runs) > 1:
        changed = False
        k = int(np.argmin([abs(r[2]) for r in runs]))
        if abs(runs[k][2]) < small:  # fold the smallest run into a neighbour
            j = k - 1 if k > 0 else k + 1
            a, b = sorted((j, k))
            runs[a:b + 1] = [[runs[a][0], runs[b][1], s[runs[b][1]] - s[runs[a][0]]]]
            changed = True
        merged = [runs[0]]
        for r in runs[1:]:  # neighbours of one sign become one run
            if np.sign(r[2]) == np.sign(merged[-1][2]):
                merged[-1] = [merged[-1][0], r[1], s[r[1]] - s[merged[-1][0]]]
                changed = True
            else:
                merged.append(r)
        runs = merged
    return [tuple(r) for r in runs]


def _detect(xg, m, kind, direction, thr, ell, min_rel_change, frac):
    """Boundaries (x, kind, strength) in one standardised curve m on grid xg."""
    rng = float(np.ptp(m))
    if rng < thr["min_range"]:
        return []
    s = np.gradient(m, xg)
    out = []
    span = xg[-1] - xg[0]
    if kind == "llc":
        prom = max(min_rel_change * thr["range"], thr["min_range"])
        ext = []
        for sign in (1, -1):
            pk, props = find_peaks(sign * m, prominence=prom)
            # and the peak must stand out of the local posterior noise (ends are less certain)
            ext += [(xg[i], "slope-zero", p / thr["range"], sign) for i, p in zip(pk, props["prominences"])
                    if p >= thr["snr"] * thr["sd"][i]]
        out += [e[:3] for e in ext]
        # kinks: the slope changes by at least the mean slope a full-range move would need
        # kinks: a run of one curvature sign across which the slope changes by at least the mean
        # slope a full-range move would need (range / span); tiny runs (noise) are merged away
        for i0, i1, dsl in _curvature_runs(xg, s, 0.25 * thr["kink"]):
            c = np.abs(np.gradient(s[i0:i1 + 1], xg[i0:i1 + 1]))
            xk = float((xg[i0:i1 + 1] * c).sum() / max(c.sum(), 1e-300))  # centre of the bend
            near_end = min(xk - xg[0], xg[-1] - xk) < 0.03 * span
            is_peak = any(xg[i0] <= e[0] <= xg[i1] and np.sign(dsl) == -e[3] for e in ext)
            if abs(dsl) >= thr["kink"] and not near_end and not is_peak:
                out.append((xk, "sharp-change", abs(dsl) * span / thr["range"]))
    elif kind == "loss":
        rate = -s if direction == "down" else s
        pk, props = find_peaks(rate, prominence=0)
        if len(pk):
            # the plateau ends where the drop rate reaches 20 % of its peak (about 5 % of the move
            # done for a sigmoid); the drop ends where it falls back to 20 %
            left, right = peak_widths(rate, pk, rel_height=0.8, prominence_data=(
                props["prominences"], props["left_bases"], props["right_bases"]))[2:]
            for i, lo, hi in zip(pk, left, right):
                xl, xr = _interp_x(xg, lo), _interp_x(xg, hi)
                # the move across the drop, between its 20 %-rate points (~90 % of a sigmoid's move)
                move = (np.interp(xl, xg, m) - np.interp(xr, xg, m)) * (1 if direction == "down" else -1)
                if move < max(min_rel_change * thr["range"], thr["min_range"]):
                    continue
                strength = move / thr["range"]
                if xl > xg[0] + 1e-12:
                    out.append((xl, "plateau-end", strength))
                out.append((xg[i], "drop", strength))
                if xr < xg[-1] - 1e-12:
                    out.append((xr, "drop-end", strength))
    elif kind == "onset":
        sign = 1 if direction == "up" else -1
        z = sign * m
        start = z[0]
        top = z.max()
        if top - start < max(min_rel_change * thr["range"], thr["min_range"]):
            return []
        level = start + frac * (top - start)
        i = int(np.argmax(z >= level))
        if i > 0:
            t = (level - z[i - 1]) / (z[i] - z[i - 1])
            out.append((xg[i - 1] + t * (xg[i] - xg[i - 1]), "onset", (top - start) / thr["range"]))
    else:
        raise ValueError(f"unknown kind {kind!r}; use 'llc', 'loss' or 'onset'")
    return sorted(out)


def find_boundaries(steps, values, stderr=None, kind: str = "llc", signal: str | None = None, *,
                    direction: str = "auto", resamples: int = 100, seed: int = 0,
                    min_rel_change: float = 0.1, min_snr: float = 3.0, min_evidence: float = 3.0,
                    min_kink: float = 2.0, min_support: float = 0.5, onset_fraction: float = 0.5,
                    smooth: Smooth | None = None) -> list[Boundary]:
    """Boundaries of one signal over log(step + 1), each with a 90 % interval in steps.

    kind:
      "llc"   -- slope-zero (a peak or trough of the smoothed curve, prominence >= min_rel_change
                 of its range) and sharp-change (a kink: the slope changes by at least
                 min_kink * range / span, i.e. min_kink times the mean slope of a full-range move);
      "loss"  -- for a drop (direction "down": loss; "up": accuracy): plateau-end and drop-end where
                 the drop rate is 20 % of its maximum, drop at its maximum;
      "onset" -- the first crossing of start + onset_fraction * (extreme - start) (probe accuracy,
                 ablation effect).
    direction: "up", "down" or "auto" (the sign of the smoothed end-minus-start).
    min_snr: no boundary unless the smoothed signal moves by this many posterior standard deviations.
    min_evidence: no boundary unless the GP beats a null model by this many nats of marginal
      likelihood: a straight line in log step for "llc" and "loss" (a line has no boundary), a
      constant for "onset". This is what keeps pure noise boundary-free.
    resamples: the signal is redrawn within its noise this many times to get each interval; a
      boundary found again in fewer than `min_support` of them is dropped as noise.

        >>> steps = np.arange(0, 3000, 50)
        >>> probe = 0.5 + 0.45 / (1 + np.exp(-(np.log1p(steps) - 6.0) / 0.2))
        >>> [(b.kind, round(b.x, 1)) for b in find_boundaries(steps, probe, kind="onset")]
        [('onset', 6.0)]
    """
    signal = signal or kind
    if smooth is None:
        try:
            smooth = smooth_signal(steps, values, stderr)
        except ValueError:
            return []
    sm = smooth
    if (sm.evidence_change if kind == "onset" else sm.evidence_nonlinear) < min_evidence:
        return []
    ms = (sm.mean - sm.center) / sm.scale   # standardised curve: every threshold below is relative
    sds = sm.sd / sm.scale
    if direction == "auto":
        direction = "up" if ms[-1] >= ms[0] else "down"
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up', 'down' or 'auto', got {direction!r}")
    span = float(sm.x[-1] - sm.x[0])
    rng = float(np.ptp(ms))
    thr = {"range": max(rng, 1e-12), "min_range": min_snr * float(np.median(sds)), "sd": sds, "snr": min_snr,
           "kink": min_kink * max(rng, 1e-12) / span}
    found = _detect(sm.x, ms, kind, direction, thr, sm.lengthscale, min_rel_change, onset_fraction)
    if not found:
        return []

    # resample within the noise around the fit, re-smooth (linear), re-detect
    rs = np.random.default_rng(seed)
    fitted_s = (sm.fitted - sm.center) / sm.scale
    noise_s = sm.noise / sm.scale
    draws = fitted_s[:, None] + noise_s[:, None] * rs.standard_normal((len(fitted_s), resamples))
    curves = sm.operator @ draws
    again = [_detect(sm.x, curves[:, j], kind, direction, thr, sm.lengthscale, min_rel_change,
                     onset_fraction) for j in range(resamples)]
    window = max(0.5 * sm.lengthscale, 3 * (sm.x[1] - sm.x[0]))
    out = []
    for xb, k, strength in found:
        hits = []
        for res in again:
            near = [xr for xr, kr, _ in res if kr == k and abs(xr - xb) <= window]
            if near:
                hits.append(min(near, key=lambda xr: abs(xr - xb)))
        if hits:
            lo, hi = np.quantile(hits, [0.05, 0.95])
        else:
            lo = hi = xb
        lo, hi = min(lo, xb), max(hi, xb)
        if resamples and len(hits) / resamples < min_support:
            continue
        out.append(Boundary(step=float(step_of(xb)), lo=float(step_of(lo)), hi=float(step_of(hi)),
                            signal=signal, kind=k, support=len(hits) / max(resamples, 1),
                            strength=float(strength)))
    return out


# --------------------------------------------------------------------------------------------------
# Alignment


def _signal_family(signal: str) -> str:
    """'llc', 'loss' (train/test loss and accuracy), 'probe' or 'ablation'."""
    if signal.startswith("llc"):
        return "llc"
    if ":" in signal:
        return signal.split(":", 1)[0]
    return "loss"


def align_boundaries(boundaries: Mapping[str, Sequence[Boundary]] | Iterable[Boundary],
                     tolerance: float = 0.35) -> pd.DataFrame:
    """Match boundaries across signals: one row per boundary, with a `group` id shared by matches.

    Boundaries are taken in order of log step; a boundary joins the current group if it lies within
    `tolerance` (in log(step + 1)) of the group's first member and its signal is not in the group
    yet. 0.35 is a factor of about 1.4 in steps.

        >>> a = [Boundary(1000, 900, 1100, "llc", "slope-zero")]
        >>> b = [Boundary(1150, 1000, 1300, "train_loss", "drop"), Boundary(9000, 8000, 9900, "train_loss", "drop-end")]
        >>> align_boundaries({"llc": a, "train_loss": b})[["group", "signal", "n_signals"]].values.tolist()
        [[0, 'llc', 2], [0, 'train_loss', 2], [1, 'train_loss', 1]]
    """
    if isinstance(boundaries, Mapping):
        flat = [b for bs in boundaries.values() for b in bs]
    else:
        flat = list(boundaries)
    cols = ["group", "group_step", "signal", "family", "kind", "step", "lo", "hi", "support",
            "strength", "offset", "n_signals", "signals"]
    if not flat:
        return pd.DataFrame(columns=cols)
    flat.sort(key=lambda b: (b.x, b.signal, b.kind))
    groups: list[list[Boundary]] = []
    for b in flat:
        g = groups[-1] if groups else None
        if g and b.x - g[0].x <= tolerance and b.signal not in {m.signal for m in g}:
            g.append(b)
        else:
            groups.append([b])
    rows = []
    for gi, g in enumerate(groups):
        center = float(np.median([m.x for m in g]))
        names = sorted({m.signal for m in g})
        for m in g:
            rows.append({"group": gi, "group_step": float(step_of(center)), "signal": m.signal,
                         "family": _signal_family(m.signal), "kind": m.kind, "step": m.step,
                         "lo": m.lo, "hi": m.hi, "support": m.support, "strength": m.strength,
                         "offset": m.x - center, "n_signals": len(names), "signals": ",".join(names)})
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------------------------------
# Run tables


class MissingAnalysisError(FileNotFoundError):
    """A table the stage map needs is not in the run folder; the message names the command to run."""


TABLE_FILES = {  # table -> (its file, the command that makes it)
    "metrics": ("metrics.csv", "llc-watch train (training writes metrics.csv)"),
    "llc": ("llc.csv", "llc-watch llc RUN"),
    "probes": ("probes.csv", "llc-watch probe RUN"),
    "ablations": ("ablations.csv", "llc-watch ablate RUN"),
    "calibration": ("calibration_sweep.csv", "llc-watch calibrate RUN"),
}


@dataclass
class RunTables:
    """The per-checkpoint tables of one run; a table that is not there is None, with a note in `missing`."""

    metrics: pd.DataFrame | None = None
    llc: pd.DataFrame | None = None
    probes: pd.DataFrame | None = None
    ablations: pd.DataFrame | None = None
    calibration: pd.DataFrame | None = None
    config: dict = field(default_factory=dict)
    run_dir: Path | None = None
    missing: dict = field(default_factory=dict)


def load_run_tables(run_dir: str | Path) -> RunTables:
    """Read whatever tables the run folder holds; say which are missing and the command that makes each.

        >>> t = load_run_tables("/nonexistent-run")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        MissingAnalysisError: ...
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingAnalysisError(f"run folder {run_dir} does not exist; train a run into it first")
    t = RunTables(run_dir=run_dir)
    for name, (fname, cmd) in TABLE_FILES.items():
        p = run_dir / fname
        if p.is_file():
            setattr(t, name, pd.read_csv(p))
        else:
            t.missing[name] = f"{fname} not found in {run_dir}: run `{cmd.replace('RUN', str(run_dir))}`"
    if (run_dir / "config.json").is_file():
        t.config = json.loads((run_dir / "config.json").read_text())
    if t.metrics is None and t.llc is None and t.probes is None and t.ablations is None:
        raise MissingAnalysisError(f"{run_dir} holds none of metrics.csv, llc.csv, probes.csv, "
                                   "ablations.csv; " + "; ".join(t.missing.values()))
    return t


def _as_bool(s: pd.Series) -> pd.Series:
    if s.dtype == bool:
        return s
    return s.astype(str).str.strip().str.lower().isin(["true", "1", "yes"])


def _need(df, cols, name):
    miss = [c for c in cols if c not in df.columns]
    if miss:
        raise ValueError(f"{name} table lacks columns {miss}; it has {list(df.columns)}")


def best_probe(probes: pd.DataFrame, measure: str = "accuracy", fallback: str | None = "r2") -> pd.DataFrame:
    """Best probe per (feature, step): max `measure` over layer, site and position, control == 'probe'.

    Features with no `measure` rows (numeric features have only r2) use `fallback` instead.
    Returns columns feature, step, value, layer, site, position (of the best probe), measure.
    """
    _need(probes, ["step", "feature", "measure", "value"], "probes")
    have = set(probes.loc[probes["measure"] == measure, "feature"])
    use = np.where(probes["feature"].isin(have), measure, fallback if fallback else measure)
    p = probes[probes["measure"] == use]
    if "control" in p.columns:
        p = p[p["control"].fillna("probe") == "probe"]
    p = p[np.isfinite(p["value"].astype(float))]
    if p.empty:
        return pd.DataFrame(columns=["feature", "step", "value", "layer", "site", "position"])
    idx = p.groupby(["feature", "step"])["value"].idxmax()
    keep = [c for c in ["feature", "step", "value", "layer", "site", "position", "measure"] if c in p.columns]
    return p.loc[idx, keep].sort_values(["feature", "step"]).reset_index(drop=True)


def probe_control(probes: pd.DataFrame, control: str = "shuffled", measure: str = "accuracy") -> pd.DataFrame:
    """The control's best value per (feature, step), e.g. the shuffled-label probe."""
    if "control" not in probes.columns:
        return pd.DataFrame(columns=["feature", "step", "value"])
    p = probes[(probes["measure"] == measure) & (probes["control"] == control)]
    return p.groupby(["feature", "step"], as_index=False)["value"].max()


def ablation_effect(ablations: pd.DataFrame, measure: str = "acc_drop", method: str = "projection") -> pd.DataFrame:
    """Largest projection-ablation effect per (feature, step) with its random-direction control.

    Returns feature, step, value, random_mean, random_std, excess (value - random_mean), site, position.
    """
    _need(ablations, ["step", "feature", "method", "measure", "value"], "ablations")
    a = ablations[(ablations["method"] == method) & (ablations["measure"] == measure)].copy()
    a = a[np.isfinite(a["value"].astype(float))]
    for c in ("random_mean", "random_std"):
        if c not in a.columns:
            a[c] = np.nan
    if a.empty:
        return pd.DataFrame(columns=["feature", "step", "value", "random_mean", "random_std", "excess"])
    a["excess"] = a["value"] - a["random_mean"].fillna(0.0)
    idx = a.groupby(["feature", "step"])["excess"].idxmax()
    keep = [c for c in ["feature", "step", "value", "random_mean", "random_std", "excess", "site", "position"]
            if c in a.columns]
    return a.loc[idx, keep].sort_values(["feature", "step"]).reset_index(drop=True)


def run_signals(tables: RunTables) -> dict[str, dict]:
    """Every signal of a run as {name: dict(steps, values, stderr, kind, direction)}.

    Names: "llc" (valid rows only), train_loss/test_loss/train_acc/test_acc, "probe:<feature>" (best
    probe accuracy), "ablation:<feature>" (projection acc drop minus the random-direction mean).
    """
    out = {}
    if tables.metrics is not None and len(tables.metrics):
        m = tables.metrics
        _need(m, ["step", "measure", "value"], "metrics")
        for name in ("train_loss", "test_loss", "train_acc", "test_acc"):
            s = m[m["measure"] == name].groupby("step")["value"].mean()
            if len(s):
                out[name] = dict(steps=s.index.to_numpy(float), values=s.to_numpy(float), stderr=None,
                                 kind="loss", direction="down" if name.endswith("loss") else "up")
    if tables.llc is not None and len(tables.llc):
        v = _llc_valid(tables.llc)
        v = v[v["valid"] & np.isfinite(v["value"])]
        g = v.groupby("step").agg(value=("value", "mean"), stderr=("stderr", "mean"))
        if len(g):
            out["llc"] = dict(steps=g.index.to_numpy(float), values=g["value"].to_numpy(float),
                              stderr=g["stderr"].to_numpy(float), kind="llc", direction="auto")
    if tables.probes is not None and len(tables.probes):
        for feat, g in best_probe(tables.probes).groupby("feature"):
            out[f"probe:{feat}"] = dict(steps=g["step"].to_numpy(float), values=g["value"].to_numpy(float),
                                        stderr=None, kind="onset", direction="up")
    if tables.ablations is not None and len(tables.ablations):
        for feat, g in ablation_effect(tables.ablations).groupby("feature"):
            out[f"ablation:{feat}"] = dict(steps=g["step"].to_numpy(float), values=g["excess"].to_numpy(float),
                                           stderr=None, kind="onset", direction="up",
                                           random_std=g["random_std"].to_numpy(float))
    return out


def _llc_valid(llc: pd.DataFrame) -> pd.DataFrame:
    _need(llc, ["step", "value"], "llc")
    v = llc.copy()
    v["value"] = pd.to_numeric(v["value"], errors="coerce")
    v["stderr"] = pd.to_numeric(v["stderr"], errors="coerce") if "stderr" in v else np.nan
    v["valid"] = _as_bool(v["valid"]) if "valid" in v else True
    if "measure" in v.columns:
        v = v[v["measure"].fillna("llc") == "llc"]
    return v


# --------------------------------------------------------------------------------------------------
# Stages


def _trend(sm: Smooth | None, a: float, b: float, flat: float) -> str:
    if sm is None:
        return "n/a"
    rng = float(np.ptp(sm.mean)) or 1.0
    lo, hi = max(a, sm.steps[0]), min(b, sm.steps[-1])
    if hi <= lo:
        return "n/a"
    d = float(sm.at(hi)[0] - sm.at(lo)[0])
    noise = 2 * float(np.median(sm.sd))
    if abs(d) < max(flat * rng, noise):
        return "flat"
    return "rising" if d > 0 else "falling"


def stage_table(aligned: pd.DataFrame, smooths: Mapping[str, Smooth], first_step: float, last_step: float,
                cut_families: Sequence[str] = ("llc", "loss"), flat: float = 0.1,
                llc_invalid_steps: Sequence[float] = ()) -> pd.DataFrame:
    """Cut [first_step, last_step] at aligned groups holding an LLC or loss boundary, and describe each stage.

    Columns: stage, start_step, end_step, llc_trend, loss_trend (rising/falling/flat/n/a; "flat" when
    the smoothed signal moves less than `flat` of its range), features_formed (probe onsets in the
    stage), ablation_effects (ablation onsets), quiet (the loss is flat while the LLC moves or a feature
    forms), boundaries (signal:kind at the stage start), invalid_llc (invalid LLC checkpoints inside).
    """
    cuts = []
    if len(aligned):
        a = aligned[aligned["family"].isin(cut_families) & aligned["kind"].isin(_CUT_KINDS)]
        for gid, g in a.groupby("group"):
            c = float(step_of(np.median(np.log1p(g["step"]))))
            if first_step < c < last_step:
                cuts.append((c, gid))
    cuts.sort()
    edges = [first_step] + [c for c, _ in cuts] + [last_step]
    starts_group = [None] + [gid for _, gid in cuts]
    loss_sm = smooths.get("train_loss") or smooths.get("test_loss")
    llc_sm = smooths.get("llc")
    onsets = aligned[aligned["kind"] == "onset"] if len(aligned) else aligned
    rows = []
    for i in range(len(edges) - 1):
        s0, s1 = edges[i], edges[i + 1]
        last = i == len(edges) - 2
        inside = (onsets["step"] >= s0) & ((onsets["step"] <= s1) if last else (onsets["step"] < s1)) \
            if len(onsets) else []
        sel = onsets[inside] if len(onsets) else onsets
        feats = sorted(s.split(":", 1)[1] for s in sel["signal"] if s.startswith("probe:")) if len(sel) else []
        abls = sorted(s.split(":", 1)[1] for s in sel["signal"] if s.startswith("ablation:")) if len(sel) else []
        llc_t, loss_t = _trend(llc_sm, s0, s1, flat), _trend(loss_sm, s0, s1, flat)
        probe_moves = any(_trend(sm, s0, s1, flat) != "flat" for k, sm in smooths.items()
                          if k.startswith("probe:") and _trend(sm, s0, s1, flat) != "n/a")
        quiet = loss_t == "flat" and (llc_t in ("rising", "falling") or bool(feats) or probe_moves)
        at = ""
        if starts_group[i] is not None:
            g = aligned[aligned["group"] == starts_group[i]]
            at = ", ".join(f"{s}:{k}" for s, k in zip(g["signal"], g["kind"]))
        n_bad = int(sum(s0 <= s <= s1 for s in llc_invalid_steps))
        rows.append({"stage": i + 1, "start_step": s0, "end_step": s1, "llc_trend": llc_t, "loss_trend": loss_t,
                     "features_formed": ", ".join(feats), "ablation_effects": ", ".join(abls),
                     "quiet": bool(quiet), "boundaries": at, "invalid_llc": n_bad})
    return pd.DataFrame(rows)


@dataclass
class StageMap:
    """Everything a stage map holds; `to_dict()` is JSON-able, `save(run_dir)` writes the CSVs.

    boundaries: every Boundary; aligned: align_boundaries(); stages: stage_table(); smooths: the GP
    fits per signal (not saved); warnings: what the reader should know (missing tables, invalid LLC).
    """

    boundaries: list[Boundary]
    aligned: pd.DataFrame
    stages: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    llc_invalid_steps: list[float] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    smooths: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        def records(df):
            return json.loads(df.to_json(orient="records"))
        return {"boundaries": [b.to_dict() for b in self.boundaries], "aligned": records(self.aligned),
                "stages": records(self.stages), "warnings": list(self.warnings),
                "llc_invalid_steps": [float(s) for s in self.llc_invalid_steps], "settings": dict(self.settings)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "StageMap":
        return cls(boundaries=[Boundary.from_dict(b) for b in d["boundaries"]],
                   aligned=pd.DataFrame(d["aligned"]), stages=pd.DataFrame(d["stages"]),
                   warnings=list(d.get("warnings", [])), llc_invalid_steps=list(d.get("llc_invalid_steps", [])),
                   settings=dict(d.get("settings", {})))

    def save(self, run_dir: str | Path) -> dict[str, Path]:
        """Write stages.csv, boundaries.csv (the aligned table) and stage_map.json, atomically."""
        from .io import atomic_write_csv, atomic_write_json
        run_dir = Path(run_dir)
        return {"stages": atomic_write_csv(run_dir / "stages.csv", self.stages),
                "boundaries": atomic_write_csv(run_dir / "boundaries.csv", self.aligned),
                "json": atomic_write_json(run_dir / "stage_map.json", self.to_dict())}

    def first(self, signal: str, kind: str | None = None) -> Boundary | None:
        """The earliest boundary of `signal` (optionally of `kind`), or None."""
        bs = [b for b in self.boundaries if b.signal == signal and (kind is None or b.kind == kind)]
        return min(bs, key=lambda b: b.step) if bs else None

    def summary(self) -> str:
        """A few lines for a terminal: the stage table, the timeline, the warnings."""
        st = self.stages.copy()
        for c in ("start_step", "end_step"):
            st[c] = st[c].round().astype("Int64")
        cols = [c for c in ["stage", "start_step", "end_step", "llc_trend", "loss_trend", "features_formed",
                            "ablation_effects", "quiet", "invalid_llc"] if c in st.columns]
        lines = [f"{len(self.stages)} stages, {len(self.boundaries)} boundaries in "
                 f"{len({b.signal for b in self.boundaries})} signals", st[cols].to_string(index=False)]
        lines += self.timeline()
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def decisive_drop(self, loss: str) -> tuple[Boundary, Boundary]:
        """(drop, plateau end before it) of the loss drop that matters: the one nearest in log step
        to the steepest rise in exact-match accuracy. A loss often first falls early to the
        output-frequency level; that drop comes with no accuracy and is not "the" drop."""
        drops = sorted((b for b in self.boundaries if b.signal == loss and b.kind == "drop"), key=lambda b: b.step)
        rise = self.first("test_acc", "drop") or self.first("train_acc", "drop")
        drop = (min(drops, key=lambda b: abs(log_step(b.step) - log_step(rise.step))) if rise else drops[-1])
        ends = [b for b in self.boundaries if b.signal == loss and b.kind == "plateau-end" and b.step <= drop.step]
        return drop, (max(ends, key=lambda b: b.step) if ends else drop)

    def timeline(self) -> list[str]:
        """Plain sentences: does each feature (probe onset) form before the loss drops?"""
        loss = next((s for s in ("train_loss", "test_loss") if self.first(s, "drop")), None)
        out = []
        if loss is None:
            return ["No loss drop was detected, so nothing can be said about features forming before it."] \
                if any(b.kind == "onset" for b in self.boundaries) else []
        drop, start = self.decisive_drop(loss)
        for b in sorted((b for b in self.boundaries if b.kind == "onset"), key=lambda b: b.step):
            what = "forms" if b.signal.startswith("probe:") else "appears"
            name = b.signal.replace("probe:", "feature ").replace("ablation:", "ablation effect of ")
            if b.hi < start.lo:
                rel = f"before the {loss} plateau ends (step {start.step:.0f}, interval {start.lo:.0f}–{start.hi:.0f})"
            elif b.hi < drop.lo:
                rel = f"after the {loss} plateau ends but before its steepest drop (step {drop.step:.0f})"
            elif b.lo > drop.hi:
                rel = f"after the {loss} drop (step {drop.step:.0f})"
            else:
                rel = f"at the same time as the {loss} drop, within uncertainty (drop at step {drop.step:.0f})"
            out.append(f"{name} {what} at step {b.step:.0f} (interval {b.lo:.0f}–{b.hi:.0f}): {rel}.")
        return out


def _warning_lines(w) -> list[str]:
    """llc.csv stores each checkpoint's warnings as a JSON list; older tables as plain text."""
    if w is None or (isinstance(w, float) and np.isnan(w)) or str(w).strip() in ("", "[]", "nan"):
        return []
    try:
        parsed = json.loads(w) if isinstance(w, str) else w
    except json.JSONDecodeError:
        return [str(w)]
    return [str(x) for x in parsed] if isinstance(parsed, list) else [str(parsed)]


def stage_map(source, tolerance: float = 0.35, resamples: int = 100, seed: int = 0,
              save: bool = False, **detect) -> StageMap:
    """The stage map of a run folder (str/Path) or a RunTables; `save=True` writes it into the run folder.

    Signals with too few points are skipped with a warning; invalid LLC checkpoints are left out of
    the fit and listed in `llc_invalid_steps`.

        >>> from tests.synthetic_tables import synthetic_run_tables  # doctest: +SKIP
        >>> sm = stage_map(synthetic_run_tables())                     # doctest: +SKIP
        >>> sm.stages[["stage", "start_step", "end_step", "quiet"]]    # doctest: +SKIP
    """
    tables = source if isinstance(source, RunTables) else load_run_tables(source)
    warnings = list(tables.missing[k] for k in ("metrics", "llc", "probes", "ablations") if k in tables.missing)
    invalid_steps = []
    if tables.llc is not None and len(tables.llc):
        v = _llc_valid(tables.llc)
        bad = v[~v["valid"] | ~np.isfinite(v["value"])]
        invalid_steps = sorted(float(s) for s in bad["step"].unique())
        if invalid_steps:
            warnings.append(f"{len(invalid_steps)} of {v['step'].nunique()} LLC checkpoints are invalid and were "
                            f"left out of the LLC fit (steps {', '.join(f'{s:g}' for s in invalid_steps[:10])}"
                            f"{', ...' if len(invalid_steps) > 10 else ''})")
        if "warnings" in v.columns:
            for step, w in zip(v["step"], v["warnings"]):
                for line in _warning_lines(w):
                    warnings.append(f"LLC at step {step:g}: {line}")
    sigs = run_signals(tables)
    smooths, boundaries = {}, []
    all_steps = []
    for name, s in sigs.items():
        all_steps += list(s["steps"])
        try:
            sm = smooth_signal(s["steps"], s["values"], s["stderr"])
        except ValueError as e:
            warnings.append(f"{name}: {e}; no boundaries for it")
            continue
        smooths[name] = sm
        bs = find_boundaries(s["steps"], s["values"], s["stderr"], kind=s["kind"], signal=name,
                             direction=s["direction"], resamples=resamples, seed=seed, smooth=sm, **detect)
        if name.startswith("ablation:") and bs:
            # an effect counts only if it clears the random-direction control (2 sd) somewhere
            rs = np.nan_to_num(s.get("random_std", np.zeros(1)), nan=0.0)
            if not np.any(s["values"] > 2 * rs):
                warnings.append(f"{name}: the ablation drop never clears the random-direction control; no onset")
                bs = []
        boundaries += bs
    if not all_steps:
        raise MissingAnalysisError("no signal with enough checkpoints to map stages; "
                                   + "; ".join(tables.missing.values()))
    aligned = align_boundaries(boundaries, tolerance)
    stages = stage_table(aligned, smooths, float(min(all_steps)), float(max(all_steps)),
                         llc_invalid_steps=invalid_steps)
    out = StageMap(boundaries=boundaries, aligned=aligned, stages=stages, warnings=warnings,
                   llc_invalid_steps=invalid_steps, smooths=smooths,
                   settings={"tolerance": tolerance, "resamples": resamples, "seed": seed, **detect})
    if save:
        if tables.run_dir is None:
            raise ValueError("save=True needs a run folder; pass its path, or call .save(run_dir)")
        out.save(tables.run_dir)
    return out


def load_stage_map(run_dir: str | Path) -> StageMap:
    """Read stage_map.json from a run folder (written by stage_map(..., save=True))."""
    p = Path(run_dir) / "stage_map.json"
    if not p.is_file():
        raise MissingAnalysisError(f"{p} not found: run `llc-watch stages {run_dir}`")
    return StageMap.from_dict(json.loads(p.read_text()))
