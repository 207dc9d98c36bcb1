"""Training throughput for every core preset: optimiser steps per second (median of repeats).

    python benchmarks/bench_train.py [--steps 50] [--repeats 3] [--threads 2] [--presets addition ...]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from llc_watch.config import RunConfig
from llc_watch.model import Transformer
from llc_watch.presets import PRESETS
from llc_watch.tasks import derive_seed
from llc_watch.train import TrainingData, lr_at


def steps_per_second(preset: str, steps: int, repeats: int) -> tuple[float, int]:
    cfg = RunConfig.from_preset(preset)
    task = cfg.make_task()
    data = TrainingData(task, cfg)
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = Transformer(cfg.model_config(task))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    rates = []
    for r in range(repeats + 1):  # the first repeat warms up
        t0 = time.perf_counter()
        for s in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(s, cfg)
            batch = data.batch(s)
            loss = task.loss(model(batch.tokens), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or 1e9)
            opt.step()
        if r:
            rates.append(steps / (time.perf_counter() - t0))
    return statistics.median(rates), cfg.train.steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", nargs="*", default=sorted(PRESETS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} x {args.steps} steps")
    print(f"{'preset':<20} {'steps/s':>9} {'preset steps':>13} {'est. minutes':>13}")
    for name in args.presets:
        rate, total = steps_per_second(name, args.steps, args.repeats)
        print(f"{name:<20} {rate:>9.1f} {total:>13d} {total / rate / 60:>13.1f}")


if __name__ == "__main__":
    main()
