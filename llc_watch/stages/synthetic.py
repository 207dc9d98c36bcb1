"""Synthetic curves with planted boundaries, and how well a detector recovers them.

Used by tests/test_stage_synthetic.py and studies/stage_detector_accuracy.py to measure recall
(planted events found within `tol` in log step), spurious boundaries per curve, and how often a
boundary's interval contains the planted location (coverage).

    >>> c = planted_llc(seed=0)
    >>> len(c.steps) == len(c.values) and all(k in ("slope-zero", "plateau-start", "plateau-end") for _, k in c.events)
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class PlantedCurve:
    steps: np.ndarray
    values: np.ndarray
    stderr: np.ndarray
    truth: np.ndarray             # the noiseless curve at `steps`
    events: list                  # [(x = log(step + 1), kind)]
    kind: str                     # "llc" or "loss"


def checkpoints(total: int = 20000, n_log: int = 60, n_linear: int = 20) -> np.ndarray:
    """Log-spaced steps plus linear ones, like training's checkpoint schedule."""
    log = np.unique(np.round(np.geomspace(1, total, n_log)).astype(int))
    lin = np.linspace(0, total, n_linear + 1).astype(int)
    return np.unique(np.concatenate([[0], log, lin]))


def planted_llc(seed: int, total: int = 20000, noise: float = 0.03) -> PlantedCurve:
    """A piecewise-linear curve in log step: a flat start, then 3-5 segments (rise, fall, plateau),
    no two alike in a row. Events: plateau-end / plateau-start where a plateau meets a ramp,
    slope-zero where a rise meets a fall (a peak or trough). Noise: `noise` x range per point, with
    that as the stated stderr."""
    rng = np.random.default_rng(seed)
    steps = checkpoints(total)
    x_end = float(np.log1p(total))
    knots = [0.0, float(rng.uniform(1.2, 2.5))]
    kinds = ["flat"]
    while True:
        prev = kinds[-1]
        options = {"flat": ["up", "down"], "up": ["flat", "down"], "down": ["flat", "up"]}[prev]
        if prev == "flat":
            options = ["up", "up", "down"]  # an LLC mostly rises
        kinds.append(str(rng.choice(options)))
        nxt = knots[-1] + float(rng.uniform(1.2, 2.2))
        if nxt > x_end - 1.0:
            knots.append(x_end)
            break
        knots.append(nxt)
    vals = [0.0]
    for k in kinds:
        vals.append(vals[-1] + {"flat": 0.0, "up": rng.uniform(0.5, 1.0), "down": -rng.uniform(0.3, 0.7)}[k])
    x = np.log1p(steps.astype(float))
    truth = np.interp(x, knots, vals)
    events = []
    for i in range(1, len(kinds)):
        a, b = kinds[i - 1], kinds[i]
        kind = ("plateau-end" if a == "flat" else "plateau-start" if b == "flat" else "slope-zero")
        events.append((knots[i], kind))
    sd = noise * float(np.ptp(truth))
    values = truth + sd * rng.standard_normal(len(steps))
    return PlantedCurve(steps, values, np.full(len(steps), sd), truth, events, "llc")


def planted_loss(seed: int, total: int = 20000, noise: float = 0.02) -> PlantedCurve:
    """A loss: a plateau, a linear drop in log step, a lower plateau (and sometimes a second, smaller
    drop). Events: plateau-end, drop (the middle of the drop), drop-end."""
    rng = np.random.default_rng(seed)
    steps = checkpoints(total)
    x_end = float(np.log1p(total))
    x = np.log1p(steps.astype(float))
    knots, vals, events = [0.0], [2.0], []
    start, level = float(rng.uniform(2.0, 4.0)), 2.0
    n_drops = 1 + int(rng.random() < 0.5)
    for d in range(n_drops):
        width = float(rng.uniform(0.8, 1.6))
        fall = float(rng.uniform(1.0, 1.5)) if d == 0 else float(rng.uniform(0.3, 0.5))
        if start + width > x_end - 0.8:
            break
        knots += [start, start + width]
        vals += [level, level - fall]
        events += [(start, "plateau-end"), (start + width / 2, "drop"), (start + width, "drop-end")]
        level -= fall
        start = start + width + float(rng.uniform(1.2, 2.0))
    knots.append(x_end)
    vals.append(level)
    truth = np.interp(x, knots, vals)
    sd = noise * float(np.ptp(truth))
    values = truth + sd * rng.standard_normal(len(steps))
    return PlantedCurve(steps, values, np.full(len(steps), sd), truth, events, "loss")


def score(curves: Sequence[PlantedCurve], detect: Callable, tol: float = 0.25) -> dict:
    """Recall (planted events with a detected boundary of that kind within `tol` in log step),
    spurious boundaries per curve (detected ones with no planted event of their kind within `tol`),
    and coverage (matched events whose location lies inside the boundary's interval).

    detect(curve) -> list of Boundary.
    """
    n_events = n_found = n_spur = n_cov = n_match = 0
    misses, spurious = [], []
    for ci, c in enumerate(curves):
        bs = list(detect(c))
        used = set()
        for xe, ke in c.events:
            n_events += 1
            cand = [(abs(b.x - xe), j) for j, b in enumerate(bs) if b.kind == ke and j not in used
                    and abs(b.x - xe) <= tol]
            if cand:
                _, j = min(cand)
                used.add(j)
                n_found += 1
            else:
                misses.append((ci, round(xe, 2), ke))
            # coverage is about the interval of the boundary that stands for this event, found within
            # twice the tolerance (an interval that is wide but honest still counts)
            near = [b for b in bs if b.kind == ke and abs(b.x - xe) <= 2 * tol]
            if near:
                b = min(near, key=lambda b: abs(b.x - xe))
                n_match += 1
                n_cov += int(np.log1p(b.lo) <= xe <= np.log1p(b.hi))
        for j, b in enumerate(bs):
            if j not in used and not any(b.kind == ke and abs(b.x - xe) <= tol for xe, ke in c.events):
                n_spur += 1
                spurious.append((ci, round(b.x, 2), b.kind))
    return {"curves": len(curves), "events": n_events, "recall": n_found / max(n_events, 1),
            "spurious_per_curve": n_spur / max(len(curves), 1), "coverage": n_cov / max(n_match, 1),
            "matched": n_match, "misses": misses, "spurious": spurious}
