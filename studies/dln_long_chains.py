"""Deep linear networks of ~10³ weights: does λ̂ ever settle, and where do the chains go?

The accuracy study's 2,000-weight case (`dln_20x6_r3`, widths 20×6, rank 3, n = 10⁵, λ = 142.5)
ends NOT CONVERGED IN DRAWS: λ̂ rose 117 → 167 → 237 over 3,000 / 12,000 / 48,000 draws, past the
true λ. This runs one long estimate at fixed settings (4 chains from w*, no burn-in) and prints
nβ·(L − L(w*)) averaged over windows of draws per chain (the running λ̂), how far the chains went
(‖w − w*‖ against ‖w*‖), and the Hessian's top curvature at w* and at each chain's end point
(ε·nβ·h: SGLD's discretisation bias grows with it; 2 is the stability limit).

    OMP_NUM_THREADS=1 python studies/dln_long_chains.py --sampler rmsprop_sgld --epsilon 6e-8 \\
        --batch 128 --draws 160000 --gamma 1          # ~4 min on one core
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


def _gammas(text: str) -> list[float]:
    """'1,100' -> [1.0, 100.0]; anything else is argparse's one-line error.

        >>> _gammas("1,100")
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
    from llc_watch.llc.calibration import _problem, flat_step, gradient_variance, relaxation_steps, top_curvature
    from llc_watch.llc.data import DataSource, to_device
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="20,20,20,20,20,20")
    p.add_argument("--rank", type=int, default=3)
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--sampler", default="rmsprop_sgld", choices=("sgld", "rmsprop_sgld"))
    p.add_argument("--epsilon", type=float, default=6e-8)
    p.add_argument("--gamma", default=[1.0], type=_gammas,
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
    for gamma in a.gamma:
        t0 = time.perf_counter()
        r = estimate_llc(model, loss_fn, data, epsilon=a.epsilon, gamma=gamma, batch_size=a.batch,
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
              f"λ = {lam}; {a.sampler} ε = {a.epsilon:g}, γ = {gamma:g}, batch {a.batch}, nβ = {nb:.0f}, "
              f"{a.chains} chains × {a.draws} draws after {a.burn_in} burn-in steps from w*, on {a.device}: "
              f"λ̂ = {r.llc_mean:.1f} ± {r.llc_stderr:.1f} ({100 * (r.llc_mean - lam) / lam:+.1f} %; {seconds:.0f} s)")
        # the flat directions feel only the localisation: stationary spread 1/√γ per weight, reached
        # after a few of its relaxation times 2/(εγ) steps
        # RMSProp-SGLD's step along them is ε·P, larger than its ε (`flat_step`)
        eps_f = flat_step(a.epsilon, a.sampler, sq, min(a.batch, a.n))
        print(f"flat directions: stationary spread 1/√γ = {gamma ** -0.5:.3g} per weight against w*'s rms "
              f"{w_rms:.3g}; their step {eps_f:.3g}, relaxation 2/(εγ) = {relaxation_steps(eps_f, gamma):,.0f} steps, "
              f"the run {steps:,} (εγ·steps/2 = {eps_f * gamma * steps / 2:.2g})")
        print(f"top curvature h at w*: {h0:.3g} (ε·nβ·h = {a.epsilon * nb * h0:.3g}); at the chains' ends: "
              f"{', '.join(f'{h:.3g}' for h in h_end)} (ε·nβ·h up to {a.epsilon * nb * max(h_end):.3g})")
        print(f"‖w*‖ = {float(flat.w_star.norm()):.2f}; ‖w_end − w*‖ = {', '.join(f'{d:.2f}' for d in dist)}")
        print("| steps (burn-in included) | nβ·(L − L(w*)) per chain | mean |\n|---|---|---:|")
        for lo, hi, m in running_llc(traces):
            print(f"| {lo:,}–{hi:,} | {', '.join(f'{v:.1f}' for v in m)} | {m.mean():.1f} |", flush=True)


if __name__ == "__main__":
    main()
