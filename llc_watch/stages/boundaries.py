"""Boundaries in one signal (critical points, plateau edges, kinks, loss drops, onsets, peaks, turning
points) with intervals from posterior function draws, and their alignment across signals.

How a curve is read (the same rule on the GP posterior mean and on each posterior draw):

* a *move* is a stretch where the slope in log step stays above half of its own peak (the move's
  full width at half maximum); moves smaller than `min_rel_change` of the signal's range are noise;
* between two moves (and before the first, after the last) lies a *gap*; a gap whose median
  |slope| is under a quarter of its neighbours' peak slope is *flat*;
* "llc": a flat gap at least `min_gap` long is a plateau with two edges (plateau-start,
  plateau-end); a shorter one, or any gap between moves of opposite sign, holds one critical point
  (slope-zero: where the slope is zero, at the extremum); a gap that is not flat between moves of
  one sign means the slope changes without stopping: a kink (sharp-change) where it changes;
* "loss": each move in the signal's direction gives plateau-end (where it starts), drop (its
  steepest point) and drop-end (where it ends);
* "onset": the first crossing of half way from the start to the extreme;
* "emergence": peaks of an event density; "trajectory": turning points of each component, a cusp
  where two or more components turn together.

Edges at half the peak slope are where a GP-smoothed corner of a piecewise-linear curve falls, so
plateau edges are not pulled into the plateau. Each boundary found on the posterior mean is looked
for again in `resamples` posterior function draws: its 90 % interval is where it falls across the
draws, its support is the fraction of draws in which it exists.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.signal import find_peaks

from .smoothing import Smooth, log_step, smooth_signal, step_of

BOUNDARY_KINDS = ("slope-zero", "plateau-start", "plateau-end", "sharp-change", "drop", "drop-end", "onset",
                  "peak", "turning-point", "cusp")
# kinds that cut stages
CUT_KINDS = ("slope-zero", "plateau-start", "plateau-end", "sharp-change", "drop-end", "peak", "turning-point",
             "cusp")
CRITICAL_KINDS = ("slope-zero", "plateau-start", "plateau-end")  # the LLC's slope reaches zero

# --------------------------------------------------------------------------------------------------
# Boundaries


@dataclass(frozen=True)
class Boundary:
    """One boundary in one signal.

    step: where (a float; boundaries fall between checkpoints); lo, hi: its 90 % interval in steps;
    signal: e.g. "llc", "train_loss", "probe:carry"; kind: one of BOUNDARY_KINDS;
    support: fraction of posterior function draws in which it exists (near 1: solid; below 0.5: shaky);
    strength: size of the change beside it, as a fraction of the signal's range;
    evidence: how many nats the signal's GP beats its null model by (a straight line in log step;
      a constant for onsets): the signal-level evidence that anything happens at all;
    strong: support, strength and evidence all clear the stage map's bar (see `is_strong`).
    """

    step: float
    lo: float
    hi: float
    signal: str
    kind: str
    support: float = 1.0
    strength: float = float("nan")
    evidence: float = float("nan")
    strong: bool = False

    @property
    def x(self) -> float:
        return float(np.log1p(self.step))

    @property
    def width(self) -> float:
        """Width of the 90 % interval in log(step + 1)."""
        return float(np.log1p(self.hi) - np.log1p(self.lo))

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Boundary":
        d = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("strength", "evidence"):
            if d.get(k) is None:
                d[k] = float("nan")
        if "strong" in d:
            d["strong"] = bool(d["strong"])
        return cls(**d)


def is_strong(b: Boundary, min_support: float = 0.8, min_strength: float = 0.2, min_evidence: float = 3.0) -> bool:
    """The bar for the summary and the figure: found in most posterior draws, beside a change of at
    least `min_strength` of the signal's range, in a signal that beats its null model."""
    ev = b.evidence if math.isfinite(b.evidence) else min_evidence
    st = b.strength if math.isfinite(b.strength) else 0.0
    return b.support >= min_support and st >= min_strength and ev >= min_evidence


# --------------------------------------------------------------------------------------------------
# Reading one curve


def _cross(xg, z, i, j, level):
    """x where z crosses `level` between grid points i and j (linear)."""
    if z[j] == z[i]:
        return float(xg[i])
    t = (level - z[i]) / (z[j] - z[i])
    return float(xg[i] + np.clip(t, 0, 1) * (xg[j] - xg[i]))


