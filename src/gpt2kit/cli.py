"""The `gpt2kit` command: each subcommand parses its arguments and calls one library function.

Errors a user can fix (a bad value, a missing file) print one line naming the problem and exit 2;
only real bugs show a traceback.
"""

from __future__ import annotations

import argparse
import codecs
import errno
import logging
import math
import os
import re
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


# --- generate ---------------------------------------------------------------------------------------------


# generation.search.COMPILE_MODES, repeated here so that --help imports no torch (a test keeps them equal)
_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="*", help="prompt text(s); or use --input, or pipe prompts on stdin")
    p.add_argument("--model", required=True, help="a model folder (with its tokenizer files)")
    p.add_argument("--input", help="a file with one prompt per line ('-' for stdin)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per completion")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument(
        "--temperature", type=float, help="with --do-sample: below 1 sharper, above 1 flatter (default: 1.0)"
    )
    p.add_argument(
        "--top-k",
        type=int,
        help="with --do-sample: sample among the K likeliest tokens (default: 50); with --penalty-alpha: the "
        "candidates compared",
    )
    p.add_argument(
        "--top-p",
        type=float,
        help="with --do-sample: nucleus sampling, among the likeliest tokens whose probabilities sum to P "
        "(default: 1.0, off)",
    )
    p.add_argument(
        "--min-p",
        type=float,
        help="with --do-sample: drop tokens less likely than P times the likeliest one (default: off)",
    )
    p.add_argument(
        "--typical-p", type=float, help="with --do-sample: typical sampling's mass (default: 1.0, off)"
    )
    p.add_argument(
        "--repetition-penalty",
        type=float,
        help="scale down tokens already in the text: above 1 repeats less, e.g. 1.3 (default: 1.0, off)",
    )
    p.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        help="never repeat a run of this many tokens, e.g. 3 (default: 0, off)",
    )
    p.add_argument("--num-beams", type=int, help="beam search with N beams (default: 1, no beam search)")
    p.add_argument(
        "--length-penalty",
        type=float,
        help="beam search: a beam's score is divided by its length to this power; above 0 favours longer "
        "(default: 1.0)",
    )
    p.add_argument(
        "--num-return-sequences",
        type=int,
        help="completions per prompt (with --do-sample, or up to --num-beams; default: 1)",
    )
    p.add_argument(
        "--penalty-alpha",
        type=float,
        help="contrastive search (greedy, with --top-k > 1; 0.6 and 4 are typical)",
    )
    p.add_argument("--num-beam-groups", type=int, help="group (diverse) beam search: beams split into groups")
    p.add_argument(
        "--diversity-penalty", type=float, help="with --num-beam-groups: penalty for repeating a group"
    )
    p.add_argument(
        "--force-words",
        action="append",
        default=[],
        help="constrained beam search: this word or phrase must appear (repeatable; encoded with a leading "
        "space, as inside a sentence; needs --num-beams > 1)",
    )
    p.add_argument("--prompt-lookup", type=int, metavar="N", help="prompt lookup decoding: propose N tokens")
    p.add_argument("--assistant-model", metavar="DIR", help="assisted decoding with this draft model")
    p.add_argument(
        "--stop", action="append", default=[], help="stop at this string (repeatable; not printed)"
    )
    p.add_argument("--seed", type=int, help="seed for sampling, for reproducible output")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="the model's dtype (bfloat16: half the memory; fast only where the CPU has native bf16)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "float", "packed", "int8"],
        help="auto (default): packed where oneDNN can pack them (CPU), else float; float: the exact "
        "weights as loaded (the Python API's default); packed: oneDNN-prepacked matmuls where that measured "
        "faster on this CPU; int8: the fastest int8 kernel measured here (dynamic int8 on x86), fastest "
        "of all, next tokens mostly equal (see benchmarks/RESULTS.md)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the decode step (first call costs 15-90 s on CPU)",
    )
    p.add_argument(
        "--compile-mode",
        choices=_COMPILE_MODES,
        help="the torch.compile mode (implies --compile; default: default). max-autotune on a CPU freezes "
        "the weights into the step and multiplies with inductor's own C++ GEMM kernels: the fastest "
        "float32 decoding, after minutes of compilation",
    )
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch (file input)")
    p.add_argument("--truncate-prompt", action="store_true", help="drop a too-long prompt's left part")
    p.add_argument("--json", action="store_true", help="one JSON object per completion: text, ids, logprobs")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--stream", dest="stream", action="store_true", default=None, help="print tokens as made"
    )
    mode.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="print each completion whole (default: stream on a terminal)",
    )


