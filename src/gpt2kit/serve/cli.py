"""`gpt2kit serve` arguments and entry point. Imports nothing heavy until the command runs."""

from __future__ import annotations

import argparse


def serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a model folder (with its tokenizer), or a cached name")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every request (default: $GPT2KIT_API_KEY, else none)",
    )
    p.add_argument(
        "--served-model-name",
        help="the model id clients send (default: --model as given; its folder name works too)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
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
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def serve(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f'the server needs the [serve] extra ({e.name} is missing): pip install "gpt2kit[serve]"'
        ) from None
    from gpt2kit.serve.app import run

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    run(
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
    )
    return 0
