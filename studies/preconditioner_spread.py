"""Can RMSProp-SGLD's preconditioner make a run's checkpoint mix where plain SGLD cannot?

SGLD's stable step is bounded by the loss's sharpest direction (ε ≲ 1/(nβ·h_max)), and the flat
directions then move ε per step. RMSProp-SGLD's preconditioner P = 1/(√v + eps) (v: the running mean
square of the minibatch gradient, eps its stability constant) changes both: its sharpest step is
ε·nβ·λ_max(P^½ H P^½), and a flat direction moves ε·P. This prints, at one checkpoint of a run:
the spread of √v at w* (per weight, from 16 disjoint minibatch gradients), and for each stability
constant the top eigenvalue of P^½ H P^½ (power iteration on Hessian-vector products, the
calibration's 512-example probe batch), the largest ε whose sharpest step stays under 1, and the
median weight's step ε·P there against plain SGLD's. A gain of a few × cannot rescue a model whose
SGLD chains are orders of magnitude too slow.

    OMP_NUM_THREADS=1 python studies/preconditioner_spread.py runs/addition --step 378   # ~1 min
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def mean_square_gradient(loss_of, flat, src, dev, batch: int, batches: int = 16, seed: int = 0) -> torch.Tensor:
    """Per-weight mean square of `batches` disjoint minibatch gradients at w*: RMSProp's v there."""
    from llc_watch.llc.data import to_device
    n = len(src)
    k = min(batches, n // batch)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k * batch].view(k, batch)
    sq = torch.zeros_like(flat.w_star)
    for i in range(k):
        w = flat.w_star.detach().clone().requires_grad_(True)
        sq += torch.autograd.grad(loss_of(w, to_device(src.batch(idx[i]), dev)), w)[0].pow(2)
    return sq / k


def top_preconditioned_curvature(loss_of, flat, batch, P: torch.Tensor, iters: int = 40, seed: int = 1) -> float:
    """Largest |eigenvalue| of P^½ H P^½ at w* on `batch` (H the loss's Hessian)."""
    w = flat.w_star.detach().clone().requires_grad_(True)
    g = torch.autograd.grad(loss_of(w, batch), w, create_graph=True)[0]
    root = P.sqrt()
    x = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed)).to(w)
    x = x / x.norm()
    lam = 0.0
    for _ in range(iters):
        hx = root * torch.autograd.grad(g, w, root * x, retain_graph=True)[0]
        new = float(hx @ x)
        x = hx / hx.norm()
        if abs(new - lam) <= 1e-3 * abs(new):
            return abs(new)
        lam = new
    return abs(lam)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder (made by `llc-watch train` or `make demo`)")
    ap.add_argument("--step", type=int, required=True, help="the checkpoint")
    ap.add_argument("--batch", type=int, default=32, help="SGLD's minibatch (the demo's: 32)")
    ap.add_argument("--eps", default="0.1,1e-3,1e-5", help="RMSProp stability constants (0.1: devinterp's)")
    ap.add_argument("--n-data", type=int, default=4096)
    args = ap.parse_args(argv)
    from llc_watch.analyses.llc import checkpoint_problem
    from llc_watch.llc.calibration import _problem, probe_batch, sharpest_curvature
    from llc_watch.llc.data import DataSource
    from llc_watch.llc.estimator import resolve_nbeta
    from llc_watch.run import open_run
    run = open_run(args.run)
    ck = run.checkpoints([args.step])[0]
    s, model, loss_fn, data = checkpoint_problem(ck, {"n_data": args.n_data})
    flat, loss_of, dev = _problem(model, loss_fn, None, None)
    src = DataSource(data)
    nbeta, _ = resolve_nbeta(None, len(src), args.batch, s["terms_per_example"])
    v = mean_square_gradient(loss_of, flat, src, dev, args.batch)
    q = torch.quantile(v.sqrt().double(), torch.tensor([0.1, 0.5, 0.9, 0.99], dtype=torch.double))
    h_max = sharpest_curvature(model, loss_fn, data)
    sgld_eps = 1.0 / (nbeta * h_max)
    print(f"step {args.step}: {flat.w_star.numel():,} weights, nβ = {nbeta:.4g}, batch {args.batch}")
    print("√v per weight (10/50/90/99 %): " + " / ".join(f"{float(x):.2g}" for x in q))
    print(f"SGLD: h_max {h_max:.4g}; ε ≤ {sgld_eps:.3g} for a sharpest step ≤ 1; a flat direction moves "
          f"{sgld_eps:.3g} a step")
    batch = probe_batch(src, dev, 0, 512)
    print("| RMSProp eps | median P | max P | λ_max(P^½HP^½) | ε for a sharpest step ≤ 1 | median weight's step | × SGLD's |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for eps in (float(e) for e in args.eps.split(",")):
        P = 1.0 / (v.sqrt() + eps)
        lam = top_preconditioned_curvature(loss_of, flat, batch, P)
        e = 1.0 / (nbeta * lam)
        med = float(P.median())
        print(f"| {eps:g} | {med:.4g} | {float(P.max()):.4g} | {lam:.4g} | {e:.3g} | {e * med:.3g} | "
              f"{e * med / sgld_eps:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