def _generate(args: argparse.Namespace) -> int:
    import json

    import torch

    from gpt2kit import AutoModelForCausalLM, AutoTokenizer
    from gpt2kit.generation.streaming import stream
    from gpt2kit.generation.text import complete

    options = {
        name: getattr(args, name)
        for name in (
            "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
            "no_repeat_ngram_size", "num_beams", "length_penalty", "num_return_sequences",
            "penalty_alpha", "num_beam_groups", "diversity_penalty",
        )
        if getattr(args, name) is not None
    }  # fmt: skip
    for name, value in options.items():  # argparse's float() reads "nan" and "inf" too
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise ValueError(f"--seed must be an integer in [0, 2**64), got {args.seed}")
    if args.input == "-":
        prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    elif args.input:
        with open(args.input, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    elif args.prompt:
        prompts = [" ".join(args.prompt)] if len(args.prompt) > 1 and not args.input else args.prompt
    elif not sys.stdin.isatty():
        prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    else:
        raise ValueError("give a prompt, --input FILE, or prompts on stdin")
    if not prompts:
        raise ValueError("no prompts: the input is empty")
    options.update(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample)
    _check_strategy_flags(args, options)
    if args.prompt_lookup is not None:
        options["prompt_lookup_num_tokens"] = args.prompt_lookup
    if args.truncate_prompt:
        options["truncate_prompt"] = True
    if args.seed is not None:
        torch.manual_seed(args.seed)
    from gpt2kit.model.inference import convert_weights, load_dtype, resolve_weights

    # Packing only changes the order the products sum in (logits equal to ~1e-6), and it is what makes a
    # CPU decode step fast; --compile traces the float weights instead.
    device = args.device or "cpu"
    compile = args.compile_mode or ("default" if args.compile else None)
    args.weights = resolve_weights(args.weights, device, compile=compile is not None)
    if compile is not None:
        if args.weights == "packed":
            flag = "--compile-mode" if args.compile_mode else "--compile"
            raise ValueError(f"{flag} cannot trace --weights packed; choose one of them")
        options["compile"] = compile
    from gpt2kit.progress import loading

    with loading(args.model):
        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(
            args.model, dtype=load_dtype(args.weights, args.dtype, device)
        )
        model.to(device)
    if args.force_words:
        options["force_words_ids"] = [tok.encode(" " + w.strip()) for w in args.force_words]
    if args.assistant_model:
        with loading(args.assistant_model):
            draft = AutoModelForCausalLM.from_pretrained(args.assistant_model, dtype=model.dtype)
        options["assistant_model"] = draft.to(device).eval()
    # the rows a decode step multiplies: the prompts of one batch (times the sequences each returns)
    rows = min(args.batch_size, len(prompts)) * options.get("num_return_sequences", 1)
    convert_weights(model.eval(), args.weights, batch_size=max(1, rows))
    streaming = args.stream
    if streaming is None:  # stream by default on a terminal, when it makes sense
        streaming = sys.stdout.isatty() and not args.json and options.get("num_beams", 1) == 1
    if args.prompt_lookup is not None or args.assistant_model:
        args.batch_size = 1  # speculative decoding verifies one sequence at a time
    if streaming and (
        args.json or options.get("num_beams", 1) > 1 or options.get("num_return_sequences", 1) > 1
    ):
        raise ValueError("--stream works with one sequence per prompt, no beams and no --json")
    if streaming:
        for prompt in prompts:
            sys.stdout.write(prompt)
            for piece in stream(model, tok, prompt, stop_strings=args.stop, **options):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        return 0
    results = complete(model, tok, prompts, args.batch_size, args.stop, progress=len(prompts) > 1, **options)
    for c in results:
        if args.json:
            row = dict(prompt=c.prompt, completion=c.text, prompt_ids=c.prompt_ids, ids=c.ids,
                       logprobs=c.logprobs, finish_reason=c.finish_reason)  # fmt: skip
            if c.score is not None:
                row["score"] = c.score
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(c.prompt + c.text)
    return 0


def _check_strategy_flags(args: argparse.Namespace, options: dict) -> None:
    """Refuse flag combinations whose strategy would ignore a flag (the library refuses the rest)."""
    beams = options.get("num_beams", 1) > 1
    if args.penalty_alpha is not None and (args.do_sample or beams):
        raise ValueError(
            "--penalty-alpha runs contrastive search, a greedy method: drop --do-sample and --num-beams"
        )
    if args.penalty_alpha is not None and args.penalty_alpha > 0 and options.get("top_k", 50) <= 1:
        raise ValueError("--penalty-alpha compares --top-k candidates: pass --top-k 4 (or more than 1)")
    if (args.num_beam_groups is not None or args.diversity_penalty is not None) and not beams:
        raise ValueError("--num-beam-groups and --diversity-penalty split beams: pass --num-beams too")
    if args.num_beam_groups is not None and args.num_beam_groups > 1 and args.diversity_penalty is None:
        raise ValueError(
            "--num-beam-groups needs --diversity-penalty > 0 (1.0 is typical), or the groups are the same"
        )
    if args.force_words and not beams:
        raise ValueError("--force-words runs constrained beam search: pass --num-beams 4 (or more than 1)")
    speculative = [
        f
        for f, on in (("--prompt-lookup", args.prompt_lookup), ("--assistant-model", args.assistant_model))
        if on
    ]
    if len(speculative) == 2:
        raise ValueError("--prompt-lookup and --assistant-model are two ways to propose tokens: choose one")
    if speculative and (args.do_sample or beams or args.penalty_alpha is not None):
        raise ValueError(
            f"{speculative[0]} speeds up greedy search only: drop --do-sample, --num-beams, --penalty-alpha"
        )


# --- embed ------------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an int or a comma-separated list of ints, got {text!r}"
        ) from None


