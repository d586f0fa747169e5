"""`gpt2kit serve` arguments and entry point. Imports nothing heavy until the command runs."""

from __future__ import annotations

import argparse


def serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model folder or name")


def serve(args: argparse.Namespace) -> int:
    raise NotImplementedError("gpt2kit serve is being written (issue 7)")
