"""The command line: help everywhere, one-line errors with exit status 2, never a traceback."""
import subprocess
import sys

import pytest

from llc_watch.cli import build_parser, main

SUBCOMMANDS = ["tasks", "presets", "train", "calibrate", "llc", "probe", "ablate", "stages", "report", "pipeline"]


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
