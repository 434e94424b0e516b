"""The ``xlstm`` console script: help, version, and the demo subcommand."""

from __future__ import annotations

import subprocess
import sys

import pytest

import xlstm_torch
from xlstm_torch.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert xlstm_torch.__version__ in capsys.readouterr().out


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


def test_demo_runs_and_checks_the_op(capsys):
    assert main(["demo", "--seq-len", "256"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out
    err = float(out.split("max abs diff ")[1].split()[0])
    assert err < 1e-10


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "xlstm_torch.cli", "--help"], capture_output=True, text=True, check=True)
    assert "xlstm" in out.stdout
