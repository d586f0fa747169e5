"""`gpt2kit export onnx|gguf` arguments and entry point. Imports nothing heavy until the command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def export_args(p: argparse.ArgumentParser) -> None:
    formats = p.add_subparsers(dest="format", metavar="FORMAT", required=True)

    o = formats.add_parser(
        "onnx",
        help="ONNX decoders as the Hub's onnx/ folders hold them (Optimum, transformers.js, ONNX Runtime)",
        description="Write decoder_model.onnx, decoder_with_past_model.onnx, decoder_model_merged.onnx, "
        "model.onnx (transformers.js's name) (+ *_quantized.onnx with --quantize int8), config.json, "
        "generation_config.json and the tokenizer "
        "files. Needs onnx and onnxruntime: pip install 'gpt2kit[onnx]'.",
    )
    o.add_argument("--model", required=True, help="a model folder, or a name in the local Hugging Face cache")
    o.add_argument(
        "--out",
        help="output folder (default: MODEL/onnx, the Hub's layout; for the bundled gpt2kit-demo: "
        "gpt2kit-demo-onnx in the current folder)",
    )
    o.add_argument(
        "--quantize", choices=["int8"], help="also write *_quantized.onnx: ONNX Runtime's dynamic int8"
    )
    o.add_argument("--tokenizer", help="tokenizer folder or 'gpt2' when the model folder has none")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    o.set_defaults(_export=_onnx)

    g = formats.add_parser(
        "gguf",
        help="one GGUF file for llama.cpp (f32, f16 or q8_0)",
        description="Write the model as llama.cpp's 'gpt2' architecture, with its tokenizer, in one .gguf "
        "file. Needs the gguf package: pip install 'gpt2kit[gguf]'.",
    )
    g.add_argument("--model", required=True, help="a model folder, or a name in the local Hugging Face cache")
    g.add_argument("-o", "--out", required=True, help="the .gguf file to write")
    g.add_argument(
        "--dtype",
        default="f16",
        choices=["f32", "f16", "q8_0"],
        help="weight type of the 2-D tensors (default: f16; norms, biases and positions stay f32)",
    )
    g.add_argument("--tokenizer", help="tokenizer folder or 'gpt2' when the model folder has none")
    g.set_defaults(_export=_gguf)


def export(args: argparse.Namespace) -> int:
    try:
        written = args._export(args)
    except ImportError as e:  # an optional dependency is missing: the message says what to install
        raise ValueError(str(e)) from None
    for path in written:
        print(path)
    total = sum(p.stat().st_size for p in written if p.is_file())
    files = "file" if len(written) == 1 else "files"
    print(
        f"gpt2kit export {args.format}: wrote {len(written)} {files}, {total / 2**20:.1f} MiB",
        file=sys.stderr,
    )
    return 0


def _onnx(args: argparse.Namespace) -> list[Path]:
    from gpt2kit.export.onnx import export_onnx

    return export_onnx(
        args.model, args.out, quantize=args.quantize, tokenizer=args.tokenizer, opset=args.opset
    )


def _gguf(args: argparse.Namespace) -> list[Path]:
    from gpt2kit.export.gguf import export_gguf

    return [export_gguf(args.model, args.out, dtype=args.dtype, tokenizer=args.tokenizer)]
