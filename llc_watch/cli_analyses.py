"""Subcommands that analyse an existing run folder: stages and report (LLC, probes, ablations wired
in as they land), and `pipeline`, the whole path from a preset to the report."""
from __future__ import annotations

import sys
from pathlib import Path


def _run_dir(path: str) -> Path:
    from .checkpoints import open_run
    return open_run(path).dir  # a clear error if it is not a run folder


def parse_list(text: str | None, convert, what: str):
    """'a,b,c' -> [convert(a), ...]; None or '' -> None; a bad item names the option and an example."""
    if not text:
        return None
    try:
        return [convert(x) for x in text.split(",") if x.strip()]
    except ValueError:
        from .cli import UserError
        raise UserError(f"{text!r}: give {what}") from None


def parse_steps(text: str | None) -> list[int] | None:
    """'0,100,200' -> [0, 100, 200]; None keeps every checkpoint."""
    return parse_list(text, int, "--checkpoints as comma-separated steps, e.g. 0,100,2500")


def make_cli_executor(args, run_dir):
    from .executors import executor_from_cli
    return executor_from_cli(args.executor, args.executor_config, args.workers, run_dir=run_dir)


def add_job_args(p) -> None:
    """Options every per-checkpoint analysis shares."""
    p.add_argument("run", help="run folder (made by `llc-watch train`)")
    p.add_argument("--checkpoints", metavar="STEPS", help="comma-separated steps (default: every checkpoint)")
    p.add_argument("--executor", choices=["local", "serial", "process", "submitit-local", "slurm", "ray", "dask"],
                   help="where jobs run (default: this process; see docs/executors.md)")
    p.add_argument("--executor-config", metavar="FILE", help="TOML file of engine options")
    p.add_argument("--workers", type=int, help="parallel workers for the chosen executor")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (resolved where each job runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _csv_list(text):
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def _probe_settings(args) -> dict:
    s = {"device": args.device, "n_train": args.n_train, "n_test": args.n_test,
         "sites": _csv_list(args.sites), "features": _csv_list(args.features), "C": args.C}
    return s


def cmd_probe(args) -> int:
    from .probes import compute_probes
    run = _run_dir(args.run)
    s = {**_probe_settings(args), "pooled": args.pooled}
    with make_cli_executor(args, run) as ex:
        df = compute_probes(run, settings=s, checkpoints=parse_steps(args.checkpoints), executor=ex,
                            progress=not args.quiet, threshold=args.threshold)
    quiet = run / "probes_quiet.csv"
    print(f"wrote {run / 'probes.csv'} ({len(df)} rows)")
    if quiet.is_file():
        import pandas as pd
        q = pd.read_csv(quiet)
        print(q.to_string(index=False, max_colwidth=40))
    if args.fourier or _is_modular(run):
        from .fourier import compute_fourier
        with make_cli_executor(args, run) as ex:
            f = compute_fourier(run, settings={"device": args.device}, checkpoints=parse_steps(args.checkpoints),
                                executor=ex, progress=not args.quiet)
        print(f"wrote {run / 'fourier.csv'} ({len(f)} rows)")
    return 0


def _is_modular(run) -> bool:
    from .checkpoints import open_run
    return open_run(run).config.task.name == "modular_addition"


def cmd_ablate(args) -> int:
    from .ablations import compute_ablations
    run = _run_dir(args.run)
    s = {**_probe_settings(args), "n_random": args.n_random, "random_eval": args.random_eval}
    with make_cli_executor(args, run) as ex:
        df = compute_ablations(run, settings=s, checkpoints=parse_steps(args.checkpoints), executor=ex,
                               progress=not args.quiet)
    print(f"wrote {run / 'ablations.csv'} ({len(df)} rows)")
    if len(df):
        last = df[(df.step == df.step.max()) & (df.measure == "acc_drop") & (df.method == "projection")]
        top = last.sort_values("value", ascending=False).head(8)
        print("largest projection-ablation accuracy drops at the last checkpoint (vs random directions):")
        print(top[["feature", "site", "position", "value", "random_mean", "random_std"]].to_string(index=False))
    return 0


def add_probe_args(p) -> None:
    p.add_argument("--n-train", type=int, default=2048, help="probe-set examples for fitting (default 2048)")
    p.add_argument("--n-test", type=int, default=512, help="held-out probe-set examples (default 512)")
    p.add_argument("--sites", help="comma-separated site names (default: residual stream, attn and MLP outputs)")
    p.add_argument("--features", help="comma-separated features (default: all the task labels)")
    p.add_argument("--C", type=float, default=100.0, help="inverse L2 strength, sklearn's convention (default 100)")


def _llc_settings(args) -> dict:
    keys = ("chains", "draws", "burn_in", "steps_between_draws", "epsilon", "nbeta", "gamma", "batch_size",
            "sampler", "seed", "n_data", "eval_size")
    s = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "params", None):
        s["params"] = _csv_list(args.params)
    s["device"] = args.device
    return s


