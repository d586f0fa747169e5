"""The `gpt2kit` command: each subcommand parses its arguments and calls one library function.

Errors a user can fix (a bad value, a missing file) print one line naming the problem and exit 2;
only real bugs show a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

# Each subcommand is two functions: `_NAME_args(parser)` declares its options, `_NAME(args)` runs it by
# calling the library and returns the exit code. COMMANDS below lists them in help order.

# --- tokenize ---------------------------------------------------------------------------------------------
# (filled in by the tokenizer work)

# --- info -------------------------------------------------------------------------------------------------
# (filled in by the model work)


def _commands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]]:
    """name -> (help, declare arguments, run)."""
    return {}


def build_parser() -> argparse.ArgumentParser:
    from gpt2kit import __version__

    parser = argparse.ArgumentParser(
        prog="gpt2kit", description="GPT-2 features, generation, fine-tuning and serving on PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"gpt2kit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in _commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args._run(args) or 0
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"gpt2kit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt2kit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gpt2kit tokenize ... | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
