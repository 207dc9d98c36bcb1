"""The whole path in one call: train -> calibrate -> LLC -> probes -> ablations -> stages -> report.

Every step is resumable and skips what is already done, so running the pipeline again on the same
folder only computes what is missing (a second `make demo` takes seconds).

    >>> from llc_watch.config import RunConfig
    >>> path = run_pipeline(RunConfig.from_preset("addition-tiny"), "runs/tiny", PipelineSettings.quick())  # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import RunConfig


@dataclass
class PipelineSettings:
    llc: dict = field(default_factory=lambda: {"chains": 4, "draws": 200, "burn_in": 100})
    calibrate: bool = True                 # sweep ε on a few checkpoints first (skipped if calibrated)
    calibration_epsilons: list | None = None   # None: the calibrate module's default grid
    probes: dict = field(default_factory=dict)
    ablations: dict = field(default_factory=dict)
    analysis_checkpoints: int = 0          # probes/ablations on this many log-spaced checkpoints; 0 = all
    llc_checkpoints: int = 0               # LLC on this many log-spaced checkpoints; 0 = all
    workers: int = 1                       # >1: analyses run in a local pool of this many processes

    @classmethod
    def demo(cls) -> "PipelineSettings":
        """What `make demo` runs on the addition preset within its time budget on 2 CPU cores."""
        return cls(
            llc={"chains": 4, "draws": 100, "burn_in": 50, "batch_size": 32, "n_data": 4096},
            calibration_epsilons=[1e-4, 3e-4, 1e-3],
            probes={"n_train": 1024, "n_test": 256},
            ablations={"n_train": 1024, "n_test": 256, "features": ["carry_in", "carry_out"],
                       "random_eval": 64},
            analysis_checkpoints=16, workers=2,
        )

    @classmethod
    def quick(cls) -> "PipelineSettings":
        """A few seconds per step: for tests."""
        return cls(
            llc={"chains": 2, "draws": 30, "burn_in": 10, "batch_size": 32, "n_data": 512, "epsilon": 1e-4},
            calibrate=False,
            probes={"n_train": 256, "n_test": 128},
            ablations={"n_train": 256, "n_test": 128, "features": ["carry_in"], "n_random": 32,
                       "random_eval": 32},
            analysis_checkpoints=5, llc_checkpoints=6,
        )


def spread_steps(steps: list[int], n: int) -> list[int]:
    """n steps spread evenly in log(step + 1), always with the first and last.

    >>> spread_steps([0, 1, 2, 4, 8, 16, 32, 64, 128], 4)
    [0, 4, 32, 128]
    """
    if not n or n >= len(steps):
        return list(steps)
    x = np.log1p(np.asarray(steps, dtype=float))
    picks = {int(np.argmin(np.abs(x - t))) for t in np.linspace(x[0], x[-1], n)}
    return [steps[i] for i in sorted(picks)]


def run_pipeline(cfg: RunConfig, run_dir: str | Path, settings: PipelineSettings | None = None,
                 executor=None, progress: bool = True, log=print) -> Path:
    """Run every stage on `cfg` into `run_dir`; return the report's path."""
    from .ablations import compute_ablations
    from .llc import calibrate_run, compute_llc
    from .llc.job import load_calibration
    from .probes import compute_probes
    from .report import write_report
    from .stages import stage_map
    from .train import train

    s = settings or PipelineSettings.demo()
    run_dir = Path(run_dir)
    if executor is None and s.workers > 1:
        from .jobs import make_executor
        with make_executor("process", workers=s.workers) as pool:
            return run_pipeline(cfg, run_dir, s, executor=pool, progress=progress, log=log)
    timings = {}

    def step(name, fn):
        t0 = time.perf_counter()
        log(f"== {name}")
        out = fn()
        timings[name] = time.perf_counter() - t0
        log(f"   {name}: {timings[name]:.0f} s")
        return out

    run = step("train", lambda: train(cfg, run_dir, progress=progress))
    all_steps = [c.step for c in run.checkpoints()]
    if s.calibrate and load_calibration(run_dir) is None:
        step("calibrate", lambda: calibrate_run(run_dir, epsilons=s.calibration_epsilons, settings=s.llc,
                                                executor=executor, progress=progress))
    llc_steps = spread_steps(all_steps, s.llc_checkpoints)
    llc = step("llc", lambda: compute_llc(run_dir, settings=s.llc, checkpoints=llc_steps, executor=executor,
                                          progress=progress))
    for line in llc.attrs.get("warnings", []) + llc.attrs.get("failures", []):
        log(f"   llc: {line}")
    steps = spread_steps(all_steps, s.analysis_checkpoints)
    step("probe", lambda: compute_probes(run_dir, settings=s.probes, checkpoints=steps, executor=executor,
                                         progress=progress))
    if run.task.name == "modular_addition":
        from .fourier import compute_fourier
        step("fourier", lambda: compute_fourier(run_dir, checkpoints=steps, executor=executor, progress=progress))
    else:
        step("ablate", lambda: compute_ablations(run_dir, settings=s.ablations, checkpoints=steps,
                                                 executor=executor, progress=progress))
    sm = step("stages", lambda: stage_map(run_dir, save=True))
    log(sm.summary())
    for line in sm.timeline() if hasattr(sm, "timeline") else []:
        log(f"   {line}")
    path = step("report", lambda: write_report(run_dir, stage_map=sm))
    log("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return path
