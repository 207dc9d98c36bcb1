"""The `llc-watch` command line: one subcommand per stage of the pipeline.

    llc-watch tasks                                  list tasks and their features
    llc-watch train --preset addition --out runs/addition
    llc-watch calibrate runs/addition                pick SGLD settings
    llc-watch llc runs/addition                      LLC at every checkpoint
    llc-watch probe runs/addition                    linear probes at every checkpoint
    llc-watch ablate runs/addition                   probe-direction ablations
    llc-watch stages runs/addition                   stage boundaries, aligned
    llc-watch report runs/addition                   one HTML report
    llc-watch pipeline --preset addition --out runs/addition   all of the above

Errors in what the user gave (a config, an argument, a run folder) print one clear line and exit
with status 2; they never print a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE, EXIT_FAILED = 2, 1


class UserError(Exception):
    """An error in what the user asked for; printed as one line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoints import CheckpointError
    from .config import ConfigError
    from .model import ModelConfigError
    from .executors import ExecutorConfigError, MissingEngineError
    from .llc import CalibrationError, LLCError, SamplerError
    from .stages import MissingAnalysisError
    from .tasks import TaskConfigError
    return (UserError, ConfigError, CheckpointError, TaskConfigError, ModelConfigError, MissingAnalysisError,
            ExecutorConfigError, MissingEngineError, CalibrationError, LLCError, SamplerError)


# --- subcommands ---------------------------------------------------------------------------------

def cmd_tasks(args) -> int:
    from .presets import all_presets
    from .tasks import TASKS
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
    from .presets import all_presets
    for name, p in sorted(all_presets().items()):
        print(f"{name}: {p['shows']}")
    return 0


def load_config(args):
    from .config import RunConfig
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
    from .train import train
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


def add_run_config_args(p):
    p.add_argument("--preset", help="named preset (see `llc-watch presets`)")
    p.add_argument("--config", help="TOML config file (may name a preset to start from)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set train.lr=3e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llc-watch", description="Watch a small transformer develop: LLC, probes, ablations and stages "
                                      "over a training run's checkpoints.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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

    from . import cli_analyses
    cli_analyses.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return EXIT_USAGE
    from .jobs import JobsFailed
    try:
        return args.fn(args) or 0
    except _user_errors() as e:
        print(f"llc-watch {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except JobsFailed as e:
        print(f"llc-watch {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"llc-watch {args.command}: interrupted; finished work is kept, rerun to continue",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
