"""The `ebr` command line: every subcommand documents its options; bad input is an error."""
import subprocess
import sys

import pytest

from ebr.cli import COMMANDS, build_parser, main


def test_every_command_has_help(capsys):
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: ebr {name}" in out


def test_every_option_is_explained():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"ebr {name}: option {action.option_strings or action.dest} has no help"


def test_unknown_option_is_rejected(capsys):
    with pytest.raises(SystemExit) as e:
        main(["synth", "--out", "unused", "--no-such-option"])
    assert e.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "ebr", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout
