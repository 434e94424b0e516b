"""The ``xlstm`` command line: one entry point, one subcommand per job.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module sets
``func`` on its parser. Listed in ``_SUBCOMMAND_MODULES`` in the order ``--help`` shows them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import xlstm_torch
from xlstm_torch.allocator import tune_cpu_allocator

_SUBCOMMAND_MODULES = ["xlstm_torch.training.cli", "xlstm_torch.training.tokenizer_cli", "xlstm_torch.generate_cli",
                       "xlstm_torch.demo", "xlstm_torch.experiments.cli"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlstm", description="xLSTM in PyTorch: ops, models, training.")
    parser.add_argument("--version", action="version", version=f"xlstm-torch {xlstm_torch.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # This process is ours: keep freed tensor memory for the next step (xlstm_torch/allocator.py).
    tune_cpu_allocator()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
