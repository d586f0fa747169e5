"""Deployment bridges: a checkpoint folder -> the files other runtimes load.

- `onnx.py`: ONNX decoders in the layout of the Hub's `onnx/` folders (Optimum, transformers.js, ONNX Runtime);
- `gguf.py`: one GGUF file for llama.cpp ("gpt2" architecture);
- `common.py`: what both read from a folder (the LM, its tokenizer) and the optional-dependency checks;
- `cli.py`: `gpt2kit export onnx|gguf`.

onnx, onnxruntime and gguf are optional: they are imported inside the functions that need them, with an
install hint when missing, so importing this package costs nothing extra.
"""
