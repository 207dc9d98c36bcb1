"""The command line: help everywhere, one-line errors with exit status 2, never a traceback."""
import subprocess
import sys

import pytest

from llc_watch.cli import build_parser, main

SUBCOMMANDS = ["tasks", "presets", "train", "calibrate", "llc", "probe", "ablate", "fourier", "stages", "report",
               "pipeline"]


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert set(SUBCOMMANDS) <= names
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage: llc-watch " + name in out
        description = out.split("\n\n")[1]  # the paragraph after usage says what it does
        assert len(description) > 40 and not description.startswith(("options", "positional")), name


def test_tasks_lists_features(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "addition" in out and "carry_in (binary)" in out and "modular_addition" in out


@pytest.mark.parametrize("argv,words", [
    (["train", "--preset", "nope"], ["unknown preset 'nope'"]),
    (["train", "--preset", "addition-tiny", "--set", "train.lr=-1"], ["train.lr"]),
    (["train", "--preset", "addition-tiny", "--set", "lr"], ["section.key=value"]),
    (["train", "--preset", "addition-tiny", "--set", "train.lr=inf"], ["train.lr=inf: must be a finite number"]),
    (["train"], ["--preset"]),
    (["train", "--config", "/no/such.toml"], ["does not exist"]),
    (["llc", "/no/such/run"], ["not an llc_watch run folder", "llc-watch train"]),
    (["probe", "/no/such/run"], ["not an llc_watch run folder"]),
    (["stages", "/no/such/run"], ["not an llc_watch run folder"]),
])
def test_user_errors_are_one_line_with_status_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err


def test_bad_argument_types_are_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["llc", "run", "--chains", "many"])
    assert e.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_bad_checkpoint_list_and_missing_analysis(tiny_run, capsys):
    assert main(["probe", str(tiny_run.dir), "--checkpoints", "1,x"]) == 2
    assert "comma-separated steps" in capsys.readouterr().err
    assert main(["probe", str(tiny_run.dir), "--checkpoints", "7777"]) == 2
    assert "no checkpoint at step(s) [7777]" in capsys.readouterr().err


def test_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "llc_watch.cli", "train", "--preset", "addition-tiny",
                           "--set", "model.d_model=30", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "n_heads" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_analysis_options_come_from_the_settings_dataclasses(capsys):
    """Every field of every registered analysis's Settings is an option, its default shown from the dataclass."""
    import dataclasses
    from llc_watch.analyses import REGISTRY
    for a in REGISTRY.values():
        with pytest.raises(SystemExit):
            main([getattr(a, "command", a.name), "--help"])
        out = " ".join(capsys.readouterr().out.split())
        for f in dataclasses.fields(a.Settings):
            if f.name in getattr(a, "cli_hidden", ()):
                continue
            assert "--" + f.name.replace("_", "-") in out, (a.name, f.name)
    with pytest.raises(SystemExit):
        main(["llc", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--chains CHAINS SGLD chains (sampled at once) (default 4)" in out


@pytest.mark.parametrize("argv,words", [
    (["llc", "RUN", "--chains", "0"], "chains=0: must be >= 1"),
    (["llc", "RUN", "--epsilon", "nan"], "epsilon=nan: must be a finite number"),
    (["llc", "RUN", "--epsilon", "-1"], "epsilon=-1.0: must be > 0"),
    (["llc", "RUN", "--nbeta", "-1"], "nbeta=-1.0: must be > 0"),
    (["llc", "RUN", "--batch-size", "0"], "batch_size=0"),
    (["llc", "RUN", "--eval-size", "0"], "eval_size=0"),
    (["probe", "RUN", "--C", "-1"], "C=-1.0: must be > 0"),
    (["probe", "RUN", "--threshold", "2"], "threshold=2.0: must be between 0.0 and 1.0"),
    (["probe", "RUN", "--features", "nosuch"], "features=nosuch: not features of task 'addition'"),
    (["calibrate", "RUN", "--epsilons", "1e-4,-3"], "epsilons"),
    # method auto (the default) runs calibrate_llc: what it cannot use is refused, never ignored
    (["calibrate", "RUN", "--draws", "300"], "draws=300: method auto chooses the estimate's draws"),
    (["calibrate", "RUN", "--gammas", "1,10"], "method auto takes one value"),
    (["calibrate", "RUN", "--observe-size", "64", "--precision", "bf16"],
     "does not use observe_size, precision: leave them unset, or use method grid"),
    (["calibrate", "RUN", "--sampler", "hmc"], "sampler='hmc': must be one of auto, sgld, rmsprop_sgld"),
    (["calibrate", "RUN", "--method", "grid", "--backend", "devinterp"], "a calibration does not use backend"),
    (["calibrate", "RUN", "--method", "grid", "--all-checks"], "all_checks=True: runs more of method auto's checks"),
    (["calibrate", "RUN", "--no-checks", "--all-checks"], "it needs method auto and checks on"),
    (["llc", "RUN", "--backend", "devinterp", "--observe-size", "64"],
     "the devinterp backend does not use observe_size"),
])
def test_bad_settings_exit_2_with_one_line_before_any_work(tiny_run, argv, words, capsys):
    argv = [str(tiny_run.dir) if a == "RUN" else a for a in argv]
    before = sorted(p.name for p in tiny_run.dir.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tiny_run.dir.iterdir()) == before      # nothing written


def test_report_out_never_writes_into_the_run(tmp_path, capsys):
    from tests.synthetic_tables import write_synthetic_run
    run = write_synthetic_run(tmp_path / "run")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    assert main(["report", str(run), "--out", str(tmp_path / "elsewhere.html")]) == 0
    assert (tmp_path / "elsewhere.html").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    assert main(["report", str(run), "--out", str(tmp_path)]) == 2          # a folder: one line, exit 2
    assert "is a folder" in capsys.readouterr().err
