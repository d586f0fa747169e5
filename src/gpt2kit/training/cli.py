"""`gpt2kit train` and `gpt2kit eval`: arguments and entry points. Imports nothing heavy at parse time."""

from __future__ import annotations

import argparse


def train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="*", help="training files")


def train(args: argparse.Namespace) -> int:
    raise NotImplementedError("gpt2kit train is being written (issue 6)")


def eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model folder or name")


def eval_command(args: argparse.Namespace) -> int:
    raise NotImplementedError("gpt2kit eval is being written (issue 6)")
