"""Study: train the core presets and draw their loss and accuracy curves into figures/.

    python studies/preset_curves.py [--presets addition modular-addition] [--runs runs] [--threads 2]

Each preset trains into RUNS/<preset> (resumable, so a rerun only redraws), then a figure with the
loss on a linear and a log step axis goes to figures/<preset>_curves.png, and the timing and final
accuracies are printed as one table row per preset (the README quotes this table).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llc_watch.checkpoints import open_run
from llc_watch.config import RunConfig
from llc_watch.plots import plot_metrics
from llc_watch.train import train

FIGURES = Path(__file__).resolve().parent.parent / "figures"


def curves_figure(run, title: str) -> Figure:
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    metrics = run.metrics()
    plot_metrics(left, metrics)
    left.set_xscale("linear")
    left.set_title(f"{title}: linear steps")
    plot_metrics(right, metrics)
    right.set_title(f"{title}: log steps")
    return fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=["addition", "modular-addition"])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    FIGURES.mkdir(exist_ok=True)
    rows = []
    for name in args.presets:
        out = Path(args.runs) / name
        fresh = not (out / "metrics.csv").is_file()
        t0 = time.perf_counter()
        train(RunConfig.from_preset(name), out, progress=True)
        seconds = time.perf_counter() - t0
        run = open_run(out)
        path = FIGURES / f"{name}_curves.png"
        curves_figure(run, name).savefig(path, dpi=110)
        m = run.metrics().pivot(index="step", columns="measure", values="value")
        reached = lambda col, level: next((int(s) for s, v in m[col].items() if v >= level), None)
        rows.append((name, f"{seconds:.0f}" if fresh else "(resumed)", len(run.checkpoints()),
                     m["train_acc"].iloc[-1], m["test_acc"].iloc[-1], reached("train_acc", 0.99),
                     reached("test_acc", 0.99), path.name))
    print(f"\n{'preset':<18}{'train s':>9}{'ckpts':>7}{'train acc':>11}{'test acc':>10}"
          f"{'train>=99% at':>15}{'test>=99% at':>14}  figure")
    for r in rows:
        print(f"{r[0]:<18}{r[1]:>9}{r[2]:>7}{r[3]:>11.4f}{r[4]:>10.4f}{str(r[5]):>15}{str(r[6]):>14}  {r[7]}")


if __name__ == "__main__":
    main()
