"""Adaptive SGLD budget against the dense run, on synthetic LLC curves whose noise falls as 1/sqrt(draws).

    PYTHONPATH=. python studies/adaptive_budget.py [n_curves] [first_seed] [sparse]

Dense: every checkpoint of the schedule at full draws. Adaptive: every checkpoint at first_draws
(with `sparse`: every other one, the rest as candidates the loop may add), then refinement
(llc_watch.stages.adaptive). Prints, per curve and in total, the draws
spent and whether the strong boundaries agree (same kind family, within each other's intervals).
"""
import sys

import numpy as np

from llc_watch.stages import find_boundaries
from llc_watch.stages.adaptive import AdaptiveSettings, adaptive_estimate, same_strong
from llc_watch.stages.synthetic import planted_llc


def noisy_llc(curve, noise_at_full=0.03, full=400, seed=0):
    calls = [0]

    def estimate(steps, draws):
        calls[0] += 1
        sd = noise_at_full * np.ptp(curve.truth) * np.sqrt(full / draws)
        rng = np.random.default_rng([seed, calls[0]])  # every checkpoint its own seed: independent errors
        return np.interp(np.log1p(steps), np.log1p(curve.steps), curve.truth) + sd * rng.standard_normal(len(steps)), \
            np.full(len(steps), sd)
    return estimate


def compare(seed, s=AdaptiveSettings().resolved(), sparse=False):
    c = planted_llc(seed)
    est = noisy_llc(c, full=s.full_draws, seed=seed)
    dv, de = est(c.steps.astype(float), s.full_draws)
    dense = find_boundaries(c.steps, dv, de, kind="llc", resamples=s.resamples)
    r = (adaptive_estimate(est, c.steps[::2], s, candidates=c.steps) if sparse
         else adaptive_estimate(est, c.steps, s))
    m, only_dense, only_adaptive = same_strong(dense, r.boundaries)
    return {"seed": seed, "dense_draws": s.full_draws * len(c.steps), "adaptive_draws": r.total_draws,
            "ratio": r.total_draws / (s.full_draws * len(c.steps)), "strong_dense": sum(b.strong for b in dense),
            "matched": m, "found_any": same_strong(dense, r.boundaries, strong_b=False)[0], "only_dense": only_dense, "only_adaptive": only_adaptive, "rounds": len(r.history) - 1,
            "stopped": r.stopped,
            "width_dense": float(np.median([b.width for b in dense if b.strong] or [np.nan])),
            "width_adaptive": float(np.median([b.width for b in r.boundaries if b.strong] or [np.nan]))}


if __name__ == "__main__":
    import pandas as pd
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    sparse = len(sys.argv) > 3 and sys.argv[3] == "sparse"
    df = pd.DataFrame([compare(s, sparse=sparse) for s in range(first, first + n)])
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"total: adaptive {df.adaptive_draws.sum()} draws = {df.adaptive_draws.sum() / df.dense_draws.sum():.0%} "
          f"of dense {df.dense_draws.sum()}; strong boundaries matched {df.matched.sum()} of {df.strong_dense.sum()} "
          f"dense ({df.found_any.sum()} found among all adaptive boundaries), {df.only_adaptive.sum()} only adaptive")