def _moves(xg, m, s, min_size):
    """Moves of curve m (slope s): [(xa, xb, ia, ib, ipeak, sign, height, size)] in order of x."""
    n = len(xg)
    cand = []
    for sign in (1, -1):
        pk, _ = find_peaks(np.concatenate([[-np.inf], sign * s, [-np.inf]]), height=0)
        cand += [(sign * s[i - 1], i - 1, sign) for i in pk]
    cand.sort(reverse=True)
    taken = np.zeros(n, bool)
    out = []
    for h, i, sign in cand:
        if taken[i]:
            continue
        z = sign * s
        level = 0.5 * h
        below = z < level
        left = np.flatnonzero(below[:i])
        right = np.flatnonzero(below[i + 1:])
        a = left[-1] + 1 if len(left) else 0
        b = i + right[0] if len(right) else n - 1
        if taken[a:b + 1].any():
            continue  # a shoulder of a bigger move
        size = sign * (m[b] - m[a])
        if size < min_size:
            continue
        taken[a:b + 1] = True
        xa = _cross(xg, z, a - 1, a, level) if a > 0 else float(xg[0])
        xb = _cross(xg, z, b, b + 1, level) if b < n - 1 else float(xg[-1])
        out.append((xa, xb, a, b, i, sign, h, size))
    return sorted(out)


def _refine(xg, z, i):
    """x of the maximum of z near grid index i (a parabola through i-1, i, i+1), so locations are
    not stuck on grid points."""
    if 0 < i < len(z) - 1:
        a, b, c = z[i - 1], z[i], z[i + 1]
        den = a - 2 * b + c
        if den < 0:
            return float(xg[i] + np.clip(0.5 * (a - c) / den, -0.5, 0.5) * (xg[i + 1] - xg[i]))
    return float(xg[i])


def _slope_at(xg, s, x):
    return float(np.interp(x, xg, s))


def _read_llc(xg, m, s, thr):
    """Critical points, plateau edges and kinks of one curve: [(x, kind, strength)]."""
    mv = _moves(xg, m, s, thr["min_size"])
    if not mv:
        return []
    out = []
    rng, gap_min, flat = thr["range"], thr["min_gap"], thr["flat"]
    x0, x1 = float(xg[0]), float(xg[-1])

    def gap_flat(ia, ib, h, how=np.median):
        seg = np.abs(s[ia:ib + 1])
        return float(how(seg)) <= flat * h if len(seg) else True

    def kink(xe, inside, h):
        # the slope changes by at least 40 % of the move's peak within `kink_span` of the edge
        d = thr["kink_span"]
        return abs(_slope_at(xg, s, xe + inside * d)) - abs(_slope_at(xg, s, xe - inside * d)) >= 0.4 * h

    first, last = mv[0], mv[-1]
    if first[0] - x0 >= gap_min:
        if gap_flat(0, first[2], first[6]):
            out.append((first[0], "plateau-end", first[7] / rng))
        elif kink(first[0], 1, first[6]):
            out.append((first[0], "sharp-change", first[7] / rng))
    for p, q in zip(mv[:-1], mv[1:]):
        xa, xb = p[1], q[0]
        ia, ib = p[3], q[2]
        size = min(p[7], q[7]) / rng
        h = max(p[6], q[6])
        if p[5] != q[5]:  # the slope changes sign: a critical point (or a flat-topped one)
            if xb - xa >= gap_min and gap_flat(ia, ib, min(p[6], q[6])):
                out += [(xa, "plateau-start", size), (xb, "plateau-end", size)]
            else:
                seg = p[5] * m[ia:ib + 1]
                k = ia + int(np.argmax(seg)) if len(seg) else ia
                out.append((_refine(xg, p[5] * m, k), "slope-zero", size))
        elif gap_flat(ia, ib, h, np.min):
            # between moves of one sign: the slope comes near zero somewhere (the GP bleeds a move's
            # slope into a plateau beside it, so the gap's median would call short plateaus sloped)
            if xb - xa >= gap_min:
                out += [(xa, "plateau-start", size), (xb, "plateau-end", size)]
            else:
                seg = np.abs(s[ia:ib + 1])
                k = ia + int(np.argmin(seg)) if len(seg) else ia
                out.append((float(xg[k]), "slope-zero", size))
        elif xb - xa >= gap_min:
            if kink(xa, -1, p[6]):
                out.append((xa, "sharp-change", p[7] / rng))
            if kink(xb, 1, q[6]):
                out.append((xb, "sharp-change", q[7] / rng))
    if x1 - last[1] >= gap_min:
        if gap_flat(last[3], len(xg) - 1, last[6]):
            out.append((last[1], "plateau-start", last[7] / rng))
        elif kink(last[1], -1, last[6]):
            out.append((last[1], "sharp-change", last[7] / rng))
    return out


