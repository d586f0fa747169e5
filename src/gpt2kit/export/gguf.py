"""GGUF export for llama.cpp: one file in llama.cpp's "gpt2" architecture, written with the `gguf` package.

The names, layouts and keys are those llama.cpp's own converter (convert_hf_to_gguf.py) writes for
GPT2LMHeadModel, so llama.cpp loads the file as it loads a converted `gpt2`:

    token_embd, position_embd               wte, wpe                       (V, C), (n_positions, C)
    blk.N.attn_norm, blk.N.ffn_norm         h.N.ln_1, h.N.ln_2             weight and bias
    blk.N.attn_qkv, blk.N.attn_output       h.N.attn.c_attn, c_proj        (out, in): transposed, see below
    blk.N.ffn_up, blk.N.ffn_down            h.N.mlp.c_fc, c_proj           (out, in): transposed
    output_norm                             ln_f
    output                                  lm_head, only when untied (llama.cpp reuses token_embd otherwise)

GPT-2 stores its projections (in, out) (transformers' Conv1D, our model/linear.py); ggml's matrix product
wants each output's weights in a row, as nn.Linear stores them, so the four projection weights are written
transposed, and only those. Metadata: gpt2.context_length, embedding_length, feed_forward_length,
block_count, attention.head_count, attention.layer_norm_epsilon; the tokenizer as tokenizer.ggml.model
"gpt2" (byte-level BPE), pre "gpt-2" (GPT-2's pre-tokenizer regex), tokens, token_type, merges and the
special ids.

dtype: f32 (everything float32), f16 or q8_0 (the 2-D weights; norms, biases and position_embd stay float32,
as llama.cpp's converter keeps them). q8_0 needs rows whose length is a multiple of 32; a weight without
falls back to f16, as in llama.cpp's converter.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gpt2kit.export.common import TokenizerFiles, load_lm, load_tokenizer, require

if TYPE_CHECKING:
    from gpt2kit.model import GPT2LMHeadModel

logger = logging.getLogger(__name__)

DTYPES = ("f32", "f16", "q8_0")
ARCH = "gpt2"
# llama.cpp's GPT-2 graph: GELU in its tanh form (ggml_gelu), attention scaled by 1/sqrt(hs), nothing else.
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def export_gguf(
    model: str | os.PathLike | GPT2LMHeadModel,
    path: str | os.PathLike,
    *,
    dtype: str = "f16",
    tokenizer: str | os.PathLike | None = None,
) -> Path:
    """Write a model folder (or a loaded GPT2LMHeadModel) as one GGUF file for llama.cpp; return its path.

    tokenizer: a tokenizer folder or "gpt2", when the model folder has no tokenizer files of its own (a GGUF
    file carries its vocabulary, so one is required).

    >>> export_gguf("checkpoints/gpt2", "gpt2-q8_0.gguf", dtype="q8_0")  # doctest: +SKIP
    PosixPath('gpt2-q8_0.gguf')
    """
    gguf = require("gguf", "gguf", "GGUF export")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass the .gguf file to write, e.g. {path / 'model.gguf'}")
    model_dir = None
    if isinstance(model, (str, os.PathLike)):
        from gpt2kit import hub

        model_dir = hub.find_model_dir(model, files=("config.json", "model.safetensors"))
    lm = load_lm(model_dir if model_dir is not None else model, "GGUF export")
    check_supported(lm.config)
    tok = load_tokenizer(tokenizer, model, model_dir, lm.config.vocab_size, required=True, what="GGUF export")
    assert tok is not None

    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(tmp, arch=ARCH)
    try:
        _write_metadata(writer, gguf, lm, ftype, name=model_dir.name if model_dir else path.stem)
        _write_tokenizer(writer, gguf, tok, lm.config.vocab_size)
        for name, array in gguf_tensors(lm):
            _add_tensor(writer, gguf, name, array, dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def check_supported(config) -> None:
    """Refuse what llama.cpp's GPT-2 graph does not compute, rather than write a file that runs wrongly."""
    problems = []
    if config.activation_function not in _GELU_TANH:
        problems.append(
            f"activation_function={config.activation_function!r} (llama.cpp uses GELU, tanh form)"
        )
    if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
        problems.append("attention scaling other than 1/sqrt(head_dim)")
    if problems:
        raise ValueError(
            f"llama.cpp's gpt2 architecture cannot run this model: {'; '.join(problems)}. "
            "Export it to ONNX instead (gpt2kit export onnx), whose graph follows the config."
        )


def gguf_tensors(model: GPT2LMHeadModel):
    """(name, float32 array in llama.cpp's layout) for every tensor of the file, in llama.cpp's order."""

    def arr(t) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    def proj(t) -> np.ndarray:  # (in, out) -> (out, in); see the module docstring
        return np.ascontiguousarray(arr(t).T)

    trunk = model.transformer
    yield "token_embd.weight", arr(trunk.wte.weight)
    yield "position_embd.weight", arr(trunk.wpe.weight)
    for i, block in enumerate(trunk.h):
        b = f"blk.{i}"
        for ours, theirs in ((block.ln_1, "attn_norm"), (block.ln_2, "ffn_norm")):
            yield f"{b}.{theirs}.weight", arr(ours.weight)
            yield f"{b}.{theirs}.bias", arr(ours.bias)
        for layer, theirs in (
            (block.attn.c_attn, "attn_qkv"),
            (block.attn.c_proj, "attn_output"),
            (block.mlp.c_fc, "ffn_up"),
            (block.mlp.c_proj, "ffn_down"),
        ):
            yield f"{b}.{theirs}.weight", proj(layer.weight)
            yield f"{b}.{theirs}.bias", arr(layer.bias)
    yield "output_norm.weight", arr(trunk.ln_f.weight)
    yield "output_norm.bias", arr(trunk.ln_f.bias)
    if model.lm_head.weight is not trunk.wte.weight:
        yield "output.weight", arr(model.lm_head.weight)


def _add_tensor(writer, gguf, name: str, array: np.ndarray, dtype: str) -> None:
    kind = gguf.GGMLQuantizationType
    # As llama.cpp's converter: vectors (norms, biases) and the position table stay float32.
    if dtype == "f32" or array.ndim == 1 or name.startswith("position_embd"):
        writer.add_tensor(name, array.astype(np.float32))
        return
    if dtype == "q8_0":
        try:
            quantized = gguf.quants.quantize(array, kind.Q8_0)
        except gguf.QuantError as e:
            logger.warning("%s: %s; writing it as f16", name, e)
        else:
            writer.add_tensor(name, quantized, raw_dtype=kind.Q8_0)
            return
    writer.add_tensor(name, array.astype(np.float16))


def _write_metadata(writer, gguf, model: GPT2LMHeadModel, ftype, name: str) -> None:
    c = model.config
    writer.add_name(name)
    writer.add_context_length(c.n_positions)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(c.inner_dim)
    writer.add_block_count(c.n_layer)
    writer.add_head_count(c.n_head)
    writer.add_layer_norm_eps(c.layer_norm_epsilon)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(writer, gguf, tok: TokenizerFiles, vocab_size: int) -> None:
    """The vocabulary by id, padded to the model's vocab_size (llama.cpp wants one entry per embedding row)."""
    tokenizer = tok.tokenizer
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")  # an embedding row no token uses, named as llama.cpp's converter does
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            if i in added:
                types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{a} {b}" for a, b in tok.vocab.merges])
    for token_id, add in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add(token_id)
    # GPT-2's tokenizer adds no BOS; said explicitly, since llama.cpp's default for BPE vocabularies varies.
    writer.add_add_bos_token(bool(tokenizer.add_bos_token))
