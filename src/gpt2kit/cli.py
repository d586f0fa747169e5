"""The `gpt2kit` command: each subcommand parses its arguments and calls one library function.

Errors a user can fix (a bad value, a missing file) print one line naming the problem and exit 2;
only real bugs show a traceback.
"""

from __future__ import annotations

import argparse
import codecs
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence

# Each subcommand is two functions: `_NAME_args(parser)` declares its options, `_NAME(args)` runs it by
# calling the library and returns the exit code. COMMANDS below lists them in help order.

# --- tokenize ---------------------------------------------------------------------------------------------

# Files at least this big show a progress bar (on a terminal).
_PROGRESS_MIN_BYTES = 1 << 20
_BLOCK_BYTES = 1 << 20


def _tokenize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="?", help="the text (default: --file, else standard input)")
    p.add_argument("-f", "--file", help="read the text from this file ('-' for standard input)")
    p.add_argument(
        "--tokenizer", default="gpt2", help="a GPT-2 name or a tokenizer folder (default: gpt2, bundled)"
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--tokens", action="store_true", help="print token strings (Ġ is a space, Ċ a newline)")
    what.add_argument("--count", action="store_true", help="print the number of tokens")
    what.add_argument("--decode", action="store_true", help="read token ids (integers) and print their text")
    p.add_argument(
        "--lines",
        action="store_true",
        help="each input line on its own (no newline): one output line per line",
    )
    p.add_argument(
        "--slow", action="store_true", help="use the pure-Python GPT2Tokenizer instead of tiktoken"
    )


def _read_blocks(args: argparse.Namespace) -> Iterator[str]:
    """The input as text blocks: the TEXT argument, or a file / stdin read in 1 MiB blocks with progress."""
    if args.text is not None:
        if args.file is not None:
            raise ValueError("give the text either as an argument or with --file, not both")
        yield args.text
        return
    from tqdm import tqdm

    path = args.file or "-"
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    stream = stdin if path == "-" else open(path, "rb")  # noqa: SIM115 (closed below)
    size = None if path == "-" else os.path.getsize(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    show = size is not None and size >= _PROGRESS_MIN_BYTES
    try:
        with tqdm(
            total=size, unit="B", unit_scale=True, disable=None if show else True, file=sys.stderr
        ) as bar:
            while True:
                block = stream.read(_BLOCK_BYTES)
                bar.update(len(block))
                try:
                    yield block if isinstance(block, str) else decoder.decode(block, final=not block)
                except UnicodeDecodeError as e:
                    where = "standard input" if path == "-" else path
                    raise ValueError(f"{where} is not UTF-8 text ({e.reason} near byte {bar.n})") from None
                if not block:
                    break
    finally:
        if stream is not stdin:
            stream.close()


def _lines(blocks: Iterator[str]) -> Iterator[str]:
    """Lines without their line ends, from text blocks."""
    rest = ""
    for block in blocks:
        rest += block
        *complete, rest = rest.split("\n")
        yield from (line.removesuffix("\r") for line in complete)
    if rest:
        yield rest.removesuffix("\r")


def _parse_ids(text: str, where: str) -> list[int]:
    try:
        return [int(t) for t in text.split()]
    except ValueError:
        bad = next(t for t in text.split() if not t.lstrip("-").isdigit())
        raise ValueError(f"--decode reads token ids (integers), got {bad!r} in {where}") from None


def _tokenize(args: argparse.Namespace) -> int:
    from gpt2kit.tokenizer import GPT2Tokenizer, GPT2TokenizerFast

    tok = (GPT2Tokenizer if args.slow else GPT2TokenizerFast).from_pretrained(args.tokenizer)
    out = sys.stdout
    blocks = _read_blocks(args)

    def render(ids: list[int]) -> str:
        return " ".join(tok.convert_ids_to_tokens(ids) if args.tokens else map(str, ids))

    if args.lines:
        batch: list[str] = []

        def flush() -> None:
            if args.decode:
                results = [tok.decode(_parse_ids(line, "a line")) for line in batch]
            else:
                encoded = tok(batch, return_attention_mask=False, verbose=False)["input_ids"]
                results = [str(len(ids)) if args.count else render(ids) for ids in encoded]
            out.write("".join(r + "\n" for r in results))
            batch.clear()

        for line in _lines(blocks):
            batch.append(line)
            if len(batch) == 1000:
                flush()
        flush()
    elif args.decode:
        ids = [i for n, block in enumerate(_whole_tokens(blocks)) for i in _parse_ids(block, f"block {n}")]
        out.write(tok.decode(ids))
    else:
        total, first = 0, True
        for ids in tok.iter_encode(blocks):
            total += len(ids)
            if not args.count and ids:
                out.write(("" if first else " ") + render(ids))
                first = False
        out.write(f"{total}\n" if args.count else "\n")
    out.flush()
    return 0


def _whole_tokens(blocks: Iterator[str]) -> Iterator[str]:
    """Blocks cut at whitespace, so that no number is split between two of them."""
    rest = ""
    for block in blocks:
        rest += block
        cut = max(rest.rfind(" "), rest.rfind("\n"))
        if cut >= 0:
            yield rest[:cut]
            rest = rest[cut:]
    yield rest


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
        "tokenize": (
            "text, a file or stdin -> GPT-2 token ids (or tokens, counts; --decode: ids -> text)",
            _tokenize_args,
            _tokenize,
        ),  # fmt: skip
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
