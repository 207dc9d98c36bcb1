"""Benchmark: llc_watch's LLC against devinterp 2's llc() on the same work, device and process.

Same model, data, ε, nβ, γ, chains, draws, batch size, plain SGLD; burn-in 0 on both (devinterp
averages every step, burn-in included, so only then are the two estimators the same quantity).
llc_watch runs with its defaults otherwise (the batch control variate on). Prints markdown tables:

1. chains × draws × batch cases: wall time of each (whole estimate, L_n(w*) included), the ratio,
   achieved FLOP/s against an fp32 matmul peak measured in this run (FLOPs of one chain-step,
   forward + backward, counted with torch.utils.flop_counter, × chains × draws);
2. with --run: the LLC at every checkpoint of the run, stacked (estimate_llc_many) and one
   checkpoint at a time (estimate_llc in a loop);
3. with --stderr-seeds N: time to equal standard error at the same settings: ours and
   devinterp's run interleaved with N seeds each; the standard error compared is the spread of
   each one's estimate over its N independent whole runs (every noise source included, chains'
   autocorrelation too), the wall times are medians, and time-to-precision scales as
   wall × stderr² (stderr ∝ 1/√draws). llc_watch runs with its defaults (batch control variate,
   independent per-chain minibatch streams: variance reduction counts); --race-ablation adds
   llc_watch with devinterp's estimator, to show where the gain comes from.

    python benchmarks/bench_llc.py --device cuda --run runs/addition
    python benchmarks/bench_llc.py --device cpu --run runs/addition --no-whole-run --cases '' \\
        --stderr-case 4x100x32 --stderr-seeds 12 --threads 1 --race-ablation
    python benchmarks/bench_llc.py --cases 2x20x32 --devinterp-cases 2x20x32 --repeats 1   # smoke run
"""
from __future__ import annotations

import argparse
import copy
import inspect
import math
import platform
import statistics
import sys
import time
import os
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")   # devinterp's per-chain progress bars would bury the tables
import torch  # noqa: E402

from llc_watch.llc.devinterp_ref import PlainLM  # noqa: E402

ISSUE_CASES = "8x500x32,32x200x32,8x200x256,128x500x32,512x200x32,256x200x256"


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_peak(dev, size: int | None = None, reps: int = 20) -> float:
    """FLOP/s of a square fp32 matmul (TF32 off) on this device (best of 3)."""
    size = size or (8192 if dev.type == "cuda" else 1024)
    a, b = torch.randn(size, size, device=dev), torch.randn(size, size, device=dev)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a @ b
        sync(dev)
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync(dev)
            best = max(best, 2 * size ** 3 * reps / (time.perf_counter() - t))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
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
        from llc_watch.analyses.llc import llc_data
        run = open_run(args.run)
        ckpts = run.checkpoints()
        task = run.config.make_task() if not hasattr(run, "task") else run.task
        data = llc_data(task, run.config, args.n)
        return ckpts[-1].load_model(), task, data, f"{args.run} step {ckpts[-1].step}", ckpts
    task = get_task("addition", n_bits=8)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=256, vocab_size=5,
                                    n_ctx=task.seq_len))
    data = task.sample(args.n, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for s in range(args.train_steps):   # why: near a minimum the LLC is positive and meaningful
        b = task.sample(128, seed=1000 + s)
        opt.zero_grad()
        task.loss(model(b.tokens), b).backward()
        opt.step()
    return model.eval(), task, data, f"addition-preset-sized model, {args.train_steps} Adam steps", None


def parse_cases(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in c.lower().split("x")) for c in text.split(",") if c]


