"""Adaptive SGLD budget: few draws everywhere, then more draws (and more checkpoints) only where a
boundary's interval is wide or its existence uncertain; stop when the intervals stop shrinking.

The logic is pure: `adaptive_estimate` takes a callable `estimate(steps, draws) -> (values, stderr)`
(the LLC job at those checkpoints with that many draws per chain), so the loop is tested on a
synthetic noisy LLC curve and wired to the real LLC job by the CLI (`llc-watch llc RUN --adaptive`).

    >>> import numpy as np
    >>> from llc_watch.stages.synthetic import planted_llc
    >>> c = planted_llc(3)
    >>> rng = np.random.default_rng(0)
    >>> def estimate(steps, draws):           # an LLC whose noise falls as 1/sqrt(draws)
    ...     sd = 0.03 * np.ptp(c.truth) * np.sqrt(400 / draws)
    ...     truth = np.interp(np.log1p(steps), np.log1p(c.steps), c.truth)
    ...     return truth + sd * rng.standard_normal(len(steps)), np.full(len(steps), sd)
    >>> r = adaptive_estimate(estimate, c.steps, AdaptiveSettings())
    >>> bool(r.total_draws < 400 * len(c.steps)) and len(r.boundaries) > 0
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np

from llc_watch.settings import SettingsBase, SettingsError

from .boundaries import Boundary, find_boundaries


@dataclass(frozen=True)
class AdaptiveSettings(SettingsBase):
    first_draws: Optional[int] = None  # draws per chain at every checkpoint in the first pass; None: full_draws // 8
    full_draws: Optional[int] = None   # the most a checkpoint gets (the dense run's budget); None: the LLC
                                       # settings' draws (400 in the pure loop)
    first_every: int = 1          # the first pass visits every k-th checkpoint (and the last); the others are
                                  # candidates refinement may add where a boundary is unsettled
    growth: int = 4               # a refined checkpoint's draws are multiplied by this (up to full_draws)
    max_rounds: int = 5           # refinement rounds after the first pass
    width_goal: float = 0.5       # a boundary whose 90 % interval is narrower (in log step) ...
    support_goal: float = 0.9     # ... and that exists in this share of posterior draws needs nothing more
    shrink: float = 0.1           # stop when the unsettled intervals' total width shrinks by less than this fraction
    patience: int = 1             # ... in this many rounds in a row
    reach: float = 1.0            # refine checkpoints within the interval widened by this many half-widths
    per_boundary: int = 2         # at most this many checkpoints (refined or new) per unsettled boundary per round
    kind: str = "llc"             # how boundaries are read (see find_boundaries)
    min_support: float = 0.3      # boundaries kept while refining (the final reading is the caller's)
    resamples: int = 100          # posterior function draws per reading of the curve
    max_doublings: int = 2        # a first pass that shows no boundary gets its draws doubled everywhere at
                                  # most this often; still none: stop ('no boundary'), not a dense run in disguise
    new_checkpoints: bool = True  # refinement may add checkpoints training never saved (log-midpoints between
                                  # the run's scheduled ones) inside an unsettled interval, written by replaying
                                  # training from step 0 (our runs only; the LLC driver; see train.replay_checkpoints)
    warm_start: bool = True       # refinements continue a checkpoint's chains from their saved final state
                                  # (no second burn-in; the draws extend the old ones); off: fresh chains
                                  # pooled by inverse variance (the LLC driver; the pure loop ignores it)

    cli_hidden = ("kind",)        # the CLI reads LLC curves only

    def validate(self):
        self.at_least("first_draws", 1, allow_none=True)
        self.at_least("full_draws", 1, allow_none=True)
        if self.first_draws is not None and self.full_draws is not None and self.first_draws > self.full_draws:
            self._fail("first_draws", f"must be <= full_draws ({self.full_draws})")
        for name in ("first_every", "max_rounds", "patience", "per_boundary", "resamples"):
            self.at_least(name, 1)
        self.at_least("max_doublings", 0)
        self.at_least("growth", 2)
        self.within("support_goal", 0.0, 1.0)
        self.within("min_support", 0.0, 1.0)
        self.within("shrink", 0.0, 1.0)
        self.positive("width_goal")
        self.at_least("reach", 0.0)

    def resolved(self, full_draws: int = 400) -> "AdaptiveSettings":
        """These settings with the draws filled in: full_draws (if unset) from the dense budget given,
        first_draws (if unset) full_draws // 8.

            >>> s = AdaptiveSettings().resolved(200)
            >>> s.first_draws, s.full_draws
            (25, 200)
        """
        full = self.full_draws if self.full_draws is not None else int(full_draws)
        first = self.first_draws if self.first_draws is not None else max(1, full // 8)
        if first > full:
            raise SettingsError(f"first_draws={first}: must be <= full_draws ({full})")
        return replace(self, first_draws=first, full_draws=full)


def needs_more(b: Boundary, s: AdaptiveSettings) -> bool:
    """A boundary is settled when its interval is narrow and it exists in most posterior draws."""
    return b.width > s.width_goal or b.support < s.support_goal


def plan(steps: np.ndarray, draws: np.ndarray, boundaries: Sequence[Boundary], s: AdaptiveSettings,
         candidates: Sequence[float] = (), last_resort: Sequence[float] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(checkpoints to re-estimate with more draws, new checkpoints to add) for one round.

    Checkpoints inside an unsettled boundary's interval (widened by `reach` half-widths) that are
    below full_draws get more draws; candidates (checkpoints that exist but have no estimate yet)
    inside those intervals are added, nearest the boundary first; `last_resort` candidates (steps
    that cost more to add, e.g. checkpoints training must be replayed to write) only for an interval
    where nothing else is left.

        >>> b = Boundary(100, 50, 200, "llc", "slope-zero", support=0.95)
        >>> more, new = plan(np.array([10., 60, 100, 150, 1000]), np.full(5, 50), [b], AdaptiveSettings(),
        ...                  candidates=[80, 120, 5000])
        >>> more.tolist(), new.tolist()
        ([100.0], [120.0])
    """
    s = s.resolved()
    steps = np.asarray(steps, float)
    x = np.log1p(steps)
    more, new = set(), []
    cand = np.array(sorted(set(float(c) for c in candidates) - set(steps.tolist())), float)
    last = np.array(sorted(set(float(c) for c in last_resort) - set(steps.tolist()) - set(cand.tolist())), float)
    for b in boundaries:
        if not needs_more(b, s):
            continue
        half = max(0.5 * b.width, 0.05)
        lo, hi = np.log1p(b.lo) - s.reach * half, np.log1p(b.hi) + s.reach * half
        # the checkpoints nearest the boundary that can still improve: existing ones below
        # full_draws, and candidates not estimated yet
        pool = [(abs(xi - b.x), float(st), "more") for xi, st, d in zip(x, steps, draws)
                if lo <= xi <= hi and d < s.full_draws and st not in more]
        pool += [(abs(np.log1p(c) - b.x), float(c), "new") for c in cand
                 if lo <= np.log1p(c) <= hi and c not in new]
        if not pool:   # nothing else can sharpen this interval: steps that cost more to make (replayed training)
            pool = [(abs(np.log1p(c) - b.x), float(c), "new") for c in last
                    if lo <= np.log1p(c) <= hi and c not in new]
        for _, st, what in sorted(pool)[: s.per_boundary]:
            (more.add(st) if what == "more" else new.append(st))
    return np.array(sorted(more), float), np.array(new, float)