def _read_loss(xg, m, s, thr, direction):
    sign = -1 if direction == "down" else 1
    out = []
    for xa, xb, a, b, i, sg, h, size in _moves(xg, m, s, thr["min_size"]):
        if sg != sign:
            continue
        st = size / thr["range"]
        if xa - xg[0] >= thr["min_gap"]:
            out.append((xa, "plateau-end", st))
        out.append((_refine(xg, sign * s, i), "drop", st))
        if xg[-1] - xb >= thr["min_gap"]:
            out.append((xb, "drop-end", st))
    return out


def _read_onset(xg, m, thr, direction, frac):
    z = m if direction == "up" else -m
    start, top = z[0], z.max()
    if top - start < thr["min_size"]:
        return []
    level = start + frac * (top - start)
    i = int(np.argmax(z >= level))
    if i == 0:
        return []
    return [(_cross(xg, z, i - 1, i, level), "onset", (top - start) / thr["range"])]


def _read_peaks(xg, m, thr):
    pk, props = find_peaks(m, prominence=thr["min_size"])
    return [(_refine(xg, m, i), "peak", p / thr["range"]) for i, p in zip(pk, props["prominences"])]


def _read(xg, m, kind, direction, thr, frac):
    s = np.gradient(m, xg)
    if kind == "llc":
        return _read_llc(xg, m, s, thr)
    if kind == "loss":
        return _read_loss(xg, m, s, thr, direction)
    if kind == "onset":
        return _read_onset(xg, m, thr, direction, frac)
    if kind == "emergence":
        return _read_peaks(xg, m, thr)
    raise ValueError(f"unknown kind {kind!r}; use 'llc', 'loss', 'onset', 'emergence' or 'trajectory'")


# matching a boundary across draws: kinds that are one event read two ways
_FAMILY = {"slope-zero": "crit", "plateau-start": "crit", "plateau-end": "crit", "sharp-change": "crit",
           "turning-point": "crit", "cusp": "crit", "drop": "drop", "drop-end": "drop-end", "onset": "onset",
           "peak": "peak"}


def _match(anchors, draws, window):
    """For each anchor (x, kind): the x of its nearest same-family boundary in each draw that holds
    one within `window` and nearer to it than to any other anchor."""
    hits = [[] for _ in anchors]
    if not anchors:
        return hits
    ax = np.array([a[0] for a in anchors])
    fam = [_FAMILY.get(a[1], a[1]) for a in anchors]
    # the LLC's loss reading gives plateau-end before a drop: match those with each other only
    if any(a[1] == "drop" for a in anchors):
        fam = [a[1] for a in anchors]
    for res in draws:
        best = {}
        for x, k, _ in res:
            f = k if any(a[1] == "drop" for a in anchors) else _FAMILY.get(k, k)
            cands = [j for j in range(len(anchors)) if fam[j] == f]
            if not cands:
                continue
            j = min(cands, key=lambda j: abs(ax[j] - x))
            d = abs(ax[j] - x)
            if d <= window and (j not in best or d < abs(best[j] - ax[j])):
                best[j] = x
        for j, x in best.items():
            hits[j].append(x)
    return hits


def _thresholds(sm: Smooth, min_rel_change, min_snr, min_gap, flat, kink_span):
    ms = (sm.mean - sm.center) / sm.scale
    sds = sm.sd / sm.scale
    rng = max(float(np.ptp(ms)), 1e-12)
    return ms, {"range": rng, "min_size": max(min_rel_change * rng, min_snr * float(np.median(sds))),
                "min_gap": min_gap, "flat": flat, "kink_span": kink_span}


