"""Benchmark: what the R̂/ESS observable costs, at its old default (1,024 examples) and its new one.

The observable is the loss at each chain's w on one fixed evaluation batch every k steps
(`estimate_llc`'s observe_every / observe_size). It never touches the chains: the same seed gives
the same draws whatever the observable's size, so λ̂ must agree exactly across the rows and only
the wall time and the observable's own diagnostics (R̂, bulk ESS, λ̂ on the observable) differ.
One table, medians over --repeats runs interleaved row by row (our machines are noisy):

| observable | examples | ms per step | × unobserved | λ̂ | R̂ | bulk ESS | λ̂ on it |

Default case: the addition preset's transformer (102,469 parameters) at calibrate_llc's pilot
settings on that model (2 chains, batch 32, 1,000 draws after 500 burn-in: k = 5). Without --run
the weights are the preset's initialisation (timing only; the diagnostics then describe chains
leaving a non-minimum); with --run RUN, a checkpoint of a trained run (--step, default the middle).

    python benchmarks/bench_observable.py --run runs/addition --threads 1
    python benchmarks/bench_observable.py --draws 40 --burn-in 10 --repeats 1      # smoke run
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from llc_watch.llc.estimator import estimate_llc, observe_size_for


def build(args):
    """(model, loss_fn, data, label, terms_per_example)."""
    from llc_watch.analyses.llc import answer_terms, llc_data
    if args.run:
        from llc_watch.checkpoints import open_run
        run = open_run(args.run)
        ckpts = run.checkpoints()
        ck = ckpts[len(ckpts) // 2] if args.step is None else next(c for c in ckpts if c.step == args.step)
        cfg = ck.config()
        task, model, label = cfg.make_task(), ck.load_model(), f"{args.run} step {ck.step}"
    else:
        from llc_watch.config import RunConfig
        from llc_watch.model import Transformer
        cfg = RunConfig.from_preset("addition")
        task = cfg.make_task()
        torch.manual_seed(0)
        model, label = Transformer(cfg.model_config(task)), "addition preset, initial weights"
    data = llc_data(task, cfg, args.n)
    return model, (lambda m, b: task.loss(m(b.tokens), b)), data, label, answer_terms(data)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a trained run folder (default: the addition preset at initialisation)")
    ap.add_argument("--step", type=int, help="its checkpoint (default: the middle one)")
    ap.add_argument("--n", type=int, default=4096, help="examples the LLC sees (the pipeline's n_data)")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--burn-in", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epsilon", type=float, default=7.3e-8, help="the top rung calibrate_llc probed there")
    ap.add_argument("--gamma", type=float, default=100.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, loss_fn, data, label, terms = build(args)
    k = max(1, args.draws // 200)
    rows = [("off", 0, 0), ("old default", k, 1024), ("new default (observe_size_for)", k, None)]
    kw = dict(epsilon=args.epsilon, gamma=args.gamma, chains=args.chains, draws=args.draws,
              burn_in=args.burn_in, batch_size=args.batch, terms_per_example=terms, seed=0)
    estimate_llc(model, loss_fn, data, **{**kw, "draws": 5, "burn_in": 0})     # warm-up
    walls: dict = {r[0]: [] for r in rows}
    last: dict = {}
    for _ in range(args.repeats):
        for name, every, size in rows:
            t0 = time.perf_counter()
            last[name] = estimate_llc(model, loss_fn, data, observe_every=every,
                                      observe_size=size if every else None, **kw)
            walls[name].append(time.perf_counter() - t0)
    steps = args.draws + args.burn_in
    base = statistics.median(walls["off"])
    print(f"\n### The observable's cost: {label}, {sum(p.numel() for p in model.parameters()):,} parameters\n")
    print(f"{args.chains} chains × ({args.burn_in} burn-in + {args.draws} draws), batch {args.batch}, ε {args.epsilon:g}, "
          f"γ {args.gamma:g}, observed every {k} steps; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); medians of {args.repeats}\n")
    print("| observable | examples | ms per step | × unobserved | λ̂ | R̂ | bulk ESS | λ̂ on it |")
    print("|---|---|---|---|---|---|---|---|")
    for name, every, size in rows:
        r, d = last[name], last[name].diagnostics
        wall = statistics.median(walls[name])
        n_obs = d.get("observe_size") or 0
        on_obs = d.get("mixing_on") == "observed"
        print(f"| {name} | {n_obs if every else '–'} | {1000 * wall / steps:.1f} | {wall / base:.2f} | "
              f"{r.llc_mean:.4g} | {d['rhat']:.3f}{'' if on_obs else ' (minibatch)'} | {d['ess_bulk']:.0f} | "
              f"{d['llc_observed']:.4g} |")
    same = len({round(last[n].llc_mean, 9) for n, _, _ in rows}) == 1
    print(f"\nλ̂ identical across rows (the observable never touches the chains): {same}; "
          f"observe_size_for({args.batch}, {k}) = {observe_size_for(args.batch, k)}")


if __name__ == "__main__":
    main()
