"""Benchmark: llc_watch.estimate_llc against devinterp 2's llc() on the same work, one process.

Same model, data, ε, nβ, γ, chains, draws, batch size; burn-in 0 on both (devinterp averages every
step, burn-in included, so only then are the two estimators the same quantity). Reports medians over
repeats: wall time, the ratio, both estimates, and achieved FLOP/s against a matmul peak measured in
this run (FLOPs counted with torch.utils.flop_counter for one chain-step, forward + backward).

    python benchmarks/bench_llc.py                      # addition-preset-sized model, trained briefly
    python benchmarks/bench_llc.py --run runs/addition  # the run's final checkpoint
    python benchmarks/bench_llc.py --chains 2 --draws 20 --repeats 1   # a quick smoke run
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch

from llc_watch.llc.devinterp_ref import PlainLM


def matmul_peak(size: int = 1024, reps: int = 20) -> float:
    """FLOP/s of a square fp32 matmul on this process's threads (best of 3)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * size ** 3 * reps / (time.perf_counter() - t))
    return best


def flops_per_chain_step(model, loss_fn, batch) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        loss_fn(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def build_case(args):
    from llc_watch.model import ModelConfig, Transformer
    from llc_watch.tasks import get_task
    if args.run:
        from llc_watch.checkpoints import open_run
        from llc_watch.llc.job import llc_data
        run = open_run(args.run)
        ckpt = run.checkpoints()[-1]
        model, task = ckpt.load_model(), run.task
        data = llc_data(task, run.config, args.n)
        return model, task, data, f"{args.run} step {ckpt.step}"
    task = get_task("addition", n_bits=8)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=args.n_layers, d_model=args.d_model, n_heads=args.n_heads,
                                    d_mlp=args.d_mlp, vocab_size=5, n_ctx=task.seq_len))
    data = task.sample(args.n, seed=0)
    if args.train_steps:   # why: near a minimum the LLC is positive and meaningful
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for s in range(args.train_steps):
            b = task.sample(128, seed=1000 + s)
            opt.zero_grad()
            task.loss(model(b.tokens), b).backward()
            opt.step()
    return model.eval(), task, data, (f"{args.n_layers}-layer d_model={args.d_model} d_mlp={args.d_mlp} "
                                      f"model on 8-bit addition, {args.train_steps} Adam steps")


def run_devinterp(model, task, data, args, nbeta):
    import datasets
    from devinterp.slt.llc import llc
    mask = data.loss_mask[0]
    if not (data.loss_mask == mask).all():
        raise SystemExit("devinterp's per-token loss needs the same answer positions in every row")
    seq = torch.cat([data.tokens, data.targets[:, -1:]], dim=1)
    ds = datasets.Dataset.from_dict({"input_ids": seq.tolist()}).with_format("torch")

    def per_token_loss(m, ids):
        logp = torch.log_softmax(m(ids[:, :-1]).float(), -1)
        return -logp.gather(-1, ids[:, 1:, None])[..., 0] * mask * (mask.numel() / mask.sum())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        r = llc(PlainLM(model), ds, {}, lr=args.epsilon, n_beta=nbeta, localization=args.gamma,
                num_chains=args.chains, num_draws=args.draws, batch_size=args.batch_size,
                num_init_loss_batches=max(1, len(data) // args.batch_size), loss_fn=per_token_loss,
                device="cpu", init_seed=args.seed)
        dt = time.perf_counter() - t
    per_chain = r.llc_per_chain.values
    return dt, float(r.llc_mean), float(per_chain.std(ddof=1) / math.sqrt(len(per_chain)))


def run_ours(model, task, data, args, nbeta):
    from llc_watch.llc import estimate_llc
    t = time.perf_counter()
    r = estimate_llc(model, lambda m, b: task.loss(m(b.tokens), b), data, epsilon=args.epsilon,
                     nbeta=nbeta, gamma=args.gamma, chains=args.chains, draws=args.draws, burn_in=0,
                     batch_size=args.batch_size, seed=args.seed)
    return time.perf_counter() - t, r.llc_mean, r.llc_stderr, r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="run folder: use its final checkpoint")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--draws", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n", type=int, default=4096, help="data set size (n in nβ = n/log n)")
    p.add_argument("--epsilon", type=float, default=1e-4)
    p.add_argument("--gamma", type=float, default=100.0)
    p.add_argument("--nbeta", type=float, default=None, help="default n/log n")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--n-layers", type=int, default=2, help="without --run: the addition preset's sizes")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-mlp", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-devinterp", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, task, data, what = build_case(args)
    nbeta = args.nbeta or len(data) / math.log(len(data))
    n_params = sum(q.numel() for q in model.parameters())
    step_flops = flops_per_chain_step(model, lambda m, b: task.loss(m(b.tokens), b), data[: args.batch_size])
    work = step_flops * args.chains * args.draws
    peak = matmul_peak()
    print(f"case: {what}; {n_params} parameters; n={len(data)}, nβ={nbeta:.1f}, ε={args.epsilon}, "
          f"γ={args.gamma}, {args.chains} chains × {args.draws} draws, batch {args.batch_size}, "
          f"{args.threads} thread(s)")
    print(f"work: {step_flops / 1e6:.1f} MFLOP per chain-step, {work / 1e9:.1f} GFLOP in total; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s")

    ours, theirs = [], []
    for i in range(args.repeats):
        ours.append(run_ours(model, task, data, args, nbeta)[:3])
        print(f"  repeat {i}: llc_watch {ours[-1][0]:.1f}s llc={ours[-1][1]:.3f}±{ours[-1][2]:.3f}", flush=True)
        if not args.skip_devinterp:
            theirs.append(run_devinterp(model, task, data, args, nbeta))
            print(f"  repeat {i}: devinterp {theirs[-1][0]:.1f}s llc={theirs[-1][1]:.3f}±{theirs[-1][2]:.3f}", flush=True)

    med = lambda rows, k: statistics.median(r[k] for r in rows)
    print("\n| implementation | wall s (median) | LLC (median) | stderr | GFLOP/s | % of matmul peak |")
    print("|---|---|---|---|---|---|")
    for name, rows in (("llc_watch (vmap)", ours), ("devinterp 2.0.1 llc()", theirs)):
        if rows:
            t = med(rows, 0)
            print(f"| {name} | {t:.1f} | {med(rows, 1):.3f} | {med(rows, 2):.3f} | {work / t / 1e9:.2f} | "
                  f"{100 * work / t / peak:.1f} |")
    if theirs:
        print(f"\nspeed-up (devinterp wall / llc_watch wall, medians): {med(theirs, 0) / med(ours, 0):.2f}×")
        diff = abs(med(ours, 1) - med(theirs, 1))
        print(f"estimate difference {diff:.3f} = {diff / math.hypot(med(ours, 2), med(theirs, 2)):.1f} "
              "combined standard errors")


if __name__ == "__main__":
    main()
