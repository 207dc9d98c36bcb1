"""Study: the stage-boundary figure of an analysed run, saved into figures/.

    python studies/stage_map_figure.py runs/addition     # after `make demo`

Prints the stage table and the timeline (does the carry form before the loss drops?).
"""
from __future__ import annotations

import sys
from pathlib import Path

from llc_watch.analyses import run_stage_map
from llc_watch.plots import stage_figure
from llc_watch.run import open_run

FIGURES = Path(__file__).resolve().parent.parent / "figures"


def main(run_dir: str = "runs/addition") -> None:
    run = open_run(run_dir)
    sm = run_stage_map(run)
    path = FIGURES / f"{Path(run_dir).name}_stage_map.png"
    stage_figure(run.tables(), sm).savefig(path, dpi=100)
    print(sm.stages[["stage", "start_step", "end_step", "llc_trend", "loss_trend", "features_formed",
                     "quiet"]].to_string(index=False, float_format=lambda v: f"{v:.0f}"))
    print("\n".join(sm.timeline()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