def find_boundaries(steps, values, stderr=None, kind: str = "llc", signal: str | None = None, *,
                    direction: str = "auto", resamples: int = 100, seed: int = 0,
                    min_rel_change: float = 0.1, min_snr: float = 3.0, min_evidence: float = 3.0,
                    min_support: float = 0.5, onset_fraction: float = 0.5, min_gap: float = 0.3,
                    flat: float = 0.25, kink_span: float | None = None, coverage: float = 0.9,
                    widen: float = 1.75, strong: Mapping | None = None,
                    smooth: Smooth | None = None, components=None, **ignored) -> list[Boundary]:
    """Boundaries of one signal over log(step + 1), each with a `coverage` interval in steps.

    kind: "llc" (slope-zero, plateau-start, plateau-end, sharp-change), "loss" (plateau-end, drop,
      drop-end of each move in `direction`: "down" for a loss, "up" for accuracy), "onset" (first
      crossing of `onset_fraction` of the way to the extreme), "emergence" (peak), "trajectory"
      (turning-point, cusp; `components` is an [n, k] array of the path's coordinates, else `values`).
    min_rel_change: a move must change the smoothed signal by this fraction of its range, and by
      min_snr posterior standard deviations.
    min_evidence: no boundary unless the GP beats a null model by this many nats of marginal
      likelihood: a straight line in log step ("llc", "loss", "trajectory"), a constant ("onset",
      "emergence"). This is what keeps pure noise boundary-free.
    min_gap: a flat stretch at least this long (in log step) is a plateau with two edges.
    resamples: posterior function draws; a boundary found in fewer than `min_support` of them is
      dropped. `widen` scales the intervals' half-widths (1: as drawn; see studies/stage_detector_accuracy.py).
    strong: keyword arguments of `is_strong` (the bar for `Boundary.strong`).

        >>> steps = np.arange(0, 3000, 50)
        >>> probe = 0.5 + 0.45 / (1 + np.exp(-(np.log1p(steps) - 6.0) / 0.2))
        >>> [(b.kind, round(b.x, 1)) for b in find_boundaries(steps, probe, kind="onset")]
        [('onset', 6.0)]
    """
    signal = signal or kind
    if kind == "trajectory":
        return _trajectory_boundaries(steps, values, components, signal, resamples=resamples, seed=seed,
                                      min_rel_change=min_rel_change, min_snr=min_snr, min_evidence=min_evidence,
                                      min_support=min_support, min_gap=min_gap, flat=flat, kink_span=kink_span,
                                      coverage=coverage, widen=widen, strong=strong)
    if kind not in ("llc", "loss", "onset", "emergence"):
        raise ValueError(f"unknown kind {kind!r}; use 'llc', 'loss', 'onset', 'emergence' or 'trajectory'")
    if smooth is None:
        try:
            smooth = smooth_signal(steps, values, stderr)
        except ValueError:
            return []
    sm = smooth
    evidence = sm.evidence_change if kind in ("onset", "emergence") else sm.evidence_nonlinear
    if evidence < min_evidence:
        return []
    # a kink: the slope changes by 40 % of the move's peak across the edge, within a length scale
    # (or kink_span) each side: the GP spreads a corner over about one length scale
    ms, thr = _thresholds(sm, min_rel_change, min_snr, min_gap, flat,
                          max(0.25, sm.lengthscale) if kink_span is None else kink_span)
    if direction == "auto":
        direction = "up" if ms[-1] >= ms[0] else "down"
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up', 'down' or 'auto', got {direction!r}")
    found = _read(sm.x, ms, kind, direction, thr, onset_fraction)
    if not found:
        return []
    draws = (sm.sample(resamples, seed) - sm.center) / sm.scale if resamples else np.zeros((len(sm.x), 0))
    again = [_read(sm.x, draws[:, j], kind, direction, thr, onset_fraction) for j in range(draws.shape[1])]
    return _summarise(found, again, signal, sm.x, max(2.0 * sm.lengthscale, 0.3), resamples, min_support,
                      coverage, widen, evidence, strong)


def _summarise(found, again, signal, xg, window, resamples, min_support, coverage, widen, evidence, strong):
    hits = _match([(x, k) for x, k, _ in found], again, window)
    q = (1 - coverage) / 2
    out = []
    for (xb, k, strength), h in zip(found, hits):
        support = len(h) / resamples if resamples else 1.0
        if resamples and support < min_support:
            continue
        if h:
            lo, mid, hi = np.quantile(h, [q, 0.5, 1 - q])
        else:
            lo = mid = hi = xb
        lo, hi = mid - widen * (mid - lo), mid + widen * (hi - mid)
        lo, hi = max(min(lo, xb), xg[0]), min(max(hi, xb), xg[-1])
        b = Boundary(step=float(step_of(xb)), lo=float(step_of(lo)), hi=float(step_of(hi)), signal=signal, kind=k,
                     support=float(support), strength=float(strength), evidence=float(evidence))
        out.append(b)
    out = merge_boundaries(out)
    return [_with_strong(b, strong) for b in out]


