"""Rule step 8's localised calibration on its own, for one case of studies/llc_accuracy.py.

The automatic calibration of a 10⁴-weight network takes longer than one session on one core: its
γ = 1 calibration (deterministic: same seed, same draws) runs to the draws check, which stops where
the chains cannot localise and names the γ and the step budget for rule step 8. This runs that
second calibration alone, at the γ and budget the first printed, then the final estimate at its
choice (seed 1, as llc_accuracy.py), so the two parts compose into the automatic result.

    OMP_NUM_THREADS=1 python studies/localised_calibration.py --case dln_50x5_full --gamma 100 --budget 72000
"""
import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="dln_50x5_full", help="a case name of llc_accuracy.py")
    p.add_argument("--gamma", type=float, default=100.0, help="the γ rule step 8 chose (its 'calibrating again at γ=' line)")
    p.add_argument("--budget", type=int, default=72000,
                   help="the draws check's budget in steps ((draws + burn-in) × 16 of the chosen cell)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    import llc_accuracy as A
    if a.case not in A.CASES:
        p.error(f"unknown case {a.case!r}; known: {list(A.CASES)}")
    if not (math.isfinite(a.gamma) and a.gamma > 0) or a.budget <= 0:
        p.error("--gamma and --budget must be positive")
    from llc_watch.llc import estimate_llc
    from llc_watch.llc import calibration as C
    model, loss_fn, data, lam = A.make(a.case)
    t0 = time.perf_counter()
    cal = C._calibrate_at_gamma(model, loss_fn, data, gamma=a.gamma, burn_floor=C.relaxation_burn_in, burn_cap=a.budget,
                                warm_start=True, seed=0, progress=True, device=a.device)
    print("status", cal.status, "choice", cal.choice, "cost", cal.evidence["cost"]["ratio"],
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    print("checks", {k: v for k, v in cal.evidence["checks"].items() if k != "draws"}, flush=True)
    for w in cal.warnings:
        print("  warning:", w, flush=True)
    t0 = time.perf_counter()
    r = estimate_llc(model, loss_fn, data, **{**cal.choice, "seed": 1, "device": a.device})
    print(f"final: λ̂ = {r.llc_mean:.5g} ± {r.llc_stderr:.2g} ({100 * (r.llc_mean - lam) / lam:+.1f} % of λ = {lam:g}), "
          f"{time.perf_counter() - t0:.0f} s; R̂ {r.diagnostics['rhat']:.3f}", flush=True)


if __name__ == "__main__":
    main()
