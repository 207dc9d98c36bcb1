"""Essential dynamics of a run: PC1-PC2 and PC2-PC3 paths coloured by stage, PCs over steps, with the
path's turning points; prints them next to the stage map's transitions.

    PYTHONPATH=. python studies/essential_dynamics_figure.py RUN_DIR [out.png]
"""
import sys

from matplotlib.figure import Figure

from llc_watch.essential_dynamics import (model_outputs, pca_trajectory, plot_pcs_over_steps, plot_trajectory,
                                          trajectory_boundaries)
from llc_watch.stages import stage_map


def main(run, out="figures/addition_essential_dynamics.png"):
    steps, outputs = model_outputs(run, n_inputs=256)
    ed = pca_trajectory(steps, outputs, n_components=3)
    bs = trajectory_boundaries(ed)
    sm = stage_map(run)
    print(f"outputs {outputs.shape}; variance on PC1-3: {', '.join(f'{v:.3f}' for v in ed.explained)}")
    for b in bs:
        print(f"  essential dynamics {b.kind} at step {b.step:.0f} ({b.lo:.0f}-{b.hi:.0f}), support {b.support:.2f}")
    for r in sm.transitions().itertuples():
        print(f"  stage-map transition at step {r.step:.0f} ({r.lo:.0f}-{r.hi:.0f}): {r.what}")
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    a = fig.subplots(1, 3)
    plot_trajectory(a[0], ed, (0, 1), stage_map=sm, boundaries=bs)
    plot_trajectory(a[1], ed, (1, 2), stage_map=sm, boundaries=bs)
    plot_pcs_over_steps(a[2], ed, bs)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
