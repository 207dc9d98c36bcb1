"""Minibatch gradient noise at scale: λ̂ against the batch size on a deep linear network whose λ is
known exactly (a generic point, every layer of full rank: exact.make_dln(point="generic")).

Prints, per (ε, batch): λ̂ ± se, the per-weight gradient-noise ratio ρ = ε·nβ²·v·(1/B − 1/n)/4
and the inflation the estimator predicts, ε·nβ²·D·v·(1/B − 1/n)/8 = ρ·D/2 (`calibration.noise_bias`,
v measured at w*), beside the inflation measured against λ̂ at that ε fitted linearly in
1/B − 1/n over its batches and extrapolated to B = n. ρ alone would say the bias is ρ of λ̂: right for a regular model (D = 2λ),
D/(2λ) times too small for a network with flat directions.

    OMP_NUM_THREADS=1 python studies/dln_batch_bias.py        # 5 min on one core
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    import numpy as np
    import torch
    from llc_watch.llc import estimate_llc, exact
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="20,20,20,20,20,20")
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--cells", default="9e-7:1024,9e-7:4096,9e-7:16384,3e-7:16384",
                   help="comma list of EPSILON:BATCH")
    p.add_argument("--draws", type=int, default=3000)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    widths = [int(w) for w in a.widths.split(",")]
    model, loss_fn, data, lam = exact.make_dln(widths, min(widths), a.n, point="generic")
    D = sum(q.numel() for q in model.parameters())
    print(f"deep linear network widths {widths} at a generic point: D = {D} weights, n = {a.n}, "
          f"λ = {lam:g} (D/(2λ) = {D / (2 * lam):.1f}); 2 chains × {a.draws} draws, burn-in {a.draws // 2}, γ = 1")
    print("| ε | batch | λ̂ ± se | error | ρ | predicted inflation ρ·D/2 | s |\n|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for cell in a.cells.split(","):
        eps, B = float(cell.split(":")[0]), int(cell.split(":")[1])
        t0 = time.perf_counter()
        r = estimate_llc(model, loss_fn, data, epsilon=eps, gamma=1.0, batch_size=B, chains=2, draws=a.draws,
                         burn_in=a.draws // 2, seed=0)
        d = r.diagnostics
        rows.append((eps, B, r.llc_mean))
        print(f"| {eps:g} | {B} | {r.llc_mean:.1f} ± {r.llc_stderr:.1f} | {100 * (r.llc_mean - lam) / lam:+.1f} % | "
              f"{d['noise_ratio']:.3g} | {d['noise_bias']:.3g} | {time.perf_counter() - t0:.0f} |", flush=True)
    by_eps = {}
    for eps, B, llc in rows:
        by_eps.setdefault(eps, []).append((B, llc))
    for eps, cells in by_eps.items():
        if len(cells) < 2:
            continue
        x = np.array([1 / B - 1 / a.n for B, _ in cells])
        y = np.array([llc for _, llc in cells])
        slope, at_n = np.polyfit(x, y, 1)
        print(f"\nε = {eps:g}: λ̂ linear in 1/B − 1/n extrapolates to {at_n:.1f} at B = n "
              f"({100 * (at_n - lam) / lam:+.1f} %, the ε-bias left); measured inflation "
              + ", ".join(f"{llc - at_n:+.1f} at {B}" for B, llc in cells))


if __name__ == "__main__":
    main()
