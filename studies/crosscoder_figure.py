"""Study: crosscoder over an analysed run's checkpoints; heatmap, emergence and carry matches into figures/.

    python studies/crosscoder_figure.py runs/addition [key=value ...]   # CrosscoderSettings overrides

Prints the features that best match each labelled quantity (with their emergence and ablation
effect), the emergence peaks, and the probes' onsets when the run has probes.csv.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from llc_watch.crosscoder import CrosscoderSettings, crosscode_run, emergence_peaks, emergence_signal
from llc_watch.crosscoder.plots import plot_emergence, plot_feature_trajectories, plot_norm_heatmap
from llc_watch.plots import new_figure

FIGURES = Path(__file__).resolve().parent.parent / "figures"


def _parse(kv: str):
    k, v = kv.split("=", 1)
    for cast in (int, float):
        try:
            return k, cast(v)
        except ValueError:
            pass
    return k, v


def main(run_dir: str = "runs/addition", *overrides: str) -> None:
    settings = CrosscoderSettings.from_dict(dict(_parse(o) for o in overrides))
    t, c = time.time(), time.process_time()
    tables = crosscode_run(run_dir, settings, progress=True)
    print(f"crosscode_run: wall {time.time() - t:.0f} s, CPU {time.process_time() - c:.0f} s (this process)")
    f, norms = tables["features"], tables["norms"]
    best = (tables["labels"].dropna().assign(a=lambda d: d["corr"].abs())
            .sort_values("a", ascending=False).groupby("label").head(1))
    cols = ["feature", "emergence_step", "trajectory", "frequency", "ablation_onset_step",
            "ablation_loss_rise_final", "ablation_acc_drop_final"]
    print(best.merge(f[cols], on="feature").to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f["trajectory"].value_counts().to_string())
    steps, dens = emergence_signal(f)
    print("emergence peaks at steps:", [round(float(p)) for p in emergence_peaks(steps, dens)])
    labels = {int(r.feature): f"{r.label} ({r.corr:+.2f})" for r in best.itertuples()}
    fig = new_figure(13, 4.5)
    a1, a2, a3 = fig.subplots(1, 3, width_ratios=[1.3, 1, 1])
    plot_norm_heatmap(a1, norms, f, label_features=labels)
    plot_emergence(a2, f)
    plot_feature_trajectories(a3, norms, list(labels), labels)
    path = FIGURES / f"{Path(run_dir).name}_crosscoder.png"
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main(*sys.argv[1:])
