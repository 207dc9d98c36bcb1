"""Subcommands that analyse a run folder: one per registered analysis (generated from its Settings),
and `stages` and `report`."""
from __future__ import annotations

import sys
from pathlib import Path

from .options import add_settings_options, given_settings, parse_steps


def add_job_args(p, default_checkpoints: str = "every checkpoint") -> None:
    """Options every per-checkpoint analysis shares."""
    p.add_argument("run", nargs="?", help="run folder (made by `llc-watch train`, or by --problem ... --out RUN)")
    p.add_argument("--checkpoints", metavar="STEPS", help=f"comma-separated steps (default: {default_checkpoints})")
    p.add_argument("--executor", choices=["local", "serial", "process", "submitit-local", "slurm", "ray", "dask"],
                   help="where jobs run (default: this process; see docs/executors.md)")
    p.add_argument("--executor-config", metavar="FILE", help="TOML file of engine options")
    p.add_argument("--workers", type=int, help="parallel workers for the chosen executor")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("bring your own run (your checkpoints and model)")
    g.add_argument("--problem", metavar="MODULE:FUNCTION",
                   help="a function returning your model, loss (model, batch) -> loss, and data")
    g.add_argument("--checkpoint-dir", metavar="DIR", help="your checkpoint files (.safetensors, .pt, .pth)")
    g.add_argument("--step-pattern", metavar="REGEX", help="regex whose group 1 is the step (default: the "
                                                          "last number in the file name)")
    g.add_argument("--out", metavar="RUN", help="the run folder to create (tables and results go there)")


def open_cli_run(args):
    """The run folder the user named, or the bring-your-own one --problem/--checkpoint-dir/--out describe."""
    from llc_watch.run import create_foreign_run, open_run
    from .errors import UserError
    byo = [getattr(args, k, None) for k in ("problem", "checkpoint_dir", "out")]
    if any(byo):
        if not all(byo):
            raise UserError("a bring-your-own run needs all of --problem MODULE:FUNCTION, --checkpoint-dir DIR "
                            "and --out RUN")
        if args.run:
            raise UserError("give either a run folder or --problem/--checkpoint-dir/--out, not both")
        return create_foreign_run(args.out, args.problem, args.checkpoint_dir, args.step_pattern)
    if not args.run:
        raise UserError("give a run folder (or --problem, --checkpoint-dir and --out for your own checkpoints)")
    return open_run(args.run)


def cli_modes(analysis) -> dict:
    """An analysis's other ways to run ({flag: (help, Settings, runner)}; e.g. `llc --adaptive`)."""
    return analysis.cli_modes() if hasattr(analysis, "cli_modes") else {}


def run_command(analysis):
    def cmd(args) -> int:
        from llc_watch.analyses import run_analysis
        from llc_watch.executors import executor_from_cli
        from .errors import UserError
        run = open_cli_run(args)
        given = given_settings(args, analysis.Settings)
        analysis.settings(run, given)               # validated before any executor starts or checkpoint loads
        mode = None
        for flag, (_, Settings, runner) in cli_modes(analysis).items():
            mode_given = given_settings(args, Settings)
            if getattr(args, flag, False):
                mode = (runner, Settings.from_mapping(mode_given))   # validated now, too
            elif mode_given:
                raise UserError(f"{', '.join('--' + k.replace('_', '-') for k in mode_given)}: "
                                f"only with --{flag}")
        steps = parse_steps(args.checkpoints)
        with executor_from_cli(args.executor, args.executor_config, args.workers, run_dir=run.dir) as ex:
            if mode is not None:
                runner, mode_settings = mode
                table = runner(run, given, mode_settings, checkpoints=steps, executor=ex, progress=not args.quiet)
            else:
                table = run_analysis(analysis, run, given, checkpoints=steps, executor=ex, progress=not args.quiet)
        for line in analysis.summary(run, table):
            print(line)
        for line in analysis.warnings(table):
            print(f"warning: {line}", file=sys.stderr)
        print(f"wrote {run.path(analysis.schema.name)} ({len(table)} rows; {table.attrs.get('summary', '')})")
        return 0
    return cmd


def cmd_stages(args) -> int:
    from llc_watch.analyses import run_stage_map
    from llc_watch.run import open_run
    sm = run_stage_map(open_run(args.run), tolerance=args.tolerance, resamples=args.resamples, save=True)
    print(sm.summary())
    print(f"wrote {Path(args.run) / 'stages.csv'}, boundaries.csv, stage_map.json")
    return 0


def cmd_report(args) -> int:
    from llc_watch.analyses import run_stage_map
    from llc_watch.report import write_report
    from llc_watch.run import open_run
    run = open_run(args.run)
    sm = run_stage_map(run, save=args.out is None)   # --out: nothing is written into the run
    path = write_report(run, out_path=args.out, stage_map=sm)
    for w in sm.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"report: {path.resolve()}")
    return 0


def add_subcommands(sub) -> None:
    from llc_watch.analyses import REGISTRY
    for a in REGISTRY.values():
        name = getattr(a, "command", a.name)
        p = sub.add_parser(name, help=a.help, description=a.description)
        add_job_args(p, getattr(a, "checkpoints_help", "every checkpoint"))
        add_settings_options(p, a.Settings, hidden=getattr(a, "cli_hidden", ()),
                             title=f"{a.name} settings ({a.Settings.__name__}; defaults shown)")
        for flag, (help_, Settings, _) in cli_modes(a).items():
            p.add_argument(f"--{flag}", action="store_true", help=help_)
            add_settings_options(p, Settings, hidden=getattr(Settings, "cli_hidden", ()),
                                 title=f"--{flag} settings ({Settings.__name__}; defaults shown)")
        p.set_defaults(fn=run_command(a))

    p = sub.add_parser("stages", help="find stage boundaries in LLC, loss, probes and ablations, aligned",
                       description="Turn a run's per-checkpoint tables into a stage map: boundaries per "
                                   "signal on log step, aligned across signals, quiet stages marked. Writes "
                                   "stages.csv, boundaries.csv and stage_map.json into the run folder.")
    p.add_argument("run", help="run folder")
    p.add_argument("--tolerance", type=float, default=0.35,
                   help="alignment tolerance in log(step + 1) (default 0.35)")
    p.add_argument("--resamples", type=int, default=100,
                   help="redraws within the standard errors for boundary intervals (default 100)")
    p.set_defaults(fn=cmd_stages)

    p = sub.add_parser("report", help="write one self-contained HTML report for a run",
                       description="Draw the stage map and write a self-contained HTML report (figures, "
                                   "stage table, hyperparameters, diagnostics and warnings).")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", help="HTML file (default RUN/report.html); with --out nothing is written into the run")
    p.set_defaults(fn=cmd_report)
