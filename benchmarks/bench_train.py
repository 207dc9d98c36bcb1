"""Training throughput per preset: optimiser steps per second (median of repeats), on a device.

Times llc_watch.train's own step loop (`train.Stepper`, the code `llc-watch train` runs) with no
checkpoints in between; --profile adds the plain loop split into its phases (batch generation,
host-to-device copy, forward + backward, clipping, optimiser), each synchronised, to show where a
step's time goes.

    python benchmarks/bench_train.py --device cuda [--steps 200] [--repeats 3] [--presets addition ...]
    python benchmarks/bench_train.py --device cpu --threads 2 --steps 40
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from llc_watch.config import RunConfig
from llc_watch.presets import PRESETS
from llc_watch.train import Stepper, TrainingData, lr_at, new_model_and_optimizer

CORE = ("icl-regression", "addition", "modular-addition")


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def steps_per_second(preset: str, steps: int, repeats: int, dev, fast: bool) -> tuple[float, int, str]:
    cfg = RunConfig.from_preset(preset).with_overrides([f"train.device={dev.type}"])
    task = cfg.make_task()
    data = TrainingData(task, cfg)
    model, opt = new_model_and_optimizer(cfg, task, dev)
    stepper = Stepper(cfg, task, data, model, opt, dev, fast=fast)
    rates = []
    for r in range(repeats + 1):  # the first repeat warms up (and captures, on CUDA)
        start = r * steps
        sync(dev)
        t0 = time.perf_counter()
        stepper.run(start, start + steps)
        sync(dev)
        if r:
            rates.append(steps / (time.perf_counter() - t0))
    return statistics.median(rates), cfg.train.steps, stepper.mode


def agreement(preset: str, steps: int, dev) -> tuple[float, str]:
    """Largest |w_fast − w_plain| / max |w_plain| after `steps` steps from the same seed."""
    out = []
    for fast in (True, False):
        cfg = RunConfig.from_preset(preset).with_overrides([f"train.device={dev.type}"])
        task = cfg.make_task()
        data = TrainingData(task, cfg)
        model, opt = new_model_and_optimizer(cfg, task, dev)
        stepper = Stepper(cfg, task, data, model, opt, dev, fast=fast)
        stepper.run(0, steps)
        stepper.close()
        out.append((torch.cat([p.detach().reshape(-1) for p in model.parameters()]), stepper.mode))
    (a, mode), (b, _) = out
    return float((a - b).abs().max() / b.abs().max()), mode


def profile(preset: str, steps: int, dev) -> dict:
    """Seconds per step of each phase of the plain loop, synchronised after each."""
    cfg = RunConfig.from_preset(preset).with_overrides([f"train.device={dev.type}"])
    task = cfg.make_task()
    data = TrainingData(task, cfg)
    model, opt = new_model_and_optimizer(cfg, task, dev)
    phases = dict.fromkeys(("batch", "to_device", "forward_backward", "clip", "optimizer"), 0.0)

    def timed(name, fn):
        sync(dev)
        t = time.perf_counter()
        out = fn()
        sync(dev)
        phases[name] += time.perf_counter() - t
        return out

    for s in range(steps + 5):
        if s == 5:
            phases = dict.fromkeys(phases, 0.0)
        for g in opt.param_groups:
            g["lr"] = lr_at(s, cfg)
        b = timed("batch", lambda: data.batch(s))
        b = timed("to_device", lambda: b.to(dev))

        def fb():
            loss = task.loss(model(b.tokens), b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        timed("forward_backward", fb)
        if cfg.train.grad_clip:
            timed("clip", lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip))
        timed("optimizer", opt.step)
    return {k: v / steps for k, v in phases.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", nargs="*", default=list(CORE))
    ap.add_argument("--plain", action="store_true", help="also time the plain loop (no prefetch, no capture)")
    ap.add_argument("--profile", action="store_true", help="also print the plain loop's phase split")
    ap.add_argument("--check", type=int, default=0, metavar="STEPS",
                    help="also compare the fast and plain loops' weights after STEPS steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"\n## Training steps/s on {name} (torch {torch.__version__}), median of {args.repeats} x "
          f"{args.steps} steps\n")
    print("| preset | path | steps/s | preset steps | minutes for the preset's steps |")
    print("|---|---|---|---|---|")
    for preset in args.presets:
        for fast in ((True, False) if args.plain else (True,)):
            rate, total, mode = steps_per_second(preset, args.steps, args.repeats, dev, fast)
            print(f"| {preset} | {mode} | {rate:.1f} | {total} | {total / rate / 60:.1f} |", flush=True)
    if args.check:
        print(f"\n| preset | fast path | max |w_fast − w_plain| / max |w| after {args.check} steps |")
        print("|---|---|---|")
        for preset in args.presets:
            d, mode = agreement(preset, args.check, dev)
            print(f"| {preset} | {mode} | {d:.2e} |", flush=True)
    if args.profile:
        print("\n| preset | " + " | ".join(("batch", "to_device", "forward_backward", "clip", "optimizer"))
              + " | (ms per step, plain loop, synchronised) |")
        print("|---|---|---|---|---|---|---|")
        for preset in args.presets:
            ph = profile(preset, max(10, args.steps // 4), dev)
            print(f"| {preset} | " + " | ".join(f"{1000 * v:.2f}" for v in ph.values()) + " | |", flush=True)


if __name__ == "__main__":
    main()