def _embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input", help="a .txt (a text per line), .jsonl, .csv, .tsv or .parquet file, or - for stdin"
    )
    p.add_argument("-o", "--output", required=True, help="the vectors: .npy (N x D), .parquet or .jsonl")
    p.add_argument("--model", required=True, help="a model folder, or a name in the local Hugging Face cache")
    p.add_argument(
        "--field",
        "--column",
        dest="column",
        default="text",
        help="the text's field (.jsonl) or column (default: text)",
    )
    p.add_argument(
        "--input-format",
        choices=["txt", "jsonl", "csv", "tsv", "parquet"],
        help="default: from the extension",
    )
    p.add_argument(
        "--keep", default="", help="comma-separated columns to copy into a .parquet / .jsonl output"
    )
    p.add_argument(
        "--pooling",
        default="mean",
        choices=["mean", "last", "max", "first", "none"],
        help="a text's token vectors -> one: their mean, the last or first token's, the maximum; none: every "
        "token's vector (.parquet or .jsonl output)",
    )
    p.add_argument(
        "--layer",
        type=_int_list,
        default=[-1],
        help="hidden state(s), e.g. -1 (default) or --layer=-4,-1 (concatenated)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="the model's dtype while embedding (the vectors are written as float32)",
    )
    p.add_argument("--normalize", action="store_true", help="scale each vector to unit L2 norm")
    p.add_argument("--max-length", type=int, help="tokens per model input (default: the model's context)")
    p.add_argument(
        "--long-text",
        default="truncate",
        choices=["truncate", "chunk"],
        help="texts over --max-length tokens",
    )
    p.add_argument(
        "--stride", type=int, help="with --long-text chunk: tokens between windows (default: half)"
    )
    p.add_argument("--batch-tokens", type=int, help="padded positions per batch (default: 4096 on CPU)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="go on from an interrupted run's finished chunks; a finished OUTPUT is kept only if it was made "
        "by this same run (model, input, options: OUTPUT.fingerprint.json)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUTPUT (and drop an interrupted run's finished chunks); without it or "
        "--resume, an existing OUTPUT is refused",
    )
    p.add_argument("--chunk-rows", type=int, default=1024, help="rows per resumable chunk (default: 1024)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's, one per core)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a bar on a terminal; where stderr is a file or a pipe, a plain line every 30 s (default: on)",
    )


