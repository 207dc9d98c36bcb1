"""Boundaries in one signal (critical points, kinks, plateau ends and drops, onsets) and their
alignment across signals.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.signal import find_peaks, peak_widths

from .smoothing import Smooth, log_step, smooth_signal, step_of

BOUNDARY_KINDS = ("slope-zero", "sharp-change", "plateau-end", "drop", "drop-end", "onset")
CUT_KINDS = ("slope-zero", "sharp-change", "plateau-end", "drop-end")  # kinds that cut stages

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


