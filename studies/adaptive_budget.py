"""Adaptive SGLD budget against the dense run: on synthetic LLC curves, or on a real run's checkpoints.

    PYTHONPATH=. python studies/adaptive_budget.py [n_curves] [first_seed] [sparse]
    PYTHONPATH=. python studies/adaptive_budget.py --run RUN [LLC settings] [adaptive settings] [--out FILE]

Synthetic: every checkpoint of the schedule at full draws (dense) against every checkpoint at
first_draws (with `sparse`: every other one, the rest as candidates the loop may add), then
refinement (llc_watch.stages.adaptive), on curves whose noise falls as 1/sqrt(draws). Prints, per
curve and in total, the draws spent and whether the strong boundaries agree (same kind family,
within each other's intervals).

--run: the real LLC job. Dense: `llc-watch llc RUN` with the given settings (every checkpoint at
--draws); adaptive: `llc-watch llc RUN --adaptive` with the same settings and the adaptive ones.
Both are resumable (results/llc/), so a rerun only prints. Prints the SGLD steps each spent, the
strong LLC boundaries each finds (find_boundaries on its llc.csv, as the stage map reads the LLC)
with their 90 % intervals, and how many of the dense run's strong boundaries the adaptive run finds
within intervals. The dense llc.csv is put back at the end (the run keeps its dense table).
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


def boundary_list(bs) -> str:
    return "; ".join(f"{b.kind} {b.step:.0f} [{b.lo:.0f}, {b.hi:.0f}]" for b in bs if b.strong) or "none"


def compare_run(argv=None):
    """Dense vs adaptive LLC on a real run (see the module docstring); returns the printed text."""
    import argparse
    import time
    from llc_watch.analyses import compute_llc
    from llc_watch.analyses.llc import LLCSettings
    from llc_watch.analyses.llc_adaptive import adaptive_llc, dense_sgld_steps, llc_signal_rows
    from llc_watch.cli.options import add_settings_options, given_settings
    from llc_watch.run import open_run
    p = argparse.ArgumentParser(description="dense vs adaptive LLC on a run")
    p.add_argument("--run", required=True)
    p.add_argument("--out", help="also write the printed table to this file")
    add_settings_options(p, LLCSettings, title="LLC settings")
    add_settings_options(p, AdaptiveSettings, hidden=("kind",), title="adaptive settings")
    args = p.parse_args(argv)
    llc, ad = given_settings(args, LLCSettings), given_settings(args, AdaptiveSettings)
    run = open_run(args.run)
    # the dense run: the run's own checkpoints (not those an adaptive replay of training added)
    from llc_watch.analyses.llc_adaptive import replay_candidates
    added = set(replay_candidates(run, AdaptiveSettings()))
    own = [c.step for c in run.checkpoints() if c.step not in added]
    t0 = time.perf_counter()
    dense = compute_llc(run, llc, checkpoints=own, progress=False)
    t_dense = time.perf_counter() - t0
    t0 = time.perf_counter()
    adaptive = adaptive_llc(run, llc, ad, progress=False)
    t_adaptive = time.perf_counter() - t0
    run.write_table("llc", dense)   # the run keeps its dense table
    s = dense.attrs["settings"]
    lines = [f"run {run.dir} ({len(dense)} checkpoints); LLC: chains={s.chains} draws={s.draws} burn_in={s.burn_in} "
             f"epsilon={s.epsilon:g} nbeta={s.nbeta} batch_size={s.batch_size}; adaptive: "
             + ", ".join(f"{k}={v}" for k, v in vars(adaptive.attrs['adaptive']).items()
                         if k in ('first_draws', 'full_draws', 'first_every', 'growth', 'max_rounds'))]
    rows, found = [], {}
    for name, table, wall in (("dense", dense, t_dense), ("adaptive", adaptive, t_adaptive)):
        g = llc_signal_rows(table)
        bs = find_boundaries(g["step"].to_numpy(float), g["value"].to_numpy(float), g["stderr"].to_numpy(float),
                             kind="llc", signal="llc", resamples=100, seed=0)
        found[name] = bs
        rows.append({"mode": name, "sgld_steps": dense_sgld_steps(table), "checkpoints": len(table),
                     "sampling_s": float(table["sampling_s"].sum()), "wall_s_this_call": wall,
                     "strong": sum(b.strong for b in bs), "strong boundaries [90 % interval]": boundary_list(bs)})
    import pandas as pd
    df = pd.DataFrame(rows)
    df.insert(2, "of_dense", df["sgld_steps"] / df["sgld_steps"].iloc[0])
    matched, only_dense, only_adaptive = same_strong(found["dense"], found["adaptive"])
    anywhere = same_strong(found["dense"], found["adaptive"], strong_b=False)[0]
    lines.append(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    import json
    log = json.loads((run.dir / "llc_adaptive.json").read_text())
    lines.append(f"adaptive: {len(log.get('replayed_checkpoints', []))} checkpoint(s) added by replaying training "
                 f"({log.get('replay_s', 0.0):.0f} s, not SGLD), {log['checkpoints_estimated']} estimated in all")
    lines.append(f"dense strong boundaries found by the adaptive run within intervals: {matched} of "
                 f"{matched + only_dense} as strong ones ({anywhere} among all its boundaries); "
                 f"{only_adaptive} strong only in the adaptive run; adaptive stopped: {adaptive.attrs['stopped']}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        from llc_watch.io import atomic_write_text
        atomic_write_text(args.out, text + "\n")
    return text


if __name__ == "__main__":
    if "--run" in sys.argv:
        compare_run(sys.argv[1:])
        sys.exit(0)
    import pandas as pd
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    sparse = len(sys.argv) > 3 and sys.argv[3] == "sparse"
    df = pd.DataFrame([compare(s, sparse=sparse) for s in range(first, first + n)])
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"total: adaptive {df.adaptive_draws.sum()} draws = {df.adaptive_draws.sum() / df.dense_draws.sum():.0%} "
          f"of dense {df.dense_draws.sum()}; strong boundaries matched {df.matched.sum()} of {df.strong_dense.sum()} "
          f"dense ({df.found_any.sum()} found among all adaptive boundaries), {df.only_adaptive.sum()} only adaptive")