def _embed(args: argparse.Namespace) -> int:
    from gpt2kit.embeddings import embed_file

    report = embed_file(
        args.model,
        args.input,
        args.output,
        input_format=args.input_format,
        column=args.column,
        keep=[k for k in args.keep.split(",") if k],
        resume=args.resume,
        overwrite=args.overwrite,
        chunk_rows=args.chunk_rows,
        progress=args.progress,
        layer=args.layer if len(args.layer) > 1 else args.layer[0],
        pooling=args.pooling,
        dtype=args.dtype,
        normalize=args.normalize,
        max_length=args.max_length,
        long_text=args.long_text,
        stride=args.stride,
        batch_tokens=args.batch_tokens,
        threads=args.threads,
        device=args.device,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"gpt2kit embed: {report.summary()}", file=sys.stderr)
    return 0


# --- merge ------------------------------------------------------------------------------------------------


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", help="the base model folder or name (default: the adapter's base_model_name_or_path)"
    )
    p.add_argument(
        "--adapter", required=True, help="a LoRA adapter folder (peft's format, or gpt2kit train --lora)"
    )
    p.add_argument("-o", "--output", required=True, help="the folder to write the merged model to")
    p.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
        help="the merged weights' dtype (auto: the base checkpoint's)",
    )  # fmt: skip


def _merge(args: argparse.Namespace) -> int:
    from gpt2kit.model.lora import merge_adapter
    from gpt2kit.progress import loading

    # merge_adapter loads, merges and saves in one call: the line covers the three
    with loading(f"{args.adapter} into {args.model or 'its base model'}", verb="merging"):
        out = merge_adapter(args.model, args.adapter, args.output, dtype=args.dtype)
    print(f"merged {args.adapter} into {args.model or 'its base model'}: {out}")
    return 0