@dataclass
class AdaptiveResult:
    steps: np.ndarray              # every checkpoint estimated
    values: np.ndarray
    stderr: np.ndarray
    draws: np.ndarray              # draws per chain behind each checkpoint's pooled estimate
    boundaries: list               # boundaries of the final curve
    total_draws: int               # draws spent in all rounds (re-estimates included)
    history: list = field(default_factory=list)  # per round: checkpoints, draws spent, unsettled width
    stopped: str = ""


def adaptive_estimate(estimate: Callable, steps: Sequence[float], s: AdaptiveSettings = AdaptiveSettings(),
                      candidates: Sequence[float] = (), seed: int = 0, cumulative: bool = False,
                      last_resort: Sequence[float] = ()) -> AdaptiveResult:
    """Run the adaptive loop: first pass at `first_draws` on `steps` (every `first_every`-th, the rest
    joining `candidates`), then refine (see `plan`) until every boundary is settled, the unsettled
    intervals stop shrinking, or max_rounds.

    estimate(steps, draws) -> (values, stderr) or an object with .value/.stderr (e.g. a Signal).
    More draws at a checkpoint are a fresh estimate pooled with the earlier one by inverse variance
    (so `estimate` must use a new seed on every call: independent errors). An estimate that failed
    is NaN (any stderr): it adds nothing to the pool, and a checkpoint with no finite estimate yet is
    left out of the boundary reading.
    cumulative=True: `estimate(steps, extra)` pools itself (e.g. continues the checkpoint's chains for
    `extra` more draws) and returns each checkpoint's estimate from all its draws so far, which
    replaces the old one.
    """
    s = s.resolved()

    def call(st, d):
        out = estimate(np.asarray(st, float), int(d))
        v, e = (out.value, out.stderr) if hasattr(out, "value") else out
        v, e = np.asarray(v, float), np.asarray(e, float)
        if v.shape != (len(st),) or e.shape != (len(st),):
            raise ValueError(f"estimate({len(st)} steps, {d}) returned shapes {v.shape}, {e.shape}; "
                             f"expected ({len(st)},) each")
        bad = ~(np.isfinite(v) & np.isfinite(e) & (e > 0))
        return np.where(bad, np.nan, v), np.where(bad, np.inf, e)

    every = np.array(sorted(set(float(x) for x in steps)), float)
    st = every[::s.first_every]
    if st[-1] != every[-1]:
        st = np.append(st, every[-1])
    candidates = sorted(set(float(c) for c in candidates) | (set(every.tolist()) - set(st.tolist())))
    v, e = call(st, s.first_draws)
    dr = np.full(len(st), s.first_draws, int)
    total = int(s.first_draws * len(st))

    def read():
        # a low support bar: a boundary the first pass only glimpses is what refinement is for
        ok = np.isfinite(v)
        if ok.sum() < 4:
            return []
        return find_boundaries(st[ok], v[ok], e[ok], kind=s.kind, signal="llc", resamples=s.resamples,
                               seed=seed, min_support=s.min_support)

    def pool(idx, extra):
        """Add `extra` draws at checkpoints idx: a fresh estimate pooled with the old by inverse variance."""
        nv, ne = call(st[idx], extra)
        if cumulative:
            v[idx], e[idx] = nv, ne
        else:
            w0, w1 = 1 / e[idx] ** 2, 1 / ne ** 2          # a failed estimate (stderr inf) weighs nothing
            w = w0 + w1
            v[idx] = np.where(w > 0, (w0 * np.nan_to_num(v[idx]) + w1 * np.nan_to_num(nv)) / np.where(w > 0, w, 1),
                              np.nan)
            e[idx] = np.where(w > 0, 1 / np.sqrt(np.where(w > 0, w, 1)), np.inf)
        dr[idx] += extra
        return extra * len(idx)

    bs = read()
    # nothing to refine around: the first pass may have been too noisy to show a boundary; add draws
    # everywhere, a bounded number of times (a curve with no boundary at 4x the draws most likely has
    # none at the dense budget either; doubling on to full_draws would be the dense run, dearer)
    doublings = 0
    while not bs and dr.min() < s.full_draws and doublings < s.max_doublings:
        total += pool(np.arange(len(st)), min(dr.min(), s.full_draws - dr.min()))  # double
        doublings += 1
        bs = read()
    history = [{"round": 0, "checkpoints": len(st), "draws": total, "unsettled": sum(needs_more(b, s) for b in bs),
                "unsettled_width": sum(b.width for b in bs if needs_more(b, s)), "doublings": doublings}]
    stopped, stalls = "max_rounds", 0
    if not bs:
        return AdaptiveResult(st, v, e, dr, bs, total, history,
                              f"no boundary after {doublings} doubling(s) of the first pass's draws")
    for r in range(1, s.max_rounds + 1):
        width = history[-1]["unsettled_width"]
        if history[-1]["unsettled"] == 0:
            stopped = "settled"
            break
        more, new = plan(st, dr, bs, s, candidates, last_resort)
        if not len(more) and not len(new):
            stopped = "nothing left to refine"
            break
        spent = 0
        for m in more:
            i = int(np.searchsorted(st, m))
            spent += pool(np.array([i]), min(s.full_draws, dr[i] * s.growth) - dr[i])
        if len(new):
            d_new = min(s.full_draws, s.first_draws * s.growth)
            nv, ne = call(new, d_new)
            st = np.concatenate([st, new])
            v, e, dr = np.concatenate([v, nv]), np.concatenate([e, ne]), np.concatenate([dr, np.full(len(new), d_new)])
            order = np.argsort(st, kind="stable")
            st, v, e, dr = st[order], v[order], e[order], dr[order]
            spent += d_new * len(new)
        total += spent
        bs = read()
        unsettled = [b for b in bs if needs_more(b, s)]
        history.append({"round": r, "checkpoints": len(st), "draws": spent, "unsettled": len(unsettled),
                        "unsettled_width": sum(b.width for b in unsettled)})
        stalls = stalls + 1 if history[-1]["unsettled_width"] > (1 - s.shrink) * width else 0
        if unsettled and stalls >= s.patience:
            stopped = "intervals stopped shrinking"
            break
    else:
        if history[-1]["unsettled"] == 0:
            stopped = "settled"
    return AdaptiveResult(st, v, e, dr, bs, total, history, stopped)


def same_strong(a: Sequence[Boundary], b: Sequence[Boundary], strong_b: bool = True) -> tuple[int, int, int]:
    """(matched, only in a, only in b): strong boundaries of one kind family whose locations fall
    within each other's intervals (with strong_b=False, a's strong ones against all of b's)."""
    from .boundaries import _FAMILY
    sa, sb = [x for x in a if x.strong], [x for x in b if x.strong or not strong_b]
    used, matched = set(), 0
    for p in sa:
        for j, q in enumerate(sb):
            if j in used or _FAMILY.get(p.kind, p.kind) != _FAMILY.get(q.kind, q.kind):
                continue
            if q.lo <= p.step <= q.hi or p.lo <= q.step <= p.hi:
                used.add(j)
                matched += 1
                break
    return matched, len(sa) - matched, len(sb) - matched
