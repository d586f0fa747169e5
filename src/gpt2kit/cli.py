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


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model folder, or a name in the local Hugging Face cache")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _info(args: argparse.Namespace) -> int:
    import json

    from gpt2kit import hub
    from gpt2kit.config import GPT2Config
    from gpt2kit.model.weights import inspect_checkpoint

    folder = hub.find_model_dir(args.model, files=("config.json", "model.safetensors"))
    config = GPT2Config.from_pretrained(folder)
    summary = inspect_checkpoint(folder)
    summary["config"] = config.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    c = config
    print(f"model       {summary['path']}")
    print(f"class       {', '.join(c.architectures or ['GPT2Model'])}")
    print(
        f"shape       {c.n_layer} layers x {c.n_embd} wide, {c.n_head} heads, MLP {c.inner_dim}, "
        f"context {c.n_positions}, vocabulary {c.vocab_size}"
    )
    print(f"parameters  {summary['num_parameters']:,} ({summary['num_parameters'] / 1e6:.1f} M)")
    print(f"dtype       {', '.join(f'{k} ({n} tensors)' for k, n in summary['dtypes'].items())}")
    for f in summary["weight_files"]:
        print(f"file        {f['name']}  {f['bytes'] / 2**20:.1f} MiB")
    if summary["other_files"]:
        print(f"also        {', '.join(summary['other_files'])}")
    print(
        f"activation  {c.activation_function}; dropout resid/embd/attn {c.resid_pdrop}/{c.embd_pdrop}/{c.attn_pdrop}"
    )
    return 0


def _commands() -> dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
]:
    """name -> (help, declare arguments, run)."""
    return {
        "info": ("show a model folder's config, parameter count, files and dtype", _info_args, _info),
    }


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