def cmd_llc(args) -> int:
    from .llc import compute_llc
    run = _run_dir(args.run)
    with make_cli_executor(args, run) as ex:
        df = compute_llc(run, settings=_llc_settings(args), checkpoints=parse_steps(args.checkpoints),
                         executor=ex, progress=not args.quiet)
    print(f"settings from {df.attrs.get('settings_source')}: "
          + ", ".join(f"{k}={df.attrs['settings'][k]}" for k in ("epsilon", "nbeta", "gamma", "chains", "draws",
                                                                  "burn_in", "batch_size", "sampler")))
    if len(df):
        cols = [c for c in ("step", "value", "stderr", "valid", "rhat", "drift") if c in df.columns]
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for w in df.attrs.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {run / 'llc.csv'} ({df.attrs.get('summary', '')})")
    if df.attrs.get("failures"):
        for f in df.attrs["failures"]:
            print(f"failed: {f}", file=sys.stderr)
        print("finished checkpoints are saved; rerun the same command to retry only the failed ones",
              file=sys.stderr)
        return 1
    return 0


def _floats(text):
    return parse_list(text, float, "comma-separated numbers, e.g. 1e-5,1e-4,1e-3")


def cmd_calibrate(args) -> int:
    from .llc import calibrate_run
    run = _run_dir(args.run)
    s = _llc_settings(args)
    for k in ("epsilon", "nbeta", "gamma"):
        s.pop(k, None)
    with make_cli_executor(args, run) as ex:
        cal = calibrate_run(run, steps=parse_steps(args.checkpoints), epsilons=_floats(args.epsilons),
                            nbetas=_floats(args.nbetas), gammas=_floats(args.gammas), settings=s,
                            executor=ex, progress=not args.quiet)
    cols = [c for c in ("step", "epsilon", "nbeta", "gamma", "llc_mean", "llc_std", "valid", "drift", "rhat",
                        "failed_chains", "usable") if c in cal.sweep.columns]
    print(cal.sweep[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("chosen: " + ", ".join(f"{k}={cal.choice[k]}" for k in ("epsilon", "nbeta", "gamma")))
    for w in cal.warnings or []:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {run / 'calibration.json'} (used by `llc-watch llc` unless overridden) and calibration_sweep.csv")
    return 0


def add_llc_args(p, sampler_point: bool = True) -> None:
    g = p.add_argument_group("SGLD settings (default: the run's calibration.json, else the built-in defaults)")
    if sampler_point:
        g.add_argument("--epsilon", type=float, help="SGLD step size")
        g.add_argument("--nbeta", type=float, help="inverse temperature n*beta (default n / log n)")
        g.add_argument("--gamma", type=float, help="localisation strength")
    g.add_argument("--chains", type=int, help="SGLD chains")
    g.add_argument("--draws", type=int, help="draws per chain after burn-in")
    g.add_argument("--burn-in", dest="burn_in", type=int, help="steps discarded before the draws")
    g.add_argument("--steps-between-draws", dest="steps_between_draws", type=int, help="thinning")
    g.add_argument("--batch-size", dest="batch_size", type=int, help="minibatch size for SGLD gradients")
    g.add_argument("--sampler", choices=["sgld", "rmsprop_sgld"], help="update rule")
    g.add_argument("--seed", type=int, help="sampler seed")
    g.add_argument("--n-data", dest="n_data", type=int, help="examples for runs trained on fresh samples")
    g.add_argument("--eval-size", dest="eval_size", type=int, help="examples for L_n(w*) (default all)")
    g.add_argument("--params", help="weight-restricted LLC: comma-separated names/globs or head:L.H")


def cmd_pipeline(args) -> int:
    from .cli import load_config
    from .pipeline import PipelineSettings, run_pipeline
    cfg = load_config(args)
    out = Path(args.out or f"runs/{args.preset or Path(args.config).stem}")
    settings = PipelineSettings.quick() if args.quick else PipelineSettings.demo()
    if args.analysis_checkpoints is not None:
        settings.analysis_checkpoints = args.analysis_checkpoints
    if args.workers is not None:
        settings.workers = args.workers
    path = run_pipeline(cfg, out, settings, progress=not args.quiet)
    print(f"report: {path.resolve()}")
    return 0


def cmd_stages(args) -> int:
    from .stages import stage_map
    sm = stage_map(_run_dir(args.run), tolerance=args.tolerance, resamples=args.resamples, save=True)
    print(sm.summary())
    print(f"wrote {Path(args.run) / 'stages.csv'}, boundaries.csv, stage_map.json")
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .stages import stage_map
    run = _run_dir(args.run)
    sm = stage_map(run, save=True)
    path = write_report(run, out_path=args.out, stage_map=sm)
    for w in sm.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"report: {path.resolve()}")
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("calibrate", help="sweep SGLD step size x n*beta (x gamma) and save a choice",
                       description="Sweep epsilon x n*beta (x gamma) on a few checkpoints (default: the middle and "
                                   "last), mark each cell stable or not (failed chains, drift after burn-in, "
                                   "split-R-hat), choose by the documented rule and save calibration.json, which "
                                   "`llc-watch llc` then uses.")
    add_job_args(p)
    p.add_argument("--epsilons", help="comma-separated step sizes (default 1e-5,3e-5,1e-4,3e-4,1e-3)")
    p.add_argument("--nbetas", help="comma-separated n*beta values (default n / log n)")
    p.add_argument("--gammas", help="comma-separated localisation strengths (default 100)")
    add_llc_args(p, sampler_point=False)
    p.set_defaults(fn=cmd_calibrate)

    p = sub.add_parser("llc", help="estimate the local learning coefficient at every checkpoint",
                       description="Estimate the LLC at every checkpoint with localised SGLD, chains batched. "
                                   "Resumable: finished checkpoints are skipped; changed settings are stored beside "
                                   "the old ones. Writes llc.csv and prints a warning for every estimate that "
                                   "cannot be trusted.")
    add_job_args(p)
    add_llc_args(p)
    p.set_defaults(fn=cmd_llc)

    p = sub.add_parser("probe", help="linear probes for the task's features at every checkpoint",
                       description="Fit linear probes for every task feature at every checkpoint, per layer, site "
                                   "and position, with controls (majority class, shuffled labels, step 0); "
                                   "classify each feature as quiet or loud. Writes probes.csv and probes_quiet.csv "
                                   "(and fourier.csv for modular addition).")
    add_job_args(p)
    add_probe_args(p)
    p.add_argument("--pooled", action="store_true", help="one probe per (feature, site) over all positions")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="balanced accuracy at which a feature counts as formed (default 0.9)")
    p.add_argument("--fourier", action="store_true", help="also compute Fourier measures (automatic for modular addition)")
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("ablate", help="ablate probe directions at every checkpoint, against random directions",
                       description="Project activations onto each best probe's hyperplane (and mean-ablate along its "
                                   "normal) at every checkpoint; compare with random unit directions at the same "
                                   "site. Writes ablations.csv.")
    add_job_args(p)
    add_probe_args(p)
    p.add_argument("--n-random", type=int, default=32, help="random directions per site and position (default 32)")
    p.add_argument("--random-eval", type=int, default=128,
                   help="held-out examples the random control runs on (default 128; 0 = all)")
    p.set_defaults(fn=cmd_ablate)

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
    p.add_argument("--out", help="HTML file (default RUN/report.html)")
    p.set_defaults(fn=cmd_report)

    from .cli import add_run_config_args
    p = sub.add_parser("pipeline", help="train, calibrate, LLC, probes, ablations, stages and report in one go",
                       description="Run the whole path on a preset or config: train, calibrate SGLD, LLC, probes, "
                                   "ablations (Fourier measures for modular addition), stages, report. Each step "
                                   "resumes, so a second run only does what is missing.")
    add_run_config_args(p)
    p.add_argument("--out", help="run folder (default runs/PRESET)")
    p.add_argument("--quick", action="store_true", help="tiny analysis settings (seconds per step), for a smoke test")
    p.add_argument("--analysis-checkpoints", type=int,
                   help="probe and ablate this many log-spaced checkpoints (0 = all; demo default 16)")
    p.add_argument("--workers", type=int, help="analysis processes (demo default 2: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_pipeline)
