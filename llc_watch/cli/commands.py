"""Subcommands about tasks, presets, training and the whole pipeline."""
from __future__ import annotations

from pathlib import Path

from .errors import UserError


def cmd_tasks(args) -> int:
    from llc_watch.presets import all_presets
    from llc_watch.tasks import TASKS
    presets = all_presets()
    for name, cls in sorted(TASKS.items()):
        task = cls()
        names = [p for p, v in presets.items() if v["config"]["task"]["name"] == name]
        print(f"{name}: {cls.summary}")
        print(f"  settings: {task.settings()}")
        print(f"  presets:  {', '.join(names) or '-'}")
        for fname, spec in task.features.items():
            print(f"  feature {fname} ({spec.kind}): {spec.description}")
    return 0


def cmd_presets(args) -> int:
    from llc_watch.presets import all_presets
    for name, p in sorted(all_presets().items()):
        print(f"{name}: {p['shows']}")
    return 0


def load_config(args):
    from llc_watch.config import RunConfig
    if args.config and args.preset:
        raise UserError("give either --config FILE or --preset NAME, not both")
    if args.config:
        cfg = RunConfig.from_toml(args.config)
    elif args.preset:
        cfg = RunConfig.from_preset(args.preset)
    else:
        raise UserError("give --preset NAME (see `llc-watch presets`) or --config FILE")
    return cfg.with_overrides(args.set or [])


def cmd_train(args) -> int:
    from llc_watch.train import train
    cfg = load_config(args)
    out = Path(args.out or f"runs/{args.preset or Path(args.config).stem}")
    if args.print_config:
        print(cfg.to_json())
        return 0
    run = train(cfg, out, progress=not args.quiet)
    m = run.metrics()
    last = m[m.step == m.step.max()].set_index("measure")["value"]
    print(f"run folder: {run.dir} ({len(run.checkpoints())} checkpoints); final "
          + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    return 0


def cmd_pipeline(args) -> int:
    from llc_watch.pipeline import PipelineSettings, run_pipeline
    cfg = load_config(args)
    out = Path(args.out or f"runs/{args.preset or Path(args.config).stem}")
    settings = PipelineSettings.quick() if args.quick else PipelineSettings.demo()
    if args.analysis_checkpoints is not None:
        for name in list(settings.checkpoints):
            if name not in ("llc", "calibration"):
                settings.checkpoints[name] = args.analysis_checkpoints
    if args.workers is not None:
        settings.workers = args.workers
    path = run_pipeline(cfg, out, settings, progress=not args.quiet)
    print(f"report: {path.resolve()}")
    return 0


def add_run_config_args(p):
    p.add_argument("--preset", help="named preset (see `llc-watch presets`)")
    p.add_argument("--config", help="TOML config file (may name a preset to start from)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")


def add_run_subcommands(sub) -> None:
    p = sub.add_parser("tasks", help="list the tasks, their settings, presets and features",
                       description="List every task with its settings, presets and intermediate features.")
    p.set_defaults(fn=cmd_tasks)

    p = sub.add_parser("presets", help="list named presets and what each shows",
                       description="List named presets and what each was measured to show.")
    p.set_defaults(fn=cmd_presets)

    p = sub.add_parser("train", help="train a transformer and keep a checkpoint history",
                       description="Train a transformer on an algorithmic task into a run folder with a "
                                   "checkpoint history. Rerunning the same command resumes it.")
    add_run_config_args(p)
    p.add_argument("--out", help="run folder (default runs/PRESET)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_train)


def add_pipeline_subcommand(sub) -> None:
    p = sub.add_parser("pipeline", help="train, then every analysis that applies, stages and report in one go",
                       description="Run the whole path on a preset or config: train, then every registered "
                                   "analysis that applies to the task (calibration, LLC, probes, ablations, "
                                   "Fourier measures for modular addition, ...), stages, report. Each step "
                                   "resumes, so a second run only does what is missing.")
    add_run_config_args(p)
    p.add_argument("--out", help="run folder (default runs/PRESET)")
    p.add_argument("--quick", action="store_true", help="tiny analysis settings (seconds per step), for a smoke test")
    p.add_argument("--analysis-checkpoints", type=int,
                   help="probe/ablate/... this many log-spaced checkpoints (0 = all; demo default 16)")
    p.add_argument("--workers", type=int, help="analysis processes (demo default 2: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_pipeline)