def _with_strong(b: Boundary, strong: Mapping | None) -> Boundary:
    from dataclasses import replace
    return replace(b, strong=bool(is_strong(b, **(strong or {}))))


def merge_boundaries(bs: Sequence[Boundary]) -> list[Boundary]:
    """Merge boundaries of one signal that fall inside each other's intervals.

    Two of one kind become the one with more support (strength breaks ties), over the union of
    their intervals; a plateau-start and plateau-end that overlap are one critical point
    (slope-zero) half way between.

        >>> a = Boundary(100, 80, 130, "llc", "slope-zero", support=0.7)
        >>> b = Boundary(120, 90, 160, "llc", "slope-zero", support=0.9)
        >>> [(m.step, m.lo, m.hi) for m in merge_boundaries([a, b])]
        [(120, 80, 160)]
    """
    from dataclasses import replace
    out = sorted(bs, key=lambda b: (b.signal, b.step))
    changed = True
    while changed:
        changed = False
        for i in range(len(out) - 1):
            a, b = out[i], out[i + 1]
            if a.signal != b.signal or not (b.lo <= a.step <= b.hi or a.lo <= b.step <= a.hi):
                continue
            lo, hi = min(a.lo, b.lo), max(a.hi, b.hi)
            if a.kind == b.kind:
                keep = max((a, b), key=lambda m: (m.support, np.nan_to_num(m.strength)))
                new = replace(keep, lo=lo, hi=hi)
            elif (a.kind, b.kind) == ("plateau-start", "plateau-end"):
                new = replace(a, step=float(step_of(0.5 * (a.x + b.x))), lo=lo, hi=hi, kind="slope-zero",
                              support=max(a.support, b.support))
            else:
                continue
            out[i:i + 2] = [new]
            changed = True
            break
    return sorted(out, key=lambda b: (b.step, b.signal, b.kind))


def _trajectory_boundaries(steps, values, components, signal, *, resamples, seed, min_evidence, min_support,
                           coverage, widen, strong, **thr_kw):
    """Turning points of each component of a path (critical points of its smoothed coordinate); a
    cusp where two or more components turn within each other's intervals."""
    comps = np.asarray(values if components is None else components, float)
    if comps.ndim == 1:
        comps = comps[:, None]
    per = []
    for j in range(comps.shape[1]):
        for b in find_boundaries(steps, comps[:, j], kind="llc", signal=signal, resamples=resamples,
                                 seed=seed + j, min_evidence=min_evidence, min_support=min_support,
                                 coverage=coverage, widen=widen, **{k: v for k, v in thr_kw.items()}):
            per.append((j, b))
    per.sort(key=lambda t: t[1].step)
    from dataclasses import replace
    groups: list[list] = []
    for j, b in per:
        g = groups[-1] if groups else None
        # one event if within each other's intervals, or within 0.25 in log step (noise-free paths
        # have zero-width intervals)
        if g and any(b.lo <= m.step <= b.hi or m.lo <= b.step <= m.hi or abs(b.x - m.x) <= 0.25 for _, m in g):
            g.append((j, b))
        else:
            groups.append([(j, b)])
    out = []
    for g in groups:
        comps_here = {j for j, _ in g}
        lead = max((b for _, b in g), key=lambda b: (b.support, np.nan_to_num(b.strength)))
        out.append(replace(lead, kind="cusp" if len(comps_here) >= 2 else "turning-point",
                           lo=min(b.lo for _, b in g), hi=max(b.hi for _, b in g),
                           strength=float(max(np.nan_to_num(b.strength) for _, b in g))))
    return [_with_strong(b, strong) for b in out]


# --------------------------------------------------------------------------------------------------
# Alignment


def _signal_family(signal: str) -> str:
    """'llc', 'loss' (train/test loss and accuracy), 'probe', 'ablation', 'crosscoder', 'ed', ..."""
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
            "strength", "evidence", "strong", "offset", "n_signals", "signals"]
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
                         "evidence": m.evidence, "strong": m.strong,
                         "offset": m.x - center, "n_signals": len(names), "signals": ",".join(names)})
    return pd.DataFrame(rows, columns=cols)
