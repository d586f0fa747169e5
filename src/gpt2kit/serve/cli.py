"""`gpt2kit serve` arguments and entry point. Imports nothing heavy until the command runs."""

from __future__ import annotations

import argparse
import sys


def serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model folder (with its tokenizer), or a cached name")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every request (default: $GPT2KIT_API_KEY, else none)",
    )
    p.add_argument(
        "--served-model-name",
        help="the model id clients send (default: --model as given; its folder name works too)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="the model's dtype (bfloat16: half the memory; fast only where the CPU has native bf16)",
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cpu)")
    p.add_argument(
        "--weights",
        default="auto",
        choices=["auto", "float", "packed", "int8"],
        help="auto (default): oneDNN-packed on CPU where that measured faster (logits equal to ~1e-6), "
        "else float; int8: the fastest int8 kernel measured on this CPU, next tokens mostly equal",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    p.add_argument(
        "--max-batch", type=int, default=8, help="sequences decoded together (default: 8); also the largest n"
    )
    p.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting beyond the batch before 429 (default: 64)"
    )
    p.add_argument(
        "--prefill-tokens",
        type=int,
        default=2048,
        help="prompt tokens prefilled per engine step (default: 2048)",
    )
    p.add_argument(
        "--embed-tokens",
        type=int,
        default=4096,
        help="embedding tokens merged per engine step (default: 4096)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=4 << 20,
        help="largest request body (default: 4 MiB; 413 past it)",
    )
    p.add_argument(
        "--max-stop",
        type=int,
        default=64,
        help="most stop strings per request (default: 64; OpenAI allows 4, vLLM any number)",
    )
    p.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template for /v1/chat/completions, as transformers and vLLM use (default: the "
        "tokenizer folder's own chat_template, if any; GPT-2 has none)",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="the server's log (warning and above leave out the startup line and each request's)",
    )


def serve(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f'the server needs the [serve] extra ({e.name} is missing): pip install "gpt2kit[serve]"'
        ) from None
    from gpt2kit.serve import app

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")

    def on_loaded(engine) -> None:
        if args.log_level in ("info", "debug"):
            print(startup_line(args, engine), file=sys.stderr, flush=True)

    app.run(
        args.model,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        served_model_name=args.served_model_name,
        max_body=args.max_body_bytes,
        log_level=args.log_level,
        max_stop=args.max_stop,
        chat_template=args.chat_template,
        dtype=args.dtype,
        device=args.device,
        weights=args.weights,
        threads=args.threads,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        prefill_tokens=args.prefill_tokens,
        embed_tokens=args.embed_tokens,
        on_loaded=on_loaded,
    )
    return 0


def startup_line(args: argparse.Namespace, engine) -> str:
    """What the server runs, in one line: model folder, dtype, weights, device, threads, address, batch and
    queue limits, chat template."""
    import torch

    from gpt2kit import hub
    from gpt2kit.model.inference import resolve_weights

    folder = hub.find_model_dir(args.model, files=("config.json",))
    model = args.model if str(folder) == str(args.model) else f"{args.model} ({folder})"
    if args.served_model_name:
        model += f" as {args.served_model_name}"
    if args.chat_template:
        template = args.chat_template
    else:
        template = "the tokenizer's" if getattr(engine.tokenizer, "chat_template", None) else "none"
    host = f"[{args.host}]" if ":" in args.host else args.host
    dtype = str(engine.model.dtype).removeprefix("torch.")
    return (
        f"gpt2kit serve: {model}; {dtype}, weights {resolve_weights(args.weights, args.device)}, "
        f"{args.device or 'cpu'}, {torch.get_num_threads()} threads; http://{host}:{args.port}; "
        f"max batch {engine.max_batch}, max queue {engine.max_queue}; chat template: {template}"
    )
