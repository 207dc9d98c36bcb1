"""The whole path in one call: train, then every registered analysis that applies to the task, then
stages and the report.

Every step is resumable and skips what is already done, so running the pipeline again on the same
folder only computes what is missing (a second `make demo` takes seconds). The pipeline knows no
analysis by name: it loops over llc_watch.analyses.REGISTRY and asks each whether it applies.

    >>> from llc_watch.config import RunConfig
    >>> path = run_pipeline(RunConfig.from_preset("addition-tiny"), "runs/tiny", PipelineSettings.quick())  # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .analyses import REGISTRY, run_analysis, run_stage_map
from .config import RunConfig
from .report import write_report
from .run import open_run


@dataclass
class PipelineSettings:
    settings: dict = field(default_factory=dict)     # {analysis: {setting: value}} over each Settings' defaults
    checkpoints: dict = field(default_factory=dict)  # {analysis: n}: n log-spaced checkpoints; absent or 0 = all
    skip: tuple = ()                                 # analyses not to run
    workers: int = 1                                 # >1: analyses run in a local pool of this many processes

    @classmethod
    def demo(cls) -> "PipelineSettings":
        """What `make demo` runs on the addition preset within its time budget on 2 CPU cores."""
        # the fixed-batch observable every 10 steps on 128 examples: at every step on 1024 it costs ~10x the
        # sampling itself on this model (measured: 266 s against 26 s per checkpoint on one thread)
        llc = {"chains": 4, "draws": 100, "burn_in": 50, "batch_size": 32, "n_data": 4096, "observe_every": 10,
               "observe_size": 128}
        # the grid method: calibrate_llc's ladder (the CLI's default) costs tens of minutes per checkpoint
        # of this 102k-parameter model on 2 CPU cores; the grid sweep fits the demo's budget
        return cls(
            settings={"calibration": {**llc, "method": "grid", "epsilons": [3e-6, 1e-5, 3e-5, 1e-4]}, "llc": llc,
                      "probes": {"n_train": 1024, "n_test": 256},
                      "ablations": {"n_train": 1024, "n_test": 256, "features": ["carry_in", "carry_out"],
                                    "random_eval": 64}},
            checkpoints={"llc": 24, "probes": 16, "ablations": 16, "fourier": 16}, workers=2,
        )

    @classmethod
    def quick(cls) -> "PipelineSettings":
        """A few seconds per step: for tests."""
        return cls(
            settings={"llc": {"chains": 2, "draws": 30, "burn_in": 10, "batch_size": 32, "n_data": 512,
                              "epsilon": 1e-4},
                      "probes": {"n_train": 256, "n_test": 128},
                      "ablations": {"n_train": 256, "n_test": 128, "features": ["carry_in"], "n_random": 32,
                                    "random_eval": 32},
                      "essential_dynamics": {"n_inputs": 64},
                      "crosscoder": {"n_examples": 128, "n_snapshots": 6, "n_latents": 32, "k": 4, "steps": 200,
                                     "n_ablate": 4, "n_ablate_examples": 32}},
            checkpoints={"llc": 6, "probes": 5, "ablations": 5, "fourier": 5}, skip=("calibration",),
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
    """Train `cfg` into `run_dir`, run every analysis that applies, the stage map and the report;
    return the report's path. Every analysis's settings are validated before training starts."""
    from .train import train

    s = settings or PipelineSettings.demo()
    unknown = sorted((set(s.settings) | set(s.checkpoints) | set(s.skip)) - set(REGISTRY))
    if unknown:
        from .settings import SettingsError
        raise SettingsError(f"pipeline settings name unknown analyses {unknown}; known: {', '.join(REGISTRY)}")
    for name, given in s.settings.items():   # fail before any work
        REGISTRY[name].Settings.from_mapping(given)
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

    step("train", lambda: train(cfg, run_dir, progress=progress))
    run = open_run(run_dir)
    all_steps = [c.step for c in run.checkpoints()]
    for name, a in REGISTRY.items():
        if not a.pipeline or name in s.skip or not a.applies_to(run.task):
            continue
        given = s.settings.get(name, {})
        if not a.should_run(run, a.settings(run, given)):
            log(f"== {name}: already done")
            continue
        n = s.checkpoints.get(name, 0)
        steps = spread_steps(all_steps, n) if n else None
        table = step(name, lambda: run_analysis(a, run, given, checkpoints=steps, executor=executor,
                                                progress=progress))
        for line in a.warnings(table):
            log(f"   {name}: {line}")
    sm = step("stages", lambda: run_stage_map(run, save=True))
    log(sm.summary())
    for line in sm.timeline():
        log(f"   {line}")
    path = step("report", lambda: write_report(run, stage_map=sm))
    log("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return path
