"""Deep linear networks of ~10³ weights: does λ̂ ever settle, and where do the chains go?

The accuracy study's 2,000-weight case (`dln_20x6_r3`, widths 20×6, rank 3, n = 10⁵, λ = 142.5)
ends NOT CONVERGED IN DRAWS: λ̂ rose 117 → 167 → 237 over 3,000 / 12,000 / 48,000 draws, past the
true λ. This runs one long estimate at fixed settings (4 chains from w*, no burn-in) and prints
nβ·(L − L(w*)) averaged over windows of draws per chain (the running λ̂), how far the chains went
(‖w − w*‖ against ‖w*‖), and the Hessian's top curvature at w* and at each chain's end point
(ε·nβ·h: SGLD's discretisation bias grows with it; 4 is the stability limit), then λ̂ over the
windows after two of the flat directions' relaxations (the stationary λ̂) and, for a list of ε, a
straight line through those to ε → 0.

    OMP_NUM_THREADS=1 python studies/dln_long_chains.py --sampler rmsprop_sgld --epsilon 6e-8 \\
        --batch 128 --draws 160000 --gamma 1          # ~4 min on one core
    OMP_NUM_THREADS=1 python studies/dln_long_chains.py --widths 5,4,3,5 --rank 1 --n 20000 \\
        --batch 4096 --epsilon 3.1e-5,1.03e-5 --draws 160000   # the 47-weight network, ~45 min
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WINDOW_EDGES = (1000, 4000, 10000, 20000, 40000, 80000, 160000, 320000)


def running_llc(traces: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """Per-chain means of a [chains, draws] array over the windows WINDOW_EDGES cut it into.

        >>> [(a, b, float(m[0])) for a, b, m in running_llc(np.arange(2500.0).reshape(1, 2500))]
        [(0, 1000, 499.5), (1000, 2500, 1749.5)]
    """
    T = traces.shape[1]
    edges = [0] + [e for e in WINDOW_EDGES if e < T] + [T]
    return [(a, b, traces[:, a:b].mean(1)) for a, b in zip(edges[:-1], edges[1:])]


def stationary_llc(traces: np.ndarray, relaxation: float, relaxations: float = 2.0) -> np.ndarray | None:
    """Per-chain means of a [chains, steps] array over the whole windows (`running_llc`'s) that
    start once `relaxations` relaxations have passed (step >= relaxations·relaxation); None when
    no window does. Why whole windows: the table printed beside is the one these numbers come from.

        >>> t = np.concatenate([np.zeros((2, 4000)), np.ones((2, 6000))], 1)
        >>> stationary_llc(t, 1500.0)            # from step 3,000: the window 4,000–10,000
        array([1., 1.])
        >>> stationary_llc(t, 6000.0) is None    # 12,000 steps: past the run
        True
    """
    parts = [(b - a, m) for a, b, m in running_llc(traces) if a >= relaxations * relaxation]
    if not parts:
        return None
    return sum(w * m for w, m in parts) / sum(w for w, _ in parts)


def _positives(text: str) -> list[float]:
    """'1,100' -> [1.0, 100.0]; anything else is argparse's one-line error.

        >>> _positives("1,100")
        [1.0, 100.0]
    """
    import argparse
    try:
        out = [float(g) for g in text.split(",")]
    except ValueError:
        out = []
    if not out or not all(g > 0 and g < float("inf") for g in out):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers separated by commas, e.g. 1,100")
    return out


def main(argv=None):
    import torch
    from llc_watch.llc import estimate_llc, exact
    from llc_watch.llc.calibration import (LOCALISE_RELAXATIONS, _problem, extrapolate_to_zero, flat_step,
                                           gradient_variance, relaxation_steps, top_curvature)
    from llc_watch.llc.data import DataSource, to_device
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="20,20,20,20,20,20")
    p.add_argument("--rank", type=int, default=3)
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--sampler", default="rmsprop_sgld", choices=("sgld", "rmsprop_sgld"))
    p.add_argument("--epsilon", default=[6e-8], type=_positives,
                   help="step size; a comma list runs one estimate per value and extrapolates the "
                        "stationary λ̂ to ε → 0")
    p.add_argument("--gamma", default=[1.0], type=_positives,
                   help="localisation strength; a comma list runs one estimate per value")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--draws", type=int, default=40000)
    p.add_argument("--burn-in", type=int, default=0, help="steps before the first draw (default 0: the "
                   "running λ̂ shows the chains leaving w*)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--point", default="minimal", choices=("minimal", "generic"),
                   help="the true parameter the network sits at (exact.make_dln)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    widths = [int(w) for w in a.widths.split(",")]
    model, loss_fn, data, lam = exact.make_dln(widths, a.rank, a.n, point=a.point)
    flat, loss_of, dev = _problem(model, loss_fn, None, a.device)
    src = DataSource(data)
    probe_batch = to_device(src.batch(torch.randperm(len(src), generator=torch.Generator().manual_seed(7))[:2048]), dev)
    h0 = top_curvature(loss_of, flat, probe_batch)
    w_rms = float(flat.w_star.pow(2).mean().sqrt())
    sq = gradient_variance(loss_of, flat, src, dev)["sq"] if a.sampler == "rmsprop_sgld" else None
    stationary = {}   # γ -> [(ε, stationary λ̂, its standard error over chains)]
    for gamma, eps in [(g, e) for g in a.gamma for e in a.epsilon]:
        t0 = time.perf_counter()
        r = estimate_llc(model, loss_fn, data, epsilon=eps, gamma=gamma, batch_size=a.batch,
                         chains=a.chains, draws=a.draws, burn_in=a.burn_in, sampler=a.sampler, seed=a.seed,
                         device=a.device)
        seconds = time.perf_counter() - t0
        nb = r.hyperparameters["nbeta"]
        # the estimator's own per-draw terms: the batch control variate's L_b(w) − L_b(w*), times nβ
        traces = nb * (np.asarray(r.loss_traces, float) - np.asarray(r.diagnostics["center_loss_trace"], float))
        W = r.final_weights.to(dev)
        h_end = [top_curvature(loss_of, flat, probe_batch, at=W[c]) for c in range(W.shape[0])]
        dist = [float((W[c] - flat.w_star).norm()) for c in range(W.shape[0])]
        steps = a.burn_in + a.draws
        print(f"\nDLN widths {widths} rank {a.rank} at the {a.point} true parameter, "
              f"{flat.w_star.numel()} weights, n = {a.n}, "
              f"λ = {lam}; {a.sampler} ε = {eps:g}, γ = {gamma:g}, batch {a.batch}, nβ = {nb:.0f}, "
              f"{a.chains} chains × {a.draws} draws after {a.burn_in} burn-in steps from w*, on {a.device}: "
              f"λ̂ = {r.llc_mean:.1f} ± {r.llc_stderr:.1f} ({100 * (r.llc_mean - lam) / lam:+.1f} %; {seconds:.0f} s)")
        # the flat directions feel only the localisation: stationary spread 1/√γ per weight, reached
        # after a few of its relaxation times 2/(εγ) steps
        # RMSProp-SGLD's step along them is ε·P, larger than its ε (`flat_step`)
        eps_f = flat_step(eps, a.sampler, sq, min(a.batch, a.n))
        relax = relaxation_steps(eps_f, gamma)
        print(f"flat directions: stationary spread 1/√γ = {gamma ** -0.5:.3g} per weight against w*'s rms "
              f"{w_rms:.3g}; their step {eps_f:.3g}, relaxation 2/(εγ) = {relax:,.0f} steps, "
              f"the run {steps:,} (εγ·steps/2 = {eps_f * gamma * steps / 2:.2g})")
        print(f"top curvature h at w*: {h0:.3g} (ε·nβ·h = {eps * nb * h0:.3g}); at the chains' ends: "
              f"{', '.join(f'{h:.3g}' for h in h_end)} (ε·nβ·h up to {eps * nb * max(h_end):.3g})")
        print(f"‖w*‖ = {float(flat.w_star.norm()):.2f}; ‖w_end − w*‖ = {', '.join(f'{d:.2f}' for d in dist)}")
        print("| steps (burn-in included) | nβ·(L − L(w*)) per chain | mean |\n|---|---|---:|")
        for lo, hi, m in running_llc(traces):
            print(f"| {lo:,}–{hi:,} | {', '.join(f'{v:.1f}' for v in m)} | {m.mean():.1f} |", flush=True)
        st = stationary_llc(traces, relax, LOCALISE_RELAXATIONS)
        if st is None:
            print(f"stationary λ̂: none (no whole window starts after {LOCALISE_RELAXATIONS} relaxations, "
                  f"{LOCALISE_RELAXATIONS * relax:,.0f} steps)")
        else:
            m, se = float(st.mean()), float(st.std(ddof=1) / np.sqrt(st.size)) if st.size > 1 else float("nan")
            print(f"stationary λ̂ (windows from {LOCALISE_RELAXATIONS} relaxations on): per chain "
                  f"{', '.join(f'{v:.2f}' for v in st)}; {m:.2f} ± {se:.2f} ({100 * (m - lam) / lam:+.1f} %)", flush=True)
            stationary.setdefault(gamma, []).append((eps, m, se))
    # why: at the minimal point λ̂'s stationary value moves with ε (the step's bias); a straight
    # line through the stationary values, not through short pilots, is what ε → 0 should read
    for gamma, pts in stationary.items():
        if len(pts) >= 2:
            e, m, se = zip(*pts)
            # one chain has no spread: weigh it by its own size, as the calibration's ladder does
            l0, s0 = extrapolate_to_zero(e, m, [x if np.isfinite(x) else abs(v) for x, v in zip(se, m)])
            print(f"\nγ = {gamma:g}: stationary λ̂ {', '.join(f'{v:.2f} at ε = {x:g}' for x, v in zip(e, m))}; "
                  f"extrapolated to ε → 0: {l0:.2f} ± {s0:.2f} ({100 * (l0 - lam) / lam:+.1f} %, λ = {lam})")


if __name__ == "__main__":
    main()
