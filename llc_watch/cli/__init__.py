"""The `llc-watch` command line: one subcommand per stage of the pipeline.

    llc-watch tasks                                  list tasks and their features
    llc-watch train --preset addition --out runs/addition
    llc-watch calibrate runs/addition                pick SGLD settings
    llc-watch llc runs/addition                      LLC at every checkpoint
    llc-watch probe runs/addition                    linear probes at every checkpoint
    llc-watch ablate runs/addition                   probe-direction ablations
    llc-watch fourier runs/modular-addition          Fourier measures (modular addition)
    llc-watch stages runs/addition                   stage boundaries, aligned
    llc-watch report runs/addition                   one HTML report
    llc-watch pipeline --preset addition --out runs/addition   all of the above

The analysis subcommands and their options are generated from llc_watch.analyses.REGISTRY and each
analysis's Settings dataclass. Errors in what the user gave (a config, an argument, a run folder)
print one clear line and exit with status 2; they never print a traceback.
"""
from __future__ import annotations

import argparse
import sys

from . import analyses, commands
from .errors import EXIT_FAILED, EXIT_USAGE, UserError, describe_os_error, user_errors
from .commands import load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llc-watch", description="Watch a small transformer develop: LLC, probes, ablations and stages "
                                      "over a training run's checkpoints.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_run_subcommands(sub)
    analyses.add_subcommands(sub)
    commands.add_pipeline_subcommand(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return EXIT_USAGE
    from llc_watch.jobs import JobsFailed
    try:
        return args.fn(args) or 0
    except user_errors() as e:
        print(f"llc-watch {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except JobsFailed as e:
        print(f"llc-watch {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:   # read-only, full disk, a path of the wrong kind: the path and what to do
        line, code = describe_os_error(e)
        print(f"llc-watch {args.command}: error: {line}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"llc-watch {args.command}: interrupted; finished work is kept, rerun to continue",
              file=sys.stderr)
        return 130


__all__ = ["main", "build_parser", "UserError", "load_config", "EXIT_USAGE", "EXIT_FAILED"]