def run_devinterp(model, task, data, chains, draws, batch, args, nbeta, dev, seed):
    import datasets
    from devinterp.slt.llc import llc
    mask = data.loss_mask[0].to(dev)
    if not (data.loss_mask == data.loss_mask[0]).all():
        raise SystemExit("devinterp's per-token loss needs the same answer positions in every row")
    seq = torch.cat([data.tokens, data.targets[:, -1:]], dim=1)
    ds = datasets.Dataset.from_dict({"input_ids": seq.tolist()}).with_format("torch")

    def per_token_loss(m, ids):
        logp = torch.log_softmax(m(ids[:, :-1]).float(), -1)
        return -logp.gather(-1, ids[:, 1:, None])[..., 0] * mask * (mask.numel() / mask.sum())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sync(dev)
        t = time.perf_counter()
        r = llc(PlainLM(copy.deepcopy(model).to(dev)), ds, {}, lr=args.epsilon, n_beta=nbeta, localization=args.gamma,
                num_chains=chains, num_draws=draws, batch_size=batch,
                num_init_loss_batches=max(1, len(data) // batch), loss_fn=per_token_loss,
                device=str(dev), init_seed=seed)
        sync(dev)
        dt = time.perf_counter() - t
    per_chain = r.llc_per_chain.values
    return dt, float(r.llc_mean), float(per_chain.std(ddof=1) / math.sqrt(len(per_chain)))


def ours_kwargs(args, chains, draws, batch, nbeta, dev, seed):
    from llc_watch.llc import estimate_llc
    kw = dict(epsilon=args.epsilon, nbeta=nbeta, gamma=args.gamma, chains=chains, draws=draws,
              burn_in=0, batch_size=batch, seed=seed, device=dev)
    if "per_chain_batches" in inspect.signature(estimate_llc).parameters:
        kw["per_chain_batches"] = args.per_chain_batches   # devinterp's shared stream by default
    if args.precision != "fp32":
        kw["precision"] = args.precision
    return kw


def run_ours(model, task, data, chains, draws, batch, args, nbeta, dev, seed, capture=None, extra=None):
    from llc_watch.llc import estimate_llc
    from llc_watch.llc.sampler import intercept_runs, run_chains
    seen = {}

    def spy(*a, **k):       # records whether the step ran captured; can force it off
        if capture is not None:
            k["capture"] = capture
        r = run_chains(*a, **k)
        seen["captured"] = r.captured
        return r

    with intercept_runs(spy):
        sync(dev)
        t = time.perf_counter()
        r = estimate_llc(model, lambda m, b: task.loss(m(b.tokens), b), data,
                         **{**ours_kwargs(args, chains, draws, batch, nbeta, dev, seed), **(extra or {})})
        sync(dev)
        dt = time.perf_counter() - t
    return dt, r.llc_mean, r.llc_stderr, r.timing["sampling_s"], seen.get("captured", False)


def whole_run(ckpts, task, data, args, nbeta, dev, out):
    from llc_watch.llc import estimate_llc
    from llc_watch.llc.batched import estimate_llc_many
    C, N, B = parse_cases(args.whole_run_case)[0]
    models = [c.load_model() for c in ckpts]
    loss_fn = lambda m, b: task.loss(m(b.tokens), b)
    kw = ours_kwargs(args, C, N, B, nbeta, dev, args.seed)
    estimate_llc_many(models[:2], loss_fn, data, **{**kw, "draws": 5})     # warm-up (CUDA context, cuBLAS)
    sync(dev)
    t = time.perf_counter()
    many = estimate_llc_many(models, loss_fn, data, **kw)
    sync(dev)
    t_many = time.perf_counter() - t
    sampling_many = many[0].timing["block_sampling_s"] if len({r.timing["batched_checkpoints"] for r in many}) == 1 \
        else sum(r.timing["sampling_s"] for r in many)
    t = time.perf_counter()
    one = [estimate_llc(m, loss_fn, data, **kw) for m in models]
    sync(dev)
    t_one = time.perf_counter() - t
    sampling_one = sum(r.timing["sampling_s"] for r in one)
    diff = max(abs(a.llc_mean - b.llc_mean) / max(b.llc_stderr, 1e-12) for a, b in zip(many, one))
    blocks = sorted({r.timing["batched_checkpoints"] for r in many})
    lines = [f"\n### All {len(models)} checkpoints of {args.run}: {C} chains × {N} draws × batch {B}\n",
             "| path | wall s | sampling s |", "|---|---|---|",
             f"| stacked (estimate_llc_many, blocks of {blocks} checkpoints) | {t_many:.1f} | {sampling_many:.1f} |",
             f"| one checkpoint at a time (estimate_llc) | {t_one:.1f} | {sampling_one:.1f} |",
             f"\nspeed-up {t_one / t_many:.1f}× wall; largest |stacked − single| LLC difference "
             f"{diff:.2g} standard errors (same noise; float rounding of batched matmuls only)"]
    emit(out, "\n".join(lines))


def race_stderr(rows: list[tuple]) -> tuple[float, float]:
    """(std over seeds of the estimate, the same pooled from each run's own cross-chain stderr).

    rows: run_ours / run_devinterp tuples (wall, LLC, reported stderr, ...), one per seed.

        >>> race_stderr([(1.0, 10.0, 1.0), (1.0, 12.0, 1.0), (1.0, 14.0, 2.0)])
        (2.0, 1.4142135623730951)
    """
    over_seeds = statistics.stdev(r[1] for r in rows)
    pooled = math.sqrt(statistics.mean(r[2] ** 2 for r in rows))
    return over_seeds, pooled


def variance_ratio_interval(ratio: float, seeds: int, level: float = 0.9) -> tuple[float, float]:
    """Interval for a ratio of two variances, each estimated from `seeds` runs (F distribution).

        >>> lo, hi = variance_ratio_interval(4.0, 8)
        >>> lo < 4.0 < hi
        True
    """
    from scipy.stats import f
    q = (1 - level) / 2
    dof = seeds - 1
    return float(ratio / f.ppf(1 - q, dof, dof)), float(ratio / f.ppf(q, dof, dof))


def stderr_race(model, task, data, args, nbeta, dev, out):
    """Time to equal standard error, at the same chains × draws × batch, ε, γ, nβ, burn-in.

    Runs are interleaved (ours, theirs, ours, theirs, ... one seed each) so a shared machine's
    load falls on both alike; wall times are medians. Each seed is a whole, independent run, so
    the spread of the estimate over the seeds is its standard error with every source of noise
    in it (SGLD noise, minibatch noise shared by the chains, autocorrelation within the chains).
    Time to reach a standard error σ at these settings scales as wall × (stderr/σ)² (stderr ∝
    1/√draws; fixed costs such as L_n(w*) are scaled too, which counts against the cheaper side).
    """
    C, N, B = parse_cases(args.stderr_case)[0]
    seeds = [100 + s for s in range(args.stderr_seeds)]
    obs = {"observe_every": args.race_observe_every}
    ours_kw = {**obs, "per_chain_batches": not args.race_shared_stream}
    ours_name = "llc_watch (batch control variate, " + \
        ("one shared minibatch stream" if args.race_shared_stream else "independent per-chain minibatch streams") + \
        (", mixing observable off)" if args.race_observe_every == 0 else f", observable every {args.race_observe_every} steps)")
    rows = {ours_name: []}
    if args.race_ablation:
        rows["llc_watch, batch_control=False, shared stream, observable as above (devinterp's estimator)"] = []
    if not args.skip_devinterp:
        rows["devinterp 2.0.1 llc() (defaults: shared minibatch stream)"] = []
    for s in seeds:     # interleaved: load on the shared machine falls on each alike
        rows[ours_name].append(run_ours(model, task, data, C, N, B, args, nbeta, dev, s, extra=ours_kw))
        print(f"  seed {s}: llc_watch {rows[ours_name][-1][0]:.1f} s", file=sys.stderr, flush=True)
        if args.race_ablation:
            rows["llc_watch, batch_control=False, shared stream, observable as above (devinterp's estimator)"].append(
                run_ours(model, task, data, C, N, B, args, nbeta, dev, s,
                         extra={**obs, "batch_control": False, "per_chain_batches": False}))
        if not args.skip_devinterp:
            rows["devinterp 2.0.1 llc() (defaults: shared minibatch stream)"].append(
                run_devinterp(model, task, data, C, N, B, args, nbeta, dev, s))
    lines = [f"\n### Time to equal standard error: {C} chains × {N} draws × batch {B}, {len(seeds)} seeds, "
             f"{args.threads} thread(s), runs interleaved\n",
             "stderr over seeds: the std of the estimate over independent whole runs (seeds "
             f"{seeds[0]}–{seeds[-1]}), which holds every source of noise (SGLD noise, minibatch noise, "
             "autocorrelation within chains); this is the standard error compared. Pooled own stderr: "
             "√(mean of each run's reported cross-chain stderr²), for reference only: valid for "
             "independent chains, too small for chains sharing one minibatch stream. Cost = median "
             "wall × stderr² ∝ the time to reach a fixed stderr at these settings (stderr ∝ 1/√draws).\n",
             "| implementation | wall s (median; min–max) | LLC (mean over seeds) | stderr over seeds | "
             "pooled own stderr | median wall × stderr² |",
             "|---|---|---|---|---|---|"]
    stats = {}
    for name, rs in rows.items():
        walls = [r[0] for r in rs]
        se, pooled = race_stderr(rs)
        wall = statistics.median(walls)
        stats[name] = (wall, se)
        lines.append(f"| {name} | {wall:.1f} ({min(walls):.1f}–{max(walls):.1f}) | "
                     f"{statistics.mean(r[1] for r in rs):.2f} | {se:.2f} | {pooled:.2f} | {wall * se ** 2:.4g} |")
    lines.append("\nEvery run, in the order run (wall s, LLC, its own stderr):\n")
    for name, rs in rows.items():
        lines.append(f"- {name.split(' (')[0]}: " + "; ".join(f"{r[0]:.1f} s {r[1]:.1f} ± {r[2]:.1f}" for r in rs))
    theirs = [k for k in stats if k.startswith("devinterp")]
    if theirs:
        (w_o, se_o), (w_d, se_d) = stats[ours_name], stats[theirs[0]]
        var_ratio = (se_d / se_o) ** 2
        lo, hi = variance_ratio_interval(var_ratio, len(seeds))
        wr = w_d / w_o
        lines.append(f"\n**time-to-equal-stderr ratio (devinterp / llc_watch): {wr * var_ratio:.2f}×** "
                     f"(90 % interval from the F distribution of the variance ratio with {len(seeds) - 1}, "
                     f"{len(seeds) - 1} dof: {wr * lo:.2f}–{wr * hi:.2f}×) = equal-draws wall ratio "
                     f"{wr:.2f}× (medians) × variance ratio {var_ratio:.2f}")
    emit(out, "\n".join(lines))


def emit(out, text):
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--run", help="run folder: its final checkpoint for the cases, all for the whole-run table")
    p.add_argument("--cases", default=ISSUE_CASES, help="comma list of CHAINSxDRAWSxBATCH")
    p.add_argument("--devinterp-cases", default="8x500x32,32x200x32,8x200x256",
                   help="cases devinterp also runs (it is slow)")
    p.add_argument("--whole-run-case", default="8x500x32")
    p.add_argument("--no-whole-run", action="store_true")
    p.add_argument("--stderr-case", default="4x200x32")
    p.add_argument("--stderr-seeds", type=int, default=0, help="0: skip the time-to-stderr table")
    p.add_argument("--race-shared-stream", action="store_true",
                   help="time-to-stderr: llc_watch on one shared minibatch stream (default: its own default, per-chain streams)")
    p.add_argument("--race-observe-every", type=int, default=0,
                   help="time-to-stderr: llc_watch's observe_every (0: the R̂/ESS observable off, as devinterp computes "
                        "none; None is not accepted here: the observable's forward on 1024 examples per chain costs "
                        "more than the sampling at small batches)")
    p.add_argument("--race-ablation", action="store_true",
                   help="time-to-stderr: also llc_watch with devinterp's estimator (no control variate, shared stream)")
    p.add_argument("--per-chain-batches", action="store_true",
                   help="llc_watch with independent per-chain minibatch streams (default: one shared stream, as devinterp)")
    p.add_argument("--eager-check", action="store_true", help="also time the first case with the step not captured")
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"),
                   help="llc_watch's matmul precision (devinterp always runs fp32)")
    p.add_argument("--n", type=int, default=4096, help="data set size (n in nβ = n/log n)")
    p.add_argument("--epsilon", type=float, default=1e-4)
    p.add_argument("--gamma", type=float, default=100.0)
    p.add_argument("--nbeta", type=float, default=None, help="default n/log n")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-devinterp", action="store_true")
    p.add_argument("--out", help="also append the tables to this markdown file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    model, task, data, what, ckpts = build_case(args)
    nbeta = args.nbeta or len(data) / math.log(len(data))
    n_params = sum(q.numel() for q in model.parameters())
    peak = matmul_peak(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or 'cpu'}, {args.threads} thread(s)"
    emit(args.out, f"\n## LLC benchmark on {name} (torch {torch.__version__}), llc_watch precision {args.precision}\n\n"
         f"case: {what}; {n_params} parameters; n={len(data)}, nβ={nbeta:.1f}, ε={args.epsilon}, "
         f"γ={args.gamma}, burn-in 0; fp32 matmul peak measured here {peak / 1e12:.2f} TFLOP/s\n")
    loss_fn = lambda m, b: task.loss(m(b.tokens), b)
    run_ours(model, task, data, 2, 4, 32, args, nbeta, dev, args.seed)     # warm-up
    if ckpts and not args.no_whole_run:
        whole_run(ckpts, task, data, args, nbeta, dev, args.out)
    di_cases = set(parse_cases(args.devinterp_cases)) if not args.skip_devinterp else set()
    lines = ["| chains × draws × batch | llc_watch s | sampling s | captured | devinterp s | ratio | "
             "llc_watch LLC | devinterp LLC | GFLOP/s | % of fp32 peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    cases = parse_cases(args.cases)
    if cases:
        emit(args.out, "\n" + "\n".join(lines))
    for i, (C, N, B) in enumerate(cases):
        flops = flops_per_chain_step(model, loss_fn, data[:B]) * C * N
        ours = [run_ours(model, task, data, C, N, B, args, nbeta, dev, args.seed) for _ in range(args.repeats)]
        t, llc, se, ts, cap = (statistics.median(r[k] for r in ours) if k < 4 else ours[0][k] for k in range(5))
        theirs = ("—", "—", "—")
        if (C, N, B) in di_cases:
            d = run_devinterp(model, task, data, C, N, B, args, nbeta, dev, args.seed)
            theirs = (f"{d[0]:.1f}", f"{d[0] / t:.1f}×", f"{d[1]:.2f} ± {d[2]:.2f}")
        emit(args.out, f"| {C} × {N} × {B} | {t:.2f} | {ts:.2f} | {'yes' if cap else 'no'} | {theirs[0]} | "
             f"{theirs[1]} | {llc:.2f} ± {se:.2f} | {theirs[2]} | {flops / ts / 1e9:.0f} | "
             f"{100 * flops / ts / peak:.1f} |")
        if i == 0 and args.eager_check and dev.type == "cuda":
            e = run_ours(model, task, data, C, N, B, args, nbeta, dev, args.seed, capture=False)
            emit(args.out, f"| {C} × {N} × {B}, step not captured | {e[0]:.2f} | {e[3]:.2f} | no | | | "
                 f"{e[1]:.2f} ± {e[2]:.2f} | | {flops / e[3] / 1e9:.0f} | {100 * flops / e[3] / peak:.1f} |")
    if cases:
        emit(args.out, "\nGFLOP/s and % of peak count forward + backward FLOPs of the chains' steps over "
             "the sampling time (L_n(w*) and set-up excluded); llc_watch s is the whole estimate.")
    if args.stderr_seeds:
        stderr_race(model, task, data, args, nbeta, dev, args.out)


if __name__ == "__main__":
    main()