# --- info -------------------------------------------------------------------------------------------------


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a model folder, or a name in the local Hugging Face cache")
    p.add_argument(
        "--hardware",
        action="store_true",
        help="the CPU's ISA and the kernels chosen for the model's shapes (--model, else GPT-2 124M's), "
        "with their measured GFLOP/s (timed once per machine, then cached)",
    )
    p.add_argument("--remeasure", action="store_true", help="with --hardware: time the kernels again")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _hardware(args: argparse.Namespace) -> int:
    import json

    import torch

    from gpt2kit.config import GPT2Config
    from gpt2kit.model import kernels
    from gpt2kit.model.inference import measure_kernels
    from gpt2kit.model.quant import dynamic_engines

    if args.model:
        from gpt2kit import hub

        config = GPT2Config.from_pretrained(hub.find_model_dir(args.model, files=("config.json",)))
    else:
        config = GPT2Config()
    hw = kernels.hardware()
    decisions = measure_kernels(config, remeasure=args.remeasure)
    summary = {
        "cpu": hw.cpu,
        "cpu_id": hw.cpu_id,
        "isa": hw.isa,
        "flags": list(hw.flags),
        "native_bf16": hw.native_bf16,
        "aten_capability": hw.aten_capability,
        "onednn_max_isa": hw.onednn_max_isa or None,
        "threads": hw.threads,
        "torch": hw.torch_version,
        "quantized_engines": dynamic_engines(),
        "cuda": hw.cuda,
        "kernel_cache": str(kernels.cache_path() or "off"),
        "kernels": decisions,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"cpu         {hw.label}")
    print(f"isa         {hw.isa}; flags {' '.join(hw.flags) or '-'}")
    print(f"bf16        {'native' if hw.native_bf16 else 'emulated (slower than float32 here)'}")
    print(f"torch       {hw.torch_version}, ATen {hw.aten_capability}, {hw.threads} threads")
    print(f"int8        quantized engines: {', '.join(dynamic_engines()) or 'none'}")
    print(f"cuda        {hw.cuda or 'none'}" + (f" ({torch.version.cuda})" if hw.cuda else ""))
    print(f"cache       {summary['kernel_cache']}")
    print(f"kernels     for {config.n_embd} wide, MLP {config.inner_dim}, vocabulary {config.vocab_size}:")
    for key, d in decisions.items():
        rates = ", ".join(f"{name} {g:.0f}" for name, g in d["gflops"].items()) or "not timed"
        print(f"  {key:<36} -> {d['choice']:<15} GFLOP/s: {rates}")
    if any(d["choice"] == "splitk-io" for d in decisions.values()):
        mb = config.vocab_size * config.n_embd * 4 / 1e6
        print(f"            splitk-io: float32 decoding keeps an (in, out) copy of the LM head ({mb:.0f} MB)")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from gpt2kit import hub

    if args.hardware:
        return _hardware(args)
    if not args.model:
        raise ValueError("gpt2kit info needs --model DIR (or --hardware for the machine's kernels)")
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
    # train / eval / serve live beside their library code; those modules import nothing heavy at parse time.
    from gpt2kit.export import cli as export_cli
    from gpt2kit.serve import cli as serve_cli
    from gpt2kit.training import cli as training_cli

    return {
        "tokenize": (
            "text, a file or stdin -> GPT-2 token ids (or tokens, counts; --decode: ids -> text)",
            _tokenize_args,
            _tokenize,
        ),  # fmt: skip
        "generate": ("continue prompts: greedy, sampling, beam search; streaming", _generate_args, _generate),
        "embed": ("texts in a file -> GPT-2 feature vectors (.npy, .parquet, .jsonl)", _embed_args, _embed),
        "train": (
            "fine-tune a model or train one from scratch on text, .jsonl or .csv (LM or classification)",
            training_cli.train_args,
            training_cli.train,
        ),
        "tune": (
            "search learning rate, schedule, layers, width, dropout, ... with Optuna (the [tune] extra)",
            training_cli.tune_args,
            training_cli.tune,
        ),
        "eval": (
            "perplexity of a model on a text file, with a sliding window",
            training_cli.eval_args,
            training_cli.eval_command,
        ),
        "serve": (
            "an OpenAI-compatible HTTP API: /v1/completions, /v1/embeddings (needs the [serve] extra)",
            serve_cli.serve_args,
            serve_cli.serve,
        ),
        "merge": (
            "fold a LoRA adapter into its base model: a full model folder transformers loads",
            _merge_args,
            _merge,
        ),
        "info": ("show a model folder's config, parameter count, files and dtype", _info_args, _info),
        "export": (
            "a model folder -> ONNX (Optimum / transformers.js layout) or GGUF (llama.cpp)",
            export_cli.export_args,
            export_cli.export,
        ),
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
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_DefaultsFormatter)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


class _DefaultsFormatter(argparse.HelpFormatter):
    """--help shows each option's default, unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        shown = default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
        if shown and "default" not in help_text:
            help_text += (" " if help_text else "") + "(default: %(default)s)"
        return help_text or None


def _check_device(device: str | None) -> None:
    """A CUDA --device on a machine without CUDA fails here, before a model load blames its file."""
    if not device or not str(device).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    index = str(device).partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        raise ValueError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
        )


# errno -> (what went wrong, how to fix it); {path} is the file the system named.
_OS_ERRORS = {
    errno.EACCES: ("cannot write to {folder} (read-only or no permission)", "choose another -o"),
    errno.EPERM: ("cannot write to {folder} (read-only or no permission)", "choose another -o"),
    errno.EROFS: ("cannot write to {folder} (a read-only file system)", "choose another -o"),
    errno.ENOSPC: ("the disk is full while writing {path}", "free space or choose another -o"),
    errno.EDQUOT: ("the disk quota is exceeded while writing {path}", "free space or choose another -o"),
    errno.EFBIG: (
        "{path} would exceed the file size limit (ulimit -f)",
        "raise the limit (ulimit -f unlimited) or write a smaller output",
    ),
    errno.ENOTDIR: ("{path} is a file where a folder is expected", "choose a folder path for -o"),
    errno.EEXIST: ("{path} already exists (a file where a folder is expected?)", "choose another -o"),
}


def os_error_message(e: OSError) -> str:
    """One line for an operating-system fault: what failed, on which path, and how to fix it."""
    path = e.filename
    if e.errno not in _OS_ERRORS or path is None:
        return str(e) if e.errno is None else f"{e.strerror or e}" + (f": {path}" if path else "")
    path = os.fspath(path)
    if e.errno in (errno.EACCES, errno.EPERM) and os.path.exists(path) and not os.access(path, os.R_OK):
        return f"cannot read {path} (no permission); fix its permissions or choose another file"
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    what, fix = _OS_ERRORS[e.errno]
    return f"{what.format(path=path, folder=folder)}; {fix}"


# Library names the command line spells otherwise, by subcommand (the rest map dest -> option by argparse).
_API_FLAGS = {
    "generate": {"prompt_lookup_num_tokens": "--prompt-lookup", "force_words_ids": "--force-words"},
    "train": {
        "max_grad_norm": "--clip",
        "early_stopping_patience": "--early-stopping",
        "metric_for_best": "--metric",
    },
}
_QUOTES = "'\""
# `tune --space` speaks TrainingConfig's own field names: its messages keep them.
_KEEP_API_NAMES = {"tune"}
# an identifier (with an optional Class. prefix) and an optional =value; not inside a path or a longer name
_API_NAME = re.compile(
    r"(?<![\w./\\-])(?:[A-Z]\w*\.)?([a-z][a-z0-9_]*)(?![\w/-]|\.\w)(?:=('[^']*'|\"[^\"]*\"|[^\s,;:)]+))?"
)


def command_parsers(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> list[argparse.ArgumentParser]:
    """The parsers that read this command line below the top one: the subcommand's, and a nested one's
    (export onnx)."""
    found = []
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, sub.dest, None) if sub is not None else None
        if sub is None or chosen not in sub.choices:
            return found
        parser = sub.choices[chosen]
        found.append(parser)


def cli_wording(message: str, parsers: Sequence[argparse.ArgumentParser], command: str | None = None) -> str:
    """A library message in the command line's words: `max_new_tokens` -> `--max-new-tokens`,
    `truncate_prompt=True` -> `--truncate-prompt`, `long_text='chunk'` -> `--long-text chunk`.

    Only names that are an option's dest and either hold an underscore or come as name=value are changed,
    so ordinary words stay; a message that already names an option is left as it is."""
    if command in _KEEP_API_NAMES or re.search(r"(?<![\w-])--[a-z]", message):
        return message
    actions: dict[str, argparse.Action] = {}
    for p in parsers:
        for a in p._actions:
            if a.option_strings and a.dest not in actions and a.dest != "help":
                actions[a.dest] = a
    aliases = _API_FLAGS.get(command or "", {})

    def flag_for(m: re.Match) -> str:
        name, value = m[1], m[2]
        action = actions.get(name)
        if (action is None and name not in aliases) or ("_" not in name and value is None):
            return m[0]
        if action is None or action.nargs != 0:
            flag = aliases.get(name) or _long_option(action)
            return flag if value is None else f"{flag} {value.strip(_QUOTES)}"
        # an on/off flag: name=True is the flag, name=False its --no- form, or the flag "off"
        flags = action.option_strings
        if value == "False":
            negative = [f for f in flags if f.startswith("--no-")]
            return negative[0] if negative else f"{_long_option(action)} off"
        return _long_option(action) if value in (None, "True") else m[0]

    return _API_NAME.sub(flag_for, message)


def _long_option(action: argparse.Action) -> str:
    return next((f for f in action.option_strings if f.startswith("--")), action.option_strings[0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    from gpt2kit.progress import announce_loads

    try:
        _check_device(getattr(args, "device", None))
        with announce_loads():
            return args._run(args) or 0
    except BrokenPipeError:  # `gpt2kit tokenize ... | head`
        return 0
    except (ValueError, TypeError, OSError) as e:
        if isinstance(e, OSError):
            message = os_error_message(e)
        else:  # the library names its arguments; say which option to change
            message = cli_wording(str(e), command_parsers(parser, args), args.command)
        # One line, whatever the library's message holds (torch's C++ errors span several).
        print(f"gpt2kit {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt2kit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
